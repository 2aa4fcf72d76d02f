//! The cost of a produce flip across three Switchyard instances (`[coordination]`):
//! a Kafka 2.4.1 source and a Kafka 3.9 target holding the state topic, one broker
//! each; two librdkafka producers write one topic at 250 records/s each through two
//! instances while the third flips its writes, ROUNDS times, to the target and back.
//! Run with `cargo bench --bench coordination`.
//!
//! Per flip, from the instances' own logs:
//! - the write pause: from the first instance's "produce route flipping" (its writes
//!   of the topic held) to the last instance's "fence released" (writes go on);
//! - change to last flip: from the admin request to the last "fence released";
//! - the admin API's answer time.
//!
//! Reported as p50 and max over the rounds. Every acknowledged record must be
//! stored exactly once across both clusters, or the bench fails.

#[path = "../tests/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::migration::{create_topic_direct, routes_toml, SOURCE_OFFSET, TARGET_OFFSET};
use harness::{rdk, Cluster, KafkaVersion, Proxy};

const ROUNDS: usize = 10;
const TOPIC: &str = "flips";
const INSTANCES: [&str; 3] = ["gw-1", "gw-2", "gw-3"];

fn config(source: &Cluster, target: &Cluster, instance: &str) -> String {
    format!(
        "{}\n[coordination]\ncluster = \"target\"\ntopic = \"__switchyard_state_bench\"\n\
         instance = \"{instance}\"\nsession_timeout_ms = 6000\n",
        routes_toml(source, target, "")
    )
}

/// Seconds since the epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-01T22:58:56.706392Z`).
fn stamp(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// The times of the `n`-th flip of TOPIC in one instance's log: (held, released).
fn flip_times(log: &str, n: usize) -> Option<(f64, f64)> {
    let lines: Vec<&str> = log.lines().collect();
    let held = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("produce route flipping") && l.contains(TOPIC))
        .nth(n)?;
    let released = lines[held.0..]
        .iter()
        .find(|l| l.contains("fence released") && l.contains(TOPIC))?;
    Some((stamp(held.1)?, stamp(released)?))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn p50_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], *v.last().unwrap())
}

fn main() {
    let source = Cluster::start(KafkaVersion::V2_4, 1, "bench-coord-source");
    let target = Cluster::start(KafkaVersion::V3, 1, "bench-coord-target");
    create_topic_direct(&source, TOPIC, 2);
    create_topic_direct(&target, TOPIC, 2);
    let ids = [1 + SOURCE_OFFSET, 1 + TARGET_OFFSET];
    let proxies: Vec<Proxy> = INSTANCES
        .iter()
        .map(|i| {
            Proxy::start(
                &format!("bench-coord-{i}"),
                &config(&source, &target, i),
                &ids,
            )
        })
        .collect();
    // Every instance a member and serving.
    let started = Instant::now();
    while !proxies.iter().all(|p| {
        let c = &p.status()["coordination"];
        c["member"] == true && c["holding"] == false && c["published_version"].as_u64() > Some(0)
    }) {
        assert!(started.elapsed() < Duration::from_secs(60), "no settle");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rate = 250.0;
    let count = (rate * (ROUNDS as f64 * 2.0 + 6.0)) as u64;
    let (mut asked, mut answered) = (Vec::new(), Vec::new());
    let (p1, p2) = std::thread::scope(|s| {
        let p1 =
            s.spawn(|| rdk::produce_to(&proxies[0].bootstrap, &[TOPIC], count, 10, "p1", rate));
        let p2 =
            s.spawn(|| rdk::produce_to(&proxies[1].bootstrap, &[TOPIC], count, 10, "p2", rate));
        std::thread::sleep(Duration::from_secs(3));
        for round in 0..ROUNDS {
            let to = if round % 2 == 0 { "target" } else { "source" };
            let at = now_s();
            let t = Instant::now();
            let (code, body) = proxies[2].http_body(
                "POST",
                &format!("/switch/topic/{TOPIC}"),
                &format!(r#"{{"produce": "{to}"}}"#),
            );
            assert_eq!(code, 200, "{body}");
            answered.push(t.elapsed().as_secs_f64());
            asked.push(at);
            std::thread::sleep(Duration::from_secs(2));
        }
        (p1.join().unwrap(), p2.join().unwrap())
    });
    for p in [&p1, &p2] {
        assert_eq!(p["acked"], p["sent"], "{p}");
    }
    let stored =
        rdk::dump(&source.bootstrap(), TOPIC).len() + rdk::dump(&target.bootstrap(), TOPIC).len();
    assert_eq!(stored as u64, 2 * count, "records lost or written twice");

    let logs: Vec<String> = proxies.iter().map(|p| p.log_text()).collect();
    let (mut pauses, mut to_last) = (Vec::new(), Vec::new());
    for (round, at) in asked.iter().enumerate() {
        let times: Vec<(f64, f64)> = logs
            .iter()
            .map(|l| flip_times(l, round).expect("a flip in every instance's log"))
            .collect();
        let first_held = times.iter().map(|t| t.0).fold(f64::MAX, f64::min);
        let last_released = times.iter().map(|t| t.1).fold(f64::MIN, f64::max);
        pauses.push(last_released - first_held);
        to_last.push(last_released - at);
    }
    let ms = |(a, b): (f64, f64)| format!("p50 {:.1} ms, max {:.1} ms", a * 1e3, b * 1e3);
    println!("coordination bench: {ROUNDS} fenced flips across 3 instances, {stored} records stored once");
    println!(
        "  write pause (first instance held to last released): {}",
        ms(p50_max(pauses))
    );
    println!(
        "  change to last instance's flip:                     {}",
        ms(p50_max(to_last))
    );
    println!(
        "  admin API answered after:                           {}",
        ms(p50_max(answered))
    );
    for p in &proxies {
        p.stop();
    }
}
