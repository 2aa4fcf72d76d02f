//! The running proxy's shared state: config, routing table, upstream clusters and the
//! negotiated API table. Everything that changes at run time sits behind `ArcSwap`,
//! so a request reads one consistent snapshot and a reload replaces it in one store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use crate::admin::AdminToken;
use crate::config::{
    Config, ConfigErrors, GroupRoute, Matcher, OffsetStrategy, SwitchWhen, TopicRoute,
};
use crate::handlers::api_versions::{self, ApiTable};
use crate::handlers::sasl::ServerSasl;
use crate::handlers::VirtualMap;
use crate::metrics;
use crate::routes::RouteTable;
use crate::state::{GroupSwitch, Mark, Phase, StateError, StateStore};
use crate::switch::groups::GroupSwitches;
use crate::switch::identity::Identities;
use crate::switch::inflight::Inflight;
use crate::switch::producers::Producers;
use crate::switch::{self, ProduceFlip};
use crate::upstream::ClusterView;

pub struct Proxy {
    /// This proxy, for the tasks it starts (group switches).
    me: Weak<Proxy>,
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    routes: ArcSwap<RouteTable>,
    clusters: BTreeMap<String, Arc<ClusterView>>,
    api_table: ArcSwap<ApiTable>,
    state: StateStore,
    pub producers: Arc<Producers>,
    pub identities: Identities,
    pub inflight: Arc<Inflight>,
    /// The listener's TLS acceptor (None: plaintext), rebuilt on every reload so
    /// renewed certificates apply to new connections.
    tls: ArcSwap<Option<tokio_rustls::TlsAcceptor>>,
    /// SASL termination (None: clients need not authenticate), rebuilt on reload.
    sasl: ArcSwap<Option<Arc<ServerSasl>>>,
    /// The admin API's bearer token (None: no token configured), re-read on reload.
    admin_token: ArcSwap<Option<AdminToken>>,
    /// One route change at a time: a reload and an API switch never interleave.
    /// Every change reads the running config and table only while holding it, so
    /// no change is built on a snapshot another change has replaced.
    changing: tokio::sync::Mutex<()>,
    /// Tests: every state write fails, as on a full or broken disk.
    #[cfg(test)]
    fail_state_writes: std::sync::atomic::AtomicBool,
    /// Per topic, its (produce, consume) before its latest switch, for rollback.
    history: Mutex<HashMap<String, PreviousRoute>>,
    /// Group switches in progress, as the request path sees them.
    pub group_switches: Arc<GroupSwitches>,
    /// Groups held on their old cluster until their switch flips.
    pins: Mutex<BTreeMap<String, String>>,
}

/// A group switch asked for through the admin API.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GroupSwitchRequest {
    pub to: String,
    pub offsets: Option<String>,
    pub when: Option<String>,
}

/// Why a group switch was refused.
#[derive(Debug)]
pub enum SwitchRefused {
    /// The request or the resulting config is invalid.
    Invalid(ConfigErrors),
    /// The group's offsets cannot be translated now (`when = "now"`).
    Untranslatable(String),
}

fn server_sasl(config: &Config) -> Result<Option<Arc<ServerSasl>>, String> {
    match &config.listener.sasl {
        None => Ok(None),
        Some(s) => Ok(Some(Arc::new(ServerSasl {
            mechanisms: s.mechanisms.clone(),
            credentials: crate::sasl::Credentials::load(&s.users_file)
                .map_err(|e| format!("[listener.sasl] users_file: {e}"))?,
        }))),
    }
}

fn admin_token(config: &Config) -> Result<Option<AdminToken>, String> {
    config
        .admin_auth
        .token
        .as_ref()
        .map(AdminToken::resolve)
        .transpose()
}

/// Held while a change is built and applied; see [`Proxy::changing`].
type Changing<'a> = tokio::sync::MutexGuard<'a, ()>;

fn acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    match &config.listener.tls {
        None => Ok(None),
        Some(files) => crate::tls::server_config(files)
            .map(|c| Some(tokio_rustls::TlsAcceptor::from(c)))
            .map_err(|e| format!("[listener.tls]: {e}")),
    }
}

/// What a reload does to groups.
#[derive(Debug, Default)]
struct GroupPlan {
    start: Vec<GroupSwitch>,
    cancel: Vec<String>,
    pins: BTreeMap<String, String>,
}

