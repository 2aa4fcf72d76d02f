//! The proxy's own group and offset requests to one cluster, used by the group
//! handoff: find a group's coordinator, describe it, remove its members, read and
//! write its committed offsets, look up offsets and read records. Versions are the
//! highest both the cluster and this code handle, so 2.4 and 3.x brokers answer alike.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::upstream::ClusterView;

/// ListOffsets timestamps with a special meaning.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

fn version(c: &ClusterView, api: ApiKey, cap: i16) -> Result<i16, String> {
    c.version_for(api, cap)
        .ok_or_else(|| format!("`{}` does not support {api:?}", c.name()))
}

/// A group as its coordinator describes it.
#[derive(Debug, Clone, Default)]
pub struct GroupInfo {
    pub state: String,
    /// Assignor in use ("range", "cooperative-sticky", ...); empty when not Stable.
    pub protocol: String,
    /// (member id, group instance id)
    pub members: Vec<(String, Option<String>)>,
}

impl GroupInfo {
    /// Whether the group rebalances cooperatively (KIP-429): members keep their
    /// partitions, and their in-memory positions, across a rebalance.
    pub fn cooperative(&self) -> bool {
        self.protocol.contains("cooperative")
    }
}

/// Coordinator errors that go away by themselves (loading, not available yet, moved).
fn coordinator_retriable(code: i16) -> bool {
    matches!(code, 14..=16)
}

const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The broker coordinating `group` on `c`. A cluster whose offsets topic does not
/// exist yet answers COORDINATOR_NOT_AVAILABLE while it creates it: asked again
/// until `timeout`.
pub async fn coordinator(c: &ClusterView, group: &str, timeout: Duration) -> Result<i32, String> {
    let v = version(c, ApiKey::FindCoordinator, 3)?;
    let req = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let resp: FindCoordinatorResponse = c
            .call(ApiKey::FindCoordinator, v, &req, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if resp.error_code == 0 {
            return Ok(resp.node_id.0);
        }
        if !coordinator_retriable(resp.error_code) || tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "coordinator of group `{group}` on `{}`: error {}",
                c.name(),
                resp.error_code
            ));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

pub async fn describe_group(
    c: &ClusterView,
    group: &str,
    timeout: Duration,
) -> Result<GroupInfo, String> {
    let coord = coordinator(c, group, timeout).await?;
    let v = version(c, ApiKey::DescribeGroups, 4)?;
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let resp: DescribeGroupsResponse = c
        .call_to(Some(coord), ApiKey::DescribeGroups, v, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| format!("describe group `{group}`: empty answer"))?;
    if g.error_code != 0 {
        return Err(format!(
            "describe group `{group}` on `{}`: error {}",
            c.name(),
            g.error_code
        ));
    }
    Ok(GroupInfo {
        state: g.group_state.to_string(),
        protocol: g.protocol_data.to_string(),
        members: g
            .members
            .into_iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.map(|s| s.to_string()),
                )
            })
            .collect(),
    })
}

/// Removes members from `group` (LeaveGroup v3+, one request for all).
pub async fn remove_members(
    c: &ClusterView,
    group: &str,
    members: &[(String, Option<String>)],
    timeout: Duration,
) -> Result<(), String> {
    if members.is_empty() {
        return Ok(());
    }
    let coord = coordinator(c, group, timeout).await?;
    let v = version(c, ApiKey::LeaveGroup, 4)?;
    if v < 3 {
        return Err(format!(
            "`{}` cannot remove group members (LeaveGroup v3 needs Kafka 2.4+)",
            c.name()
        ));
    }
    let req = LeaveGroupRequest::default()
        .with_group_id(group_id(group))
        .with_members(
            members
                .iter()
                .map(|(m, i)| {
                    MemberIdentity::default()
                        .with_member_id(StrBytes::from_string(m.clone()))
                        .with_group_instance_id(i.clone().map(StrBytes::from_string))
                })
                .collect(),
        );
    let resp: LeaveGroupResponse = c
        .call_to(Some(coord), ApiKey::LeaveGroup, v, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    // UNKNOWN_MEMBER_ID (25) per member: it had already gone, which is the goal.
    let failed: Vec<String> = resp
        .members
        .iter()
        .filter(|m| m.error_code != 0 && m.error_code != 25)
        .map(|m| format!("{}: error {}", m.member_id.as_str(), m.error_code))
        .collect();
    if resp.error_code != 0 && resp.error_code != 25 {
        return Err(format!(
            "removing members of `{group}` on `{}`: error {}",
            c.name(),
            resp.error_code
        ));
    }
    if !failed.is_empty() {
        return Err(format!(
            "removing members of `{group}`: {}",
            failed.join(", ")
        ));
    }
    Ok(())
}

/// Committed offsets of `group`, by (physical topic, partition). Partitions with no
/// commit are left out.
pub async fn committed(
    c: &ClusterView,
    group: &str,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match committed_once(c, group, timeout).await {
            Err((Some(code), _))
                if coordinator_retriable(code) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            other => return other.map_err(|(_, e)| e),
        }
    }
}

