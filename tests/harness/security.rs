//! TLS in front of and behind the proxy: clients connect over TLS (and mTLS) to
//! Switchyard, which terminates it and talks TLS to a Kafka 3.9 cluster that accepts
//! nothing else, with its own CA settings.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{java_driver, rdk, repo, run_ok, scratch, Cluster, Proxy};

pub struct TlsEnv {
    pub certs: PathBuf,
    pub cluster: Cluster,
    /// Kafka 2.4.1 that accepts only SASL/SCRAM-SHA-512.
    pub scram_cluster: Cluster,
    /// TLS + SASL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN) listener in front of the
    /// SCRAM cluster (default) and the TLS cluster (topic `sasl-tgt`, group
    /// `sasl-tgt-*`).
    pub sasl: Proxy,
    /// TLS listener, no client certificates.
    pub tls: Proxy,
    /// TLS listener that requires client certificates (mTLS).
    pub mtls: Proxy,
}

/// Runs `certs/gen.sh` into a scratch directory, plus the PEM keystore files the
/// Java client wants (key followed by certificate).
pub fn make_certs(name: &str) -> PathBuf {
    let dir = scratch(name);
    run_ok(
        std::process::Command::new("bash")
            .arg(repo().join("certs/gen.sh"))
            .arg(&dir),
        "certs/gen.sh",
    );
    for who in ["client", "expired", "rogue"] {
        let mut pem = std::fs::read(dir.join(format!("{who}.key"))).unwrap();
        pem.extend(std::fs::read(dir.join(format!("{who}.crt"))).unwrap());
        std::fs::write(dir.join(format!("{who}.pem")), pem).unwrap();
    }
    dir
}

