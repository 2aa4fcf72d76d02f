//! Several Switchyard processes sharing one routing table through a Kafka topic
//! (`[coordination]`), against real Apache Kafka: a 2.4.1 source and a 3.9 target
//! holding the state topic. Three proxy processes, as three sidecars or three
//! gateway replicas would run.

#[macro_use]
mod harness;

use std::time::{Duration, Instant};

use harness::migration::{create_topic_direct, routes_toml, SOURCE_OFFSET, TARGET_OFFSET};
use harness::relay::Relay;
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
    fleet_env(name, topics, &[])
}

/// [`fleet`], with extra environment for every proxy.
fn fleet_env(
    name: &str,
    topics: &[&str],
    env: &[(&'static str, String)],
) -> (Cluster, Cluster, Vec<Proxy>) {
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
            Proxy::start_env(
                &format!("{name}-{i}"),
                &config(&source, &target, i, ""),
                &ids,
                env,
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
    every_record_acknowledged([&p1, &p2].into_iter());
    stored_once_in_key_order(&source, &target, "events", 2 * count);
    same_marks_at_zero(&proxies, "events");
    for p in &proxies {
        p.stop();
    }
}

/// Every producer had every record acknowledged, without an error.
fn every_record_acknowledged<'a>(produced: impl Iterator<Item = &'a Value>) {
    for p in produced {
        assert_eq!(p["acked"], p["sent"], "{p}");
        assert_eq!(p["errors"], 0, "{p}");
    }
}

/// Every acknowledged record of `topic` stored exactly once over both clusters
/// (`expected` in all), some on the target; returns what each holds.
fn stored_once(
    source: &Cluster,
    target: &Cluster,
    topic: &str,
    expected: u64,
) -> (Vec<rdk::Stored>, Vec<rdk::Stored>) {
    let on_source = rdk::dump(&source.bootstrap(), topic);
    let on_target = rdk::dump(&target.bootstrap(), topic);
    let mut all: Vec<&str> = on_source
        .iter()
        .chain(on_target.iter())
        .map(|r| r.value.as_str())
        .collect();
    let stored = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), stored, "records stored twice");
    assert_eq!(stored as u64, expected, "acknowledged records missing");
    assert!(
        !on_target.is_empty(),
        "nothing reached the target after the flip"
    );
    (on_source, on_target)
}

/// [`stored_once`], and per key every record on the source before every record
/// on the target (one flip, source to target).
fn stored_once_in_key_order(source: &Cluster, target: &Cluster, topic: &str, expected: u64) {
    let (on_source, on_target) = stored_once(source, target, topic, expected);
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
}

