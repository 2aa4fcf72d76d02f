//! Consumer groups changing clusters through the proxy (the group handoff): a Kafka
//! 2.4.1 source, a Kafka 3.9 target, groups of Java (eager and cooperative),
//! franz-go and librdkafka members that are never restarted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::migration::{create_topic_direct, routes_toml, TwoClusters};
use super::{assert_consumed, assert_produced, go_driver, java_driver, rdk, Proxy};

/// Every recorded switch of `group` (newest record).
pub fn switch_of(proxy: &Proxy, group: &str) -> Option<Value> {
    proxy.status()["switches"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == group)
        .cloned()
}

/// Waits until every group's switch to `to` is done; panics on a failed one.
pub fn wait_done(proxy: &Proxy, groups: &[&str], to: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let switches: Vec<Option<Value>> = groups.iter().map(|g| switch_of(proxy, g)).collect();
        let mut all = true;
        for (g, s) in groups.iter().zip(&switches) {
            match s {
                Some(s) if s["to"] == to && s["phase"] == "done" => {}
                Some(s) if s["to"] == to && s["phase"] == "failed" => {
                    panic!("switch of {g} failed: {s}")
                }
                _ => all = false,
            }
        }
        if all {
            return switches.into_iter().map(Option::unwrap).collect();
        }
        assert!(
            Instant::now() < deadline,
            "switches not done in {timeout:?}: {switches:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Reloads `proxy` with new routes; the reload must be accepted.
pub fn reload(env: &TwoClusters, routes: &str) {
    env.proxy
        .write_routes(&routes_toml(&env.source, &env.target, routes));
    let (code, body) = env.proxy.http("POST", "/reload");
    assert_eq!(code, 200, "reload: {body}");
}

fn group_rows(groups: &[&str], cluster: &str, extra: &str) -> String {
    groups
        .iter()
        .map(|g| format!("[routes.groups.\"{g}\"]\ncluster = \"{cluster}\"\n{extra}\n"))
        .collect()
}

const TOPIC: &str = "handoff";
const PARTITIONS: u32 = 6;
const COUNT: u64 = 15_000;
const RATE: &str = "300";
const JAVA_EAGER: &str = "handoff-java-eager";
const JAVA_COOP: &str = "handoff-java-coop";
const FRANZ: &str = "handoff-franz";
const RDK: &str = "handoff-rdk";

fn consume_args(bootstrap: &str, group: &str, assignor_flag: &str, assignor: &str) -> Vec<String> {
    [
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        TOPIC,
        "--group",
        group,
        "--members",
        "3",
        "--expect",
        &COUNT.to_string(),
        "--timeout-s",
        "170",
        assignor_flag,
        assignor,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn_driver(driver: fn(&[&str]) -> Value, args: Vec<String>) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || driver(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// Issue 4, done-when 1 and 4: producer-first without mirroring, then a rollback of
/// both. Four groups of three members (Java eager, Java cooperative, franz-go
/// cooperative, librdkafka eager) read a topic through the proxy while a Java
/// producer writes it. The topic's writes flip to the target and every group row
/// points there (`marks`, `when = "drained"`): each group drains the source and
/// switches by itself. Then writes and groups go back the same way. Every group
/// must see every record once, in per-key order.
pub fn producer_first_and_rollback(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    create_topic_direct(source, TOPIC, PARTITIONS);
    create_topic_direct(target, TOPIC, PARTITIONS);
    let groups = [JAVA_EAGER, JAVA_COOP, FRANZ, RDK];
    reload(env, &group_rows(&groups, "source", ""));

    let bootstrap = proxy.bootstrap.clone();
    let java_eager = spawn_driver(
        java_driver,
        consume_args(&bootstrap, JAVA_EAGER, "--assignor", "range"),
    );
    let java_coop = spawn_driver(
        java_driver,
        consume_args(&bootstrap, JAVA_COOP, "--assignor", "cooperative-sticky"),
    );
    let franz = spawn_driver(
        go_driver,
        consume_args(&bootstrap, FRANZ, "--balancer", "cooperative-sticky"),
    );
    let rdk_seen = Arc::new(rdk::Seen::default());
    let rdk_group = {
        let (b, seen) = (bootstrap.clone(), rdk_seen.clone());
        std::thread::spawn(move || {
            rdk::consume_opts(
                &b,
                TOPIC,
                RDK,
                3,
                COUNT,
                None,
                &seen,
                Duration::from_secs(170),
                &[("client.id", "rdkafka-handoff")],
            )
        })
    };
    let producer = spawn_driver(
        java_driver,
        [
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            TOPIC,
            "--count",
            &COUNT.to_string(),
            "--keys",
            "30",
            "--rate",
            RATE,
            "--timeout-s",
            "170",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );

    // Writes flip; every group follows once it has drained the source.
    std::thread::sleep(Duration::from_secs(12));
    let forward = format!(
        "[routes.topics.\"{TOPIC}\"]\nproduce = \"target\"\nconsume = \"target\"\n\n{}",
        group_rows(&groups, "target", "offsets = \"marks\"\nwhen = \"drained\"")
    );
    let flipped_at = Instant::now();
    reload(env, &forward);
    let done = wait_done(proxy, &groups, "target", Duration::from_secs(120));
    eprintln!(
        "forward switches done {:.1} s after the reload",
        flipped_at.elapsed().as_secs_f64()
    );
    let status = proxy.status();
    let mark: BTreeMap<i64, i64> = status["marks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["topic"] == TOPIC && m["cluster"] == "target")
        .map(|m| {
            m["partitions"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
                .collect()
        })
        .expect("a mark for the target");
    for s in &done {
        eprintln!("switch: {s}");
        for p in s["partitions"].as_array().unwrap() {
            assert_eq!(p["method"], "marks", "{s}");
            let part = p["partition"].as_i64().unwrap();
            assert_eq!(p["new_offset"].as_i64(), Some(mark[&part]), "{s}");
        }
    }

    // Roll back both: writes first, then the groups drain the target and return.
    std::thread::sleep(Duration::from_secs(6));
    let back = format!(
        "[routes.topics.\"{TOPIC}\"]\nproduce = \"source\"\nconsume = \"source\"\n\n{}",
        group_rows(&groups, "source", "offsets = \"marks\"\nwhen = \"drained\"")
    );
    let back_at = Instant::now();
    reload(env, &back);
    let done = wait_done(proxy, &groups, "source", Duration::from_secs(120));
    eprintln!(
        "rollback switches done {:.1} s after the reload",
        back_at.elapsed().as_secs_f64()
    );
    for s in &done {
        eprintln!("switch back: {s}");
    }

    let p = producer.join().unwrap();
    eprintln!("producer: {p}");
    assert_produced(&p, COUNT);
    for (name, handle) in [
        ("java eager", java_eager),
        ("java cooperative", java_coop),
        ("franz-go", franz),
    ] {
        let v = handle.join().unwrap();
        eprintln!("{name}: {v}");
        assert_consumed(&v, COUNT, 0);
    }
    let v = rdk_group.join().unwrap();
    assert_consumed(&v, COUNT, 0);
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("switchyard_switches_total{kind=\"group\",outcome=\"ok\"} 8"),
        "{metrics}"
    );
}

fn produce_args(
    bootstrap: &str,
    topic: &str,
    count: u64,
    seq_start: u64,
    rate: &str,
) -> Vec<String> {
    [
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--keys",
        "12",
        "--seq-start",
        &seq_start.to_string(),
        "--rate",
        rate,
        "--timeout-s",
        "120",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const MIRRORED: &str = "mirrored";
const MM_GROUP: &str = "mm-java";

/// Issue 4, done-when 2: a mirrored migration with real MirrorMaker 2 (3.9,
/// dedicated mode, default replication policy). MM2 copies `mirrored` from the
/// 2.4.1 source to `source.mirrored` on the target, and the route renames it. A
/// Java group (3 members) reads it through the proxy while a producer writes to
/// the source; the group switches first, with `mm2` offsets. Then the producer
/// stops, replication catches up and stops, writes flip to the target, and a second
/// producer writes there. The group must see every record, in key order, with
/// duplicates within MM2's offset-sync granularity (`offset.lag.max` = 100 per
/// partition).
pub fn mirrored_group_switch(env: &TwoClusters) {
    let (source, target, proxy) = (&env.source, &env.target, &env.proxy);
    create_topic_direct(source, MIRRORED, 3);
    let rows = |produce: &str, group: &str| {
        format!(
            "[routes.topics.\"{MIRRORED}\"]\nproduce = \"{produce}\"\nconsume = \"{group}\"\n\
             rename = {{ target = \"source.{MIRRORED}\" }}\n\n\
             [routes.groups.\"{MM_GROUP}\"]\ncluster = \"{group}\"\noffsets = \"mm2\"\nwhen = \"now\"\n"
        )
    };
    reload(env, &rows("source", "source"));
    let mirror = super::Mirror::start("groups-mirror", source, target, MIRRORED, "mm-.*");

    let bootstrap = proxy.bootstrap.clone();
    let (first, second) = (6_000u64, 3_000u64);
    let mut consume = consume_args(&bootstrap, MM_GROUP, "--assignor", "range");
    consume[4] = MIRRORED.into();
    consume[10] = (first + second).to_string();
    let group = spawn_driver(java_driver, consume);
    let producer = spawn_driver(
        java_driver,
        produce_args(&bootstrap, MIRRORED, first, 0, "200"),
    );

    // Once MM2 replicates and checkpoints the group, switch it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while rdk::ends(&target.bootstrap(), "source.checkpoints.internal")
        .values()
        .sum::<i64>()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "no MM2 checkpoints on the target"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (code, body) = proxy.http_body(
        "POST",
        &format!("/switch/group/{MM_GROUP}"),
        r#"{"to": "target", "offsets": "mm2", "when": "now"}"#,
    );
    assert_eq!(code, 202, "switch: {body}");
    let done = wait_done(proxy, &[MM_GROUP], "target", Duration::from_secs(90));
    eprintln!("mm2 switch: {}", done[0]);
    let methods: Vec<&str> = done[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.iter().all(|m| m.starts_with("mm2")),
        "every partition translated by MM2 records: {methods:?}"
    );

    // The first producer ends; replication catches up and stops; writes flip.
    let p = producer.join().unwrap();
    assert_produced(&p, first);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, t) = (
            rdk::ends(&source.bootstrap(), MIRRORED),
            rdk::ends(&target.bootstrap(), &format!("source.{MIRRORED}")),
        );
        if s == t && s.values().sum::<i64>() == first as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MM2 did not catch up: {s:?} vs {t:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    mirror.stop();
    reload(env, &rows("target", "target"));
    let p = spawn_driver(
        java_driver,
        produce_args(&bootstrap, MIRRORED, second, first, "300"),
    )
    .join()
    .unwrap();
    assert_produced(&p, second);

    let v = group.join().unwrap();
    eprintln!("mm2 group: {v}");
    let dups = v["duplicates"].as_u64().unwrap();
    eprintln!("duplicates after the mm2 switch: {dups} (bound 3 x offset.lag.max = 300)");
    assert_consumed(&v, first + second, 300);
}
