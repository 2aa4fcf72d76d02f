//! Every metric name Switchyard exports, in one place (SPEC.md "Metric names").
//!
//! Call sites use the helpers below rather than spelling names, so a rename is one
//! edit and a typo is a compile error.

use metrics::{counter, gauge, histogram};

pub const CONNECTIONS: &str = "switchyard_connections";
pub const CONNECTIONS_TOTAL: &str = "switchyard_connections_total";
pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const BYTES_TOTAL: &str = "switchyard_bytes_total";
pub const ROUTE_VERSION: &str = "switchyard_route_version";
pub const RELOADS_TOTAL: &str = "switchyard_reloads_total";
pub const SWITCHES_TOTAL: &str = "switchyard_switches_total";
pub const SWITCH_PHASE: &str = "switchyard_switch_phase";
pub const GROUP_LAG: &str = "switchyard_group_lag";
pub const POSITION_MISMATCH_TOTAL: &str = "switchyard_switch_position_mismatch_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "switchyard_upstream_errors_total";
/// Versions of the shared routing table this instance has not applied yet.
pub const COORDINATION_VERSION_LAG: &str = "switchyard_coordination_version_lag";
/// Instances heard from within the session timeout, this one included.
pub const COORDINATION_INSTANCES: &str = "switchyard_coordination_instances";
/// How long a produce flip held writes across instances, from its apply on the
/// proposing instance to its release.
pub const COORDINATION_FENCE_SECONDS: &str = "switchyard_coordination_fence_seconds";
/// Frames rejected before reaching any handler (malformed, oversize, unsupported).
pub const REJECTED_FRAMES_TOTAL: &str = "switchyard_rejected_frames_total";
/// Requests (or parts of them) answered with a retriable error because the route
/// points to another cluster.
pub const STEERED_TOTAL: &str = "switchyard_steered_total";
/// Fetches from identities not linked to exactly one group.
pub const UNATTRIBUTED_FETCHES_TOTAL: &str = "switchyard_unattributed_fetches_total";

/// Buckets for request latency: 100 µs to ~30 s. Kafka fetches long-poll for up to
/// `fetch.max.wait.ms` (500 ms by default), so the top buckets matter.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub fn connection_opened(listener: &str) {
    gauge!(CONNECTIONS, "listener" => listener.to_string()).increment(1.0);
    counter!(CONNECTIONS_TOTAL, "listener" => listener.to_string()).increment(1);
}

pub fn connection_closed(listener: &str) {
    gauge!(CONNECTIONS, "listener" => listener.to_string()).decrement(1.0);
}

pub fn upstream_error(cluster: &str, kind: &'static str) {
    counter!(UPSTREAM_ERRORS_TOTAL, "cluster" => cluster.to_string(), "kind" => kind).increment(1);
}

pub fn rejected_frame(reason: &'static str) {
    counter!(REJECTED_FRAMES_TOTAL, "reason" => reason).increment(1);
}

pub fn route_version(version: u64) {
    gauge!(ROUTE_VERSION).set(version as f64);
}

pub fn reload(outcome: &'static str) {
    counter!(RELOADS_TOTAL, "outcome" => outcome).increment(1);
}

pub fn switch(kind: &'static str, outcome: &'static str) {
    counter!(SWITCHES_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
}

/// The phase a switch is in: 0 waiting, 1 quiescing, 2 leaving, 3 translated,
/// 4 committed, 5 flipped, 6 done, -1 failed, -2 cancelled.
pub fn switch_phase(kind: &'static str, name: &str, phase: crate::state::Phase) {
    use crate::state::Phase;
    let v = match phase {
        Phase::Waiting => 0.0,
        Phase::Quiescing => 1.0,
        Phase::Leaving => 2.0,
        Phase::Translated => 3.0,
        Phase::Committed => 4.0,
        Phase::Flipped => 5.0,
        Phase::Done => 6.0,
        Phase::Failed => -1.0,
        Phase::Cancelled => -2.0,
    };
    gauge!(SWITCH_PHASE, "kind" => kind, "name" => name.to_string()).set(v);
}

/// Records a switching group has left to read on `cluster`.
pub fn group_lag(group: &str, cluster: &str, lag: i64) {
    gauge!(GROUP_LAG, "group" => group.to_string(), "cluster" => cluster.to_string())
        .set(lag as f64);
}

/// A switched group's first fetch of a partition on the new cluster was not at the
/// translated offset (must stay 0).
pub fn position_mismatch(group: &str) {
    counter!(POSITION_MISMATCH_TOTAL, "group" => group.to_string()).increment(1);
}

/// A request the proxy refused for some partitions or a group because the route
/// points elsewhere (the client is steered with a retriable error).
pub fn steered(api: &'static str, cluster: &str) {
    counter!(STEERED_TOTAL, "api" => api, "cluster" => cluster.to_string()).increment(1);
}

/// A fetch from an identity not linked to exactly one group (it follows the topic's
/// `consume` route).
pub fn unattributed_fetch() {
    counter!(UNATTRIBUTED_FETCHES_TOTAL).increment(1);
}

/// Metric handles for one side of one client connection, resolved once per API so the
/// per-request path does no label formatting and no registry lookup.
pub struct ConnectionMetrics {
    cluster: String,
    bytes: metrics::Counter,
    requests: std::collections::HashMap<
        (&'static str, &'static str),
        (metrics::Counter, metrics::Histogram),
    >,
}

impl ConnectionMetrics {
    /// `direction` is "in" (client to proxy) or "out" (proxy to client).
    pub fn new(cluster: &str, direction: &'static str) -> ConnectionMetrics {
        ConnectionMetrics {
            cluster: cluster.to_string(),
            bytes: counter!(BYTES_TOTAL, "direction" => direction, "cluster" => cluster.to_string()),
            requests: std::collections::HashMap::new(),
        }
    }

    pub fn bytes(&self, n: usize) {
        self.bytes.increment(n as u64);
    }

    pub fn request(&mut self, api: &'static str, outcome: &'static str, seconds: f64) {
        let cluster = &self.cluster;
        let (count, duration) = self.requests.entry((api, outcome)).or_insert_with(|| {
            (
                counter!(REQUESTS_TOTAL, "api" => api, "cluster" => cluster.clone(), "outcome" => outcome),
                histogram!(REQUEST_DURATION, "api" => api, "cluster" => cluster.clone()),
            )
        });
        count.increment(1);
        duration.record(seconds);
    }
}

/// Where this instance stands in the shared routing table (`[coordination]`).
pub fn coordination(version_lag: u64, live_instances: usize) {
    gauge!(COORDINATION_VERSION_LAG).set(version_lag as f64);
    gauge!(COORDINATION_INSTANCES).set(live_instances as f64);
}

/// One fenced produce flip's write pause.
pub fn fence_wait(d: std::time::Duration) {
    histogram!(COORDINATION_FENCE_SECONDS).record(d.as_secs_f64());
}
