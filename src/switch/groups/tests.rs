//! Unit tests of the request path's view of group switches in progress.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

fn key(n: &str) -> IdentityKey {
    IdentityKey::new(None, n, IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[test]
fn holds_follow_the_phases() {
    let s = GroupSwitches::default();
    assert!(!s.busy());
    s.start("g", "source", Phase::Waiting, 1);
    assert!(s.busy());
    let groups = vec!["g".to_string()];
    assert!(!s.fetch_held(&groups, &key("a"), "target"));
    s.set_phase("g", Phase::Quiescing);
    s.set_eager("g", true);
    assert!(s.fetch_held(&groups, &key("a"), "target"));
    assert!(matches!(
        s.verdict("g", ApiKey::Heartbeat, "m1", "source"),
        Verdict::Rebalance
    ));
    assert!(matches!(
        s.verdict("g", ApiKey::Heartbeat, "m1", "target"),
        Verdict::Forward
    ));
    let Verdict::Wait(rx) = s.verdict("g", ApiKey::JoinGroup, "m1", "source") else {
        panic!("joins wait while quiescing");
    };
    assert_eq!(s.joins_waiting("g"), 1);
    s.add_old_members("g", ["m1"].into_iter());
    s.set_phase("g", Phase::Flipped);
    s.release("g", Release::Flipped);
    assert_eq!(*rx.borrow(), Release::Flipped);
    assert!(matches!(
        s.verdict("g", ApiKey::OffsetCommit, "m1", "target"),
        Verdict::UnknownMember
    ));
    assert!(matches!(
        s.verdict("g", ApiKey::JoinGroup, "", "target"),
        Verdict::Forward
    ));
    // Held until the identity rejoins on the new cluster.
    assert!(s.fetch_held(&groups, &key("a"), "target"));
    assert!(!s.all_rejoined("g"));
    s.rejoined("g", &key("a"));
    assert!(!s.fetch_held(&groups, &key("a"), "target"));
    assert!(s.all_rejoined("g"));
    s.finish("g", 2, Release::Flipped);
    assert!(
        s.busy(),
        "a later switch of the group is not finished by an earlier one"
    );
    s.finish("g", 1, Release::Flipped);
    assert!(!s.busy());
}

#[test]
fn positions_keep_the_highest() {
    let s = GroupSwitches::default();
    s.start("g", "source", Phase::Quiescing, 1);
    let groups = vec!["g".to_string()];
    s.note_positions(&groups, [("t", 0, 5), ("t", 1, 7)].into_iter());
    s.note_positions(&groups, [("t", 0, 9), ("t", 1, 3)].into_iter());
    let p = s.positions("g");
    assert_eq!(p[&("t".to_string(), 0)], 9);
    assert_eq!(p[&("t".to_string(), 1)], 7);
}

#[test]
fn members_settle_on_the_new_cluster_through_an_empty_first_assignment() {
    let s = GroupSwitches::default();
    s.start("g", "source", Phase::Committed, 1);
    s.flipping(
        "g",
        "target",
        "range",
        [(("t".to_string(), 0), 40), (("t".to_string(), 1), 7)].into_iter(),
    );
    s.set_phase("g", Phase::Flipped);
    // Nothing changes on the old cluster.
    assert_eq!(s.sync_verdict("g", "m1", "source"), SyncVerdict::Pass);
    assert!(!s.commit_fenced("g", "m1", "source"));
    // On the new one: no commit before the real assignment, an empty first one.
    assert!(s.commit_fenced("g", "m1", "target"));
    assert!(!s.commit_fenced("g", "", "target"), "admin commits pass");
    assert_eq!(s.sync_verdict("g", "m1", "target"), SyncVerdict::Empty);
    s.synced("g", "m1", &key("a"), SyncVerdict::Empty);
    for _ in 0..3 {
        assert!(matches!(
            s.verdict("g", ApiKey::Heartbeat, "m1", "target"),
            Verdict::Rebalance
        ));
    }
    assert!(s.commit_fenced("g", "m1", "target"));
    // Its fetches on the new cluster get no records until then, even once it
    // rejoined (a cooperative member fetches what it still owns).
    let groups = vec!["g".to_string()];
    s.rejoined("g", &key("a"));
    assert!(s.fetch_held(&groups, &key("a"), "target"));
    assert!(!s.fetch_held(&groups, &key("a"), "source"));
    // First fetches are audited once per partition.
    let bad = s.audit(&groups, "target", [("t", 0, 40), ("t", 1, 99)].into_iter());
    assert_eq!(bad, vec![("g".into(), "t".into(), 1, 99, 7)]);
    assert!(s
        .audit(&groups, "target", [("t", 1, 5)].into_iter())
        .is_empty());
    assert!(s.unsettled("g").1.is_empty());
    // The switch finishing does not leave m1 with the empty assignment.
    s.finish("g", 1, Release::Flipped);
    assert!(s.busy());
    assert!(!s.is_live("g"));
    assert!(matches!(
        s.verdict("g", ApiKey::Heartbeat, "m1", "target"),
        Verdict::Rebalance
    ));
    assert_eq!(s.unsettled("g").0, vec!["m1".to_string()]);
    // The rejoin brings the real assignment.
    assert_eq!(s.sync_verdict("g", "m1", "target"), SyncVerdict::Pass);
    s.synced("g", "m1", &key("a"), SyncVerdict::Pass);
    assert!(matches!(
        s.verdict("g", ApiKey::Heartbeat, "m1", "target"),
        Verdict::Forward
    ));
    assert!(
        !s.busy(),
        "the lingering switch goes once m1 has its assignment"
    );
    assert!(!s.commit_fenced("g", "m1", "target"));
    assert!(s.unsettled("g").0.is_empty());
}

#[test]
fn assignors_with_state_in_the_assignment_keep_their_first_assignment() {
    let s = GroupSwitches::default();
    s.start("streams-app", "source", Phase::Committed, 1);
    s.flipping("streams-app", "target", "stream", std::iter::empty());
    s.set_phase("streams-app", Phase::Flipped);
    assert_eq!(
        s.sync_verdict("streams-app", "m1", "target"),
        SyncVerdict::Pass
    );
    assert!(s.commit_fenced("streams-app", "m1", "target"));
    s.synced("streams-app", "m1", &key("a"), SyncVerdict::Pass);
    assert!(!s.commit_fenced("streams-app", "m1", "target"));
}
