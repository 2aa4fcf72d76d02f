//! The config file as written: every section of SPEC.md, every field optional where
//! the spec gives a default. Unknown keys are captured (not rejected by serde on the
//! first one) so that validation can report every problem in one pass.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

pub type Unknown = BTreeMap<String, IgnoredAny>;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub listener: RawListener,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub routes: RawRoutes,
    pub coordination: Option<RawCoordination>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `[coordination]`: several Switchyard processes share one routing table
/// through a Kafka topic.
#[derive(Debug, Default, Deserialize)]
pub struct RawCoordination {
    pub cluster: Option<String>,
    pub topic: Option<String>,
    pub instance: Option<String>,
    pub session_timeout_ms: Option<u64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProxy {
    pub cluster_id: Option<String>,
    pub state_dir: Option<String>,
    /// Largest request or response frame accepted, like the broker's
    /// `socket.request.max.bytes` (default 100 MiB).
    pub max_frame_bytes: Option<u64>,
    /// Requests a client may have in flight on one connection before the proxy stops
    /// reading from it (backpressure, not an error).
    pub max_in_flight: Option<u32>,
    pub max_connections: Option<u32>,
    /// Connections one source address may hold at once.
    pub max_connections_per_ip: Option<u32>,
    /// Largest frame a client may send before it has logged in (SASL listeners),
    /// like the broker's `sasl.server.max.receive.size`.
    pub max_unauthenticated_frame_bytes: Option<u64>,
    /// How long a client on a SASL listener has to log in.
    pub login_timeout_ms: Option<u64>,
    /// A client connection with nothing in flight and no complete request for this
    /// long is closed, like the broker's `connections.max.idle.ms`.
    pub idle_timeout_ms: Option<u64>,
    /// How long an upstream broker may take to answer, on top of the wait the
    /// request itself asks for (fetch max wait, produce timeout, rebalance timeout).
    pub request_timeout_ms: Option<u64>,
    /// Bytes all connections together may hold in buffers for frames being received,
    /// beyond a small allowance per connection.
    pub buffer_budget_bytes: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub metadata_refresh_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListener {
    pub bind: Option<String>,
    pub advertised_host: Option<String>,
    pub mode: Option<String>,
    pub broker_port_base: Option<u32>,
    pub sni_pattern: Option<String>,
    pub tls: Option<RawListenerTls>,
    pub sasl: Option<RawListenerSasl>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListenerSasl {
    pub mechanisms: Option<Vec<String>>,
    pub users_file: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListenerTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub bind: Option<String>,
    /// Name of the environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the bearer token (first line), re-read on every reload.
    pub token_file: Option<String>,
    pub token_for_reads: Option<bool>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCluster {
    pub bootstrap: Option<Vec<String>>,
    pub node_id_offset: Option<i64>,
    pub tls: Option<RawClusterTls>,
    pub sasl: Option<RawClusterSasl>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawClusterTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawClusterSasl {
    pub mechanism: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoutes {
    pub default_cluster: Option<String>,
    #[serde(default)]
    pub topics: BTreeMap<String, RawTopicRoute>,
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroupRoute>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTopicRoute {
    pub produce: Option<String>,
    pub consume: Option<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawGroupRoute {
    pub cluster: Option<String>,
    pub offsets: Option<String>,
    pub when: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}
