//! What the request path must know about group switches in progress (PROTOCOL.md
//! §3): whose fetches are held, whose heartbeats are told to rebalance, which
//! rejoins wait for the flip, and which member ids are told they are unknown once
//! the group lives elsewhere. The switch itself is driven by [`super::handoff`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kafka_protocol::messages::ApiKey;
use tokio::sync::watch;

use super::identity::IdentityKey;
use crate::state::Phase;

/// Whether held rejoins may go on, and whether the group flipped meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Held,
    /// The switch stopped before the flip: rejoin where the group was.
    Stay,
    Flipped,
}

/// A switch in progress, as the request path sees it.
#[derive(Debug)]
struct Live {
    /// When the switch started (ms): tells a switch from a later one of the group.
    started: u64,
    from: String,
    phase: Phase,
    /// The group's assignor is eager: members are asked to rebalance (and so commit
    /// on revoke) while it quiesces.
    eager: bool,
    /// Member ids of the group on the old cluster, removed there; told
    /// UNKNOWN_MEMBER_ID on the new one so they drop their positions.
    old_members: HashSet<String>,
    /// Identities whose fetches were held; the switch is done when all rejoined.
    held: HashSet<IdentityKey>,
    rejoined: HashSet<IdentityKey>,
    /// Highest fetch position seen per (logical topic, partition) while quiescing.
    positions: HashMap<(String, i32), i64>,
    joins_waiting: usize,
    release: watch::Sender<Release>,
    cancel: bool,
}

/// What the proxy does with one group request.
pub enum Verdict {
    Forward,
    /// Heartbeat answered REBALANCE_IN_PROGRESS (eager groups while quiescing).
    Rebalance,
    /// Answered UNKNOWN_MEMBER_ID: a member of the old group on the new cluster.
    UnknownMember,
    /// A rejoin held until the switch flips or stops.
    Wait(watch::Receiver<Release>),
}

#[derive(Debug, Default)]
pub struct GroupSwitches {
    /// Any switch live: the fast path of every fetch checks only this.
    busy: AtomicBool,
    live: Mutex<HashMap<String, Live>>,
}

