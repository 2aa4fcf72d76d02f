//! End-to-end comparison: the same load with librdkafka, direct to Apache Kafka 3.9
//! and through Switchyard, in the same run, printed as ratios (proxy / direct).
//! Run with `cargo bench --bench e2e` (`SWITCHYARD_BENCH=tls` runs only part 3,
//! `SWITCHYARD_BENCH=two` only part 4).
//!
//! 1. One broker, replication 1: produce RECORDS records of VALUE_BYTES as fast as
//!    possible (idempotent, acks=all, linger 5 ms), consume them with a fresh group,
//!    and produce at a fixed rate to measure send-to-ack latency (p50, p99). Here the
//!    client and the proxy compete with the broker for CPU.
//! 2. Three brokers, replication 3, acks=all: produce throughput only, with the
//!    brokers as the bottleneck.
//! 3. TLS: one broker again, three arms: direct (plaintext), through the proxy in
//!    plaintext, and through a proxy that terminates TLS (the client speaks TLS to
//!    the proxy, the proxy plaintext to the broker). Reported as TLS-proxy / direct
//!    and TLS-proxy / plaintext-proxy.
//! 4. Two clusters: the proxy in the middle of a migration, with a Kafka 2.4.1
//!    source and a Kafka 3.9 target (one broker each) and regex rows sending the
//!    bench's topics and groups to the target. Three arms: direct to the target, a
//!    proxy of the target alone, and the two-cluster proxy. Reported as two-cluster
//!    proxy / direct and two-cluster proxy / one-cluster proxy: the price of
//!    routing (merged metadata, per-topic and per-group verdicts, group attribution).
//!
//! Each part runs a warm-up round (not counted) and ROUNDS measured rounds; the two
//! arms of a round run back to back in alternating order, each round gives one
//! proxy/direct ratio per metric, and the median ratio is reported. On a 2-core
//! machine the proxy's CPU is paid out of the broker's and the client's budget,
//! which is what a sidecar deployment pays too.

#[path = "../tests/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{scenarios::Env, KafkaVersion};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

const RECORDS: u64 = 100_000;
const VALUE_BYTES: usize = 1024;
const LATENCY_RATE: u64 = 2_000; // records per second
const LATENCY_SECS: u64 = 5;
/// Measured rounds; a first, unreported round warms the broker's JIT and page cache.
const ROUNDS: usize = 5;

/// librdkafka properties every client of the current arm gets (TLS settings for
/// the TLS arm); set before each arm runs.
static CLIENT_EXTRA: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn with_extra(mut cfg: ClientConfig) -> ClientConfig {
    for (k, v) in CLIENT_EXTRA.lock().unwrap().iter() {
        cfg.set(k, v);
    }
    cfg
}

struct LatencyCtx(Arc<Mutex<Vec<Duration>>>);
impl ClientContext for LatencyCtx {}
impl ProducerContext for LatencyCtx {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        if result.is_ok() {
            self.0.lock().unwrap().push(sent.elapsed());
        }
    }
}

fn producer(bootstrap: &str, samples: Arc<Mutex<Vec<Duration>>>) -> BaseProducer<LatencyCtx> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    with_extra(cfg)
        .create_with_context(LatencyCtx(samples))
        .expect("producer")
}

/// Produces `count` records as fast as possible; returns records per second.
fn produce_throughput(bootstrap: &str, topic: &str, count: u64) -> f64 {
    let samples = Arc::new(Mutex::new(Vec::with_capacity(count as usize)));
    let p = producer(bootstrap, samples.clone());
    let value = vec![b'x'; VALUE_BYTES];
    let started = Instant::now();
    for i in 0..count {
        let key = format!("k{}", i % 1000);
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(&key)
            .payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let acked = samples.lock().unwrap().len() as u64;
    assert_eq!(acked, count, "every record acknowledged");
    count as f64 / started.elapsed().as_secs_f64()
}

/// Produces at a fixed rate; returns (p50, p99) send-to-ack latency.
fn produce_latency(bootstrap: &str, topic: &str) -> (Duration, Duration) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let p = producer(bootstrap, samples.clone());
    let value = vec![b'x'; VALUE_BYTES];
    let interval = Duration::from_secs_f64(1.0 / LATENCY_RATE as f64);
    let started = Instant::now();
    for i in 0..LATENCY_RATE * LATENCY_SECS {
        let due = started + interval * i as u32;
        while Instant::now() < due {
            p.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_micros(100));
        }
        let key = format!("k{}", i % 1000);
        let record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(&key)
            .payload(&value);
        p.send(record).map_err(|(e, _)| e).expect("send");
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    let mut s = samples.lock().unwrap().clone();
    s.sort();
    (s[s.len() / 2], s[s.len() * 99 / 100])
}

/// Consumes `count` records from the beginning with a fresh group; records/s.
fn consume_throughput(bootstrap: &str, topic: &str, group: &str, count: u64) -> f64 {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = with_extra(cfg).create().expect("consumer");
    c.subscribe(&[topic]).unwrap();
    let mut n = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    while n < count && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    assert_eq!(n, count, "consumed everything");
    n as f64 / started.unwrap().elapsed().as_secs_f64()
}

