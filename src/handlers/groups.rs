//! Group coordination APIs and the offsets a group commits.
//!
//! FindCoordinator names a broker, so its answer is rewritten to the virtual broker
//! in front of it; with several clusters it is answered from each group's cluster.
//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit and OffsetFetch sent
//! to a cluster that does not coordinate the group get NOT_COORDINATOR; accepted
//! ones link the client's identity to the group (DESIGN.md decision 8); a running
//! group switch may hold, refuse or settle them (switch::groups).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::context::*;
use super::group_link::{with_group_link, GroupLink, SyncSettle};
use super::{offsets, Action, ResponseRewrite, VirtualMap};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;
use crate::switch::groups::{Release, Verdict};

/// Rewrites a FindCoordinator response in place: both the single-key form (v0–v3)
/// and the batched `coordinators` list (v4+).
pub fn rewrite_find_coordinator(
    resp: &mut FindCoordinatorResponse,
    version: i16,
    map: &VirtualMap,
) {
    // v4+ has only the batched list; the single-key fields must stay at defaults.
    if version < 4 && resp.node_id.0 >= 0 {
        resp.node_id.0 = map.to_virtual(resp.node_id.0);
        resp.host = StrBytes::from_string(map.host(resp.node_id.0));
        resp.port = map.port(resp.node_id.0);
    }
    for c in &mut resp.coordinators {
        if c.node_id.0 >= 0 {
            c.node_id.0 = map.to_virtual(c.node_id.0);
            c.host = StrBytes::from_string(map.host(c.node_id.0));
            c.port = map.port(c.node_id.0);
        }
    }
}

pub fn rewrite_find_coordinator_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<FindCoordinatorResponse>(ApiKey::FindCoordinator, version, frame)?;
    rewrite_find_coordinator(&mut resp, version, map);
    codec::encode_response(
        ApiKey::FindCoordinator,
        version,
        header.correlation_id,
        &resp,
    )
}

// --------------------------------------------------- routed group requests

/// FindCoordinator: a group's coordinator is looked up on the group's cluster and
/// named as the virtual broker in front of it. Transactional ids, and groups of the
/// connection's own cluster, are asked where the connection forwards.
pub(crate) async fn find_coordinator(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Action, RouteError> {
    let req: FindCoordinatorRequest = frame.decode()?;
    let here_only = || {
        Ok(forward(
            frame,
            frame.bytes.clone(),
            ResponseRewrite::FindCoordinator,
        ))
    };
    if req.key_type != 0 {
        return here_only();
    }
    let version = frame.version();
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let here = ctx.here().to_string();
    if keys.iter().all(|k| ctx.routes.group_cluster(k) == here) {
        return here_only();
    }
    // Ask each group's cluster for its coordinator.
    let timeout = ctx.call_timeout();
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
            .shared
            .cluster(&cluster_name)
            .cloned()
            .expect("validated cluster names");
        let map = ctx.shared.virtual_map(&cluster);
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
                rewrite_find_coordinator(&mut r, version, &map);
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
    respond(frame, &out)
}

/// Group-scoped APIs: link the identity to the group; apply a running group switch
/// (PROTOCOL.md §3); steer with NOT_COORDINATOR when the group lives on another
/// cluster.
pub(crate) async fn group_api(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Action, RouteError> {
    if !ctx.shared.multi_cluster() {
        return Ok(plain(frame)?);
    }
    // Decoded once; offset requests are used again below.
    let mut offsets_req = Offsets::Other;
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
            let ids = (r.group_id.to_string(), r.member_id.to_string());
            offsets_req = Offsets::Commit(r);
            ids
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = frame.decode()?;
            if frame.version() >= 8 {
                match req.groups.as_slice() {
                    [one] => {
                        let ids = (one.group_id.to_string(), String::new());
                        offsets_req = Offsets::Fetch(req);
                        ids
                    }
                    // Several groups in one OffsetFetch: each answered from its
                    // own cluster's view (group_admin).
                    _ => {
                        return match super::group_admin::route(ctx, frame).await? {
                            Some(action) => Ok(action),
                            None => Ok(plain(frame)?),
                        }
                    }
                }
            } else {
                let ids = (req.group_id.to_string(), String::new());
                offsets_req = Offsets::Fetch(req);
                ids
            }
        }
        _ => return Ok(plain(frame)?),
    };
    if ctx.shared.holding() {
        // Out of the coordination group: this group may be switching without this
        // instance, so neither its old nor its new coordinator is served from here.
        return group_error(frame, COORDINATOR_NOT_AVAILABLE);
    }
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
    let switches = &ctx.shared.group_switches();
    if switches.busy() {
        let here = ctx.here().to_string();
        let mut verdict = switches.verdict(&group, frame.api, &member, &here);
        if let Verdict::Wait(mut rx) = verdict {
            // A rejoin during a switch waits for its flip (or its end).
            let _ = tokio::time::timeout(JOIN_HOLD_MAX, rx.wait_for(|r| *r != Release::Held)).await;
            switches.join_released(&group);
            ctx.routes = ctx.shared.routes();
            verdict = switches.verdict(&group, frame.api, &member, &here);
            if let Verdict::Wait(_) = verdict {
                switches.join_released(&group);
            }
        }
        match verdict {
            Verdict::Rebalance => return group_error(frame, REBALANCE_IN_PROGRESS),
            Verdict::UnknownMember => return group_error(frame, UNKNOWN_MEMBER_ID),
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
                    return group_error(frame, REBALANCE_IN_PROGRESS);
                }
                ApiKey::SyncGroup => {
                    let verdict = switches.sync_verdict(&group, &member, here);
                    then = ResponseRewrite::Settle(Box::new(SyncSettle {
                        switches: ctx.shared.group_switches().clone(),
                        group: group.clone(),
                        member: member.clone(),
                        key: key.clone(),
                        verdict,
                    }));
                }
                _ => {}
            }
        }
        let action = offsets_action(ctx, frame, offsets_req)?;
        let Some(refresh_only) = link else {
            return Ok(action);
        };
        let link = GroupLink {
            identities: ctx.shared.identities().clone(),
            key,
            group,
            refresh_only,
            then,
        };
        return Ok(with_group_link(action, link));
    }
    metrics::steered(super::api_name(frame.api), here);
    group_error(frame, NOT_COORDINATOR)
}

