//! The Foundation scenarios, run against one cluster of a given Kafka version with
//! the proxy in front; everything goes through the proxy only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    assert_consumed, assert_produced, go_driver, java_driver, rdk, Cluster, KafkaVersion, Proxy,
};

pub struct Env {
    pub cluster: Cluster,
    pub proxy: Proxy,
}

impl Env {
    pub fn start(version: KafkaVersion, name: &str) -> Env {
        let cluster = Cluster::start(version, 3, &format!("{name}-kafka"));
        let proxy = Proxy::start(
            &format!("{name}-proxy"),
            &clusters_toml(&cluster),
            &cluster.broker_ids(),
        );
        Env { cluster, proxy }
    }

    pub fn bootstrap(&self) -> &str {
        &self.proxy.bootstrap
    }
}

/// The `[clusters]` and `[routes]` sections for a proxy in front of `cluster` alone.
pub fn clusters_toml(cluster: &Cluster) -> String {
    format!(
        "[clusters.source]\nbootstrap = [{}]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        cluster
            .bootstrap_list()
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn create_topic(env: &Env, topic: &str, partitions: u32) {
    // Every broker up (a broker an earlier test killed may still be starting).
    let n = env.cluster.broker_ids().len();
    env.cluster.wait_brokers(n, Duration::from_secs(120));
    let v = java_driver(&[
        "create-topic",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        &partitions.to_string(),
        "--replication",
        "3",
    ]);
    assert_eq!(v["ok"], Value::Bool(true), "create topic {topic}: {v}");
}

const RECORDS: u64 = 100_000;
const KEYS: u64 = 100;
const FIRST_RUN: u64 = 40_000;

/// A client driver program: takes its arguments, returns its JSON summary. The Java
/// and franz-go drivers share flag names (Go's flag package accepts `--name value`).
type Driver = fn(&[&str]) -> Value;

/// Creates a topic, produces 100k idempotent acks=all records, consumes them in a
/// group of 3, stops part way, restarts, and resumes at the committed offsets.
fn driver_round_trip(env: &Env, driver: Driver, name: &str) {
    let topic = format!("{name}-orders");
    let group = format!("{name}-group");
    let (records, keys, first_run) = (RECORDS.to_string(), KEYS.to_string(), FIRST_RUN.to_string());
    create_topic(env, &topic, 6);
    let p = driver(&[
        "produce",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        &topic,
        "--count",
        &records,
        "--keys",
        &keys,
        "--acks",
        "all",
    ]);
    assert_produced(&p, RECORDS);
    let seen = super::scratch(&format!("{name}-seen")).join("seen.txt");
    let seen = seen.display().to_string();
    let consume = |stop_after: Option<&str>| {
        let mut args = vec![
            "consume",
            "--bootstrap",
            env.bootstrap(),
            "--topic",
            &topic,
            "--group",
            &group,
            "--members",
            "3",
            "--expect",
            &records,
            "--seen-file",
            &seen,
            "--timeout-s",
            "120",
        ];
        if let Some(n) = stop_after {
            args.extend(["--stop-after", n]);
        }
        driver(&args)
    };
    let first = consume(Some(&first_run));
    assert_eq!(
        first["consumed"].as_u64(),
        Some(FIRST_RUN),
        "first run: {first}"
    );
    // Commits happen after every processed batch and before revocation: a restart
    // re-reads nothing.
    let second = consume(None);
    assert_consumed(&second, RECORDS, 0);
}

/// The Java client (kafka-clients; idempotence is its driver's default).
pub fn java_round_trip(env: &Env) {
    driver_round_trip(env, java_driver, "java");
}

/// franz-go (idempotent by default).
pub fn franz_round_trip(env: &Env) {
    driver_round_trip(env, go_driver, "franz");
}

/// librdkafka: same flow, topic created with librdkafka's admin API.
pub fn rdkafka_round_trip(env: &Env) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    let topic = "rdkafka-orders";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", env.bootstrap())
            .create()
            .unwrap();
        let res = admin
            .create_topics(
                &[NewTopic::new(topic, 6, TopicReplication::Fixed(3))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create_topics");
        for r in res {
            r.expect("topic created");
        }
    });
    // Let every broker learn the new topic before producing.
    std::thread::sleep(Duration::from_secs(2));
    let p = rdk::produce(env.bootstrap(), topic, RECORDS, KEYS, "k");
    assert_produced(&p, RECORDS);
    let seen = Arc::new(rdk::Seen::default());
    let first = rdk::consume(
        env.bootstrap(),
        topic,
        "rdkafka-group",
        3,
        RECORDS,
        Some(FIRST_RUN),
        &seen,
        Duration::from_secs(120),
    );
    assert!(
        first["consumed"].as_u64().unwrap() >= FIRST_RUN,
        "first run: {first}"
    );
    assert_eq!(first["duplicates"].as_u64(), Some(0), "first run: {first}");
    let second = rdk::consume(
        env.bootstrap(),
        topic,
        "rdkafka-group",
        3,
        RECORDS,
        None,
        &seen,
        Duration::from_secs(120),
    );
    assert_consumed(&second, RECORDS, 0);
}

fn assert_admin_ok(v: &Value) {
    assert_eq!(v["ok"], Value::Bool(true), "admin steps failed: {v}");
    assert!(v["steps"].as_array().is_some_and(|s| s.len() >= 10), "{v}");
}

/// Admin operations through the proxy with two admin clients: create, list,
/// describe, describe and alter configs, list offsets, groups, describe cluster,
/// delete.
pub fn admin_operations(env: &Env) {
    // A group with committed offsets, for describe group / list group offsets.
    create_topic(env, "admin-group-topic", 3);
    let p = java_driver(&[
        "produce",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        "admin-group-topic",
        "--count",
        "300",
        "--keys",
        "10",
    ]);
    assert_produced(&p, 300);
    let c = java_driver(&[
        "consume",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        "admin-group-topic",
        "--group",
        "admin-group",
        "--members",
        "1",
        "--expect",
        "300",
    ]);
    assert_consumed(&c, 300, 0);
    let v = java_driver(&[
        "admin",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        "java-admin-topic",
        "--partitions",
        "6",
        "--replication",
        "3",
        "--group",
        "admin-group",
    ]);
    assert_admin_ok(&v);
    let v = go_driver(&[
        "admin",
        "-bootstrap",
        env.bootstrap(),
        "-topic",
        "franz-admin-topic",
        "-partitions",
        "6",
        "-replication",
        "3",
    ]);
    assert_admin_ok(&v);
    // The clients saw only virtual brokers and the configured cluster id.
    let status = env.proxy.status();
    assert_eq!(status["cluster_id"], "switchyard-test");
    assert_eq!(status["clusters"][0]["reachable"], true, "{status}");
    assert_eq!(status["clusters"][0]["broker_count"], 3, "{status}");
}

/// One broker is killed while an idempotent producer runs through the proxy: the
/// producer rides through on retriable errors and nothing acknowledged is lost.
/// Restarts a killed broker when dropped, and waits for it.
struct RestartOnDrop<'a> {
    cluster: &'a super::Cluster,
    id: i32,
}