/// A topic's (produce, consume) clusters before a switch.
type PreviousRoute = (Option<String>, Option<String>);

/// A topic switch or rollback asked for through the admin API.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TopicSwitch {
    pub produce: Option<String>,
    pub consume: Option<String>,
}

impl Proxy {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Proxy>, String> {
        let clusters = config
            .clusters
            .iter()
            .map(|c| Ok((c.name.clone(), Arc::new(ClusterView::new(c.clone())?))))
            .collect::<Result<_, String>>()?;
        let routes = RouteTable::new(1, &config);
        metrics::route_version(1);
        let state = StateStore::open(&config.proxy.state_dir).map_err(|e| e.to_string())?;
        let key = crate::state::secret(&config.proxy.state_dir, "producer-ids.key")
            .map_err(|e| format!("producer id key: {e}"))?;
        let producers = Producers::with_key(Default::default(), key);
        let tls = acceptor(&config)?;
        let sasl = server_sasl(&config)?;
        let token = admin_token(&config)?;
        Ok(Arc::new_cyclic(|me| Proxy {
            me: me.clone(),
            config_path,
            routes: ArcSwap::from_pointee(routes),
            config: ArcSwap::from_pointee(config),
            clusters,
            api_table: ArcSwap::from_pointee(ApiTable::new()),
            tls: ArcSwap::from_pointee(tls),
            sasl: ArcSwap::from_pointee(sasl),
            admin_token: ArcSwap::from_pointee(token),
            state,
            producers: Arc::new(producers),
            identities: Identities::default(),
            inflight: Arc::new(Inflight::default()),
            changing: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            fail_state_writes: std::sync::atomic::AtomicBool::new(false),
            history: Mutex::new(HashMap::new()),
            group_switches: Arc::new(GroupSwitches::default()),
            pins: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Every group switch recorded, newest record each.
    pub fn group_switch_records(&self) -> Vec<GroupSwitch> {
        self.state.group_switches()
    }

    /// Picks up group switches a previous run left unfinished: before the flip the
    /// group stays on its old cluster and the switch runs again from the start; from
    /// the flip on it is on the new cluster and the switch is over.
    pub fn resume_switches(self: &Arc<Self>) {
        let table = self.routes();
        let mut pins = self.pins.lock().expect("pins lock");
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
            tokio::spawn(crate::switch::handoff::run(self.clone(), sw));
        }
        let mut t = (*table).clone();
        t.pins = pins.clone();
        self.routes.store(Arc::new(t));
    }

    /// The switch of `group` flipped: it follows its row from now on.
    pub async fn unpin_group(&self, group: &str) {
        let _one_at_a_time = self.changing.lock().await;
        let mut pins = self.pins.lock().expect("pins lock");
        pins.remove(group);
        let mut t = (*self.routes()).clone();
        t.pins = pins.clone();
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
        let offsets = match &req.offsets {
            Some(o) => OffsetStrategy::parse(o).ok_or_else(|| {
                invalid(format!(
                    "offsets: `{o}` is not one of marks, mm2, identity, timestamp"
                ))
            })?,
            None => row.as_ref().map_or(OffsetStrategy::Marks, |r| r.offsets),
        };
        let when = match &req.when {
            Some(w) => SwitchWhen::parse(w)
                .ok_or_else(|| invalid(format!("when: `{w}` is not one of drained, now")))?,
            None => row.as_ref().map_or(SwitchWhen::Drained, |r| r.when),
        };
        let from = routes.group_cluster(group).to_string();
        if when == SwitchWhen::Now && from != req.to && !self.group_switches.is_live(group) {
            if let Err(e) =
                crate::switch::handoff::check(self, group, &from, &req.to, offsets).await
            {
                // Recorded, so /status says why as well as the API.
                let now = crate::switch::handoff::now_ms();
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
                offsets: Some(last.offsets),
                when: Some(when.as_str().to_string()),
            },
        )
        .await
    }

    /// Whether more than one cluster is configured. With one, there is nothing to
    /// route: requests are forwarded as they are and producer ids stay upstream ids.
    pub fn multi_cluster(&self) -> bool {
        self.clusters.len() > 1
    }

    /// Stable index of a cluster (its position in name order), used in virtual
    /// producer ids.
    pub fn cluster_index(&self, name: &str) -> usize {
        self.clusters.keys().position(|n| n == name).unwrap_or(0)
    }

    /// The TLS acceptor for new client connections, if the listener uses TLS.
    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        (**self.tls.load()).clone()
    }

    /// SASL termination settings, if the listener requires SASL.
    pub fn sasl(&self) -> Option<Arc<ServerSasl>> {
        (**self.sasl.load()).clone()
    }

    pub fn marks(&self) -> Vec<Mark> {
        self.state.marks()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterView>> {
        self.clusters.get(name)
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterView>> {
        self.clusters.values()
    }

    /// The advertised API table; a cheap guard, read on every request.
    pub fn api_table(&self) -> arc_swap::Guard<Arc<ApiTable>> {
        self.api_table.load()
    }

    /// Recomputes the advertised API table from what the clusters report.
    pub fn recompute_api_table(&self) {
        let ranges: Vec<_> = self
            .clusters
            .values()
            .filter_map(|c| c.api_ranges())
            .collect();
        let table = api_versions::build_table(ranges.iter());
        if **self.api_table.load() != table {
            tracing::info!(apis = table.len(), "advertised API versions updated");
            self.api_table.store(Arc::new(table));
        }
    }

    /// The id mapping and addresses clients see for one cluster's brokers.
    pub fn virtual_map(&self, cluster: &ClusterView) -> VirtualMap {
        let config = self.config.load();
        VirtualMap {
            node_id_offset: cluster.config.node_id_offset,
            advertised_host: config.listener.advertised_host.clone(),
            broker_port_base: config.listener.broker_port_base,
            cluster_id: config.proxy.cluster_id.clone(),
            sni_pattern: (config.listener.mode == crate::config::ListenerMode::Sni)
                .then(|| config.listener.sni_pattern.clone())
                .flatten(),
            listener_port: config.listener.bind.port(),
        }
    }

    /// Finds the cluster and upstream broker behind a virtual broker id.
    pub fn resolve_virtual(&self, virtual_id: i32) -> Option<(Arc<ClusterView>, i32)> {
        // The cluster with the highest offset not above the id owns it (offsets are
        // validated to be at least 1000 apart).
        self.clusters
            .values()
            .filter(|c| c.config.node_id_offset <= virtual_id)
            .max_by_key(|c| c.config.node_id_offset)
            .map(|c| (c.clone(), virtual_id - c.config.node_id_offset))
    }

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
        let result = match result {
            Ok(new) if new == *self.config() => {
                unchanged = true;
                self.reread_files(&changing, &new)
                    .map(|()| self.routes().version)
            }
            Ok(new) => self.apply(&changing, new).await,
            Err(e) => Err(e),
        };
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
    async fn apply(&self, _changing: &Changing<'_>, new: Config) -> Result<u64, ConfigErrors> {
        let old = self.config.load_full();
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
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Certificates are re-read on every reload (same paths, renewed files).
        let tls = acceptor(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let sasl = server_sasl(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let token = admin_token(&new).map_err(|e| ConfigErrors(vec![e]))?;
        let old_table = self.routes.load_full();
        let version = old_table.version + 1;
        let mut table = RouteTable::new(version, &new);
        let timeout = new
            .proxy
            .connect_timeout
            .max(std::time::Duration::from_secs(5));
        let unseen = self.unseen_groups(&old_table, &table, timeout).await;
        let group_plan = self
            .group_changes(&old_table, &table, unseen)
            .map_err(ConfigErrors)?;
        table.pins = group_plan.pins.clone();
        let flips = self
            .flips(&old_table, &table, timeout)
            .await
            .map_err(|e| ConfigErrors(vec![e]))?;
        let mut marks = Vec::new();
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
        *self.pins.lock().expect("pins lock") = group_plan.pins;
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
                tokio::spawn(crate::switch::handoff::run(me, sw));
            }
        }
        for flip in &flips {
            tracing::info!(topic = %flip.topic, from = %flip.from, to = %flip.to, version, "produce route flipped");
        }
        Ok(version)
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
    fn persist(&self, marks: Vec<Mark>, starts: &[GroupSwitch]) -> Result<(), ConfigErrors> {
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

    fn write_state(
        &self,
        write: impl FnOnce(&StateStore) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        #[cfg(test)]
        if self
            .fail_state_writes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StateError::Io {
                path: PathBuf::from("state.log"),
                source: std::io::Error::other("injected write failure"),
            });
        }
        write(&self.state)
    }

    /// The admin API's bearer token, if one is configured.
    pub fn admin_token(&self) -> Option<AdminToken> {
        (**self.admin_token.load()).clone()
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
        let now = crate::switch::handoff::now_ms();
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
            });
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    async fn flips(
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

/// What handlers may use of the proxy (handlers::Shared): the handlers see this
/// interface, never the proxy's fields.
impl crate::handlers::Shared for Proxy {
    fn routes(&self) -> Arc<RouteTable> {
        Proxy::routes(self)
    }
    fn config(&self) -> Arc<Config> {
        Proxy::config(self)
    }
    fn multi_cluster(&self) -> bool {
        Proxy::multi_cluster(self)
    }
    fn cluster(&self, name: &str) -> Option<&Arc<ClusterView>> {
        Proxy::cluster(self, name)
    }
    fn clusters(&self) -> Vec<Arc<ClusterView>> {
        Proxy::clusters(self).cloned().collect()
    }
    fn cluster_index(&self, name: &str) -> usize {
        Proxy::cluster_index(self, name)
    }
    fn virtual_map(&self, cluster: &ClusterView) -> VirtualMap {
        Proxy::virtual_map(self, cluster)
    }
    fn resolve_virtual(&self, virtual_id: i32) -> Option<(Arc<ClusterView>, i32)> {
        Proxy::resolve_virtual(self, virtual_id)
    }
    fn identities(&self) -> &Identities {
        &self.identities
    }
    fn producers(&self) -> &Arc<Producers> {
        &self.producers
    }
    fn inflight(&self) -> &Arc<Inflight> {
        &self.inflight
    }
    fn group_switches(&self) -> &Arc<GroupSwitches> {
        &self.group_switches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters that are never reached: nothing listens on port 1, and the
    /// changes below (consume routes, drained group switches) need no upstream.
    fn proxy(dir: &std::path::Path) -> Arc<Proxy> {
        let text = format!(
            r#"
            [proxy]
            state_dir = "{}"
            [listener]
            bind = "127.0.0.1:9092"
            [clusters.source]
            bootstrap = ["127.0.0.1:1"]
            [clusters.target]
            bootstrap = ["127.0.0.1:1"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            "#,
            dir.join("state").display()
        );
        let config = Config::from_toml(&text, Vec::<(String, String)>::new(), dir).unwrap();
        Proxy::new(config, None).unwrap()
    }

    fn consume_on_target() -> TopicSwitch {
        TopicSwitch {
            produce: None,
            consume: Some("target".into()),
        }
    }

    /// Both switches queue behind a change in progress. Each must build its new
    /// config from what the other left, not from the table both saw while waiting.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_switches_of_two_topics_both_land() {
        let dir = tempfile::tempdir().unwrap();
        let p = proxy(dir.path());
        let held = p.changing.lock().await;
        let a = tokio::spawn({
            let p = p.clone();
            async move { p.switch_topic("a", consume_on_target()).await }
        });
        let b = tokio::spawn({
            let p = p.clone();
            async move { p.switch_topic("b", consume_on_target()).await }
        });
        // One thread: each yield lets both tasks run until they wait for the lock.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(held);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let routes = p.routes();
        assert_eq!(routes.version, 3);
        assert_eq!(routes.consume_cluster("a"), "target");
        assert_eq!(routes.consume_cluster("b"), "target");
    }

    /// A group switch writes its record before the table that pins the group is
    /// visible. When that write fails, nothing of the change may be visible.
    #[tokio::test(flavor = "current_thread")]
    async fn failed_state_write_leaves_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = proxy(dir.path());
        let before = p.config();
        p.fail_state_writes
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let result = p
            .switch_group(
                "billing",
                GroupSwitchRequest {
                    to: "target".into(),
                    offsets: None,
                    when: None,
                },
            )
            .await;
        let Err(SwitchRefused::Invalid(e)) = result else {
            panic!("expected the state write to fail the switch: {result:?}");
        };
        assert!(e.to_string().contains("injected write failure"), "{e}");
        assert_eq!(*p.config(), *before);
        assert_eq!(p.routes().version, 1);
        assert_eq!(p.routes().group_cluster("billing"), "source");
        assert!(p.routes().pins.is_empty());
        assert!(!p.group_switches.is_live("billing"));
        assert!(p.group_switch_records().is_empty());
    }
}
