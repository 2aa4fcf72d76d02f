//! The README's first command: `cargo test --test demo`.
//!
//! A producer-first migration with a rollback, on this machine: a Kafka 2.4.1
//! source cluster, a Kafka 3.9 target cluster, Switchyard in front of both, a live
//! producer and a consumer group through it. One config edit moves the writes of
//! `orders` to the target and points the group there: the group drains the source
//! and switches by itself, resuming at the first record written to the target.
//! Then both are rolled back with the CLI (`switchyard rollback topic orders`,
//! `switchyard rollback group demo-readers`), the clients running untouched. At the
//! end both clusters are read directly and the demo prints what landed where, what
//! was lost and what the group read twice (nothing: the run fails otherwise).
//! Everything it starts is stopped when it ends.

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::migration::{create_topic_direct, routes_toml, TwoClusters};
use harness::{groups, rdk, Proxy};

const RECORDS: u64 = 20_000;
const RATE: f64 = 800.0;
const KEYS: u64 = 50;
const GROUP: &str = "demo-readers";

/// Prints the group switch's phases as they happen until it is done.
fn follow_switch(proxy: &Proxy, to: &str, t0: Instant) {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = groups::switch_of(proxy, GROUP).unwrap_or_default();
        let line = match s["reason"].as_str() {
            Some(r) if s["phase"] == "waiting" => r.to_string(),
            _ => s["phase"].as_str().unwrap_or("").to_string(),
        };
        if s["to"] == to && line != last {
            println!(
                "[{:>4.1}s]   group {GROUP}: {line}",
                t0.elapsed().as_secs_f64()
            );
            last = line;
        }
        if s["to"] == to && s["phase"] == "done" {
            let parts: Vec<String> = s["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}:{}->{}",
                        p["partition"], p["old_offset"], p["new_offset"]
                    )
                })
                .collect();
            println!(
                "          committed offsets moved (partition:old->new, by marks): {}",
                parts.join(" ")
            );
            return;
        }
        assert!(s["phase"] != "failed", "switch failed: {s}");
        assert!(Instant::now() < deadline, "switch not done: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    let started = Instant::now();
    println!("Switchyard demo: a producer-first migration from Kafka 2.4.1 to Kafka 3.9, and a rollback.\n");
    println!("Starting the source (Kafka 2.4.1, 1 broker, ZooKeeper) and the target (Kafka 3.9, 1 broker, KRaft) on loopback...");
    let env = TwoClusters::start("demo", "");
    let proxy = &env.proxy;
    println!("  source    {}", env.source.bootstrap());
    println!("  target    {}", env.target.bootstrap());
    println!(
        "  switchyard {} (admin http://{}); clients know only this address",
        proxy.bootstrap, proxy.admin
    );
    create_topic_direct(&env.source, "orders", 6);
    create_topic_direct(&env.target, "orders", 6);

    println!(
        "\nLive traffic through Switchyard: a librdkafka producer (idempotent, acks=all) writes\n\
         {RECORDS} records to `orders` at {RATE} records/s, and the consumer group `{GROUP}`\n\
         (2 members) reads it. Neither is restarted or reconfigured during the demo."
    );
    let bootstrap = proxy.bootstrap.clone();
    let seen = Arc::new(rdk::Seen::default());
    let consumer = {
        let (b, seen) = (bootstrap.clone(), seen.clone());
        std::thread::spawn(move || {
            rdk::consume_opts(
                &b,
                "orders",
                GROUP,
                2,
                RECORDS,
                None,
                &seen,
                Duration::from_secs(90),
                &[("client.id", "demo-readers")],
            )
        })
    };
    let t0 = Instant::now();
    let producer = {
        let b = bootstrap.clone();
        std::thread::spawn(move || rdk::produce_to(&b, &["orders"], RECORDS, KEYS, "order", RATE))
    };
    let at = |secs: u64| {
        if let Some(d) = (t0 + Duration::from_secs(secs)).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };

    at(5);
    println!(
        "\n[{:>4.1}s] Edit the config and POST /reload:\n\
         \x20         [routes.topics.\"orders\"]      produce = \"target\", consume = \"target\"\n\
         \x20         [routes.groups.\"{GROUP}\"] cluster = \"target\", offsets = \"marks\", when = \"drained\"",
        t0.elapsed().as_secs_f64()
    );
    proxy.write_routes(&routes_toml(
        &env.source,
        &env.target,
        &format!(
            "[routes.topics.\"orders\"]\nproduce = \"target\"\nconsume = \"target\"\n\n\
             [routes.groups.\"{GROUP}\"]\ncluster = \"target\"\noffsets = \"marks\"\nwhen = \"drained\"\n"
        ),
    ));
    let (code, body) = proxy.http("POST", "/reload");
    assert_eq!(code, 200, "reload: {body}");
    let status = proxy.status();
    println!("          route version {}", status["route_version"]);
    for m in status["marks"].as_array().into_iter().flatten() {
        println!(
            "          switch mark: `{}` on {} starts at end offsets {}",
            m["topic"].as_str().unwrap_or(""),
            m["cluster"].as_str().unwrap_or(""),
            m["partitions"]
        );
    }
    follow_switch(proxy, "target", t0);

    at(16);
    println!(
        "\n[{:>4.1}s] Roll back both: switchyard rollback topic orders; switchyard rollback group {GROUP}",
        t0.elapsed().as_secs_f64()
    );
    let (code, out) = proxy.cli(&["rollback", "topic", "orders"]);
    assert_eq!(code, 0, "rollback: {out}");
    let (code, out) = proxy.cli(&["rollback", "group", GROUP]);
    assert_eq!(code, 0, "rollback: {out}");
    follow_switch(proxy, "source", t0);

    let produced = producer.join().unwrap();
    println!(
        "[{:>4.1}s] Producer done: {} acknowledged, {} errors",
        t0.elapsed().as_secs_f64(),
        produced["acked"],
        produced["errors"]
    );
    let consumed = consumer.join().unwrap();

    println!("\nWhat landed where (each cluster read directly, not through Switchyard):");
    let mut place: HashMap<String, Vec<(&str, &str)>> = HashMap::new();
    for (cname, cluster) in [("source", &env.source), ("target", &env.target)] {
        for topic in ["orders"] {
            let recs = rdk::dump(&cluster.bootstrap(), topic);
            println!("  {topic:<9} on {cname}: {:>6} records", recs.len());
            for r in recs {
                place.entry(r.value).or_default().push((cname, topic));
            }
        }
    }
    let mut lost = 0;
    let mut twice = 0;
    for i in 0..RECORDS {
        let key = format!("order-{}", i % KEYS);
        match place.get(&format!("{key}|{}", i / KEYS)).map(Vec::len) {
            None | Some(0) => lost += 1,
            Some(1) => {}
            Some(_) => twice += 1,
        }
    }
    let stored: HashSet<&String> = place.keys().collect();
    let seen = seen.values();
    let unread = stored.iter().filter(|v| !seen.contains(v.as_str())).count();

    println!("\nResult:");
    println!("  acknowledged by Kafka    {}", produced["acked"]);
    println!("  stored, exactly once     {}", RECORDS - lost - twice);
    println!("  written twice            {twice}");
    println!("  lost                     {lost}");
    println!(
        "  consumer group read      {} of the {} records, {} twice, {} per-key order violations",
        stored.len() - unread,
        stored.len(),
        consumed["duplicates"],
        consumed["order_violations"]
    );
    println!("  took                     {:.1?}", started.elapsed());
    let ok = produced["acked"].as_u64() == Some(RECORDS)
        && produced["errors"].as_u64() == Some(0)
        && lost == 0
        && twice == 0
        && unread == 0
        && consumed["duplicates"].as_u64() == Some(0)
        && consumed["order_violations"].as_u64() == Some(0);
    if ok {
        println!("\nNothing was lost, nothing was written twice, and no client was restarted.");
    } else {
        println!("\nFAILED: records were lost, duplicated or unread");
        std::process::exit(1);
    }
}
