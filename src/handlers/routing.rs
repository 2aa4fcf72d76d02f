//! Routing across clusters (DESIGN.md decisions 2, 7 and 8).
//!
//! Every request reaches a virtual broker, which stands for one upstream broker of
//! one cluster. This module decides, with the routing table loaded once for the
//! request, what of it belongs on that cluster:
//!
//! - **Produce:** partitions of topics whose `produce` route is elsewhere come back
//!   as NOT_LEADER_OR_FOLLOWER, so the client refreshes metadata and goes there; the
//!   rest go upstream with physical topic names and upstream producer ids.
//! - **Fetch, ListOffsets, OffsetForLeaderEpoch:** the same, by the *read* route: the
//!   group's cluster for an identity linked to one group, else the topic's `consume`.
//! - **Group APIs:** NOT_COORDINATOR when the group lives on another cluster;
//!   FindCoordinator is answered from the group's cluster.
//! - **Metadata:** merged from every cluster: each topic from the cluster this
//!   client would be routed to, the virtual brokers of every cluster.
//! - **InitProducerId:** the issued id becomes a virtual one.
//!
//! With a single cluster configured none of this runs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse, ProducerId, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{fetch, groups, metadata, offsets, Action, Forwarded, ResponseRewrite, VirtualMap};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;
use crate::proxy::Proxy;
use crate::routes::RouteTable;
use crate::switch::groups::{Release, SyncVerdict, Verdict};
use crate::switch::identity::{Identities, IdentityKey};
use crate::switch::inflight::InflightGuard;
use crate::switch::producers::{self, BatchError, PlanError, Producers, Sent};
use crate::upstream::{ClusterView, UpstreamError};

const NOT_LEADER_OR_FOLLOWER: i16 = ResponseError::NotLeaderOrFollower.code();
const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
const UNKNOWN_PRODUCER_ID: i16 = ResponseError::UnknownProducerId.code();

/// What a connection has shown itself to be; decides which route Metadata follows
/// on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Writer,
    Reader,
}

/// Who is on the other end of one client connection.
#[derive(Debug)]
pub struct Session {
    pub peer_ip: IpAddr,
    pub principal: Option<String>,
    pub role: Role,
    key: Option<IdentityKey>,
    /// SASL progress, when the listener requires SASL.
    pub sasl: super::sasl::SaslState,
    /// Logical topics this connection's fetch session (KIP-227) may hold: those of
    /// its last full fetch and of every incremental one since. The broker keeps the
    /// session's partitions, so an incremental fetch may name none of them.
    fetch_session: std::collections::HashSet<String>,
    /// The routing table and groups `fetch_session` was last found all-here
    /// under: while neither changed (and no topic joined), an incremental fetch
    /// needs no check. The table is held, so its address cannot be reused.
    fetch_session_checked: Option<(Arc<RouteTable>, Vec<String>)>,
}

/// At most this many topics are remembered per fetch session; past it, every
/// incremental fetch ends the session (the client then sends a full fetch, which
/// the proxy can check).
const MAX_SESSION_TOPICS: usize = 10_000;

impl Session {
    pub fn new(peer_ip: IpAddr, principal: Option<String>) -> Session {
        Session {
            peer_ip,
            principal,
            role: Role::Unknown,
            key: None,
            sasl: super::sasl::SaslState::Start,
            fetch_session: std::collections::HashSet::new(),
            fetch_session_checked: None,
        }
    }

    /// The client logged in as `user`: that is its principal from now on.
    pub fn authenticated(&mut self, user: String) {
        self.principal = Some(user);
        self.key = None;
        self.sasl = super::sasl::SaslState::Authenticated;
    }

    /// The identity key for this request's client id (client ids do not change on a
    /// connection in practice; if one does, the key follows it).
    fn key(&mut self, client_id: Option<&str>) -> &IdentityKey {
        let client_id = client_id.unwrap_or("");
        let stale = match &self.key {
            Some(k) => k.principal.is_none() && k.client_id != client_id,
            None => true,
        };
        if stale {
            self.key = Some(IdentityKey::new(
                self.principal.as_deref(),
                client_id,
                self.peer_ip,
            ));
        }
        self.key.as_ref().expect("set above")
    }
}

/// Why a routed request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Everything a routing decision needs, for one request.
pub struct Ctx<'a> {
    pub proxy: &'a Proxy,
    pub routes: Arc<RouteTable>,
    pub cluster: &'a Arc<ClusterView>,
    pub map: &'a VirtualMap,
    pub session: &'a mut Session,
}

/// A topic and the partitions the proxy answered itself with `error`.
#[derive(Debug, Clone)]
pub struct Refused {
    pub topic: TopicName,
    pub partitions: Vec<i32>,
}

/// What a routed Produce, Fetch or ListOffsets response needs on its way back.
#[derive(Debug, Default)]
pub struct Plan {
    /// Produce: batches whose producer id was mapped, reported as written when
    /// their partition's response carries no error.
    pub sent: Vec<Sent>,
    pub producers: Option<Arc<Producers>>,
    /// Produce: the partitions this request holds in flight (released on drop).
    pub hold: Option<InflightGuard>,
    pub refused: Vec<Refused>,
    /// Produce: partitions refused with UNKNOWN_PRODUCER_ID (a producer id the
    /// proxy holds no state for, away from its home cluster).
    pub unknown_producer: Vec<Refused>,
    /// physical name upstream → logical name the client used
    pub renames: HashMap<TopicName, TopicName>,
    /// For fetches: topics (logical) this connection must not serve at all, even if
    /// the broker's fetch session still returns them.
    pub not_here: Option<ReadCheck>,
    /// For fetches of a group being switched: answer without records.
    pub strip_records: bool,
}

/// The longest a held fetch waits before its empty answer.
const MAX_HELD_FETCH_WAIT_MS: i32 = 1000;

/// Whether a logical topic is read from another cluster, for one request's routes.
#[derive(Clone)]
pub struct ReadCheck(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl ReadCheck {
    fn elsewhere(&self, topic: &str) -> bool {
        (self.0)(topic)
    }
}

impl std::fmt::Debug for ReadCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadCheck")
    }
}

impl Plan {
    fn is_noop(&self) -> bool {
        self.refused.is_empty()
            && self.unknown_producer.is_empty()
            && self.renames.is_empty()
            && self.not_here.is_none()
            && !self.strip_records
    }

    /// One topic of a request: refused (every partition answered with a retriable
    /// error) when `elsewhere`, else renamed to its physical name on `here`.
    /// Returns whether the topic stays in the request.
    fn route_topic(
        &mut self,
        routes: &RouteTable,
        here: &str,
        name: &mut TopicName,
        partitions: impl Iterator<Item = i32>,
        elsewhere: bool,
    ) -> bool {
        if elsewhere {
            self.refused.push(Refused {
                topic: name.clone(),
                partitions: partitions.collect(),
            });
            return false;
        }
        let physical = routes.physical_topic(name, here);
        if physical != name.as_str() {
            let physical = topic_name(&physical);
            self.renames.insert(physical.clone(), name.clone());
            *name = physical;
        }
        true
    }

    fn logical(&self, name: &TopicName) -> TopicName {
        self.renames
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.clone())
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

impl Ctx<'_> {
    fn here(&self) -> &str {
        self.cluster.name()
    }

    fn identity(&mut self, frame: &RequestFrame) -> IdentityKey {
        let client_id = frame.header.client_id.as_ref().map(|s| s.as_str());
        self.session.key(client_id).clone()
    }