type OpError = (Option<i16>, String);

async fn committed_once(
    c: &ClusterView,
    group: &str,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>, OpError> {
    let plain = |e: String| (None, e);
    let coord = coordinator(c, group, timeout).await.map_err(plain)?;
    let v = version(c, ApiKey::OffsetFetch, 7).map_err(plain)?;
    if v < 2 {
        return Err(plain(format!(
            "`{}` cannot list all of a group's offsets",
            c.name()
        )));
    }
    let req = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let resp: OffsetFetchResponse = c
        .call_to(Some(coord), ApiKey::OffsetFetch, v, &req, timeout)
        .await
        .map_err(|e| plain(e.to_string()))?;
    if resp.error_code != 0 {
        return Err((
            Some(resp.error_code),
            format!(
                "offsets of `{group}` on `{}`: error {}",
                c.name(),
                resp.error_code
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert((t.name.to_string(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// Commits offsets for `group` the way an admin tool does (generation -1, no
/// member): accepted while the group is empty or absent (PROTOCOL.md §3).
pub async fn admin_commit(
    c: &ClusterView,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) -> Result<(), String> {
    if offsets.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match admin_commit_once(c, group, offsets, timeout).await {
            Err((Some(code), _))
                if coordinator_retriable(code) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            other => return other.map_err(|(_, e)| e),
        }
    }
}

async fn admin_commit_once(
    c: &ClusterView,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) -> Result<(), OpError> {
    let plain = |e: String| (None, e);
    let coord = coordinator(c, group, timeout).await.map_err(plain)?;
    let v = version(c, ApiKey::OffsetCommit, 7).map_err(plain)?;
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        topics.entry(t).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(
                    "switchyard group switch",
                ))),
        );
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(name(t))
                        .with_partitions(parts)
                })
                .collect(),
        );
    let resp: OffsetCommitResponse = c
        .call_to(Some(coord), ApiKey::OffsetCommit, v, &req, timeout)
        .await
        .map_err(|e| plain(e.to_string()))?;
    let first_code = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.error_code)
        .find(|c| *c != 0);
    let failed: Vec<String> = resp
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.error_code != 0)
                .map(move |p| {
                    format!(
                        "{}-{}: error {}",
                        t.name.as_str(),
                        p.partition_index,
                        p.error_code
                    )
                })
        })
        .collect();
    if !failed.is_empty() {
        return Err((
            first_code,
            format!(
                "committing offsets of `{group}` on `{}` (error 25 means the group has live members there): {}",
                c.name(),
                failed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The consumer groups the cluster knows, from every broker (each lists the groups
/// it coordinates). Groups of other protocols, such as Kafka Connect workers, are
/// left out; groups that only hold committed offsets (protocol type "") are kept.
pub async fn list_consumer_groups(
    c: &ClusterView,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let v = version(c, ApiKey::ListGroups, 3)?;
    let mut out = Vec::new();
    for (broker, _) in c.brokers().iter() {
        let resp: ListGroupsResponse = c
            .call_to(
                Some(*broker),
                ApiKey::ListGroups,
                v,
                &ListGroupsRequest::default(),
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        if resp.error_code != 0 {
            return Err(format!(
                "ListGroups on broker {broker} of `{}`: error {}",
                c.name(),
                resp.error_code
            ));
        }
        out.extend(
            resp.groups
                .into_iter()
                .filter(|g| matches!(g.protocol_type.as_str(), "" | "consumer"))
                .map(|g| g.group_id.to_string()),
        );
    }
    Ok(out)
}

/// Partition → leader of `physical` on `c`; empty when the topic does not exist.
pub async fn leaders(
    c: &ClusterView,
    physical: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i32>, String> {
    let v = c.version_for(ApiKey::Metadata, 9).unwrap_or(1);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(physical)))
        ]))
        .with_allow_auto_topic_creation(false);
    let meta: MetadataResponse = c
        .call(ApiKey::Metadata, v, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let Some(topic) = meta.topics.first() else {
        return Ok(BTreeMap::new());
    };
    match topic.error_code {
        0 => {}
        3 => return Ok(BTreeMap::new()), // UNKNOWN_TOPIC_OR_PARTITION
        e => return Err(format!("metadata for `{physical}`: error {e}")),
    }
    let mut out = BTreeMap::new();
    for p in &topic.partitions {
        if p.leader_id.0 < 0 {
            return Err(format!(
                "partition {physical}-{} has no leader on `{}`",
                p.partition_index,
                c.name()
            ));
        }
        out.insert(p.partition_index, p.leader_id.0);
    }
    Ok(out)
}

/// ListOffsets for every partition of `physical` at `timestamp` (or [`LATEST`],
/// [`EARLIEST`]), asked of each partition's leader. -1 means no record at or after
/// the timestamp.
pub async fn offsets_at(
    c: &ClusterView,
    physical: &str,
    timestamp: i64,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, String> {
    let leaders = leaders(c, physical, timeout).await?;
    let parts: BTreeMap<i32, i64> = leaders.keys().map(|p| (*p, timestamp)).collect();
    offsets_for(c, physical, &leaders, &parts, timeout).await
}

/// ListOffsets for chosen partitions, each at its own timestamp.
pub async fn offsets_for(
    c: &ClusterView,
    physical: &str,
    leaders: &BTreeMap<i32, i32>,
    partitions: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut by_leader: BTreeMap<i32, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for (p, ts) in partitions {
        let leader = leaders
            .get(p)
            .ok_or_else(|| format!("{physical}-{p} does not exist on `{}`", c.name()))?;
        by_leader.entry(*leader).or_default().push(
            ListOffsetsPartition::default()
                .with_partition_index(*p)
                .with_timestamp(*ts),
        );
    }
    let v = version(c, ApiKey::ListOffsets, 5)?.max(1);
    let mut out = BTreeMap::new();
    for (leader, parts) in by_leader {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name(physical))
                .with_partitions(parts)]);
        let resp: ListOffsetsResponse = c
            .call_to(Some(leader), ApiKey::ListOffsets, v, &req, timeout)
            .await
            .map_err(|e| e.to_string())?;
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "offsets of {physical}-{} on `{}`: error {}",
                        p.partition_index,
                        c.name(),
                        p.error_code
                    ));
                }
                out.insert(p.partition_index, p.offset);
            }
        }
    }
    Ok(out)
}

