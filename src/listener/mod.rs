//! Accept loops: the bootstrap listener and, in port mode, one listener per virtual
//! broker (`broker_port_base + virtual id`, DESIGN.md decision 1). In SNI mode the
//! bootstrap listener serves every virtual broker, chosen by the TLS SNI name. Listeners for new
//! brokers are opened as the clusters report them. Accepting never waits on a
//! client: each socket is handed to its own task at once, under a connection limit.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{self, BufferBudget, Target};
use crate::proxy::Proxy;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// SNI mode: the virtual broker the client named in its TLS handshake; any other
/// name (or none) is the bootstrap.
fn sni_target(proxy: &Proxy, server_name: Option<&str>, target: Target) -> Target {
    let config = proxy.config();
    let (crate::config::ListenerMode::Sni, Some(pattern)) =
        (config.listener.mode, config.listener.sni_pattern.as_deref())
    else {
        return target;
    };
    match server_name.and_then(|n| crate::handlers::sni_node(pattern, n)) {
        Some(virtual_id) => {
            tracing::debug!(
                sni = server_name.unwrap_or(""),
                virtual_id,
                "SNI name routed to a virtual broker"
            );
            Target::Broker { virtual_id }
        }
        None => target,
    }
}

/// Connections per source address, so that one host (or one attacker) cannot take
/// every connection slot of the process.
pub struct PerIp {
    max: usize,
    counts: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's claim on its address's count; released on drop.
pub struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(max: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            counts: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, unless that address is at its limit.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds now.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            // Addresses with no connection leave the map, which so stays as large
            // as the set of connected addresses.
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

pub struct Listeners {
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    budget: BufferBudget,
    bound: Mutex<BTreeSet<i32>>,
}

impl Listeners {
    pub fn new(proxy: Arc<Proxy>, shutdown: CancellationToken, tracker: TaskTracker) -> Arc<Self> {
        let config = proxy.config();
        let limit = Arc::new(Semaphore::new(config.proxy.max_connections));
        let per_ip = PerIp::new(config.proxy.max_connections_per_ip);
        let budget = BufferBudget::new(config.proxy.buffer_budget_bytes);
        Arc::new(Listeners {
            proxy,
            shutdown,
            tracker,
            limit,
            per_ip,
            budget,
            bound: Mutex::new(BTreeSet::new()),
        })
    }

    /// Binds the bootstrap address. Failing to bind it is fatal for the caller.
    pub async fn bind_bootstrap(self: &Arc<Self>) -> std::io::Result<SocketAddr> {
        let addr = self.proxy.config().listener.bind;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tracing::info!(%local, "bootstrap listener bound");
        self.spawn_accept(listener, "bootstrap".to_string(), Target::Bootstrap);
        Ok(local)
    }

    /// Opens a listener for every known broker of every cluster that lacks one (port
    /// mode; in SNI mode every broker is reached through the bootstrap port).
    pub async fn ensure_broker_listeners(self: &Arc<Self>) {
        let config = self.proxy.config();
        if config.listener.mode == crate::config::ListenerMode::Sni {
            return;
        }
        let ip = config.listener.bind.ip();
        let base = config.listener.broker_port_base as i32;
        let mut bound = self.bound.lock().await;
        for cluster in self.proxy.clusters() {
            for id in cluster.brokers().keys() {
                let vid = id + cluster.config.node_id_offset;
                if bound.contains(&vid) {
                    continue;
                }
                let port = base + vid;
                let Ok(port) = u16::try_from(port) else {
                    tracing::error!(
                        cluster = cluster.name(),
                        broker = id,
                        vid,
                        "virtual broker port out of range; broker unreachable through the proxy"
                    );
                    continue;
                };
                match TcpListener::bind(SocketAddr::new(ip, port)).await {
                    Ok(l) => {
                        tracing::info!(
                            cluster = cluster.name(),
                            broker = id,
                            virtual_id = vid,
                            port,
                            "virtual broker listener bound"
                        );
                        bound.insert(vid);
                        self.spawn_accept(
                            l,
                            format!("broker-{vid}"),
                            Target::Broker { virtual_id: vid },
                        );
                    }
                    Err(e) => {
                        // Retried on the next refresh.
                        tracing::error!(cluster = cluster.name(), broker = id, virtual_id = vid, port, error = %e, "cannot bind virtual broker listener");
                    }
                }
            }
        }
    }

    fn spawn_accept(self: &Arc<Self>, listener: TcpListener, name: String, target: Target) {
        let this = self.clone();
        self.tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = this.shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly
                        // rather than spin.
                        tracing::warn!(listener = %name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = this.limit.clone().try_acquire_owned() else {
                    crate::metrics::rejected_frame("connection_limit");
                    tracing::warn!(listener = %name, %peer, "connection limit reached; closing new connection");
                    continue;
                };
                let Some(slot) = this.per_ip.claim(peer.ip()) else {
                    crate::metrics::rejected_frame("connection_limit_per_ip");
                    tracing::warn!(listener = %name, %peer, "connection limit for this address reached; closing new connection");
                    continue;
                };
                let budget = this.budget.clone();
                let _ = socket.set_nodelay(true);
                let proxy = this.proxy.clone();
                let shutdown = this.shutdown.clone();
                let name = name.clone();
                let target = target.clone();
                let acceptor = proxy.tls_acceptor();
                this.tracker.spawn(async move {
                    match acceptor {
                        None => {
                            connection::serve(
                                proxy, socket, peer, name, target, shutdown, None, budget,
                            )
                            .await
                        }
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                HANDSHAKE_TIMEOUT,
                                acceptor.accept(socket),
                            )
                            .await;
                            match handshake {
                                Ok(Ok(tls)) => {
                                    let principal = tls
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|c| c.first())
                                        .and_then(crate::tls::principal);
                                    let presented = tls
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .is_some_and(|c| !c.is_empty());
                                    match &principal {
                                        // Client data: escaped, so a subject cannot forge log lines.
                                        Some(p) => tracing::debug!(%peer, principal = ?p, "client certificate accepted"),
                                        None if presented => {
                                            // A certificate with neither subject nor SAN: every such
                                            // certificate would share one empty principal.
                                            crate::metrics::rejected_frame("tls_handshake");
                                            tracing::warn!(%peer, listener = %name, "client certificate names no principal (empty subject, no SAN); connection closed");
                                            drop(slot);
                                            drop(permit);
                                            return;
                                        }
                                        None => {}
                                    }
                                    let target = sni_target(&proxy, tls.get_ref().1.server_name(), target);
                                    connection::serve(
                                        proxy, tls, peer, name, target, shutdown, principal,
                                        budget,
                                    )
                                    .await
                                }
                                Ok(Err(e)) => {
                                    crate::metrics::rejected_frame("tls_handshake");
                                    tracing::warn!(%peer, listener = %name, reason = %e, "TLS handshake failed; connection closed");
                                }
                                Err(_) => {
                                    crate::metrics::rejected_frame("tls_handshake");
                                    tracing::warn!(%peer, listener = %name, "TLS handshake timed out; connection closed");
                                }
                            }
                        }
                    }
                    drop(slot);
                    drop(permit);
                });
            }
        });
    }
}
