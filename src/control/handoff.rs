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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{OffsetStrategy, SwitchWhen};
use crate::metrics;
use crate::proxy::Proxy;
use crate::state::{GroupSwitch, OffsetMove, Phase};

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
}

impl Driver<'_> {
    async fn enter(&mut self, phase: Phase) -> Result<(), End> {
        self.sw.phase = phase;
        self.sw.updated_at_ms = now_ms();
        self.proxy
            .state()
            .record_group(self.sw.clone())
            .map_err(|e| End::Failed(e.to_string()))?;
        self.proxy.group_switches.set_phase(&self.sw.group, phase);
        metrics::switch_phase("group", &self.sw.group, phase);
        tracing::info!(group = %self.sw.group, from = %self.sw.from, to = %self.sw.to, phase = phase.as_str(), "group switch phase");
        if let Some(pause) = phase_pause().filter(|_| !phase.finished()) {
            tokio::time::sleep(pause).await;
        }
        Ok(())
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
        let mut assignor = info.protocol.clone();
        switches.set_eager(&group, eager);
        tracing::info!(%group, protocol = %info.protocol, members = info.members.len(), eager, "quiescing group");
        let started = Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            self.cancelled()?;
            let committed = self.committed().await.map_err(End::Failed)?;
            let positions = switches.positions(&group);
            let caught_up = positions
                .iter()
                .all(|(k, pos)| committed.get(k).is_some_and(|c| c >= pos));
            let settled = if eager {
                switches.joins_waiting(&group) >= info.members.len()
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
            assignor = info.protocol.clone();
        }
        // An empty group has nobody to settle: its first member reads the
        // committed offsets anyway.
        let had_members = !info.members.is_empty();
        switches.add_old_members(&group, info.members.iter().map(|(m, _)| m.as_str()));
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
            &assignor,
            self.sw
                .moves
                .iter()
                .filter(|_| had_members)
                .map(|m| ((m.topic.clone(), m.partition), m.new_offset)),
        );
        self.enter(Phase::Flipped).await?;
        self.proxy.unpin_group(&group).await;
        switches.release(&group, Release::Flipped);
        let flipped = Instant::now();
        // Done means every held client rejoined, every member holds its real
        // assignment on the new cluster and every translated partition was fetched
        // there (and audited), or REJOIN_MAX passed: then what is missing is said.
        loop {
            let (members, partitions) = switches.unsettled(&group);
            let settled = members.is_empty() && partitions.is_empty();
            if switches.all_rejoined(&group) && settled {
                break;
            }
            if flipped.elapsed() >= REJOIN_MAX {
                tracing::warn!(
                    %group,
                    cluster = %self.sw.to,
                    members_without_assignment = ?members,
                    partitions_not_fetched = ?partitions,
                    rejoined = switches.all_rejoined(&group),
                    "group switch done, but not every member reads the new cluster yet"
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
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
        },
        timeout: proxy
            .config()
            .proxy
            .connect_timeout
            .max(Duration::from_secs(10)),
        strategy,
        when: SwitchWhen::Now,
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
    let mut d = Driver {
        proxy: &proxy,
        sw,
        timeout,
        strategy,
        when,
    };
    let outcome = d.run().await;
    let (phase, release, outcome_label) = match outcome {
        Ok(()) => (Phase::Done, Release::Flipped, "ok"),
        Err(End::Cancelled) => (Phase::Cancelled, Release::Stay, "cancelled"),
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