    /// Cluster that serves reads of `topic` for a client linked to `groups`: their
    /// cluster when they agree on one (one group, or several routed alike), else the
    /// topic's `consume` route.
    fn read_cluster<'r>(routes: &'r RouteTable, groups: &[String], topic: &str) -> &'r str {
        let mut clusters = groups.iter().map(|g| routes.group_cluster(g));
        match clusters.next() {
            Some(first) if clusters.all(|c| c == first) => first,
            _ => routes.consume_cluster(topic),
        }
    }

    /// Cluster whose view of `topic` Metadata gives this connection.
    fn view_cluster(&self, role: Role, groups: &[String], seen: &Seen, topic: &str) -> String {
        let routes = &self.routes;
        match role {
            Role::Writer => routes.produce_cluster(topic).to_string(),
            Role::Reader => Self::read_cluster(routes, groups, topic).to_string(),
            // A connection that has not shown a role (a fresh connection for a
            // metadata lookup): the side its identity was seen on for this topic;
            // for a topic it has not used, the read view if it has only ever read,
            // else the write view (SASL users shared by producers and consumers).
            // A topic both read and written gets the write view; a consumer shown
            // the wrong one is steered on its first fetch.
            Role::Unknown => {
                let read_side = if seen.written.contains(topic) {
                    false
                } else if seen.read.contains(topic) {
                    true
                } else {
                    seen.reads_only
                };
                if read_side {
                    Self::read_cluster(routes, groups, topic).to_string()
                } else {
                    routes.produce_cluster(topic).to_string()
                }
            }
        }
    }
}

/// What an identity was seen doing, for connections that have shown no role.
#[derive(Debug, Default)]
struct Seen {
    reads_only: bool,
    read: std::collections::BTreeSet<String>,
    written: std::collections::BTreeSet<String>,
}

/// Routes a request when more than one cluster is configured. `None`: not a routed
/// API, the plain handler takes it.
pub async fn route(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Option<Action>, RouteError> {
    Ok(Some(match frame.api {
        ApiKey::Metadata => metadata(ctx, frame).await?,
        ApiKey::Produce => produce(ctx, frame).await?,
        ApiKey::InitProducerId => init_producer_id(ctx, frame)?,
        ApiKey::Fetch => fetch(ctx, frame).await?,
        ApiKey::ListOffsets => list_offsets(ctx, frame)?,
        ApiKey::OffsetForLeaderEpoch => match offset_for_leader_epoch(ctx, frame)? {
            Some(a) => a,
            None => return Ok(None),
        },
        _ if super::group_admin::takes(frame) => {
            return super::group_admin::route(ctx, frame).await
        }
        ApiKey::FindCoordinator => match find_coordinator(ctx, frame).await? {
            Some(a) => a,
            None => return Ok(None),
        },
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch => match group_api(ctx, frame).await? {
            Some(a) => a,
            None => return Ok(None),
        },
        ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::CreatePartitions
        | ApiKey::DescribeConfigs
        | ApiKey::AlterConfigs
        | ApiKey::IncrementalAlterConfigs => return super::topic_admin::route(ctx, frame).await,
        _ => return Ok(None),
    }))
}

fn respond<T: kafka_protocol::protocol::Encodable>(
    frame: &RequestFrame,
    body: &T,
) -> Result<Action, RouteError> {
    Ok(Action::Respond(codec::encode_response(
        frame.api,
        frame.version(),
        frame.correlation_id(),
        body,
    )?))
}

fn forward(frame: &RequestFrame, bytes: Bytes, rewrite: ResponseRewrite) -> Action {
    Action::Forward {
        frame: bytes,
        response: Some(Forwarded {
            upstream_api: frame.api,
            upstream_version: frame.version(),
            rewrite,
        }),
    }
}

// ---------------------------------------------------------------- metadata

async fn metadata(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let req: MetadataRequest = frame.decode()?;
    let version = frame.version();
    let key = ctx.identity(frame);
    let ident = ctx.proxy.identities.get(&key);
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
    let timeout = ctx
        .proxy
        .config()
        .proxy
        .connect_timeout
        .max(std::time::Duration::from_secs(10));

    // Version 0 has no null list: an empty one asks for all topics.
    let all_topics = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    // Which topics to ask each cluster for (physical names).
    let clusters: Vec<Arc<ClusterView>> = ctx.proxy.clusters().cloned().collect();
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
                metadata::rewrite_metadata(&mut r, &ctx.proxy.virtual_map(c));
                Some(r)
            }
            Err(e) => {
                // An unreachable cluster contributes no brokers; the topics routed
                // to it are reported as having no leader (retriable).
                tracing::debug!(cluster = c.name(), error = %e, "metadata from cluster failed");
                None
            }
        };
        answers.push(metadata::ClusterAnswer {
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
    let mut merged = metadata::merge(
        answers,
        asked.as_deref(),
        &ctx.routes.default_cluster,
        &view,
    );
    merged.cluster_id = Some(StrBytes::from_string(ctx.map.cluster_id.clone()));
    respond(frame, &merged)
}

/// One client's view of topics, for [`metadata::merge`].
struct ClientView<'c, 'a> {
    ctx: &'c Ctx<'a>,
    role: Role,
    groups: &'c [String],
    seen: &'c Seen,
}

impl metadata::TopicView for ClientView<'_, '_> {
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

/// physical → logical names on `cluster` for exact rows with a rename there.
fn reverse_renames(routes: &RouteTable, cluster: &str) -> HashMap<TopicName, TopicName> {
    routes
        .renamed_on(cluster)
        .map(|(p, l)| (topic_name(p), topic_name(l)))
        .collect()
}

// ----------------------------------------------------------------- produce

async fn produce(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: ProduceRequest = frame.decode()?;
    ctx.session.role = Role::Writer;
    let key = ctx.identity(frame);
    ctx.proxy
        .identities
        .note_write(&key, req.topic_data.iter().map(|t| t.name.as_str()));
    let here = ctx.here().to_string();
    let here_idx = ctx.proxy.cluster_index(&here);
    let mut plan = Plan::default();
    let mut changed = false;

    let routes = ctx.routes.clone();
    req.topic_data.retain_mut(|t| {
        let elsewhere = routes.produce_cluster(&t.name) != here;
        let parts = t.partition_data.iter().map(|p| p.index);
        plan.route_topic(&routes, &here, &mut t.name, parts, elsewhere)
    });
    if !plan.refused.is_empty() || !plan.renames.is_empty() {
        changed = true;
    }
    if !plan.refused.is_empty() {
        metrics::steered("Produce", &here);
    }

    let acks = req.acks;
    if !req.topic_data.is_empty() {
        // Batches still in flight for these partitions on the cluster their writes
        // left complete first (their outcome, recorded when their responses are
        // handled, decides where the numbering continues below).
        let parts: Vec<(String, i32)> = req
            .topic_data
            .iter()
            .flat_map(|t| {
                let logical = plan.logical(&t.name).to_string();
                t.partition_data
                    .iter()
                    .map(move |p| (logical.clone(), p.index))
            })
            .collect();
        let limit = std::time::Duration::from_millis(req.timeout_ms.clamp(0, 30_000) as u64);
        let (guard, in_order) = ctx.proxy.inflight.take(parts, here_idx, limit).await;
        if !in_order {
            tracing::warn!(cluster = %here, "produce went ahead while batches for its partitions were still in flight on another cluster");
        }
        plan.hold = Some(guard);
    }

    // Producer ids: batches of idempotent, non-transactional producers carry a
    // virtual id; upstream gets this cluster's id for that producer.
    // Partitions answered by the proxy after all, with the error for each.
    let mut not_next: Vec<(TopicName, i32, i16)> = Vec::new();
    for t in &mut req.topic_data {
        let logical = plan.logical(&t.name);
        for p in &mut t.partition_data {
            let Some(records) = &p.records else { continue };
            let headers = match producers::batches(records) {
                Ok(h) => h,
                // Old formats carry no producer id; anything malformed is the
                // broker's to reject, with its own error.
                Err(BatchError::OldMagic { .. }) | Err(BatchError::Truncated(_)) => continue,
            };
            if !headers
                .iter()
                .any(|h| h.producer_id >= 0 && !h.transactional)
            {
                continue;
            }
            let mut out = BytesMut::from(&records[..]);
            let mut sent = Vec::new();
            for h in &headers {
                if h.producer_id < 0 || h.transactional {
                    continue;
                }
                let up = loop {
                    match ctx.proxy.producers.plan(h, &logical, p.index, here_idx) {
                        Ok(up) => break Ok(up),
                        Err(PlanError::NotNext { .. }) => break Err(NOT_LEADER_OR_FOLLOWER),
                        // Never issued here (forged, or from before a restart) or
                        // forgotten: refused before anything goes upstream.
                        Err(PlanError::UnknownProducer) => break Err(UNKNOWN_PRODUCER_ID),
                        Err(PlanError::NeedProducerId { cluster }) => {
                            let timeout = ctx.proxy.producers.transaction_timeout(h.producer_id);
                            let (pid, epoch) = match foreign_producer_id(
                                ctx.cluster,
                                ctx.proxy,
                                timeout,
                            )
                            .await
                            {
                                Ok(id) => id,
                                Err(reason) => {
                                    // Nothing was written: the client retries
                                    // the batch as it is, in order.
                                    tracing::warn!(
                                        cluster = %here,
                                        virtual_id = h.producer_id,
                                        %reason,
                                        "no producer id from the cluster yet; batch answered as retriable"
                                    );
                                    break Err(NOT_LEADER_OR_FOLLOWER);
                                }
                            };
                            tracing::info!(
                                virtual_id = h.producer_id,
                                cluster = %here,
                                producer_id = pid,
                                "producer id issued for a producer from another cluster"
                            );
                            ctx.proxy.producers.set_foreign(
                                h.producer_id,
                                cluster,
                                pid,
                                epoch,
                                h.epoch,
                            );
                        }
                    }
                };
                let up = match up {
                    Ok(up) => up,
                    Err(code) => {
                        not_next.push((logical.clone(), p.index, code));
                        sent.clear();
                        break;
                    }
                };
                producers::patch_batch(
                    &mut out[h.at..h.at + h.len],
                    up.producer_id,
                    up.epoch,
                    up.base_sequence,
                );
                sent.push(Sent {
                    producer_id: h.producer_id,
                    epoch: h.epoch,
                    topic: logical.to_string(),
                    partition: p.index,
                    cluster: here_idx,
                    client_base: h.base_sequence,
                    upstream_base: up.base_sequence,
                    count: h.count,
                });
            }
            plan.sent.append(&mut sent);
            p.records = Some(out.freeze());
            changed = true;
        }
    }
    if !not_next.is_empty() {
        // NotNext: a retriable error; the client resends them after the older
        // batches it still waits for, in order. Unknown ids: see PlanError.
        metrics::steered("Produce", &here);
        for (logical, index, code) in &not_next {
            for t in &mut req.topic_data {
                if plan.logical(&t.name) == *logical {
                    t.partition_data.retain(|p| p.index != *index);
                }
            }
            let list = if *code == UNKNOWN_PRODUCER_ID {
                &mut plan.unknown_producer
            } else {
                &mut plan.refused
            };
            match list.iter_mut().find(|r| r.topic == *logical) {
                Some(r) => r.partitions.push(*index),
                None => list.push(Refused {
                    topic: logical.clone(),
                    partitions: vec![*index],
                }),
            }
        }
        req.topic_data.retain(|t| !t.partition_data.is_empty());
    }
    if !plan.sent.is_empty() {
        plan.producers = Some(ctx.proxy.producers.clone());
    }

    if req.topic_data.is_empty() {
        if acks == 0 {
            return Ok(Action::Discard);
        }
        return respond(frame, &produce_errors(&plan, ProduceResponse::default()));
    }
    let bytes = if changed {
        codec::encode_request(frame.api, &frame.header, &req)?
    } else {
        frame.bytes.clone()
    };
    if acks == 0 {
        return Ok(Action::Forward {
            frame: bytes,
            response: None,
        });
    }
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::Produce(Box::new(plan)),
    ))
}

