//! What the proxy does with each API: answer it, forward it untouched, or forward it
//! with a rewrite of the request and/or the response. One file per API family; every
//! rewrite is a pure function over a decoded message so it is unit-tested without
//! sockets.
//!
//! The supported set is an allowlist ([`SUPPORTED`]): an API not listed is not
//! advertised in ApiVersions, and a client that sends it anyway is disconnected,
//! because forwarding it blind could leak upstream broker ids or addresses.

pub mod api_versions;
pub mod configs;
mod context;
pub mod fetch;
pub mod group_admin;
pub mod group_link;
pub mod groups;
pub mod metadata;
pub mod offsets;
pub mod plan;
pub mod produce;
pub mod sasl;
pub mod topic_admin;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

pub use context::{Ctx, Role, RouteError, Session, Shared};

use crate::codec::{DecodeError, RequestFrame};

/// Maps upstream broker ids to the virtual brokers clients see, and back.
#[derive(Debug, Clone)]
pub struct VirtualMap {
    pub node_id_offset: i32,
    pub advertised_host: String,
    pub broker_port_base: u16,
    pub cluster_id: String,
    /// SNI mode: every broker is advertised as this pattern with `{node}` replaced
    /// by its virtual id, on the one listener port.
    pub sni_pattern: Option<String>,
    pub listener_port: u16,
}

impl VirtualMap {
    /// Virtual id of an upstream broker id. Negative ids (none, unknown) stay as they are.
    /// An id too large to shift (only a broken or hostile broker sends one) saturates
    /// instead of overflowing: it names no virtual broker either way.
    pub fn to_virtual(&self, upstream_id: i32) -> i32 {
        if upstream_id < 0 {
            upstream_id
        } else {
            upstream_id.saturating_add(self.node_id_offset)
        }
    }

    /// Upstream id of a virtual id, if the id belongs to this cluster's range.
    pub fn to_upstream(&self, virtual_id: i32) -> Option<i32> {
        (virtual_id >= self.node_id_offset).then(|| virtual_id - self.node_id_offset)
    }

    /// The port a virtual broker is advertised at.
    pub fn port(&self, virtual_id: i32) -> i32 {
        match self.sni_pattern {
            Some(_) => self.listener_port as i32,
            // Saturates for the same ids as `to_virtual`; such a port is unusable.
            None => (self.broker_port_base as i32).saturating_add(virtual_id),
        }
    }

    /// The host a virtual broker is advertised at.
    pub fn host(&self, virtual_id: i32) -> String {
        match &self.sni_pattern {
            Some(p) => sni_name(p, virtual_id),
            None => self.advertised_host.clone(),
        }
    }
}

/// The SNI name of virtual broker `node` under `pattern` (`b{node}.kafka.example.com`).
pub fn sni_name(pattern: &str, node: i32) -> String {
    pattern.replace("{node}", &node.to_string())
}

/// The virtual broker an SNI name asks for under `pattern`, if it names one.
/// DNS names compare without case.
pub fn sni_node(pattern: &str, name: &str) -> Option<i32> {
    let (prefix, suffix) = pattern.split_once("{node}")?;
    let name = name.to_ascii_lowercase();
    let middle = name
        .strip_prefix(&prefix.to_ascii_lowercase())?
        .strip_suffix(&suffix.to_ascii_lowercase())?;
    if middle.is_empty() || !middle.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    middle.parse().ok()
}

/// The APIs Switchyard handles, with the highest version it handles correctly.
/// What happens to each (answered, forwarded, rewritten) is decided in [`dispatch`].
/// Caps hold clients at versions without topic ids (Fetch ≤ 12, Metadata ≤ 9) and
/// without KIP-951 node endpoints (Produce ≤ 9), which would otherwise carry
/// cluster-specific ids and real broker addresses to the client (PROTOCOL.md §5).
pub const SUPPORTED: &[(ApiKey, i16)] = &[
    (ApiKey::Produce, 9),
    (ApiKey::Fetch, 12),
    (ApiKey::ListOffsets, 7),
    (ApiKey::Metadata, 9),
    (ApiKey::OffsetCommit, 8),
    (ApiKey::OffsetFetch, 8),
    (ApiKey::FindCoordinator, 4),
    (ApiKey::JoinGroup, 9),
    (ApiKey::Heartbeat, 4),
    (ApiKey::LeaveGroup, 5),
    (ApiKey::SyncGroup, 5),
    (ApiKey::DescribeGroups, 5),
    (ApiKey::ListGroups, 4),
    (ApiKey::ApiVersions, 3),
    (ApiKey::CreateTopics, 7),
    (ApiKey::DeleteTopics, 6),
    (ApiKey::DeleteRecords, 2),
    (ApiKey::InitProducerId, 4),
    (ApiKey::OffsetForLeaderEpoch, 4),
    (ApiKey::AddPartitionsToTxn, 3),
    (ApiKey::AddOffsetsToTxn, 3),
    (ApiKey::EndTxn, 3),
    (ApiKey::TxnOffsetCommit, 3),
    (ApiKey::DescribeAcls, 3),
    (ApiKey::CreateAcls, 3),
    (ApiKey::DeleteAcls, 3),
    (ApiKey::DescribeConfigs, 4),
    (ApiKey::AlterConfigs, 2),
    (ApiKey::DescribeLogDirs, 4),
    (ApiKey::CreatePartitions, 3),
    (ApiKey::DeleteGroups, 2),
    (ApiKey::ElectLeaders, 2),
    (ApiKey::IncrementalAlterConfigs, 1),
    (ApiKey::OffsetDelete, 0),
    (ApiKey::DescribeCluster, 1),
    (ApiKey::DescribeProducers, 0),
    (ApiKey::DescribeTransactions, 0),
    (ApiKey::ListTransactions, 1),
];

