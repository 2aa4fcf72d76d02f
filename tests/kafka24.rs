//! Foundation scenarios against a 3-broker Apache Kafka 2.4.1 (ZooKeeper) cluster, all through the proxy.
//! One cluster and one proxy are shared by the tests of this binary; scenarios run
//! one at a time (see `harness::serial`).

mod harness;

use std::sync::OnceLock;

use harness::scenarios::{self, Env};
use harness::KafkaVersion;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::start(KafkaVersion::V2_4, "kafka24"))
}

#[test]
fn java_client_round_trip() {
    let _g = harness::serial();
    scenarios::java_round_trip(env());
}

#[test]
fn librdkafka_round_trip() {
    let _g = harness::serial();
    scenarios::rdkafka_round_trip(env());
}

#[test]
fn franz_go_round_trip() {
    let _g = harness::serial();
    scenarios::franz_round_trip(env());
}

#[test]
fn admin_operations() {
    let _g = harness::serial();
    scenarios::admin_operations(env());
}

#[test]
fn broker_killed_under_load() {
    let _g = harness::serial();
    scenarios::broker_killed_under_load(env());
}

#[test]
fn bad_input_closes_only_its_connection() {
    let _g = harness::serial();
    scenarios::bad_input(env());
}