/// Asks `cluster` for a producer id of its own (idempotent, not transactional),
/// with the transaction timeout the client asked for. An error code in the answer
/// (a fresh broker says COORDINATOR_LOAD_IN_PROGRESS) or no answer at all is
/// returned as the reason; the caller answers the batch with a retriable error.
async fn foreign_producer_id(
    cluster: &ClusterView,
    proxy: &Proxy,
    transaction_timeout_ms: i32,
) -> Result<(i64, i16), String> {
    let timeout = proxy
        .config()
        .proxy
        .connect_timeout
        .max(std::time::Duration::from_secs(10));
    let version = cluster.version_for(ApiKey::InitProducerId, 2).unwrap_or(0);
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(transaction_timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp: InitProducerIdResponse = cluster
        .call(ApiKey::InitProducerId, version, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    match ResponseError::try_from_code(resp.error_code) {
        None => Ok((resp.producer_id.0, resp.producer_epoch)),
        Some(e) => Err(format!(
            "InitProducerId answered {e:?} ({})",
            resp.error_code
        )),
    }
}

fn produce_errors(plan: &Plan, mut resp: ProduceResponse) -> ProduceResponse {
    for t in &mut resp.responses {
        t.name = plan.logical(&t.name);
    }
    let refused = plan.refused.iter().map(|r| (r, NOT_LEADER_OR_FOLLOWER));
    let unknown = plan
        .unknown_producer
        .iter()
        .map(|r| (r, UNKNOWN_PRODUCER_ID));
    for (r, code) in refused.chain(unknown) {
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(r.topic.clone())
                .with_partition_responses(
                    r.partitions
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(*p)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
    resp
}

pub fn rewrite_produce_response(
    frame: Bytes,
    version: i16,
    plan: &Plan,
) -> Result<Bytes, DecodeError> {
    if plan.is_noop() && plan.sent.is_empty() {
        return Ok(frame);
    }
    let (header, resp) =
        codec::decode_response::<ProduceResponse>(ApiKey::Produce, version, frame.clone())?;
    if let Some(producers) = &plan.producers {
        for t in &resp.responses {
            let logical = plan.logical(&t.name);
            for p in &t.partition_responses {
                // DUPLICATE_SEQUENCE_NUMBER: written before, by an earlier attempt.
                if p.error_code != 0 && p.error_code != 46 {
                    continue;
                }
                for s in plan
                    .sent
                    .iter()
                    .filter(|s| s.partition == p.index && s.topic == logical.as_str())
                {
                    producers.acknowledged(s);
                }
            }
        }
    }
    if plan.is_noop() {
        return Ok(frame);
    }
    let resp = produce_errors(plan, resp);
    codec::encode_response(ApiKey::Produce, version, header.correlation_id, &resp)
}

fn init_producer_id(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: InitProducerIdRequest = frame.decode()?;
    ctx.session.role = Role::Writer;
    if req.transactional_id.is_some() {
        // Transactional producers keep their coordinator's id (module docs of
        // switch::producers).
        return Ok(forward(frame, frame.bytes.clone(), ResponseRewrite::None));
    }
    let here = ctx.proxy.cluster_index(ctx.here());
    let mut bytes = frame.bytes.clone();
    if req.producer_id.0 >= 0 {
        // A client asking to bump its own (virtual) id: only its home can.
        let (home, pid) = producers::from_virtual(req.producer_id.0);
        if home == here {
            req.producer_id = ProducerId(pid);
        } else {
            req.producer_id = ProducerId(-1);
            req.producer_epoch = -1;
        }
        bytes = codec::encode_request(frame.api, &frame.header, &req)?;
    }
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::InitProducerId {
            cluster: here,
            name: ctx.here().to_string(),
            producers: ctx.proxy.producers.clone(),
            transaction_timeout_ms: req.transaction_timeout_ms,
        },
    ))
}

pub fn rewrite_init_producer_id(
    frame: Bytes,
    version: i16,
    (cluster, cluster_name): (usize, &str),
    issued: &Producers,
    transaction_timeout_ms: i32,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<InitProducerIdResponse>(ApiKey::InitProducerId, version, frame)?;
    let virtual_id = issued.issue_id(resp.producer_id.0, cluster);
    if ResponseError::try_from_code(resp.error_code).is_none() {
        // The only place producer state is created (switch::producers docs).
        issued.issue(virtual_id);
        issued.set_transaction_timeout(virtual_id, transaction_timeout_ms);
        tracing::info!(
            cluster = %cluster_name,
            upstream_id = resp.producer_id.0,
            virtual_id,
            epoch = resp.producer_epoch,
            "producer id issued"
        );
    }
    resp.producer_id = ProducerId(virtual_id);
    codec::encode_response(
        ApiKey::InitProducerId,
        version,
        header.correlation_id,
        &resp,
    )
}

// ------------------------------------------------------------------- reads

/// A closure telling whether a logical topic is read from another cluster than
/// `here`, for this request's routes and group.
fn not_here(routes: &Arc<RouteTable>, groups: Vec<String>, here: &str) -> ReadCheck {
    let (routes, here) = (routes.clone(), here.to_string());
    ReadCheck(Arc::new(move |topic: &str| {
        Ctx::read_cluster(&routes, &groups, topic) != here
    }))
}

/// Marks the connection a reader and notes the topics its identity reads (logical
/// names); returns the groups the identity is linked to.
fn reader<'a>(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
    topics: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    ctx.session.role = Role::Reader;
    let key = ctx.identity(frame);
    ctx.proxy.identities.note_read(&key, topics);
    let groups: Vec<String> = ctx
        .proxy
        .identities
        .get(&key)
        .map(|i| i.groups.into_iter().collect())
        .unwrap_or_default();
    if groups.is_empty() {
        metrics::unattributed_fetch();
    }
    groups
}

async fn fetch(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: FetchRequest = frame.decode()?;
    let groups = reader(ctx, frame, req.topics.iter().map(|t| t.topic.as_str()));
    // A group switch holds its members' fetches: they are answered without records
    // (after the client's own wait, so held clients do not spin).
    let switches = &ctx.proxy.group_switches;
    let held = switches.busy() && !groups.is_empty() && {
        let key = ctx.identity(frame);
        switches.note_positions(
            &groups,
            req.topics.iter().flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.as_str(), p.partition, p.fetch_offset))
            }),
        );
        switches.fetch_held(&groups, &key, ctx.cluster.name())
    };
    if held {
        let wait = req.max_wait_ms.clamp(0, MAX_HELD_FETCH_WAIT_MS) as u64;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
    let here = ctx.here().to_string();
    if switches.busy() && !held && !groups.is_empty() {
        // A switched group's first fetch of each partition on its new cluster must
        // be at the translated offset; anything else is counted and logged.
        let positions = req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.as_str(), p.partition, p.fetch_offset))
        });
        for (group, topic, partition, fetched, translated) in
            switches.audit(&groups, &here, positions)
        {
            metrics::position_mismatch(&group);
            // The client id tells an operator (and the next investigation) which
            // member fetched there; it is the client's text, so it goes quoted.
            let client = frame.header.client_id.as_ref().map(|c| c.as_str());
            tracing::warn!(%group, %topic, partition, fetched, translated, cluster = %here, client = ?client, session_epoch = req.session_epoch, "first fetch on the new cluster is not at the translated offset");
        }
    }
    // An incremental fetch names only what changed; the broker still serves every
    // partition of the session. When any topic the session may hold is read
    // elsewhere now, the session is ended: FETCH_SESSION_ID_NOT_FOUND makes the
    // client drop it and send a full fetch, which is steered like any other.
    let incremental = frame.version() >= 7 && req.session_id > 0 && req.session_epoch > 0;
    let unchanged = ctx
        .session
        .fetch_session_checked
        .as_ref()
        .is_some_and(|(routes, g)| Arc::ptr_eq(routes, &ctx.routes) && *g == groups);
    let checked = (incremental && !unchanged).then(|| (ctx.routes.clone(), groups.clone()));
    let elsewhere = not_here(&ctx.routes, groups, &here);
    if incremental
        && (ctx.session.fetch_session.len() >= MAX_SESSION_TOPICS
            || (!unchanged
                && ctx
                    .session
                    .fetch_session
                    .iter()
                    .any(|t| elsewhere.elsewhere(t))))
    {
        ctx.session.fetch_session.clear();
        ctx.session.fetch_session_checked = None;
        metrics::steered("Fetch", &here);
        let resp = FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
        return respond(frame, &resp);
    }
    if incremental {
        if checked.is_some() {
            ctx.session.fetch_session_checked = checked;
        }
    } else {
        ctx.session.fetch_session.clear();
        ctx.session.fetch_session_checked = None;
    }
    let mut plan = Plan::default();
    let routes = ctx.routes.clone();
    req.topics.retain_mut(|t| {
        let parts = t.partitions.iter().map(|p| p.partition);
        let away = elsewhere.elsewhere(&t.topic);
        plan.route_topic(&routes, &here, &mut t.topic, parts, away)
    });
    if frame.version() >= 7 && req.session_epoch >= 0 {
        for t in &req.topics {
            let logical = plan.logical(&t.topic);
            let session = &mut ctx.session;
            // Known topics cost no allocation; a new one must be checked next time.
            if !session.fetch_session.contains(logical.as_str())
                && session.fetch_session.len() < MAX_SESSION_TOPICS
            {
                session.fetch_session.insert(logical.to_string());
                session.fetch_session_checked = None;
            }
        }
    }
    let mut changed = !plan.refused.is_empty() || !plan.renames.is_empty();
    for t in &mut req.forgotten_topics_data {
        let physical = routes.physical_topic(&t.topic, &here);
        if physical != t.topic.as_str() {
            t.topic = topic_name(&physical);
            changed = true;
        }
    }
    if !plan.refused.is_empty() {
        metrics::steered("Fetch", &here);
    }
    changed |= fetch::rewrite_request(&mut req);
    if req.topics.is_empty() && req.forgotten_topics_data.is_empty() && !plan.refused.is_empty() {
        // Nothing left for this broker: answer at once instead of long-polling it.
        let mut resp = FetchResponse::default();
        fetch_errors(&plan, &mut resp);
        return respond(frame, &resp);
    }
    plan.not_here = Some(elsewhere);
    plan.strip_records = held;
    // Unchanged requests go upstream as their original bytes.
    let bytes = if changed {
        codec::encode_request(frame.api, &frame.header, &req)?
    } else {
        frame.bytes.clone()
    };
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::FetchRouted(Box::new(plan)),
    ))
}

