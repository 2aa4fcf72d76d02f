//! Switchyard: a Kafka protocol proxy for moving client applications from one Kafka
//! cluster to another without redeploying them.
//!
//! Clients point `bootstrap.servers` at the proxy once. The proxy answers ApiVersions
//! itself, merges Metadata from every cluster so clients only ever see virtual
//! brokers, and forwards every other request to the one upstream broker a virtual
//! broker stands for, decoding only what must change. Which cluster serves a topic's
//! writes and a group's reads is a routing table swapped atomically on reload;
//! requests that reach the wrong cluster are steered with retriable errors.
//!
//! # Layout
//!
//! - [`config`]: TOML + environment → validated [`config::Config`], every error at once.
//! - [`routes`]: the immutable, versioned routing table.
//! - [`proxy`]: shared run-time state (config, routes, clusters, API table) behind `ArcSwap`.
//! - [`listener`]: accept loops for the bootstrap port and one port per virtual broker.
//! - [`connection`]: one reader/pump task pair per client socket; ordering, backpressure.
//! - [`codec`]: framing and header decoding; no I/O.
//! - [`handlers`]: one file per API family; what to answer, forward or rewrite.
//!   With several clusters, `handlers::routing` decides per request what belongs on
//!   the connection's cluster, `handlers::metadata::merge` builds the one view of
//!   topics every client gets, and `handlers::topic_admin` splits topic admin
//!   requests by the cluster each topic is written on (docs/merged-view.md).
//! - [`upstream`]: connections to brokers, and each cluster's brokers and API versions.
//! - [`switch`]: the cutover machinery: produce flips and their marks, virtual
//!   producer ids, group attribution.
//! - [`state`]: the persisted state store (switch marks), fsynced JSON lines.
//! - [`sasl`]: PLAIN and SCRAM, server side (clients) and client side (clusters).
//! - [`tls`]: rustls configurations for the listener and for each cluster.
//! - [`admin`]: the HTTP admin API (`/metrics`, `/status`, `/reload`, `/switch`, `/rollback`).
//! - [`metrics`]: every metric name, in one place.
//! - [`server`]: wires the above together and runs until shutdown.

pub mod admin;
pub mod codec;
pub mod config;
pub mod connection;
pub mod control;
pub mod handlers;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod sasl;
pub mod server;
pub mod state;
pub mod switch;
pub mod tls;
pub mod token;
pub mod upstream;