/// Records of one partition from `offset` on (the first batches the leader returns,
/// at most about `max_bytes`), decoded. Records before `offset` in the first batch
/// are dropped.
pub async fn read(
    c: &ClusterView,
    physical: &str,
    partition: i32,
    leader: i32,
    offset: i64,
    max_bytes: i32,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    read_waiting(
        c, physical, partition, leader, offset, max_bytes, 0, timeout,
    )
    .await
}

/// [`read`], with the leader waiting up to `max_wait_ms` for a first record when
/// there is none at `offset` yet (a long poll).
#[allow(clippy::too_many_arguments)]
pub async fn read_waiting(
    c: &ClusterView,
    physical: &str,
    partition: i32,
    leader: i32,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let v = version(c, ApiKey::Fetch, 11)?.max(4);
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(physical))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(max_bytes)])]);
    let resp: FetchResponse = c
        .call_to(Some(leader), ApiKey::Fetch, v, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for t in resp.responses {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(format!(
                    "reading {physical}-{partition}@{offset} on `{}`: error {}",
                    c.name(),
                    p.error_code
                ));
            }
            let mut data: Bytes = p.records.unwrap_or_default();
            while !data.is_empty() {
                // A partial batch at the end of the answer ends the read.
                if data.len() < 12 {
                    break;
                }
                let len = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
                if data.len() < 12 + len {
                    break;
                }
                let mut one = data.split_to(12 + len);
                let set = RecordBatchDecoder::decode(&mut one)
                    .map_err(|e| format!("decoding {physical}-{partition}: {e}"))?;
                out.extend(
                    set.records
                        .into_iter()
                        .filter(|r| r.offset >= offset && !r.control),
                );
            }
        }
    }
    Ok(out)
}
