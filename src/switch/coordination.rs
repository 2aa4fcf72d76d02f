//! The shared state of several Switchyard processes (`[coordination]`): a Kafka
//! topic of one partition, compacted, on the coordination cluster. Its single
//! partition gives every record one place in one order, which is what lets every
//! instance apply the same routing table versions in the same order: for each
//! version the first record in the log wins.
//!
//! Records (key → JSON value):
//! - `routes`: `{"version", "routes", "by", "at_ms"}`, a whole `[routes]` section
//!   in TOML, published by the instance where the change was made;
//! - `instance.<id>`: `{"version", "at_ms"}`, each instance's heartbeat with the
//!   table version it has applied;
//! - `ack.<id>`: `{"version"}`, an instance has stopped writing the topics a
//!   version's produce flip fences, and its batches to the old cluster completed;
//! - `mark.<topic>`: the topic's switch mark, measured once every live instance
//!   acknowledged;
//! - `release`: `{"version"}`, the fences up to that version are over;
//! - `group.<group>`: a group switch's latest phase ([`GroupPhase`]), by the
//!   leader driving it;
//! - `gstat.<id>/<group>`: what one instance sees of a switching group's clients
//!   ([`GroupStat`]);
//! - `producer-ids.key`: the key virtual producer ids are tagged under (the first
//!   record wins);
//! - `relocated.<virtual id>`: a producer has written away from its home cluster;
//! - `link.<digest>`: a client identity's membership of a group ([`SharedLink`]).
//!
//! Membership and leadership are not records: they come from a Kafka group
//! (`switch::membership`).
//!
//! This module is the log client and what an instance knows of the others; the
//! loops that follow the log and publish to it are in `control::coordination`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use super::membership::Membership;
use super::ops;
use crate::config::CoordinationConfig;
use crate::upstream::ClusterView;

/// Key of the published routing table.
pub const ROUTES_KEY: &str = "routes";
/// Key prefix of instance heartbeats.
pub const INSTANCE_PREFIX: &str = "instance.";
/// Key prefix of an instance's acknowledgement of a fenced flip.
pub const ACK_PREFIX: &str = "ack.";
/// Key prefix of a topic's switch mark, measured during a fence.
pub const MARK_PREFIX: &str = "mark.";
/// Key of the latest fence release.
pub const RELEASE_KEY: &str = "release";
/// Key of the key every instance issues virtual producer ids under (the first
/// record wins).
pub const PRODUCER_KEY: &str = "producer-ids.key";

/// The shared producer-id key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ProducerKey {
    pub key: [u8; 32],
}

/// Key prefix of a virtual producer id that has written away from its home
/// cluster (`Producers::mark_relocated`).
pub const RELOCATED_PREFIX: &str = "relocated.";

/// Key prefix of a client identity's link to a group, confirmed by one instance
/// (followed by a digest of the identity and group).
pub const LINK_PREFIX: &str = "link.";

/// A group link shared between instances.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SharedLink {
    pub identity: crate::switch::identity::IdentityKey,
    pub group: String,
}

impl SharedLink {
    /// The record key: one per (identity, group), so compaction keeps one each.
    pub fn key(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).expect("serializes");
        let digest = sha2::Sha256::digest(&json);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{LINK_PREFIX}{hex}")
    }
}

/// Key prefix of a group switch's latest phase, written by the leader driving it.
pub const GROUP_PREFIX: &str = "group.";
/// Key prefix of what one instance sees of a group switch (its members there).
pub const GROUP_STAT_PREFIX: &str = "gstat.";

/// A group switch as the instance driving it recorded it: the phase every
/// instance serving a member of the group applies, and what they need for it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupPhase {
    pub switch: crate::state::GroupSwitch,
    /// The group's assignor is eager: heartbeats on the old cluster are answered
    /// REBALANCE_IN_PROGRESS while it quiesces.
    pub eager: bool,
    /// Member ids removed from the old group, answered UNKNOWN_MEMBER_ID after the
    /// flip.
    pub old_members: Vec<String>,
    /// The assignor the old cluster reported.
    pub assignor: String,
    /// The group had members when they were removed (its translated offsets are
    /// audited at their first fetch on the new cluster).
    pub had_members: bool,
    /// The instance driving the switch.
    pub by: String,
    /// Which run of that instance (a process start) wrote it: an instance applies
    /// its own records from before a restart like anyone else's.
    #[serde(default)]
    pub run: u64,
}

