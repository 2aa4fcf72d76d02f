//! Client behaviours across a producer-first migration that the flip test does not
//! cover, on the same two clusters (Kafka 2.4.1 source, Kafka 3.9 target) and proxy:
//!
//! - a Java consumer group subscribed by pattern, which finds its topics in
//!   all-topics Metadata, while a topic it reads moves its writes to the target;
//! - segmentio/kafka-go, whose writer is not idempotent and keeps one metadata cache
//!   filled by all-topics requests, and whose reader looks up each partition's leader
//!   on a fresh connection;
//! - what the Java AdminClient reads through the proxy of topics that exist on both
//!   clusters with different partition and record counts.
//!
//! Each scenario puts the env's routes back when it ends, passed or failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::migration::{
    create_topic_direct, post, routes_toml, Stored, TwoClusters, TARGET_GROUP_ROW, TARGET_OFFSET,
};
use super::{java_driver, kafkago_driver, rdk, scratch, Proxy};

/// Route rows a scenario adds to the env's own (`TARGET_GROUP_ROW`), put back on
/// drop, a failed assertion included, so the next scenario starts from the env's.
struct Routes<'a> {
    env: &'a TwoClusters,
}

impl<'a> Routes<'a> {
    fn new(env: &'a TwoClusters) -> Routes<'a> {
        Routes { env }
    }

    fn set(&self, rows: &str) {
        let env = self.env;
        env.proxy.write_routes(&routes_toml(
            &env.source,
            &env.target,
            &format!("{TARGET_GROUP_ROW}\n{rows}"),
        ));
        let (code, body) = post(&env.proxy, "/reload");
        assert_eq!(code, 200, "reload: {body}");
    }
}

impl Drop for Routes<'_> {
    fn drop(&mut self) {
        let env = self.env;
        env.proxy
            .write_routes(&routes_toml(&env.source, &env.target, TARGET_GROUP_ROW));
        let (code, body) = post(&env.proxy, "/reload");
        if !std::thread::panicking() {
            assert_eq!(code, 200, "restoring the routes: {body}");
        }
    }
}

/// The WARN "connection closed" lines the proxy logged from byte `from` of its log
/// on: a connection the proxy closed because of an error.
fn closed_since(proxy: &Proxy, from: usize) -> Vec<String> {
    let log = proxy.log_text();
    log.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("connection closed"))
        .map(String::from)
        .collect()
}

fn read_lines(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn sleep_until(started: Instant, secs: u64) {
    let due = started + Duration::from_secs(secs);
    if let Some(d) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn spawn(driver: fn(&[&str]) -> Value, args: &[&str]) -> std::thread::JoinHandle<Value> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || driver(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// The values a driver's `produce` writes (`<prefix>-<i % keys>|<i / keys>`, record
/// i to `topics[i % n]`), with their topic.
fn expected_values(prefix: &str, count: u64, keys: u64, topics: &[&str]) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let topic = topics[(i % topics.len() as u64) as usize];
            (
                format!("{prefix}-{}|{}", i % keys, i / keys),
                topic.to_string(),
            )
        })
        .collect()
}