fn create_topic(cluster: &harness::Cluster, topic: &str, replication: u32) {
    let v = harness::java_driver(&[
        "create-topic",
        "--bootstrap",
        &cluster.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        "6",
        "--replication",
        &replication.to_string(),
    ]);
    assert_eq!(v["ok"], true, "{v}");
    // Let every broker learn the topic before the clock starts.
    std::thread::sleep(Duration::from_secs(1));
}

/// Median; with an even count, the upper middle value.
fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Per-round proxy/direct ratios of one metric, and their median.
#[derive(Default)]
struct Ratios(Vec<f64>);

impl Ratios {
    fn push(&mut self, proxy: f64, direct: f64) {
        self.0.push(proxy / direct);
    }

    fn report(&self, what: &str) {
        let list: Vec<String> = self.0.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "  {what:<28} median {:.3}  (rounds: {})",
            median(&self.0),
            list.join(" ")
        );
    }
}

/// One arm of a one-broker round: produce throughput, consume throughput, and
/// ack latency p50 and p99 (seconds), printed as it goes.
fn one_broker_arm(
    cluster: &harness::Cluster,
    topic: &str,
    bootstrap: &str,
    name: &str,
    round: usize,
) -> [f64; 4] {
    create_topic(cluster, topic, 1);
    let tput = produce_throughput(bootstrap, topic, RECORDS);
    let ctput = consume_throughput(bootstrap, topic, &format!("g-{topic}"), RECORDS);
    let lat_topic = format!("{topic}-lat");
    create_topic(cluster, &lat_topic, 1);
    let (l50, l99) = produce_latency(bootstrap, &lat_topic);
    println!(
        "round {round}{} {name:>6}: produce {tput:>9.0} rec/s  consume {ctput:>9.0} rec/s  ack latency p50 {l50:>8.2?} p99 {l99:>8.2?}",
        if round == 0 { " (warm-up)" } else { "" }
    );
    [tput, ctput, l50.as_secs_f64(), l99.as_secs_f64()]
}

