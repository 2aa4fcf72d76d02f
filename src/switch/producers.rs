//! Virtual producer ids (DESIGN.md decision 7, PROTOCOL.md §2).
//!
//! Brokers of every cluster allocate producer ids from 0, so an id issued by the
//! source means another producer on the target. A client is therefore never given an
//! upstream id: it gets a *virtual* id that encodes the cluster that issued it (its
//! home) and the id there, `virtual = upstream * 16 + cluster index`. That makes the
//! home mapping a pure function, the same on every replica and after a restart.
//!
//! When a producer writes to a cluster other than its home, the proxy asks that
//! cluster for an id of its own (InitProducerId, once per producer and cluster) and
//! rewrites each batch header: producer id, epoch and base sequence, then the
//! CRC-32C. Sequences are per partition; when a partition's writes move to a cluster,
//! the proxy rebases them so that cluster sees its own id's sequence continue where it
//! left off (0 for an id it has never seen on that partition), which both Kafka 2.4
//! (strict about unknown ids) and 3.x accept.
//!
//! Transactional batches are left alone: a transactional producer keeps the id its
//! transaction coordinator issued and does not change clusters mid-transaction.
//!
//! # Only ids this proxy issued, bounded
//!
//! Producer ids in batches are client data. State is kept only for ids the proxy
//! itself issued (an InitProducerId answer it rewrote, [`Producers::issue`]), at most
//! [`ProducerLimits::max_producers`] of them and [`ProducerLimits::max_bytes`] of
//! bookkeeping, least recently used evicted first, idle ones aged out. A batch whose
//! id has no state:
//!
//! - **at its home cluster** goes up under the pure home mapping and creates
//!   nothing. That is all a client could do talking to its home cluster directly,
//!   and it is what keeps producers working across a proxy restart. Sequences pass
//!   as the client numbered them: if the partition was written on another cluster
//!   before (an evicted producer), the home broker's numbering lags the client's,
//!   so the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER (never a false duplicate)
//!   and the client bumps its epoch or fails, never writes under a wrong id.
//! - **anywhere else** it must prove the proxy issued it. Issued ids are tagged:
//!   [`Producers::issue_id`] puts an HMAC of (cluster, upstream id) under a secret
//!   kept in the state directory (`producer-ids.key`) into spare high bits of the
//!   virtual id. An id whose tag checks out gets its state back (a proxy restart or
//!   an eviction costs a producer nothing); any other is refused with
//!   UNKNOWN_PRODUCER_ID ([`PlanError::UnknownProducer`]) without asking that
//!   cluster for an id, so a forged id costs neither an upstream InitProducerId nor
//!   an entry. UNKNOWN_PRODUCER_ID is the answer that never reads as success:
//!   Java 2.4 re-inits; Java 2.5+ and librdkafka bump the epoch and retry (then fail
//!   the batch to the application). INVALID_PRODUCER_ID_MAPPING would fail the batch
//!   in Java at once but never makes any client re-init. Proxies that must accept
//!   each other's producers (replicas of one gateway) share the key file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clusters a virtual producer id can name (the low bits of the id).
pub use crate::config::MAX_CLUSTERS;

/// Byte offsets in a v2 record batch header (PROTOCOL.md §2).
const LENGTH: usize = 8;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
pub const HEADER_LEN: usize = 61;
const TRANSACTIONAL: u16 = 0x10;

/// Tagged virtual ids (those [`Producers::issue_id`] hands out) have this bit set,
/// a keyed tag in the bits below it, then 40 bits of upstream id and 4 of home
/// cluster. Brokers allocate ids from 0 in blocks of 1,000, so 40 bits outlast any
/// cluster; a larger id is issued untagged (`upstream * 16 + cluster`).
const TAGGED: i64 = 1 << 62;
const CLUSTER_BITS: u32 = 4;
const UPSTREAM_BITS: u32 = 40;
const UPSTREAM_MASK: i64 = (1 << UPSTREAM_BITS) - 1;
const TAG_SHIFT: u32 = CLUSTER_BITS + UPSTREAM_BITS;
const TAG_MASK: i64 = (1 << (62 - TAG_SHIFT)) - 1;