/// A cluster's bootstrap addresses as a TOML array body.
fn toml_list(c: &Cluster) -> String {
    c.bootstrap_list()
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn proxy_toml(certs: &Path, cluster: &Cluster, mtls: bool) -> String {
    let client_ca = if mtls {
        format!("client_ca = \"{}\"\n", certs.join("ca.crt").display())
    } else {
        String::new()
    };
    format!(
        "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n{client_ca}\n\
         [clusters.secure]\nbootstrap = [{}]\ntls = {{ ca = \"{}\" }}\n\n\
         [routes]\ndefault_cluster = \"secure\"\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display(),
        toml_list(cluster),
        certs.join("ca.crt").display(),
    )
}

impl TlsEnv {
    pub fn start(name: &str) -> TlsEnv {
        let certs = make_certs(&format!("{name}-certs"));
        let cluster = Cluster::start_tls(1, &format!("{name}-kafka"), &certs);
        let ids = cluster.broker_ids();
        let tls = Proxy::start(
            &format!("{name}-tls-proxy"),
            &proxy_toml(&certs, &cluster, false),
            &ids,
        );
        let mtls = Proxy::start(
            &format!("{name}-mtls-proxy"),
            &proxy_toml(&certs, &cluster, true),
            &ids,
        );
        let scram_cluster =
            Cluster::start_scram(1, &format!("{name}-scram-kafka"), "admin", "admin-secret");
        let users = certs.join("users.toml");
        let mut creds = switchyard::sasl::Credentials::default();
        let mut alice = std::collections::BTreeMap::new();
        for (m, h) in [
            ("SCRAM-SHA-512", switchyard::sasl::Hash::Sha512),
            ("SCRAM-SHA-256", switchyard::sasl::Hash::Sha256),
        ] {
            alice.insert(
                m.to_string(),
                switchyard::sasl::ScramEntry::new(h, "alice-secret", 4096),
            );
        }
        creds.users.insert("alice".into(), alice);
        std::fs::write(&users, toml::to_string(&creds).unwrap()).unwrap();
        let list = toml_list;
        let (_, password_file) = scram_cluster.scram.clone().unwrap();
        let sasl_toml = format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [listener.sasl]\nmechanisms = [\"SCRAM-SHA-512\", \"SCRAM-SHA-256\", \"PLAIN\"]\nusers_file = \"{}\"\n\n\
             [clusters.source]\nbootstrap = [{}]\nsasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"admin\", password_file = \"{}\" }}\n\n\
             [clusters.target]\nbootstrap = [{}]\nnode_id_offset = 1000\ntls = {{ ca = \"{}\" }}\n\n\
             [routes]\ndefault_cluster = \"source\"\n\n\
             [routes.topics.\"sasl-tgt\"]\nproduce = \"target\"\nconsume = \"target\"\n\n\
             [routes.groups.\"^sasl-tgt-.*\"]\ncluster = \"target\"\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display(),
            users.display(),
            list(&scram_cluster),
            password_file.display(),
            list(&cluster),
            certs.join("ca.crt").display(),
        );
        let mut sasl_ids = scram_cluster.broker_ids();
        sasl_ids.extend(cluster.broker_ids().iter().map(|i| i + 1000));
        let sasl = Proxy::start(&format!("{name}-sasl-proxy"), &sasl_toml, &sasl_ids);
        TlsEnv {
            certs,
            cluster,
            scram_cluster,
            sasl,
            tls,
            mtls,
        }
    }

    /// Java properties for a client of the proxy: TLS trusting the dev CA, and with
    /// `client` a client certificate ("client", "expired" or "rogue").
    pub fn java_props(&self, client: Option<&str>) -> Vec<String> {
        let mut props = vec![
            "security.protocol=SSL".to_string(),
            "ssl.truststore.type=PEM".to_string(),
            format!(
                "ssl.truststore.location={}",
                self.certs.join("ca.crt").display()
            ),
        ];
        if let Some(c) = client {
            props.push("ssl.keystore.type=PEM".into());
            props.push(format!(
                "ssl.keystore.location={}",
                self.certs.join(format!("{c}.pem")).display()
            ));
        }
        props
            .into_iter()
            .flat_map(|p| ["--prop".to_string(), p])
            .collect()
    }

    /// librdkafka properties for a client of the proxy.
    pub fn rdk_props(&self, client: Option<&str>) -> Vec<(&'static str, String)> {
        let mut props = vec![
            ("security.protocol", "ssl".to_string()),
            (
                "ssl.ca.location",
                self.certs.join("ca.crt").display().to_string(),
            ),
        ];
        if let Some(c) = client {
            props.push((
                "ssl.certificate.location",
                self.certs.join(format!("{c}.crt")).display().to_string(),
            ));
            props.push((
                "ssl.key.location",
                self.certs.join(format!("{c}.key")).display().to_string(),
            ));
        }
        props
    }
}

fn with(args: &[&str], extra: &[String]) -> Vec<String> {
    args.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

fn java(args: Vec<String>) -> Value {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    java_driver(&refs)
}

fn create_topic(env: &TlsEnv, topic: &str) {
    create_topic_on(&env.cluster, topic);
}

fn create_topic_on(cluster: &Cluster, topic: &str) {
    let v = java(with(
        &[
            "create-topic",
            "--bootstrap",
            &cluster.bootstrap(),
            "--topic",
            topic,
            "--partitions",
            "3",
            "--replication",
            "1",
        ],
        &cluster.client_props(),
    ));
    assert_eq!(v["ok"], Value::Bool(true), "create {topic}: {v}");
}

/// Java and librdkafka each produce `n` records to `topic` through `bootstrap` and
/// each read all `2n` in a group of `members` (groups `<topic>-java`, `<topic>-rdk`).
fn exchange(
    bootstrap: &str,
    topic: &str,
    n: u64,
    members: u32,
    java_props: &[String],
    rdk_props: &[(&str, &str)],
) {
    let p = java(with(
        &[
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--count",
            &n.to_string(),
            "--keys",
            "10",
            "--key-prefix",
            "java",
        ],
        java_props,
    ));
    super::assert_produced(&p, n);
    let r = rdk::produce_opts(bootstrap, &[topic], n, 10, "rdk", 0.0, rdk_props);
    super::assert_produced(&r, n);
    let c = java(with(
        &[
            "consume",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--group",
            &format!("{topic}-java"),
            "--members",
            &members.to_string(),
            "--expect",
            &(2 * n).to_string(),
            "--timeout-s",
            "90",
        ],
        java_props,
    ));
    super::assert_consumed(&c, 2 * n, 0);
    let seen = Arc::new(rdk::Seen::default());
    let r = rdk::consume_opts(
        bootstrap,
        topic,
        &format!("{topic}-rdk"),
        members as usize,
        2 * n,
        None,
        &seen,
        Duration::from_secs(90),
        rdk_props,
    );
    super::assert_consumed(&r, 2 * n, 0);
}

/// Java and librdkafka produce and consume through `proxy` over TLS (with a client
/// certificate when `client` is given); the cluster behind speaks only TLS.
fn round_trip(env: &TlsEnv, proxy: &Proxy, client: Option<&str>, tag: &str) {
    let topic = format!("tls-{tag}");
    create_topic(env, &topic);
    let owned = env.rdk_props(client);
    let rdk_props: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    exchange(
        &proxy.bootstrap,
        &topic,
        10_000,
        2,
        &env.java_props(client),
        &rdk_props,
    );
}

pub fn tls_round_trip(env: &TlsEnv) {
    round_trip(env, &env.tls, None, "plain-client");
}

pub fn mtls_round_trip(env: &TlsEnv) {
    round_trip(env, &env.mtls, Some("client"), "mtls");
    // The certificate subject is the connection's principal.
    let log = env.mtls.log_text();
    assert!(
        // Client-supplied text is logged quoted and escaped.
        log.contains("principal=\"CN=app-1,O=Switchyard development\""),
        "principal logged from the client certificate"
    );
}

/// Untrusted and expired client certificates, a client without a certificate, and a
/// plaintext client on the TLS port all fail with a logged reason, while a producer
/// with a good certificate beside them is not disturbed.
pub fn bad_clients_are_refused(env: &TlsEnv) {
    let topic = "tls-beside-bad";
    create_topic(env, topic);
    let good = {
        let args = with(
            &[
                "produce",
                "--bootstrap",
                &env.mtls.bootstrap,
                "--topic",
                topic,
                "--count",
                "6000",
                "--keys",
                "10",
                "--key-prefix",
                "good",
                "--rate",
                "400",
            ],
            &env.java_props(Some("client")),
        );
        std::thread::spawn(move || java(args))
    };
    std::thread::sleep(Duration::from_secs(3));

    let failing = |client: Option<&str>| {
        let owned = env.rdk_props(client);
        let mut props: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        props.push(("message.timeout.ms", "6000"));
        let r = rdk::produce_opts(&env.mtls.bootstrap, &[topic], 1, 1, "bad", 0.0, &props);
        assert_eq!(r["acked"].as_u64(), Some(0), "must not be accepted: {r}");
        r
    };
    let rogue = failing(Some("rogue"));
    let expired = failing(Some("expired"));
    let none = failing(None);
    eprintln!("rogue: {rogue}\nexpired: {expired}\nno certificate: {none}");

    // librdkafka (like the Java client) offers no certificate at all when its
    // issuer is not one the server names; a client that does present an untrusted
    // one is refused by the proxy's verification.
    let refused = raw_tls_with_cert(env, "rogue");
    eprintln!("raw TLS client with the rogue certificate: {refused}");

    // Plaintext Kafka bytes on the TLS port: the proxy closes the connection.
    let port: u16 = env
        .mtls
        .bootstrap
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // ApiVersions v0, correlation id 7, client id "plain".
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 7, 0, 5];
    frame.extend(b"plain");
    let mut msg = (frame.len() as i32).to_be_bytes().to_vec();
    msg.extend(frame);
    s.write_all(&msg).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    // A TLS alert at most (a few bytes), never a Kafka response; then EOF.
    assert!(n < 16, "plaintext client got {n} bytes back");

    // A reload re-reads the certificate files; connections already open stay.
    let (code, body) = env.mtls.http("POST", "/reload");
    assert_eq!(code, 200, "reload with TLS: {body}");

    let g = good.join().unwrap();
    super::assert_produced(&g, 6000);

    let log = env.mtls.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    eprintln!("{}", failures.join("\n"));
    for reason in [
        "UnknownIssuer",
        "certificate expired",
        "peer sent no certificates",
        "InvalidContentType",
    ] {
        assert!(
            failures.iter().any(|l| l.contains(reason)),
            "a handshake failure naming {reason}"
        );
    }
}

/// A TLS client that always presents `who`'s certificate, then sends an ApiVersions
/// request; returns how the exchange ended.
fn raw_tls_with_cert(env: &TlsEnv, who: &str) -> String {
    let config = switchyard::tls::client_config(&switchyard::config::UpstreamTls {
        ca: Some(env.certs.join("ca.crt")),
        cert: Some(env.certs.join(format!("{who}.crt"))),
        key: Some(env.certs.join(format!("{who}.key"))),
    })
    .unwrap();
    let port: u16 = env
        .mtls
        .bootstrap
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let conn = rustls::ClientConnection::new(config, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 9, 0, 3];
    frame.extend(b"raw");
    let mut msg = (frame.len() as i32).to_be_bytes().to_vec();
    msg.extend(frame);
    let write = tls.write_all(&msg).and_then(|_| tls.flush());
    let mut buf = [0u8; 64];
    let read = tls.read(&mut buf);
    match (write, read) {
        (Err(e), _) => format!("write failed: {e}"),
        (Ok(()), Ok(0)) => "closed".into(),
        (Ok(()), Ok(n)) => panic!("the proxy answered an untrusted client ({n} bytes)"),
        (Ok(()), Err(e)) => format!("read failed: {e}"),
    }
}

fn sasl_java_props(env: &TlsEnv, mechanism: &str, user: &str, password: &str) -> Vec<String> {
    let module = if mechanism == "PLAIN" {
        "org.apache.kafka.common.security.plain.PlainLoginModule"
    } else {
        "org.apache.kafka.common.security.scram.ScramLoginModule"
    };
    [
        "security.protocol=SASL_SSL".to_string(),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.jaas.config={module} required username=\"{user}\" password=\"{password}\";"),
        "ssl.truststore.type=PEM".to_string(),
        format!(
            "ssl.truststore.location={}",
            env.certs.join("ca.crt").display()
        ),
    ]
    .into_iter()
    .flat_map(|p| ["--prop".to_string(), p])
    .collect()
}

