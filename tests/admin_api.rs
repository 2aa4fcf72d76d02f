//! The admin API in process: a `Proxy` built from a config (it connects nowhere
//! until a change needs an upstream; the changes here do not), its router served
//! on a loopback port, and raw HTTP/1.1 requests written by hand so every header a
//! browser or an attacker could send is under the test's control.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use switchyard::config::Config;
use switchyard::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-admin-token";

struct Admin {
    addr: std::net::SocketAddr,
    proxy: Arc<Proxy>,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `admin` is the body of the `[admin]` section. Clusters are never reached.
fn config_text(state: &Path, admin: &str, routes: &str) -> String {
    format!(
        r#"
[proxy]
state_dir = "{}"
[listener]
bind = "127.0.0.1:9092"
[admin]
{admin}
[clusters.source]
bootstrap = ["127.0.0.1:1"]
[clusters.target]
bootstrap = ["127.0.0.1:1"]
node_id_offset = 1000
[routes]
default_cluster = "source"
{routes}
"#,
        state.display()
    )
}

async fn start(admin: &str) -> Admin {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(
        &config_path,
        config_text(&dir.path().join("state"), admin, ""),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let proxy = Proxy::new(config, Some(config_path.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    tokio::spawn(switchyard::admin::serve(
        listener,
        proxy.clone(),
        metrics,
        stop.clone(),
    ));
    Admin {
        addr,
        proxy,
        config_path,
        _dir: dir,
        stop,
    }
}

struct Reply {
    status: u16,
    head: String,
    body: Value,
}

impl Admin {
    /// Sends `head` (request line and headers, without the blank line) and `body`.
    async fn raw(&self, head: &str, body: &str) -> Reply {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        Reply {
            status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head: head.to_ascii_lowercase(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    /// A well-formed request from the CLI's point of view, plus `extra` headers.
    async fn call(&self, method: &str, path: &str, extra: &str, body: &str) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}",
            self.addr.port()
        );
        if !body.is_empty() {
            head.push_str("\r\nContent-Type: application/json");
        }
        if !extra.is_empty() {
            head.push_str("\r\n");
            head.push_str(extra);
        }
        self.raw(&head, body).await
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn assert_unauthorized(r: &Reply) {
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(
        r.head.contains("www-authenticate: bearer"),
        "no WWW-Authenticate: Bearer in\n{}",
        r.head
    );
    assert!(r.body["errors"][0]
        .as_str()
        .unwrap()
        .contains("bearer token"));
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let a = start("token_file = \"admin.token\"").await;
    let body = r#"{"consume": "target"}"#;
    assert_unauthorized(&a.call("POST", "/reload", "", "").await);
    assert_unauthorized(&a.call("POST", "/switch/topic/t", "", body).await);
    assert_unauthorized(
        &a.call("POST", "/rollback/topic/t", &bearer("wrong"), "")
            .await,
    );
    assert_unauthorized(
        &a.call("POST", "/reload", "Authorization: Basic czNjcmV0", "")
            .await,
    );
    assert_eq!(a.proxy.routes().version, 1);
    assert_eq!(a.proxy.routes().consume_cluster("t"), "source");

    let r = a
        .call("POST", "/switch/topic/t", &bearer(TOKEN), body)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(a.proxy.routes().consume_cluster("t"), "target");
    // Reads stay open unless token_for_reads is set.
    assert_eq!(a.call("GET", "/status", "", "").await.status, 200);
}

#[tokio::test]
async fn token_for_reads_guards_gets_too() {
    let a = start("token_file = \"admin.token\"\ntoken_for_reads = true").await;
    assert_unauthorized(&a.call("GET", "/status", "", "").await);
    assert_unauthorized(&a.call("GET", "/metrics", &bearer("nope"), "").await);
    assert_eq!(
        a.call("GET", "/routes", &bearer(TOKEN), "").await.status,
        200
    );
}

#[tokio::test]
async fn token_env_must_be_set_when_the_proxy_starts() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("state"),
        "token_env = \"SWITCHYARD_TEST_ADMIN_TOKEN_NEVER_SET\"",
        "",
    );
    let config = Config::from_toml(&text, Vec::<(String, String)>::new(), dir.path()).unwrap();
    let err = Proxy::new(config, None).err().expect("an unset token_env");
    assert!(
        err.contains("`SWITCHYARD_TEST_ADMIN_TOKEN_NEVER_SET` is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_rereads_the_token_file() {
    let a = start("token_file = \"admin.token\"").await;
    let file = a.config_path.parent().unwrap().join("admin.token");
    std::fs::write(&file, "rotated\n").unwrap();
    assert_eq!(
        a.call("POST", "/reload", &bearer(TOKEN), "").await.status,
        200
    );
    assert_unauthorized(&a.call("POST", "/reload", &bearer(TOKEN), "").await);
    assert_eq!(
        a.call("POST", "/reload", &bearer("rotated"), "")
            .await
            .status,
        200
    );
    // An empty token file is refused and the running token stays.
    std::fs::write(&file, "\n").unwrap();
    let r = a.call("POST", "/reload", &bearer("rotated"), "").await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body.to_string().contains("is empty"), "{:?}", r.body);
    assert_eq!(
        a.call("POST", "/reload", &bearer("rotated"), "")
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_or_without_a_token() {
    for (admin, auth) in [
        ("", String::new()),
        ("token_file = \"admin.token\"", bearer(TOKEN)),
    ] {
        let a = start(admin).await;
        for origin in ["http://evil.example", "null", "https://127.0.0.1"] {
            let extra = format!("{auth}\r\nOrigin: {origin}");
            let extra = extra.trim_start_matches("\r\n");
            let r = a.call("POST", "/rollback/topic/t", extra, "").await;
            assert_eq!(r.status, 403, "{admin:?} {origin}: {:?}", r.body);
        }
        // The admin's own origin (a page it served) may call it.
        let extra = format!("{auth}\r\nOrigin: http://127.0.0.1:{}", a.addr.port());
        let r = a
            .call("POST", "/reload", extra.trim_start_matches("\r\n"), "")
            .await;
        assert_eq!(r.status, 200, "{admin:?}: {:?}", r.body);
    }
}

#[tokio::test]
async fn only_json_bodies_are_accepted() {
    let a = start("").await;
    let port = a.addr.port();
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let head = format!(
            "POST /switch/topic/t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ct}"
        );
        let r = a.raw(&head, r#"{"consume": "target"}"#).await;
        assert_eq!(r.status, 415, "{ct}: {:?}", r.body);
    }
    // A body without any Content-Type.
    let head = format!("POST /switch/topic/t HTTP/1.1\r\nHost: 127.0.0.1:{port}");
    assert_eq!(a.raw(&head, r#"{"consume": "target"}"#).await.status, 415);
    // No body needs no Content-Type (rollback, reload).
    let head = format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}");
    assert_eq!(a.raw(&head, "").await.status, 200);
    assert_eq!(a.proxy.routes().consume_cluster("t"), "source");
    let head = format!(
        "POST /switch/topic/t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8"
    );
    assert_eq!(a.raw(&head, r#"{"consume": "target"}"#).await.status, 200);
}

#[tokio::test]
async fn without_a_token_only_loopback_hosts_may_change_routes() {
    let a = start("").await;
    let port = a.addr.port();
    for host in [
        "evil.example",
        "evil.example:9644",
        "localhost.evil.example",
        "10.0.0.1",
    ] {
        let head = format!("POST /rollback/topic/t HTTP/1.1\r\nHost: {host}");
        let r = a.raw(&head, "").await;
        assert_eq!(r.status, 403, "{host}: {:?}", r.body);
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LOCALHOST".into(),
    ] {
        let head = format!("POST /reload HTTP/1.1\r\nHost: {host}");
        let r = a.raw(&head, "").await;
        assert_eq!(r.status, 200, "{host}: {:?}", r.body);
    }
}

#[tokio::test]
async fn with_a_token_any_host_may_call() {
    // A gateway behind a DNS name: the token is the proof, not the name.
    let a = start("token_file = \"admin.token\"").await;
    let head = format!(
        "POST /reload HTTP/1.1\r\nHost: gw.kafka.example:9644\r\n{}",
        bearer(TOKEN)
    );
    assert_eq!(a.raw(&head, "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_switches_of_two_topics_both_land() {
    for round in 0..20 {
        let a = Arc::new(start("").await);
        let body = r#"{"consume": "target"}"#;
        let (x, y) = tokio::join!(
            tokio::spawn({
                let a = a.clone();
                async move { a.call("POST", "/switch/topic/alpha", "", body).await }
            }),
            tokio::spawn({
                let a = a.clone();
                async move { a.call("POST", "/switch/topic/beta", "", body).await }
            }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!((x.status, y.status), (200, 200), "round {round}");
        let routes = a.call("GET", "/routes", "", "").await.body;
        let consume = |topic: &str| {
            routes["topics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["match"] == topic)
                .map(|t| t["consume"].clone())
        };
        assert_eq!(
            consume("alpha"),
            Some("target".into()),
            "round {round}: {routes}"
        );
        assert_eq!(
            consume("beta"),
            Some("target".into()),
            "round {round}: {routes}"
        );
        assert_eq!(routes["version"], 3, "round {round}");
    }
}

#[tokio::test]
async fn a_reload_of_an_unchanged_file_keeps_the_version() {
    let a = start("").await;
    let r = a.call("POST", "/reload", "", "").await;
    assert_eq!((r.status, r.body["route_version"].clone()), (200, 1.into()));
    assert_eq!(
        a.call("POST", "/reload", "", "").await.body["route_version"],
        1
    );

    let dir = a.config_path.parent().unwrap();
    let edited = config_text(
        &dir.join("state"),
        "",
        "[routes.topics.\"orders\"]\nconsume = \"target\"",
    );
    std::fs::write(&a.config_path, edited).unwrap();
    let r = a.call("POST", "/reload", "", "").await;
    assert_eq!(r.body["route_version"], 2, "{:?}", r.body);
    assert_eq!(a.proxy.routes().consume_cluster("orders"), "target");
    // The same edit seen again (file watcher, then SIGHUP, then POST): no new version.
    assert_eq!(
        a.call("POST", "/reload", "", "").await.body["route_version"],
        2
    );
    assert_eq!(a.proxy.routes().version, 2);
}

/// Runs the `switchyard` CLI: (exit code, stdout, stderr).
async fn cli(args: &[&str], token_env: Option<&str>) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args).env_remove("SWITCHYARD_ADMIN_TOKEN");
    if let Some(t) = token_env {
        cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_sends_the_token_from_each_source() {
    let a = start("token_file = \"admin.token\"").await;
    let url = format!("http://{}", a.addr);
    let config = a.config_path.to_str().unwrap();
    let token_file = a.config_path.parent().unwrap().join("admin.token");
    let rollback = ["rollback", "topic", "t", "--admin", &url];

    let (code, out, _) = cli(&rollback, None).await;
    assert_eq!(code, 1, "no token: {out}");
    assert!(out.contains("bearer token"), "{out}");

    // SWITCHYARD_ADMIN_TOKEN: through to the handler, which has nothing to roll back.
    let (code, out, _) = cli(&rollback, Some(TOKEN)).await;
    assert_eq!(code, 1);
    assert!(out.contains("nothing to roll back"), "{out}");

    let switch = [
        "switch",
        "topic",
        "t",
        "--produce",
        "source",
        "--consume",
        "target",
    ];
    // --config: the token file and the address both come from [admin] (the address
    // here is overridden, since the test server listens on a port of its own).
    let mut args = switch.to_vec();
    args.extend(["--config", config, "--admin", &url]);
    let (code, out, err) = cli(&args, None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(a.proxy.routes().consume_cluster("t"), "target");

    let mut args = switch.to_vec();
    args[2] = "u";
    args.extend([
        "--admin",
        &url,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let (code, out, err) = cli(&args, None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(a.proxy.routes().consume_cluster("u"), "target");

    // A named token source that cannot be read stops the CLI before any call.
    let (code, _, err) = cli(
        &[
            "status",
            "--admin",
            &url,
            "--token-file",
            "/nonexistent/token",
        ],
        None,
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("--token-file: /nonexistent/token"), "{err}");
}

#[tokio::test]
async fn the_cli_gives_up_on_a_silent_admin_api() {
    // Accepts and never answers, like a wedged proxy.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    let (code, _, err) = cli(&["status", "--admin", &url, "--timeout", "1"], None).await;
    hold.abort();
    assert_eq!(code, 1);
    assert!(err.contains("did not answer within 1s"), "{err}");
}