/// How the response to a forwarded request must be treated on its way back.
#[derive(Debug)]
pub enum ResponseRewrite {
    None,
    Metadata,
    FindCoordinator,
    DescribeCluster,
    /// Epoch hints dropped, broker ids mapped; with a plan (several clusters),
    /// refused partitions merged back and names made logical.
    Fetch(Option<Box<plan::Plan>>),
    /// Epochs cleared; with a plan, as for Fetch.
    ListOffsets(Option<Box<plan::Plan>>),
    OffsetFetch,
    /// Broker resource names in DescribeConfigs / AlterConfigs /
    /// IncrementalAlterConfigs responses.
    Configs,
    /// Produce across clusters: refused partitions merged back, names made logical,
    /// mapped producer batches accounted for.
    Produce(Box<plan::Plan>),
    /// The issued producer id becomes virtual (it names the issuing cluster) and is
    /// recorded as issued, which is what lets it write to other clusters.
    InitProducerId {
        cluster: usize,
        name: String,
        producers: std::sync::Arc<crate::switch::producers::Producers>,
        /// What the client asked for; kept with the producer (see
        /// `Producers::transaction_timeout`).
        transaction_timeout_ms: i32,
    },
    /// OffsetCommit / OffsetFetch whose topics have other names on this cluster:
    /// physical → logical names.
    OffsetsRenamed(
        std::collections::HashMap<
            kafka_protocol::messages::TopicName,
            kafka_protocol::messages::TopicName,
        >,
    ),
    /// The client asked OffsetForLeaderEpoch; the proxy sent ListOffsets(latest)
    /// instead and answers from it (PROTOCOL.md §1).
    EpochFromListOffsets(offsets::EpochQuery),
    /// A group request whose acceptance links the client's identity to the group
    /// (DESIGN.md decision 8): checked on the upstream's answer, then the inner
    /// rewrite applies.
    GroupLink(Box<group_link::GroupLink>),
    /// SyncGroup on a group's new cluster after its switch flipped.
    Settle(Box<group_link::SyncSettle>),
    /// ListGroups across clusters: only the groups routed to `cluster`.
    ListGroups {
        routes: std::sync::Arc<crate::routes::RouteTable>,
        cluster: String,
    },
    /// DescribeGroups, OffsetFetch v8 across clusters: the proxy's NOT_COORDINATOR
    /// entries merged back, names made logical.
    Groups(Box<group_admin::GroupsPlan>),
}

/// What to do with one request.
#[derive(Debug)]
pub enum Action {
    /// Answer the client with this response frame (no length prefix).
    Respond(Bytes),
    /// Send `frame` upstream. `response` is None when the upstream sends no answer
    /// (Produce with acks=0).
    Forward {
        frame: Bytes,
        response: Option<Forwarded>,
    },
    /// Nothing to send and nothing to answer (Produce acks=0 refused whole).
    Discard,
}

/// Bookkeeping for a forwarded request's response.
#[derive(Debug)]
pub struct Forwarded {
    /// API and version of the response the upstream will send (may differ from the
    /// client's request when the proxy substituted a request).
    pub upstream_api: ApiKey,
    pub upstream_version: i16,
    pub rewrite: ResponseRewrite,
}

/// Decides what to do with one request: the one entry from an API to its handler,
/// with one cluster or many (one cluster is a routing table in which nothing is
/// elsewhere). Version and login checks were done by the caller.
pub async fn dispatch(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    match frame.api {
        ApiKey::Metadata => metadata::handle(ctx, frame).await,
        ApiKey::Produce => produce::produce(ctx, frame).await,
        ApiKey::InitProducerId => produce::init_producer_id(ctx, frame),
        ApiKey::Fetch => fetch::handle(ctx, frame).await,
        ApiKey::ListOffsets => offsets::list_offsets(ctx, frame),
        ApiKey::OffsetForLeaderEpoch => offsets::offset_for_leader_epoch(ctx, frame),
        ApiKey::FindCoordinator => groups::find_coordinator(ctx, frame).await,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch => groups::group_api(ctx, frame).await,
        ApiKey::TxnOffsetCommit => {
            let bytes = offsets::rewrite_txn_offset_commit_request(frame)?;
            Ok(context::forward(frame, bytes, ResponseRewrite::None))
        }
        ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::CreatePartitions
        | ApiKey::DescribeConfigs
        | ApiKey::AlterConfigs
        | ApiKey::IncrementalAlterConfigs => topic_admin::handle(ctx, frame).await,
        ApiKey::ListGroups | ApiKey::DescribeGroups | ApiKey::DescribeCluster => {
            group_admin::handle(ctx, frame).await
        }
        // Everything else on the allowlist names nothing the proxy must map.
        _ => Ok(context::forward(
            frame,
            frame.bytes.clone(),
            ResponseRewrite::None,
        )),
    }
}

