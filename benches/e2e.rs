//! End-to-end comparison: the same produce and consume load with librdkafka, direct
//! to a Kafka 3.9 broker and through Switchyard, in the same run, printed as ratios
//! (proxy / direct). Run with `cargo bench --bench e2e`.
//!
//! Arms alternate (direct, proxy, direct, proxy) so drift in the machine's state
//! affects both. Each arm:
//! - throughput: produce RECORDS records of VALUE_BYTES as fast as possible
//!   (idempotent, acks=all, linger 5 ms), then consume them all with a fresh group;
//! - latency: produce at a fixed, modest rate and record each record's send-to-ack
//!   time (p50, p99).
//!
//! The broker, the proxy and the client share the machine's cores; on a 2-core
//! machine the proxy's CPU use is paid out of the broker's budget, which is what a
//! sidecar deployment pays too.

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

const RECORDS: u64 = 200_000;
const VALUE_BYTES: usize = 1024;
const LATENCY_RATE: u64 = 2_000; // records per second
const LATENCY_SECS: u64 = 5;
/// Measured rounds; a first, unreported round warms the broker's JIT and page cache.
const ROUNDS: usize = 2;

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
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
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
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
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

fn create_topic(env: &Env, topic: &str) {
    let v = harness::java_driver(&[
        "create-topic",
        "--bootstrap",
        &env.cluster.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        "6",
        "--replication",
        "1",
    ]);
    assert_eq!(v["ok"], true, "{v}");
}

#[derive(Default)]
struct Arm {
    produce: Vec<f64>,
    consume: Vec<f64>,
    p50: Vec<Duration>,
    p99: Vec<Duration>,
}

/// Median; with an even count, the upper middle value.
fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("starting a 1-broker Kafka 3.9 cluster and Switchyard...");
    let cluster = harness::Cluster::start(KafkaVersion::V3, 1, "bench-kafka");
    let clusters_toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\n[routes]\ndefault_cluster = \"source\"\n",
        cluster.bootstrap()
    );
    let proxy = harness::Proxy::start("bench-proxy", &clusters_toml, &cluster.broker_ids());
    let env = Env { cluster, proxy };

    let mut direct = Arm::default();
    let mut proxied = Arm::default();
    for round in 0..=ROUNDS {
        for (name, arm, bootstrap) in [
            ("direct", &mut direct, env.cluster.bootstrap()),
            ("proxy", &mut proxied, env.proxy.bootstrap.clone()),
        ] {
            let topic = format!("bench-{name}-{round}");
            create_topic(&env, &topic);
            std::thread::sleep(Duration::from_secs(1));
            let produce = produce_throughput(&bootstrap, &topic, RECORDS);
            let consume = consume_throughput(&bootstrap, &topic, &format!("g-{topic}"), RECORDS);
            let lat_topic = format!("{topic}-lat");
            create_topic(&env, &lat_topic);
            std::thread::sleep(Duration::from_secs(1));
            let (p50, p99) = produce_latency(&bootstrap, &lat_topic);
            println!(
                "round {round}{} {name:>6}: produce {produce:>9.0} rec/s  consume {consume:>9.0} rec/s  ack latency p50 {p50:>8.2?} p99 {p99:>8.2?}",
                if round == 0 { " (warm-up)" } else { "" }
            );
            if round == 0 {
                continue; // warm-up
            }
            arm.produce.push(produce);
            arm.consume.push(consume);
            arm.p50.push(p50);
            arm.p99.push(p99);
        }
    }
    let ratio = |p: f64, d: f64| p / d;
    println!("\nmedians over {ROUNDS} rounds, {RECORDS} records of {VALUE_BYTES} B; latency at {LATENCY_RATE} rec/s:");
    println!(
        "  produce throughput  direct {:>9.0} rec/s  proxy {:>9.0} rec/s  ratio {:.3}",
        median(&direct.produce),
        median(&proxied.produce),
        ratio(median(&proxied.produce), median(&direct.produce))
    );
    println!(
        "  consume throughput  direct {:>9.0} rec/s  proxy {:>9.0} rec/s  ratio {:.3}",
        median(&direct.consume),
        median(&proxied.consume),
        ratio(median(&proxied.consume), median(&direct.consume))
    );
    println!(
        "  ack latency p50     direct {:>9.2?}  proxy {:>9.2?}  ratio {:.3}",
        median(&direct.p50),
        median(&proxied.p50),
        median(&proxied.p50).as_secs_f64() / median(&direct.p50).as_secs_f64()
    );
    println!(
        "  ack latency p99     direct {:>9.2?}  proxy {:>9.2?}  ratio {:.3}",
        median(&direct.p99),
        median(&proxied.p99),
        median(&proxied.p99).as_secs_f64() / median(&direct.p99).as_secs_f64()
    );
}