/// Where the records of one producer ended up.
#[derive(Debug, Default)]
struct Placement {
    missing: Vec<String>,
    /// Values stored more than once (anywhere).
    twice: Vec<String>,
    wrong_topic: usize,
    unexpected: usize,
    /// (topic, cluster) -> records stored there once.
    counts: BTreeMap<(String, &'static str), usize>,
}

fn place(stored: &Stored, expected: &[(String, String)]) -> Placement {
    let mut p = Placement::default();
    let names: HashSet<&str> = expected.iter().map(|(v, _)| v.as_str()).collect();
    for (v, topic) in expected {
        match stored.at.get(v) {
            None => p.missing.push(v.clone()),
            Some(places) if places.len() > 1 => p.twice.push(v.clone()),
            Some(places) if places[0].1 != *topic => p.wrong_topic += 1,
            Some(places) => *p.counts.entry((topic.clone(), places[0].0)).or_default() += 1,
        }
    }
    p.unexpected = stored
        .at
        .keys()
        .filter(|v| !names.contains(v.as_str()))
        .count();
    p
}

/// Per key of `topic`, the records stored once: every one on the source comes
/// before every one on the target (the writes moved once, in order). Returns the
/// keys that broke that.
fn keys_out_of_order(stored: &Stored, expected: &[(String, String)], topic: &str) -> Vec<String> {
    let mut by_key: HashMap<&str, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (v, t) in expected {
        let Some(places) = stored.at.get(v).filter(|p| p.len() == 1) else {
            continue;
        };
        if t != topic {
            continue;
        }
        let (key, seq) = v.rsplit_once('|').unwrap();
        let seq: u64 = seq.parse().unwrap();
        let e = by_key.entry(key).or_default();
        if places[0].0 == "source" {
            e.0.push(seq);
        } else {
            e.1.push(seq);
        }
    }
    by_key
        .into_iter()
        .filter(|(_, (src, tgt))| {
            let last_src = src.iter().max();
            let first_tgt = tgt.iter().min();
            matches!((last_src, first_tgt), (Some(s), Some(t)) if s > t)
        })
        .map(|(k, _)| k.to_string())
        .collect()
}

/// Records stored on `cluster` for `topics`.
fn on_cluster<'s>(stored: &'s Stored, cluster: &str, topics: &[&str]) -> HashSet<&'s String> {
    stored
        .at
        .iter()
        .filter(|(_, p)| {
            p.iter()
                .any(|(c, t, _, _)| *c == cluster && topics.contains(&t.as_str()))
        })
        .map(|(v, _)| v)
        .collect()
}

const PAT_A: &str = "pat-a";
const PAT_B: &str = "pat-b";
const PAT_COUNT: u64 = 3_000;
const PAT_KEYS: u64 = 20;

