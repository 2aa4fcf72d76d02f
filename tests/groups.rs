//! Consumer groups change clusters (the group handoff): Kafka 2.4.1 source, Kafka 3.9
//! target, Java (eager and cooperative), franz-go and librdkafka groups, all through
//! the proxy and never restarted.

#[macro_use]
mod harness;

use harness::groups;
use harness::migration::TwoClusters;

fn env() -> &'static TwoClusters {
    static ENV: std::sync::OnceLock<TwoClusters> = std::sync::OnceLock::new();
    ENV.get_or_init(|| TwoClusters::start("groups", ""))
}

#[test]
fn producer_first_switch_and_rollback_of_five_groups() {
    let _serial = harness::serial();
    groups::producer_first_and_rollback(env(), "handoff", groups::Reset::Earliest);
}

/// The same with `auto.offset.reset = latest` on every consumer: a member that
/// resumed on the new cluster past its end would jump to the end and skip records
/// instead of re-reading from the beginning.
#[test]
fn producer_first_switch_and_rollback_with_latest_reset() {
    let _serial = harness::serial();
    groups::producer_first_and_rollback(env(), "handoff-latest", groups::Reset::Latest);
}

#[test]
fn mirrored_group_switches_with_mm2_offsets() {
    let _serial = harness::serial();
    groups::mirrored_group_switch(env());
}

#[test]
fn identity_timestamp_rollback_and_refusal() {
    let _serial = harness::serial();
    groups::strategies_and_refusals(env());
}

#[test]
fn offline_groups_follow_a_regex_row() {
    let _serial = harness::serial();
    groups::offline_groups_follow_a_regex_row(env());
}

#[test]
fn proxy_killed_at_every_phase_of_a_switch() {
    let _serial = harness::serial();
    groups::killed_at_every_phase(env());
}
