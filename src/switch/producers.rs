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

use std::collections::HashMap;
use std::sync::Mutex;

/// Clusters a virtual producer id can name (the low bits of the id).
pub const MAX_CLUSTERS: usize = 16;

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

pub fn to_virtual(upstream_pid: i64, cluster: usize) -> i64 {
    if upstream_pid < 0 {
        upstream_pid
    } else {
        // Saturates rather than overflows for ids no broker allocates (> 2^59): the
        // response comes from upstream and must not be able to panic the proxy.
        upstream_pid
            .saturating_mul(MAX_CLUSTERS as i64)
            .saturating_add(cluster as i64)
    }
}

/// (home cluster index, upstream id) of a virtual id.
pub fn from_virtual(vpid: i64) -> (usize, i64) {
    (
        (vpid % MAX_CLUSTERS as i64) as usize,
        vpid / MAX_CLUSTERS as i64,
    )
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
}

#[derive(Debug, Default)]
struct Producer {
    /// Per foreign cluster: its id and epoch, and the client epoch they stand for.
    foreign: HashMap<usize, (i64, i16, i16)>,
    partitions: HashMap<(String, i32), Partition>,
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

/// Per virtual producer id: the ids other clusters issued for it and the sequence
/// bookkeeping of each partition it writes.
#[derive(Debug, Default)]
pub struct Producers {
    inner: Mutex<HashMap<i64, Producer>>,
}

impl Producers {
    /// Records the id `cluster` issued for `vpid` while the client used
    /// `client_epoch`. Two connections of one producer can ask at the same time; the
    /// first id recorded wins and stays (a batch may already carry it), the other is
    /// never used.
    pub fn set_foreign(&self, vpid: i64, cluster: usize, pid: i64, epoch: i16, client_epoch: i16) {
        let mut inner = self.inner.lock().expect("producers lock");
        inner
            .entry(vpid)
            .or_default()
            .foreign
            .entry(cluster)
            .or_insert((pid, epoch, client_epoch));
    }

    /// Maps one batch of `vpid` for `topic`/`partition` going to `cluster`.
    pub fn plan(
        &self,
        batch: &BatchHeader,
        topic: &str,
        partition: i32,
        cluster: usize,
    ) -> Result<Upstream, PlanError> {
        let (home, home_pid) = from_virtual(batch.producer_id);
        let mut inner = self.inner.lock().expect("producers lock");
        let producer = inner.entry(batch.producer_id).or_default();
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
        let key = (topic.to_string(), partition);
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
        self.inner.lock().expect("producers lock").len()
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
        p.set_foreign(vpid, 0, 100, 4, 0);
        let u = write(&p, vpid, 50, 10, 0);
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (100, 4, 0));
        let u = p.plan(&header(vpid, 1, 0, 10), "a", 0, 0).unwrap();
        assert_eq!((u.producer_id, u.epoch, u.base_sequence), (100, 5, 0));
    }

    #[test]
    fn sequences_wrap_like_the_broker() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(3, -5), i32::MAX - 1);
    }
}
