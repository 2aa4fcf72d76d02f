//! The group handoff (DESIGN.md decision 9, PROTOCOL.md §3), one task per switch:
//!
//! 1. `waiting` (`when = "drained"`): until the offsets translate, i.e. the group has
//!    read what is left on the old cluster.
//! 2. `quiescing`: the group's fetches are held (answered without records), eager
//!    groups are asked to rebalance so they commit and revoke, rejoins are held;
//!    until commits reach the positions the members fetched at (30 s at most).
//! 3. `leaving`: the members are removed from the old group, so every member's next
//!    heartbeat there fails and it drops its positions ("partitions lost").
//! 4. `translated`: the final committed offsets are read and translated.
//! 5. `committed`: the translation is committed on the new cluster, admin-style.
//! 6. `flipped`: the route flips; held rejoins are sent to the new coordinator; old
//!    member ids are told UNKNOWN_MEMBER_ID there; fetches stay held per client
//!    until it rejoined, so none reads the new cluster at an old position.
//! 7. `done`: every held client rejoined (or 60 s passed).
//!
//! Every phase is written to the state store before it takes effect. A proxy that
//! restarts before `flipped` keeps the group on its old cluster and runs the switch
//! again from the start (every step before the flip can be repeated); from `flipped`
//! on the group is on the new cluster, where its offsets already are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{OffsetStrategy, SwitchWhen};
use crate::metrics;
use crate::proxy::Proxy;
use crate::state::{GroupSwitch, OffsetMove, Phase};

use crate::switch::coordination::{
    Coordinator, GroupPhase, GroupStat, GROUP_PREFIX, GROUP_STAT_PREFIX,
};
use crate::switch::groups::Release;
use crate::switch::ops;
use crate::switch::translate::{self, Committed, TranslateCtx, TranslateError};

/// How long quiescing waits for commits to reach positions.
const QUIESCE_MAX: Duration = Duration::from_secs(30);
/// Cooperative groups: the least time fetches are held before leaving, so records
/// already delivered are processed and committed.
const QUIESCE_MIN: Duration = Duration::from_secs(3);
/// How long held fetches wait for their clients to rejoin after the flip.
const REJOIN_MAX: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);
const DRAIN_POLL: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum End {
    Cancelled,
    Failed(String),
    /// With `[coordination]`: this instance no longer leads (or cannot record the
    /// phase); whoever leads resumes the switch from its recorded phase.
    Abandoned,
}