fn sasl_rdk_props(
    env: &TlsEnv,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "sasl_ssl".to_string()),
        ("sasl.mechanisms", mechanism.to_string()),
        ("sasl.username", user.to_string()),
        ("sasl.password", password.to_string()),
        (
            "ssl.ca.location",
            env.certs.join("ca.crt").display().to_string(),
        ),
    ]
}

/// SASL_SSL with SCRAM-SHA-512 through the proxy: Java and librdkafka produce and
/// consume a topic on the SCRAM-only 2.4.1 cluster and one on the TLS-only 3.9
/// cluster; the proxy logs in to each with that cluster's own settings.
pub fn sasl_scram_round_trip(env: &TlsEnv) {
    const N: u64 = 5_000;
    create_topic_on(&env.scram_cluster, "sasl-src");
    create_topic_on(&env.cluster, "sasl-tgt");
    let jprops = sasl_java_props(env, "SCRAM-SHA-512", "alice", "alice-secret");
    let owned = sasl_rdk_props(env, "SCRAM-SHA-512", "alice", "alice-secret");
    let rprops: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for topic in ["sasl-src", "sasl-tgt"] {
        exchange(&env.sasl.bootstrap, topic, N, 1, &jprops, &rprops);
    }
    assert!(
        env.sasl
            .log_text()
            .contains("SASL authentication succeeded user=alice"),
        "the SASL user is logged as the principal"
    );
}

