//! Metadata and DescribeCluster: the responses that tell clients where brokers are.
//! Every broker id becomes a virtual id, every address the proxy's advertised
//! address for that virtual broker, the cluster id the configured one, and every
//! leader epoch -1 (PROTOCOL.md §1: an epoch learned from one cluster must never be
//! compared with another cluster's).

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterResponse, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::MetadataRequest;

use super::context::*;
use super::{Action, ResponseRewrite, VirtualMap};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::upstream::ClusterView;

fn map_ids(ids: &mut [BrokerId], map: &VirtualMap) {
    for id in ids {
        id.0 = map.to_virtual(id.0);
    }
}

/// Rewrites a Metadata response in place.
pub fn rewrite_metadata(resp: &mut MetadataResponse, map: &VirtualMap) {
    for b in &mut resp.brokers {
        b.node_id.0 = map.to_virtual(b.node_id.0);
        b.host = StrBytes::from_string(map.host(b.node_id.0));
        b.port = map.port(b.node_id.0);
    }
    resp.controller_id.0 = map.to_virtual(resp.controller_id.0);
    resp.cluster_id = Some(StrBytes::from_string(map.cluster_id.clone()));
    for t in &mut resp.topics {
        for p in &mut t.partitions {
            p.leader_id.0 = map.to_virtual(p.leader_id.0);
            p.leader_epoch = -1;
            map_ids(&mut p.replica_nodes, map);
            map_ids(&mut p.isr_nodes, map);
            map_ids(&mut p.offline_replicas, map);
        }
    }
}

pub fn rewrite_metadata_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<MetadataResponse>(ApiKey::Metadata, version, frame)?;
    rewrite_metadata(&mut resp, map);
    codec::encode_response(ApiKey::Metadata, version, header.correlation_id, &resp)
}

/// Rewrites a DescribeCluster response in place.
pub fn rewrite_describe_cluster(resp: &mut DescribeClusterResponse, map: &VirtualMap) {
    for b in &mut resp.brokers {
        b.broker_id.0 = map.to_virtual(b.broker_id.0);
        b.host = StrBytes::from_string(map.host(b.broker_id.0));
        b.port = map.port(b.broker_id.0);
    }
    resp.controller_id.0 = map.to_virtual(resp.controller_id.0);
    resp.cluster_id = StrBytes::from_string(map.cluster_id.clone());
}

pub fn rewrite_describe_cluster_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<DescribeClusterResponse>(ApiKey::DescribeCluster, version, frame)?;
    rewrite_describe_cluster(&mut resp, map);
    codec::encode_response(
        ApiKey::DescribeCluster,
        version,
        header.correlation_id,
        &resp,
    )
}

/// How one client sees topics across clusters, for [`merge`].
pub trait TopicView {
    /// The cluster whose entry for logical `topic` this client gets.
    fn cluster_of(&self, topic: &str) -> String;
    /// The name of logical `topic` on `cluster`.
    fn physical(&self, topic: &str, cluster: &str) -> String;
    /// The logical name an exact rename gives physical `topic` on `cluster`.
    fn logical(&self, topic: &str, cluster: &str) -> Option<String>;
}

/// One cluster's answer to the proxy's Metadata request, its brokers already
/// virtual ([`rewrite_metadata`]); `None` when the cluster did not answer.
pub struct ClusterAnswer {
    pub cluster: String,
    pub response: Option<MetadataResponse>,
}

/// Merges every cluster's Metadata into the one answer a client gets. `asked` is
/// the request's logical topic names (`None`: all topics).
///
/// Each logical topic appears at most once, and only as its routed cluster
/// ([`TopicView::cluster_of`]) knows it under its physical name there. What else a
/// cluster answered is not looked at: a broker may list more topics than were asked
/// for (some Kafka-compatible brokers answer every topic to an empty list), list
/// one twice, or leave an asked topic out. An asked topic comes back in the order
/// asked; one its cluster does not know is UNKNOWN_TOPIC_OR_PARTITION, one whose
/// cluster did not answer LEADER_NOT_AVAILABLE (both retriable). For all topics, a
/// name any cluster answered is a candidate (an exact rename's physical name
/// counts as its logical name), and it is listed when its routed cluster has it:
/// a topic only on a cluster this client is not routed to for it is not listed,
/// and no physical name of a renamed topic ever is.
///
/// The brokers are every cluster's; the controller is `default_cluster`'s.
pub fn merge(
    answers: Vec<ClusterAnswer>,
    asked: Option<&[TopicName]>,
    default_cluster: &str,
    view: &dyn TopicView,
) -> MetadataResponse {
    let mut merged = MetadataResponse::default();
    let mut have_controller = false;
    let mut seen_brokers = HashSet::new();
    // cluster → physical name → its first entry
    let mut by_cluster: HashMap<String, Option<HashMap<TopicName, MetadataResponseTopic>>> =
        HashMap::new();
    for answer in answers {
        let Some(resp) = answer.response else {
            by_cluster.insert(answer.cluster, None);
            continue;
        };
        for b in resp.brokers {
            // A broker listed twice by its cluster is still one broker.
            if seen_brokers.insert(b.node_id.0) {
                merged.brokers.push(b);
            }
        }
        merged.throttle_time_ms = merged.throttle_time_ms.max(resp.throttle_time_ms);
        if answer.cluster == default_cluster {
            merged.controller_id = resp.controller_id;
            merged.cluster_authorized_operations = resp.cluster_authorized_operations;
            have_controller = true;
        } else if !have_controller {
            merged.controller_id = resp.controller_id;
        }
        let mut topics = HashMap::new();
        for t in resp.topics {
            if let Some(name) = t.name.clone() {
                topics.entry(name).or_insert(t);
            }
        }
        by_cluster.insert(answer.cluster, Some(topics));
    }

    let candidates: Vec<TopicName> = match asked {
        Some(list) => {
            let mut once = HashSet::new();
            list.iter()
                .filter(|t| once.insert((*t).clone()))
                .cloned()
                .collect()
        }
        None => {
            let mut all = BTreeSet::new();
            for (cluster, topics) in &by_cluster {
                for physical in topics.iter().flat_map(|t| t.keys()) {
                    let logical = view
                        .logical(physical, cluster)
                        .map(|l| TopicName(StrBytes::from_string(l)))
                        .unwrap_or_else(|| physical.clone());
                    all.insert(logical);
                }
            }
            all.into_iter().collect()
        }
    };
    for logical in candidates {
        let cluster = view.cluster_of(&logical);
        let physical = TopicName(StrBytes::from_string(view.physical(&logical, &cluster)));
        let missing = match by_cluster.get(&cluster) {
            Some(Some(topics)) => match topics.get(&physical) {
                Some(t) => {
                    let mut t = t.clone();
                    t.name = Some(logical);
                    merged.topics.push(t);
                    continue;
                }
                None => ResponseError::UnknownTopicOrPartition,
            },
            Some(None) => ResponseError::LeaderNotAvailable,
            None => ResponseError::UnknownTopicOrPartition,
        };
        if asked.is_some() {
            merged.topics.push(
                MetadataResponseTopic::default()
                    .with_name(Some(logical))
                    .with_error_code(missing.code()),
            );
        }
    }
    merged
}

