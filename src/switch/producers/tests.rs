//! Unit tests of batch header parsing and patching and of the producer registry:
//! virtual ids, sequences across clusters, issued-id tags, and the bounds.

use super::batch::MAGIC;
use super::*;

/// A record batch written by the Java client's own record writer (kafka-clients
/// 3.9.1 `MemoryRecords.withIdempotentRecords`: producer id 7, epoch 0, base
/// sequence 42, records "k-1"/"v-1" and "k-2"/"v-2", no compression).
fn java_batch() -> Vec<u8> {
    hex(JAVA_BATCH)
}

const JAVA_BATCH: &str = include_str!("../testdata/java_batch.hex");

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

#[test]
fn instances_sharing_an_adopted_key_recognise_each_others_ids() {
    let shared = [9u8; 32];
    let a = Producers::with_key(ProducerLimits::default(), [1u8; 32]);
    let b = Producers::with_key(ProducerLimits::default(), [2u8; 32]);
    let before = a.issue_id(10, 0);
    assert!(!b.verifies(before), "different keys, no trust");
    a.adopt_key(shared);
    b.adopt_key(shared);
    // Issued under the shared key on one instance, recognised on the other.
    let after = a.issue_id(11, 0);
    assert_ne!(after, before);
    assert!(a.verifies(after) && b.verifies(after));
    // An id issued before the adoption stays recognised where it was issued.
    assert!(a.verifies(before));
    assert!(!b.verifies(before));
    // Adopting the same key again changes nothing.
    a.adopt_key(shared);
    assert!(a.verifies(before) && a.verifies(after));
}

#[test]
fn a_producer_taken_over_after_writing_away_from_home_writes_home_under_an_id_of_its_own() {
    let key = [5u8; 32];
    // Instance A issued the id at home (cluster 0) and moved the partition's writes
    // to cluster 1, then back home: its home id's numbering lags the client's.
    let a = Producers::with_key(ProducerLimits::default(), key);
    let vpid = a.issue_id(3, 0);
    a.issue(vpid);
    write(&a, vpid, 0, 10, 0);
    assert!(a.needs_announcing(vpid));
    assert!(!a.needs_announcing(vpid), "announced once");
    // Instance B, without state, before it heard: the pure home mapping.
    let b = Producers::with_key(ProducerLimits::default(), key);
    let u = b.plan(&header(vpid, 0, 500, 10), "a", 0, 0).unwrap();
    assert_eq!((u.producer_id, u.base_sequence), (3, 500));
    // Instance C, without state, once it heard the producer writes away from
    // home: an id of its own at home too, numbered from 0.
    let c = Producers::with_key(ProducerLimits::default(), key);
    c.mark_relocated(vpid);
    assert_eq!(
        c.plan(&header(vpid, 0, 500, 10), "a", 0, 0),
        Err(PlanError::NeedProducerId { cluster: 0 })
    );
    c.set_foreign(vpid, 0, 77, 0, 0);
    let u = c.plan(&header(vpid, 0, 500, 10), "a", 0, 0).unwrap();
    assert_eq!((u.producer_id, u.epoch, u.base_sequence), (77, 0, 0));
    assert!(!c.needs_announcing(vpid), "nothing new to announce");
    // A forged id is still refused, relocated or not.
    c.mark_relocated(to_virtual(9, 0));
    assert_eq!(
        c.plan(&header(to_virtual(9, 0), 0, 0, 1), "a", 0, 0),
        Err(PlanError::UnknownProducer)
    );
}