/// A wrong password and an unknown user fail with an authentication error and a
/// logged reason, beside a client that keeps working.
pub fn sasl_failures(env: &TlsEnv) {
    let topic = "sasl-src";
    let good = {
        let args = with(
            &[
                "produce",
                "--bootstrap",
                &env.sasl.bootstrap,
                "--topic",
                topic,
                "--count",
                "4000",
                "--keys",
                "10",
                "--key-prefix",
                "beside",
                "--rate",
                "400",
            ],
            &sasl_java_props(env, "SCRAM-SHA-512", "alice", "alice-secret"),
        );
        std::thread::spawn(move || java(args))
    };
    std::thread::sleep(Duration::from_secs(3));
    for (mechanism, user, password) in [
        ("SCRAM-SHA-512", "alice", "wrong"),
        ("SCRAM-SHA-512", "mallory", "whatever"),
        ("PLAIN", "alice", "wrong"),
    ] {
        let p = java(with(
            &[
                "produce",
                "--bootstrap",
                &env.sasl.bootstrap,
                "--topic",
                topic,
                "--count",
                "1",
                "--keys",
                "1",
                "--key-prefix",
                "bad",
                "--timeout-s",
                "20",
            ],
            &sasl_java_props(env, mechanism, user, password),
        ));
        assert_eq!(p["acked"].as_u64(), Some(0), "{mechanism} {user}: {p}");
        let err = p.to_string();
        assert!(
            err.contains("Authentication failed") || err.contains("authentication failed"),
            "a clean authentication error for {mechanism} {user}: {p}"
        );
        let owned = sasl_rdk_props(env, mechanism, user, password);
        let mut rprops: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        rprops.push(("message.timeout.ms", "6000"));
        let r = rdk::produce_opts(&env.sasl.bootstrap, &[topic], 1, 1, "bad", 0.0, &rprops);
        assert_eq!(
            r["acked"].as_u64(),
            Some(0),
            "librdkafka {mechanism} {user}: {r}"
        );
    }
    let g = good.join().unwrap();
    super::assert_produced(&g, 4000);
    let log = env.sasl.log_text();
    for who in ["user `alice`", "user `mallory`"] {
        assert!(
            log.lines()
                .any(|l| l.contains("SASL authentication failed") && l.contains(who)),
            "a logged failure for {who}"
        );
    }
}