/// A Java consumer group subscribed to `pat-.*`, routed to the source (the default),
/// reads through the proxy while an idempotent Java producer writes `pat-a` and
/// `pat-b` through it, and `pat-a`'s writes flip to the target mid-run.
///
/// The group's route keeps it on the source: it must read every record stored
/// there, of both topics, and none of those the flip put on the target; every
/// acknowledged record is stored exactly once; no connection is closed.
pub fn pattern_consumer_across_flip(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    for t in [PAT_A, PAT_B] {
        create_topic_direct(source, t, 3);
        create_topic_direct(target, t, 3);
    }
    let routes = Routes::new(env);
    let log_from = proxy.log_text().len();
    let dir = scratch("clients-pattern");
    let seen_file = dir.join("group.seen");
    let _ = std::fs::remove_file(&seen_file);
    let bootstrap = proxy.bootstrap.clone();
    let seen_arg = seen_file.display().to_string();

    let started = Instant::now();
    let group = spawn(
        java_driver,
        &[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--pattern",
            "pat-.*",
            "--group",
            "pattern-readers",
            "--members",
            "2",
            "--expect",
            "1000000000",
            "--timeout-s",
            "25",
            "--seen-file",
            &seen_arg,
        ],
    );
    let producer = spawn(
        java_driver,
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            &format!("{PAT_A},{PAT_B}"),
            "--count",
            &PAT_COUNT.to_string(),
            "--keys",
            &PAT_KEYS.to_string(),
            "--key-prefix",
            "pat",
            "--rate",
            "300",
            "--timeout-s",
            "90",
        ],
    );

    // The producer's JVM starts in 1-3 s; by 7 s a good part of its records are in,
    // and it is done by about 13 s, which leaves the group 12 s to catch up.
    sleep_until(started, 7);
    routes.set(&format!(
        "[routes.topics.\"{PAT_A}\"]\nproduce = \"target\"\nconsume = \"source\"\n"
    ));
    eprintln!("{PAT_A} flipped to the target at {:?}", started.elapsed());

    let producer = producer.join().unwrap();
    let group = group.join().unwrap();
    eprintln!("pattern scenario done at {:?}", started.elapsed());
    assert_eq!(producer["fatal"], Value::Null, "producer: {producer}");
    assert_eq!(producer["errors"].as_u64(), Some(0), "producer: {producer}");
    assert_eq!(
        producer["acked"].as_u64(),
        Some(PAT_COUNT),
        "producer: {producer}"
    );

    let mut stored = Stored::default();
    for (name, c) in [("source", source), ("target", target)] {
        for t in [PAT_A, PAT_B] {
            let n = stored.load(name, &c.bootstrap(), t);
            eprintln!("{name}/{t}: {n} records");
        }
    }
    let expected = expected_values("pat", PAT_COUNT, PAT_KEYS, &[PAT_A, PAT_B]);
    let p = place(&stored, &expected);
    eprintln!("placement: {:?}", p.counts);
    assert!(
        p.missing.is_empty() && p.twice.is_empty() && p.wrong_topic == 0 && p.unexpected == 0,
        "every acknowledged record stored exactly once: {} missing (e.g. {:?}), {} twice (e.g. {:?}), {} in the wrong topic, {} unexpected",
        p.missing.len(),
        p.missing.first(),
        p.twice.len(),
        p.twice.first(),
        p.wrong_topic,
        p.unexpected
    );
    let count = |t: &str, c: &'static str| p.counts.get(&(t.to_string(), c)).copied().unwrap_or(0);
    assert_eq!(count(PAT_B, "target"), 0, "{PAT_B} never moved");
    assert!(
        count(PAT_A, "source") > 0,
        "{PAT_A} had records on the source before the flip"
    );
    assert!(
        count(PAT_A, "target") > 0,
        "{PAT_A} had records on the target after the flip"
    );
    let broken = keys_out_of_order(&stored, &expected, PAT_A);
    assert!(
        broken.is_empty(),
        "keys of {PAT_A} with source records after target ones: {broken:?}"
    );

    // The group read the source only: all of it, both topics, nothing from the target.
    assert_eq!(group["fatal"], Value::Null, "group: {group}");
    assert_eq!(
        group["order_violations"].as_u64(),
        Some(0),
        "group: {group}"
    );
    let assigned: Vec<&str> = group["assigned_topics"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        assigned,
        [PAT_A, PAT_B],
        "the pattern matched both topics: {group}"
    );
    for t in [PAT_A, PAT_B] {
        assert!(
            group["per_topic"][t].as_u64().unwrap_or(0) > 0,
            "the group read {t}: {group}"
        );
    }
    let seen = read_lines(&seen_file);
    let source_records = on_cluster(&stored, "source", &[PAT_A, PAT_B]);
    let target_records = on_cluster(&stored, "target", &[PAT_A, PAT_B]);
    let not_seen: Vec<&&String> = source_records
        .iter()
        .filter(|v| !seen.contains(v.as_str()))
        .collect();
    let from_target = seen.iter().filter(|v| target_records.contains(v)).count();
    eprintln!(
        "pattern group: {} seen, {} on the source, {} not seen, {from_target} from the target, {} duplicates",
        seen.len(),
        source_records.len(),
        not_seen.len(),
        group["duplicates"]
    );
    assert!(
        not_seen.is_empty(),
        "the group missed source records, e.g. {:?}",
        not_seen.first()
    );
    assert_eq!(from_target, 0, "the group read records of the target");
    // Redelivery follows only a failed commit, which the driver counts as an error.
    if group["errors"].as_u64() == Some(0) {
        assert_eq!(
            group["duplicates"].as_u64(),
            Some(0),
            "duplicates without a failed commit: {group}"
        );
    }
    let closed = closed_since(proxy, log_from);
    assert!(
        closed.is_empty(),
        "connections closed with an error: {closed:#?}"
    );
}

const KGO: &str = "kgo-orders";
const KGO_COUNT: u64 = 3_000;
const KGO_KEYS: u64 = 20;

/// kafka-go's default client id is `<program>@<host> (github.com/segmentio/kafka-go)`:
/// two applications (two programs) differ in it, while every run of the one driver
/// program shares it. A run that stands for another application gets its own.
const ORDERS_APP: &str = "orders-service";

fn kafkago_consume(
    bootstrap: &str,
    topic: &str,
    group: &str,
    expect: u64,
    seen: &Path,
    client_id: Option<&str>,
) -> Value {
    let expect = expect.to_string();
    let seen = seen.display().to_string();
    let mut args = vec![
        "consume",
        "-bootstrap",
        bootstrap,
        "-topic",
        topic,
        "-group",
        group,
        "-members",
        "1",
        "-expect",
        &expect,
        // A run that works takes a second or two.
        "-timeout-s",
        "20",
        "-seen-file",
        &seen,
    ];
    if let Some(id) = client_id {
        args.extend(["-client-id", id]);
    }
    kafkago_driver(&args)
}