fn fetch_error_partition(p: i32) -> PartitionData {
    PartitionData::default()
        .with_partition_index(p)
        .with_error_code(NOT_LEADER_OR_FOLLOWER)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(Bytes::new()))
}

/// Adds the refused partitions, names topics logically, and turns partitions a
/// fetch session returns for topics read elsewhere into errors. Returns whether the
/// response changed.
fn fetch_errors(plan: &Plan, resp: &mut FetchResponse) -> bool {
    let mut changed = !plan.refused.is_empty();
    for t in &mut resp.responses {
        if let Some(logical) = plan.renames.get(&t.topic) {
            t.topic = logical.clone();
            changed = true;
        }
        if let Some(elsewhere) = &plan.not_here {
            // A fetch session can still return partitions the route moved away.
            if elsewhere.elsewhere(&t.topic) {
                for p in &mut t.partitions {
                    *p = fetch_error_partition(p.partition_index);
                }
                changed = true;
            }
        }
    }
    for r in &plan.refused {
        resp.responses.push(
            FetchableTopicResponse::default()
                .with_topic(r.topic.clone())
                .with_partitions(
                    r.partitions
                        .iter()
                        .map(|p| fetch_error_partition(*p))
                        .collect(),
                ),
        );
    }
    changed
}

pub fn rewrite_fetch_response(
    frame: Bytes,
    version: i16,
    plan: &Plan,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<FetchResponse>(ApiKey::Fetch, version, frame.clone())?;
    let mut changed = fetch::rewrite_response(&mut resp, map) | fetch_errors(plan, &mut resp);
    if plan.strip_records {
        for t in &mut resp.responses {
            for p in &mut t.partitions {
                p.records = Some(Bytes::new());
                p.aborted_transactions = None;
            }
        }
        changed = true;
    }
    if !changed {
        // The record data goes back as the upstream's bytes, uncopied.
        return Ok(frame);
    }
    codec::encode_response(ApiKey::Fetch, version, header.correlation_id, &resp)
}