const SNI_TOPICS: [&str; 2] = ["sni-secure", "sni-legacy"];

/// SNI mode (one port for every virtual broker): a proxy in front of the TLS-only
/// 3.9 cluster (virtual brokers from 0) and the SCRAM-only 2.4.1 cluster (virtual
/// brokers from 1000), advertising `b{node}.kafka.local` on its one port. The clients run in a
/// child process inside a private mount namespace whose /etc/hosts names
/// `bootstrap.kafka.local` and every `b{node}.kafka.local` (so the machine's own
/// resolver is left alone): Java and librdkafka produce and consume a topic on each
/// cluster through `bootstrap.kafka.local`, verifying the server certificate's
/// name as they do by default.
pub fn sni_mode(env: &TlsEnv) {
    create_topic_on(&env.cluster, SNI_TOPICS[0]);
    create_topic_on(&env.scram_cluster, SNI_TOPICS[1]);
    let list = toml_list;
    let (_, password_file) = env.scram_cluster.scram.clone().unwrap();
    let toml = format!(
        "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [clusters.secure]\nbootstrap = [{}]\ntls = {{ ca = \"{}\" }}\n\n\
         [clusters.legacy]\nbootstrap = [{}]\nnode_id_offset = 1000\n\
         sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"admin\", password_file = \"{}\" }}\n\n\
         [routes]\ndefault_cluster = \"secure\"\n\n\
         [routes.topics.\"{}\"]\nproduce = \"legacy\"\nconsume = \"legacy\"\n\n\
         [routes.groups.\"^{}-.*\"]\ncluster = \"legacy\"\n",
        env.certs.join("server.crt").display(),
        env.certs.join("server.key").display(),
        list(&env.cluster),
        env.certs.join("ca.crt").display(),
        list(&env.scram_cluster),
        password_file.display(),
        SNI_TOPICS[1],
        SNI_TOPICS[1],
    );
    let proxy = Proxy::start_env(
        "security-sni-proxy",
        &toml,
        &[],
        &[
            ("SWITCHYARD__LISTENER__MODE", "sni".into()),
            (
                "SWITCHYARD__LISTENER__SNI_PATTERN",
                "b{node}.kafka.local".into(),
            ),
        ],
    );
    let port = proxy.bootstrap.rsplit(':').next().unwrap().to_string();
    let mut names: Vec<String> = env
        .cluster
        .broker_ids()
        .iter()
        .chain(
            env.scram_cluster
                .broker_ids()
                .iter()
                .map(|i| i + 1000)
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|id| format!("b{id}.kafka.local"))
        .collect();
    let hosts = scratch("security-sni-hosts").join("hosts");
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.push_str(&format!(
        "\n127.0.0.1 bootstrap.kafka.local {}\n",
        names.join(" ")
    ));
    std::fs::write(&hosts, text).unwrap();

    // Root may unshare a mount namespace; anyone else maps themselves to root in a
    // user namespace first.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .arg(if root { "-m" } else { "-rm" })
        .args(["sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""])
        .arg(&hosts)
        .arg(&exe)
        .args([
            "--exact",
            "sni_clients_in_a_namespace",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "SWITCHYARD_SNI_BOOTSTRAP",
            format!("bootstrap.kafka.local:{port}"),
        )
        .env("SWITCHYARD_SNI_CA", env.certs.join("ca.crt"))
        .output()
        .expect("unshare (util-linux) runs the clients");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "SNI clients failed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "the client test ran: {stdout}");

    let log = proxy.log_text();
    assert!(
        !log.contains("virtual broker listener bound"),
        "SNI mode opens no per-broker ports"
    );
    for name in names.drain(..) {
        assert!(
            log.contains(&format!("sni=\"{name}\"")) || log.contains(&format!("sni={name}")),
            "{name} was routed by SNI"
        );
    }
    let metrics = proxy.metrics();
    let listeners: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_connections_total{"))
        .collect();
    assert!(
        listeners
            .iter()
            .all(|l| l.contains("listener=\"bootstrap\"")),
        "every connection came in on the one port: {listeners:?}"
    );
}

/// The client half of [`sni_mode`], run in the child process.
pub fn sni_clients() {
    let bootstrap = std::env::var("SWITCHYARD_SNI_BOOTSTRAP")
        .expect("run by sni_mode, inside a mount namespace with the SNI names in /etc/hosts");
    let ca = std::env::var("SWITCHYARD_SNI_CA").unwrap();
    const N: u64 = 3_000;
    let java_props: Vec<String> = [
        "security.protocol=SSL".to_string(),
        "ssl.truststore.type=PEM".to_string(),
        format!("ssl.truststore.location={ca}"),
    ]
    .into_iter()
    .flat_map(|p| ["--prop".to_string(), p])
    .collect();
    let rdk_props = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
    ];
    for topic in SNI_TOPICS {
        exchange(&bootstrap, topic, N, 2, &java_props, &rdk_props);
        eprintln!(
            "SNI: {topic}: Java and librdkafka produced {N} each and consumed {} each",
            2 * N
        );
    }
}
