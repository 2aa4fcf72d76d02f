//! The control plane: every change to what the proxy routes. A file reload, a
//! topic switch or rollback and a group switch or rollback (admin API, CLI,
//! SIGHUP, the file watcher) all end in [`Proxy::apply`]: validate the whole new
//! config, measure and persist the switch marks and group switch records, then swap
//! the routing table in one store. One change at a time (`Proxy::changing`).
//! Group switches run as tasks ([`handoff`]) that follow the phases in the state
//! store.
//!
//! The proxy ([`crate::proxy`]) holds the state these operate on; the request path
//! ([`crate::handlers`]) only reads it.

mod coordination;
mod groups;
pub mod handoff;

pub use coordination::start as start_coordination;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{
    Config, ConfigErrors, GroupRoute, Matcher, OffsetStrategy, RoutesConfig, SwitchWhen, TopicRoute,
};
use crate::metrics;
use crate::proxy::{acceptor, admin_token, server_sasl, Proxy};
use crate::routes::RouteTable;
use crate::state::{GroupSwitch, Mark, Phase, StateError, StateStore};
use crate::switch::{self, ProduceFlip};
use crate::upstream::ClusterView;

/// A group switch asked for through the admin API; what is not given comes from
/// the group's row.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GroupSwitchRequest {
    pub to: String,
    pub offsets: Option<OffsetStrategy>,
    pub when: Option<SwitchWhen>,
}

/// Why a group switch was refused.
#[derive(Debug)]
pub enum SwitchRefused {
    /// The request or the resulting config is invalid.
    Invalid(ConfigErrors),
    /// The group's offsets cannot be translated now (`when = "now"`).
    Untranslatable(String),
}

/// Held while a change is built and applied; see `Proxy::changing`.
pub(crate) type Changing<'a> = tokio::sync::MutexGuard<'a, ()>;

/// What a reload does to groups.
#[derive(Debug, Default)]
struct GroupPlan {
    start: Vec<GroupSwitch>,
    cancel: Vec<String>,
    pins: BTreeMap<String, String>,
}

/// What a change does about the switch marks of topics whose writes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marks {
    /// Measure them now, before the table is stored (one instance deciding alone).
    Measure,
    /// A published table (`[coordination]`): measure nothing here. The topics whose
    /// flip is fenced across instances are given; their writes are held on every
    /// cluster (`RouteTable::fenced`) until the release, and their marks are the
    /// ones published with it.
    Published,
    /// The first published table an instance applies (it starts, or joins the
    /// migration late): like `Published`, but its own file's table is no earlier
    /// state of the migration, so no group switch starts from the difference. A
    /// switch in progress is joined from its recorded phase instead.
    Adopted,
}

/// A topic switch or rollback asked for through the admin API.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TopicSwitch {
    pub produce: Option<String>,
    pub consume: Option<String>,
}

