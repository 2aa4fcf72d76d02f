//! What the request path must know about group switches in progress (PROTOCOL.md
//! §3): whose fetches are held, whose heartbeats are told to rebalance, which
//! rejoins wait for the flip, and which member ids are told they are unknown once
//! the group lives elsewhere. The switch itself is driven by [`super::handoff`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// From the flip on: how members come to read the new cluster.
    settle: Option<Settle>,
    /// Set when the switch finished with members still waiting for their real
    /// assignment: the entry is kept for them until then.
    linger_until: Option<Instant>,
}

/// How long a finished switch keeps asking members that hold the empty assignment
/// to rejoin. A member alive in the group heartbeats every few seconds and is told
/// to rejoin on each heartbeat.
const LINGER: Duration = Duration::from_secs(600);

/// After the flip: every member is made to re-read its committed (translated)
/// offsets on the new cluster, and nothing of the old cluster's offset space is
/// committed there (docs/group-handoff.md).
#[derive(Debug)]
struct Settle {
    to: String,
    /// The assignor's assignments carry only partitions (the consumer protocol's
    /// built-in assignors): the first assignment each member gets on the new
    /// cluster is answered as an empty one, then the member is asked to rejoin.
    empty_first: bool,
    /// Members answered an empty assignment, waiting for their real one, with
    /// their identity; each heartbeat of theirs is answered REBALANCE_IN_PROGRESS.
    emptied: HashMap<String, IdentityKey>,
    /// Identities with a member holding its real assignment on the new cluster.
    settled_keys: HashSet<IdentityKey>,
    /// Members that hold their real assignment on the new cluster; only they commit.
    settled: HashSet<String>,
    /// Translated offset of each partition, until its first fetch on the new cluster.
    expect: HashMap<(String, i32), i64>,
}

/// Assignors of the consumer protocol whose assignments hold nothing but
/// partitions, in Java, librdkafka, franz-go and kafka-go alike. Others (Kafka
/// Streams' `stream`, Connect) carry state in the assignment that an empty one
/// would break; their members keep the old path.
const PLAIN_ASSIGNORS: &[&str] = &["range", "roundrobin", "sticky", "cooperative-sticky"];