fn list_offsets(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: ListOffsetsRequest = frame.decode()?;
    let groups = reader(ctx, frame, req.topics.iter().map(|t| t.name.as_str()));
    let here = ctx.here().to_string();
    let elsewhere = not_here(&ctx.routes, groups, &here);
    let mut plan = Plan::default();
    let routes = ctx.routes.clone();
    req.topics.retain_mut(|t| {
        let parts = t.partitions.iter().map(|p| p.partition_index);
        let away = elsewhere.elsewhere(&t.name);
        plan.route_topic(&routes, &here, &mut t.name, parts, away)
    });
    offsets::clear_list_offsets_epochs(&mut req);
    if !plan.refused.is_empty() {
        metrics::steered("ListOffsets", &here);
    }
    if req.topics.is_empty() {
        return respond(
            frame,
            &list_offsets_errors(&plan, ListOffsetsResponse::default()),
        );
    }
    let bytes = codec::encode_request(frame.api, &frame.header, &req)?;
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::ListOffsetsRouted(Box::new(plan)),
    ))
}

fn list_offsets_errors(plan: &Plan, mut resp: ListOffsetsResponse) -> ListOffsetsResponse {
    for t in &mut resp.topics {
        t.name = plan.logical(&t.name);
    }
    for r in &plan.refused {
        resp.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(r.topic.clone())
                .with_partitions(
                    r.partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(*p)
                                .with_error_code(NOT_LEADER_OR_FOLLOWER)
                                .with_timestamp(-1)
                                .with_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
    resp
}

pub fn rewrite_list_offsets_response(
    frame: Bytes,
    version: i16,
    plan: &Plan,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<ListOffsetsResponse>(ApiKey::ListOffsets, version, frame)?;
    offsets::clear_list_offsets_response_epochs(&mut resp);
    let resp = list_offsets_errors(plan, resp);
    codec::encode_response(ApiKey::ListOffsets, version, header.correlation_id, &resp)
}

/// OffsetForLeaderEpoch for a topic read elsewhere is refused whole (the client
/// re-validates after its metadata refresh). Renamed topics are answered from
/// ListOffsets under their physical names, like every other topic (PROTOCOL.md §1).
fn offset_for_leader_epoch(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: OffsetForLeaderEpochRequest = frame.decode()?;
    let groups = reader(ctx, frame, req.topics.iter().map(|t| t.topic.as_str()));
    let here = ctx.here().to_string();
    let elsewhere = not_here(&ctx.routes, groups, &here);
    let refuse = req.topics.iter().any(|t| elsewhere.elsewhere(&t.topic));
    if !refuse {
        let renamed = req
            .topics
            .iter()
            .any(|t| ctx.routes.physical_topic(&t.topic, &here) != t.topic.as_str());
        if !renamed {
            return Ok(None);
        }
        // Answered from ListOffsets like the plain path, under physical names.
        let routes = ctx.routes.clone();
        let (bytes, query, version) =
            offsets::epoch_request_as_list_offsets_renamed(frame, |name| {
                let p = routes.physical_topic(name, &here);
                (p != name.as_str()).then(|| topic_name(&p))
            })?;
        return Ok(Some(Action::Forward {
            frame: bytes,
            response: Some(Forwarded {
                upstream_api: ApiKey::ListOffsets,
                upstream_version: version,
                rewrite: ResponseRewrite::EpochFromListOffsets(query),
            }),
        }));
    }
    metrics::steered("OffsetForLeaderEpoch", &here);
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in &req.topics {
        let mut rt = kafka_protocol::messages::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
            .with_topic(t.topic.clone());
        for p in &t.partitions {
            rt.partitions.push(
                kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_error_code(NOT_LEADER_OR_FOLLOWER)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            );
        }
        resp.topics.push(rt);
    }
    respond(frame, &resp).map(Some)
}

// ------------------------------------------------------------------ groups

async fn find_coordinator(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: FindCoordinatorRequest = frame.decode()?;
    if req.key_type != 0 {
        return Ok(None); // transactional ids: the cluster the connection is on
    }
    let version = frame.version();
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let here = ctx.here().to_string();
    if keys.iter().all(|k| ctx.routes.group_cluster(k) == here) {
        return Ok(None);
    }
    // Ask each group's cluster for its coordinator.
    let timeout = ctx
        .proxy
        .config()
        .proxy
        .connect_timeout
        .max(std::time::Duration::from_secs(10));
    let mut by_cluster: BTreeMap<String, Vec<StrBytes>> = BTreeMap::new();
    for k in keys {
        by_cluster
            .entry(ctx.routes.group_cluster(&k).to_string())
            .or_default()
            .push(k);
    }
    let mut out = FindCoordinatorResponse::default();
    for (cluster_name, keys) in by_cluster {
        let cluster = ctx
            .proxy
            .cluster(&cluster_name)
            .cloned()
            .expect("validated cluster names");
        let map = ctx.proxy.virtual_map(&cluster);
        let sub = if version >= 4 {
            req.clone().with_coordinator_keys(keys.clone())
        } else {
            req.clone()
        };
        let resp: Result<FindCoordinatorResponse, _> = cluster
            .call(ApiKey::FindCoordinator, version, &sub, timeout)
            .await;
        match resp {
            Ok(mut r) => {
                groups::rewrite_find_coordinator(&mut r, version, &map);
                if version >= 4 {
                    out.coordinators.append(&mut r.coordinators);
                } else {
                    out = r;
                }
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster_name, error = %e, "FindCoordinator failed");
                // COORDINATOR_NOT_AVAILABLE: the client retries.
                if version >= 4 {
                    for k in keys {
                        out.coordinators.push(
                            Coordinator::default()
                                .with_key(k)
                                .with_node_id(BrokerId(-1))
                                .with_port(-1)
                                .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
                        );
                    }
                } else {
                    out = FindCoordinatorResponse::default()
                        .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1);
                }
            }
        }
    }
    respond(frame, &out).map(Some)
}

