//! Group admin APIs across clusters: an admin client sees one cluster for groups
//! as for topics (docs/merged-view.md, "Offsets, groups and the cluster"). On a
//! connection to cluster C, ListGroups lists only the groups routed to C;
//! DescribeGroups and OffsetFetch v8 batches get the proxy's NOT_COORDINATOR for
//! groups routed elsewhere, merged in the order asked with C's answers, whose
//! topic names are made logical; DescribeCluster shows the brokers and controller
//! the routed Metadata shows.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeClusterRequest,
    DescribeClusterResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
    ListGroupsResponse, MetadataRequest, MetadataResponse, OffsetFetchRequest, OffsetFetchResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::context::{forward, Ctx, RouteError};
use super::{metadata, offsets, Action, ResponseRewrite};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;
use crate::routes::RouteTable;

const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();

/// physical → logical names of the topics renamed on one cluster.
pub type Renames = HashMap<TopicName, TopicName>;

/// ListGroups, DescribeGroups and DescribeCluster: with one cluster, forwarded
/// (DescribeCluster rewritten to virtual brokers); with several, one view of
/// groups and brokers as described in the module docs.
pub(crate) async fn handle(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    if ctx.shared.multi_cluster() {
        if let Some(action) = route(ctx, frame).await? {
            return Ok(action);
        }
    }
    let rewrite = match frame.api {
        ApiKey::DescribeCluster => ResponseRewrite::DescribeCluster,
        _ => ResponseRewrite::None,
    };
    Ok(forward(frame, frame.bytes.clone(), rewrite))
}

/// ListGroups, DescribeGroups, DescribeCluster, and an OffsetFetch v8 naming
/// several groups, across clusters. `None`: forwarded as it is.
pub(crate) async fn route(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let here = ctx.cluster.name().to_string();
    let (plan, bytes) = match frame.api {
        ApiKey::ListGroups => {
            let (routes, cluster) = (ctx.routes.clone(), here);
            let rewrite = ResponseRewrite::ListGroups { routes, cluster };
            return Ok(Some(forward(frame, frame.bytes.clone(), rewrite)));
        }
        ApiKey::DescribeCluster => return describe_cluster(ctx, frame).await,
        ApiKey::DescribeGroups => {
            let mut req: DescribeGroupsRequest = frame.decode()?;
            let plan = GroupsPlan::new(&ctx.routes, &here, req.groups.iter().map(|g| &g.0));
            req.groups.retain(|g| plan.is_here(g));
            (plan, codec::encode_request(frame.api, &frame.header, &req)?)
        }
        ApiKey::OffsetFetch => {
            let mut req: OffsetFetchRequest = frame.decode()?;
            let ids = req.groups.iter().map(|g| &g.group_id.0);
            let plan = GroupsPlan::new(&ctx.routes, &here, ids);
            req.groups.retain(|g| plan.is_here(&g.group_id));
            for g in &mut req.groups {
                for t in g.topics.iter_mut().flatten() {
                    t.name = topic(&ctx.routes.physical_topic(&t.name, &here));
                }
            }
            (plan, codec::encode_request(frame.api, &frame.header, &req)?)
        }
        _ => return Ok(None),
    };
    if plan.is_noop() {
        return Ok(None);
    }
    if plan.asked.iter().any(|(_, here)| !*here) {
        metrics::steered(super::api_name(frame.api), &here);
    }
    if plan.asked.iter().any(|(_, here)| *here) {
        return Ok(Some(forward(
            frame,
            bytes,
            ResponseRewrite::Groups(Box::new(plan)),
        )));
    }
    // Nothing for this cluster: the proxy's answers alone.
    let (api, v, id) = (frame.api, frame.version(), frame.correlation_id());
    let empty = match api {
        ApiKey::DescribeGroups => {
            codec::encode_response(api, v, id, &DescribeGroupsResponse::default())?
        }
        _ => codec::encode_response(api, v, id, &OffsetFetchResponse::default())?,
    };
    Ok(Some(Action::Respond(rewrite_groups(empty, api, v, &plan)?)))
}