/// Test hook: a pause after each phase is recorded, so a test can kill the proxy
/// at every phase boundary.
fn phase_pause() -> Option<Duration> {
    std::env::var("SWITCHYARD_TEST_PHASE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

struct Driver<'a> {
    proxy: &'a Proxy,
    sw: GroupSwitch,
    timeout: Duration,
    strategy: OffsetStrategy,
    when: SwitchWhen,
    /// With `[coordination]`: the switch is driven by the leader of the
    /// coordination group and followed by every other instance.
    coord: Option<Arc<Coordinator>>,
    /// What the other instances need to apply a phase (see `GroupPhase`).
    eager: bool,
    old_members: Vec<String>,
    assignor: String,
    had_members: bool,
}

impl Driver<'_> {
    async fn enter(&mut self, phase: Phase) -> Result<(), End> {
        if self.coord.as_ref().is_some_and(|c| !c.leads()) {
            return Err(End::Abandoned);
        }
        self.sw.phase = phase;
        self.sw.updated_at_ms = now_ms();
        self.proxy
            .state()
            .record_group(self.sw.clone())
            .map_err(|e| End::Failed(e.to_string()))?;
        self.proxy.group_switches.set_phase(&self.sw.group, phase);
        metrics::switch_phase("group", &self.sw.group, phase);
        tracing::info!(group = %self.sw.group, from = %self.sw.from, to = %self.sw.to, phase = phase.as_str(), "group switch phase");
        self.publish().await?;
        if let Some(pause) = phase_pause().filter(|_| !phase.finished()) {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// Records the switch as it stands in the shared log, for every instance to
    /// apply (`[coordination]` only).
    async fn publish(&self) -> Result<(), End> {
        let Some(c) = &self.coord else {
            return Ok(());
        };
        let record = GroupPhase {
            switch: self.sw.clone(),
            eager: self.eager,
            old_members: self.old_members.clone(),
            assignor: self.assignor.clone(),
            had_members: self.had_members,
            by: c.config.instance.clone(),
            run: c.run,
        };
        let key = format!("{GROUP_PREFIX}{}", self.sw.group);
        c.publish(&key, &record).await.map_err(|e| {
            tracing::warn!(group = %self.sw.group, error = %e, "group switch phase not recorded in the shared state; the leader resumes it");
            End::Abandoned
        })?;
        Ok(())
    }

    /// What the other instances report of the switch (`[coordination]`).
    fn others(&self) -> Vec<GroupStat> {
        self.coord
            .as_ref()
            .map(|c| c.others_stats(&self.sw.group, self.sw.route_version))
            .unwrap_or_default()
    }

    /// Highest fetch positions seen while quiescing, on every instance.
    fn positions(&self) -> HashMap<(String, i32), i64> {
        let mut all = self.proxy.group_switches.positions(&self.sw.group);
        for s in self.others() {
            for (t, p, o) in s.positions {
                let e = all.entry((t, p)).or_insert(o);
                *e = (*e).max(o);
            }
        }
        all
    }

    fn joins_waiting(&self) -> usize {
        let here = self.proxy.group_switches.joins_waiting(&self.sw.group);
        here + self.others().iter().map(|s| s.joins_waiting).sum::<usize>()
    }

    fn all_rejoined(&self) -> bool {
        self.proxy.group_switches.all_rejoined(&self.sw.group)
            && self.others().iter().all(|s| s.all_rejoined)
    }

    /// Members still without their real assignment on the new cluster (each is
    /// served by one instance), and translated partitions no instance has seen
    /// fetched there yet (a partition is fetched through one instance only).
    fn unsettled(&self) -> (Vec<String>, Vec<(String, i32)>) {
        let (mut members, mut partitions) = self.proxy.group_switches.unsettled(&self.sw.group);
        for s in self.others() {
            members.extend(s.unsettled_members);
            partitions.retain(|p| s.unsettled_partitions.contains(p));
        }
        members.sort();
        members.dedup();
        (members, partitions)
    }

    /// What this instance sees of the switch, for the leader.
    fn local_stat(&self, c: &Coordinator) -> GroupStat {
        let switches = &self.proxy.group_switches;
        let mut positions: Vec<(String, i32, i64)> = switches
            .positions(&self.sw.group)
            .into_iter()
            .map(|((t, p), o)| (t, p, o))
            .collect();
        positions.sort();
        let (unsettled_members, unsettled_partitions) = switches.unsettled(&self.sw.group);
        GroupStat {
            group: self.sw.group.clone(),
            route_version: self.sw.route_version,
            instance: c.config.instance.clone(),
            positions,
            joins_waiting: switches.joins_waiting(&self.sw.group),
            all_rejoined: switches.all_rejoined(&self.sw.group),
            unsettled_members,
            unsettled_partitions,
        }
    }

    fn cancelled(&self) -> Result<(), End> {
        if self.proxy.group_switches.cancelled(&self.sw.group) {
            Err(End::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn translate(&self, committed: &Committed) -> Result<Vec<OffsetMove>, TranslateError> {
        let routes = self.proxy.routes();
        let cluster = |n: &str| {
            self.proxy
                .cluster(n)
                .map(|c| c.as_ref())
                .ok_or_else(|| TranslateError::Impossible(format!("unknown cluster `{n}`")))
        };
        let cx = TranslateCtx {
            group: &self.sw.group,
            routes: &routes,
            from: cluster(&self.sw.from)?,
            to: cluster(&self.sw.to)?,
            state: self.proxy.state(),
            timeout: self.timeout,
        };
        translate::translate(self.strategy, &cx, committed).await
    }

    async fn committed(&self) -> Result<Committed, String> {
        let from = self
            .proxy
            .cluster(&self.sw.from)
            .ok_or_else(|| format!("unknown cluster `{}`", self.sw.from))?;
        let physical = ops::committed(from, &self.sw.group, self.timeout).await?;
        Ok(translate::logical(
            &self.proxy.routes(),
            &self.sw.from,
            physical,
        ))
    }

    /// Records left on the old cluster for the group, for `switchyard_group_lag`.
    async fn lag(&self, committed: &Committed) -> Option<i64> {
        let from = self.proxy.cluster(&self.sw.from)?;
        let routes = self.proxy.routes();
        let mut topics: std::collections::BTreeSet<&str> = Default::default();
        topics.extend(committed.keys().map(|(t, _)| t.as_str()));
        let mut lag = 0;
        for t in topics {
            let ends = ops::offsets_at(
                from,
                &routes.physical_topic(t, &self.sw.from),
                ops::LATEST,
                self.timeout,
            )
            .await
            .ok()?;
            for (p, end) in ends {
                let c = committed.get(&(t.to_string(), p)).copied().unwrap_or(0);
                lag += (end - c).max(0);
            }
        }
        Some(lag)
    }

    async fn run(&mut self) -> Result<(), End> {
        let group = self.sw.group.clone();
        let switches = &self.proxy.group_switches;
        if self.sw.phase == Phase::Waiting {
            loop {
                self.cancelled()?;
                let outcome = match self.committed().await {
                    Ok(committed) => {
                        if let Some(lag) = self.lag(&committed).await {
                            metrics::group_lag(&group, &self.sw.from, lag);
                        }
                        self.translate(&committed).await.map(|_| ())
                    }
                    Err(e) => Err(TranslateError::NotYet(e)),
                };
                match outcome {
                    Ok(()) => break,
                    Err(e) if self.when == SwitchWhen::Now => {
                        return Err(End::Failed(e.to_string()));
                    }
                    Err(e) => {
                        let reason = Some(format!("waiting: {e}"));
                        if self.sw.reason != reason {
                            self.sw.reason = reason;
                            self.enter(Phase::Waiting).await?;
                        }
                    }
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
            self.sw.reason = None;
        }

        // Quiesce: hold fetches (and rejoins); eager groups are told to rebalance.
        self.enter(Phase::Quiescing).await?;
        let from = self
            .proxy
            .cluster(&self.sw.from)
            .ok_or_else(|| End::Failed("unknown cluster".into()))?
            .clone();
        let to = self
            .proxy
            .cluster(&self.sw.to)
            .ok_or_else(|| End::Failed("unknown cluster".into()))?
            .clone();
        let info = ops::describe_group(&from, &group, self.timeout)
            .await
            .map_err(End::Failed)?;
        let eager = !info.members.is_empty() && !info.cooperative();
        self.assignor = info.protocol.clone();
        switches.set_eager(&group, eager);
        self.eager = eager;
        self.publish().await?;
        tracing::info!(%group, protocol = %info.protocol, members = info.members.len(), eager, "quiescing group");
        let started = Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            self.cancelled()?;
            let committed = self.committed().await.map_err(End::Failed)?;
            let positions = self.positions();
            let caught_up = positions
                .iter()
                .all(|(k, pos)| committed.get(k).is_some_and(|c| c >= pos));
            let settled = if eager {
                self.joins_waiting() >= info.members.len()
            } else {
                started.elapsed() >= QUIESCE_MIN
            };
            if caught_up && settled {
                break;
            }
            if started.elapsed() >= QUIESCE_MAX {
                let behind: Vec<String> = positions
                    .iter()
                    .filter(|(k, pos)| committed.get(*k).is_none_or(|c| c < *pos))
                    .map(|((t, p), pos)| format!("{t}-{p} at {pos}"))
                    .collect();
                tracing::warn!(%group, behind = ?behind, "commits did not reach positions while quiescing; records read since the last commit will be read again");
                break;
            }
        }

        // Leave: remove every member from the old group.
        self.enter(Phase::Leaving).await?;
        let info = ops::describe_group(&from, &group, self.timeout)
            .await
            .map_err(End::Failed)?;
        if !info.protocol.is_empty() {
            self.assignor = info.protocol.clone();
        }
        // An empty group has nobody to settle: its first member reads the
        // committed offsets anyway.
        let had_members = !info.members.is_empty();
        self.had_members = had_members;
        switches.add_old_members(&group, info.members.iter().map(|(m, _)| m.as_str()));
        self.old_members
            .extend(info.members.iter().map(|(m, _)| m.clone()));
        self.publish().await?;
        ops::remove_members(&from, &group, &info.members, self.timeout)
            .await
            .map_err(End::Failed)?;

        // Final offsets, translated.
        let committed = self.committed().await.map_err(End::Failed)?;
        let moves = self
            .translate(&committed)
            .await
            .map_err(|e| End::Failed(e.to_string()))?;
        self.sw.moves = moves;
        self.enter(Phase::Translated).await?;

        // Commit on the new cluster, admin-style.
        let routes = self.proxy.routes();
        let physical = self
            .sw
            .moves
            .iter()
            .map(|m| {
                (
                    (routes.physical_topic(&m.topic, &self.sw.to), m.partition),
                    m.new_offset,
                )
            })
            .collect();
        ops::admin_commit(&to, &group, &physical, self.timeout)
            .await
            .map_err(End::Failed)?;
        self.enter(Phase::Committed).await?;
        self.cancelled()?;

        // Flip: durable first, then the table; then let held rejoins go. From here
        // on every member settles on the new cluster (switch::groups::Settle).
        switches.flipping(
            &group,
            &self.sw.to,
            &self.assignor,
            self.sw
                .moves
                .iter()
                .filter(|_| had_members)
                .map(|m| ((m.topic.clone(), m.partition), m.new_offset)),
        );
        self.enter(Phase::Flipped).await?;
        self.proxy.unpin_group(&group).await;
        switches.release(&group, Release::Flipped);
        self.settle().await
    }

    /// Done means every held client rejoined, every member holds its real
    /// assignment on the new cluster and every translated partition was fetched
    /// there (and audited), on every instance, or REJOIN_MAX passed: then what is
    /// missing is said.
    async fn settle(&self) -> Result<(), End> {
        let flipped = Instant::now();
        loop {
            if self.coord.as_ref().is_some_and(|c| !c.leads()) {
                return Err(End::Abandoned);
            }
            let (members, partitions) = self.unsettled();
            let settled = members.is_empty() && partitions.is_empty();
            if self.all_rejoined() && settled {
                break;
            }
            if flipped.elapsed() >= REJOIN_MAX {
                tracing::warn!(
                    group = %self.sw.group,
                    cluster = %self.sw.to,
                    members_without_assignment = ?members,
                    partitions_not_fetched = ?partitions,
                    rejoined = self.all_rejoined(),
                    "group switch done, but not every member reads the new cluster yet"
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

/// What an instance does next in a switch it does not drive.
enum Turn {
    /// Drive it from the start (it had not flipped).
    Drive,
    /// It flipped: drive it to its end.
    Settle,
    /// It ended (its end was applied from the log).
    Over,
}

/// With `[coordination]`, an instance that does not lead follows the switch: the
/// phases the leader records are applied here as they are read
/// (`Proxy::follow_group_phase`), and what this instance sees of the group's
/// members is reported for the leader. Once this instance leads (the leader left
/// the group), it takes over from the recorded phase.
async fn follow(d: &mut Driver<'_>, c: &Coordinator) -> Turn {
    let mut reported: Option<GroupStat> = None;
    loop {
        if !d.proxy.group_switches.is_live(&d.sw.group) {
            return Turn::Over;
        }
        if c.leads() {
            let recorded = c.group_phase(&d.sw.group, d.sw.route_version);
            return match recorded {
                Some(p) if p.switch.phase.finished() => Turn::Over,
                Some(p) if p.switch.phase >= Phase::Flipped => {
                    // The recorded switch, under this instance's own start time
                    // (what names it in this instance's state and registry).
                    let started = d.sw.started_at_ms;
                    d.sw = p.switch;
                    d.sw.started_at_ms = started;
                    d.eager = p.eager;
                    d.old_members = p.old_members;
                    d.assignor = p.assignor;
                    d.had_members = p.had_members;
                    Turn::Settle
                }
                Some(p) => {
                    d.old_members = p.old_members;
                    Turn::Drive
                }
                None => Turn::Drive,
            };
        }
        let stat = d.local_stat(c);
        if reported.as_ref() != Some(&stat) {
            let key = format!("{GROUP_STAT_PREFIX}{}/{}", c.config.instance, d.sw.group);
            if c.publish(&key, &stat).await.is_ok() {
                reported = Some(stat);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `group`'s offsets on `from` translate to `to` right now (a dry run: the
/// translation is computed and thrown away).
pub async fn check(
    proxy: &Proxy,
    group: &str,
    from: &str,
    to: &str,
    strategy: OffsetStrategy,
) -> Result<Vec<OffsetMove>, TranslateError> {
    let d = Driver {
        proxy,
        sw: GroupSwitch {
            group: group.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            offsets: strategy.as_str().to_string(),
            when: "now".into(),
            phase: Phase::Waiting,
            reason: None,
            moves: Vec::new(),
            started_at_ms: 0,
            updated_at_ms: 0,
            route_version: 0,
        },
        timeout: proxy
            .config()
            .proxy
            .connect_timeout
            .max(Duration::from_secs(10)),
        strategy,
        when: SwitchWhen::Now,
        coord: None,
        eager: false,
        old_members: Vec::new(),
        assignor: String::new(),
        had_members: false,
    };
    let committed = d.committed().await.map_err(TranslateError::NotYet)?;
    d.translate(&committed).await
}

/// Runs one group switch to its end and records how it ended.
pub async fn run(proxy: Arc<Proxy>, sw: GroupSwitch) {
    let timeout = proxy
        .config()
        .proxy
        .connect_timeout
        .max(Duration::from_secs(10));
    let strategy = OffsetStrategy::parse(&sw.offsets).unwrap_or(OffsetStrategy::Marks);
    let when = SwitchWhen::parse(&sw.when).unwrap_or(SwitchWhen::Drained);
    let group = sw.group.clone();
    let coord = proxy.coordination.clone();
    let mut d = Driver {
        proxy: &proxy,
        sw,
        timeout,
        strategy,
        when,
        coord: coord.clone(),
        eager: false,
        old_members: Vec::new(),
        assignor: String::new(),
        had_members: false,
    };
    let outcome = match coord {
        None => d.run().await,
        Some(c) => loop {
            let driven = match follow(&mut d, &c).await {
                Turn::Over => return,
                Turn::Drive => {
                    tracing::info!(group = %d.sw.group, "group switch driven here: this instance leads the coordination group");
                    d.sw.phase = Phase::Waiting;
                    d.run().await
                }
                Turn::Settle => {
                    tracing::info!(group = %d.sw.group, "group switch taken over after its flip: this instance leads the coordination group now");
                    d.settle().await
                }
            };
            match driven {
                Err(End::Abandoned) => continue,
                other => break other,
            }
        },
    };
    let (phase, release, outcome_label) = match outcome {
        Ok(()) => (Phase::Done, Release::Flipped, "ok"),
        Err(End::Cancelled) => (Phase::Cancelled, Release::Stay, "cancelled"),
        // Only with coordination, where the loop above follows it again instead;
        // whoever leads records its end.
        Err(End::Abandoned) => return,
        Err(End::Failed(reason)) => {
            tracing::warn!(%group, %reason, "group switch failed; the group stays where it was");
            d.sw.reason = Some(reason);
            (Phase::Failed, Release::Stay, "failed")
        }
    };
    if phase != Phase::Done {
        d.sw.moves.clear();
    } else {
        d.sw.reason = None;
    }
    // A later switch of the group may have replaced this one (a reload pointed it
    // elsewhere after the flip): its record stays.
    let superseded = proxy
        .group_switch_records()
        .iter()
        .any(|r| r.group == group && r.started_at_ms != d.sw.started_at_ms);
    if !superseded {
        let _ = d.enter(phase).await;
    }
    metrics::switch("group", outcome_label);
    // The lag gauge is for groups in a switch.
    metrics::group_lag(&group, &d.sw.from, 0);
    proxy
        .group_switches
        .finish(&group, d.sw.started_at_ms, release);
}