/// The untagged virtual id of `upstream_pid` issued by cluster `cluster`.
pub fn to_virtual(upstream_pid: i64, cluster: usize) -> i64 {
    if upstream_pid < 0 {
        upstream_pid
    } else {
        // Saturates rather than overflows for ids no broker allocates (> 2^58): the
        // response comes from upstream and must not be able to panic the proxy.
        upstream_pid
            .saturating_mul(MAX_CLUSTERS as i64)
            .saturating_add(cluster as i64)
            .min(TAGGED - 1)
    }
}

/// (home cluster index, upstream id) of a virtual id, tagged or not.
pub fn from_virtual(vpid: i64) -> (usize, i64) {
    let cluster = (vpid & (MAX_CLUSTERS as i64 - 1)) as usize;
    if vpid >= 0 && vpid & TAGGED != 0 {
        (cluster, (vpid >> CLUSTER_BITS) & UPSTREAM_MASK)
    } else {
        (cluster, vpid >> CLUSTER_BITS)
    }
}

/// The tag of (cluster, upstream id) under `key`: the proxy's proof that it issued
/// the id, checkable after a restart without remembering anything.
fn tag(key: &[u8; 32], cluster: usize, upstream_pid: i64) -> i64 {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(&(cluster as u64).to_be_bytes());
    mac.update(&upstream_pid.to_be_bytes());
    let out = mac.finalize().into_bytes();
    let t = i64::from_be_bytes(out[..8].try_into().expect("8 bytes")) & TAG_MASK;
    // Tag 0 is as good as any other; keeping it nonzero makes a zeroed field
    // visibly untagged in logs.
    t.max(1)
}

/// The fields of one v2 batch header the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the batch within the records blob.
    pub at: usize,
    pub len: usize,
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub count: i32,
    pub transactional: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch at byte {0} is truncated")]
    Truncated(usize),
    #[error("record batch at byte {at} has magic {magic}; only v2 carries producer ids")]
    OldMagic { at: usize, magic: i8 },
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Walks the batches of a records blob. Message sets older than v2 carry no producer
/// id and are reported as [`BatchError::OldMagic`] (the caller passes them on as
/// they are).
pub fn batches(records: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        if records.len() - at < MAGIC + 1 {
            return Err(BatchError::Truncated(at));
        }
        let len = be_i32(records, at + LENGTH);
        let total = 12usize.saturating_add(len.max(0) as usize);
        let magic = records[at + MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::OldMagic { at, magic });
        }
        if len < (HEADER_LEN - 12) as i32 || records.len() - at < total {
            return Err(BatchError::Truncated(at));
        }
        let b = &records[at..at + total];
        out.push(BatchHeader {
            at,
            len: total,
            producer_id: be_i64(b, PRODUCER_ID),
            epoch: be_i16(b, PRODUCER_EPOCH),
            base_sequence: be_i32(b, BASE_SEQUENCE),
            // The client writes these fields; a last offset delta of i32::MAX must
            // not overflow (it did, in debug builds, on a hostile Produce).
            count: be_i32(b, RECORD_COUNT).max(be_i32(b, LAST_OFFSET_DELTA).saturating_add(1)),
            transactional: (be_i16(b, ATTRIBUTES) as u16) & TRANSACTIONAL != 0,
        });
        at += total;
    }
    Ok(out)
}

/// Rewrites producer id, epoch and base sequence of the batch `batch` (one whole
/// batch) and recomputes its CRC-32C, which covers everything from the attributes on.
pub fn patch_batch(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Whether the batch's stored CRC matches its content.
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN && crc32c::crc32c(&batch[ATTRIBUTES..]) == be_i32(batch, CRC) as u32
}

/// Sequence numbers wrap from i32::MAX to 0 (the producer's and the broker's rule).
fn seq_add(seq: i32, delta: i64) -> i32 {
    (seq as i64 + delta).rem_euclid(i32::MAX as i64 + 1) as i32
}

/// What a batch becomes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// Why a batch cannot be mapped yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// The proxy must first obtain a producer id from `cluster` for this producer.
    NeedProducerId { cluster: usize },
    /// The partition's writes just moved to this cluster and this batch is not the
    /// next one the client must write (an older batch is still unresolved). The
    /// batch is answered with a retriable error; the client resends in order.
    NotNext { expected: i32 },
    /// No state for this id (the proxy did not issue it, or forgot it) and the batch
    /// is not at its home: answered UNKNOWN_PRODUCER_ID (module docs).
    UnknownProducer,
}