// -------------------------------------------------------------- ListGroups

/// Keeps the groups whose route names `cluster`.
pub fn routed_here(resp: &mut ListGroupsResponse, routes: &RouteTable, cluster: &str) -> bool {
    let before = resp.groups.len();
    resp.groups
        .retain(|g| routes.group_cluster(&g.group_id) == cluster);
    resp.groups.len() != before
}

pub fn rewrite_list_groups(
    frame: Bytes,
    version: i16,
    routes: &RouteTable,
    cluster: &str,
) -> Result<Bytes, DecodeError> {
    let api = ApiKey::ListGroups;
    let (h, mut resp) = codec::decode_response::<ListGroupsResponse>(api, version, frame.clone())?;
    if !routed_here(&mut resp, routes, cluster) {
        return Ok(frame);
    }
    codec::encode_response(api, version, h.correlation_id, &resp)
}

// ----------------------------------------- DescribeGroups, OffsetFetch (v8)

/// A request's groups in the order asked, each with whether it is routed to the
/// connection's cluster, and that cluster's renames.
#[derive(Debug)]
pub struct GroupsPlan {
    asked: Vec<(StrBytes, bool)>,
    renames: Renames,
}

impl GroupsPlan {
    /// Which of `groups` are coordinated by `here`, and the renames there.
    pub fn new<'g>(
        routes: &RouteTable,
        here: &str,
        groups: impl Iterator<Item = &'g StrBytes>,
    ) -> Self {
        GroupsPlan {
            asked: groups
                .map(|g| (g.clone(), routes.group_cluster(g) == here))
                .collect(),
            renames: routes
                .renamed_on(here)
                .map(|(p, l)| (topic(p), topic(l)))
                .collect(),
        }
    }

    fn is_here(&self, group: &str) -> bool {
        self.asked
            .iter()
            .any(|(g, here)| *here && g.as_str() == group)
    }

    fn is_noop(&self) -> bool {
        self.asked.iter().all(|(_, here)| *here) && self.renames.is_empty()
    }

    /// The entries the client gets, in the order asked: for a group here the
    /// upstream's first unused entry of that id (none if it left the group out),
    /// `refused` for the others. What else the upstream answered is dropped.
    fn merge<T>(&self, up: Vec<T>, id: fn(&T) -> &str, refused: fn(&StrBytes) -> T) -> Vec<T> {
        let mut by_id: HashMap<String, VecDeque<T>> = HashMap::new();
        for e in up {
            by_id.entry(id(&e).to_string()).or_default().push_back(e);
        }
        let mut take = |g: &StrBytes| by_id.get_mut(g.as_str())?.pop_front();
        let entry = |(g, here): &(StrBytes, bool)| if *here { take(g) } else { Some(refused(g)) };
        self.asked.iter().filter_map(entry).collect()
    }
}

