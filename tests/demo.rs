//! The README's first command: `cargo test --test demo`.
//!
//! A producer-first migration with a rollback, on this machine: a Kafka 2.4.1
//! source cluster, a Kafka 3.9 target cluster, Switchyard in front of both, a live
//! producer and a consumer group through it. The topic `orders` has its writes
//! flipped to the target by editing the config file, then rolled back with
//! `switchyard rollback topic orders`, while the clients run untouched. At the end
//! both clusters are read directly and the demo prints what landed where and what
//! was lost (nothing: the run fails otherwise). Everything it starts is stopped when
//! it ends.

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::migration::{create_topic_direct, routes_toml, TwoClusters};
use harness::rdk;

const RECORDS: u64 = 20_000;
const RATE: f64 = 1_000.0;
const KEYS: u64 = 50;

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
    for t in ["orders", "payments"] {
        create_topic_direct(&env.source, t, 6);
        create_topic_direct(&env.target, t, 6);
    }

    println!(
        "\nLive traffic through Switchyard: a librdkafka producer (idempotent, acks=all) writes\n\
         {RECORDS} records to `orders` and `payments` at {RATE} records/s, and the consumer group\n\
         `demo-readers` reads both. Neither is restarted or reconfigured during the demo."
    );
    let bootstrap = proxy.bootstrap.clone();
    let seen = Arc::new(rdk::Seen::default());
    let consumer = {
        let (b, seen) = (bootstrap.clone(), seen.clone());
        std::thread::spawn(move || {
            rdk::consume(
                &b,
                "orders,payments",
                "demo-readers",
                2,
                u64::MAX,
                None,
                &seen,
                Duration::from_secs(30),
            )
        })
    };
    let t0 = Instant::now();
    let producer = {
        let b = bootstrap.clone();
        std::thread::spawn(move || {
            rdk::produce_to(&b, &["orders", "payments"], RECORDS, KEYS, "order", RATE)
        })
    };
    let at = |secs: u64| {
        if let Some(d) = (t0 + Duration::from_secs(secs)).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };

    at(6);
    println!(
        "\n[{:>4.1}s] Edit the config: [routes.topics.\"orders\"] produce = \"target\"; POST /reload",
        t0.elapsed().as_secs_f64()
    );
    proxy.write_routes(&routes_toml(
        &env.source,
        &env.target,
        "[routes.topics.\"orders\"]\nproduce = \"target\"\nconsume = \"source\"\n",
    ));
    let (code, body) = proxy.http("POST", "/reload");
    assert_eq!(code, 200, "reload: {body}");
    let status = proxy.status();
    println!("        route version {}", status["route_version"]);
    for m in status["marks"].as_array().into_iter().flatten() {
        println!(
            "        switch mark: `{}` on {} starts at end offsets {}",
            m["topic"].as_str().unwrap_or(""),
            m["cluster"].as_str().unwrap_or(""),
            m["partitions"]
        );
    }

    at(13);
    println!(
        "[{:>4.1}s] Roll back: switchyard rollback topic orders",
        t0.elapsed().as_secs_f64()
    );
    let (code, out) = proxy.cli(&["rollback", "topic", "orders"]);
    assert_eq!(code, 0, "rollback: {out}");
    println!("        orders produce -> source again");

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
        for topic in ["orders", "payments"] {
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
    let on_source: HashSet<&String> = place
        .iter()
        .filter(|(_, p)| p[0].0 == "source")
        .map(|(v, _)| v)
        .collect();
    let seen = seen.values();
    let unread = on_source
        .iter()
        .filter(|v| !seen.contains(v.as_str()))
        .count();

    println!("\nResult:");
    println!("  acknowledged by Kafka    {}", produced["acked"]);
    println!("  stored, exactly once     {}", RECORDS - lost - twice);
    println!("  written twice            {twice}");
    println!("  lost                     {lost}");
    println!(
        "  consumer group read      {} of the {} records on the source, {} per-key order violations",
        on_source.len() - unread,
        on_source.len(),
        consumed["order_violations"]
    );
    println!("  took                     {:.1?}", started.elapsed());
    let ok = produced["acked"].as_u64() == Some(RECORDS)
        && produced["errors"].as_u64() == Some(0)
        && lost == 0
        && twice == 0
        && unread == 0
        && consumed["order_violations"].as_u64() == Some(0);
    if ok {
        println!("\nNothing was lost, nothing was written twice, and no client was restarted.");
    } else {
        println!("\nFAILED: records were lost, duplicated or unread");
        std::process::exit(1);
    }
}