/// Both arms of one round, in an order that alternates between rounds so neither
/// arm always runs on a warmer broker.
fn arms(round: usize, env: &Env) -> [(&'static str, String); 2] {
    let direct = ("direct", env.cluster.bootstrap());
    let proxy = ("proxy", env.proxy.bootstrap.clone());
    if round.is_multiple_of(2) {
        [direct, proxy]
    } else {
        [proxy, direct]
    }
}

fn start(brokers: usize, name: &str) -> Env {
    println!("starting a {brokers}-broker Kafka 3.9 cluster and Switchyard...");
    let cluster = harness::Cluster::start(KafkaVersion::V3, brokers, &format!("{name}-kafka"));
    let proxy = harness::Proxy::start(
        &format!("{name}-proxy"),
        &harness::scenarios::clusters_toml(&cluster),
        &cluster.broker_ids(),
    );
    Env { cluster, proxy }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SWITCHYARD_BENCH=tls runs only part 3, =two only part 4.
    match std::env::var("SWITCHYARD_BENCH").as_deref() {
        Ok("tls") => return tls_arms(),
        Ok("two") => return two_cluster_arms(),
        _ => {}
    }

    // 1. One broker, replication 1: the client and the proxy can be the bottleneck.
    let env = start(1, "bench1");
    let (mut produce, mut consume, mut p50, mut p99) = (
        Ratios::default(),
        Ratios::default(),
        Ratios::default(),
        Ratios::default(),
    );
    for round in 0..=ROUNDS {
        let mut results = std::collections::BTreeMap::new();
        for (name, bootstrap) in arms(round, &env) {
            let [tput, ctput, l50, l99] = one_broker_arm(
                &env.cluster,
                &format!("bench-{name}-{round}"),
                &bootstrap,
                name,
                round,
            );
            results.insert(name, (tput, ctput, l50, l99));
        }
        if round == 0 {
            continue;
        }
        let (d, p) = (results["direct"], results["proxy"]);
        produce.push(p.0, d.0);
        consume.push(p.1, d.1);
        p50.push(p.2, d.2);
        p99.push(p.3, d.3);
    }
    println!("\n1 broker, RF 1, {RECORDS} records of {VALUE_BYTES} B, latency at {LATENCY_RATE} rec/s; proxy / direct:");
    produce.report("produce throughput");
    consume.report("consume throughput");
    p50.report("ack latency p50");
    p99.report("ack latency p99");
    drop(env);

    // 2. Three brokers, replication 3, acks=all: the brokers are the bottleneck,
    //    the case the throughput aim (>= 0.95 of direct) is stated for.
    let env = start(3, "bench3");
    let mut produce = Ratios::default();
    for round in 0..=ROUNDS {
        let mut results = std::collections::BTreeMap::new();
        for (name, bootstrap) in arms(round, &env) {
            let topic = format!("bench-rf3-{name}-{round}");
            create_topic(&env.cluster, &topic, 3);
            let tput = produce_throughput(&bootstrap, &topic, RECORDS);
            println!(
                "round {round}{} {name:>6}: produce {tput:>9.0} rec/s (RF 3)",
                if round == 0 { " (warm-up)" } else { "" }
            );
            results.insert(name, tput);
        }
        if round > 0 {
            produce.push(results["proxy"], results["direct"]);
        }
    }
    println!("\n3 brokers, RF 3, acks=all, {RECORDS} records of {VALUE_BYTES} B; proxy / direct:");
    produce.report("produce throughput");
    drop(env);

    tls_arms();
    two_cluster_arms();
}

const METRICS: [&str; 4] = [
    "produce throughput",
    "consume throughput",
    "ack latency p50",
    "ack latency p99",
];

/// An arm: its name, the bootstrap its clients use, and their extra properties.
type Arm = (&'static str, String, Vec<(String, String)>);

/// Rounds of three one-broker arms on `cluster`, in an order that rotates each
/// round; `extra` holds each arm's client properties. Per metric, the per-round
/// ratios of arm `of` to arm `to` for each (`of`, `to`) in `pairs`.
fn three_arms(
    cluster: &harness::Cluster,
    prefix: &str,
    arms: [Arm; 3],
    pairs: &[(&str, &str)],
) -> Vec<Vec<Ratios>> {
    let mut out: Vec<Vec<Ratios>> = pairs
        .iter()
        .map(|_| METRICS.iter().map(|_| Ratios::default()).collect())
        .collect();
    for round in 0..=ROUNDS {
        let mut order = arms.to_vec();
        order.rotate_left(round % 3);
        let mut results = std::collections::BTreeMap::new();
        for (name, bootstrap, extra) in order {
            *CLIENT_EXTRA.lock().unwrap() = extra;
            let topic = format!("{prefix}-{name}-{round}");
            results.insert(
                name,
                one_broker_arm(cluster, &topic, &bootstrap, name, round),
            );
        }
        CLIENT_EXTRA.lock().unwrap().clear();
        if round == 0 {
            continue;
        }
        for (ratios, (of, to)) in out.iter_mut().zip(pairs) {
            for (i, r) in ratios.iter_mut().enumerate() {
                r.push(results[of][i], results[to][i]);
            }
        }
    }
    out
}

/// Part 4: the cost of routing between two clusters.
fn two_cluster_arms() {
    println!("starting a Kafka 2.4.1 source, a Kafka 3.9 target and two proxies...");
    let env = harness::migration::TwoClusters::start(
        "bench-two",
        "[routes.topics.\"^bench-two-.*\"]\nproduce = \"target\"\nconsume = \"target\"\n\n\
         [routes.groups.\"^g-bench-two-.*\"]\ncluster = \"target\"\n",
    );
    let single = harness::Proxy::start(
        "bench-two-single",
        &harness::scenarios::clusters_toml(&env.target),
        &env.target.broker_ids(),
    );
    let arms = [
        ("direct", env.target.bootstrap(), Vec::new()),
        ("one", single.bootstrap.clone(), Vec::new()),
        ("two", env.proxy.bootstrap.clone(), Vec::new()),
    ];
    let ratios = three_arms(
        &env.target,
        "bench-two",
        arms,
        &[("two", "direct"), ("two", "one")],
    );
    println!(
        "\n1 broker each, topics and groups routed to the target; two-cluster proxy / direct:"
    );
    for (r, m) in ratios[0].iter().zip(METRICS) {
        r.report(m);
    }
    println!("two-cluster proxy / one-cluster proxy:");
    for (r, m) in ratios[1].iter().zip(METRICS) {
        r.report(m);
    }
}

/// Part 3: the cost of TLS termination.
fn tls_arms() {
    let certs = harness::security::make_certs("bench-certs");
    let env = start(1, "bench-tls");
    let tls_proxy = harness::Proxy::start(
        "bench-tls-proxy",
        &format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n{}",
            certs.join("server.crt").display(),
            certs.join("server.key").display(),
            harness::scenarios::clusters_toml(&env.cluster)
        ),
        &env.cluster.broker_ids(),
    );
    let tls_extra = vec![
        ("security.protocol".to_string(), "ssl".to_string()),
        (
            "ssl.ca.location".to_string(),
            certs.join("ca.crt").display().to_string(),
        ),
    ];
    let arms = [
        ("direct", env.cluster.bootstrap(), Vec::new()),
        ("proxy", env.proxy.bootstrap.clone(), Vec::new()),
        ("tls", tls_proxy.bootstrap.clone(), tls_extra),
    ];
    let ratios = three_arms(
        &env.cluster,
        "bench-tls",
        arms,
        &[("tls", "direct"), ("tls", "proxy")],
    );
    let (vs_direct, vs_proxy) = (&ratios[0], &ratios[1]);
    println!("\n1 broker, TLS client -> proxy -> plaintext broker; TLS proxy / direct plaintext:");
    for (r, m) in vs_direct.iter().zip(METRICS) {
        r.report(m);
    }
    println!("TLS proxy / plaintext proxy:");
    for (r, m) in vs_proxy.iter().zip(METRICS) {
        r.report(m);
    }
}
