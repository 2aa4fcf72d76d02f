//! The `switchyard` command line (SPEC.md "Command line").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use switchyard::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kafka protocol proxy for moving clients between clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file to run or check (default switchyard.toml). Commands that call
    /// the admin API take its address and token (`[admin] bind`, `token_env`,
    /// `token_file`) from it when given.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Admin API token file, used when neither `--config` nor the
    /// SWITCHYARD_ADMIN_TOKEN environment variable gives a token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Seconds an admin API call may take, from connect to the last byte.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
}

/// The environment variable the CLI reads the admin token from without `--config`.
const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate a config file, print every problem, exit 1 on any.
    Check,
    /// Routes, switch progress and cluster health from a running proxy.
    Status {
        /// Admin API base URL (default: `[admin] bind` of `--config`, else
        /// http://127.0.0.1:9644).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Change a route on the running proxy.
    Switch {
        #[command(subcommand)]
        what: SwitchWhat,
        #[arg(long, global = true)]
        admin: Option<String>,
    },
    /// Users for SASL termination: prints a users-file entry.
    User {
        #[command(subcommand)]
        what: UserWhat,
    },
    /// Flip a route back.
    Rollback {
        /// `topic` or `group`
        kind: String,
        name: String,
        #[arg(long)]
        admin: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserWhat {
    /// Prints salted SCRAM entries for NAME to append to `[listener.sasl] users_file`.
    /// The password is read from the first line of stdin; it is never stored.
    Add {
        name: String,
        #[arg(long = "mechanism", default_values_t = ["SCRAM-SHA-512".to_string()])]
        mechanisms: Vec<String>,
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
}

#[derive(Subcommand)]
enum SwitchWhat {
    Topic {
        name: String,
        #[arg(long)]
        produce: String,
        #[arg(long)]
        consume: Option<String>,
    },
    Group {
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        offsets: Option<String>,
        #[arg(long)]
        now: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or(Command::Run);
    let admin = |url: Option<String>| AdminCall::new(&cli, url);
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("switchyard.toml"));
    match command {
        Command::Run => {
            init_tracing();
            let config = match Config::load(&config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {} problem(s):", config_path.display(), e.0.len());
                    for err in &e.0 {
                        eprintln!("  - {err}");
                    }
                    return ExitCode::from(1);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let shutdown = CancellationToken::new();
            match runtime.block_on(switchyard::server::run(config, Some(config_path), shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check => match Config::load(&config_path) {
            Ok(c) => {
                println!(
                    "{}: ok ({} cluster(s), {} topic route(s), {} group route(s))",
                    config_path.display(),
                    c.clusters.len(),
                    c.routes.topics.len(),
                    c.routes.groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{}: {} problem(s):", config_path.display(), e.0.len());
                for err in &e.0 {
                    println!("  - {err}");
                }
                ExitCode::from(1)
            }
        },
        Command::Status { admin: url } => admin(url).call("GET", "/status", None),
        Command::User {
            what:
                UserWhat::Add {
                    name,
                    mechanisms,
                    iterations,
                },
        } => {
            use switchyard::sasl::{Credentials, Hash, ScramEntry};
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() || password.trim().is_empty() {
                eprintln!("user add: give the password on stdin");
                return ExitCode::from(2);
            }
            let password = password.trim_end_matches(['\n', '\r']);
            let mut entries = std::collections::BTreeMap::new();
            for m in &mechanisms {
                let Some(hash) = Hash::of_mechanism(m) else {
                    eprintln!("user add: `{m}` is not SCRAM-SHA-256 or SCRAM-SHA-512");
                    return ExitCode::from(2);
                };
                entries.insert(
                    m.clone(),
                    ScramEntry::new(hash, password, iterations.max(4096)),
                );
            }
            let mut creds = Credentials::default();
            creds.users.insert(name, entries);
            match toml::to_string(&creds) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("user add: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Switch { what, admin: url } => match what {
            SwitchWhat::Topic {
                name,
                produce,
                consume,
            } => {
                let mut body = serde_json::json!({ "produce": produce });
                if let Some(c) = consume {
                    body["consume"] = c.into();
                }
                admin(url).call("POST", &format!("/switch/topic/{name}"), Some(body))
            }
            SwitchWhat::Group {
                name,
                to,
                offsets,
                now,
            } => {
                let mut body = serde_json::json!({ "to": to });
                if let Some(o) = offsets {
                    body["offsets"] = o.into();
                }
                if now {
                    body["when"] = "now".into();
                }
                admin(url).call("POST", &format!("/switch/group/{name}"), Some(body))
            }
        },
        Command::Rollback {
            kind,
            name,
            admin: url,
        } => {
            if kind != "topic" && kind != "group" {
                eprintln!("rollback: expected `topic` or `group`, got `{kind}`");
                return ExitCode::from(2);
            }
            admin(url).call("POST", &format!("/rollback/{kind}/{name}"), None)
        }
    }
}

/// One call to the admin API: where, with which token, within what time.
struct AdminCall {
    base: String,
    token: Result<Option<String>, String>,
    timeout: Duration,
}

impl AdminCall {
    /// The token comes from `--config`'s `[admin] token_env`/`token_file`, else from
    /// SWITCHYARD_ADMIN_TOKEN, else from `--token-file`; none is fine for a proxy
    /// without a token. A source that is named but unreadable is an error, never a
    /// silent call without the token.
    fn new(cli: &Cli, url: Option<String>) -> AdminCall {
        let timeout = Duration::from_secs(cli.timeout.max(1));
        let from_config = cli.config.as_deref().map(Config::load_admin);
        let (bind, source) = match &from_config {
            Some(Ok((bind, auth))) => (Some(*bind), auth.token.clone()),
            Some(Err(e)) => {
                return AdminCall {
                    base: url.unwrap_or_default(),
                    token: Err(format!("--config: {e}")),
                    timeout,
                }
            }
            None => (None, None),
        };
        let base = url.unwrap_or_else(|| match bind {
            // A wildcard bind answers on loopback too.
            Some(b) if b.ip().is_unspecified() => {
                let local: std::net::IpAddr = if b.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                format!("http://{}", std::net::SocketAddr::new(local, b.port()))
            }
            Some(b) => format!("http://{b}"),
            None => "http://127.0.0.1:9644".into(),
        });
        let env = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        let token = match (source, env, &cli.token_file) {
            (Some(source), _, _) => switchyard::admin::read_secret(&source).map(Some),
            (None, Some(t), _) => Ok(Some(t.trim().to_string())),
            (None, None, Some(file)) => {
                switchyard::admin::read_secret(&switchyard::config::TokenSource::File(file.clone()))
                    .map(Some)
                    .map_err(|e| e.replace("[admin] token_file", "--token-file"))
            }
            (None, None, None) => Ok(None),
        };
        AdminCall {
            base,
            token,
            timeout,
        }
    }

    /// Prints the JSON answer; success only for a 2xx status.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
        let token = match &self.token {
            Ok(t) => t.as_deref(),
            Err(e) => {
                eprintln!("admin token: {e}");
                return ExitCode::from(2);
            }
        };
        match http(&self.base, token, self.timeout, method, path, body) {
            Ok((ok, payload)) => {
                let pretty = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or(payload);
                println!("{pretty}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    }
}

/// A minimal HTTP/1.1 client for the admin API (JSON), so the CLI needs no HTTP
/// client stack of its own. The whole exchange, connect included, fits in
/// `timeout`: a proxy that hangs must not hang the operator's terminal or script.
/// Returns (2xx, body).
fn http(
    base: &str,
    token: Option<&str>,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(bool, String), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    if base.starts_with("https://") {
        return Err(format!(
            "{base}: the admin API speaks plain HTTP; use http://"
        ));
    }
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        format!(
            "the admin API at {base} did not answer within {}s (--timeout)",
            timeout.as_secs()
        )
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let addrs: Vec<_> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        let Some(rest) = left() else { break };
        match std::net::TcpStream::connect_timeout(&addr, rest) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) if e.kind() != std::io::ErrorKind::TimedOut => {
            return Err(format!("cannot reach the admin API at {base}: {e}"))
        }
        _ => return Err(timed_out()),
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let is_timeout = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
    };
    stream
        .set_write_timeout(left())
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| {
            if is_timeout(&e) {
                timed_out()
            } else {
                format!("admin API request failed: {e}")
            }
        })?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // Each read gets only what is left of the deadline, so a server that drips
        // bytes cannot stretch the call past it.
        let Some(rest) = left() else {
            return Err(timed_out());
        };
        stream
            .set_read_timeout(Some(rest))
            .map_err(|e| format!("admin API: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("admin API response unreadable: {e}")),
        }
    }
    let response = String::from_utf8_lossy(&response);
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let ok = head.lines().next().is_some_and(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
    });
    Ok((ok, payload.to_string()))
}
