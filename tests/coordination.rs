//! Several Switchyard processes sharing one routing table through a Kafka topic
//! (`[coordination]`), against real Apache Kafka: a 2.4.1 source and a 3.9 target
//! holding the state topic. Three proxy processes, as three sidecars or three
//! gateway replicas would run.

#[macro_use]
mod harness;

use std::time::{Duration, Instant};

use harness::migration::{create_topic_direct, routes_toml, SOURCE_OFFSET, TARGET_OFFSET};
use harness::{rdk, Cluster, KafkaVersion, Proxy};
use serde_json::Value;

const INSTANCES: [&str; 3] = ["gw-1", "gw-2", "gw-3"];

fn coordination(instance: &str) -> String {
    format!(
        "[coordination]\ncluster = \"target\"\ntopic = \"__switchyard_state_test\"\n\
         instance = \"{instance}\"\nsession_timeout_ms = 6000\n"
    )
}

fn config(source: &Cluster, target: &Cluster, instance: &str, rows: &str) -> String {
    format!(
        "{}\n{}",
        routes_toml(source, target, rows),
        coordination(instance)
    )
}

/// The coordination block of an instance's `/status`.
fn coord(p: &Proxy) -> Value {
    p.status()["coordination"].clone()
}

fn produce_cluster(p: &Proxy, topic: &str) -> Option<String> {
    let s = p.status();
    s["routes"]["topics"]
        .as_array()?
        .iter()
        .find(|t| t["match"] == topic)
        .and_then(|t| t["produce"].as_str().map(str::to_string))
}

