//! Offset APIs: ListOffsets, OffsetCommit, TxnOffsetCommit, OffsetFetch and
//! OffsetForLeaderEpoch. Offsets pass through; leader epochs never do
//! (PROTOCOL.md §1): client-sent epochs go upstream as -1, upstream epochs reach
//! clients as -1, and OffsetForLeaderEpoch is answered from the partition's current
//! end offset, obtained with a ListOffsets on the same broker.

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, OffsetCommitRequest,
    OffsetFetchResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
    TxnOffsetCommitRequest,
};
use kafka_protocol::ResponseError;

use super::context::*;
use super::plan::Plan;
use super::{Action, Forwarded, ResponseRewrite};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;

/// ListOffsets version used in place of OffsetForLeaderEpoch: v2 is understood by
/// every broker from 2.0 to 4.x and carries the isolation level.
const EPOCH_LIST_OFFSETS_VERSION: i16 = 2;
const LATEST_TIMESTAMP: i64 = -1;

pub fn clear_list_offsets_epochs(req: &mut ListOffsetsRequest) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for p in &mut t.partitions {
            if p.current_leader_epoch != -1 {
                p.current_leader_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

pub fn clear_list_offsets_response_epochs(resp: &mut ListOffsetsResponse) -> bool {
    let mut changed = false;
    for t in &mut resp.topics {
        for p in &mut t.partitions {
            if p.leader_epoch != -1 {
                p.leader_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

/// The client's ListOffsets answer: leader epochs cleared, and with a routing
/// plan, the refused partitions merged back and topics named logically.
pub fn rewrite_list_offsets_frame(
    frame: Bytes,
    version: i16,
    plan: Option<&Plan>,
) -> Result<Bytes, DecodeError> {
    if plan.is_none() && version < 4 {
        return Ok(frame); // no leader_epoch field before v4
    }
    let (h, mut resp) =
        codec::decode_response::<ListOffsetsResponse>(ApiKey::ListOffsets, version, frame.clone())?;
    let mut changed = clear_list_offsets_response_epochs(&mut resp);
    if let Some(plan) = plan {
        resp = list_offsets_errors(plan, resp);
        changed = true;
    }
    if changed {
        codec::encode_response(ApiKey::ListOffsets, version, h.correlation_id, &resp)
    } else {
        Ok(frame)
    }
}

pub fn clear_offset_commit_epochs(req: &mut OffsetCommitRequest) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for p in &mut t.partitions {
            if p.committed_leader_epoch != -1 {
                p.committed_leader_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

pub fn rewrite_offset_commit_request(frame: &RequestFrame) -> Result<Bytes, DecodeError> {
    if frame.version() < 6 {
        return Ok(frame.bytes.clone()); // committed_leader_epoch appears in v6
    }
    let mut req: OffsetCommitRequest = frame.decode()?;
    if clear_offset_commit_epochs(&mut req) {
        codec::encode_request(frame.api, &frame.header, &req)
    } else {
        Ok(frame.bytes.clone())
    }
}

pub fn clear_txn_offset_commit_epochs(req: &mut TxnOffsetCommitRequest) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for p in &mut t.partitions {
            if p.committed_leader_epoch != -1 {
                p.committed_leader_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

pub fn rewrite_txn_offset_commit_request(frame: &RequestFrame) -> Result<Bytes, DecodeError> {
    if frame.version() < 2 {
        return Ok(frame.bytes.clone());
    }
    let mut req: TxnOffsetCommitRequest = frame.decode()?;
    if clear_txn_offset_commit_epochs(&mut req) {
        codec::encode_request(frame.api, &frame.header, &req)
    } else {
        Ok(frame.bytes.clone())
    }
}

/// Clears committed epochs in both the single-group (v0–v7) and batched (v8+) forms.
pub fn clear_offset_fetch_epochs(resp: &mut OffsetFetchResponse) -> bool {
    let mut changed = false;
    for t in &mut resp.topics {
        for p in &mut t.partitions {
            if p.committed_leader_epoch != -1 {
                p.committed_leader_epoch = -1;
                changed = true;
            }
        }
    }
    for g in &mut resp.groups {
        for t in &mut g.topics {
            for p in &mut t.partitions {
                if p.committed_leader_epoch != -1 {
                    p.committed_leader_epoch = -1;
                    changed = true;
                }
            }
        }
    }
    changed
}

pub fn rewrite_offset_fetch_frame(frame: Bytes, version: i16) -> Result<Bytes, DecodeError> {
    if version < 5 {
        return Ok(frame); // committed_leader_epoch appears in v5
    }
    let (h, mut resp) =
        codec::decode_response::<OffsetFetchResponse>(ApiKey::OffsetFetch, version, frame.clone())?;
    if clear_offset_fetch_epochs(&mut resp) {
        codec::encode_response(ApiKey::OffsetFetch, version, h.correlation_id, &resp)
    } else {
        Ok(frame)
    }
}

/// What a client asked in OffsetForLeaderEpoch: per topic, per partition, the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochQuery {
    pub topics: Vec<(TopicName, Vec<(i32, i32)>)>,
    /// Names sent upstream where they differ (physical → the client's logical name).
    pub renamed: Vec<(TopicName, TopicName)>,
}

/// Turns an OffsetForLeaderEpoch request into a ListOffsets(latest) request for the
/// same partitions, keeping the client's correlation id and client id.
pub fn epoch_request_as_list_offsets(
    frame: &RequestFrame,
) -> Result<(Bytes, EpochQuery, i16), DecodeError> {
    epoch_request_as_list_offsets_renamed(frame, frame.decode()?, |_| None)
}

/// Like [`epoch_request_as_list_offsets`], asking for `physical(name)` upstream
/// where it gives a name.
pub fn epoch_request_as_list_offsets_renamed(
    frame: &RequestFrame,
    req: OffsetForLeaderEpochRequest,
    physical: impl Fn(&TopicName) -> Option<TopicName>,
) -> Result<(Bytes, EpochQuery, i16), DecodeError> {
    let query = EpochQuery {
        topics: req
            .topics
            .iter()
            .map(|t| {
                (
                    t.topic.clone(),
                    t.partitions
                        .iter()
                        .map(|p| (p.partition, p.leader_epoch))
                        .collect(),
                )
            })
            .collect(),
        renamed: req
            .topics
            .iter()
            .filter_map(|t| physical(&t.topic).map(|p| (p, t.topic.clone())))
            .collect(),
    };
    let upstream = |name: &TopicName| {
        query
            .renamed
            .iter()
            .find(|(_, l)| l == name)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| name.clone())
    };
    let list = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(
            query
                .topics
                .iter()
                .map(|(name, parts)| {
                    ListOffsetsTopic::default()
                        .with_name(upstream(name))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|(p, _)| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(*p)
                                        .with_timestamp(LATEST_TIMESTAMP)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let header = frame
        .header
        .clone()
        .with_request_api_key(ApiKey::ListOffsets as i16)
        .with_request_api_version(EPOCH_LIST_OFFSETS_VERSION);
    let bytes = codec::encode_request(ApiKey::ListOffsets, &header, &list)?;
    Ok((bytes, query, EPOCH_LIST_OFFSETS_VERSION))
}

/// Builds the OffsetForLeaderEpoch answer: for every partition, the epoch the client
/// asked about ends at the partition's current end offset. The epoch is echoed (a
/// -1 epoch would make Java clients assume truncation), and the end offset is never
/// below the client's position, so validation passes without a seek.
pub fn epoch_answer(
    query: &EpochQuery,
    list: &ListOffsetsResponse,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::new();
    for (name, parts) in &query.topics {
        let upstream = query
            .renamed
            .iter()
            .find(|(_, l)| l == name)
            .map_or(name, |(p, _)| p);
        let listed = list.topics.iter().find(|t| &t.name == upstream);
        let partitions = parts
            .iter()
            .map(|(partition, epoch)| {
                let found = listed.and_then(|t| {
                    t.partitions
                        .iter()
                        .find(|p| p.partition_index == *partition)
                });
                match found {
                    Some(p) if p.error_code == 0 => EpochEndOffset::default()
                        .with_partition(*partition)
                        .with_leader_epoch(*epoch)
                        .with_end_offset(p.offset),
                    Some(p) => EpochEndOffset::default()
                        .with_partition(*partition)
                        .with_error_code(p.error_code),
                    // UNKNOWN_TOPIC_OR_PARTITION: retriable for the client.
                    None => EpochEndOffset::default()
                        .with_partition(*partition)
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                }
            })
            .collect();
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(name.clone())
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub fn epoch_response_from_list_offsets(
    frame: Bytes,
    list_version: i16,
    client_version: i16,
    query: &EpochQuery,
) -> Result<Bytes, DecodeError> {
    let (h, list) =
        codec::decode_response::<ListOffsetsResponse>(ApiKey::ListOffsets, list_version, frame)?;
    let answer = epoch_answer(query, &list);
    codec::encode_response(
        ApiKey::OffsetForLeaderEpoch,
        client_version,
        h.correlation_id,
        &answer,
    )
}

// ------------------------------------------------------------- routed

/// ListOffsets: epochs cleared; with several clusters, partitions read elsewhere
/// refused and renamed topics asked under their physical names.
pub(crate) fn list_offsets(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    let mut req: ListOffsetsRequest = frame.decode()?;
    if !ctx.shared.multi_cluster() {
        let bytes = codec::reencode_request(frame, clear_list_offsets_epochs(&mut req), &req)?;
        return Ok(forward(frame, bytes, ResponseRewrite::ListOffsets(None)));
    }
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
    clear_list_offsets_epochs(&mut req);
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
        ResponseRewrite::ListOffsets(Some(Box::new(plan))),
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

/// OffsetForLeaderEpoch for a topic read elsewhere is refused whole (the client
/// re-validates after its metadata refresh). Renamed topics are answered from
/// ListOffsets under their physical names, like every other topic (PROTOCOL.md §1).
pub(crate) fn offset_for_leader_epoch(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Action, RouteError> {
    let req: OffsetForLeaderEpochRequest = frame.decode()?;
    let here = ctx.here().to_string();
    if ctx.shared.multi_cluster() {
        let groups = reader(ctx, frame, req.topics.iter().map(|t| t.topic.as_str()));
        let elsewhere = not_here(&ctx.routes, groups, &here);
        if req.topics.iter().any(|t| elsewhere.elsewhere(&t.topic)) {
            metrics::steered("OffsetForLeaderEpoch", &here);
            return respond(frame, &epoch_refused(&req));
        }
    }
    // Answered from ListOffsets (PROTOCOL.md §1), under physical names.
    let routes = ctx.routes.clone();
    let (bytes, query, version) = epoch_request_as_list_offsets_renamed(frame, req, |name| {
        let p = routes.physical_topic(name, &here);
        (p != name.as_str()).then(|| topic_name(&p))
    })?;
    Ok(Action::Forward {
        frame: bytes,
        response: Some(Forwarded {
            upstream_api: ApiKey::ListOffsets,
            upstream_version: version,
            rewrite: ResponseRewrite::EpochFromListOffsets(query),
        }),
    })
}

/// Every partition of `req` answered NOT_LEADER_OR_FOLLOWER.
fn epoch_refused(req: &OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in &req.topics {
        let mut rt = OffsetForLeaderTopicResult::default().with_topic(t.topic.clone());
        for p in &t.partitions {
            rt.partitions.push(
                EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_error_code(NOT_LEADER_OR_FOLLOWER)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            );
        }
        resp.topics.push(rt);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::StrBytes;

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    #[test]
    fn offset_fetch_epochs_cleared_in_both_shapes() {
        let mut r = OffsetFetchResponse::default()
            .with_topics(vec![OffsetFetchResponseTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![OffsetFetchResponsePartition::default()
                    .with_committed_offset(10)
                    .with_committed_leader_epoch(57)])])
            .with_groups(vec![OffsetFetchResponseGroup::default().with_topics(vec![
                OffsetFetchResponseTopics::default()
                    .with_name(name("t"))
                    .with_partitions(vec![OffsetFetchResponsePartitions::default()
                        .with_committed_offset(11)
                        .with_committed_leader_epoch(3)]),
            ])]);
        assert!(clear_offset_fetch_epochs(&mut r));
        assert_eq!(r.topics[0].partitions[0].committed_leader_epoch, -1);
        assert_eq!(r.topics[0].partitions[0].committed_offset, 10);
        assert_eq!(
            r.groups[0].topics[0].partitions[0].committed_leader_epoch,
            -1
        );
        assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 11);
    }

    #[test]
    fn list_offsets_epochs_cleared() {
        let mut r =
            ListOffsetsResponse::default().with_topics(vec![ListOffsetsTopicResponse::default()
                .with_name(name("t"))
                .with_partitions(vec![ListOffsetsPartitionResponse::default()
                    .with_offset(5)
                    .with_leader_epoch(9)])]);
        assert!(clear_list_offsets_response_epochs(&mut r));
        assert_eq!(r.topics[0].partitions[0].leader_epoch, -1);
        assert_eq!(r.topics[0].partitions[0].offset, 5);
    }

    #[test]
    fn offset_for_leader_epoch_becomes_list_offsets_and_back() {
        let req = OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(name("t"))
                .with_partitions(vec![
                    OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_leader_epoch(57)
                        .with_current_leader_epoch(57),
                    OffsetForLeaderPartition::default()
                        .with_partition(1)
                        .with_leader_epoch(3),
                ]),
        ]);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::OffsetForLeaderEpoch as i16)
            .with_request_api_version(3)
            .with_correlation_id(99);
        let bytes = codec::encode_request(ApiKey::OffsetForLeaderEpoch, &header, &req).unwrap();
        let frame = codec::parse_request(bytes).unwrap();
        let (list_bytes, query, v) = epoch_request_as_list_offsets(&frame).unwrap();
        let list_frame = codec::parse_request(list_bytes).unwrap();
        assert_eq!(list_frame.api, ApiKey::ListOffsets);
        assert_eq!(list_frame.correlation_id(), 99);
        let list: ListOffsetsRequest = list_frame.decode().unwrap();
        assert_eq!(list.topics[0].partitions.len(), 2);
        assert!(list.topics[0].partitions.iter().all(|p| p.timestamp == -1));

        let upstream =
            ListOffsetsResponse::default().with_topics(vec![ListOffsetsTopicResponse::default()
                .with_name(name("t"))
                .with_partitions(vec![
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(0)
                        .with_offset(1234),
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(1)
                        .with_error_code(ResponseError::NotLeaderOrFollower.code()),
                ])]);
        let upstream_frame = codec::encode_response(ApiKey::ListOffsets, v, 99, &upstream).unwrap();
        let out = epoch_response_from_list_offsets(upstream_frame, v, 3, &query).unwrap();
        let (h, answer) = codec::decode_response::<OffsetForLeaderEpochResponse>(
            ApiKey::OffsetForLeaderEpoch,
            3,
            out,
        )
        .unwrap();
        assert_eq!(h.correlation_id, 99);
        let p = &answer.topics[0].partitions;
        assert_eq!(
            (p[0].leader_epoch, p[0].end_offset, p[0].error_code),
            (57, 1234, 0)
        );
        assert_eq!(p[1].error_code, 6);
    }
}