/// An offset request of a group, decoded once by [`group_api`].
enum Offsets {
    Commit(OffsetCommitRequest),
    Fetch(OffsetFetchRequest),
    /// Join, Sync, Heartbeat, Leave: forwarded as they are.
    Other,
}

/// What goes upstream for a group request on its own cluster: committed epochs
/// cleared (PROTOCOL.md §1) and, where topics have other names on this cluster
/// (`rename`), physical names up and logical ones back.
fn offsets_action(ctx: &Ctx<'_>, frame: &RequestFrame, req: Offsets) -> Result<Action, RouteError> {
    let here = ctx.here();
    let reverse = reverse_renames(&ctx.routes, here);
    let physical = |name: &mut TopicName, changed: &mut bool| {
        let p = ctx.routes.physical_topic(name, here);
        if p != name.as_str() {
            *name = topic_name(&p);
            *changed = true;
        }
    };
    let renamed = |reverse: HashMap<TopicName, TopicName>, plain: ResponseRewrite| {
        if reverse.is_empty() {
            plain
        } else {
            ResponseRewrite::OffsetsRenamed(reverse)
        }
    };
    match req {
        Offsets::Commit(mut req) => {
            let mut changed = offsets::clear_offset_commit_epochs(&mut req);
            if !reverse.is_empty() {
                for t in &mut req.topics {
                    physical(&mut t.name, &mut changed);
                }
            }
            let bytes = codec::reencode_request(frame, changed, &req)?;
            Ok(forward(
                frame,
                bytes,
                renamed(reverse, ResponseRewrite::None),
            ))
        }
        Offsets::Fetch(mut req) => {
            let mut changed = false;
            if !reverse.is_empty() {
                for t in req.topics.iter_mut().flatten() {
                    physical(&mut t.name, &mut changed);
                }
                for g in &mut req.groups {
                    for t in g.topics.iter_mut().flatten() {
                        physical(&mut t.name, &mut changed);
                    }
                }
            }
            // Asking for every topic: the answer carries physical names.
            let all = req.topics.is_none() || req.groups.iter().any(|g| g.topics.is_none());
            let bytes = codec::reencode_request(frame, changed, &req)?;
            let rewrite = if changed || all {
                renamed(reverse, ResponseRewrite::OffsetFetch)
            } else {
                ResponseRewrite::OffsetFetch
            };
            Ok(forward(frame, bytes, rewrite))
        }
        Offsets::Other => Ok(plain(frame)?),
    }
}