/// Waits until every proxy has applied `version`; returns how long that took.
fn converge(proxies: &[Proxy], version: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let versions: Vec<u64> = proxies
            .iter()
            .map(|p| p.status()["route_version"].as_u64().unwrap_or(0))
            .collect();
        if versions.iter().all(|v| *v == version) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "instances at versions {versions:?}, not all at {version}: {:#}",
            coord(&proxies[0])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two clusters with `topics` on both, and three proxies named `name-gw-N`.
fn fleet(name: &str, topics: &[&str]) -> (Cluster, Cluster, Vec<Proxy>) {
    let source = Cluster::start(KafkaVersion::V2_4, 1, &format!("{name}-source"));
    let target = Cluster::start(KafkaVersion::V3, 1, &format!("{name}-target"));
    for t in topics {
        create_topic_direct(&source, t, 2);
        create_topic_direct(&target, t, 2);
    }
    let mut ids: Vec<i32> = source
        .broker_ids()
        .iter()
        .map(|i| i + SOURCE_OFFSET)
        .collect();
    ids.extend(target.broker_ids().iter().map(|i| i + TARGET_OFFSET));
    let proxies: Vec<Proxy> = INSTANCES
        .iter()
        .map(|i| {
            Proxy::start(
                &format!("{name}-{i}"),
                &config(&source, &target, i, ""),
                &ids,
            )
        })
        .collect();
    settle(&proxies);
    (source, target, proxies)
}

/// Waits until every instance has read the log, one table is published and every
/// instance sees all three live.
fn settle(proxies: &[Proxy]) {
    // Every instance reads the log, the first publishes its table, all apply it and
    // see each other.
    let started = Instant::now();
    loop {
        let all: Vec<Value> = proxies.iter().map(coord).collect();
        let settled = all.iter().all(|c| {
            c["caught_up"] == true
                && c["published_version"].as_u64() > Some(0)
                && c["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().filter(|x| x["live"] == true).count() == 3)
        });
        if settled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "instances did not settle: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_instances_share_one_routing_table() {
    let _serial = harness::serial();
    let (source, target, proxies) = fleet("coord", &["orders"]);
    let first = coord(&proxies[0])["published_version"].as_u64().unwrap();
    converge(&proxies, first, Duration::from_secs(10));

    // A switch made through one instance's admin API reaches every instance at the
    // version it was published with.
    let (code, body) =
        proxies[0].http_body("POST", "/switch/topic/orders", r#"{"produce": "target"}"#);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let version = v["route_version"].as_u64().unwrap();
    assert_eq!(version, first + 1);
    let took = converge(&proxies, version, Duration::from_secs(10));
    println!("coordination: a switch on gw-1 applied on every instance after {took:?}");
    for p in &proxies {
        assert_eq!(produce_cluster(p, "orders").as_deref(), Some("target"));
    }

    // A file edited on another instance proposes its routes; every instance applies
    // them.
    let back = "[routes.topics.\"orders\"]\nproduce = \"source\"\n";
    proxies[2].write_routes(&config(&source, &target, "gw-3", back));
    let (code, body) = proxies[2].http("POST", "/reload");
    assert_eq!(code, 200, "{body}");
    let reloaded: Value = serde_json::from_str(&body).unwrap();
    let version = reloaded["route_version"].as_u64().unwrap();
    assert_eq!(version, first + 2, "{body}");
    let took = converge(&proxies, version, Duration::from_secs(10));
    println!("coordination: a file reload on gw-3 applied on every instance after {took:?}");
    for p in &proxies {
        assert_eq!(produce_cluster(p, "orders").as_deref(), Some("source"));
    }

    // An instance whose file was left as it was proposes nothing when reloaded
    // (its file is stale, not a change).
    let (code, body) = proxies[1].http("POST", "/reload");
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    for p in &proxies {
        assert_eq!(p.status()["route_version"].as_u64(), Some(version));
    }

    // A restarted instance starts from its own file, then catches up from the log.
    proxies[1].kill_and_restart();
    let took = converge(&proxies, version, Duration::from_secs(30));
    println!("coordination: a restarted gw-2 caught up after {took:?}");
    assert_eq!(
        produce_cluster(&proxies[1], "orders").as_deref(),
        Some("source")
    );
    // Two changes at once on two instances: each is applied at its own version, or
    // one is refused naming the instance that published that version first; either
    // way every instance ends with the same table.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            proxies[0].http_body("POST", "/switch/topic/orders", r#"{"produce": "target"}"#)
        });
        let b = s.spawn(|| {
            proxies[1].http_body("POST", "/switch/topic/orders", r#"{"consume": "target"}"#)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let outcome = |(code, body): &(u16, String)| -> Option<u64> {
        match code {
            200 => serde_json::from_str::<Value>(body).unwrap()["route_version"].as_u64(),
            400 => {
                assert!(body.contains("published version"), "{body}");
                None
            }
            other => panic!("{other}: {body}"),
        }
    };
    let (va, vb) = (outcome(&a), outcome(&b));
    println!("coordination: concurrent changes gave versions {va:?} and {vb:?}");
    assert!(va.is_some() || vb.is_some(), "both refused: {a:?} {b:?}");
    assert_ne!(va, vb, "one version for two changes");
    let last = va.max(vb).unwrap();
    converge(&proxies, last, Duration::from_secs(10));
    let tables: Vec<Value> = proxies
        .iter()
        .map(|p| p.status()["routes"].clone())
        .collect();
    assert!(tables.iter().all(|t| *t == tables[0]), "{tables:#?}");

    for p in &proxies {
        p.stop();
    }
}

/// A produce flip across instances is a fence: two producers write one topic
/// through two instances while a third instance flips its writes to the target.
/// Every acknowledged record is stored exactly once, each key's records on the
/// source all come before its records on the target, and the marks every instance
/// recorded are the target's end offsets before its first write of the topic.
#[test]
fn a_produce_flip_is_fenced_across_instances() {
    let _serial = harness::serial();
    let (source, target, proxies) = fleet("fence", &["events"]);
    let (count, keys, rate) = (2_000u64, 10u64, 250.0);
    let (p1, p2, switched) = std::thread::scope(|s| {
        let p1 = s
            .spawn(|| rdk::produce_to(&proxies[0].bootstrap, &["events"], count, keys, "p1", rate));
        let p2 = s
            .spawn(|| rdk::produce_to(&proxies[1].bootstrap, &["events"], count, keys, "p2", rate));
        std::thread::sleep(Duration::from_secs(3));
        let asked = Instant::now();
        let (code, body) =
            proxies[2].http_body("POST", "/switch/topic/events", r#"{"produce": "target"}"#);
        let took = asked.elapsed();
        assert_eq!(code, 200, "{body}");
        (p1.join().unwrap(), p2.join().unwrap(), took)
    });
    println!("coordination: the fenced flip answered after {switched:?}");
    for p in [&p1, &p2] {
        assert_eq!(p["acked"], p["sent"], "{p}");
        assert_eq!(p["errors"], 0, "{p}");
    }
    let on_source = rdk::dump(&source.bootstrap(), "events");
    let on_target = rdk::dump(&target.bootstrap(), "events");
    let mut all: Vec<&str> = on_source
        .iter()
        .chain(on_target.iter())
        .map(|r| r.value.as_str())
        .collect();
    let stored = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), stored, "records stored twice");
    assert_eq!(stored as u64, 2 * count, "acknowledged records missing");
    assert!(
        !on_target.is_empty(),
        "nothing reached the target after the flip"
    );
    // Per key: every source record before every target record.
    let seq = |r: &rdk::Stored| -> (String, u64) {
        let (k, n) = r.value.split_once('|').unwrap();
        (k.to_string(), n.parse().unwrap())
    };
    let mut last_on_source = std::collections::BTreeMap::new();
    for r in &on_source {
        let (k, n) = seq(r);
        let e = last_on_source.entry(k).or_insert(n);
        *e = (*e).max(n);
    }
    for r in &on_target {
        let (k, n) = seq(r);
        if let Some(max) = last_on_source.get(&k) {
            assert!(n > *max, "key {k}: {n} on the target, {max} on the source");
        }
    }
    // The marks: the same on every instance, and the target's end offsets before
    // its first write of the topic (it had none).
    let marks: Vec<Value> = proxies
        .iter()
        .map(|p| {
            p.status()["marks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["topic"] == "events" && m["cluster"] == "target")
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    assert!(marks.iter().all(|m| *m == marks[0]), "{marks:#?}");
    let parts = marks[0]["partitions"].as_object().expect("a mark");
    assert!(parts.values().all(|o| o.as_i64() == Some(0)), "{parts:?}");
    for p in &proxies {
        p.stop();
    }
}