/// `transaction.timeout.ms` of the Java producer by default, within every broker's
/// default `transaction.max.timeout.ms` (15 minutes).
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: i32 = 60_000;

/// Bounds of the producer state (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    pub max_producers: usize,
    /// Bookkeeping bytes: a fixed cost per producer and per partition plus the
    /// topic names (client data, up to 32767 bytes each).
    pub max_bytes: usize,
    /// Producers not used for this long are forgotten (the brokers' own
    /// `producer.id.expiration.ms` default).
    pub idle: Duration,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            max_producers: 100_000,
            max_bytes: 128 << 20,
            idle: Duration::from_secs(24 * 3600),
        }
    }
}

const PRODUCER_OVERHEAD: usize = 192;
const PARTITION_OVERHEAD: usize = 128;

#[derive(Debug)]
struct Producer {
    /// Per foreign cluster: its id and epoch, and the client epoch they stand for.
    foreign: HashMap<usize, (i64, i16, i16)>,
    /// The transaction timeout the client asked for with its InitProducerId; the
    /// proxy asks other clusters for the same.
    transaction_timeout_ms: i32,
    partitions: HashMap<(String, i32), Partition>,
    /// Position in [`Table::order`].
    tick: u64,
    used: Instant,
    bytes: usize,
}

impl Producer {
    fn new(tick: u64, now: Instant) -> Producer {
        Producer {
            foreign: HashMap::new(),
            transaction_timeout_ms: DEFAULT_TRANSACTION_TIMEOUT_MS,
            partitions: HashMap::new(),
            tick,
            used: now,
            bytes: PRODUCER_OVERHEAD,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<i64, Producer>,
    /// Virtual ids by last use, oldest first.
    order: BTreeMap<u64, i64>,
    clock: u64,
    bytes: usize,
}

impl Table {
    fn remove(&mut self, vpid: i64) {
        if let Some(p) = self.map.remove(&vpid) {
            self.order.remove(&p.tick);
            self.bytes -= p.bytes;
        }
    }

    /// Marks `vpid` used now; false when it has no state.
    fn touch(&mut self, vpid: i64, now: Instant) -> bool {
        self.clock += 1;
        let tick = self.clock;
        let Some(p) = self.map.get_mut(&vpid) else {
            return false;
        };
        self.order.remove(&p.tick);
        p.tick = tick;
        p.used = now;
        self.order.insert(tick, vpid);
        true
    }

    /// Forgets idle producers, then least recently used ones other than `keep`
    /// while over a bound.
    fn shrink(&mut self, limits: &ProducerLimits, now: Instant, keep: i64) {
        while let Some((_, &vpid)) = self.order.first_key_value() {
            let idle = now.saturating_duration_since(self.map[&vpid].used) >= limits.idle;
            let over = self.map.len() > limits.max_producers || self.bytes > limits.max_bytes;
            if !(idle || over) {
                break;
            }
            let victim = if vpid != keep {
                vpid
            } else {
                match self.order.values().nth(1) {
                    Some(&v) if over => v,
                    _ => break,
                }
            };
            tracing::debug!(virtual_id = victim, "producer state dropped");
            self.remove(victim);
        }
    }
}

#[derive(Debug)]
struct Partition {
    cluster: usize,
    client_epoch: i16,
    /// upstream sequence = client sequence + delta (mod 2^31)
    delta: i64,
    /// Per cluster: the upstream sequence after the last batch it acknowledged.
    next: HashMap<usize, i32>,
    /// The client sequence after the last acknowledged batch, on any cluster.
    acked_next: Option<i32>,
}

/// One batch the proxy mapped, reported back when its response is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub producer_id: i64,
    pub epoch: i16,
    pub topic: String,
    pub partition: i32,
    pub cluster: usize,
    pub client_base: i32,
    pub upstream_base: i32,
    pub count: i32,
}

/// Per virtual producer id the proxy issued: the ids other clusters issued for it
/// and the sequence bookkeeping of each partition it writes. Bounded (module docs).
pub struct Producers {
    inner: Mutex<Table>,
    limits: ProducerLimits,
    /// Signs the virtual ids this proxy issues ([`Producers::issue_id`]).
    key: [u8; 32],
}

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Producers")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Producers {
    fn default() -> Self {
        Producers::with_limits(ProducerLimits::default())
    }
}