impl Drop for RestartOnDrop<'_> {
    fn drop(&mut self) {
        self.cluster.start_broker(self.id);
        // Unwinding from a failed assertion: a second panic would abort the whole
        // binary, so the next test waits for the broker instead.
        if !std::thread::panicking() {
            let n = self.cluster.broker_ids().len();
            self.cluster.wait_brokers(n, Duration::from_secs(120));
        }
    }
}

pub fn broker_killed_under_load(env: &Env) {
    let topic = "failover";
    create_topic(env, topic, 6);
    let count = 60_000u64;
    let bootstrap = env.bootstrap().to_string();
    let producer = std::thread::spawn(move || {
        java_driver(&[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--keys",
            "60",
            "--rate",
            "3000",
            "--timeout-s",
            "150",
        ])
    });
    // The group read below needs the offsets topic, which cannot be created with a
    // broker down (its replication factor is 3); tests run in any order.
    env.cluster.ensure_offsets_topic(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(6));
    let victim = 2;
    env.cluster.kill_broker(victim);
    // Back up whatever happens below: the cluster is shared by the other tests.
    let _restart = RestartOnDrop {
        cluster: &env.cluster,
        id: victim,
    };
    let p = producer.join().unwrap();
    assert_produced(&p, count);
    // Every acknowledged record is readable afterwards.
    let c = go_driver(&[
        "consume",
        "-bootstrap",
        env.bootstrap(),
        "-topic",
        topic,
        "-group",
        "failover-check",
        "-members",
        "1",
        "-expect",
        &count.to_string(),
        "-timeout-s",
        "120",
    ]);
    assert_consumed(&c, count, 0);
    drop(_restart);
    assert!(
        env.proxy
            .metrics()
            .contains("switchyard_upstream_errors_total"),
        "the lost broker shows in upstream error metrics"
    );
}

/// Sends `bytes` on a fresh connection (then half-closes if `eof`) and asserts the
/// proxy closes it within 10 s.
fn expect_closed(proxy: &Proxy, what: &str, bytes: &[u8], eof: bool) {
    let mut s = TcpStream::connect(&proxy.bootstrap).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if eof {
        let _ = s.shutdown(Shutdown::Write);
    }
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // e.g. an ApiVersions answer before the bad frame
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!(
                "{what}: proxy did not close the connection ({e}) after {:?}",
                started.elapsed()
            ),
        }
    }
}

