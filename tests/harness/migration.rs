//! Two clusters behind one proxy: a Kafka 2.4.1 source and a Kafka 3.9 target, live
//! producers of three client libraries and a consumer group, all through the proxy;
//! a topic's writes flip to the target and back while they run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{go_driver, java_driver, rdk, scratch, Cluster, KafkaVersion, Proxy};

pub struct TwoClusters {
    pub source: Cluster,
    pub target: Cluster,
    pub proxy: Proxy,
}

pub const SOURCE_OFFSET: i32 = 0;
pub const TARGET_OFFSET: i32 = 1000;

/// `[clusters]` and `[routes]` for source + target, with `extra` appended to
/// `[routes]` (topic and group rows).
pub fn routes_toml(source: &Cluster, target: &Cluster, extra: &str) -> String {
    let list = |c: &Cluster| {
        c.bootstrap_list()
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[clusters.source]\nbootstrap = [{}]\nnode_id_offset = {SOURCE_OFFSET}\n\n\
         [clusters.target]\nbootstrap = [{}]\nnode_id_offset = {TARGET_OFFSET}\n\n\
         [routes]\ndefault_cluster = \"source\"\n\n{extra}\n",
        list(source),
        list(target)
    )
}

impl TwoClusters {
    /// One broker each: with one broker, a cluster hands out producer ids from 0 in
    /// order (each broker owns its own block of 1000), which is what makes the
    /// producer-id collision case certain to arise.
    pub fn start(name: &str, extra_routes: &str) -> TwoClusters {
        let source = Cluster::start(KafkaVersion::V2_4, 1, &format!("{name}-source"));
        let target = Cluster::start(KafkaVersion::V3, 1, &format!("{name}-target"));
        let mut ids: Vec<i32> = source
            .broker_ids()
            .iter()
            .map(|i| i + SOURCE_OFFSET)
            .collect();
        ids.extend(target.broker_ids().iter().map(|i| i + TARGET_OFFSET));
        let proxy = Proxy::start(
            &format!("{name}-proxy"),
            &routes_toml(&source, &target, extra_routes),
            &ids,
        );
        TwoClusters {
            source,
            target,
            proxy,
        }
    }
}

pub fn create_topic_direct(cluster: &Cluster, topic: &str, partitions: u32) {
    let rf = cluster.broker_ids().len().min(3).to_string();
    let v = java_driver(&[
        "create-topic",
        "--bootstrap",
        &cluster.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        &partitions.to_string(),
        "--replication",
        &rf,
    ]);
    assert_eq!(v["ok"], Value::Bool(true), "create topic {topic}: {v}");
}

