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
//! Modules depend on each other in one direction only (no import circles), in
//! roughly this order from the bottom:
//!
//! - [`config`]: TOML + environment → validated [`config::Config`], every error at once.
//! - [`tls`], [`sasl`], [`token`]: rustls configurations, PLAIN/SCRAM on both
//!   sides, the admin API's bearer token.
//! - [`codec`]: framing and header decoding; no I/O.
//! - [`routes`]: the immutable, versioned routing table (group pins included).
//! - [`state`]: the persisted state store (switch marks, group switch phases).
//! - [`upstream`]: connections to brokers, and each cluster's brokers and API versions.
//! - [`switch`]: the cutover machinery's state: produce flips and their marks,
//!   virtual producer ids, group attribution and group switch phases as the
//!   request path sees them, offset translation.
//! - [`handlers`]: the request path. [`handlers::dispatch`] is the one entry from
//!   an API to its handler, with one cluster or many; each API family owns its
//!   request and response side (`produce`, `fetch`, `offsets`, `metadata`,
//!   `groups`, `group_admin`, `topic_admin`, `configs`, `api_versions`, `sasl`).
//!   Handlers get a per-request [`handlers::Ctx`]: the routing table loaded once,
//!   the connection's cluster and session, and the shared state through the
//!   [`handlers::Shared`] trait, never the proxy itself (docs/architecture.md).
//! - [`proxy`]: the shared run-time state behind `ArcSwap`; implements `Shared`.
//! - [`control`]: every change to routing: reload, topic and group switches and
//!   rollbacks, the group handoff task; one change at a time.
//! - [`connection`]: one reader/pump task pair per client socket; ordering,
//!   backpressure, bounded buffers.
//! - [`listener`]: accept loops for the bootstrap port and one port per virtual broker.
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