fn frame(api_key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    f.extend_from_slice(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

/// Malformed and hostile frames close only their own connection, with a logged
/// reason, while a real client keeps working beside them.
pub fn bad_input(env: &Env) {
    create_topic(env, "bad-input-neighbour", 3);
    let bootstrap = env.bootstrap().to_string();
    let neighbour = std::thread::spawn(move || {
        go_driver(&[
            "produce",
            "-bootstrap",
            &bootstrap,
            "-topic",
            "bad-input-neighbour",
            "-count",
            "20000",
            "-keys",
            "20",
            "-rate",
            "2000",
        ])
    });
    std::thread::sleep(Duration::from_secs(2));
    let p = &env.proxy;
    // Deterministic "random" bytes (xorshift), starting with a negative length.
    let mut x: u32 = 0x9e3779b9;
    let mut random: Vec<u8> = vec![0x80];
    for _ in 0..4095 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push(x as u8);
    }
    expect_closed(p, "random bytes", &random, false);
    expect_closed(p, "negative length", &(-5i32).to_be_bytes(), false);
    expect_closed(p, "huge length", &(i32::MAX).to_be_bytes(), false);
    let mut truncated = 100i32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0, 3, 0, 1, 0, 0, 0, 7]);
    expect_closed(p, "truncated frame", &truncated, true);
    expect_closed(p, "unknown api key", &frame(999, 0, 1, &[]), false);
    // Metadata v99: not advertised. A valid ApiVersions first, as clients do.
    let mut seq = frame(18, 0, 1, &[]);
    seq.extend(frame(3, 99, 2, &[0, 0, 0, 0]));
    expect_closed(p, "unsupported version", &seq, false);
    expect_closed(
        p,
        "header shorter than its fields",
        &{
            let mut f = 6i32.to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 3, 0, 1, 0, 0]);
            f
        },
        false,
    );

    let n = neighbour.join().unwrap();
    assert_produced(&n, 20_000);
    let log = p.log_text();
    for reason in [
        "negative frame length",
        "exceeds the limit",
        "mid-frame",
        "unknown api key 999",
        "not advertised",
        "too short",
    ] {
        assert!(log.contains(reason), "proxy log lacks {reason:?}");
    }
    // And the proxy still serves new clients.
    let v = java_driver(&[
        "create-topic",
        "--bootstrap",
        env.bootstrap(),
        "--topic",
        "after-bad-input",
        "--partitions",
        "1",
        "--replication",
        "3",
    ]);
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    assert!(p.metrics().contains("switchyard_rejected_frames_total"));
}

/// SIGTERM while a producer runs: the proxy stops taking requests, answers what is
/// in flight, exits 0 well within its grace period, and nothing the producer saw
/// acknowledged is missing from the cluster.
pub fn graceful_shutdown(env: &Env) {
    let topic = "graceful-shutdown";
    create_topic(env, topic, 3);
    let proxy = Proxy::start(
        "shutdown-proxy",
        &clusters_toml(&env.cluster),
        &env.cluster.broker_ids(),
    );
    let bootstrap = proxy.bootstrap.clone();
    let producer = std::thread::spawn(move || {
        go_driver(&[
            "produce",
            "-bootstrap",
            &bootstrap,
            "-topic",
            topic,
            "-count",
            "20000",
            "-keys",
            "20",
            "-rate",
            "2000",
            "-timeout-s",
            "15",
        ])
    });
    // Terminate once the producer is writing through the proxy (a fixed sleep was
    // not always long enough for the client to start on a loaded machine), then a
    // little later so requests are in flight.
    let writing = Instant::now() + Duration::from_secs(60);
    while !proxy
        .metrics()
        .lines()
        .any(|l| l.starts_with("switchyard_requests_total{api=\"Produce\""))
    {
        assert!(
            Instant::now() < writing,
            "the producer never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let code = proxy.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "proxy exit status after SIGTERM");
    let took = started.elapsed();
    let log = proxy.log_text();
    assert!(
        log.contains("shutting down"),
        "no shutdown line in the proxy log"
    );
    assert!(
        !log.contains("grace period over"),
        "in-flight requests did not finish within the grace period ({took:?})"
    );
    let p = producer.join().unwrap();
    let acked = p["acked"].as_u64().unwrap();
    assert!(
        acked > 0,
        "the producer got acknowledgements before shutdown: {p}"
    );
    // Read the cluster directly: every acknowledged record is there, in key order.
    // (The reader may overshoot `expect` by the rest of its last poll, and records
    // written but not yet acknowledged when the producer gave up may be there too.)
    let expect = acked.to_string();
    let cluster_bootstrap = env.cluster.bootstrap();
    let c = go_driver(&[
        "consume",
        "-bootstrap",
        &cluster_bootstrap,
        "-topic",
        topic,
        "-group",
        "graceful-shutdown-check",
        "-members",
        "1",
        "-expect",
        &expect,
        "-timeout-s",
        "60",
    ]);
    assert_eq!(
        c["missing"].as_u64(),
        Some(0),
        "acknowledged records missing: {c}"
    );
    assert!(c["unique"].as_u64().unwrap() >= acked, "{c}");
    assert_eq!(c["order_violations"].as_u64(), Some(0), "{c}");
    assert_eq!(c["duplicates"].as_u64(), Some(0), "{c}");
}
