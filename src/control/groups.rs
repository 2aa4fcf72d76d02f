//! Group switches and rollbacks asked for through the admin API or CLI, the
//! resumption of unfinished ones at start, and the flip of a group's route.

use std::sync::Arc;

use super::{handoff, Changing, GroupSwitchRequest, SwitchRefused};
use crate::config::{ConfigErrors, GroupRoute, Matcher, OffsetStrategy, SwitchWhen};
use crate::metrics;
use crate::proxy::Proxy;
use crate::state::{GroupSwitch, Phase};

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
        let _one_at_a_time = self.changing.lock().await;
        let mut t = (*self.routes()).clone();
        t.pins.remove(group);
        tracing::info!(
            group,
            cluster = t.group_cluster(group),
            "group route flipped"
        );
        self.routes.store(Arc::new(t));
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
