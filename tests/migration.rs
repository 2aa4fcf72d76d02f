//! Two clusters behind one proxy (issue: per-topic produce routes, per-group consume
//! routes, atomic swap on reload): Kafka 2.4.1 source, Kafka 3.9 target, Java,
//! franz-go, librdkafka and kafka-go clients, all through the proxy.

#[macro_use]
mod harness;

use harness::migration::{self, TwoClusters};

fn env() -> &'static TwoClusters {
    static ENV: std::sync::OnceLock<TwoClusters> = std::sync::OnceLock::new();
    ENV.get_or_init(|| TwoClusters::start("migration", migration::TARGET_GROUP_ROW))
}

#[test]
fn producer_flip_and_rollback_with_three_clients() {
    let _serial = harness::serial();
    migration::producer_flip_and_rollback(env());
}

#[test]
fn admin_writes_follow_routes_on_kafka_2_4_and_3() {
    let _serial = harness::serial();
    migration::admin_writes_follow_routes(env());
}

#[test]
fn pattern_subscription_reads_its_group_cluster_across_a_flip() {
    let _serial = harness::serial();
    harness::clients::pattern_consumer_across_flip(env());
}

#[test]
fn kafka_go_producer_first_migration() {
    let _serial = harness::serial();
    harness::clients::kafka_go_producer_flip(env());
}

#[test]
fn kafka_go_reader_that_also_writes_starts_after_a_flip() {
    let _serial = harness::serial();
    harness::clients::kafka_go_reader_that_writes_after_a_flip(env());
}

#[test]
fn admin_client_reads_topics_on_both_clusters() {
    let _serial = harness::serial();
    harness::clients::admin_reads_across_clusters(env());
}
