//! The per-request context every handler gets, the client connection's session,
//! and the small helpers handlers share: answering, forwarding, the read route.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::plan::ReadCheck;
use super::{Action, Forwarded, ResponseRewrite, VirtualMap};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::config::Config;
use crate::metrics;
use crate::routes::RouteTable;
use crate::switch::groups::GroupSwitches;
use crate::switch::identity::{Identities, IdentityKey};
use crate::switch::inflight::Inflight;
use crate::switch::producers::Producers;
use crate::upstream::{ClusterView, UpstreamError};

pub(crate) const NOT_LEADER_OR_FOLLOWER: i16 = ResponseError::NotLeaderOrFollower.code();
pub(crate) const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
pub(crate) const UNKNOWN_PRODUCER_ID: i16 = ResponseError::UnknownProducerId.code();

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
    pub(crate) key: Option<IdentityKey>,
    /// SASL progress, when the listener requires SASL.
    pub sasl: super::sasl::SaslState,
    /// Logical topics this connection's fetch session (KIP-227) may hold: those of
    /// its last full fetch and of every incremental one since. The broker keeps the
    /// session's partitions, so an incremental fetch may name none of them.
    pub(crate) fetch_session: std::collections::HashSet<String>,
    /// The routing table and groups `fetch_session` was last found all-here
    /// under: while neither changed (and no topic joined), an incremental fetch
    /// needs no check. The table is held, so its address cannot be reused.
    pub(crate) fetch_session_checked: Option<(Arc<RouteTable>, Vec<String>)>,
}

/// At most this many topics are remembered per fetch session; past it, every
/// incremental fetch ends the session (the client then sends a full fetch, which
/// the proxy can check).
pub(crate) const MAX_SESSION_TOPICS: usize = 10_000;

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
    pub(crate) fn key(&mut self, client_id: Option<&str>) -> &IdentityKey {
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

/// What a handler may use of the proxy's shared state: the clusters, the
/// registries of the cutover machinery, the running config. The proxy implements
/// it; handlers never see the proxy itself, and tests can supply their own.
pub trait Shared: Sync {
    /// The routing table as it is now (a handler that waited loads it again).
    fn routes(&self) -> Arc<RouteTable>;
    fn config(&self) -> Arc<Config>;
    /// Whether more than one cluster is configured (virtual producer ids, merged
    /// metadata, group attribution exist only then).
    fn multi_cluster(&self) -> bool;
    fn cluster(&self, name: &str) -> Option<&Arc<ClusterView>>;
    fn clusters(&self) -> Vec<Arc<ClusterView>>;
    /// Stable index of a cluster, used in virtual producer ids.
    fn cluster_index(&self, name: &str) -> usize;
    /// The id mapping and addresses clients see for one cluster's brokers.
    fn virtual_map(&self, cluster: &ClusterView) -> VirtualMap;
    /// The cluster and upstream broker behind a virtual broker id.
    fn resolve_virtual(&self, virtual_id: i32) -> Option<(Arc<ClusterView>, i32)>;
    fn identities(&self) -> &Identities;
    fn producers(&self) -> &Arc<Producers>;
    fn inflight(&self) -> &Arc<Inflight>;
    fn group_switches(&self) -> &Arc<GroupSwitches>;
    /// Whether this instance holds every write and group request: with
    /// `[coordination]`, it is not a member of the coordination group, or has not
    /// read the shared state since it became one (switch::membership).
    fn holding(&self) -> bool {
        false
    }
    /// The shared state of several instances, with `[coordination]`.
    fn coordinator(&self) -> Option<&Arc<crate::switch::coordination::Coordinator>> {
        None
    }
}

/// Everything a handler needs for one request: the routing table loaded once for
/// it (DESIGN.md decision 3), the cluster the connection forwards to, the
/// connection's session, and the shared state.
pub struct Ctx<'a> {
    pub shared: &'a dyn Shared,
    pub routes: Arc<RouteTable>,
    pub cluster: &'a Arc<ClusterView>,
    pub map: &'a VirtualMap,
    pub session: &'a mut Session,
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

impl Ctx<'_> {
    /// How long the proxy's own requests to a cluster (merged metadata, a
    /// coordinator lookup, a producer id) may take.
    pub(crate) fn call_timeout(&self) -> std::time::Duration {
        self.shared
            .config()
            .proxy
            .connect_timeout
            .max(std::time::Duration::from_secs(10))
    }

    pub(crate) fn here(&self) -> &str {
        self.cluster.name()
    }

    pub(crate) fn identity(&mut self, frame: &RequestFrame) -> IdentityKey {
        let client_id = frame.header.client_id.as_ref().map(|s| s.as_str());
        self.session.key(client_id).clone()
    }

    /// Cluster that serves reads of `topic` for a client linked to `groups`: their
    /// cluster when they agree on one (one group, or several routed alike), else the
    /// topic's `consume` route.
    pub(crate) fn read_cluster<'r>(
        routes: &'r RouteTable,
        groups: &[String],
        topic: &str,
    ) -> &'r str {
        let mut clusters = groups.iter().map(|g| routes.group_cluster(g));
        match clusters.next() {
            Some(first) if clusters.all(|c| c == first) => first,
            _ => routes.consume_cluster(topic),
        }
    }

    /// Cluster whose view of `topic` Metadata gives this connection.
    pub(crate) fn view_cluster(
        &self,
        role: Role,
        groups: &[String],
        seen: &Seen,
        topic: &str,
    ) -> String {
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
pub(crate) struct Seen {
    pub(crate) reads_only: bool,
    pub(crate) read: std::collections::BTreeSet<String>,
    pub(crate) written: std::collections::BTreeSet<String>,
}

pub(crate) fn respond<T: kafka_protocol::protocol::Encodable>(
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

pub(crate) fn forward(frame: &RequestFrame, bytes: Bytes, rewrite: ResponseRewrite) -> Action {
    Action::Forward {
        frame: bytes,
        response: Some(Forwarded {
            upstream_api: frame.api,
            upstream_version: frame.version(),
            rewrite,
        }),
    }
}

/// physical → logical names on `cluster` for exact rows with a rename there.
pub(crate) fn reverse_renames(routes: &RouteTable, cluster: &str) -> HashMap<TopicName, TopicName> {
    routes
        .renamed_on(cluster)
        .map(|(p, l)| (topic_name(p), topic_name(l)))
        .collect()
}

// ------------------------------------------------------------------- reads

/// A closure telling whether a logical topic is read from another cluster than
/// `here`, for this request's routes and group.
pub(crate) fn not_here(routes: &Arc<RouteTable>, groups: Vec<String>, here: &str) -> ReadCheck {
    let (routes, here) = (routes.clone(), here.to_string());
    ReadCheck(Arc::new(move |topic: &str| {
        Ctx::read_cluster(&routes, &groups, topic) != here
    }))
}

/// Marks the connection a reader and notes the topics its identity reads (logical
/// names); returns the groups the identity is linked to.
pub(crate) fn reader<'a>(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
    topics: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    ctx.session.role = Role::Reader;
    let key = ctx.identity(frame);
    ctx.shared.identities().note_read(&key, topics);
    let groups: Vec<String> = ctx
        .shared
        .identities()
        .get(&key)
        .map(|i| i.groups.into_iter().collect())
        .unwrap_or_default();
    if groups.is_empty() {
        metrics::unattributed_fetch();
    }
    groups
}