/// Metadata: with one cluster, forwarded and rewritten to virtual brokers; with
/// several, the proxy asks every cluster itself and [`merge`]s the answers into the
/// one view this client gets (docs/merged-view.md).
pub(crate) async fn handle(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    if !ctx.shared.multi_cluster() {
        return Ok(forward(
            frame,
            frame.bytes.clone(),
            ResponseRewrite::Metadata,
        ));
    }
    let req: MetadataRequest = frame.decode()?;
    let version = frame.version();
    let key = ctx.identity(frame);
    let ident = ctx.shared.identities().get(&key);
    let groups: Vec<String> = ident
        .as_ref()
        .map(|i| i.groups.iter().cloned().collect())
        .unwrap_or_default();
    let seen = ident
        .map(|i| Seen {
            reads_only: i.reads && !i.writes,
            read: i.read_topics,
            written: i.written_topics,
        })
        .unwrap_or_default();
    let role = ctx.session.role;
    let timeout = ctx.call_timeout();

    // Version 0 has no null list: an empty one asks for all topics.
    let all_topics = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    // Which topics to ask each cluster for (physical names).
    let clusters: Vec<Arc<ClusterView>> = ctx.shared.clusters();
    let mut asks: BTreeMap<String, Option<Vec<(TopicName, TopicName)>>> = clusters
        .iter()
        .map(|c| (c.name().to_string(), (!all_topics).then(Vec::new)))
        .collect();
    if let (false, Some(topics)) = (all_topics, &req.topics) {
        for t in topics {
            let Some(name) = &t.name else { continue };
            let c = ctx.view_cluster(role, &groups, &seen, name);
            let physical = topic_name(&ctx.routes.physical_topic(name, &c));
            if let Some(Some(list)) = asks.get_mut(&c) {
                list.push((physical, name.clone()));
            }
        }
    }

    let mut answers = Vec::with_capacity(clusters.len());
    for c in &clusters {
        let ask = &asks[c.name()];
        let sub = req.clone().with_topics(ask.as_ref().map(|list| {
            list.iter()
                .map(|(p, _)| MetadataRequestTopic::default().with_name(Some(p.clone())))
                .collect()
        }));
        let resp: Result<MetadataResponse, _> =
            c.call(ApiKey::Metadata, version, &sub, timeout).await;
        let response = match resp {
            Ok(mut r) => {
                rewrite_metadata(&mut r, &ctx.shared.virtual_map(c));
                Some(r)
            }
            Err(e) => {
                // An unreachable cluster contributes no brokers; the topics routed
                // to it are reported as having no leader (retriable).
                tracing::debug!(cluster = c.name(), error = %e, "metadata from cluster failed");
                None
            }
        };
        answers.push(ClusterAnswer {
            cluster: c.name().to_string(),
            response,
        });
    }
    let asked: Option<Vec<TopicName>> = (!all_topics).then(|| {
        req.topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.clone())
            .collect()
    });
    let view = ClientView {
        ctx,
        role,
        groups: &groups,
        seen: &seen,
    };
    let mut merged = merge(
        answers,
        asked.as_deref(),
        &ctx.routes.default_cluster,
        &view,
    );
    merged.cluster_id = Some(StrBytes::from_string(ctx.map.cluster_id.clone()));
    respond(frame, &merged)
}

/// One client's view of topics, for [`merge`].
struct ClientView<'c, 'a> {
    ctx: &'c Ctx<'a>,
    role: Role,
    groups: &'c [String],
    seen: &'c Seen,
}

impl TopicView for ClientView<'_, '_> {
    fn cluster_of(&self, topic: &str) -> String {
        self.ctx
            .view_cluster(self.role, self.groups, self.seen, topic)
    }

    fn physical(&self, topic: &str, cluster: &str) -> String {
        self.ctx.routes.physical_topic(topic, cluster)
    }

    fn logical(&self, topic: &str, cluster: &str) -> Option<String> {
        self.ctx
            .routes
            .renamed_on(cluster)
            .find(|(physical, _)| *physical == topic)
            .map(|(_, logical)| logical.to_string())
    }
}

#[cfg(test)]
mod tests;