fn kafkago_produce(
    bootstrap: &str,
    topic: &str,
    count: u64,
    prefix: &str,
    client_id: Option<&str>,
) -> Value {
    let count_arg = count.to_string();
    let mut args = vec![
        "produce",
        "-bootstrap",
        bootstrap,
        "-topic",
        topic,
        "-count",
        &count_arg,
        "-keys",
        "10",
        "-key-prefix",
        prefix,
        "-timeout-s",
        "60",
    ];
    if let Some(id) = client_id {
        args.extend(["-client-id", id]);
    }
    let v = kafkago_driver(&args);
    assert_eq!(v["fatal"], Value::Null, "{prefix}: {v}");
    assert_eq!(
        (v["acked"].as_u64(), v["errors"].as_u64()),
        (Some(count), Some(0)),
        "{prefix}: {v}"
    );
    v
}

/// Asserts that a group routed to the source read every record stored there and
/// none of those on the target.
fn assert_read_source_only(
    name: &str,
    summary: &Value,
    seen: &HashSet<String>,
    on_source: &HashSet<&String>,
    on_target: &HashSet<&String>,
) {
    assert_eq!(summary["fatal"], Value::Null, "{name}: {summary}");
    assert_eq!(
        summary["order_violations"].as_u64(),
        Some(0),
        "{name}: {summary}"
    );
    let not_seen = on_source
        .iter()
        .filter(|v| !seen.contains(v.as_str()))
        .count();
    let from_target = seen.iter().filter(|v| on_target.contains(v)).count();
    eprintln!(
        "{name}: {} seen, {} on the source, {not_seen} not seen, {from_target} from the target, {} duplicates, {} errors",
        seen.len(),
        on_source.len(),
        summary["duplicates"],
        summary["errors"]
    );
    assert_eq!(not_seen, 0, "{name} missed source records: {summary}");
    assert_eq!(from_target, 0, "{name} read records of the target");
}