/// Changes that need a restart, refused on reload.
fn restart_only(old: &Config, new: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    if new.clusters != old.clusters {
        errors.push("[clusters]: adding, removing or changing clusters needs a restart".into());
    }
    if new.listener != old.listener || new.admin_bind != old.admin_bind {
        errors.push("[listener]/[admin]: listener changes need a restart".into());
    }
    if new.proxy.state_dir != old.proxy.state_dir {
        errors.push("[proxy] state_dir: changing it needs a restart".into());
    }
    if new.coordination != old.coordination {
        errors.push("[coordination]: changing it needs a restart".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

impl Proxy {
    /// Reloads the config file: validates everything, records switch marks for the
    /// topics whose writes move, then swaps the routing table in one store. On any
    /// error nothing changes and every error is returned. Cluster and listener
    /// changes need a restart; they are reported, not applied.
    ///
    /// A file whose validated content equals the running config is not a change:
    /// the route version stays, so one edit that fires several triggers (file
    /// watcher, SIGHUP, `POST /reload`) makes one new version. Certificates, the
    /// SASL users file and the admin token are re-read even then, since those files
    /// are renewed under unchanged paths.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let changing = self.changing.lock().await;
        let result = match &self.config_path {
            None => Err(ConfigErrors(vec!["no config file to reload".into()])),
            Some(path) => Config::load(path),
        };
        let mut unchanged = false;
        let mut read_routes = None;
        let result = result.map(|new| {
            let (new, file) = self.file_routes_rule(new);
            read_routes = file;
            new
        });
        let result = match result {
            Ok(new) if new == *self.config() => {
                unchanged = true;
                self.reread_files(&changing, &new)
                    .map(|()| self.routes().version)
            }
            Ok(new) => self.apply(&changing, new).await,
            Err(e) => Err(e),
        };
        if let (Ok(_), Some(routes)) = (&result, read_routes) {
            // Proposed and applied: the file's routes are the ones last read.
            *self.file_routes.lock().expect("file routes lock") = routes;
        }
        drop(changing);
        match &result {
            Ok(version) if unchanged => {
                metrics::reload("ok");
                tracing::info!(
                    version,
                    "config reloaded: unchanged; routes keep their version"
                );
            }
            Ok(version) => {
                metrics::reload("ok");
                tracing::info!(version, "config reloaded; routing table swapped");
            }
            Err(e) => {
                metrics::reload("rejected");
                tracing::warn!(errors = %e, "config reload rejected; running routes unchanged");
            }
        }
        result
    }

    /// With `[coordination]` the published table is the running one, and a file's
    /// `[routes]` count only when they changed in the file since this instance last
    /// read it: then they are proposed to every instance. A file left as it was (a
    /// reload for renewed certificates, an instance whose file another instance's
    /// change made stale) proposes nothing.
    /// Returns the config to apply, and the file's routes when they changed (to be
    /// remembered once the change is in).
    fn file_routes_rule(&self, mut new: Config) -> (Config, Option<RoutesConfig>) {
        let Some(_) = &self.coordination else {
            return (new, None);
        };
        let last = self.file_routes.lock().expect("file routes lock").clone();
        if new.routes == last {
            new.routes = self.config().routes.clone();
            (new, None)
        } else {
            let read = new.routes.clone();
            (new, Some(read))
        }
    }

    /// Switches one topic's routes on top of the running table (admin API and CLI).
    /// The config file is not edited: the next file reload replaces this change.
    pub async fn switch_topic(&self, topic: &str, req: TopicSwitch) -> Result<u64, ConfigErrors> {
        let changing = self.changing.lock().await;
        self.switch_topic_locked(&changing, topic, req).await
    }

    async fn switch_topic_locked(
        &self,
        changing: &Changing<'_>,
        topic: &str,
        req: TopicSwitch,
    ) -> Result<u64, ConfigErrors> {
        let mut errors = Vec::new();
        for c in req.produce.iter().chain(req.consume.iter()) {
            if !self.clusters.contains_key(c) {
                errors.push(format!("unknown cluster `{c}`"));
            }
        }
        if req.produce.is_none() && req.consume.is_none() {
            errors.push("nothing to switch: give `produce` and/or `consume`".into());
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let mut new = (*self.config()).clone();
        let routes = self.routes();
        let current = TopicRoute {
            matcher: Matcher::Exact(topic.to_string()),
            produce: Some(routes.produce_cluster(topic).to_string()),
            consume: Some(routes.consume_cluster(topic).to_string()),
            rename: routes
                .topic_row(topic)
                .map(|r| match &r.matcher {
                    Matcher::Exact(_) => r.rename.clone(),
                    Matcher::Regex(_) => r
                        .rename
                        .keys()
                        .map(|c| (c.clone(), routes.physical_topic(topic, c)))
                        .collect(),
                })
                .unwrap_or_default(),
        };
        let mut row = current;
        if let Some(p) = req.produce {
            row.produce = Some(p);
        }
        if let Some(c) = req.consume {
            row.consume = Some(c);
        }
        new.routes
            .topics
            .retain(|t| !matches!(&t.matcher, Matcher::Exact(n) if n == topic));
        new.routes.topics.push(row);
        let result = self.apply(changing, new).await;
        if let Ok(v) = &result {
            metrics::switch("topic", "ok");
            tracing::info!(topic, version = v, "topic switched through the admin API");
        } else {
            metrics::switch("topic", "rejected");
        }
        result
    }

    /// Puts a topic back where it was before its latest switch.
    pub async fn rollback_topic(&self, topic: &str) -> Result<u64, ConfigErrors> {
        let changing = self.changing.lock().await;
        let previous = self
            .history
            .lock()
            .expect("history lock")
            .get(topic)
            .cloned();
        let Some((produce, consume)) = previous else {
            return Err(ConfigErrors(vec![format!(
                "topic `{topic}` has not been switched since this proxy started; nothing to roll back"
            )]));
        };
        self.switch_topic_locked(&changing, topic, TopicSwitch { produce, consume })
            .await
    }

    /// Validates `new` against the running config, records marks for every topic
    /// whose writes move, and swaps the table. All or nothing: everything that can
    /// fail (validation, certificates, upstream reads, state writes) happens before
    /// the first store into memory, so a failure leaves the running proxy exactly as
    /// it was. The caller holds `changing` and built `new` from the running config
    /// while holding it.
    ///
    /// With `[coordination]`, a change of routes is published to the shared log
    /// and applied from there, as every instance applies it (control::coordination);
    /// a change of anything else stays local and keeps the version.
    async fn apply(&self, changing: &Changing<'_>, new: Config) -> Result<u64, ConfigErrors> {
        match &self.coordination {
            None => self.apply_version(changing, new, None).await,
            Some(_) if new.routes == self.config().routes => {
                let version = self.routes().version;
                self.apply_version(changing, new, Some(version)).await
            }
            Some(c) => coordination::propose(self, c, changing, new).await,
        }
    }

    /// What [`Proxy::apply`] would refuse of `new`, found without changing anything
    /// (a change is checked so before another instance is asked to apply it).
    pub(crate) async fn check(
        &self,
        _changing: &Changing<'_>,
        new: &Config,
    ) -> Result<(), ConfigErrors> {
        restart_only(&self.config.load_full(), new)?;
        acceptor(new).map_err(|e| ConfigErrors(vec![e]))?;
        server_sasl(new).map_err(|e| ConfigErrors(vec![e]))?;
        admin_token(new).map_err(|e| ConfigErrors(vec![e]))?;
        let old_table = self.routes.load_full();
        let table = RouteTable::new(old_table.version + 1, new);
        self.group_changes(&old_table, &table, BTreeSet::new())
            .map(|_| ())
            .map_err(ConfigErrors)
    }

    /// [`Proxy::apply`] at a given routing table version (`None`: the next one).
    pub(crate) async fn apply_version(
        &self,
        changing: &Changing<'_>,
        new: Config,
        at: Option<u64>,
    ) -> Result<u64, ConfigErrors> {
        self.apply_mode(changing, new, at, Marks::Measure, &BTreeSet::new())
            .await
            .map(|(v, _)| v)
    }

    /// [`Proxy::apply_version`], with produce flips treated as `marks` says.
    /// Returns the version and the flips.
    pub(crate) async fn apply_mode(
        &self,
        _changing: &Changing<'_>,
        new: Config,
        at: Option<u64>,
        marks_mode: Marks,
        fence: &BTreeSet<String>,
    ) -> Result<(u64, Vec<ProduceFlip>), ConfigErrors> {
        restart_only(&self.config.load_full(), &new)?;
        // Certificates are re-read on every reload (same paths, renewed files).
        let tls = acceptor(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let sasl = server_sasl(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let token = admin_token(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let old_table = self.routes.load_full();
        let version = at.unwrap_or(old_table.version + 1);
        let mut table = RouteTable::new(version, &new);
        let timeout = new
            .proxy
            .connect_timeout
            .max(std::time::Duration::from_secs(5));
        let unseen = self.unseen_groups(&old_table, &table, timeout).await;
        let mut group_plan = self
            .group_changes(&old_table, &table, unseen)
            .map_err(ConfigErrors)?;
        if marks_mode == Marks::Adopted {
            group_plan.start.clear();
            group_plan.cancel.clear();
            group_plan.pins = old_table.pins.clone();
        }
        for sw in &mut group_plan.start {
            sw.route_version = version;
        }
        table.pins = group_plan.pins;
        let flips = self
            .flips(&old_table, &table, timeout)
            .await
            .map_err(|e| ConfigErrors(vec![e]))?;
        // Topics still fenced by an earlier version stay fenced until released.
        table.fenced = old_table.fenced.clone();
        let mut marks = Vec::new();
        match marks_mode {
            Marks::Measure => {
                for flip in &flips {
                    let cluster = self
                        .clusters
                        .get(&flip.to)
                        .expect("validated cluster names");
                    marks.push(
                        switch::mark_for(flip, &table, cluster, timeout)
                            .await
                            .map_err(|e| ConfigErrors(vec![e]))?,
                    );
                }
            }
            Marks::Published | Marks::Adopted => table.fenced.extend(fence.iter().cloned()),
        }
        // Durable before anything is visible: marks must describe the target before
        // any write routed by the new table can reach it, and a group's switch
        // record must exist before the table that pins the group.
        self.persist(marks, &group_plan.start)?;

        // From here on nothing fails.
        {
            let mut history = self.history.lock().expect("history lock");
            for flip in &flips {
                history.insert(
                    flip.topic.clone(),
                    (
                        Some(flip.from.clone()),
                        Some(old_table.consume_cluster(&flip.topic).to_string()),
                    ),
                );
            }
        }
        self.tls.store(Arc::new(tls));
        self.sasl.store(Arc::new(sasl));
        self.admin_token.store(Arc::new(token));
        self.config.store(Arc::new(new));
        self.routes.store(Arc::new(table));
        metrics::route_version(version);
        for g in &group_plan.cancel {
            self.group_switches.cancel(g);
            tracing::info!(group = %g, "group switch cancelled: its row points back where it was");
        }
        for sw in group_plan.start {
            tracing::info!(group = %sw.group, from = %sw.from, to = %sw.to, offsets = %sw.offsets, when = %sw.when, "group switch started");
            self.group_switches
                .start(&sw.group, &sw.from, Phase::Waiting, sw.started_at_ms);
            if let Some(me) = self.me.upgrade() {
                self.spawn(handoff::run(me, sw));
            }
        }
        for flip in &flips {
            if fence.contains(&flip.topic) {
                tracing::info!(topic = %flip.topic, from = %flip.from, to = %flip.to, version, "produce route flipping: writes held on every cluster until every instance has let go of the old one");
            } else {
                tracing::info!(topic = %flip.topic, from = %flip.from, to = %flip.to, version, "produce route flipped");
            }
        }
        Ok((version, flips))
    }

    /// A reload that changes no route still picks up renewed certificates, users
    /// and admin token; like [`Proxy::apply`], all are read before any is stored.
    fn reread_files(&self, _changing: &Changing<'_>, config: &Config) -> Result<(), ConfigErrors> {
        let tls = acceptor(config).map_err(|e| ConfigErrors(vec![e]))?;
        let sasl = server_sasl(config).map_err(|e| ConfigErrors(vec![e]))?;
        let token = admin_token(config).map_err(|e| ConfigErrors(vec![e]))?;
        self.tls.store(Arc::new(tls));
        self.sasl.store(Arc::new(sasl));
        self.admin_token.store(Arc::new(token));
        Ok(())
    }

    /// Writes a change's marks and group switch records. When a write fails, the
    /// switch records this change already wrote are marked cancelled (best effort:
    /// the disk just failed), so a restart does not resume a switch that never
    /// started. Marks written before the failure stay: a mark is a measurement of
    /// the target's end offsets, and the next flip of that topic replaces it.
    pub(crate) fn persist(
        &self,
        marks: Vec<Mark>,
        starts: &[GroupSwitch],
    ) -> Result<(), ConfigErrors> {
        let failed = |e: StateError| {
            ConfigErrors(vec![format!(
                "{e}; the change was not applied and the running routes stay"
            )])
        };
        for m in marks {
            tracing::info!(topic = %m.topic, cluster = %m.cluster, partitions = m.partitions.len(), "switch mark recorded");
            self.write_state(|s| s.record_mark(m)).map_err(failed)?;
        }
        for (i, sw) in starts.iter().enumerate() {
            if let Err(e) = self.write_state(|s| s.record_group(sw.clone())) {
                for written in &starts[..i] {
                    let mut undo = written.clone();
                    undo.phase = Phase::Cancelled;
                    undo.reason = Some("the change that started it was not applied".into());
                    let _ = self.write_state(|s| s.record_group(undo));
                }
                return Err(failed(e));
            }
        }
        Ok(())
    }

    pub(crate) fn write_state(
        &self,
        write: impl FnOnce(&StateStore) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        #[cfg(test)]
        if self
            .fail_state_writes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StateError::Io {
                path: std::path::PathBuf::from("state.log"),
                source: std::io::Error::other("injected write failure"),
            });
        }
        write(&self.state)
    }

    /// When a pattern row or `default_cluster` changed: the consumer groups each
    /// cluster lists that are routed to that cluster now, seen through this proxy or
    /// not ([`Proxy::group_changes`] keeps those the new table sends elsewhere). A
    /// consumer that is offline during the reload, or has not connected since the
    /// proxy started, keeps its committed position this way instead of arriving at
    /// a cluster where its group has no offsets.
    async fn unseen_groups(
        &self,
        old: &RouteTable,
        new: &RouteTable,
        timeout: std::time::Duration,
    ) -> BTreeSet<String> {
        let patterns = |t: &RouteTable| -> Vec<GroupRoute> {
            t.groups()
                .iter()
                .filter(|r| matches!(r.matcher, Matcher::Regex(_)))
                .cloned()
                .collect()
        };
        if old.default_cluster == new.default_cluster && patterns(old) == patterns(new) {
            return BTreeSet::new();
        }
        let mut out = BTreeSet::new();
        for (name, cluster) in &self.clusters {
            match switch::ops::list_consumer_groups(cluster, timeout).await {
                Ok(groups) => {
                    out.extend(groups.into_iter().filter(|g| old.group_cluster(g) == name))
                }
                Err(e) => tracing::warn!(
                    cluster = %name,
                    error = %e,
                    "could not list the cluster's consumer groups; of the groups the changed routes move, only those seen through this proxy are handed off"
                ),
            }
        }
        out
    }

    /// The group switches a new table starts or cancels, and the pins it carries.
    /// Candidates: groups seen through this proxy, exact group rows, pinned groups and
    /// `unseen` (see [`Proxy::unseen_groups`]).
    fn group_changes(
        &self,
        old: &RouteTable,
        new: &RouteTable,
        unseen: BTreeSet<String>,
    ) -> Result<GroupPlan, Vec<String>> {
        let mut candidates: BTreeSet<String> = self.identities.all_groups();
        candidates.extend(unseen);
        for r in old.groups().iter().chain(new.groups()) {
            if let Matcher::Exact(n) = &r.matcher {
                candidates.insert(n.clone());
            }
        }
        candidates.extend(old.pins.keys().cloned());
        let records: HashMap<String, GroupSwitch> = self
            .state
            .group_switches()
            .into_iter()
            .map(|s| (s.group.clone(), s))
            .collect();
        let mut plan = GroupPlan {
            pins: old.pins.clone(),
            ..GroupPlan::default()
        };
        let mut errors = Vec::new();
        let now = handoff::now_ms();
        for g in candidates {
            let wanted = new.configured_group_cluster(&g).to_string();
            let current = old.group_cluster(&g).to_string();
            let running = records.get(&g).filter(|r| !r.phase.finished());
            if let (true, Some(rec)) = (self.group_switches.is_live(&g), running) {
                if wanted == rec.to {
                    continue;
                }
                if wanted == rec.from && rec.phase < Phase::Flipped {
                    plan.cancel.push(g.clone());
                    plan.pins.remove(&g);
                    continue;
                }
                errors.push(format!(
                    "[routes.groups] `{g}`: a switch from `{}` to `{}` is in phase {}; point it back at `{}` to cancel it, or wait until it is done",
                    rec.from, rec.to, rec.phase.as_str(), rec.from
                ));
                continue;
            }
            if wanted == current {
                continue;
            }
            let row = new.group_row(&g);
            plan.pins.insert(g.clone(), current.clone());
            plan.start.push(GroupSwitch {
                group: g.clone(),
                from: current,
                to: wanted,
                offsets: row
                    .map_or(OffsetStrategy::Marks, |r| r.offsets)
                    .as_str()
                    .to_string(),
                when: row
                    .map_or(SwitchWhen::Drained, |r| r.when)
                    .as_str()
                    .to_string(),
                phase: Phase::Waiting,
                reason: None,
                moves: Vec::new(),
                started_at_ms: now,
                updated_at_ms: now,
                route_version: 0,
            });
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    pub(crate) async fn flips(
        &self,
        old: &RouteTable,
        new: &RouteTable,
        timeout: std::time::Duration,
    ) -> Result<Vec<ProduceFlip>, String> {
        let clusters: Vec<&ClusterView> = self.clusters.values().map(|c| c.as_ref()).collect();
        let topics = switch::candidate_topics(old, new, &clusters, timeout)
            .await
            .map_err(|e| format!("listing topics to compare routes: {e}"))?;
        Ok(switch::produce_flips(old, new, &topics))
    }
}
