//! Fetch. Record data is never touched; only the epoch fields around it are.
//!
//! Requests: `current_leader_epoch` and `last_fetched_epoch` go upstream as -1, so the
//! broker skips its epoch checks (an epoch from another cluster would fence the
//! fetch or report a divergence that never happened). Responses: the
//! `diverging_epoch` and `current_leader` hints are dropped and a preferred read
//! replica becomes a virtual broker id. When nothing needs changing, the original
//! bytes are forwarded, which is the common case.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;

use super::context::*;
use super::plan::Plan;
use super::{Action, ResponseRewrite, VirtualMap};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;

/// Clears client-sent epochs. Returns whether anything changed.
pub fn rewrite_request(req: &mut FetchRequest) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for p in &mut t.partitions {
            if p.current_leader_epoch != -1 || p.last_fetched_epoch != -1 {
                p.current_leader_epoch = -1;
                p.last_fetched_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

/// Drops epoch hints and maps broker ids. Returns whether anything changed.
pub fn rewrite_response(resp: &mut FetchResponse, map: &VirtualMap) -> bool {
    let mut changed = false;
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            if p.diverging_epoch.epoch != -1 || p.diverging_epoch.end_offset != -1 {
                p.diverging_epoch = Default::default();
                changed = true;
            }
            if p.current_leader.leader_id.0 != -1 || p.current_leader.leader_epoch != -1 {
                p.current_leader = Default::default();
                changed = true;
            }
            if p.preferred_read_replica.0 >= 0 {
                p.preferred_read_replica.0 = map.to_virtual(p.preferred_read_replica.0);
                changed = true;
            }
        }
    }
    if !resp.node_endpoints.is_empty() {
        resp.node_endpoints.clear();
        changed = true;
    }
    changed
}

/// The client's answer: epoch hints dropped and broker ids mapped, and with a
/// routing plan, the refused partitions merged back, topics named logically, and
/// records stripped for a held group. Unchanged answers go back as the
/// upstream's bytes, uncopied.
pub fn rewrite_response_frame(
    frame: Bytes,
    version: i16,
    plan: Option<&Plan>,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    // Versions before 11 carry none of the hint fields: with nothing routed,
    // skip decoding entirely.
    if plan.is_none() && version < 11 {
        return Ok(frame);
    }
    let (header, mut resp) =
        codec::decode_response::<FetchResponse>(ApiKey::Fetch, version, frame.clone())?;
    let mut changed = rewrite_response(&mut resp, map);
    if let Some(plan) = plan {
        changed |= fetch_errors(plan, &mut resp);
        if plan.strip_records {
            for t in &mut resp.responses {
                for p in &mut t.partitions {
                    p.records = Some(Bytes::new());
                    p.aborted_transactions = None;
                }
            }
            changed = true;
        }
    }
    if !changed {
        return Ok(frame);
    }
    codec::encode_response(ApiKey::Fetch, version, header.correlation_id, &resp)
}

/// The longest a held fetch waits before its empty answer.
const MAX_HELD_FETCH_WAIT_MS: i32 = 1000;

/// Fetch: with one cluster only the epochs change; with several, the partitions
/// read elsewhere are refused, a running group switch may hold the fetch, and a
/// fetch session holding a topic read elsewhere is ended.
pub(crate) async fn handle(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: FetchRequest = frame.decode()?;
    if !ctx.shared.multi_cluster() {
        let bytes = codec::reencode_request(frame, rewrite_request(&mut req), &req)?;
        return Ok(forward(frame, bytes, ResponseRewrite::Fetch(None)));
    }
    let groups = reader(ctx, frame, req.topics.iter().map(|t| t.topic.as_str()));
    // A group switch holds its members' fetches: they are answered without records
    // (after the client's own wait, so held clients do not spin).
    let switches = &ctx.shared.group_switches();
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
    // Out of the coordination group (or not caught up since joining): which
    // cluster a group reads may have changed elsewhere, and which group a client
    // belongs to may be known only to another instance so far.
    let held = held || ctx.shared.holding();
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
    changed |= rewrite_request(&mut req);
    if req.topics.is_empty() && req.forgotten_topics_data.is_empty() && !plan.refused.is_empty() {
        // Nothing left for this broker: answer at once instead of long-polling it.
        let mut resp = FetchResponse::default();
        fetch_errors(&plan, &mut resp);
        return respond(frame, &resp);
    }
    plan.not_here = Some(elsewhere);
    plan.strip_records = held;
    // Unchanged requests go upstream as their original bytes.
    let bytes = codec::reencode_request(frame, changed, &req)?;
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::Fetch(Some(Box::new(plan))),
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
pub(crate) fn fetch_errors(plan: &Plan, resp: &mut FetchResponse) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_map;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn request_epochs_are_cleared() {
        let mut req = FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                FetchPartition::default()
                    .with_current_leader_epoch(57)
                    .with_last_fetched_epoch(56),
                FetchPartition::default(),
            ])]);
        assert!(rewrite_request(&mut req));
        for p in &req.topics[0].partitions {
            assert_eq!((p.current_leader_epoch, p.last_fetched_epoch), (-1, -1));
        }
        assert!(!rewrite_request(&mut req), "second pass changes nothing");
    }

    #[test]
    fn response_hints_are_dropped_and_records_untouched() {
        let records = Bytes::from_static(b"opaque record batches");
        let mut resp =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![PartitionData::default()
                    .with_diverging_epoch(
                        EpochEndOffset::default().with_epoch(4).with_end_offset(10),
                    )
                    .with_current_leader(
                        LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(2))
                            .with_leader_epoch(9),
                    )
                    .with_preferred_read_replica(BrokerId(3))
                    .with_records(Some(records.clone()))])]);
        assert!(rewrite_response(&mut resp, &test_map()));
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.diverging_epoch, EpochEndOffset::default());
        assert_eq!(p.current_leader, LeaderIdAndEpoch::default());
        assert_eq!(p.preferred_read_replica.0, 1003);
        assert_eq!(p.records.as_ref(), Some(&records));
    }

    #[test]
    fn unchanged_response_is_forwarded_as_the_same_bytes() {
        let resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                PartitionData::default().with_records(Some(Bytes::from_static(b"abc")))
            ])]);
        let frame = codec::encode_response(ApiKey::Fetch, 12, 3, &resp).unwrap();
        let out = rewrite_response_frame(frame.clone(), 12, None, &test_map()).unwrap();
        assert_eq!(out.as_ptr(), frame.as_ptr(), "no copy when nothing changes");
    }
}