/// Turns an upstream response into the response the client gets. `client_version`
/// is the version the client asked with; `frame` is the upstream response without
/// its length prefix.
pub fn rewrite_response(
    fwd: &Forwarded,
    client_api: ApiKey,
    client_version: i16,
    frame: Bytes,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    rewrite_with(
        &fwd.rewrite,
        (fwd.upstream_api, fwd.upstream_version),
        client_api,
        client_version,
        frame,
        map,
    )
}

fn rewrite_with(
    rewrite: &ResponseRewrite,
    (api, version): (ApiKey, i16),
    client_api: ApiKey,
    client_version: i16,
    frame: Bytes,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    match rewrite {
        ResponseRewrite::None => Ok(frame),
        ResponseRewrite::Metadata => metadata::rewrite_metadata_frame(frame, version, map),
        ResponseRewrite::FindCoordinator => {
            groups::rewrite_find_coordinator_frame(frame, version, map)
        }
        ResponseRewrite::DescribeCluster => {
            metadata::rewrite_describe_cluster_frame(frame, version, map)
        }
        ResponseRewrite::Fetch(plan) => {
            fetch::rewrite_response_frame(frame, version, plan.as_deref(), map)
        }
        ResponseRewrite::ListOffsets(plan) => {
            offsets::rewrite_list_offsets_frame(frame, version, plan.as_deref())
        }
        ResponseRewrite::OffsetFetch => offsets::rewrite_offset_fetch_frame(frame, version),
        ResponseRewrite::Configs => configs::rewrite_response_frame(frame, api, version, map),
        ResponseRewrite::Produce(plan) => produce::rewrite_produce_response(frame, version, plan),
        ResponseRewrite::InitProducerId {
            cluster,
            name,
            producers,
            transaction_timeout_ms,
        } => produce::rewrite_init_producer_id(
            frame,
            version,
            (*cluster, name),
            producers,
            *transaction_timeout_ms,
        ),
        ResponseRewrite::OffsetsRenamed(reverse) => {
            groups::rewrite_offsets_renamed(frame, api, version, reverse)
        }
        ResponseRewrite::ListGroups { routes, cluster } => {
            group_admin::rewrite_list_groups(frame, version, routes, cluster)
        }
        ResponseRewrite::Groups(plan) => group_admin::rewrite_groups(frame, api, version, plan),
        ResponseRewrite::EpochFromListOffsets(query) => {
            debug_assert_eq!(client_api, ApiKey::OffsetForLeaderEpoch);
            offsets::epoch_response_from_list_offsets(frame, version, client_version, query)
        }
        ResponseRewrite::Settle(settle) => group_link::rewrite_sync_settle(frame, version, settle),
        ResponseRewrite::GroupLink(link) => {
            group_link::confirm_group_link(&frame, api, version, link);
            rewrite_with(
                &link.then,
                (api, version),
                client_api,
                client_version,
                frame,
                map,
            )
        }
    }
}

/// Name of an API for metrics and logs ("Produce", "Fetch", ...), without allocating
/// per request.
pub fn api_name(api: ApiKey) -> &'static str {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static NAMES: OnceLock<HashMap<i16, &'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ApiKey::iter()
            .map(|k| (k as i16, &*Box::leak(format!("{k:?}").into_boxed_str())))
            .collect()
    })[&(api as i16)]
}

#[cfg(test)]
pub(crate) fn test_map() -> VirtualMap {
    VirtualMap {
        node_id_offset: 1000,
        advertised_host: "proxy.local".into(),
        broker_port_base: 9100,
        cluster_id: "switchyard".into(),
        sni_pattern: None,
        listener_port: 9092,
    }
}

#[cfg(test)]
mod sni_tests {
    use super::*;

    #[test]
    fn sni_names_round_trip() {
        let p = "b{node}.kafka.example.com";
        assert_eq!(sni_name(p, 1002), "b1002.kafka.example.com");
        assert_eq!(sni_node(p, "b1002.kafka.example.com"), Some(1002));
        assert_eq!(sni_node(p, "B7.Kafka.Example.COM"), Some(7));
        assert_eq!(sni_node(p, "bootstrap.kafka.example.com"), None);
        assert_eq!(sni_node(p, "b.kafka.example.com"), None);
        assert_eq!(sni_node(p, "b-1.kafka.example.com"), None);
        let mut m = test_map();
        m.sni_pattern = Some(p.into());
        assert_eq!(
            (m.host(1001), m.port(1001)),
            ("b1001.kafka.example.com".into(), 9092)
        );
        m.sni_pattern = None;
        assert_eq!((m.host(1001), m.port(1001)), ("proxy.local".into(), 10101));
    }
}