/// A producer-first migration with kafka-go: a `kafka.Writer` (acks=all, not
/// idempotent, async) of one application writes `kgo-orders` through the proxy
/// while a kafka-go consumer group of another, routed to the source, reads it; the
/// topic's writes flip to the target mid-run.
///
/// At least once: every acknowledged record is stored, a record stored twice only
/// if the driver saw its batch fail an attempt; per key the source holds what came
/// before the flip and the target what came after. The writer's metadata cache
/// (kafka-go asks for all topics) lists every topic once in every answer, the
/// topic with one partition count and its leaders first on the source, then on the
/// target. The group reads every record on the source and none of the target's.
pub fn kafka_go_producer_flip(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    create_topic_direct(source, KGO, 6);
    create_topic_direct(target, KGO, 6);
    let routes = Routes::new(env);
    let log_from = proxy.log_text().len();
    let dir = scratch("clients-kafkago");
    let seen_file = dir.join("group.seen");
    let retried_file = dir.join("retried");
    for f in [&seen_file, &retried_file] {
        let _ = std::fs::remove_file(f);
    }
    let bootstrap = proxy.bootstrap.clone();
    let (seen_arg, retried_arg) = (
        seen_file.display().to_string(),
        retried_file.display().to_string(),
    );

    let started = Instant::now();
    let group = spawn(
        kafkago_driver,
        &[
            "consume",
            "-bootstrap",
            &bootstrap,
            "-topic",
            KGO,
            "-group",
            "kgo-readers",
            "-members",
            "2",
            "-expect",
            "1000000000",
            "-timeout-s",
            "22",
            "-seen-file",
            &seen_arg,
            // An application of its own (see ORDERS_APP). With the default id it
            // would share an identity with every other run of the driver, whose
            // writes change what its leader lookups are told: the next scenario.
            "-client-id",
            "kgo-readers-app",
        ],
    );
    let producer = spawn(
        kafkago_driver,
        &[
            "produce",
            "-bootstrap",
            &bootstrap,
            "-topic",
            KGO,
            "-count",
            &KGO_COUNT.to_string(),
            "-keys",
            &KGO_KEYS.to_string(),
            "-key-prefix",
            "kgo",
            "-rate",
            "300",
            "-timeout-s",
            "90",
            "-retried-file",
            &retried_arg,
            "-client-id",
            ORDERS_APP,
        ],
    );
    sleep_until(started, 5);
    routes.set(&format!(
        "[routes.topics.\"{KGO}\"]\nproduce = \"target\"\nconsume = \"source\"\n"
    ));
    eprintln!("{KGO} flipped to the target at {:?}", started.elapsed());
    let producer = producer.join().unwrap();
    let group = group.join().unwrap();
    eprintln!("kafka-go scenario done at {:?}", started.elapsed());

    // No produce error persisted: kafka-go retried every refused batch until its
    // metadata cache named the target's leaders.
    assert_eq!(producer["fatal"], Value::Null, "producer: {producer}");
    assert_eq!(producer["errors"].as_u64(), Some(0), "producer: {producer}");
    assert_eq!(
        producer["acked"].as_u64(),
        Some(KGO_COUNT),
        "producer: {producer}"
    );

    let mut stored = Stored::default();
    for (name, c) in [("source", source), ("target", target)] {
        let n = stored.load(name, &c.bootstrap(), KGO);
        eprintln!("{name}/{KGO}: {n} records");
    }
    let expected = expected_values("kgo", KGO_COUNT, KGO_KEYS, &[KGO]);
    let p = place(&stored, &expected);
    let retried = read_lines(&retried_file);
    let unexplained: Vec<&String> = p.twice.iter().filter(|v| !retried.contains(*v)).collect();
    eprintln!(
        "kafka-go placement: {:?}; stored twice: {} (of {} records in batches sent more than once); {} retries, first failed attempt: {}",
        p.counts,
        p.twice.len(),
        retried.len(),
        producer["retries"],
        producer["first_attempt_error"]
    );
    assert!(
        p.missing.is_empty(),
        "acknowledged records missing: {} (e.g. {:?})",
        p.missing.len(),
        p.missing.first()
    );
    assert_eq!(
        (p.wrong_topic, p.unexpected),
        (0, 0),
        "wrong topic, unexpected"
    );
    assert!(
        unexplained.is_empty(),
        "stored twice but never retried: {unexplained:?}"
    );
    let count = |c: &'static str| p.counts.get(&(KGO.to_string(), c)).copied().unwrap_or(0);
    assert!(count("source") > 0, "records on the source before the flip");
    assert!(count("target") > 0, "records on the target after the flip");
    let broken = keys_out_of_order(&stored, &expected, KGO);
    assert!(
        broken.is_empty(),
        "keys with source records after target ones: {broken:?}"
    );

    // What kafka-go's metadata cache held: every topic once per answer; the topic
    // with 6 partitions, led by a source broker and then by a target one.
    let md = &producer["metadata"];
    let view = &md["topics"][KGO];
    assert!(
        md["samples"].as_u64().unwrap_or(0) > 10,
        "metadata samples: {md}"
    );
    assert_eq!(md["failed"].as_u64(), Some(0), "metadata: {md}");
    assert_eq!(
        md["repeated"],
        serde_json::json!([]),
        "topics listed twice: {md}"
    );
    assert_eq!(
        view["max_listed"].as_u64(),
        Some(1),
        "{KGO} listed once: {md}"
    );
    assert_eq!(
        view["partitions"],
        serde_json::json!([6]),
        "{KGO} partitions: {md}"
    );
    let leaders: Vec<i64> = view["leaders"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    assert!(
        leaders.iter().any(|l| *l < TARGET_OFFSET as i64)
            && leaders.iter().any(|l| *l > TARGET_OFFSET as i64),
        "{KGO} led by a source broker, then a target one: {leaders:?}"
    );

    assert_read_source_only(
        "kafka-go group",
        &group,
        &read_lines(&seen_file),
        &on_cluster(&stored, "source", &[KGO]),
        &on_cluster(&stored, "target", &[KGO]),
    );
    let closed = closed_since(proxy, log_from);
    assert!(
        closed.is_empty(),
        "connections closed with an error: {closed:#?}"
    );
}

const KGO_IN: &str = "kgo-in";
const KGO_OUT: &str = "kgo-out";

/// A kafka-go application that reads one topic and writes another (its reader and
/// writer share kafka-go's default client id, so the proxy sees one identity that
/// writes) starts its consumer group after the topic it reads has moved its writes
/// to the target. The group is routed to the source, so it must read the source.
///
/// kafka-go's reader looks up each partition's leader with a Metadata request on a
/// fresh connection, then asks that leader for offsets and records. A control run
/// of the same application with a client id of its own for the reader comes first.
pub fn kafka_go_reader_that_writes_after_a_flip(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    for t in [KGO_IN, KGO_OUT] {
        create_topic_direct(source, t, 3);
        create_topic_direct(target, t, 3);
    }
    let routes = Routes::new(env);
    let dir = scratch("clients-kafkago-restart");
    let bootstrap = &proxy.bootstrap;
    // Another application writes kgo-in, before and after its writes move.
    kafkago_produce(bootstrap, KGO_IN, 300, "in-before", Some(ORDERS_APP));
    routes.set(&format!(
        "[routes.topics.\"{KGO_IN}\"]\nproduce = \"target\"\nconsume = \"source\"\n"
    ));
    kafkago_produce(bootstrap, KGO_IN, 300, "in-after", Some(ORDERS_APP));
    // This application's writer, with the default client id.
    kafkago_produce(bootstrap, KGO_OUT, 100, "out", None);

    let mut stored = Stored::default();
    stored.load("source", &source.bootstrap(), KGO_IN);
    stored.load("target", &target.bootstrap(), KGO_IN);
    let on_source = on_cluster(&stored, "source", &[KGO_IN]);
    let on_target = on_cluster(&stored, "target", &[KGO_IN]);
    assert_eq!(
        (on_source.len(), on_target.len()),
        (300, 300),
        "kgo-in before and after the flip"
    );

    let control_seen = dir.join("control.seen");
    let _ = std::fs::remove_file(&control_seen);
    let control = kafkago_consume(
        bootstrap,
        KGO_IN,
        "kgo-in-control",
        300,
        &control_seen,
        Some("kgo-in-reader"),
    );
    assert_read_source_only(
        "reader with its own client id",
        &control,
        &read_lines(&control_seen),
        &on_source,
        &on_target,
    );

    let seen_file = dir.join("group.seen");
    let _ = std::fs::remove_file(&seen_file);
    let log_from = proxy.log_text().len();
    let target_listener = format!("listener=\"broker-{}\"", TARGET_OFFSET + 1);
    let group = kafkago_consume(bootstrap, KGO_IN, "kgo-in-readers", 300, &seen_file, None);
    let refused = proxy
        .log_text()
        .get(log_from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(&target_listener))
        .count();
    eprintln!("connections closed on the target's broker listener while the reader ran: {refused}");
    assert_read_source_only(
        "reader sharing the writer's client id",
        &group,
        &read_lines(&seen_file),
        &on_source,
        &on_target,
    );
}

const BOTH: &str = "both-view";
const MOVED: &str = "moved-view";

/// Every topic name in an all-topics Metadata answer through `bootstrap`
/// (librdkafka keeps the answer's entries as they come), with its partition counts.
fn listed_by_librdkafka(bootstrap: &str) -> HashMap<String, Vec<usize>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "switchyard-test-metadata")
        .create()
        .expect("rdkafka consumer");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("all-topics metadata");
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for t in md.topics() {
        out.entry(t.name().to_string())
            .or_default()
            .push(t.partitions().len());
    }
    out
}

