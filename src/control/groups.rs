//! Group switches and rollbacks asked for through the admin API or CLI, the
//! resumption of unfinished ones at start, and the flip of a group's route.

use std::sync::Arc;

use super::{handoff, Changing, GroupSwitchRequest, SwitchRefused};
use crate::config::{ConfigErrors, GroupRoute, Matcher, OffsetStrategy, SwitchWhen};
use crate::metrics;
use crate::proxy::Proxy;
use crate::state::{GroupSwitch, Phase};
use crate::switch::coordination::{Coordinator, GroupPhase};
use crate::switch::groups::Release;

impl Proxy {
    /// Picks up group switches a previous run left unfinished: before the flip the
    /// group stays on its old cluster and the switch runs again from the start; from
    /// the flip on it is on the new cluster and the switch is over.
    pub fn resume_switches(self: &Arc<Self>) {
        let table = self.routes();
        let mut pins = table.pins.clone();
        for mut sw in self.state.group_switches() {
            if sw.phase.finished() {
                continue;
            }
            let configured = table.configured_group_cluster(&sw.group).to_string();
            if sw.phase >= Phase::Flipped {
                tracing::info!(group = %sw.group, to = %sw.to, "group switch had flipped before the restart; done");
                sw.phase = Phase::Done;
                if let Err(e) = self.state.record_group(sw) {
                    tracing::error!(error = %e, "could not record a group switch in the state store; it is redone at the next start");
                }
                continue;
            }
            if configured != sw.to {
                tracing::info!(group = %sw.group, "group switch left unfinished and no longer configured; cancelled");
                sw.phase = Phase::Cancelled;
                if let Err(e) = self.state.record_group(sw) {
                    tracing::error!(error = %e, "could not record a group switch in the state store; it is redone at the next start");
                }
                continue;
            }
            tracing::info!(group = %sw.group, from = %sw.from, to = %sw.to, phase = sw.phase.as_str(), "resuming group switch from the start; the group stays on its old cluster meanwhile");
            sw.phase = Phase::Waiting;
            sw.reason = None;
            sw.moves.clear();
            pins.insert(sw.group.clone(), sw.from.clone());
            self.group_switches
                .start(&sw.group, &sw.from, Phase::Waiting, sw.started_at_ms);
            self.spawn(handoff::run(self.clone(), sw));
        }
        let mut t = (*table).clone();
        t.pins = pins;
        self.routes.store(Arc::new(t));
    }

    /// The switch of `group` flipped: it follows its row from now on.
    pub async fn unpin_group(&self, group: &str) {
        let changing = self.changing.lock().await;
        self.unpin_group_locked(&changing, group);
    }

    fn unpin_group_locked(&self, _changing: &Changing<'_>, group: &str) {
        let mut t = (*self.routes()).clone();
        t.pins.remove(group);
        tracing::info!(
            group,
            cluster = t.group_cluster(group),
            "group route flipped"
        );
        self.routes.store(Arc::new(t));
    }

    /// A phase of a group switch recorded in the shared log by the instance that
    /// drives it (`[coordination]`), applied here: the request path holds, steers
    /// and settles the group's members on this instance as the driver's does. A
    /// switch this instance had not started (it joined the migration after the
    /// switch began) is taken up at the recorded phase.
    pub(crate) fn follow_group_phase(
        self: &Proxy,
        changing: &Changing<'_>,
        c: &Coordinator,
        p: GroupPhase,
    ) {
        let group = p.switch.group.clone();
        c.group_phases
            .lock()
            .expect("group phases lock")
            .insert(group.clone(), p.clone());
        if p.by == c.config.instance && p.run == c.run {
            // Written by this process, which applied it before writing it.
            return;
        }
        let phase = p.switch.phase;
        let switches = &self.group_switches;
        let local = self.state.group_switches().into_iter().find(|s| {
            s.group == group
                && s.from == p.switch.from
                && s.to == p.switch.to
                && !s.phase.finished()
                && switches.is_live(&group)
        });
        let mut local = match local {
            Some(l) => l,
            None if phase.finished() => return,
            None => {
                let mut l = p.switch.clone();
                l.started_at_ms = handoff::now_ms();
                tracing::info!(%group, from = %l.from, to = %l.to, phase = phase.as_str(), "group switch in progress elsewhere taken up here");
                switches.start(&group, &l.from, phase, l.started_at_ms);
                if phase < Phase::Flipped {
                    let mut t = (*self.routes()).clone();
                    t.pins.insert(group.clone(), l.from.clone());
                    self.routes.store(Arc::new(t));
                }
                if let Some(me) = self.me.upgrade() {
                    self.spawn(handoff::run(me, l.clone()));
                }
                l
            }
        };
        let before = local.phase;
        local.phase = phase;
        local.reason = p.switch.reason.clone();
        local.moves = p.switch.moves.clone();
        local.updated_at_ms = handoff::now_ms();
        if let Err(e) = self.state.record_group(local.clone()) {
            tracing::error!(%group, error = %e, "could not record a group switch phase in the state store");
        }
        switches.set_phase(&group, phase);
        switches.set_eager(&group, p.eager);
        switches.add_old_members(&group, p.old_members.iter().map(String::as_str));
        metrics::switch_phase("group", &group, phase);
        tracing::info!(%group, from = %local.from, to = %local.to, phase = phase.as_str(), by = %p.by, "group switch phase (recorded by the driving instance)");
        let flips = phase == Phase::Flipped || (phase == Phase::Done && before < Phase::Flipped);
        if flips {
            switches.flipping(
                &group,
                &local.to,
                &p.assignor,
                local
                    .moves
                    .iter()
                    .filter(|_| p.had_members)
                    .map(|m| ((m.topic.clone(), m.partition), m.new_offset)),
            );
            self.unpin_group_locked(changing, &group);
            switches.release(&group, Release::Flipped);
        }
        if phase.finished() {
            let release = if phase == Phase::Done {
                Release::Flipped
            } else {
                Release::Stay
            };
            // A failed switch leaves the group pinned where it was, as on the
            // driving instance; a cancelled one was unpinned by the table that
            // cancelled it.
            switches.finish(&group, local.started_at_ms, release);
        }
    }

