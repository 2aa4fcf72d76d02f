//! Startup, background refresh, reload triggers and graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::listener::Listeners;
use crate::proxy::Proxy;

/// Installs the Prometheus recorder once per process; later calls (several proxies
/// run in one test process) get the same handle.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut handle = HANDLE.lock().expect("metrics handle lock");
    if let Some(h) = &*handle {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::REQUEST_DURATION.to_string()),
            crate::metrics::DURATION_BUCKETS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    *handle = Some(h.clone());
    Ok(h)
}

/// Runs the proxy until SIGINT/SIGTERM (or `shutdown` is cancelled), then stops
/// accepting, lets in-flight requests finish for up to `shutdown_grace`, and returns.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let proxy = Proxy::new(config, config_path.clone()).map_err(anyhow::Error::msg)?;
    let config = proxy.config();

    // Learn every cluster before accepting clients, so the first ApiVersions answer
    // already reflects what the clusters support. A cluster that is down is retried
    // in the background; the proxy still starts.
    for cluster in proxy.clusters() {
        match cluster.refresh(config.proxy.connect_timeout).await {
            Ok(()) => tracing::info!(
                cluster = cluster.name(),
                brokers = cluster.brokers().len(),
                "cluster reachable"
            ),
            Err(e) => {
                tracing::warn!(cluster = cluster.name(), error = %e, "cluster not reachable yet; retrying in the background")
            }
        }
    }
    proxy.recompute_api_table();
    // Before any client connects: groups whose switch did not flip stay pinned.
    proxy.resume_switches();
    // Several instances: follow the shared routing table (serving meanwhile).
    crate::control::start_coordination(&proxy);

    let tracker = TaskTracker::new();
    let listeners = Listeners::new(proxy.clone(), shutdown.clone(), tracker.clone());
    listeners
        .bind_bootstrap()
        .await
        .context("binding the bootstrap listener")?;
    listeners.ensure_broker_listeners().await;

    let admin_listener = crate::admin::bind(config.admin_bind)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin_bind))?;
    tracing::info!(addr = %config.admin_bind, "admin API bound");
    tracker.spawn(crate::admin::serve(
        admin_listener,
        proxy.clone(),
        metrics,
        shutdown.clone(),
    ));

    tracker.spawn(refresh_loop(
        proxy.clone(),
        listeners.clone(),
        shutdown.clone(),
    ));
    if let Some(path) = config_path {
        tracker.spawn(watch_config(proxy.clone(), path, shutdown.clone()));
    }
    tracker.spawn(signals(proxy.clone(), shutdown.clone()));

    tracing::info!("switchyard running");
    shutdown.cancelled().await;
    tracing::info!(grace = ?config.proxy.shutdown_grace, "shutting down: no new connections or requests; finishing in-flight requests");
    tracker.close();
    if tokio::time::timeout(config.proxy.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    // Group switches and reloads in progress stop here; their phases are in the
    // state store, and the next start resumes them.
    proxy.stop_tasks(std::time::Duration::from_secs(1)).await;
    if let Some(c) = &proxy.coordination {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.membership.leave()).await;
    }
    Ok(())
}

/// Refreshes cluster knowledge periodically (new brokers get listeners within one
/// period), with exponential backoff while a cluster is unreachable.
async fn refresh_loop(proxy: Arc<Proxy>, listeners: Arc<Listeners>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let period = proxy.config().proxy.metadata_refresh;
        let any_down = proxy.clusters().any(|c| !c.reachable());
        let wait = if any_down { backoff } else { period };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let timeout = proxy.config().proxy.connect_timeout;
        let mut failed = false;
        for cluster in proxy.clusters() {
            if let Err(e) = cluster.refresh(timeout).await {
                failed = true;
                tracing::warn!(cluster = cluster.name(), error = %e, "cluster refresh failed");
            }
        }
        backoff = if failed {
            (backoff * 2).min(Duration::from_secs(10))
        } else {
            Duration::from_millis(250)
        };
        proxy.recompute_api_table();
        listeners.ensure_broker_listeners().await;
    }
}

/// Reloads when the config file's modification time or size changes.
async fn watch_config(proxy: Arc<Proxy>, path: PathBuf, shutdown: CancellationToken) {
    let stamp = |p: &PathBuf| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = stamp(&path);
        if now != last && now.is_some() {
            last = now;
            tracing::info!(path = %path.display(), "config file changed; reloading");
            let _ = proxy.reload().await;
        }
    }
}

async fn signals(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.cancel(); return; }
            _ = int.recv() => { tracing::info!("SIGINT"); shutdown.cancel(); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                let p = proxy.clone();
                proxy.spawn(async move { let _ = p.reload().await; });
            }
        }
    }
}