/// Group-scoped APIs: link the identity to the group; apply a running group switch
/// (PROTOCOL.md §3); steer with NOT_COORDINATOR when the group lives on another
/// cluster.
async fn group_api(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Option<Action>, RouteError> {
    let (group, member): (String, String) = match frame.api {
        ApiKey::JoinGroup => {
            let r: JoinGroupRequest = frame.decode()?;
            (r.group_id.to_string(), r.member_id.to_string())
        }
        ApiKey::SyncGroup => {
            let r: SyncGroupRequest = frame.decode()?;
            (r.group_id.to_string(), r.member_id.to_string())
        }
        ApiKey::Heartbeat => {
            let r: HeartbeatRequest = frame.decode()?;
            (r.group_id.to_string(), r.member_id.to_string())
        }
        ApiKey::LeaveGroup => {
            let r: LeaveGroupRequest = frame.decode()?;
            let member = match r.members.first() {
                Some(m) => m.member_id.to_string(),
                None => r.member_id.to_string(),
            };
            (r.group_id.to_string(), member)
        }
        ApiKey::OffsetCommit => {
            let r: OffsetCommitRequest = frame.decode()?;
            (r.group_id.to_string(), r.member_id.to_string())
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = frame.decode()?;
            if frame.version() >= 8 {
                match req.groups.as_slice() {
                    [one] => (one.group_id.to_string(), String::new()),
                    _ => return Ok(None),
                }
            } else {
                (req.group_id.to_string(), String::new())
            }
        }
        _ => return Ok(None),
    };
    let key = ctx.identity(frame);
    // Membership links the identity to the group only once the broker accepts it
    // (confirm_group_link, on the response): a request alone proves nothing, and
    // anyone can send one for any group id.
    let link = match frame.api {
        ApiKey::JoinGroup | ApiKey::SyncGroup | ApiKey::OffsetCommit => {
            ctx.session.role = Role::Reader;
            Some(false)
        }
        // A member's heartbeat keeps its link fresh but never creates one.
        ApiKey::Heartbeat => Some(true),
        _ => None,
    };
    let switches = &ctx.proxy.group_switches;
    if switches.busy() {
        let here = ctx.here().to_string();
        let mut verdict = switches.verdict(&group, frame.api, &member, &here);
        if let Verdict::Wait(mut rx) = verdict {
            // A rejoin during a switch waits for its flip (or its end).
            let _ = tokio::time::timeout(JOIN_HOLD_MAX, rx.wait_for(|r| *r != Release::Held)).await;
            switches.join_released(&group);
            ctx.routes = ctx.proxy.routes();
            verdict = switches.verdict(&group, frame.api, &member, &here);
            if let Verdict::Wait(_) = verdict {
                switches.join_released(&group);
            }
        }
        match verdict {
            Verdict::Rebalance => return group_error(frame, REBALANCE_IN_PROGRESS).map(Some),
            Verdict::UnknownMember => return group_error(frame, UNKNOWN_MEMBER_ID).map(Some),
            Verdict::Forward | Verdict::Wait(_) => {}
        }
    }
    let here = ctx.here();
    if ctx.routes.group_cluster(&group) == here {
        let mut then = ResponseRewrite::None;
        if switches.busy() {
            match frame.api {
                ApiKey::JoinGroup => switches.rejoined(&group, &key),
                // Only members holding their real assignment on the new cluster
                // commit there (switch::groups::Settle).
                ApiKey::OffsetCommit if switches.commit_fenced(&group, &member, here) => {
                    tracing::info!(%group, %member, cluster = %here, "commit refused: the member has not been assigned on the new cluster yet");
                    return group_error(frame, REBALANCE_IN_PROGRESS).map(Some);
                }
                ApiKey::SyncGroup => {
                    let verdict = switches.sync_verdict(&group, &member, here);
                    then = ResponseRewrite::Settle(Box::new(SyncSettle {
                        switches: ctx.proxy.group_switches.clone(),
                        group: group.clone(),
                        member: member.clone(),
                        key: key.clone(),
                        verdict,
                    }));
                }
                _ => {}
            }
        }
        let action = offsets_renamed(ctx, frame)?;
        let Some(refresh_only) = link else {
            return Ok(action);
        };
        let action = match action {
            Some(a) => a,
            None => super::handle(frame, ctx.map)?,
        };
        let link = GroupLink {
            identities: ctx.proxy.identities.clone(),
            key,
            group,
            refresh_only,
            then,
        };
        return Ok(Some(with_group_link(action, link)));
    }
    metrics::steered(super::api_name(frame.api), here);
    group_error(frame, NOT_COORDINATOR).map(Some)
}

/// A SyncGroup answer on a group's new cluster after its switch flipped: recorded,
/// and made an empty assignment when that is the member's first there.
#[derive(Debug)]
pub struct SyncSettle {
    pub switches: Arc<crate::switch::groups::GroupSwitches>,
    pub group: String,
    pub member: String,
    pub key: IdentityKey,
    pub verdict: SyncVerdict,
}

/// The answer the client gets for a SyncGroup under [`SyncSettle`].
pub fn rewrite_sync_settle(
    frame: Bytes,
    version: i16,
    settle: &SyncSettle,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<SyncGroupResponse>(ApiKey::SyncGroup, version, frame.clone())?;
    if resp.error_code != 0 {
        return Ok(frame);
    }
    settle
        .switches
        .synced(&settle.group, &settle.member, &settle.key, settle.verdict);
    if settle.verdict == SyncVerdict::Pass {
        return Ok(frame);
    }
    tracing::info!(group = %settle.group, member = %settle.member, "first assignment on the new cluster answered empty; the member rejoins for its real one");
    resp.assignment = empty_assignment(&resp.assignment);
    codec::encode_response(ApiKey::SyncGroup, version, header.correlation_id, &resp)
}

/// A consumer-protocol assignment with no partitions and no user data, at the
/// version of `real` (0 when it has none).
fn empty_assignment(real: &Bytes) -> Bytes {
    let version = match real.get(..2) {
        Some(v) => i16::from_be_bytes([v[0], v[1]]).max(0),
        None => 0,
    };
    let mut out = BytesMut::with_capacity(10);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // no topics
    out.extend_from_slice(&(-1i32).to_be_bytes()); // null user data
    out.freeze()
}

/// Links an identity to a group when the broker accepted the request that showed
/// the membership (see [`confirm_group_link`]).
#[derive(Debug)]
pub struct GroupLink {
    pub identities: Identities,
    pub key: IdentityKey,
    pub group: String,
    /// Heartbeat: confirm an existing link again, create none.
    pub refresh_only: bool,
    /// What the response needs besides.
    pub then: ResponseRewrite,
}

/// Makes a forwarded group request confirm `link` on its response.
fn with_group_link(action: Action, mut link: GroupLink) -> Action {
    match action {
        Action::Forward {
            frame,
            response: Some(mut fwd),
        } => {
            // The action's own rewrite applies after the link; a SyncGroup brings
            // its own (`then`, set by the caller) and the plain handler none.
            let inner = std::mem::replace(&mut fwd.rewrite, ResponseRewrite::None);
            if !matches!(inner, ResponseRewrite::None) {
                link.then = inner;
            }
            fwd.rewrite = ResponseRewrite::GroupLink(Box::new(link));
            Action::Forward {
                frame,
                response: Some(fwd),
            }
        }
        other => other,
    }
}

/// Whether the upstream accepted a group request, read from its response: no
/// error for JoinGroup, SyncGroup and Heartbeat; for OffsetCommit at least one
/// partition committed (group-level refusals such as UNKNOWN_MEMBER_ID or
/// GROUP_AUTHORIZATION_FAILED come back on every partition).
pub fn group_request_accepted(frame: &Bytes, api: ApiKey, version: i16) -> bool {
    let ok = |code: i16| ResponseError::try_from_code(code).is_none();
    let frame = frame.clone();
    match api {
        ApiKey::JoinGroup => codec::decode_response::<JoinGroupResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::SyncGroup => codec::decode_response::<SyncGroupResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::Heartbeat => codec::decode_response::<HeartbeatResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::OffsetCommit => codec::decode_response::<OffsetCommitResponse>(api, version, frame)
            .is_ok_and(|(_, r)| {
                r.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| ok(p.error_code))
            }),
        _ => false,
    }
}

/// Confirms a group link on the upstream's answer to the request that showed it.
/// A response the proxy cannot read links nothing; the inner rewrite then decides
/// what the client gets.
pub fn confirm_group_link(frame: &Bytes, api: ApiKey, version: i16, link: &GroupLink) {
    if !group_request_accepted(frame, api, version) {
        return;
    }
    if link.refresh_only {
        link.identities.refresh_group(&link.key, &link.group);
    } else {
        link.identities.link_group(&link.key, &link.group);
    }
}

