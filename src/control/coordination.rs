//! Several Switchyard processes, one routing table (`[coordination]`, see
//! switch::coordination for the log and docs/coordination.md for the rules).
//!
//! Every instance reads the state log from the start and applies each published
//! routing table in log order, at the version it was published with; a version
//! that appears twice is taken from its first record. A change made on any instance
//! (file reload, admin API, CLI) is checked there first, then published as the next
//! version, and applied by that instance the same way as by every other, from the
//! log. Each instance writes a heartbeat with the version it has applied, so every
//! `/status` shows the instances and where each stands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Changing;
use crate::config::{Config, ConfigErrors};
use crate::metrics;
use crate::proxy::Proxy;
use crate::switch::coordination::{
    now_ms, Coordinator, Entry, InstanceSeen, INSTANCE_PREFIX, ROUTES_KEY,
};

/// A published routing table.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Published {
    version: u64,
    /// The whole `[routes]` section, as `RoutesConfig::to_toml` writes it.
    routes: String,
    by: String,
    at_ms: u64,
}

/// An instance's heartbeat.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    version: u64,
    at_ms: u64,
}

/// How often the log is read for records of other instances.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How long a proposal waits to see its version applied.
const PROPOSAL_WAIT: Duration = Duration::from_secs(15);
/// Publishers remembered per version, for conflict reports.
const REMEMBERED_VERSIONS: usize = 64;

/// Starts following the shared log, when `[coordination]` is configured: the
/// instance serves with its own file's routes until it has read the log, then
/// applies the newest published table (or publishes its own, when the log has
/// none), and follows from then on.
pub fn start(proxy: &Arc<Proxy>) {
    let Some(c) = proxy.coordination.clone() else {
        return;
    };
    let me = proxy.clone();
    proxy.spawn(async move { follow(me, c).await });
}

