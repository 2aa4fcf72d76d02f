//! The README's first command: `cargo test --test demo`.
//!
//! Starts a local 3-broker Apache Kafka 3.9 cluster and Switchyard in front of it,
//! runs a live producer and a consumer group through the proxy at the same time, and
//! prints what was produced, what was consumed, and what was lost (nothing: the run
//! fails otherwise). Everything the demo starts is stopped when it ends.

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{rdk, scenarios::Env, KafkaVersion};

fn main() {
    let started = Instant::now();
    println!(
        "Switchyard demo: starting a 3-broker Apache Kafka 3.9 cluster (KRaft) on loopback..."
    );
    let env = Env::start(KafkaVersion::V3, "demo");
    println!(
        "  cluster up: {}\n  switchyard listening on {} (admin http://{})",
        env.cluster.bootstrap(),
        env.bootstrap(),
        env.proxy.admin
    );
    harness::scenarios::create_topic(&env, "demo-orders", 6);

    const RECORDS: u64 = 50_000;
    println!("\nA producer (librdkafka, idempotent, acks=all) and a consumer group of 3 run at once, both through the proxy:");
    let seen = Arc::new(rdk::Seen::default());
    let bootstrap = env.bootstrap().to_string();
    let consumer = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            rdk::consume(
                &bootstrap,
                "demo-orders",
                "demo-group",
                3,
                RECORDS,
                None,
                &seen,
                Duration::from_secs(180),
            )
        })
    };
    let produced = rdk::produce(env.bootstrap(), "demo-orders", RECORDS, 100, "order");
    let consumed = consumer.join().unwrap();

    let status = env.proxy.status();
    println!("\nWhat the clients saw (GET /status):");
    println!("  cluster id        {}", status["cluster_id"]);
    for b in status["clusters"][0]["brokers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  virtual broker {} at {} -> upstream {}",
            b["virtual_id"], b["advertised"], b["upstream"]
        );
    }
    println!("\nResult:");
    println!("  produced (acknowledged)  {}", produced["acked"]);
    println!("  producer errors          {}", produced["errors"]);
    println!("  consumed (unique)        {}", consumed["unique"]);
    println!("  duplicates               {}", consumed["duplicates"]);
    println!(
        "  per-key order violations {}",
        consumed["order_violations"]
    );
    println!("  lost                     {}", consumed["missing"]);
    println!("  took                     {:.1?}", started.elapsed());
    let ok = produced["acked"].as_u64() == Some(RECORDS)
        && consumed["unique"].as_u64() == Some(RECORDS)
        && consumed["missing"].as_u64() == Some(0)
        && consumed["order_violations"].as_u64() == Some(0);
    if ok {
        println!("\nNothing was lost.");
    } else {
        println!("\nFAILED: records were lost or reordered");
        std::process::exit(1);
    }
}
