//! The librdkafka client (through the `rdkafka` crate) as a test driver, with the same
//! record format and JSON summary as the Java and franz-go drivers: key
//! `<prefix>-<i % keys>`, value `<key>|<seq>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde_json::{json, Value};

#[derive(Default)]
struct Delivery {
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct ProduceCtx(Arc<Delivery>);
impl ClientContext for ProduceCtx {}
impl ProducerContext for ProduceCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
                self.0
                    .first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Produces `count` keyed records with idempotence on and acks=all.
pub fn produce(bootstrap: &str, topic: &str, count: u64, keys: u64, prefix: &str) -> Value {
    produce_to(bootstrap, &[topic], count, keys, prefix, 0.0)
}

/// Like [`produce`], record `i` to `topics[i % n]`, paced at `rate` records per
/// second (0 = unlimited).
pub fn produce_to(
    bootstrap: &str,
    topics: &[&str],
    count: u64,
    keys: u64,
    prefix: &str,
    rate: f64,
) -> Value {
    produce_opts(bootstrap, topics, count, keys, prefix, rate, &[])
}

/// Like [`produce_to`], with extra librdkafka properties (TLS settings, timeouts).
pub fn produce_opts(
    bootstrap: &str,
    topics: &[&str],
    count: u64,
    keys: u64,
    prefix: &str,
    rate: f64,
    extra: &[(&str, &str)],
) -> Value {
    let topic = topics.join(",");
    let started = Instant::now();
    let delivery = Arc::new(Delivery::default());
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    let producer: BaseProducer<ProduceCtx> = cfg
        .create_with_context(ProduceCtx(delivery.clone()))
        .expect("rdkafka producer");
    let mut sent = 0;
    for i in 0..count {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            while Instant::now() < due {
                producer.poll(
                    due.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(5)),
                );
            }
        }
        let key = format!("{prefix}-{}", i % keys);
        let value = format!("{key}|{}", i / keys);
        let to = topics[(i % topics.len() as u64) as usize];
        loop {
            match producer.send(BaseRecord::to(to).key(&key).payload(&value)) {
                Ok(()) => break,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("rdkafka send: {e}"),
            }
        }
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    let fatal = producer
        .flush(Duration::from_secs(150))
        .err()
        .map(|e| e.to_string());
    let acked = delivery.acked.load(Ordering::Relaxed);
    let errors = delivery.errors.load(Ordering::Relaxed);
    let v = json!({
        "client": "librdkafka", "op": "produce", "topic": topic, "sent": sent,
        "acked": acked, "errors": errors,
        "first_error": *delivery.first_error.lock().unwrap(),
        "fatal": fatal, "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    eprintln!("librdkafka: {v}");
    v
}

#[derive(Default)]
struct Accounting {
    seen: HashSet<(String, u64)>,
    max_seq: HashMap<String, u64>,
    consumed: u64,
    duplicates: u64,
    order_violations: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Accounting {
    fn record(&mut self, value: &str) {
        self.consumed += 1;
        let Some((key, seq)) = value.rsplit_once('|') else {
            self.errors += 1;
            return;
        };
        let seq: u64 = seq.parse().unwrap_or(u64::MAX);
        if !self.seen.insert((key.to_string(), seq)) {
            self.duplicates += 1;
            return;
        }
        let max = self.max_seq.entry(key.to_string()).or_insert(seq);
        if seq < *max {
            self.order_violations += 1;
        } else {
            *max = seq;
        }
    }
}

/// Commits what was consumed before partitions are taken away, so a rebalance
/// causes no duplicates (commit-on-revoke).
struct ConsumeCtx;
impl ClientContext for ConsumeCtx {}
impl ConsumerContext for ConsumeCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
        }
    }
}

/// State carried between consume runs of one group (what `--seen-file` is for the
/// other drivers).
#[derive(Default)]
pub struct Seen(Mutex<Accounting>);

impl Seen {
    /// Every distinct value (`key|seq`) seen so far.
    pub fn values(&self) -> HashSet<String> {
        let acct = self.0.lock().unwrap();
        acct.seen.iter().map(|(k, s)| format!("{k}|{s}")).collect()
    }
}

/// Consumes `topic` in group `group` with `members` consumers until `expect` unique
/// records have been seen (across runs sharing `seen`) or `stop_after` records were
/// consumed in this run. Commits synchronously after each poll batch.
#[allow(clippy::too_many_arguments)]
pub fn consume(
    bootstrap: &str,
    topic: &str,
    group: &str,
    members: usize,
    expect: u64,
    stop_after: Option<u64>,
    seen: &Arc<Seen>,
    timeout: Duration,
) -> Value {
    consume_opts(
        bootstrap,
        topic,
        group,
        members,
        expect,
        stop_after,
        seen,
        timeout,
        &[],
    )
}

