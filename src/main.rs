//! The `switchyard` command line (SPEC.md "Command line").

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Config file for the default `run` subcommand.
    #[arg(long, global = true, default_value = "switchyard.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate a config file, print every problem, exit 1 on any.
    Check,
    /// Routes, switch progress and cluster health from a running proxy.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:9644")]
        admin: String,
    },
    /// Change a route on the running proxy.
    Switch {
        #[command(subcommand)]
        what: SwitchWhat,
        #[arg(long, default_value = "http://127.0.0.1:9644", global = true)]
        admin: String,
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
        #[arg(long, default_value = "http://127.0.0.1:9644")]
        admin: String,
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
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            init_tracing();
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {} problem(s):", cli.config.display(), e.0.len());
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
            match runtime.block_on(switchyard::server::run(config, Some(cli.config), shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check => match Config::load(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} cluster(s), {} topic route(s), {} group route(s))",
                    cli.config.display(),
                    c.clusters.len(),
                    c.routes.topics.len(),
                    c.routes.groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{}: {} problem(s):", cli.config.display(), e.0.len());
                for err in &e.0 {
                    println!("  - {err}");
                }
                ExitCode::from(1)
            }
        },
        Command::Status { admin } => http(&admin, "GET", "/status", None),
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
        Command::Switch { what, admin } => match what {
            SwitchWhat::Topic {
                name,
                produce,
                consume,
            } => {
                let mut body = serde_json::json!({ "produce": produce });
                if let Some(c) = consume {
                    body["consume"] = c.into();
                }
                http(&admin, "POST", &format!("/switch/topic/{name}"), Some(body))
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
                http(&admin, "POST", &format!("/switch/group/{name}"), Some(body))
            }
        },
        Command::Rollback { kind, name, admin } => {
            if kind != "topic" && kind != "group" {
                eprintln!("rollback: expected `topic` or `group`, got `{kind}`");
                return ExitCode::from(2);
            }
            http(&admin, "POST", &format!("/rollback/{kind}/{name}"), None)
        }
    }
}

/// A minimal HTTP/1.1 client for the admin API (loopback, JSON), so the CLI needs no
/// HTTP client stack of its own.
fn http(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
    use std::io::{Read, Write};
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = match std::net::TcpStream::connect(&hostport) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot reach the admin API at {base}: {e}");
            return ExitCode::from(1);
        }
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        eprintln!("admin API request failed: {e}");
        return ExitCode::from(1);
    }
    let mut response = String::new();
    if let Err(e) = stream.read_to_string(&mut response) {
        eprintln!("admin API response unreadable: {e}");
        return ExitCode::from(1);
    }
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let ok = head.lines().next().is_some_and(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'))
    });
    let pretty = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| payload.to_string());
    println!("{pretty}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