impl GroupSwitches {
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Live>) -> T) -> T {
        let mut live = self.live.lock().expect("group switches lock");
        let out = f(&mut live);
        self.busy.store(!live.is_empty(), Ordering::Relaxed);
        out
    }

    /// Registers a switch of `group` away from `from`, in `phase`, replacing any
    /// earlier one of the group.
    pub fn start(&self, group: &str, from: &str, phase: Phase, started: u64) {
        self.with(|live| {
            live.insert(
                group.to_string(),
                Live {
                    started,
                    from: from.to_string(),
                    phase,
                    eager: false,
                    old_members: HashSet::new(),
                    held: HashSet::new(),
                    rejoined: HashSet::new(),
                    positions: HashMap::new(),
                    joins_waiting: 0,
                    release: watch::channel(Release::Held).0,
                    cancel: false,
                },
            );
        });
    }

    pub fn is_live(&self, group: &str) -> bool {
        self.with(|live| live.contains_key(group))
    }

    pub fn set_phase(&self, group: &str, phase: Phase) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.phase = phase;
            }
        });
    }

    pub fn set_eager(&self, group: &str, eager: bool) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.eager = eager;
            }
        });
    }

    pub fn add_old_members<'a>(&self, group: &str, members: impl Iterator<Item = &'a str>) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.old_members.extend(members.map(str::to_string));
            }
        });
    }

    /// Lets held rejoins go on.
    pub fn release(&self, group: &str, how: Release) {
        self.with(|live| {
            if let Some(l) = live.get(group) {
                l.release.send_replace(how);
            }
        });
    }

    /// Asks the switch to stop before its flip (a later route change replaced it).
    pub fn cancel(&self, group: &str) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.cancel = true;
            }
        });
    }

    pub fn cancelled(&self, group: &str) -> bool {
        self.with(|live| live.get(group).is_some_and(|l| l.cancel))
    }

    /// Forgets a finished switch (the one started at `started`), releasing anything
    /// still held.
    pub fn finish(&self, group: &str, started: u64, how: Release) {
        self.with(|live| {
            if live.get(group).is_some_and(|l| l.started == started) {
                if let Some(l) = live.remove(group) {
                    l.release.send_replace(how);
                }
            }
        });
    }

    /// Whether a fetch by `key` (linked to `groups`) must be held: one of its groups
    /// is quiescing or has flipped and this identity has not rejoined yet.
    pub fn fetch_held(&self, groups: &[String], key: &IdentityKey) -> bool {
        self.with(|live| {
            let mut held = false;
            for g in groups {
                if let Some(l) = live.get_mut(g) {
                    if (Phase::Quiescing..=Phase::Flipped).contains(&l.phase)
                        && !l.rejoined.contains(key)
                    {
                        l.held.insert(key.clone());
                        held = true;
                    }
                }
            }
            held
        })
    }

    /// Notes the fetch positions of a member of `groups` (logical names).
    pub fn note_positions<'a>(
        &self,
        groups: &[String],
        positions: impl Iterator<Item = (&'a str, i32, i64)> + Clone,
    ) {
        self.with(|live| {
            for g in groups {
                if let Some(l) = live.get_mut(g) {
                    if l.phase <= Phase::Quiescing {
                        for (t, p, o) in positions.clone() {
                            let e = l.positions.entry((t.to_string(), p)).or_insert(o);
                            *e = (*e).max(o);
                        }
                    }
                }
            }
        });
    }

    pub fn positions(&self, group: &str) -> HashMap<(String, i32), i64> {
        self.with(|live| {
            live.get(group)
                .map(|l| l.positions.clone())
                .unwrap_or_default()
        })
    }

    pub fn joins_waiting(&self, group: &str) -> usize {
        self.with(|live| live.get(group).map_or(0, |l| l.joins_waiting))
    }

    /// Whether every identity whose fetches were held has rejoined.
    pub fn all_rejoined(&self, group: &str) -> bool {
        self.with(|live| {
            live.get(group)
                .is_none_or(|l| l.held.iter().all(|k| l.rejoined.contains(k)))
        })
    }

    /// A JoinGroup of `group` by `key` went to the group's new cluster.
    pub fn rejoined(&self, group: &str, key: &IdentityKey) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                if l.phase >= Phase::Flipped {
                    l.rejoined.insert(key.clone());
                }
            }
        });
    }

    /// Decides what happens to one group request of `member` arriving on a
    /// connection to cluster `here`.
    pub fn verdict(&self, group: &str, api: ApiKey, member: &str, here: &str) -> Verdict {
        self.with(|live| {
            let Some(l) = live.get_mut(group) else {
                return Verdict::Forward;
            };
            let flipped = l.phase >= Phase::Flipped;
            if flipped && !member.is_empty() && l.old_members.contains(member) {
                return Verdict::UnknownMember;
            }
            match api {
                ApiKey::Heartbeat if l.phase == Phase::Quiescing && l.eager && here == l.from => {
                    Verdict::Rebalance
                }
                ApiKey::JoinGroup if (Phase::Quiescing..Phase::Flipped).contains(&l.phase) => {
                    l.joins_waiting += 1;
                    Verdict::Wait(l.release.subscribe())
                }
                _ => Verdict::Forward,
            }
        })
    }

    /// A held rejoin finished waiting.
    pub fn join_released(&self, group: &str) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.joins_waiting = l.joins_waiting.saturating_sub(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
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
        assert!(!s.fetch_held(&groups, &key("a")));
        s.set_phase("g", Phase::Quiescing);
        s.set_eager("g", true);
        assert!(s.fetch_held(&groups, &key("a")));
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
        assert!(s.fetch_held(&groups, &key("a")));
        assert!(!s.all_rejoined("g"));
        s.rejoined("g", &key("a"));
        assert!(!s.fetch_held(&groups, &key("a")));
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
}