/// The marks of `topic` on the target: the same on every instance, and the
/// target's end offsets before its first write of the topic (it had none).
fn same_marks_at_zero(proxies: &[Proxy], topic: &str) {
    let marks: Vec<Value> = proxies
        .iter()
        .map(|p| {
            p.status()["marks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["topic"] == topic && m["cluster"] == "target")
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    assert!(marks.iter().all(|m| *m == marks[0]), "{marks:#?}");
    let parts = marks[0]["partitions"].as_object().expect("a mark");
    assert!(parts.values().all(|o| o.as_i64() == Some(0)), "{parts:?}");
}

/// Waits until `ok` holds for the coordination block of `p`.
fn wait_coord(p: &Proxy, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let c = coord(p);
        if ok(&c) {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "{what}: {c:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An instance cut off from the coordination cluster (here the target, which is
/// also where the topic's writes go) while another flips the topic's writes to the
/// target: its membership lapses, it holds every write instead of writing the
/// topic to the source, and once it reaches the cluster again it reads the flip
/// and writes to the target. Its producer is never restarted and loses nothing.
#[test]
fn an_instance_cut_off_from_the_coordination_cluster_writes_nowhere() {
    let _serial = harness::serial();
    let source = Cluster::start(KafkaVersion::V2_4, 1, "cut-source");
    // Each instance reaches the target through its own relay and listener.
    let relayed: Vec<(u16, u16)> = INSTANCES
        .iter()
        .map(|_| (harness::free_port(), harness::free_port()))
        .collect();
    let target = Cluster::start_relayed("cut-target", &relayed);
    create_topic_direct(&source, "events", 2);
    create_topic_direct(&target, "events", 2);
    let relays: Vec<Relay> = relayed.iter().map(|(r, l)| Relay::start(*r, *l)).collect();
    let ids = [1 + SOURCE_OFFSET, 1 + TARGET_OFFSET];
    let proxies: Vec<Proxy> = INSTANCES
        .iter()
        .zip(&relays)
        .map(|(i, relay)| {
            let config = format!(
                "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = {SOURCE_OFFSET}\n\n\
                 [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = {TARGET_OFFSET}\n\n\
                 [routes]\ndefault_cluster = \"source\"\n\n{}",
                source.bootstrap(),
                relay.addr(),
                coordination(i)
            );
            Proxy::start(&format!("cut-{i}"), &config, &ids)
        })
        .collect();
    settle(&proxies);

    let (count, keys, rate) = (3_000u64, 10u64, 250.0);
    let (p1, p3, after_flip) = std::thread::scope(|s| {
        let p1 = s
            .spawn(|| rdk::produce_to(&proxies[0].bootstrap, &["events"], count, keys, "p1", rate));
        let p3 = s
            .spawn(|| rdk::produce_to(&proxies[2].bootstrap, &["events"], count, keys, "p3", rate));
        std::thread::sleep(Duration::from_secs(2));
        relays[2].cut();
        let lapsed = wait_coord(
            &proxies[2],
            "gw-3 still a member",
            Duration::from_secs(20),
            |c| c["member"] == false && c["holding"] == true,
        );
        println!("coordination: gw-3 cut off; it held writes after {lapsed:?}");
        let asked = Instant::now();
        let (code, body) =
            proxies[0].http_body("POST", "/switch/topic/events", r#"{"produce": "target"}"#);
        assert_eq!(code, 200, "{body}");
        println!(
            "coordination: the flip without gw-3 answered after {:?}",
            asked.elapsed()
        );
        // Everything on the source now is all it ever holds of the topic.
        let after_flip = rdk::ends(&source.bootstrap(), "events");
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(coord(&proxies[2])["holding"], true);
        relays[2].restore();
        let back = wait_coord(&proxies[2], "gw-3 back", Duration::from_secs(30), |c| {
            c["member"] == true && c["holding"] == false
        });
        println!("coordination: gw-3 reconnected and served again after {back:?}");
        assert_eq!(
            produce_cluster(&proxies[2], "events").as_deref(),
            Some("target")
        );
        (p1.join().unwrap(), p3.join().unwrap(), after_flip)
    });
    every_record_acknowledged([&p1, &p3].into_iter());
    assert_eq!(
        rdk::ends(&source.bootstrap(), "events"),
        after_flip,
        "the topic was written to the source after its flip"
    );
    stored_once_in_key_order(&source, &target, "events", 2 * count);
    same_marks_at_zero(&proxies, "events");
    for p in &proxies {
        p.stop();
    }
}

/// A produce flip whose proposer is killed while one member is paused (SIGSTOP):
/// the fence waits for their sessions to expire, then the leader among the
/// remaining instances finishes it; the paused instance, resumed, holds writes
/// until it has rejoined and read the flip; the killed one, restarted, catches up.
/// Every acknowledged record is stored once, in key order.
#[test]
fn a_fence_survives_its_proposer_killed_and_a_member_paused() {
    let _serial = harness::serial();
    let (source, target, proxies) = fleet("kill", &["events"]);
    let (count, keys, rate) = (3_000u64, 10u64, 250.0);
    let (p2, p3) = std::thread::scope(|s| {
        let p2 = s
            .spawn(|| rdk::produce_to(&proxies[1].bootstrap, &["events"], count, keys, "p2", rate));
        let p3 = s
            .spawn(|| rdk::produce_to(&proxies[2].bootstrap, &["events"], count, keys, "p3", rate));
        std::thread::sleep(Duration::from_secs(2));
        proxies[1].signal("STOP");
        let flip = s.spawn(|| {
            proxies[0].http_body("POST", "/switch/topic/events", r#"{"produce": "target"}"#)
        });
        // The fence is up on gw-3, waiting for gw-2's acknowledgement.
        wait_coord(
            &proxies[2],
            "no fence on gw-3",
            Duration::from_secs(10),
            |c| c["fences"].as_array().is_some_and(|f| !f.is_empty()),
        );
        proxies[0].stop();
        let _ = flip.join();
        let released = wait_coord(
            &proxies[2],
            "the fence not finished",
            Duration::from_secs(40),
            |c| c["fences"].as_array().is_some_and(|f| f.is_empty()) && c["holding"] == false,
        );
        println!("coordination: gw-3 finished the orphaned fence after {released:?}");
        assert_eq!(
            produce_cluster(&proxies[2], "events").as_deref(),
            Some("target")
        );
        let after_flip = rdk::ends(&source.bootstrap(), "events");
        proxies[1].signal("CONT");
        let back = wait_coord(&proxies[1], "gw-2 back", Duration::from_secs(30), |c| {
            c["member"] == true && c["holding"] == false
        });
        println!("coordination: the paused gw-2 rejoined and served again after {back:?}");
        proxies[0].start_again();
        wait_coord(&proxies[0], "gw-1 back", Duration::from_secs(30), |c| {
            c["member"] == true && c["holding"] == false
        });
        let (p2, p3) = (p2.join().unwrap(), p3.join().unwrap());
        assert_eq!(
            rdk::ends(&source.bootstrap(), "events"),
            after_flip,
            "the topic was written to the source after its flip"
        );
        (p2, p3)
    });
    every_record_acknowledged([&p2, &p3].into_iter());
    stored_once_in_key_order(&source, &target, "events", 2 * count);
    let version = proxies[2].status()["route_version"].as_u64().unwrap();
    converge(&proxies, version, Duration::from_secs(10));
    same_marks_at_zero(&proxies, "events");
    for p in &proxies {
        p.stop();
    }
}

/// One librdkafka member of `group` (commit-on-revoke, a commit after every
/// poll), until the members sharing `seen` have read `expect` records.
fn member(
    bootstrap: &str,
    topic: &str,
    group: &str,
    expect: u64,
    seen: &std::sync::Arc<rdk::Seen>,
    client: &str,
) -> Value {
    rdk::consume_opts(
        bootstrap,
        topic,
        group,
        1,
        expect,
        None,
        seen,
        Duration::from_secs(150),
        &[("client.id", client)],
    )
}

/// The newest switch of `group` an instance reports.
fn group_switch(p: &Proxy, group: &str) -> Option<Value> {
    p.status()["switches"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == group)
        .cloned()
}

/// Waits until every instance reports the switch of `group` to `to` done.
fn group_done_everywhere(proxies: &[Proxy], group: &str, to: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let all: Vec<Option<Value>> = proxies.iter().map(|p| group_switch(p, group)).collect();
        for s in all.iter().flatten() {
            assert!(
                !(s["to"] == to && s["phase"] == "failed"),
                "switch of {group} failed: {s}"
            );
        }
        if all.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s["to"] == to && s["phase"] == "done")
        }) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "switch of {group} to {to} not done everywhere: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sidecars: three producers and the three members of one consumer group, each
/// client bound to a different instance, through a producer-first migration and
/// its rollback. One instance (the leader of the coordination group) drives each
/// group switch; the others hold, steer and settle the members they serve at the
/// phases it records. The group reads every record once, in per-key order
/// (commit-on-revoke members), and every instance reports each switch done.
#[test]
fn a_group_switch_across_three_sidecars() {
    let _serial = harness::serial();
    let (source, target, proxies) = fleet("side", &[]);
    let topic = "ledger";
    let group = "ledger-app";
    create_topic_direct(&source, topic, 6);
    create_topic_direct(&target, topic, 6);
    // Long enough for the switch and its rollback to happen while both run.
    let (count, keys, rate) = (6_000u64, 10u64, 150.0);
    let expect = 3 * count;
    let seen = std::sync::Arc::new(rdk::Seen::default());
    let switch = |p: &Proxy, path: &str, body: &str| {
        let (code, body) = p.http_body("POST", path, body);
        // 202: a group switch started (it runs on).
        assert!(code == 200 || code == 202, "{path}: {code} {body}");
    };
    let (produced, consumed) = std::thread::scope(|s| {
        let producers: Vec<_> = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let prefix = format!("p{i}");
                s.spawn(move || rdk::produce_to(&p.bootstrap, &[topic], count, keys, &prefix, rate))
            })
            .collect();
        let members: Vec<_> = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let seen = seen.clone();
                s.spawn(move || {
                    member(
                        &p.bootstrap,
                        topic,
                        group,
                        expect,
                        &seen,
                        &format!("member-{i}"),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        // Producer first, through gw-1; then the group, through gw-2.
        switch(
            &proxies[0],
            &format!("/switch/topic/{topic}"),
            r#"{"produce": "target", "consume": "target"}"#,
        );
        switch(
            &proxies[1],
            &format!("/switch/group/{group}"),
            r#"{"to": "target"}"#,
        );
        let took = group_done_everywhere(&proxies, group, "target", Duration::from_secs(90));
        println!("coordination: the group switch was done on every instance after {took:?}");
        std::thread::sleep(Duration::from_secs(2));
        // Rollback, through gw-3.
        for path in [
            format!("/rollback/topic/{topic}"),
            format!("/rollback/group/{group}"),
        ] {
            let (code, body) = proxies[2].http("POST", &path);
            assert!(code == 200 || code == 202, "{path}: {code} {body}");
        }
        let took = group_done_everywhere(&proxies, group, "source", Duration::from_secs(90));
        println!("coordination: the rollback was done on every instance after {took:?}");
        let produced: Vec<Value> = producers.into_iter().map(|h| h.join().unwrap()).collect();
        let consumed: Vec<Value> = members.into_iter().map(|h| h.join().unwrap()).collect();
        (produced, consumed)
    });
    every_record_acknowledged(produced.iter());
    // Read both clusters directly: every acknowledged record once (its writes went
    // to the target and back), and the forward flip's marks are the target's end
    // offsets before its first write of the topic, on every instance.
    stored_once(&source, &target, topic, expect);
    same_marks_at_zero(&proxies, topic);
    let last = consumed.last().unwrap();
    println!("coordination: the group read {last}");
    assert_eq!(last["unique"].as_u64(), Some(expect), "{consumed:?}");
    let duplicates: u64 = consumed
        .iter()
        .map(|c| c["duplicates"].as_u64().unwrap())
        .max()
        .unwrap();
    let disorder: u64 = consumed
        .iter()
        .map(|c| c["order_violations"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(duplicates, 0, "{consumed:?}");
    assert_eq!(disorder, 0, "{consumed:?}");
    // Every member's first fetch on the new cluster, on whichever instance, was
    // at the translated offset.
    for p in &proxies {
        let mismatches: Vec<String> = p
            .metrics()
            .lines()
            .filter(|l| l.starts_with("switchyard_switch_position_mismatch_total"))
            .map(str::to_string)
            .collect();
        assert!(mismatches.is_empty(), "{mismatches:?}");
    }
    // One driver per switch: the leader's log says it drove it.
    let drivers = proxies
        .iter()
        .filter(|p| p.log_text().contains("group switch driven here"))
        .count();
    assert!(drivers >= 1, "no instance drove the switches");
    for p in &proxies {
        p.stop();
    }
}

/// A gateway: every client's bootstrap lists all three replicas, so each lands on
/// whichever one answers it first. Producers write through a producer-first flip,
/// then the replicas are restarted one after the other (SIGTERM, as a rolling
/// restart does): every client on a stopped replica moves to another mid-run,
/// the producers keeping their virtual ids (one of them writes its home cluster
/// again after writing away from it: the replica it lands on gives it an id of its
/// own there). Then the group switches. Every acknowledged record is stored once,
/// in key order, and the group reads every one once, in order.
#[test]
fn gateway_replicas_restarted_one_by_one_mid_migration() {
    let _serial = harness::serial();
    let (source, target, proxies) = fleet("gw", &[]);
    let topic = "payments";
    let group = "payments-app";
    create_topic_direct(&source, topic, 6);
    create_topic_direct(&target, topic, 6);
    let all: String = proxies
        .iter()
        .map(|p| p.bootstrap.clone())
        .collect::<Vec<_>>()
        .join(",");
    let (count, keys, rate) = (8_000u64, 10u64, 200.0);
    let expect = 2 * count;
    let seen = std::sync::Arc::new(rdk::Seen::default());
    let (produced, consumed) = std::thread::scope(|s| {
        let producers: Vec<_> = ["pa", "pb"]
            .into_iter()
            .map(|prefix| {
                let all = all.clone();
                s.spawn(move || rdk::produce_to(&all, &[topic], count, keys, prefix, rate))
            })
            .collect();
        let members: Vec<_> = (0..3)
            .map(|i| {
                let (seen, all) = (seen.clone(), all.clone());
                s.spawn(move || {
                    member(&all, topic, group, expect, &seen, &format!("gw-member-{i}"))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        let (code, body) = proxies[0].http_body(
            "POST",
            &format!("/switch/topic/{topic}"),
            r#"{"produce": "target", "consume": "target"}"#,
        );
        assert_eq!(code, 200, "{body}");
        // A rolling restart: each replica stops cleanly, leaving the group, and is
        // back, caught up, before the next one stops.
        for p in &proxies {
            assert_eq!(p.terminate(Duration::from_secs(30)), Some(0), "clean stop");
            std::thread::sleep(Duration::from_secs(1));
            p.start_again();
            wait_coord(
                p,
                "the restarted replica serving",
                Duration::from_secs(30),
                |c| c["member"] == true && c["holding"] == false,
            );
        }
        let (code, body) = proxies[1].http_body(
            "POST",
            &format!("/switch/group/{group}"),
            r#"{"to": "target"}"#,
        );
        assert!(code == 200 || code == 202, "{code} {body}");
        let took = group_done_everywhere(&proxies, group, "target", Duration::from_secs(90));
        println!("coordination: the gateway's group switch was done everywhere after {took:?}");
        let produced: Vec<Value> = producers.into_iter().map(|h| h.join().unwrap()).collect();
        let consumed: Vec<Value> = members.into_iter().map(|h| h.join().unwrap()).collect();
        (produced, consumed)
    });
    every_record_acknowledged(produced.iter());
    stored_once_in_key_order(&source, &target, topic, expect);
    let last = consumed.last().unwrap();
    println!("coordination: the gateway's group read {last}");
    assert_eq!(last["unique"].as_u64(), Some(expect), "{consumed:?}");
    // Commit-on-revoke members: nothing read twice, nothing out of order, though
    // each member's connections moved between replicas (a link confirmed on one
    // replica is shared with the others, so their fetches follow the group).
    assert_eq!(last["duplicates"].as_u64(), Some(0), "{consumed:?}");
    assert_eq!(last["order_violations"].as_u64(), Some(0), "{consumed:?}");
    for p in &proxies {
        p.stop();
    }
}

/// The leader driving a group switch is SIGKILLed at every phase: before the flip
/// (quiescing, leaving, translated, committed) and after it (flipped). Once its
/// session expires, the new leader
/// resumes the switch from its recorded phase (from the start before the flip, the
/// settling after it) and every instance ends with the switch done; the killed
/// instance, restarted, reads that from the log. Each phase is held 2.5 s on the
/// driver (a test hook) so the kill lands in it. The group, read in parts between
/// switches, reads every record once.
#[test]
fn the_leader_killed_during_a_group_switch() {
    let _serial = harness::serial();
    let pause = [("SWITCHYARD_TEST_PHASE_PAUSE_MS", "2500".to_string())];
    let (source, target, proxies) = fleet_env("lead", &[], &pause);
    let (topic, group) = ("killed", "kill-g");
    const N: u64 = 3_000;
    for c in [&source, &target] {
        create_topic_direct(c, topic, 2);
        assert_eq!(rdk::produce(&c.bootstrap(), topic, N, 10, "k")["acked"], N);
    }
    let seen = std::sync::Arc::new(rdk::Seen::default());
    // The leader every instance agrees on (a restarted one rejoins first).
    let leader = |ps: &[&Proxy]| -> usize {
        let started = Instant::now();
        loop {
            let names: Vec<Option<String>> = ps
                .iter()
                .map(|p| coord(p)["leader"].as_str().map(str::to_string))
                .collect();
            if names[0].is_some() && names.iter().all(|n| *n == names[0]) {
                return INSTANCES
                    .iter()
                    .position(|i| Some(i.to_string()) == names[0])
                    .expect("a known instance");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no leader: {names:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut at = "source";
    for phase in ["quiescing", "leaving", "translated", "committed", "flipped"] {
        let all: Vec<&Proxy> = proxies.iter().collect();
        let lead = leader(&all);
        let other = (lead + 1) % 3;
        let v = rdk::consume(
            &proxies[other].bootstrap,
            topic,
            group,
            1,
            N,
            Some(500),
            &seen,
            Duration::from_secs(60),
        );
        assert_eq!(v["duplicates"], 0, "{v}");
        let to = if at == "source" { "target" } else { "source" };
        let (code, body) = proxies[other].http_body(
            "POST",
            &format!("/switch/group/{group}"),
            &format!(r#"{{"to": "{to}", "offsets": "identity", "when": "now"}}"#),
        );
        assert!(code == 200 || code == 202, "{code} {body}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = group_switch(&proxies[lead], group);
            if s.as_ref()
                .is_some_and(|s| s["to"] == to && s["phase"] == phase)
            {
                break;
            }
            assert!(Instant::now() < deadline, "never saw phase {phase}: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        proxies[lead].stop();
        let others: Vec<usize> = (0..3).filter(|i| *i != lead).collect();
        let started = Instant::now();
        loop {
            let done = others.iter().all(|i| {
                group_switch(&proxies[*i], group)
                    .is_some_and(|s| s["to"] == to && s["phase"] == "done")
            });
            if done {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "switch not finished without its leader (killed at {phase})"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        println!(
            "coordination: leader killed at {phase}; the new leader finished the switch after {:?}",
            started.elapsed()
        );
        proxies[lead].start_again();
        group_done_everywhere(&proxies, group, to, Duration::from_secs(60));
        at = to;
    }
    let any = &proxies[0];
    let v = rdk::consume(
        &any.bootstrap,
        topic,
        group,
        1,
        N,
        None,
        &seen,
        Duration::from_secs(60),
    );
    assert_eq!(v["unique"].as_u64(), Some(N), "{v}");
    assert_eq!(v["duplicates"].as_u64(), Some(0), "{v}");
    let logs: String = proxies.iter().map(|p| p.log_text()).collect();
    assert!(
        logs.contains("group switch taken over after its flip"),
        "a new leader settled a flipped switch"
    );
    for p in &proxies {
        p.stop();
    }
}