impl Producers {
    /// Producer state with a key of its own (tests, or a proxy without a state
    /// directory): ids it issued are recognised until it exits.
    pub fn with_limits(limits: ProducerLimits) -> Producers {
        Producers::with_key(limits, rand::random())
    }

    /// Producer state whose issued ids carry tags under `key`, kept in the state
    /// directory so that ids issued before a restart are still recognised.
    pub fn with_key(limits: ProducerLimits, key: [u8; 32]) -> Producers {
        Producers {
            inner: Mutex::default(),
            limits,
            key,
        }
    }

    /// The virtual id a client is given for `upstream_pid` from `cluster`: tagged,
    /// so that this proxy (or one sharing its key) knows it issued it even when it
    /// has no state for it (restarted, or evicted the entry).
    pub fn issue_id(&self, upstream_pid: i64, cluster: usize) -> i64 {
        if !(0..=UPSTREAM_MASK).contains(&upstream_pid) || cluster >= MAX_CLUSTERS {
            return to_virtual(upstream_pid, cluster);
        }
        TAGGED
            | (tag(&self.key, cluster, upstream_pid) << TAG_SHIFT)
            | (upstream_pid << CLUSTER_BITS)
            | cluster as i64
    }

    /// Whether `vpid` is an id [`Producers::issue_id`] handed out under this key.
    pub fn verifies(&self, vpid: i64) -> bool {
        if vpid < 0 || vpid & TAGGED == 0 {
            return false;
        }
        let (cluster, upstream) = from_virtual(vpid);
        (vpid >> TAG_SHIFT) & TAG_MASK == tag(&self.key, cluster, upstream)
    }

    /// The proxy handed `vpid` to a client (an InitProducerId answer without error):
    /// from now on it may write anywhere. Issuing an id again (an epoch bump) keeps
    /// its state; the batches' new epoch restarts their numbering.
    pub fn issue(&self, vpid: i64) {
        self.issue_at(vpid, Instant::now())
    }

    pub(crate) fn issue_at(&self, vpid: i64, now: Instant) {
        if vpid < 0 {
            return;
        }
        let mut t = self.inner.lock().expect("producers lock");
        if !t.touch(vpid, now) {
            let tick = t.clock;
            t.map.insert(vpid, Producer::new(tick, now));
            t.order.insert(tick, vpid);
            t.bytes += PRODUCER_OVERHEAD;
        }
        t.shrink(&self.limits, now, vpid);
    }

    /// Records the transaction timeout `vpid`'s client asked for.
    pub fn set_transaction_timeout(&self, vpid: i64, ms: i32) {
        let mut inner = self.inner.lock().expect("producers lock");
        if let Some(p) = inner.map.get_mut(&vpid) {
            p.transaction_timeout_ms = ms;
        }
    }