    /// Switches one group to cluster `req.to` (admin API and CLI). With `when =
    /// "now"` the offsets must translate at once, or nothing changes.
    pub async fn switch_group(
        &self,
        group: &str,
        req: GroupSwitchRequest,
    ) -> Result<u64, SwitchRefused> {
        let changing = self.changing.lock().await;
        self.switch_group_locked(&changing, group, req).await
    }

    async fn switch_group_locked(
        &self,
        changing: &Changing<'_>,
        group: &str,
        req: GroupSwitchRequest,
    ) -> Result<u64, SwitchRefused> {
        let invalid = |e: String| SwitchRefused::Invalid(ConfigErrors(vec![e]));
        if !self.clusters.contains_key(&req.to) {
            return Err(invalid(format!("unknown cluster `{}`", req.to)));
        }
        let routes = self.routes();
        let row = routes.group_row(group).cloned();
        let offsets = req
            .offsets
            .unwrap_or_else(|| row.as_ref().map_or(OffsetStrategy::Marks, |r| r.offsets));
        let when = req
            .when
            .unwrap_or_else(|| row.as_ref().map_or(SwitchWhen::Drained, |r| r.when));
        let from = routes.group_cluster(group).to_string();
        if when == SwitchWhen::Now && from != req.to && !self.group_switches.is_live(group) {
            if let Err(e) = handoff::check(self, group, &from, &req.to, offsets).await {
                // Recorded, so /status says why as well as the API.
                let now = handoff::now_ms();
                let recorded = self.state.record_group(GroupSwitch {
                    group: group.to_string(),
                    from: from.clone(),
                    to: req.to.clone(),
                    offsets: offsets.as_str().to_string(),
                    when: when.as_str().to_string(),
                    phase: Phase::Failed,
                    reason: Some(format!("not switched: {e}")),
                    moves: Vec::new(),
                    started_at_ms: now,
                    updated_at_ms: now,
                    route_version: self.routes().version,
                });
                if let Err(w) = recorded {
                    tracing::error!(group, error = %w, "could not record the refused switch in the state store");
                }
                metrics::switch("group", "failed");
                tracing::warn!(group, to = %req.to, reason = %e, "group switch refused: offsets cannot be translated; the group stays where it is");
                return Err(SwitchRefused::Untranslatable(e.to_string()));
            }
        }
        let mut new = (*self.config()).clone();
        new.routes
            .groups
            .retain(|g| !matches!(&g.matcher, Matcher::Exact(n) if n == group));
        new.routes.groups.push(GroupRoute {
            matcher: Matcher::Exact(group.to_string()),
            cluster: req.to.clone(),
            offsets,
            when,
        });
        let result = self
            .apply(changing, new)
            .await
            .map_err(SwitchRefused::Invalid);
        if let Ok(v) = &result {
            tracing::info!(group, to = %req.to, version = v, "group switch asked through the admin API");
        }
        result
    }

    /// Switches a group back to where its latest switch took it from (or cancels
    /// that switch if it has not flipped yet).
    pub async fn rollback_group(&self, group: &str) -> Result<u64, SwitchRefused> {
        let changing = self.changing.lock().await;
        let last =
            self.state.group_switches().into_iter().find(|s| {
                s.group == group && s.phase != Phase::Failed && s.phase != Phase::Cancelled
            });
        let Some(last) = last else {
            return Err(SwitchRefused::Invalid(ConfigErrors(vec![format!(
                "group `{group}` has no switch to roll back (its last switch, if any, did not happen)"
            )])));
        };
        let when = self
            .routes()
            .group_row(group)
            .map_or(SwitchWhen::Drained, |r| r.when);
        self.switch_group_locked(
            &changing,
            group,
            GroupSwitchRequest {
                to: last.from,
                offsets: OffsetStrategy::parse(&last.offsets),
                when: Some(when),
            },
        )
        .await
    }
}