fn topic(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A DescribeGroups answer as the client gets it under `plan`.
pub fn describe_groups(
    mut resp: DescribeGroupsResponse,
    plan: &GroupsPlan,
) -> DescribeGroupsResponse {
    let refused = |g: &StrBytes| {
        let id = GroupId(g.clone());
        DescribedGroup::default()
            .with_group_id(id)
            .with_error_code(NOT_COORDINATOR)
    };
    resp.groups = plan.merge(std::mem::take(&mut resp.groups), |g| &g.group_id, refused);
    let consumers = resp
        .groups
        .iter_mut()
        .filter(|g| g.protocol_type.as_str() == "consumer");
    for m in consumers.flat_map(|g| g.members.iter_mut()) {
        if let Some(b) = logical_subscription(&m.member_metadata, &plan.renames) {
            m.member_metadata = b;
        }
        if let Some(b) = logical_assignment(&m.member_assignment, &plan.renames) {
            m.member_assignment = b;
        }
    }
    resp
}

/// A consumer-protocol message (a version, then the body at that version) with
/// `relabel` applied, encoded again at its version. `None` when `relabel` changed
/// nothing, or the message is not safely readable (a version the decoder does not
/// know, bytes it leaves over): then it is passed on as it is, no field lost.
fn relabel<T: Decodable + Encodable>(
    bytes: &Bytes,
    relabel: impl FnOnce(&mut T) -> bool,
) -> Option<Bytes> {
    let mut b = bytes.clone();
    let version = (b.remaining() >= 2)
        .then(|| b.get_i16())
        .filter(|v| (0..=3).contains(v))?;
    let mut msg = T::decode(&mut b, version)
        .ok()
        .filter(|_| b.remaining() == 0)?;
    if !relabel(&mut msg) {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_i16(version);
    msg.encode(&mut out, version).ok()?;
    Some(out.freeze())
}

/// A member's subscription with renamed topics under their logical names.
pub fn logical_subscription(bytes: &Bytes, renames: &Renames) -> Option<Bytes> {
    relabel(bytes, |s: &mut ConsumerProtocolSubscription| {
        let mut changed = false;
        for t in &mut s.topics {
            if let Some(l) = renames.get(&*t) {
                *t = l.0.clone();
                changed = true;
            }
        }
        s.owned_partitions
            .iter_mut()
            .fold(changed, |c, p| rename(&mut p.topic, renames) | c)
    })
}

/// A member's assignment with renamed topics under their logical names.
pub fn logical_assignment(bytes: &Bytes, renames: &Renames) -> Option<Bytes> {
    relabel(bytes, |a: &mut ConsumerProtocolAssignment| {
        let parts = a.assigned_partitions.iter_mut();
        parts.fold(false, |c, p| rename(&mut p.topic, renames) | c)
    })
}

fn rename(name: &mut TopicName, renames: &Renames) -> bool {
    match renames.get(name) {
        Some(l) => {
            *name = l.clone();
            true
        }
        None => false,
    }
}

/// Names a list of topic entries logically: a topic named as a renamed topic's
/// logical name is the cluster's own topic of that name, not the one clients mean,
/// and is dropped; physical names become logical ones.
pub fn logical_topics<T>(
    topics: &mut Vec<T>,
    renames: &Renames,
    name: impl Fn(&mut T) -> &mut TopicName,
) {
    if renames.is_empty() {
        return;
    }
    let hidden: HashSet<&TopicName> = renames
        .values()
        .filter(|l| !renames.contains_key(*l))
        .collect();
    topics.retain_mut(|t| !hidden.contains(&*name(t)));
    for t in topics.iter_mut() {
        rename(name(t), renames);
    }
}

/// An OffsetFetch v8 answer as the client gets it under `plan`.
pub fn offset_fetch(mut resp: OffsetFetchResponse, plan: &GroupsPlan) -> OffsetFetchResponse {
    let refused = |g: &StrBytes| {
        let id = GroupId(g.clone());
        OffsetFetchResponseGroup::default()
            .with_group_id(id)
            .with_error_code(NOT_COORDINATOR)
    };
    resp.groups = plan.merge(std::mem::take(&mut resp.groups), |g| &g.group_id, refused);
    logical_offsets(&mut resp, &plan.renames);
    resp
}

/// An OffsetFetch answer with logical topic names only and no committed epochs.
fn logical_offsets(resp: &mut OffsetFetchResponse, renames: &Renames) {
    offsets::clear_offset_fetch_epochs(resp);
    logical_topics(&mut resp.topics, renames, |t| &mut t.name);
    for g in &mut resp.groups {
        logical_topics(&mut g.topics, renames, |t| &mut t.name);
    }
}

pub fn rewrite_groups(
    frame: Bytes,
    api: ApiKey,
    v: i16,
    plan: &GroupsPlan,
) -> Result<Bytes, DecodeError> {
    if api == ApiKey::DescribeGroups {
        let (h, resp) = codec::decode_response::<DescribeGroupsResponse>(api, v, frame)?;
        return codec::encode_response(api, v, h.correlation_id, &describe_groups(resp, plan));
    }
    let (h, resp) = codec::decode_response::<OffsetFetchResponse>(api, v, frame)?;
    codec::encode_response(api, v, h.correlation_id, &offset_fetch(resp, plan))
}

/// OffsetFetch of one group on a cluster with renamed topics (routing's
/// `offsets_renamed`).
pub fn rewrite_offset_fetch_renamed(
    frame: Bytes,
    v: i16,
    renames: &Renames,
) -> Result<Bytes, DecodeError> {
    let api = ApiKey::OffsetFetch;
    let (h, mut resp) = codec::decode_response::<OffsetFetchResponse>(api, v, frame)?;
    logical_offsets(&mut resp, renames);
    codec::encode_response(api, v, h.correlation_id, &resp)
}

// --------------------------------------------------------- DescribeCluster

/// Brokers alone need no view of topics.
struct NoTopics;

impl metadata::TopicView for NoTopics {
    fn cluster_of(&self, _: &str) -> String {
        String::new()
    }
    fn physical(&self, topic: &str, _: &str) -> String {
        topic.to_string()
    }
    fn logical(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// DescribeCluster for brokers (endpoint type 1): each cluster is asked for
/// Metadata of no topics, merged as the routed Metadata is. A cluster that does not
/// answer contributes no brokers; when none does, REQUEST_TIMED_OUT. Controller
/// endpoints (type 2) are the connection's cluster's.
async fn describe_cluster(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: DescribeClusterRequest = frame.decode()?;
    if frame.version() >= 1 && req.endpoint_type != 1 {
        return Ok(None);
    }
    let timeout = ctx.call_timeout();
    let ops = req.include_cluster_authorized_operations;
    let mut answers = Vec::new();
    for c in &ctx.shared.clusters() {
        let mut response = None;
        if let Some(v) = c.version_for(ApiKey::Metadata, 9).filter(|v| *v >= 1) {
            let ask = MetadataRequest::default().with_topics(Some(Vec::new()));
            let ask = ask.with_include_cluster_authorized_operations(ops && v >= 8);
            match c
                .call::<_, MetadataResponse>(ApiKey::Metadata, v, &ask, timeout)
                .await
            {
                Ok(mut r) => {
                    metadata::rewrite_metadata(&mut r, &ctx.shared.virtual_map(c));
                    response = Some(r);
                }
                Err(e) => {
                    tracing::debug!(cluster = c.name(), error = %e, "DescribeCluster: no metadata")
                }
            }
        }
        let cluster = c.name().to_string();
        answers.push(metadata::ClusterAnswer { cluster, response });
    }
    let answered = answers.iter().any(|a| a.response.is_some());
    let merged = metadata::merge(answers, Some(&[]), &ctx.routes.default_cluster, &NoTopics);
    let broker = |b: MetadataResponseBroker| {
        let d = DescribeClusterBroker::default()
            .with_broker_id(b.node_id)
            .with_rack(b.rack);
        d.with_host(b.host).with_port(b.port)
    };
    let mut resp = DescribeClusterResponse::default()
        .with_throttle_time_ms(merged.throttle_time_ms)
        .with_cluster_id(StrBytes::from_string(ctx.map.cluster_id.clone()))
        .with_controller_id(merged.controller_id)
        .with_brokers(merged.brokers.into_iter().map(broker).collect());
    if ops {
        resp.cluster_authorized_operations = merged.cluster_authorized_operations;
    }
    if !answered {
        resp.error_code = ResponseError::RequestTimedOut.code();
    }
    let (v, id) = (frame.version(), frame.correlation_id());
    Ok(Some(Action::Respond(codec::encode_response(
        frame.api, v, id, &resp,
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use kafka_protocol::messages::list_groups_response::ListedGroup;
    use std::path::Path;

    fn routes() -> RouteTable {
        let c = Config::from_toml(
            "[clusters.source]\nbootstrap = [\"s:9092\"]\n\
             [clusters.target]\nbootstrap = [\"t:9092\"]\nnode_id_offset = 1000\n\
             [routes]\ndefault_cluster = \"source\"\n\
             [routes.topics.\"orders\"]\nrename = { target = \"source.orders\" }\n\
             [routes.groups.\"billing\"]\ncluster = \"target\"\n",
            Vec::<(String, String)>::new(),
            Path::new("."),
        )
        .unwrap();
        RouteTable::new(1, &c)
    }

    fn listed(groups: &[&str]) -> ListGroupsResponse {
        ListGroupsResponse::default().with_groups(
            groups
                .iter()
                .map(|g| {
                    ListedGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.to_string())))
                })
                .collect(),
        )
    }

    #[test]
    fn each_cluster_lists_only_the_groups_routed_to_it() {
        let r = routes();
        let ids = |resp: &ListGroupsResponse| -> Vec<String> {
            resp.groups.iter().map(|g| g.group_id.to_string()).collect()
        };
        let mut source = listed(&["billing", "shared", "only-s"]);
        assert!(routed_here(&mut source, &r, "source"));
        assert_eq!(ids(&source), ["shared", "only-s"]);
        let mut target = listed(&["billing", "shared", "only-t"]);
        assert!(routed_here(&mut target, &r, "target"));
        assert_eq!(ids(&target), ["billing"]);
        let mut unchanged = listed(&["billing"]);
        assert!(!routed_here(&mut unchanged, &r, "target"));
    }

    fn versioned<T: Encodable>(version: i16, msg: &T) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(version);
        msg.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn consumer_protocol_names_become_logical_losslessly() {
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        let renames: Renames = [(topic("source.orders"), topic("orders"))].into();
        let names = |n: &[&str]| {
            n.iter()
                .map(|t| StrBytes::from_string(t.to_string()))
                .collect()
        };
        for version in 0..=3i16 {
            let sub = ConsumerProtocolSubscription::default()
                .with_topics(names(&["source.orders", "x"]))
                .with_user_data(Some(Bytes::from_static(b"u")));
            let out = logical_subscription(&versioned(version, &sub), &renames).unwrap();
            let expect = sub.clone().with_topics(names(&["orders", "x"]));
            assert_eq!(out, versioned(version, &expect));
            let part = TopicPartition::default().with_topic(topic("source.orders"));
            let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![part]);
            let out = logical_assignment(&versioned(version, &a), &renames).unwrap();
            let mut expect = a.clone();
            expect.assigned_partitions[0].topic = topic("orders");
            assert_eq!(out, versioned(version, &expect));
        }
        // Nothing to rename, an unknown version, bytes left over: left as they are.
        let sub = ConsumerProtocolSubscription::default().with_topics(names(&["source.orders"]));
        let plain = versioned(3, &ConsumerProtocolSubscription::default());
        assert!(logical_subscription(&plain, &renames).is_none());
        let mut newer = versioned(3, &sub).to_vec();
        newer[1] = 4;
        assert!(logical_subscription(&Bytes::from(newer.clone()), &renames).is_none());
        newer[1] = 3;
        newer.push(0);
        assert!(logical_subscription(&Bytes::from(newer), &renames).is_none());
    }

    #[test]
    fn groups_are_merged_in_the_order_asked() {
        let asked = ["billing", "shared", "billing", "shared"].map(StrBytes::from_static_str);
        let plan = GroupsPlan::new(&routes(), "source", asked.iter());
        let group =
            |g: &str| DescribedGroup::default().with_group_id(GroupId(g.to_string().into()));
        let up =
            DescribeGroupsResponse::default().with_groups(vec![group("extra"), group("shared")]);
        let out = describe_groups(up, &plan);
        let got: Vec<_> = out
            .groups
            .iter()
            .map(|g| (g.group_id.as_str(), g.error_code))
            .collect();
        // The upstream answered `shared` once and a group not asked: dropped.
        assert_eq!(got, [("billing", 16), ("shared", 0), ("billing", 16)]);
    }
}