pub(super) fn post(proxy: &Proxy, path: &str) -> (u16, Value) {
    let (code, body) = proxy.http("POST", path);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Values (`key|seq`) with where they were stored.
#[derive(Default)]
pub(super) struct Stored {
    /// value -> list of (cluster, topic, partition, offset)
    pub(super) at: HashMap<String, Vec<(&'static str, String, i32, i64)>>,
}

impl Stored {
    pub(super) fn load(&mut self, cluster: &'static str, bootstrap: &str, topic: &str) -> usize {
        let recs = rdk::dump(bootstrap, topic);
        let n = recs.len();
        for r in recs {
            self.at.entry(r.value).or_default().push((
                cluster,
                topic.to_string(),
                r.partition,
                r.offset,
            ));
        }
        n
    }
}

/// A group routed to the target from the start: it reads `orders` there.
pub const TARGET_GROUP_ROW: &str =
    "[routes.groups.\"migration-on-target\"]\ncluster = \"target\"\n";

/// A client driver program (the Java and franz-go drivers share flag names).
type Driver = fn(&[&str]) -> Value;

/// A consumer group of `members` run by `driver` in the background for 60 s,
/// recording every value it saw in `seen` (removed first).
fn background_group(
    driver: Driver,
    bootstrap: &str,
    topics: &str,
    group: &str,
    members: u32,
    seen: &std::path::Path,
) -> std::thread::JoinHandle<Value> {
    let _ = std::fs::remove_file(seen);
    let args: Vec<String> = [
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        topics,
        "--group",
        group,
        "--members",
        &members.to_string(),
        "--expect",
        "1000000000",
        "--timeout-s",
        "60",
        "--seen-file",
        &seen.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::thread::spawn(move || driver(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// An idempotent producer run by `driver` in the background: PER_PRODUCER records
/// at RATE, alternating over `topics`, keys `<prefix>-<n>`.
fn background_producer(
    driver: Driver,
    bootstrap: &str,
    topics: &str,
    prefix: &str,
) -> std::thread::JoinHandle<Value> {
    let args: Vec<String> = [
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topics,
        "--count",
        &PER_PRODUCER.to_string(),
        "--keys",
        &KEYS.to_string(),
        "--key-prefix",
        prefix,
        "--rate",
        &RATE.to_string(),
        "--timeout-s",
        "150",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::thread::spawn(move || driver(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";
const KEYS: u64 = 20; // even: with two topics, each key always goes to the same one
const PER_PRODUCER: u64 = 9_000;
const RATE: f64 = 300.0;
const DIRECT: u64 = 6_000;
const PRELOADED: u64 = 100;

/// The producer-first flip of issue 3, end to end.
///
/// Java, franz-go and librdkafka producers (idempotent, acks=all) write `orders`
/// and `payments` through the proxy; a Java consumer group reads both through it.
/// `orders` flips to the target by a config-file edit and reload, a broken config
/// is rejected while traffic runs, and the flip is rolled back with the CLI. A
/// Java producer connected straight to the target writes `orders` there the whole
/// time with the same producer id the source issued to a proxied producer.
pub fn producer_flip_and_rollback(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    for t in [ORDERS, PAYMENTS] {
        create_topic_direct(source, t, 6);
        create_topic_direct(target, t, 6);
    }
    // Something already on the target, so the switch marks are not all zero.
    let pre = java_driver(&[
        "produce",
        "--bootstrap",
        &target.bootstrap(),
        "--topic",
        ORDERS,
        "--count",
        &PRELOADED.to_string(),
        "--keys",
        "10",
        "--key-prefix",
        "pre",
        "--idempotent",
        "false",
    ]);
    assert_eq!(pre["acked"].as_u64(), Some(PRELOADED), "{pre}");

    let scratch_dir = scratch("migration-flip");
    let seen_file = scratch_dir.join("group.seen");
    let _ = std::fs::remove_file(&seen_file);
    let bootstrap = proxy.bootstrap.clone();
    let topics = format!("{ORDERS},{PAYMENTS}");

    // The direct producer starts first, so it takes the target's first producer id
    // (0) while the source hands its own first ids, from 0, to proxied producers.
    let direct = {
        let tb = target.bootstrap();
        std::thread::spawn(move || {
            java_driver(&[
                "produce",
                "--bootstrap",
                &tb,
                "--topic",
                ORDERS,
                "--count",
                &DIRECT.to_string(),
                "--keys",
                "10",
                "--key-prefix",
                "direct",
                "--rate",
                "150",
                "--timeout-s",
                "150",
            ])
        })
    };
    std::thread::sleep(Duration::from_secs(4));

    let consumer = background_group(
        java_driver,
        &bootstrap,
        &topics,
        "migration-readers",
        2,
        &seen_file,
    );
    let franz_seen = scratch_dir.join("franz-group.seen");
    let franz_consumer = background_group(
        go_driver,
        &bootstrap,
        &topics,
        "migration-franz",
        2,
        &franz_seen,
    );
    let target_seen = scratch_dir.join("target-group.seen");
    let target_consumer = background_group(
        java_driver,
        &bootstrap,
        ORDERS,
        "migration-on-target",
        1,
        &target_seen,
    );
    let rdk_seen = std::sync::Arc::new(rdk::Seen::default());
    let rdk_consumer = {
        let (b, t, seen) = (bootstrap.clone(), topics.clone(), rdk_seen.clone());
        std::thread::spawn(move || {
            rdk::consume(
                &b,
                &t,
                "migration-rdk",
                2,
                u64::MAX,
                None,
                &seen,
                Duration::from_secs(60),
            )
        })
    };
    let started = Instant::now();
    let java = background_producer(java_driver, &bootstrap, &topics, "java");
    let franz = background_producer(go_driver, &bootstrap, &topics, "franz");
    let librdkafka = {
        let b = bootstrap.clone();
        std::thread::spawn(move || {
            rdk::produce_to(&b, &[ORDERS, PAYMENTS], PER_PRODUCER, KEYS, "rdk", RATE)
        })
    };

    let at = |secs: u64| {
        let due = started + Duration::from_secs(secs);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };
    let version0 = proxy.status()["route_version"].as_u64().unwrap();

    // Flip: edit the file, reload.
    at(9);
    let flipped = routes_toml(
        source,
        target,
        &format!("{TARGET_GROUP_ROW}\n[routes.topics.\"{ORDERS}\"]\nproduce = \"target\"\nconsume = \"source\"\n"),
    );
    proxy.write_routes(&flipped);
    let (code, body) = post(proxy, "/reload");
    assert_eq!(code, 200, "reload: {body}");
    let status = proxy.status();
    let v_flip = status["route_version"].as_u64().unwrap();
    assert!(v_flip > version0);
    let marks: Vec<&Value> = status["marks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["topic"] == ORDERS && m["cluster"] == "target")
        .collect();
    assert_eq!(marks.len(), 1, "one switch mark for orders: {status}");
    let mark: BTreeMap<i32, i64> = marks[0]["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    assert_eq!(mark.len(), 6, "a mark per partition: {status}");
    eprintln!("switch mark for orders on target: {mark:?}");

    // A broken file while traffic runs: rejected whole, every problem listed,
    // routes unchanged.
    at(14);
    let broken = routes_toml(
        source,
        target,
        &format!(
            "[routes.topics.\"{ORDERS}\"]\nproduce = \"nowhere\"\n\n\
             [routes.topics.\"^bad(\"]\nproduce = \"target\"\n\n\
             [routes.groups.\"g\"]\ncluster = \"target\"\noffsets = \"guess\"\n"
        ),
    );
    // The file watcher has reloaded the flipped file too by now; take the version
    // the broken file must leave alone.
    let v_before = proxy.status()["route_version"].as_u64().unwrap();
    proxy.write_routes(&broken);
    let (code, body) = post(proxy, "/reload");
    assert_eq!(code, 400, "broken reload must be rejected: {body}");
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.len() >= 3, "every problem listed: {body}");
    let text = body.to_string();
    for needle in ["nowhere", "^bad(", "guess"] {
        assert!(text.contains(needle), "error list names `{needle}`: {body}");
    }
    assert_eq!(proxy.status()["route_version"].as_u64(), Some(v_before));
    assert_eq!(
        proxy.status()["routes"]["topics"][0]["produce"],
        "target",
        "running routes unchanged"
    );
    proxy.write_routes(&flipped);
    std::thread::sleep(Duration::from_millis(1500)); // the file watcher reloads it

    // Roll back with the CLI.
    at(20);
    let (code, out) = proxy.cli(&["rollback", "topic", ORDERS]);
    assert_eq!(code, 0, "rollback: {out}");
    assert!(
        out.contains("\"produce\": \"source\""),
        "rollback output: {out}"
    );

    let java = java.join().unwrap();
    let franz = franz.join().unwrap();
    let rdk_result = librdkafka.join().unwrap();
    let direct = direct.join().unwrap();
    let group = consumer.join().unwrap();
    let franz_group = franz_consumer.join().unwrap();
    let rdk_group = rdk_consumer.join().unwrap();
    let target_group = target_consumer.join().unwrap();
    for (name, p, n) in [
        ("java", &java, PER_PRODUCER),
        ("franz-go", &franz, PER_PRODUCER),
        ("librdkafka", &rdk_result, PER_PRODUCER),
        ("direct", &direct, DIRECT),
    ] {
        assert_eq!(p["fatal"], Value::Null, "{name} fatal: {p}");
        assert_eq!(p["errors"].as_u64(), Some(0), "{name} errors: {p}");
        assert_eq!(p["acked"].as_u64(), Some(n), "{name} acked: {p}");
    }

    // Read both clusters directly.
    let mut stored = Stored::default();
    for (name, c) in [("source", source), ("target", target)] {
        for t in [ORDERS, PAYMENTS] {
            let n = stored.load(name, &c.bootstrap(), t);
            eprintln!("{name}/{t}: {n} records");
        }
    }

    // Every acknowledged record exactly once, nothing else.
    let mut expected: Vec<(String, &str)> = Vec::new();
    for prefix in ["java", "franz", "rdk"] {
        for i in 0..PER_PRODUCER {
            let key = format!("{prefix}-{}", i % KEYS);
            let topic = if i % 2 == 0 { ORDERS } else { PAYMENTS };
            expected.push((format!("{key}|{}", i / KEYS), topic));
        }
    }
    for i in 0..DIRECT {
        let key = format!("direct-{}", i % 10);
        expected.push((format!("{key}|{}", i / 10), ORDERS));
    }
    for i in 0..PRELOADED {
        let key = format!("pre-{}", i % 10);
        expected.push((format!("{key}|{}", i / 10), ORDERS));
    }
    let expected_set: HashSet<&str> = expected.iter().map(|(v, _)| v.as_str()).collect();
    let mut missing = 0;
    let mut twice = 0;
    let mut wrong_topic = 0;
    for (v, topic) in &expected {
        match stored.at.get(v) {
            None => missing += 1,
            Some(places) if places.len() > 1 => twice += 1,
            Some(places) if places[0].1 != *topic => wrong_topic += 1,
            Some(_) => {}
        }
    }
    let unexpected = stored
        .at
        .keys()
        .filter(|v| !expected_set.contains(v.as_str()))
        .count();
    eprintln!(
        "stored: {} values; missing {missing}, written twice {twice}, wrong topic {wrong_topic}, unexpected {unexpected}",
        stored.at.len()
    );
    assert_eq!((missing, twice, wrong_topic, unexpected), (0, 0, 0, 0));

    // Where each record landed: payments and the direct producer's records never
    // moved; per key of orders, the records on the target are one contiguous run
    // (the flip) with the source holding what came before and after (the rollback),
    // and they sit at or after the switch mark.
    let mut on_target_by_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut on_source_by_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut flipped_records = 0;
    for (v, topic) in &expected {
        let place = &stored.at[v][0];
        let (key, seq) = v.rsplit_once('|').unwrap();
        let seq: u64 = seq.parse().unwrap();
        if key.starts_with("direct") || key.starts_with("pre") {
            assert_eq!(place.0, "target", "{v} is written straight to the target");
            continue;
        }
        if *topic == PAYMENTS {
            assert_eq!(place.0, "source", "payments stays on the source: {v}");
            continue;
        }
        if place.0 == "target" {
            flipped_records += 1;
            assert!(
                place.3 >= mark[&place.2],
                "{v} at target offset {} is below the switch mark {}",
                place.3,
                mark[&place.2]
            );
            on_target_by_key
                .entry(key.to_string())
                .or_default()
                .push(seq);
        } else {
            on_source_by_key
                .entry(key.to_string())
                .or_default()
                .push(seq);
        }
    }
    for prefix in ["java", "franz", "rdk"] {
        let n = on_target_by_key
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.len())
            .sum::<usize>();
        assert!(
            n > 0,
            "{prefix}: some orders records were written to the target"
        );
    }
    for (key, seqs) in &on_target_by_key {
        let (lo, hi) = (*seqs.iter().min().unwrap(), *seqs.iter().max().unwrap());
        assert_eq!(
            seqs.len() as u64,
            hi - lo + 1,
            "{key}: target holds one contiguous run"
        );
        let src = on_source_by_key.get(key).cloned().unwrap_or_default();
        assert!(
            src.iter().all(|s| *s < lo || *s > hi),
            "{key}: source records interleave with the target run"
        );
        assert!(
            src.iter().any(|s| *s > hi),
            "{key}: writes returned to the source after rollback"
        );
    }
    eprintln!("orders records written to the target during the flip: {flipped_records}");

    // Each group read through the proxy, on the source all along: it saw every
    // record on the source, and none of those on the target.
    let on_source: HashSet<&String> = stored
        .at
        .iter()
        .filter(|(_, p)| p[0].0 == "source")
        .map(|(v, _)| v)
        .collect();
    let read_file = |path: &std::path::Path| -> HashSet<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    for (name, summary, seen) in [
        ("java", &group, read_file(&seen_file)),
        ("franz-go", &franz_group, read_file(&franz_seen)),
        ("librdkafka", &rdk_group, rdk_seen.values()),
    ] {
        assert_eq!(summary["fatal"], Value::Null, "{name} consumer: {summary}");
        let not_seen = on_source
            .iter()
            .filter(|v| !seen.contains(v.as_str()))
            .count();
        let seen_from_target = seen
            .iter()
            .filter(|v| stored.at.get(*v).is_some_and(|p| p[0].0 == "target"))
            .count();
        eprintln!(
            "{name} group: {} seen, {} on source, {not_seen} not seen, {seen_from_target} from target",
            seen.len(),
            on_source.len()
        );
        assert_eq!(not_seen, 0, "the {name} group missed source records");
        assert_eq!(seen_from_target, 0, "the {name} group read target records");
        assert_eq!(
            summary["order_violations"].as_u64(),
            Some(0),
            "{name}: {summary}"
        );
    }

    // The group routed to the target read `orders` there: everything on the target
    // (records written straight to it and those of the flip), nothing of the source.
    let seen = read_file(&target_seen);
    let on_target: HashSet<&String> = stored
        .at
        .iter()
        .filter(|(_, p)| p[0].0 == "target")
        .map(|(v, _)| v)
        .collect();
    let not_seen = on_target
        .iter()
        .filter(|v| !seen.contains(v.as_str()))
        .count();
    let from_source = seen.iter().filter(|v| on_source.contains(v)).count();
    eprintln!(
        "group on target: {} seen, {} on target, {not_seen} not seen, {from_source} from source",
        seen.len(),
        on_target.len()
    );
    assert_eq!(target_group["fatal"], Value::Null, "{target_group}");
    assert_eq!((not_seen, from_source), (0, 0));

    // Clients negotiated 2.4-level versions (the intersection of both clusters).
    let versions = &proxy.status()["advertised_api_versions"];
    for (api, max) in [
        ("Produce", 8),
        ("Fetch", 11),
        ("ListOffsets", 5),
        ("OffsetFetch", 6),
        ("JoinGroup", 6),
    ] {
        assert_eq!(versions[api][1].as_i64(), Some(max), "{api}: {versions}");
    }

    // No client connection was closed by the proxy: not by the reloads, the flip,
    // the rejected file or the rollback.
    let closed: Vec<&str> = proxy
        .log_text()
        .leak()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("connection closed"))
        .collect();
    assert!(
        closed.is_empty(),
        "connections closed with an error: {closed:#?}"
    );

    // Producer ids: the direct producer holds an id the source also issued to a
    // proxied producer; neither was fenced (no errors above), and nothing was lost
    // or written twice.
    let direct_pid = direct["producer_id"].as_i64().expect("direct producer id");
    let log = proxy.log_text();
    let source_issued: HashSet<i64> = log
        .lines()
        .filter(|l| l.contains("producer id issued") && l.contains("cluster=source"))
        .filter_map(|l| {
            // Ids the source issued to a producer at home there, or for one from
            // the target ("... for a producer from another cluster").
            l.split("upstream_id=")
                .nth(1)
                .or_else(|| l.split("producer_id=").nth(1))?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!("direct producer id on target: {direct_pid}; ids the source issued through the proxy: {source_issued:?}");
    assert!(
        source_issued.contains(&direct_pid),
        "the collision case did not arise: the source never issued {direct_pid}"
    );
}

/// Topic admin through the proxy lands on the cluster each topic's route names: a
/// topic routed to the target (Kafka 3.9) is created there and not on the source
/// (Kafka 2.4.1), and the other way round, by the Java AdminClient; a full admin
/// cycle (create, list, describe, configs, produce, list offsets, delete) of the
/// Java and franz-go admin clients passes for topics routed to the target.
pub fn admin_writes_follow_routes(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    let rows = format!(
        "{TARGET_GROUP_ROW}\n[routes.topics.\"^admin-t-.*$\"]\nproduce = \"target\"\nconsume = \"target\"\n"
    );
    proxy.write_routes(&routes_toml(source, target, &rows));
    let (code, body) = post(proxy, "/reload");
    assert_eq!(code, 200, "reload: {body}");

    for (topic, on, off) in [
        ("admin-t-java", target, source),
        ("admin-s-java", source, target),
    ] {
        let v = java_driver(&[
            "create-topic",
            "--bootstrap",
            &proxy.bootstrap,
            "--topic",
            topic,
            "--partitions",
            "3",
            "--replication",
            "1",
        ]);
        assert_eq!(
            v["ok"],
            Value::Bool(true),
            "create {topic} through the proxy: {v}"
        );
        assert_eq!(
            rdk::ends(&on.bootstrap(), topic).len(),
            3,
            "{topic}: 3 partitions on the cluster its route names"
        );
        assert!(
            rdk::ends(&off.bootstrap(), topic).is_empty(),
            "{topic} was also created on the other cluster"
        );
    }
    // franz-go's admin cycle reads back through the proxy what it created, so it
    // fails unless the topic is where the route says.
    let v = go_driver(&[
        "admin",
        "-bootstrap",
        &proxy.bootstrap,
        "-topic",
        "admin-t-franz",
        "-partitions",
        "3",
        "-replication",
        "1",
    ]);
    assert_eq!(
        v["ok"],
        Value::Bool(true),
        "franz-go admin steps failed: {v}"
    );

    let v = java_driver(&[
        "admin",
        "--bootstrap",
        &proxy.bootstrap,
        "--topic",
        "admin-t-cycle",
        "--partitions",
        "3",
        "--replication",
        "1",
    ]);
    assert_eq!(v["ok"], Value::Bool(true), "admin steps failed: {v}");
    assert!(
        rdk::ends(&source.bootstrap(), "admin-t-cycle").is_empty(),
        "the admin cycle touched the source"
    );

    proxy.write_routes(&routes_toml(source, target, TARGET_GROUP_ROW));
    let (code, body) = post(proxy, "/reload");
    assert_eq!(code, 200, "reload: {body}");
}