/// Names an OffsetCommit or OffsetFetch response logically (physical → logical).
/// OffsetFetch also hides a topic that carries a renamed topic's logical name on
/// this cluster (group_admin), as Metadata does.
pub fn rewrite_offsets_renamed(
    frame: Bytes,
    api: ApiKey,
    version: i16,
    reverse: &HashMap<TopicName, TopicName>,
) -> Result<Bytes, DecodeError> {
    match api {
        ApiKey::OffsetCommit => {
            let (h, mut resp) =
                codec::decode_response::<OffsetCommitResponse>(api, version, frame)?;
            for t in &mut resp.topics {
                if let Some(l) = reverse.get(&t.name) {
                    t.name = l.clone();
                }
            }
            codec::encode_response(api, version, h.correlation_id, &resp)
        }
        ApiKey::OffsetFetch => {
            super::group_admin::rewrite_offset_fetch_renamed(frame, version, reverse)
        }
        _ => Ok(frame),
    }
}

/// How long a rejoin is held at most while its group switches.
const JOIN_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(120);
const REBALANCE_IN_PROGRESS: i16 = ResponseError::RebalanceInProgress.code();
const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
const UNKNOWN_MEMBER_ID: i16 = ResponseError::UnknownMemberId.code();

/// The proxy's own answer to a group request: `code` for the whole request.
pub(crate) fn group_error(frame: &RequestFrame, code: i16) -> Result<Action, RouteError> {
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

/// A group or offset request forwarded to the connection's cluster as it is,
/// with epochs cleared from committed offsets (PROTOCOL.md §1).
fn plain(frame: &RequestFrame) -> Result<Action, DecodeError> {
    let bytes = match frame.api {
        ApiKey::OffsetCommit => offsets::rewrite_offset_commit_request(frame)?,
        ApiKey::TxnOffsetCommit => offsets::rewrite_txn_offset_commit_request(frame)?,
        _ => frame.bytes.clone(),
    };
    let rewrite = match frame.api {
        ApiKey::OffsetFetch => ResponseRewrite::OffsetFetch,
        _ => ResponseRewrite::None,
    };
    Ok(forward(frame, bytes, rewrite))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_map;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::BrokerId;

    #[test]
    fn single_and_batched_coordinators_are_virtual() {
        let mut r = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("kafka-2"))
            .with_port(9092)
            .with_coordinators(vec![
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("g1"))
                    .with_node_id(BrokerId(3))
                    .with_host(StrBytes::from_static_str("kafka-3"))
                    .with_port(9092),
                // COORDINATOR_NOT_AVAILABLE: no node, nothing to map.
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("g2"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(kafka_protocol::ResponseError::CoordinatorNotAvailable.code()),
            ]);
        rewrite_find_coordinator(&mut r, 3, &test_map());
        assert_eq!(
            (r.node_id.0, r.host.as_str(), r.port),
            (1002, "proxy.local", 10102)
        );
        let c = &r.coordinators[0];
        assert_eq!(
            (c.node_id.0, c.host.as_str(), c.port),
            (1003, "proxy.local", 10103)
        );
        assert_eq!(r.coordinators[1].node_id.0, -1);
        assert_eq!(r.coordinators[1].host.as_str(), "");
    }

    #[test]
    fn v4_response_round_trips() {
        let r = FindCoordinatorResponse::default().with_coordinators(vec![Coordinator::default()
            .with_key(StrBytes::from_static_str("g1"))
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("kafka-1"))
            .with_port(9092)]);
        let frame = codec::encode_response(ApiKey::FindCoordinator, 4, 8, &r).unwrap();
        let out = rewrite_find_coordinator_frame(frame, 4, &test_map()).unwrap();
        let (_, back) =
            codec::decode_response::<FindCoordinatorResponse>(ApiKey::FindCoordinator, 4, out)
                .unwrap();
        assert_eq!(back.coordinators[0].node_id.0, 1001);
        assert_eq!(back.coordinators[0].port, 10101);
    }
}