/// OffsetCommit and OffsetFetch of a group on a cluster where topics have other
/// names (`rename`): physical names go upstream, logical ones come back. None: no
/// renamed topic here, the plain handler forwards it.
fn offsets_renamed(ctx: &Ctx<'_>, frame: &RequestFrame) -> Result<Option<Action>, RouteError> {
    let here = ctx.here();
    let reverse = reverse_renames(&ctx.routes, here);
    if reverse.is_empty() {
        return Ok(None);
    }
    let physical = |name: &mut TopicName, changed: &mut bool| {
        let p = ctx.routes.physical_topic(name, here);
        if p != name.as_str() {
            *name = topic_name(&p);
            *changed = true;
        }
    };
    let mut changed = false;
    let bytes = match frame.api {
        ApiKey::OffsetCommit => {
            let mut req: OffsetCommitRequest = frame.decode()?;
            offsets::clear_offset_commit_epochs(&mut req);
            for t in &mut req.topics {
                physical(&mut t.name, &mut changed);
            }
            codec::encode_request(frame.api, &frame.header, &req)?
        }
        ApiKey::OffsetFetch => {
            let mut req: OffsetFetchRequest = frame.decode()?;
            for t in req.topics.iter_mut().flatten() {
                physical(&mut t.name, &mut changed);
            }
            for g in &mut req.groups {
                for t in g.topics.iter_mut().flatten() {
                    physical(&mut t.name, &mut changed);
                }
            }
            // Asking for every topic: the answer carries physical names.
            let all = req.topics.is_none() || req.groups.iter().any(|g| g.topics.is_none());
            if !changed && !all {
                return Ok(None);
            }
            codec::encode_request(frame.api, &frame.header, &req)?
        }
        _ => return Ok(None),
    };
    Ok(Some(forward(
        frame,
        bytes,
        ResponseRewrite::OffsetsRenamed(reverse),
    )))
}

/// Names an OffsetCommit or OffsetFetch response logically (physical → logical),
/// clearing committed epochs as the plain handlers do.
pub fn rewrite_offsets_renamed(
    frame: Bytes,
    api: ApiKey,
    version: i16,
    reverse: &HashMap<TopicName, TopicName>,
) -> Result<Bytes, DecodeError> {
    let logical = |name: &mut TopicName| {
        if let Some(l) = reverse.get(name) {
            *name = l.clone();
        }
    };
    match api {
        ApiKey::OffsetCommit => {
            let (h, mut resp) =
                codec::decode_response::<OffsetCommitResponse>(api, version, frame)?;
            resp.topics.iter_mut().for_each(|t| logical(&mut t.name));
            codec::encode_response(api, version, h.correlation_id, &resp)
        }
        ApiKey::OffsetFetch => {
            let (h, mut resp) = codec::decode_response::<OffsetFetchResponse>(api, version, frame)?;
            offsets::clear_offset_fetch_epochs(&mut resp);
            resp.topics.iter_mut().for_each(|t| logical(&mut t.name));
            for g in &mut resp.groups {
                g.topics.iter_mut().for_each(|t| logical(&mut t.name));
            }
            codec::encode_response(api, version, h.correlation_id, &resp)
        }
        _ => Ok(frame),
    }
}

/// How long a rejoin is held at most while its group switches.
const JOIN_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(120);
const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();

/// The proxy's own answer to a group request: `code` for the whole request.
fn group_error(frame: &RequestFrame, code: i16) -> Result<Action, RouteError> {
    match frame.api {
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = frame.decode()?;
            // A member told it is unknown starts over with no id.
            let member = if code == UNKNOWN_MEMBER_ID {
                StrBytes::default()
            } else {
                req.member_id
            };
            respond(
                frame,
                &JoinGroupResponse::default()
                    .with_error_code(code)
                    .with_generation_id(-1)
                    .with_member_id(member),
            )
        }
        ApiKey::SyncGroup => respond(frame, &SyncGroupResponse::default().with_error_code(code)),
        ApiKey::Heartbeat => respond(frame, &HeartbeatResponse::default().with_error_code(code)),
        ApiKey::LeaveGroup => {
            let req: LeaveGroupRequest = frame.decode()?;
            let mut resp = LeaveGroupResponse::default().with_error_code(code);
            if frame.version() >= 3 {
                resp.members = req
                    .members
                    .iter()
                    .map(|m| {
                        kafka_protocol::messages::leave_group_response::MemberResponse::default()
                            .with_member_id(m.member_id.clone())
                            .with_group_instance_id(m.group_instance_id.clone())
                            .with_error_code(code)
                    })
                    .collect();
            }
            respond(frame, &resp)
        }
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = frame.decode()?;
            let resp = OffsetCommitResponse::default().with_topics(
                req.topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            respond(frame, &resp)
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = frame.decode()?;
            let resp = if frame.version() >= 8 {
                OffsetFetchResponse::default()
                    .with_groups(vec![OffsetFetchResponseGroup::default()
                        .with_group_id(req.groups[0].group_id.clone())
                        .with_error_code(code)])
            } else {
                OffsetFetchResponse::default().with_error_code(code)
            };
            respond(frame, &resp)
        }
        other => unreachable!("not a group API: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn routes() -> RouteTable {
        let c = Config::from_toml(
            r#"
            [clusters.source]
            bootstrap = ["s:9092"]
            [clusters.target]
            bootstrap = ["t:9092"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            [routes.topics."orders"]
            produce = "target"
            consume = "source"
            rename = { target = "source.orders" }
            [routes.groups."billing"]
            cluster = "target"
            [routes.groups."^billing-.*"]
            cluster = "target"
            "#,
            Vec::<(String, String)>::new(),
            Path::new("."),
        )
        .unwrap();
        RouteTable::new(3, &c)
    }

    #[test]
    fn an_empty_assignment_is_a_valid_consumer_assignment() {
        use kafka_protocol::messages::ConsumerProtocolAssignment;
        use kafka_protocol::protocol::Decodable;
        for version in 0..=3i16 {
            let mut real = BytesMut::new();
            real.extend_from_slice(&version.to_be_bytes());
            real.extend_from_slice(&[0, 0, 0, 9]);
            let empty = empty_assignment(&real.freeze());
            let mut b = empty.slice(2..);
            let a = ConsumerProtocolAssignment::decode(&mut b, version).unwrap();
            assert!(a.assigned_partitions.is_empty());
            assert!(a.user_data.is_none());
            assert_eq!(&empty[..2], &version.to_be_bytes());
        }
        assert_eq!(&empty_assignment(&Bytes::new())[..2], &[0, 0]);
    }

    #[test]
    fn reads_follow_the_group_then_the_topic() {
        let r = routes();
        let g = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Ctx::read_cluster(&r, &g(&["billing"]), "orders"), "target");
        assert_eq!(Ctx::read_cluster(&r, &g(&[]), "orders"), "source");
        assert_eq!(Ctx::read_cluster(&r, &g(&["other"]), "orders"), "source");
        // Several groups routed alike still decide; disagreeing ones fall back to
        // the topic's consume route.
        assert_eq!(
            Ctx::read_cluster(&r, &g(&["billing", "billing-eu"]), "orders"),
            "target"
        );
        assert_eq!(
            Ctx::read_cluster(&r, &g(&["billing", "other"]), "orders"),
            "source"
        );
    }

    #[test]
    fn refused_partitions_are_merged_into_produce_responses() {
        let mut plan = Plan::default();
        plan.renames
            .insert(topic_name("source.orders"), topic_name("orders"));
        plan.refused.push(Refused {
            topic: topic_name("payments"),
            partitions: vec![0, 2],
        });
        let upstream =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(topic_name("source.orders"))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(1)
                    .with_base_offset(41)])]);
        let frame = codec::encode_response(ApiKey::Produce, 8, 5, &upstream).unwrap();
        let out = rewrite_produce_response(frame, 8, &plan).unwrap();
        let (h, resp) = codec::decode_response::<ProduceResponse>(ApiKey::Produce, 8, out).unwrap();
        assert_eq!(h.correlation_id, 5);
        assert_eq!(resp.responses[0].name.as_str(), "orders");
        assert_eq!(resp.responses[0].partition_responses[0].base_offset, 41);
        assert_eq!(resp.responses[1].name.as_str(), "payments");
        let errs: Vec<_> = resp.responses[1]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code))
            .collect();
        assert_eq!(errs, vec![(0, 6), (2, 6)]);
    }

    #[test]
    fn fetch_sessions_cannot_leak_partitions_routed_elsewhere() {
        let r = Arc::new(routes());
        let mut plan = Plan {
            not_here: Some(not_here(&r, vec!["billing".into()], "source")),
            ..Plan::default()
        };
        plan.refused.clear();
        let upstream =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(topic_name("orders"))
                .with_partitions(vec![PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(10)
                    .with_records(Some(Bytes::from_static(b"data")))])]);
        let mut out = upstream;
        assert!(fetch_errors(&plan, &mut out));
        let p = &out.responses[0].partitions[0];
        assert_eq!(p.error_code, NOT_LEADER_OR_FOLLOWER);
        assert_eq!(p.records.as_deref(), Some(&b""[..]));
    }
}

