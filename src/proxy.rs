//! The running proxy's shared state: config, routing table, upstream clusters, the
//! negotiated API table and the registries of the cutover machinery. Everything
//! that changes at run time sits behind `ArcSwap`, so a request reads one
//! consistent snapshot and a change replaces it in one store. What changes it is
//! the control plane ([`crate::control`]); the request path sees this state through
//! [`crate::handlers::Shared`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::handlers::api_versions::{self, ApiTable};
use crate::handlers::sasl::ServerSasl;
use crate::handlers::VirtualMap;
use crate::metrics;
use crate::routes::RouteTable;
use crate::state::{GroupSwitch, Mark, StateStore};
use crate::switch::groups::GroupSwitches;
use crate::switch::identity::Identities;
use crate::switch::inflight::Inflight;
use crate::switch::producers::Producers;
use crate::token::AdminToken;
use crate::upstream::ClusterView;

/// A topic's (produce, consume) clusters before a switch.
pub(crate) type PreviousRoute = (Option<String>, Option<String>);

pub struct Proxy {
    /// This proxy, for the tasks it starts (group switches).
    pub(crate) me: Weak<Proxy>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) config: ArcSwap<Config>,
    /// The routing table, and the one place group pins live (`RouteTable::pins`).
    pub(crate) routes: ArcSwap<RouteTable>,
    pub(crate) clusters: BTreeMap<String, Arc<ClusterView>>,
    api_table: ArcSwap<ApiTable>,
    pub(crate) state: StateStore,
    pub producers: Arc<Producers>,
    pub identities: Identities,
    pub inflight: Arc<Inflight>,
    /// The listener's TLS acceptor (None: plaintext), rebuilt on every reload so
    /// renewed certificates apply to new connections.
    pub(crate) tls: ArcSwap<Option<tokio_rustls::TlsAcceptor>>,
    /// SASL termination (None: clients need not authenticate), rebuilt on reload.
    pub(crate) sasl: ArcSwap<Option<Arc<ServerSasl>>>,
    /// The admin API's bearer token (None: no token configured), re-read on reload.
    pub(crate) admin_token: ArcSwap<Option<AdminToken>>,
    /// One route change at a time: a reload and an API switch never interleave.
    /// Every change reads the running config and table only while holding it, so
    /// no change is built on a snapshot another change has replaced.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Tests: every state write fails, as on a full or broken disk.
    #[cfg(test)]
    pub(crate) fail_state_writes: std::sync::atomic::AtomicBool,
    /// Per topic, its (produce, consume) before its latest switch, for rollback.
    pub(crate) history: Mutex<HashMap<String, PreviousRoute>>,
    /// Group switches in progress, as the request path sees them.
    pub group_switches: Arc<GroupSwitches>,
    /// Shared routing with other instances (`[coordination]`), if configured.
    pub(crate) coordination: Option<Arc<crate::switch::coordination::Coordinator>>,
    /// `[routes]` as this instance last read them from its file (see
    /// `Proxy::reload` with coordination).
    pub(crate) file_routes: Mutex<crate::config::RoutesConfig>,
    /// Every task the proxy starts (group switches, reloads), so shutdown waits
    /// for them; `stop` ends them.
    tasks: TaskTracker,
    stop: CancellationToken,
}

fn clusters_map_get<'a>(
    clusters: &'a BTreeMap<String, Arc<ClusterView>>,
    name: &str,
) -> Result<&'a Arc<ClusterView>, String> {
    clusters
        .get(name)
        .ok_or_else(|| format!("[coordination] cluster `{name}` is not configured"))
}

pub(crate) fn server_sasl(config: &Config) -> Result<Option<Arc<ServerSasl>>, String> {
    match &config.listener.sasl {
        None => Ok(None),
        Some(s) => Ok(Some(Arc::new(ServerSasl {
            mechanisms: s.mechanisms.clone(),
            credentials: crate::sasl::Credentials::load(&s.users_file)
                .map_err(|e| format!("[listener.sasl] users_file: {e}"))?,
        }))),
    }
}

pub(crate) fn admin_token(config: &Config) -> Result<Option<AdminToken>, String> {
    config
        .admin_auth
        .token
        .as_ref()
        .map(AdminToken::resolve)
        .transpose()
}

pub(crate) fn acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    match &config.listener.tls {
        None => Ok(None),
        Some(files) => crate::tls::server_config(files)
            .map(|c| Some(tokio_rustls::TlsAcceptor::from(c)))
            .map_err(|e| format!("[listener.tls]: {e}")),
    }
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
        let coordination = match &config.coordination {
            None => None,
            Some(c) => {
                let cluster: &Arc<ClusterView> = clusters_map_get(&clusters, &c.cluster)?;
                let timeout = config
                    .proxy
                    .connect_timeout
                    .max(std::time::Duration::from_secs(5));
                Some(Arc::new(crate::switch::coordination::Coordinator::new(
                    c.clone(),
                    cluster.clone(),
                    timeout,
                )))
            }
        };
        let file_routes = Mutex::new(config.routes.clone());
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
            coordination,
            file_routes,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }))
    }

    /// Runs `task` as one of the proxy's own: tracked, and ended at shutdown.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Ends the proxy's own tasks and waits for them, at most `grace`. Their
    /// progress is in the state store, so a restart picks them up.
    pub async fn stop_tasks(&self, grace: std::time::Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Every group switch recorded, newest record each.
    pub fn group_switch_records(&self) -> Vec<GroupSwitch> {
        self.state.group_switches()
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

    /// The admin API's bearer token, if one is configured.
    pub fn admin_token(&self) -> Option<AdminToken> {
        (**self.admin_token.load()).clone()
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
    fn holding(&self) -> bool {
        self.coordination.as_ref().is_some_and(|c| c.holds())
    }

    fn coordinator(&self) -> Option<&Arc<crate::switch::coordination::Coordinator>> {
        self.coordination.as_ref()
    }

    fn group_switches(&self) -> &Arc<GroupSwitches> {
        &self.group_switches
    }
}