async fn follow(proxy: Arc<Proxy>, c: Arc<Coordinator>) {
    let mut backoff = Duration::from_millis(250);
    let failed = |c: &Coordinator, e: &str| {
        c.fleet.lock().expect("fleet lock").error = Some(e.to_string());
    };
    // The topic, then the whole log, before anything is published from here.
    loop {
        let first = async {
            c.log.ensure_topic().await?;
            let changing = proxy.changing.lock().await;
            catch_up(&proxy, &c, &changing).await?;
            if c.fleet().published == 0 {
                // Nobody has published yet: this instance's table is the first,
                // unless another instance starting at the same moment won.
                let new = (*proxy.config()).clone();
                if let Err(e) = propose(&proxy, &c, &changing, new).await {
                    if c.fleet().published == 0 {
                        return Err(e.to_string());
                    }
                }
            }
            Ok::<(), String>(())
        };
        match first.await {
            Ok(()) => break,
            Err(e) => {
                failed(&c, &e);
                tracing::warn!(topic = c.log.topic(), error = %e, "coordination: cannot read the shared state yet; serving with this instance's routes and retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(
        instance = %c.config.instance,
        version = proxy.routes().version,
        "coordination: following the shared routing table"
    );
    let beat_every = c.config.session_timeout / 3;
    let mut last_beat: Option<Instant> = None;
    loop {
        if last_beat.is_none_or(|t| t.elapsed() >= beat_every) {
            let beat = Heartbeat {
                version: proxy.routes().version,
                at_ms: now_ms(),
            };
            let key = format!("{INSTANCE_PREFIX}{}", c.config.instance);
            let value = serde_json::to_vec(&beat).expect("serializes");
            match c.log.append(&key, &value).await {
                Ok(_) => last_beat = Some(Instant::now()),
                Err(e) => failed(&c, &e),
            }
        }
        let next = *c.next.lock().expect("next lock");
        match c.log.read(next).await {
            Ok(entries) if !entries.is_empty() => {
                let changing = proxy.changing.lock().await;
                if let Err(e) = catch_up(&proxy, &c, &changing).await {
                    failed(&c, &e);
                }
            }
            Ok(_) => c.fleet.lock().expect("fleet lock").error = None,
            Err(e) => failed(&c, &e),
        }
        publish_metrics(&proxy, &c);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

fn publish_metrics(proxy: &Proxy, c: &Coordinator) {
    let fleet = c.fleet();
    let lag = fleet.published.saturating_sub(proxy.routes().version);
    metrics::coordination(lag, c.live(now_ms()).len());
}

/// Reads the log from where this instance stands to its end and applies every
/// record in order. Only the holder of `changing` calls it.
pub(super) async fn catch_up(
    proxy: &Proxy,
    c: &Coordinator,
    changing: &Changing<'_>,
) -> Result<(), String> {
    loop {
        let next = *c.next.lock().expect("next lock");
        let entries = c.log.read(next).await?;
        if entries.is_empty() {
            let mut fleet = c.fleet.lock().expect("fleet lock");
            fleet.caught_up = true;
            fleet.error = None;
            return Ok(());
        }
        for e in entries {
            apply_entry(proxy, c, changing, &e).await;
            *c.next.lock().expect("next lock") = e.offset + 1;
        }
    }
}

async fn apply_entry(proxy: &Proxy, c: &Coordinator, changing: &Changing<'_>, e: &Entry) {
    if let Some(id) = e.key.strip_prefix(INSTANCE_PREFIX) {
        if let Ok(b) = serde_json::from_slice::<Heartbeat>(&e.value) {
            let seen = InstanceSeen {
                version: b.version,
                at_ms: b.at_ms,
            };
            let mut fleet = c.fleet.lock().expect("fleet lock");
            fleet.instances.insert(id.to_string(), seen);
        }
        return;
    }
    if e.key != ROUTES_KEY {
        return;
    }
    let p: Published = match serde_json::from_slice(&e.value) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(offset = e.offset, error = %err, "coordination: unreadable routes record skipped");
            return;
        }
    };
    let first = {
        let mut fleet = c.fleet.lock().expect("fleet lock");
        fleet.published = fleet.published.max(p.version);
        let first = !fleet.published_by.contains_key(&p.version);
        fleet
            .published_by
            .entry(p.version)
            .or_insert_with(|| p.by.clone());
        while fleet.published_by.len() > REMEMBERED_VERSIONS {
            fleet.published_by.pop_first();
        }
        first
    };
    let current = proxy.routes().version;
    if !first || p.version <= current {
        return;
    }
    let applied = match proxy.config().with_routes_toml(&p.routes) {
        Ok(new) => proxy.apply_version(changing, new, Some(p.version)).await,
        Err(err) => Err(err),
    };
    match applied {
        Ok(v) => {
            tracing::info!(version = v, by = %p.by, "coordination: published routing table applied")
        }
        Err(err) => {
            tracing::error!(version = p.version, by = %p.by, errors = %err, "coordination: a published routing table cannot be applied here; this instance stays at its version")
        }
    }
}

/// Publishes `new`'s routes as the next version and applies it from the log, as
/// every instance does. Refused before publishing when this instance would refuse
/// it; a conflict (another instance published the same version first) is an
/// error, and the change is not applied.
pub(super) async fn propose(
    proxy: &Proxy,
    c: &Coordinator,
    changing: &Changing<'_>,
    new: Config,
) -> Result<u64, ConfigErrors> {
    let fail = |e: String| ConfigErrors(vec![format!("coordination: {e}")]);
    catch_up(proxy, c, changing)
        .await
        .map_err(|e| fail(format!("{e}; the change was not published")))?;
    proxy.check(changing, &new).await?;
    // What else changed (timeouts, certificates) is this instance's own: applied
    // here first, at the version it has.
    let running = proxy.config();
    let local = Config {
        routes: running.routes.clone(),
        ..new.clone()
    };
    if local != *running {
        let at = proxy.routes().version;
        proxy.apply_version(changing, local, Some(at)).await?;
    }
    let version = proxy.routes().version.max(c.fleet().published) + 1;
    let record = Published {
        version,
        routes: new.routes.to_toml(),
        by: c.config.instance.clone(),
        at_ms: now_ms(),
    };
    let value = serde_json::to_vec(&record).expect("serializes");
    c.log
        .append(ROUTES_KEY, &value)
        .await
        .map_err(|e| fail(format!("{e}; the change was not published")))?;
    let deadline = Instant::now() + PROPOSAL_WAIT;
    loop {
        catch_up(proxy, c, changing).await.map_err(fail)?;
        let by = c.fleet().published_by.get(&version).cloned();
        match by {
            Some(by) if by == c.config.instance && proxy.routes().version >= version => {
                return Ok(version)
            }
            Some(by) if by == c.config.instance => {
                return Err(fail(format!(
                    "version {version} was published but could not be applied here (see the log)"
                )))
            }
            Some(by) => {
                return Err(fail(format!(
                    "instance `{by}` published version {version} first; this change was not applied, make it again on top of that"
                )))
            }
            None if Instant::now() >= deadline => {
                return Err(fail(format!(
                    "version {version} was written but not read back within {PROPOSAL_WAIT:?}"
                )))
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