    /// The transaction timeout to ask another cluster for on `vpid`'s behalf: what
    /// its client asked for, or the Java client's default for an id adopted after
    /// a restart.
    pub fn transaction_timeout(&self, vpid: i64) -> i32 {
        let inner = self.inner.lock().expect("producers lock");
        inner
            .map
            .get(&vpid)
            .map(|p| p.transaction_timeout_ms)
            .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS)
    }

    /// Records the id `cluster` issued for `vpid` while the client used
    /// `client_epoch`. Two connections of one producer can ask at the same time; the
    /// first id recorded wins and stays (a batch may already carry it), the other is
    /// never used. Nothing is recorded for an id without state (evicted meanwhile):
    /// its next batch is refused like any unknown id.
    pub fn set_foreign(&self, vpid: i64, cluster: usize, pid: i64, epoch: i16, client_epoch: i16) {
        let mut inner = self.inner.lock().expect("producers lock");
        if let Some(p) = inner.map.get_mut(&vpid) {
            p.foreign
                .entry(cluster)
                .or_insert((pid, epoch, client_epoch));
        }
    }

    /// Maps one batch of `vpid` for `topic`/`partition` going to `cluster`.
    pub fn plan(
        &self,
        batch: &BatchHeader,
        topic: &str,
        partition: i32,
        cluster: usize,
    ) -> Result<Upstream, PlanError> {
        self.plan_at(batch, topic, partition, cluster, Instant::now())
    }

    pub(crate) fn plan_at(
        &self,
        batch: &BatchHeader,
        topic: &str,
        partition: i32,
        cluster: usize,
        now: Instant,
    ) -> Result<Upstream, PlanError> {
        let (home, home_pid) = from_virtual(batch.producer_id);
        let mut guard = self.inner.lock().expect("producers lock");
        let table = &mut *guard;
        if !table.touch(batch.producer_id, now) {
            if cluster != home {
                if !self.verifies(batch.producer_id) {
                    return Err(PlanError::UnknownProducer);
                }
                // Issued by this proxy before it restarted (or evicted since): its
                // tag proves it, so it gets state again, as at issue.
                drop(guard);
                self.issue_at(batch.producer_id, now);
                return self.plan_at(batch, topic, partition, cluster, now);
            }
            // The pure home mapping; nothing remembered (module docs).
            return Ok(Upstream {
                producer_id: home_pid,
                epoch: batch.epoch,
                base_sequence: batch.base_sequence,
            });
        }
        let key = (topic.to_string(), partition);
        let producer = table.map.get_mut(&batch.producer_id).expect("touched");
        if !producer.partitions.contains_key(&key) {
            let cost = PARTITION_OVERHEAD + topic.len();
            if PRODUCER_OVERHEAD + producer.bytes + cost > self.limits.max_bytes {
                // One producer alone would exceed the whole budget: no number
                // could be kept for this partition, so it cannot be mapped safely.
                tracing::warn!(
                    virtual_id = batch.producer_id,
                    partitions = producer.partitions.len(),
                    "producer state budget exhausted by one producer; batch refused"
                );
                return Err(PlanError::UnknownProducer);
            }
            producer.bytes += cost;
            table.bytes += cost;
        }
        let vpid = batch.producer_id;
        table.shrink(&self.limits, now, vpid);
        let producer = table.map.get_mut(&vpid).expect("kept by shrink");
        let (pid, epoch) = if cluster == home {
            (home_pid, batch.epoch)
        } else {
            let (pid, base_epoch, base_client) = *producer
                .foreign
                .get(&cluster)
                .ok_or(PlanError::NeedProducerId { cluster })?;
            let bump = (batch.epoch as i32 - base_client as i32).max(0);
            (pid, (base_epoch as i32 + bump).min(i16::MAX as i32) as i16)
        };
        let seq = batch.base_sequence;
        let part = producer.partitions.entry(key).or_insert_with(|| Partition {
            cluster,
            client_epoch: batch.epoch,
            // At home the client's own numbering is the cluster's (also after a
            // proxy restart); elsewhere a fresh id starts at 0.
            delta: if cluster == home { 0 } else { -(seq as i64) },
            next: HashMap::new(),
            acked_next: None,
        });
        if part.client_epoch != batch.epoch {
            // The client bumped its epoch and restarted its sequences; so does the
            // upstream id (a new epoch starts at sequence 0).
            part.client_epoch = batch.epoch;
            part.cluster = cluster;
            part.next.clear();
            part.acked_next = None;
            part.delta = -(seq as i64);
        } else if part.cluster != cluster {
            // The partition's writes moved here. Only the client's next batch may
            // open the new numbering: an older one still unresolved elsewhere would
            // otherwise be written after a newer one, out of order.
            if let Some(expected) = part.acked_next {
                if seq >= 0 && seq != expected {
                    return Err(PlanError::NotNext { expected });
                }
            }
            let next = part.next.get(&cluster).copied().unwrap_or(0);
            part.delta = next as i64 - seq as i64;
            part.cluster = cluster;
        }
        let base_sequence = if seq < 0 {
            seq
        } else {
            seq_add(seq, part.delta)
        };
        Ok(Upstream {
            producer_id: pid,
            epoch,
            base_sequence,
        })
    }

    /// Records that a mapped batch was written (acknowledged, or a duplicate of one
    /// that was).
    pub fn acknowledged(&self, sent: &Sent) {
        if sent.client_base < 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("producers lock");
        let Some(part) = inner
            .map
            .get_mut(&sent.producer_id)
            .and_then(|p| p.partitions.get_mut(&(sent.topic.clone(), sent.partition)))
        else {
            return;
        };
        if part.client_epoch != sent.epoch {
            return;
        }
        let count = sent.count.max(1) as i64;
        part.next
            .insert(sent.cluster, seq_add(sent.upstream_base, count));
        part.acked_next = Some(seq_add(sent.client_base, count));
    }

    /// Number of virtual producers known (for /status).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("producers lock").map.len()
    }

    /// Bookkeeping bytes held (for /status and metrics).
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("producers lock").bytes
    }

    /// Whether the proxy holds state for `vpid` (an id it issued and still knows).
    pub fn knows(&self, vpid: i64) -> bool {
        self.inner
            .lock()
            .expect("producers lock")
            .map
            .contains_key(&vpid)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record batch written by the Java client's own record writer (kafka-clients
    /// 3.9.1 `MemoryRecords.withIdempotentRecords`: producer id 7, epoch 0, base
    /// sequence 42, records "k-1"/"v-1" and "k-2"/"v-2", no compression).
    fn java_batch() -> Vec<u8> {
        hex(JAVA_BATCH)
    }

    const JAVA_BATCH: &str = include_str!("testdata/java_batch.hex");

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_and_rewrites_a_java_batch() {
        let mut b = java_batch();
        assert!(crc_ok(&b), "the captured batch carries a valid CRC");
        let hs = batches(&b).unwrap();
        assert_eq!(hs.len(), 1);
        let h = hs[0];
        assert_eq!((h.producer_id, h.epoch, h.base_sequence), (7, 0, 42));
        assert_eq!(h.count, 2);
        assert!(!h.transactional);
        patch_batch(&mut b, 123_456, 3, 9);
        assert!(crc_ok(&b), "CRC recomputed after the rewrite");
        let h2 = batches(&b).unwrap()[0];
        assert_eq!(
            (h2.producer_id, h2.epoch, h2.base_sequence),
            (123_456, 3, 9)
        );
        // Records themselves are untouched.
        assert_eq!(b[HEADER_LEN..], java_batch()[HEADER_LEN..]);
        // Writing the original values back restores the original bytes exactly.
        patch_batch(&mut b, 7, 0, 42);
        assert_eq!(b, java_batch());
    }

    #[test]
    fn truncated_and_old_batches_are_reported() {
        let b = java_batch();
        assert_eq!(batches(&b[..b.len() - 1]), Err(BatchError::Truncated(0)));
        let mut old = b.clone();
        old[MAGIC] = 1;
        assert!(matches!(batches(&old), Err(BatchError::OldMagic { .. })));
    }

    #[test]
    fn virtual_ids_name_their_home() {
        assert_eq!(from_virtual(to_virtual(5, 0)), (0, 5));
        assert_eq!(from_virtual(to_virtual(5, 1)), (1, 5));
        assert_ne!(to_virtual(5, 0), to_virtual(5, 1));
        assert_eq!(to_virtual(-1, 1), -1);
    }

    fn header(vpid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            at: 0,
            len: 0,
            producer_id: vpid,
            epoch,
            base_sequence: seq,
            count,
            transactional: false,
        }
    }

    /// Plans a batch and reports it acknowledged, as a successful round trip does.
    fn write(p: &Producers, vpid: i64, seq: i32, count: i32, cluster: usize) -> Upstream {
        let u = p
            .plan(&header(vpid, 0, seq, count), "a", 0, cluster)
            .unwrap();
        ack(p, vpid, seq, u.base_sequence, count, cluster);
        u
    }

    fn ack(p: &Producers, vpid: i64, seq: i32, upstream: i32, count: i32, cluster: usize) {
        p.acknowledged(&Sent {
            producer_id: vpid,
            epoch: 0,
            topic: "a".into(),
            partition: 0,
            cluster,
            client_base: seq,
            upstream_base: upstream,
            count,
        });
    }

    #[test]
    fn sequences_follow_a_partition_across_clusters_and_back() {
        let p = Producers::default();
        let vpid = to_virtual(5, 0); // issued by cluster 0
        p.issue(vpid);
        let u = write(&p, vpid, 0, 10, 0);
        assert_eq!(
            (u.producer_id, u.epoch, u.base_sequence),
            (5, 0, 0),
            "home: as is"
        );
        write(&p, vpid, 10, 10, 0);
        // Cluster 1 needs its own id first.
        assert_eq!(
            p.plan(&header(vpid, 0, 20, 10), "a", 0, 1),
            Err(PlanError::NeedProducerId { cluster: 1 })
        );
        p.set_foreign(vpid, 1, 5, 0, 0); // the same number, issued by the other cluster
        p.set_foreign(vpid, 1, 6, 0, 0); // a concurrent second request loses
        let u = p.plan(&header(vpid, 0, 20, 10), "a", 0, 1).unwrap();
        assert_eq!(
            (u.producer_id, u.base_sequence),
            (5, 0),
            "fresh id starts at 0"
        );
        // A retry of the same batch maps to the same sequence.
        assert_eq!(write(&p, vpid, 20, 10, 1), u);
        let u = write(&p, vpid, 30, 5, 1);
        assert_eq!(u.base_sequence, 10);
        // Back home: cluster 0 continues at 20, where its id stopped.
        let u = write(&p, vpid, 35, 5, 0);
        assert_eq!((u.producer_id, u.base_sequence), (5, 20));
        // Out again: cluster 1 continues at 15.
        let u = write(&p, vpid, 40, 1, 1);
        assert_eq!(u.base_sequence, 15);
        // Another partition first seen on cluster 1 starts at 0 there.
        let u = p.plan(&header(vpid, 0, 7, 1), "a", 1, 1).unwrap();
        assert_eq!(u.base_sequence, 0);
    }

    #[test]
    fn only_the_next_batch_opens_a_partition_on_its_new_cluster() {
        let p = Producers::default();
        let vpid = to_virtual(2, 0);
        p.issue(vpid);
        p.set_foreign(vpid, 1, 9, 0, 0);
        write(&p, vpid, 0, 4, 0); // client 0..4 acknowledged at home
                                  // The partition moves to cluster 1 while batch 4 is still unresolved at
                                  // home (its refusal not yet seen by the client): batch 5 arriving first
                                  // must not open the numbering there.
        assert_eq!(
            p.plan(&header(vpid, 0, 5, 1), "a", 0, 1),
            Err(PlanError::NotNext { expected: 4 })
        );
        let u = p.plan(&header(vpid, 0, 4, 1), "a", 0, 1).unwrap();
        assert_eq!(u.base_sequence, 0, "fresh id on cluster 1");
        ack(&p, vpid, 4, 0, 1, 1);
        assert_eq!(
            p.plan(&header(vpid, 0, 5, 1), "a", 0, 1)
                .unwrap()
                .base_sequence,
            1
        );
    }

    #[test]
    fn epoch_bump_restarts_sequences() {
        let p = Producers::default();
        let vpid = to_virtual(9, 1);
        p.issue(vpid);
        p.set_foreign(vpid, 0, 100, 4, 0);
        let u = write(&p, vpid, 50, 10, 0);
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (100, 4, 0));
        let u = p.plan(&header(vpid, 1, 0, 10), "a", 0, 0).unwrap();
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (100, 5, 0));
    }

    #[test]
    fn issued_ids_are_recognised_after_a_restart_and_forgeries_are_not() {
        let key = [7u8; 32];
        let before = Producers::with_key(ProducerLimits::default(), key);
        let vpid = before.issue_id(777, 1);
        assert_eq!(from_virtual(vpid), (1, 777));
        assert!(vpid > 0 && before.verifies(vpid));
        // The same key after a restart: no state, but the tag proves the id, so a
        // write away from home asks for an id there instead of being refused.
        let after = Producers::with_key(ProducerLimits::default(), key);
        assert!(after.is_empty());
        assert_eq!(
            after.plan(&header(vpid, 0, 0, 1), "a", 0, 0),
            Err(PlanError::NeedProducerId { cluster: 0 })
        );
        assert_eq!(after.len(), 1);
        // Another key, a flipped tag bit, an untagged id: refused, nothing kept.
        let other = Producers::with_key(ProducerLimits::default(), [8u8; 32]);
        let flipped = vpid ^ (1 << 50);
        for (p, id) in [
            (&other, vpid),
            (&after, flipped),
            (&after, to_virtual(777, 1)),
        ] {
            let n = p.len();
            assert!(!p.verifies(id));
            assert_eq!(
                p.plan(&header(id, 0, 0, 1), "a", 0, 0),
                Err(PlanError::UnknownProducer)
            );
            assert_eq!(p.len(), n);
        }
        // Home mapping of a tagged id is its upstream id.
        let u = after.plan(&header(vpid, 3, 42, 1), "b", 0, 1).unwrap();
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (777, 3, 42));
        // Ids too large for the layout are issued untagged and still map home.
        let huge = before.issue_id(1 << 41, 2);
        assert_eq!(from_virtual(huge), (2, 1 << 41));
        assert!(!before.verifies(huge));
    }

    #[test]
    fn ids_the_proxy_never_issued_create_nothing() {
        let p = Producers::default();
        // A forged id naming cluster 1, written to cluster 0: refused, no state.
        let forged = to_virtual(777, 1);
        assert_eq!(
            p.plan(&header(forged, 0, 0, 1), "a", 0, 0),
            Err(PlanError::UnknownProducer)
        );
        p.set_foreign(forged, 0, 1, 0, 0);
        ack(&p, forged, 0, 0, 1, 0);
        assert!(p.is_empty());
        // At its home the pure mapping applies, still without state (a restart
        // must not break producers writing home).
        let u = p.plan(&header(forged, 3, 42, 1), "a", 0, 1).unwrap();
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (777, 3, 42));
        assert!(p.is_empty());
        // Once issued, it may ask for a foreign id.
        p.issue(forged);
        assert_eq!(
            p.plan(&header(forged, 0, 0, 1), "a", 0, 0),
            Err(PlanError::NeedProducerId { cluster: 0 })
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn least_recently_used_producers_are_evicted_and_then_refused_abroad() {
        let p = Producers::with_limits(ProducerLimits {
            max_producers: 2,
            ..ProducerLimits::default()
        });
        let (a, b, c) = (to_virtual(1, 0), to_virtual(2, 0), to_virtual(3, 0));
        p.issue(a);
        p.issue(b);
        p.set_foreign(a, 1, 10, 0, 0);
        write(&p, a, 0, 1, 1); // `a` is in use; `b` is idle
        p.issue(c);
        assert_eq!(p.len(), 2);
        assert!(p.knows(a) && p.knows(c) && !p.knows(b));
        // The evicted producer never gets a wrong id: abroad it is refused, at home
        // it keeps its own.
        assert_eq!(
            p.plan(&header(b, 0, 5, 1), "a", 0, 1),
            Err(PlanError::UnknownProducer)
        );
        assert_eq!(
            p.plan(&header(b, 0, 5, 1), "a", 0, 0).unwrap().producer_id,
            2
        );
        assert_eq!(
            p.plan(&header(a, 0, 1, 1), "a", 0, 1).unwrap().producer_id,
            10
        );
    }

    #[test]
    fn bookkeeping_bytes_stay_within_the_budget() {
        let budget = 1 << 20;
        let p = Producers::with_limits(ProducerLimits {
            max_bytes: budget,
            ..ProducerLimits::default()
        });
        let long = "t".repeat(30_000);
        let mut refused = 0;
        for i in 0..200 {
            let vpid = to_virtual(i, 0);
            p.issue(vpid);
            for part in 0..10 {
                if p.plan(&header(vpid, 0, 0, 1), &format!("{i}{long}"), part, 0)
                    .is_err()
                {
                    refused += 1;
                }
            }
            assert!(p.bytes() <= budget, "{} > {budget}", p.bytes());
        }
        assert_eq!(refused, 0, "each producer alone fits; others were evicted");
        assert!(p.len() < 200);
        // One producer alone cannot outgrow the budget: its new partitions are
        // refused instead.
        let hog = to_virtual(9999, 0);
        p.issue(hog);
        let results: Vec<_> = (0..100)
            .map(|part| p.plan(&header(hog, 0, 0, 1), &long, part, 0))
            .collect();
        assert!(results.contains(&Err(PlanError::UnknownProducer)));
        assert!(p.bytes() <= budget);
    }

    #[test]
    fn idle_producers_age_out() {
        let p = Producers::with_limits(ProducerLimits {
            idle: Duration::from_secs(60),
            ..ProducerLimits::default()
        });
        let t0 = Instant::now();
        let (a, b) = (to_virtual(1, 0), to_virtual(2, 0));
        p.issue_at(a, t0);
        p.issue_at(b, t0 + Duration::from_secs(30));
        p.issue_at(b, t0 + Duration::from_secs(61));
        assert!(!p.knows(a) && p.knows(b));
    }

    #[test]
    fn sequences_wrap_like_the_broker() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(3, -5), i32::MAX - 1);
    }
}