fn ends_json(ends: &BTreeMap<i32, i64>) -> Value {
    Value::Object(
        ends.iter()
            .map(|(p, o)| (p.to_string(), Value::from(*o)))
            .collect(),
    )
}

/// The Java AdminClient's reads through the proxy when topics exist on both
/// clusters with different partition and record counts: `both-view` (3 partitions
/// on the source, 5 on the target) has no route row, so it is the source's;
/// `moved-view` (2 and 4) is routed to the target for writes and reads.
///
/// listTopics names each once (librdkafka's all-topics Metadata too, where a
/// repeated entry would show); describeTopics and listOffsets give the routed
/// cluster's partitions and end offsets; a group with commits on the source is
/// listed once, described by a source broker, and its committed offsets are the
/// ones the source holds.
pub fn admin_reads_across_clusters(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    for (c, t, n) in [
        (source, BOTH, 3),
        (target, BOTH, 5),
        (source, MOVED, 2),
        (target, MOVED, 4),
    ] {
        create_topic_direct(c, t, n);
    }
    let routes = Routes::new(env);
    routes.set(&format!(
        "[routes.topics.\"{MOVED}\"]\nproduce = \"target\"\nconsume = \"target\"\n"
    ));
    // Different record counts everywhere, written straight to each cluster.
    for (c, t, n, prefix) in [
        (source, BOTH, 30, "bv-s"),
        (target, BOTH, 50, "bv-t"),
        (source, MOVED, 20, "mv-s"),
        (target, MOVED, 40, "mv-t"),
    ] {
        let v = rdk::produce(&c.bootstrap(), t, n, 6, prefix);
        assert_eq!(v["acked"].as_u64(), Some(n), "{prefix}: {v}");
    }
    // A group routed to the source (the default) reads both-view through the
    // proxy and commits there.
    let seen = Arc::new(rdk::Seen::default());
    let g = rdk::consume(
        &proxy.bootstrap,
        BOTH,
        "view-readers",
        1,
        30,
        None,
        &seen,
        Duration::from_secs(60),
    );
    assert_eq!(
        g["unique"].as_u64(),
        Some(30),
        "view-readers read the source's both-view: {g}"
    );

    let view = java_driver(&[
        "admin-view",
        "--bootstrap",
        &proxy.bootstrap,
        "--topics",
        &format!("{BOTH},{MOVED}"),
        "--group",
        "view-readers",
    ]);
    assert_eq!(view["ok"], Value::Bool(true), "admin steps: {view}");
    let listed: Vec<&str> = view["listed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for t in [BOTH, MOVED] {
        assert_eq!(
            listed.iter().filter(|n| **n == t).count(),
            1,
            "listTopics names {t} once: {listed:?}"
        );
    }
    let raw = listed_by_librdkafka(&proxy.bootstrap);
    let mut repeated: Vec<(&String, &Vec<usize>)> =
        raw.iter().filter(|(_, v)| v.len() > 1).collect();
    repeated.sort();
    assert!(
        repeated.is_empty(),
        "topics listed more than once in one Metadata answer: {repeated:?}"
    );
    assert_eq!(
        raw.get(BOTH),
        Some(&vec![3]),
        "librdkafka's view of {BOTH}: {raw:?}"
    );
    assert_eq!(
        raw.get(MOVED),
        Some(&vec![4]),
        "librdkafka's view of {MOVED}: {raw:?}"
    );

    let source_ends = rdk::ends(&source.bootstrap(), BOTH);
    let target_ends = rdk::ends(&target.bootstrap(), MOVED);
    eprintln!("routed end offsets: {BOTH} on the source {source_ends:?}, {MOVED} on the target {target_ends:?}");
    for (t, partitions, ends, on_target) in [
        (BOTH, 3, &source_ends, false),
        (MOVED, 4, &target_ends, true),
    ] {
        let v = &view["topics"][t];
        assert_eq!(v["listed"], Value::Bool(true), "{t}: {view}");
        assert_eq!(
            v["partitions"].as_u64(),
            Some(partitions),
            "describeTopics {t}: {v}"
        );
        let leaders: Vec<i64> = v["leaders"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        assert_eq!(
            leaders.len() as u64,
            partitions,
            "a leader per partition of {t}: {v}"
        );
        assert!(
            leaders
                .iter()
                .all(|l| (*l > TARGET_OFFSET as i64) == on_target),
            "{t} led by the routed cluster's brokers: {leaders:?}"
        );
        assert_eq!(
            v["end_offsets"],
            ends_json(ends),
            "listOffsets of {t} are the routed cluster's"
        );
    }

    let group = &view["group"];
    assert_eq!(
        group["listed"].as_u64(),
        Some(1),
        "listConsumerGroups names view-readers once: {group}"
    );
    assert_eq!(group["state"], "Empty", "{group}");
    let coordinator = group["coordinator"].as_i64().unwrap_or(-1);
    assert!(
        (0..TARGET_OFFSET as i64).contains(&coordinator),
        "described by a source broker: {group}"
    );
    let committed: BTreeMap<String, i64> = group["offsets"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    let want: BTreeMap<String, i64> = source_ends
        .iter()
        .filter(|(_, o)| **o > 0)
        .map(|(p, o)| (format!("{BOTH}/{p}"), *o))
        .collect();
    assert_eq!(
        committed, want,
        "committed offsets of view-readers: {group}"
    );
    // The same as the source itself reports.
    let direct = java_driver(&[
        "admin-view",
        "--bootstrap",
        &source.bootstrap(),
        "--topics",
        BOTH,
        "--group",
        "view-readers",
    ]);
    assert_eq!(
        direct["group"]["offsets"], group["offsets"],
        "source: {direct}"
    );
}