/// What the proxy does with a SyncGroup answer on the new cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncVerdict {
    /// As the broker answered.
    Pass,
    /// An empty assignment instead; the member is then asked to rejoin.
    Empty,
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
        // A finished switch lingers while members still wait for their real
        // assignment (see `finish`), at most LINGER.
        let now = Instant::now();
        live.retain(|_, l| match l.linger_until {
            None => true,
            Some(until) => now < until && l.settle.as_ref().is_some_and(|s| !s.emptied.is_empty()),
        });
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
                    settle: None,
                    linger_until: None,
                },
            );
        });
    }

    pub fn is_live(&self, group: &str) -> bool {
        self.with(|live| live.get(group).is_some_and(|l| l.linger_until.is_none()))
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
    ///
    /// Members answered an empty assignment that have not had their real one yet
    /// keep the switch's settle rules (a rebalance asked on every heartbeat, their
    /// commits refused) until they have, for at most [`LINGER`]: a member must never
    /// be left holding the empty assignment.
    pub fn finish(&self, group: &str, started: u64, how: Release) {
        self.with(|live| {
            if live.get(group).is_some_and(|l| l.started == started) {
                let waiting = live[group]
                    .settle
                    .as_ref()
                    .is_some_and(|s| !s.emptied.is_empty());
                if waiting {
                    let l = live.get_mut(group).expect("checked above");
                    l.phase = Phase::Done;
                    l.linger_until = Some(Instant::now() + LINGER);
                    l.release.send_replace(how);
                } else if let Some(l) = live.remove(group) {
                    l.release.send_replace(how);
                }
            }
        });
    }

    /// Whether a fetch by `key` (linked to `groups`) on `here` must be held: one of
    /// its groups is quiescing or has flipped and this identity has not rejoined
    /// yet; or, on the group's new cluster until the switch is done, the identity
    /// has no member holding its real assignment there yet, or has one still
    /// waiting for it. A cooperative member keeps fetching the partitions it still
    /// owns between its JoinGroup and its SyncGroup, at positions of the old
    /// cluster; those fetches get no records.
    pub fn fetch_held(&self, groups: &[String], key: &IdentityKey, here: &str) -> bool {
        self.with(|live| {
            let mut held = false;
            for g in groups {
                if let Some(l) = live.get_mut(g) {
                    let switching = (Phase::Quiescing..=Phase::Flipped).contains(&l.phase);
                    if switching && !l.rejoined.contains(key) {
                        l.held.insert(key.clone());
                        held = true;
                    }
                    if let Some(s) = l.settle.as_ref().filter(|s| s.to == here) {
                        let unsettled =
                            !s.settled_keys.contains(key) || s.emptied.values().any(|k| k == key);
                        if switching && unsettled {
                            held = true;
                        }
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
            if api == ApiKey::Heartbeat {
                // Every heartbeat, until the member's SyncGroup brought its real
                // assignment: a client that missed or ignored one answer is asked
                // again, never left with the empty assignment.
                if let Some(s) = l.settle.as_ref().filter(|s| s.to == here) {
                    if s.emptied.contains_key(member) {
                        return Verdict::Rebalance;
                    }
                }
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

    /// The switch flips to `to`: from now on members settle there (see [`Settle`]).
    /// `assignor` is the group's protocol as the old cluster reported it;
    /// `translated` the offset each partition resumes from.
    pub fn flipping(
        &self,
        group: &str,
        to: &str,
        assignor: &str,
        translated: impl Iterator<Item = ((String, i32), i64)>,
    ) {
        self.with(|live| {
            if let Some(l) = live.get_mut(group) {
                l.settle = Some(Settle {
                    to: to.to_string(),
                    empty_first: PLAIN_ASSIGNORS.contains(&assignor),
                    emptied: HashMap::new(),
                    settled_keys: HashSet::new(),
                    settled: HashSet::new(),
                    expect: translated.filter(|(_, o)| *o >= 0).collect(),
                });
            }
        });
    }

    /// A SyncGroup of `member` on `here`: whether its answer is made empty.
    pub fn sync_verdict(&self, group: &str, member: &str, here: &str) -> SyncVerdict {
        self.with(|live| {
            let Some(s) = live.get_mut(group).and_then(|l| l.settle.as_mut()) else {
                return SyncVerdict::Pass;
            };
            if s.to != here || !s.empty_first || s.emptied.contains_key(member) {
                return SyncVerdict::Pass;
            }
            if s.settled.contains(member) {
                return SyncVerdict::Pass;
            }
            SyncVerdict::Empty
        })
    }

    /// The broker accepted `member`'s SyncGroup on the new cluster and the member
    /// was given `verdict`'s answer.
    pub fn synced(&self, group: &str, member: &str, key: &IdentityKey, verdict: SyncVerdict) {
        self.with(|live| {
            if let Some(s) = live.get_mut(group).and_then(|l| l.settle.as_mut()) {
                match verdict {
                    SyncVerdict::Empty => {
                        s.emptied.insert(member.to_string(), key.clone());
                    }
                    SyncVerdict::Pass => {
                        s.emptied.remove(member);
                        s.settled.insert(member.to_string());
                        s.settled_keys.insert(key.clone());
                    }
                }
            }
        });
    }

    /// Whether an OffsetCommit of `member` on `here` is refused: after the flip,
    /// on the new cluster, only members holding their real assignment there commit
    /// (an admin commit, with no member id, is not a member's).
    pub fn commit_fenced(&self, group: &str, member: &str, here: &str) -> bool {
        self.with(|live| {
            live.get(group)
                .and_then(|l| l.settle.as_ref())
                .is_some_and(|s| s.to == here && !member.is_empty() && !s.settled.contains(member))
        })
    }

    /// The first fetch of each partition on the new cluster, by a member of
    /// `groups` that is not held: compared with the translated offset. Returns the
    /// (group, topic, partition, fetched, translated) of every mismatch.
    pub fn audit<'a>(
        &self,
        groups: &[String],
        here: &str,
        positions: impl Iterator<Item = (&'a str, i32, i64)> + Clone,
    ) -> Vec<(String, String, i32, i64, i64)> {
        self.with(|live| {
            let mut out = Vec::new();
            for g in groups {
                let Some(s) = live.get_mut(g).and_then(|l| l.settle.as_mut()) else {
                    continue;
                };
                if s.to != here || s.expect.is_empty() {
                    continue;
                }
                for (t, p, o) in positions.clone() {
                    if let Some(want) = s.expect.remove(&(t.to_string(), p)) {
                        if o != want {
                            out.push((g.clone(), t.to_string(), p, o, want));
                        }
                    }
                }
            }
            out
        })
    }

    /// What is still unsettled after the flip: members without their real
    /// assignment, and partitions not fetched on the new cluster yet.
    pub fn unsettled(&self, group: &str) -> (Vec<String>, Vec<(String, i32)>) {
        self.with(
            |live| match live.get(group).and_then(|l| l.settle.as_ref()) {
                Some(s) => {
                    let mut members: Vec<String> = s.emptied.keys().cloned().collect();
                    members.sort();
                    let mut parts: Vec<(String, i32)> = s.expect.keys().cloned().collect();
                    parts.sort();
                    (members, parts)
                }
                None => (Vec::new(), Vec::new()),
            },
        )
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
mod tests;