/// The request path in process: a real `Proxy` whose clusters point at a loopback
/// listener that only counts connections, so a test proves nothing went upstream.
#[cfg(test)]
mod request_path_tests {
    use super::*;
    use crate::config::Config;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{GroupId, RequestHeader};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Harness {
        proxy: Arc<Proxy>,
        upstream_connections: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    async fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream_connections = Arc::new(AtomicUsize::new(0));
        let count = upstream_connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(sock);
            }
        });
        let toml = format!(
            r#"
            [proxy]
            state_dir = "{}"
            [clusters.source]
            bootstrap = ["{addr}"]
            [clusters.target]
            bootstrap = ["{addr}"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            "#,
            dir.path().join("state").display()
        );
        let config = Config::from_toml(&toml, Vec::<(String, String)>::new(), dir.path()).unwrap();
        Harness {
            proxy: Proxy::new(config, None).unwrap(),
            upstream_connections,
            _dir: dir,
        }
    }

    fn request<T: kafka_protocol::protocol::Encodable>(
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> RequestFrame {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("consumer-billing-1")));
        codec::parse_request(codec::encode_request(api, &header, body).unwrap()).unwrap()
    }

    /// Routes `frame` on a connection to `cluster`, as the connection does.
    async fn route_on(h: &Harness, cluster: &str, frame: &RequestFrame) -> Option<Action> {
        let view = h.proxy.cluster(cluster).unwrap().clone();
        let map = h.proxy.virtual_map(&view);
        let mut session = Session::new("10.0.0.9".parse().unwrap(), None);
        let mut ctx = Ctx {
            proxy: &h.proxy,
            routes: h.proxy.routes(),
            cluster: &view,
            map: &map,
            session: &mut session,
        };
        route(&mut ctx, frame).await.unwrap()
    }

    fn client_key() -> IdentityKey {
        IdentityKey::new(None, "consumer-billing-1", "10.0.0.9".parse().unwrap())
    }

    fn linked(h: &Harness) -> Vec<String> {
        h.proxy
            .identities
            .get(&client_key())
            .map(|i| i.groups.into_iter().collect())
            .unwrap_or_default()
    }

    fn answer<T: kafka_protocol::protocol::Encodable>(
        action: &Action,
        frame: &RequestFrame,
        h: &Harness,
        body: &T,
    ) -> Bytes {
        let Action::Forward {
            response: Some(fwd),
            ..
        } = action
        else {
            panic!("not forwarded: {action:?}");
        };
        let view = h.proxy.cluster("source").unwrap();
        let up = codec::encode_response(fwd.upstream_api, fwd.upstream_version, 7, body).unwrap();
        super::super::rewrite_response(
            fwd,
            frame.api,
            frame.version(),
            up,
            &h.proxy.virtual_map(view),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn groups_are_linked_only_when_the_broker_accepts() {
        let h = harness().await;
        let sync = request(
            ApiKey::SyncGroup,
            3,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_member_id(StrBytes::from_static_str("m-1"))
                .with_generation_id(1),
        );
        let action = route_on(&h, "source", &sync).await.unwrap();
        assert!(linked(&h).is_empty(), "the request alone links nothing");
        let refused =
            SyncGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code());
        answer(&action, &sync, &h, &refused);
        assert!(linked(&h).is_empty(), "a refused SyncGroup links nothing");

        let action = route_on(&h, "source", &sync).await.unwrap();
        let out = answer(&action, &sync, &h, &SyncGroupResponse::default());
        assert_eq!(linked(&h), ["billing"]);
        // The client gets the upstream's answer as it was.
        let (_, resp) =
            codec::decode_response::<SyncGroupResponse>(ApiKey::SyncGroup, 3, out).unwrap();
        assert_eq!(resp.error_code, 0);
        assert_eq!(h.upstream_connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn offset_commits_link_only_with_a_committed_partition() {
        let h = harness().await;
        let commit = request(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_generation_id_or_member_epoch(-1),
        );
        let partition = |code: i16| {
            OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default()
                .with_name(topic_name("orders"))
                .with_partitions(vec![OffsetCommitResponsePartition::default()
                    .with_partition_index(0)
                    .with_error_code(code)])])
        };
        let action = route_on(&h, "source", &commit).await.unwrap();
        answer(
            &action,
            &commit,
            &h,
            &partition(ResponseError::GroupAuthorizationFailed.code()),
        );
        assert!(linked(&h).is_empty());
        let action = route_on(&h, "source", &commit).await.unwrap();
        answer(&action, &commit, &h, &partition(0));
        assert_eq!(linked(&h), ["billing"]);
    }

    #[tokio::test]
    async fn heartbeats_refresh_links_but_never_create_them() {
        let h = harness().await;
        let beat = request(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_member_id(StrBytes::from_static_str("m-1")),
        );
        let action = route_on(&h, "source", &beat).await.unwrap();
        answer(&action, &beat, &h, &HeartbeatResponse::default());
        assert!(linked(&h).is_empty());
    }

    fn produce_with_producer_id(vpid: i64) -> RequestFrame {
        let hex: String = include_str!("../switch/testdata/java_batch.hex")
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        let mut batch: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        producers::patch_batch(&mut batch, vpid, 0, 0);
        request(
            ApiKey::Produce,
            8,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name("payments"))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch)))])]),
        )
    }

    #[tokio::test]
    async fn a_forged_producer_id_is_refused_without_going_upstream() {
        let h = harness().await;
        let target = h.proxy.cluster_index("target");
        // An id "issued by target" that target never issued, written on source.
        let forged = producers::to_virtual(4242, target);
        let frame = produce_with_producer_id(forged);
        let Some(Action::Respond(out)) = route_on(&h, "source", &frame).await else {
            panic!("the proxy must answer itself");
        };
        let (_, resp) = codec::decode_response::<ProduceResponse>(ApiKey::Produce, 8, out).unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(resp.responses[0].name.as_str(), "payments");
        assert_eq!(
            ResponseError::try_from_code(p.error_code),
            Some(ResponseError::UnknownProducerId)
        );
        assert!(h.proxy.producers.is_empty(), "no entry for a forged id");
        // Give a stray connection attempt time to land before checking.
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(h.upstream_connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn issued_ids_are_the_ones_that_may_write_abroad() {
        let h = harness().await;
        let init = request(
            ApiKey::InitProducerId,
            2,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        let action = route_on(&h, "target", &init).await.unwrap();
        // A refused InitProducerId issues nothing.
        answer(
            &action,
            &init,
            &h,
            &InitProducerIdResponse::default()
                .with_error_code(ResponseError::CoordinatorLoadInProgress.code())
                .with_producer_id(ProducerId(-1)),
        );
        assert!(h.proxy.producers.is_empty());
        let out = answer(
            &action,
            &init,
            &h,
            &InitProducerIdResponse::default().with_producer_id(ProducerId(4242)),
        );
        let (_, resp) =
            codec::decode_response::<InitProducerIdResponse>(ApiKey::InitProducerId, 2, out)
                .unwrap();
        let vpid = resp.producer_id.0;
        assert_eq!(
            producers::from_virtual(vpid),
            (h.proxy.cluster_index("target"), 4242)
        );
        assert!(h.proxy.producers.knows(vpid));
    }
}
