//! The running proxy's shared state: config, routing table, upstream clusters and the
//! negotiated API table. Everything that changes at run time sits behind `ArcSwap`,
//! so a request reads one consistent snapshot and a reload replaces it in one store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigErrors};
use crate::handlers::api_versions::{self, ApiTable};
use crate::handlers::VirtualMap;
use crate::metrics;
use crate::routes::RouteTable;
use crate::upstream::ClusterView;

pub struct Proxy {
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    routes: ArcSwap<RouteTable>,
    clusters: BTreeMap<String, Arc<ClusterView>>,
    api_table: ArcSwap<ApiTable>,
}

impl Proxy {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Arc<Proxy> {
        let clusters = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(ClusterView::new(c.clone()))))
            .collect();
        let routes = RouteTable::new(1, &config);
        metrics::route_version(1);
        Arc::new(Proxy {
            config_path,
            routes: ArcSwap::from_pointee(routes),
            config: ArcSwap::from_pointee(config),
            clusters,
            api_table: ArcSwap::from_pointee(ApiTable::new()),
        })
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

    /// Reloads the config file: validates everything, then swaps the routing table in
    /// one store. On any error nothing changes and every error is returned.
    /// Cluster and listener changes need a restart; they are reported, not applied.
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Err(ConfigErrors(vec!["no config file to reload".into()]));
        };
        let result = Config::load(path).and_then(|new| {
            let old = self.config.load();
            let mut errors = Vec::new();
            if new.clusters != old.clusters {
                errors.push(
                    "[clusters]: adding, removing or changing clusters needs a restart".into(),
                );
            }
            if new.listener != old.listener || new.admin_bind != old.admin_bind {
                errors.push("[listener]/[admin]: listener changes need a restart".into());
            }
            if !errors.is_empty() {
                return Err(ConfigErrors(errors));
            }
            Ok(new)
        });
        match result {
            Ok(new) => {
                let version = self.routes.load().version + 1;
                let table = RouteTable::new(version, &new);
                self.config.store(Arc::new(new));
                self.routes.store(Arc::new(table));
                metrics::route_version(version);
                metrics::reload("ok");
                tracing::info!(version, "config reloaded; routing table swapped");
                Ok(version)
            }
            Err(e) => {
                metrics::reload("rejected");
                tracing::warn!(errors = %e, "config reload rejected; running routes unchanged");
                Err(e)
            }
        }
    }
}