/// What one instance sees of a group switch: the members connected through it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupStat {
    pub group: String,
    pub route_version: u64,
    pub instance: String,
    /// Highest fetch position per (topic, partition) seen while quiescing.
    pub positions: Vec<(String, i32, i64)>,
    /// Rejoins held here.
    pub joins_waiting: usize,
    /// Every client whose fetches were held here has rejoined on the new cluster.
    pub all_rejoined: bool,
    /// Members here still without their real assignment on the new cluster.
    pub unsettled_members: Vec<String>,
    /// Translated partitions not yet fetched here on the new cluster.
    pub unsettled_partitions: Vec<(String, i32)>,
}

/// One record read from the log.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: i64,
    pub key: String,
    pub value: Bytes,
}

/// The state topic on the coordination cluster.
pub struct StateLog {
    cluster: Arc<ClusterView>,
    topic: String,
    timeout: Duration,
    /// The partition's leader, looked up again after any failure.
    leader: Mutex<Option<i32>>,
}

impl StateLog {
    pub fn new(cluster: Arc<ClusterView>, topic: String, timeout: Duration) -> StateLog {
        StateLog {
            cluster,
            topic,
            timeout,
            leader: Mutex::new(None),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic (one partition, compacted, replicated up to 3) unless it
    /// exists.
    pub async fn ensure_topic(&self) -> Result<(), String> {
        if !ops::leaders(&self.cluster, &self.topic, self.timeout)
            .await?
            .is_empty()
        {
            return Ok(());
        }
        self.cluster
            .refresh(self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let replicas = self.cluster.brokers().len().clamp(1, 3) as i16;
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
            .with_num_partitions(1)
            .with_replication_factor(replicas)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("cleanup.policy"))
                .with_value(Some(StrBytes::from_static_str("compact")))]);
        let req = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(self.timeout.as_millis() as i32);
        let v = self
            .cluster
            .version_for(ApiKey::CreateTopics, 4)
            .unwrap_or(2);
        let controller = self.cluster.controller();
        let to = (controller >= 0).then_some(controller);
        let resp: CreateTopicsResponse = self
            .cluster
            .call_to(to, ApiKey::CreateTopics, v, &req, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        for t in &resp.topics {
            match ResponseError::try_from_code(t.error_code) {
                None | Some(ResponseError::TopicAlreadyExists) => {}
                Some(e) => return Err(format!("creating `{}`: {e:?}", self.topic)),
            }
        }
        // Leaders take a moment to be elected.
        for _ in 0..50 {
            if ops::leaders(&self.cluster, &self.topic, self.timeout)
                .await
                .is_ok_and(|l| !l.is_empty())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("`{}` has no leader yet", self.topic))
    }

    async fn leader(&self) -> Result<i32, String> {
        if let Some(l) = *self.leader.lock().expect("leader lock") {
            return Ok(l);
        }
        let _ = self.cluster.refresh(self.timeout).await;
        let leaders = ops::leaders(&self.cluster, &self.topic, self.timeout).await?;
        let l = *leaders
            .get(&0)
            .ok_or_else(|| format!("`{}` does not exist", self.topic))?;
        *self.leader.lock().expect("leader lock") = Some(l);
        Ok(l)
    }

    fn forget_leader(&self) {
        *self.leader.lock().expect("leader lock") = None;
    }

    /// Appends one record, acknowledged by every in-sync replica; returns its
    /// offset.
    pub async fn append(&self, key: &str, value: &[u8]) -> Result<i64, String> {
        let result = self.append_once(key, value).await;
        if result.is_err() {
            self.forget_leader();
        }
        result
    }

    async fn append_once(&self, key: &str, value: &[u8]) -> Result<i64, String> {
        let leader = self.leader().await?;
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: now_ms() as i64,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Default::default(),
        };
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| format!("encoding a state record: {e}"))?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(self.timeout.as_millis() as i32)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch.freeze()))])]);
        let v = self
            .cluster
            .version_for(ApiKey::Produce, 8)
            .filter(|v| *v >= 3)
            .ok_or_else(|| format!("`{}` cannot take v2 record batches", self.cluster.name()))?;
        let resp: ProduceResponse = self
            .cluster
            .call_to(Some(leader), ApiKey::Produce, v, &req, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or("empty produce answer")?;
        match ResponseError::try_from_code(p.error_code) {
            None => Ok(p.base_offset),
            Some(e) => Err(format!("writing to `{}`: {e:?}", self.topic)),
        }
    }

    /// The records from `offset` on (as many as one fetch returns; none at the end).
    pub async fn read(&self, offset: i64) -> Result<Vec<Entry>, String> {
        self.read_waiting(offset, Duration::ZERO).await
    }

    /// [`StateLog::read`], the leader waiting up to `wait` for a first record.
    pub async fn read_waiting(&self, offset: i64, wait: Duration) -> Result<Vec<Entry>, String> {
        let leader = self.leader().await?;
        let records = ops::read_waiting(
            &self.cluster,
            &self.topic,
            0,
            leader,
            offset,
            1 << 20,
            wait.as_millis() as i32,
            self.timeout,
        )
        .await;
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                self.forget_leader();
                return Err(e);
            }
        };
        Ok(records
            .into_iter()
            .filter_map(|r| {
                let key = String::from_utf8(r.key?.to_vec()).ok()?;
                Some(Entry {
                    offset: r.offset,
                    key,
                    value: r.value.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// What this instance has seen of another (or of itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceSeen {
    /// The routing table version it reported applied.
    pub version: u64,
    /// When its latest heartbeat was written (its clock, ms since the epoch).
    pub at_ms: u64,
}

/// What an instance knows of the shared state.
#[derive(Debug, Default, Clone)]
pub struct Fleet {
    /// The highest routing table version in the log.
    pub published: u64,
    /// Who published each version this instance applied or skipped, newest 64.
    pub published_by: BTreeMap<u64, String>,
    /// Every instance's latest heartbeat.
    pub instances: BTreeMap<String, InstanceSeen>,
    /// Whether this instance has read the log to its end at least once.
    pub caught_up: bool,
    /// The latest failure to read or write the log, if the latest attempt failed.
    pub error: Option<String>,
    /// Per fenced version, the instances that acknowledged it.
    pub acks: BTreeMap<u64, std::collections::BTreeSet<String>>,
    /// The highest version whose fence was released.
    pub released: u64,
    /// Whether this instance has applied a published table yet (the first one it
    /// applies is adopted, see `control::Marks::Adopted`).
    pub adopted: bool,
}

/// A produce flip held across instances until released.
#[derive(Debug, Clone)]
pub struct Fence {
    pub version: u64,
    /// The instance that published the version, and releases the fence unless it
    /// leaves the group first (then the leader does).
    pub by: String,
    pub flips: Vec<super::ProduceFlip>,
    pub since: std::time::Instant,
    /// Whether this instance applied the version. One that could not keeps its
    /// older table, so it holds the topics' writes until it has applied this
    /// version or a later one, and the fence is released.
    pub applied: bool,
}

/// An instance's part in coordination: its config, the log, what it knows.
pub struct Coordinator {
    pub config: CoordinationConfig,
    pub log: StateLog,
    pub fleet: Mutex<Fleet>,
    /// The next log offset to apply; read and advanced only by the one holder of
    /// the proxy's change lock.
    pub next: Mutex<i64>,
    /// Fences applied here and not yet released.
    pub fences: Mutex<Vec<Fence>>,
    /// This instance's membership of the coordination group.
    pub membership: Arc<Membership>,
    /// The latest recorded phase of each group switch.
    pub group_phases: Mutex<BTreeMap<String, GroupPhase>>,
    /// What each instance sees of each group switch, by (group, instance).
    pub group_stats: Mutex<BTreeMap<(String, String), GroupStat>>,
    /// The membership (`Membership::current`'s count of joins) for which the log was
    /// last read to its end: an instance that (re)joins reads what it missed before
    /// it serves writes again.
    caught: AtomicU64,
    /// This process's run, distinct from every earlier start of the instance.
    pub run: u64,
    /// Whether the shared producer-id key has been read and adopted: until then
    /// this instance holds, as if not yet a member.
    pub keyed: std::sync::atomic::AtomicBool,
}

impl Coordinator {
    pub fn new(config: CoordinationConfig, cluster: Arc<ClusterView>, timeout: Duration) -> Self {
        let log = StateLog::new(cluster.clone(), config.topic.clone(), timeout);
        let membership = Arc::new(Membership::new(
            cluster,
            config.topic.clone(),
            config.instance.clone(),
            config.session_timeout,
            timeout,
        ));
        Coordinator {
            config,
            log,
            fleet: Mutex::new(Fleet::default()),
            next: Mutex::new(0),
            fences: Mutex::new(Vec::new()),
            membership,
            group_phases: Mutex::new(BTreeMap::new()),
            group_stats: Mutex::new(BTreeMap::new()),
            caught: AtomicU64::new(0),
            keyed: std::sync::atomic::AtomicBool::new(false),
            run: rand::random(),
        }
    }

    /// Whether this instance holds every write, fetch and group request: it is not a member
    /// of the coordination group (not yet, or no longer: cut off from the
    /// coordination cluster, paused, removed), or it has not read the log since it
    /// became one. The others may be switching without it, so it serves nothing
    /// that a switch could make wrong.
    pub fn holds(&self) -> bool {
        if !self.keyed.load(Ordering::Acquire) {
            return true;
        }
        match self.membership.joins() {
            Some(joins) => self.caught.load(Ordering::Acquire) != joins,
            None => true,
        }
    }

    /// The membership count to record once the log has been read to its end.
    pub fn joins_now(&self) -> Option<u64> {
        self.membership.joins()
    }

    /// Records that the log was read to its end during membership `joins`.
    pub fn caught_up_at(&self, joins: u64) {
        self.caught.store(joins, Ordering::Release);
    }

    /// The members of the current generation, while this instance is one of them.
    pub fn members(&self) -> Option<std::collections::BTreeSet<String>> {
        self.membership.view().map(|v| v.members)
    }

    /// Whether this instance leads the coordination group (drives group switches)
    /// and serves.
    pub fn leads(&self) -> bool {
        self.membership.is_leader() && !self.holds()
    }

    /// The latest phase recorded for the switch of `group` started by `version`.
    pub fn group_phase(&self, group: &str, version: u64) -> Option<GroupPhase> {
        self.group_phases
            .lock()
            .expect("group phases lock")
            .get(group)
            .filter(|p| p.switch.route_version == version)
            .cloned()
    }

    /// What the other current members see of the switch of `group` started by
    /// `version`.
    pub fn others_stats(&self, group: &str, version: u64) -> Vec<GroupStat> {
        let members = self.members().unwrap_or_default();
        self.group_stats
            .lock()
            .expect("group stats lock")
            .values()
            .filter(|s| {
                s.group == group
                    && s.route_version == version
                    && s.instance != self.config.instance
                    && members.contains(&s.instance)
            })
            .cloned()
            .collect()
    }

    /// Tells every instance that these producers write away from their home
    /// cluster, before their first such batch goes upstream.
    pub async fn announce_relocated(&self, vpids: &[i64]) -> Result<(), String> {
        for v in vpids {
            self.publish(
                &format!("{RELOCATED_PREFIX}{v}"),
                &serde_json::json!({"virtual_id": v}),
            )
            .await?;
        }
        Ok(())
    }

    /// Writes a record to the shared log.
    pub async fn publish<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<i64, String> {
        let bytes = serde_json::to_vec(value).expect("serializes");
        self.log.append(key, &bytes).await
    }

    pub fn fleet(&self) -> Fleet {
        self.fleet.lock().expect("fleet lock").clone()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