/// Like [`consume`], with extra librdkafka properties.
#[allow(clippy::too_many_arguments)]
pub fn consume_opts(
    bootstrap: &str,
    topic: &str,
    group: &str,
    members: usize,
    expect: u64,
    stop_after: Option<u64>,
    seen: &Arc<Seen>,
    timeout: Duration,
    extra: &[(&str, &str)],
) -> Value {
    let started = Instant::now();
    let deadline = started + timeout;
    let consumed_this_run = Arc::new(AtomicU64::new(0));
    {
        let mut acct = seen.0.lock().unwrap();
        acct.consumed = 0;
    }
    let done = |seen: &Seen, run: u64| {
        let acct = seen.0.lock().unwrap();
        acct.seen.len() as u64 >= expect || stop_after.is_some_and(|s| run >= s)
    };
    std::thread::scope(|s| {
        for _ in 0..members {
            let seen = seen.clone();
            let consumed_this_run = consumed_this_run.clone();
            s.spawn(move || {
                let mut cfg = ClientConfig::new();
                cfg.set("bootstrap.servers", bootstrap)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("session.timeout.ms", "10000");
                for (k, v) in extra {
                    cfg.set(*k, *v);
                }
                let consumer: BaseConsumer<ConsumeCtx> = cfg
                    .create_with_context(ConsumeCtx)
                    .expect("rdkafka consumer");
                let topics: Vec<&str> = topic.split(',').collect();
                consumer.subscribe(&topics).expect("subscribe");
                while Instant::now() < deadline
                    && !done(&seen, consumed_this_run.load(Ordering::SeqCst))
                {
                    let mut batch = 0;
                    while let Some(m) = consumer.poll(Duration::from_millis(200)) {
                        match m {
                            Ok(m) => {
                                let value = m
                                    .payload()
                                    .map(|p| String::from_utf8_lossy(p).to_string())
                                    .unwrap_or_default();
                                seen.0.lock().unwrap().record(&value);
                                batch += 1;
                                let n = consumed_this_run.fetch_add(1, Ordering::SeqCst) + 1;
                                if stop_after.is_some_and(|s| n >= s) || batch >= 500 {
                                    break;
                                }
                            }
                            Err(e) => {
                                let mut acct = seen.0.lock().unwrap();
                                acct.errors += 1;
                                acct.first_error.get_or_insert_with(|| e.to_string());
                                break;
                            }
                        }
                    }
                    if batch > 0 {
                        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                            let mut acct = seen.0.lock().unwrap();
                            acct.errors += 1;
                            acct.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                consumer.unsubscribe();
            });
        }
    });
    let acct = seen.0.lock().unwrap();
    let unique = acct.seen.len() as u64;
    let v = json!({
        "client": "librdkafka", "op": "consume", "topic": topic, "group": group,
        "consumed": acct.consumed, "unique": unique, "duplicates": acct.duplicates,
        "order_violations": acct.order_violations, "missing": expect.saturating_sub(unique),
        "errors": acct.errors, "first_error": acct.first_error, "fatal": Value::Null,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    eprintln!("librdkafka: {v}");
    v
}

/// One record read straight from a cluster.
#[derive(Debug, Clone)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub timestamp: i64,
}

/// Reads every record of `topic` on the cluster at `bootstrap`, partition by
/// partition from the start to the high watermark (no group, nothing committed).
pub fn dump(bootstrap: &str, topic: &str) -> Vec<Stored> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "switchyard-test-dump")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("rdkafka dump consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata for dump");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = HashMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(30))
            .expect("watermarks");
        if hi > lo {
            ends.insert(*p, hi);
            tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(lo))
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < ends.len() {
        assert!(
            Instant::now() < deadline,
            "dump of {topic} at {bootstrap} timed out"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let value = m
                    .payload()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                out.push(Stored {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value,
                    timestamp: m.timestamp().to_millis().unwrap_or(-1),
                });
                if m.offset() + 1 >= ends[&m.partition()] {
                    done.insert(m.partition());
                }
            }
            Some(Err(e)) => panic!("dump of {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The high watermark of every partition of `topic` on the cluster at `bootstrap`
/// (empty when the topic does not exist).
pub fn ends(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "switchyard-test-ends")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("rdkafka consumer");
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)) else {
        return BTreeMap::new();
    };
    let Some(t) = md.topics().first().filter(|t| t.error().is_none()) else {
        return BTreeMap::new();
    };
    t.partitions()
        .iter()
        .map(|p| {
            let (_, hi) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(30))
                .expect("watermarks");
            (p.id(), hi)
        })
        .collect()
}

/// Writes `records` to `topic` at `bootstrap`, each to its own partition with its
/// own key and timestamp (a replicator's copy), in order; returns how many were
/// acknowledged.
pub fn copy(bootstrap: &str, topic: &str, records: &[Stored]) -> u64 {
    let delivery = Arc::new(Delivery::default());
    let producer: BaseProducer<ProduceCtx> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(ProduceCtx(delivery.clone()))
        .expect("rdkafka producer");
    for r in records {
        let mut rec = BaseRecord::to(topic)
            .payload(&r.value)
            .partition(r.partition)
            .timestamp(r.timestamp);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        let mut rec = Some(rec);
        while let Some(one) = rec.take() {
            if let Err((e, back)) = producer.send(one) {
                assert_eq!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    "rdkafka send: {e}"
                );
                producer.poll(Duration::from_millis(10));
                rec = Some(back);
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    delivery.acked.load(Ordering::Relaxed)
}

/// Commits `offset` for partitions `0..partitions` of `topic` in `group` on the
/// cluster at `bootstrap`, as an admin tool would (no member, no generation), and
/// retries while the coordinator is still loading.
pub fn commit_at(bootstrap: &str, group: &str, topic: &str, partitions: i32, offset: i64) {
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("rdkafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .expect("partition offset");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("commit {group} at {offset}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("commit {group} at {offset}: {e}"),
        }
    }
}
