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
//!
//! This file holds the virtual ids and the producer registry; reading and rewriting
//! batch headers is in `batch.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod batch;

pub use batch::{batches, crc_ok, patch_batch, BatchError, BatchHeader, HEADER_LEN};

/// Clusters a virtual producer id can name (the low bits of the id).
pub use crate::config::MAX_CLUSTERS;

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
    /// This proxy took the producer over from another instance after it had
    /// written away from its home (`[coordination]`, [`Producers::mark_relocated`]):
    /// it does not know how far the home id's numbering went, so it writes home
    /// under an id of its own, like any other cluster.
    rehomed: bool,
    /// That it writes away from home was published for the other instances.
    announced: bool,
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
            rehomed: false,
            announced: false,
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
    keys: std::sync::RwLock<Keys>,
    /// Virtual ids known (from other instances, `[coordination]`) to have written
    /// away from their home cluster: their home id's numbering is not the
    /// client's any more. At most `max_producers` of them.
    relocated: Mutex<std::collections::HashSet<i64>>,
}

/// The key ids are issued under, and the earlier ones still accepted.
struct Keys {
    issue: [u8; 32],
    /// Keys ids were issued under before the current one was adopted
    /// ([`Producers::adopt_key`]): those ids are still recognised.
    earlier: Vec<[u8; 32]>,
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
            keys: std::sync::RwLock::new(Keys {
                issue: key,
                earlier: Vec::new(),
            }),
            relocated: Mutex::default(),
        }
    }

    /// Another instance wrote `vpid`'s batches away from its home cluster: if this
    /// proxy takes the producer over without state, it writes home under an id of
    /// its own rather than the home id (whose numbering it cannot know), which
    /// would answer OUT_OF_ORDER_SEQUENCE_NUMBER and fail the producer.
    pub fn mark_relocated(&self, vpid: i64) {
        let mut r = self.relocated.lock().expect("relocated lock");
        if r.len() < self.limits.max_producers {
            r.insert(vpid);
        }
    }

    fn is_relocated(&self, vpid: i64) -> bool {
        self.relocated
            .lock()
            .expect("relocated lock")
            .contains(&vpid)
    }

    /// Whether a batch of `vpid` just planned away from home must be announced to
    /// the other instances (the first one only); marks it announced.
    pub fn needs_announcing(&self, vpid: i64) -> bool {
        let mut t = self.inner.lock().expect("producers lock");
        match t.map.get_mut(&vpid) {
            Some(p) if !p.announced => {
                p.announced = true;
                true
            }
            _ => false,
        }
    }

    /// An announcement failed: the next batch away from home tries again.
    pub fn unannounce(&self, vpid: i64) {
        let mut t = self.inner.lock().expect("producers lock");
        if let Some(p) = t.map.get_mut(&vpid) {
            p.announced = false;
        }
    }

    /// Issues ids under `key` from now on, still recognising ids issued under the
    /// keys before it. With `[coordination]` every instance adopts the one key
    /// published in the shared state, so an id issued by any instance is recognised
    /// by all: a producer whose connections move between replicas keeps its id.
    pub fn adopt_key(&self, key: [u8; 32]) {
        let mut keys = self.keys.write().expect("keys lock");
        if keys.issue == key {
            return;
        }
        let old = std::mem::replace(&mut keys.issue, key);
        keys.earlier.retain(|k| *k != key);
        keys.earlier.push(old);
    }

    /// The key ids are issued under now.
    pub fn issuing_key(&self) -> [u8; 32] {
        self.keys.read().expect("keys lock").issue
    }

    /// The virtual id a client is given for `upstream_pid` from `cluster`: tagged,
    /// so that this proxy (or one sharing its key) knows it issued it even when it
    /// has no state for it (restarted, or evicted the entry).
    pub fn issue_id(&self, upstream_pid: i64, cluster: usize) -> i64 {
        if !(0..=UPSTREAM_MASK).contains(&upstream_pid) || cluster >= MAX_CLUSTERS {
            return to_virtual(upstream_pid, cluster);
        }
        let key = self.issuing_key();
        TAGGED
            | (tag(&key, cluster, upstream_pid) << TAG_SHIFT)
            | (upstream_pid << CLUSTER_BITS)
            | cluster as i64
    }

    /// Whether `vpid` is an id [`Producers::issue_id`] handed out under this key.
    pub fn verifies(&self, vpid: i64) -> bool {
        if vpid < 0 || vpid & TAGGED == 0 {
            return false;
        }
        let (cluster, upstream) = from_virtual(vpid);
        let keys = self.keys.read().expect("keys lock");
        let tagged = (vpid >> TAG_SHIFT) & TAG_MASK;
        std::iter::once(&keys.issue)
            .chain(&keys.earlier)
            .any(|k| tagged == tag(k, cluster, upstream))
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
            let relocated = self.is_relocated(batch.producer_id);
            if cluster != home || relocated {
                if !self.verifies(batch.producer_id) {
                    return Err(PlanError::UnknownProducer);
                }
                // Issued by this proxy before it restarted (or evicted since), or
                // by another instance sharing its key: the tag proves it, so it
                // gets state again, as at issue.
                drop(guard);
                self.issue_at(batch.producer_id, now);
                if relocated {
                    let mut t = self.inner.lock().expect("producers lock");
                    if let Some(p) = t.map.get_mut(&batch.producer_id) {
                        p.rehomed = true;
                        p.announced = true;
                    }
                }
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
        let rehomed = producer.rehomed;
        let (pid, epoch) = if cluster == home && !rehomed {
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
            delta: if cluster == home && !rehomed {
                0
            } else {
                -(seq as i64)
            },
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
mod tests;
