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
//!
//! A version that moves a topic's writes is a fence: every instance that applies it
//! holds the topic's writes on every cluster, waits until its batches still in
//! flight complete, and acknowledges. Once every live instance has (or the session
//! timeout passed), the proposer measures the switch marks on the new cluster,
//! publishes them and the release, and every instance lets writes through. If the
//! proposer is gone, any instance releases a fence older than the session timeout
//! plus a grace; the first release in the log counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use super::{Changing, Marks};
use crate::config::{Config, ConfigErrors};
use crate::metrics;
use crate::proxy::Proxy;
use crate::routes::RouteTable;
use crate::state::Mark;
use crate::switch::coordination::{
    now_ms, Coordinator, Entry, Fence, GroupPhase, GroupStat, InstanceSeen, ProducerKey,
    SharedLink, ACK_PREFIX, GROUP_PREFIX, GROUP_STAT_PREFIX, INSTANCE_PREFIX, LINK_PREFIX,
    MARK_PREFIX, PRODUCER_KEY, RELEASE_KEY, RELOCATED_PREFIX, ROUTES_KEY,
};
use crate::switch::identity::IdentityKey;

/// A published routing table.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Published {
    version: u64,
    /// The whole `[routes]` section, as `RoutesConfig::to_toml` writes it.
    routes: String,
    by: String,
    at_ms: u64,
    /// Topics whose produce flip this version fences across instances.
    #[serde(default)]
    fence: Vec<String>,
}

/// An acknowledgement of a fence, or its release.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FenceVersion {
    version: u64,
}

/// An instance's heartbeat.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    version: u64,
    at_ms: u64,
}

/// How long one read of the log waits at the broker for a record of another
/// instance (and so, at most, between two looks at heartbeats and stale fences).
const FOLLOW_WAIT: Duration = Duration::from_millis(500);
/// How long a proposal waits to see its version applied.
const PROPOSAL_WAIT: Duration = Duration::from_secs(15);
/// Publishers remembered per version, for conflict reports.
const REMEMBERED_VERSIONS: usize = 64;
/// How long past twice the session timeout an unreleased fence waits for its
/// proposer, while that proposer is still a member.
const STALE_FENCE_GRACE: Duration = Duration::from_secs(5);

/// Starts following the shared log, when `[coordination]` is configured: the
/// instance serves with its own file's routes until it has read the log, then
/// applies the newest published table (or publishes its own, when the log has
/// none), and follows from then on.
pub fn start(proxy: &Arc<Proxy>) {
    let Some(c) = proxy.coordination.clone() else {
        return;
    };
    let membership = c.membership.clone();
    proxy.spawn(async move { membership.run().await });
    // Group links confirmed here, for the instances a client's other connections
    // land on.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(IdentityKey, String)>(1024);
    proxy.identities.share_links(tx);
    let shared = c.clone();
    proxy.spawn(async move {
        while let Some((identity, group)) = rx.recv().await {
            let link = SharedLink { identity, group };
            if let Err(e) = shared.publish(&link.key(), &link).await {
                tracing::debug!(error = %e, "coordination: a group link was not shared");
            }
        }
    });
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
            if !c.keyed.load(Ordering::Acquire) {
                // The first instance offers its own key; every instance adopts the
                // first one in the log.
                let key = ProducerKey {
                    key: proxy.producers.issuing_key(),
                };
                c.publish(PRODUCER_KEY, &key).await?;
                catch_up(&proxy, &c, &changing).await?;
            }
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
                tracing::warn!(topic = c.log.topic(), error = %e, "coordination: cannot read the shared state yet; holding writes, fetches and group requests, retrying");
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
    let mut views = c.membership.subscribe();
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
        // A long poll: a record another instance writes is read within a round trip.
        // A change of membership cuts it short: an instance that (re)joined reads
        // what it missed before it serves writes again.
        let read = tokio::select! {
            r = c.log.read_waiting(next, FOLLOW_WAIT) => Some(r),
            _ = views.changed() => None,
        };
        let behind = matches!(&read, Some(Ok(entries)) if !entries.is_empty());
        if behind || c.holds() {
            let changing = proxy.changing.lock().await;
            if let Err(e) = catch_up(&proxy, &c, &changing).await {
                failed(&c, &e);
            }
        }
        match read {
            Some(Ok(entries)) if entries.is_empty() => {
                c.fleet.lock().expect("fleet lock").error = None
            }
            Some(Err(e)) => failed(&c, &e),
            _ => {}
        }
        finish_orphaned_fences(&proxy, &c).await;
        publish_metrics(&proxy, &c);
        if c.fleet().error.is_some() {
            tokio::time::sleep(FOLLOW_WAIT).await;
        }
    }
}

/// A fence its proposer can no longer release (it left the group: killed, cut off
/// from the coordination cluster, removed) is finished by the leader, the same way
/// the proposer would have: once every member acknowledged it. A fence left over
/// for twice the session timeout with its proposer still a member (its release
/// failed) is finished by the leader too.
async fn finish_orphaned_fences(proxy: &Proxy, c: &Coordinator) {
    let Some(view) = c.membership.view() else {
        return;
    };
    if view.leader != c.config.instance {
        return;
    }
    let stale = c.config.session_timeout * 2 + STALE_FENCE_GRACE;
    let orphan = c
        .fences
        .lock()
        .expect("fences lock")
        .iter()
        .find(|f| f.applied && (!view.members.contains(&f.by) || f.since.elapsed() > stale))
        .cloned();
    let Some(fence) = orphan else {
        return;
    };
    let changing = proxy.changing.lock().await;
    if catch_up(proxy, c, &changing).await.is_err() || c.fleet().released >= fence.version {
        return;
    }
    tracing::warn!(
        version = fence.version,
        by = %fence.by,
        "coordination: finishing a fence its proposer did not release"
    );
    if let Err(e) = finish_fence(proxy, c, &changing, &fence).await {
        tracing::warn!(version = fence.version, error = %e, "coordination: could not finish a fence; retrying");
    }
}

fn publish_metrics(proxy: &Proxy, c: &Coordinator) {
    let fleet = c.fleet();
    let lag = fleet.published.saturating_sub(proxy.routes().version);
    let members = c.members().map(|m| m.len()).unwrap_or(0);
    metrics::coordination(lag, members);
}

/// Reads the log from where this instance stands to its end and applies every
/// record in order. Only the holder of `changing` calls it.
pub(super) async fn catch_up(
    proxy: &Proxy,
    c: &Coordinator,
    changing: &Changing<'_>,
) -> Result<(), String> {
    // Taken before reading: a membership that begins during the read needs a read
    // of its own.
    let joins = c.joins_now();
    loop {
        let next = *c.next.lock().expect("next lock");
        let entries = c.log.read(next).await?;
        if entries.is_empty() {
            let mut fleet = c.fleet.lock().expect("fleet lock");
            fleet.caught_up = true;
            fleet.error = None;
            if let Some(j) = joins {
                c.caught_up_at(j);
            }
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
    if let Some(id) = e.key.strip_prefix(ACK_PREFIX) {
        if let Ok(a) = serde_json::from_slice::<FenceVersion>(&e.value) {
            let mut fleet = c.fleet.lock().expect("fleet lock");
            fleet
                .acks
                .entry(a.version)
                .or_default()
                .insert(id.to_string());
            while fleet.acks.len() > REMEMBERED_VERSIONS {
                fleet.acks.pop_first();
            }
        }
        return;
    }
    if e.key.starts_with(MARK_PREFIX) {
        if let Ok(m) = serde_json::from_slice::<Mark>(&e.value) {
            proxy.adopt_mark(m);
        }
        return;
    }
    if e.key == PRODUCER_KEY {
        if let Ok(k) = serde_json::from_slice::<ProducerKey>(&e.value) {
            if !c.keyed.swap(true, Ordering::AcqRel) {
                proxy.producers.adopt_key(k.key);
                tracing::info!(
                    "coordination: virtual producer ids are issued under the shared key"
                );
            }
        }
        return;
    }
    if e.key.starts_with(LINK_PREFIX) {
        if let Ok(l) = serde_json::from_slice::<SharedLink>(&e.value) {
            proxy.identities.adopt_link(&l.identity, &l.group);
        }
        return;
    }
    if let Some(v) = e.key.strip_prefix(RELOCATED_PREFIX) {
        if let Ok(vpid) = v.parse::<i64>() {
            proxy.producers.mark_relocated(vpid);
        }
        return;
    }
    if e.key.starts_with(GROUP_PREFIX) {
        match serde_json::from_slice::<GroupPhase>(&e.value) {
            Ok(p) => proxy.follow_group_phase(changing, c, p),
            Err(err) => {
                tracing::warn!(offset = e.offset, error = %err, "coordination: unreadable group switch record skipped")
            }
        }
        return;
    }
    if e.key.starts_with(GROUP_STAT_PREFIX) {
        if let Ok(s) = serde_json::from_slice::<GroupStat>(&e.value) {
            let key = (s.group.clone(), s.instance.clone());
            c.group_stats
                .lock()
                .expect("group stats lock")
                .insert(key, s);
        }
        return;
    }
    if e.key == RELEASE_KEY {
        if let Ok(r) = serde_json::from_slice::<FenceVersion>(&e.value) {
            release_up_to(proxy, c, changing, r.version);
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
    let fence: BTreeSet<String> = p.fence.iter().cloned().collect();
    let old_table = proxy.routes();
    let mode = if c.fleet().adopted {
        Marks::Published
    } else {
        Marks::Adopted
    };
    let applied = match proxy.config().with_routes_toml(&p.routes) {
        Ok(new) => {
            proxy
                .apply_mode(changing, new, Some(p.version), mode, &fence)
                .await
        }
        Err(err) => Err(err),
    };
    let applied = match applied {
        Ok((v, _)) => {
            c.fleet.lock().expect("fleet lock").adopted = true;
            tracing::info!(version = v, by = %p.by, "coordination: published routing table applied");
            true
        }
        Err(err) => {
            tracing::error!(version = p.version, by = %p.by, errors = %err, "coordination: a published routing table cannot be applied here; this instance stays at its version");
            if fence.is_empty() {
                return;
            }
            // The others move these topics' writes; this instance, left on its older
            // table, must write them nowhere until it catches up.
            let mut t = (*proxy.routes()).clone();
            t.fenced.extend(fence.iter().cloned());
            proxy.routes.store(Arc::new(t));
            tracing::warn!(version = p.version, topics = ?fence, "coordination: writes of the flipping topics held here until this instance applies the version");
            false
        }
    };
    if fence.is_empty() {
        // Fences this instance could not apply are over once it has a version at
        // least theirs and the fleet released them.
        release_up_to(proxy, c, changing, c.fleet().released);
        return;
    }
    let table = proxy.routes();
    let flips = fence
        .iter()
        .map(|topic| crate::switch::ProduceFlip {
            topic: topic.clone(),
            from: old_table.produce_cluster(topic).to_string(),
            to: table.produce_cluster(topic).to_string(),
        })
        .collect();
    c.fences.lock().expect("fences lock").push(Fence {
        version: p.version,
        by: p.by.clone(),
        flips,
        since: Instant::now(),
        applied,
    });
    // Earlier fences this instance could not apply, now behind it; and this one if
    // its release was read already.
    release_up_to(proxy, c, changing, c.fleet().released);
    if c.fleet().released >= p.version {
        return;
    }
    // No new write of these topics starts here now; the ones in flight finish.
    let limit = proxy.config().proxy.request_timeout;
    if !proxy.inflight.drained(&fence, limit).await {
        tracing::warn!(version = p.version, "coordination: batches of fenced topics still in flight after the request timeout; acknowledging anyway");
    }
    let key = format!("{ACK_PREFIX}{}", c.config.instance);
    let value = serde_json::to_vec(&FenceVersion { version: p.version }).expect("serializes");
    if let Err(err) = c.log.append(&key, &value).await {
        tracing::warn!(version = p.version, error = %err, "coordination: could not acknowledge a fence; it is released after the session timeout");
    }
}

/// Ends every fence up to `version` here: marks were adopted from the log.
/// A fence this instance could not apply ends only once its table is at least
/// that version.
fn release_up_to(proxy: &Proxy, c: &Coordinator, changing: &Changing<'_>, version: u64) {
    let current = proxy.routes().version;
    let done: Vec<Fence> = {
        let mut fences = c.fences.lock().expect("fences lock");
        let (done, keep): (Vec<Fence>, Vec<Fence>) = fences
            .drain(..)
            .partition(|f| f.version <= version && (f.applied || current >= f.version));
        *fences = keep;
        done
    };
    {
        let mut fleet = c.fleet.lock().expect("fleet lock");
        fleet.released = fleet.released.max(version);
    }
    // A topic another fence still holds stays held.
    let held: BTreeSet<String> = c
        .fences
        .lock()
        .expect("fences lock")
        .iter()
        .flat_map(|f| f.flips.iter().map(|x| x.topic.clone()))
        .collect();
    let topics: BTreeSet<String> = done
        .iter()
        .flat_map(|f| f.flips.iter().map(|x| x.topic.clone()))
        .filter(|t| !held.contains(t))
        .collect();
    if topics.is_empty() {
        return;
    }
    if let Err(e) = proxy.release_fence(changing, &topics, Vec::new()) {
        tracing::error!(version, errors = %e, "coordination: a fence release could not be recorded here");
    }
}

/// Measures the marks of a fence's topics on their new cluster and publishes them
/// and the release. Every instance has stopped writing them, so the new cluster's
/// end offsets are where the first write through any instance will land.
async fn publish_release(proxy: &Proxy, c: &Coordinator, fence: &Fence) -> Result<(), String> {
    let table: Arc<RouteTable> = proxy.routes();
    let timeout = proxy
        .config()
        .proxy
        .connect_timeout
        .max(Duration::from_secs(5));
    for flip in &fence.flips {
        let cluster = proxy
            .cluster(&flip.to)
            .ok_or_else(|| format!("unknown cluster `{}`", flip.to))?;
        let mut mark = crate::switch::mark_for(flip, &table, cluster, timeout).await?;
        mark.route_version = fence.version;
        let value = serde_json::to_vec(&mark).expect("serializes");
        c.log
            .append(&format!("{MARK_PREFIX}{}", flip.topic), &value)
            .await?;
    }
    let value = serde_json::to_vec(&FenceVersion {
        version: fence.version,
    })
    .expect("serializes");
    c.log.append(RELEASE_KEY, &value).await?;
    Ok(())
}

/// Waits for every member's acknowledgement of `fence`, then releases it. A member
/// that has not acknowledged within the session timeout is removed from the group;
/// the release then waits one more session timeout, by which that member has
/// either heard it was removed or seen its own membership lapse, and holds the
/// topics' writes either way.
async fn finish_fence(
    proxy: &Proxy,
    c: &Coordinator,
    changing: &Changing<'_>,
    fence: &Fence,
) -> Result<(), String> {
    let session = c.config.session_timeout;
    let deadline = Instant::now() + session;
    loop {
        catch_up(proxy, c, changing).await?;
        let members = c.members().ok_or(
            "this instance is not a member of the coordination group; the leader finishes the fence",
        )?;
        let acked = c
            .fleet()
            .acks
            .get(&fence.version)
            .cloned()
            .unwrap_or_default();
        let missing: Vec<String> = members
            .iter()
            .filter(|i| !acked.contains(*i))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(version = fence.version, ?missing, "coordination: members did not acknowledge the fence within the session timeout; removing them from the group");
            if let Err(e) = c.membership.remove(&missing).await {
                tracing::warn!(version = fence.version, error = %e, "coordination: could not remove the members; waiting for their sessions to expire");
            }
            tokio::time::sleep(session).await;
            catch_up(proxy, c, changing).await?;
            if c.members().is_none() {
                return Err("this instance left the coordination group during the fence".into());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if c.fleet().released >= fence.version {
        return Ok(());
    }
    metrics::fence_wait(fence.since.elapsed());
    publish_release(proxy, c, fence).await?;
    // Read back until the release is applied here.
    for _ in 0..500 {
        catch_up(proxy, c, changing).await?;
        if c.fleet().released >= fence.version {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "the release of version {} was not read back",
        fence.version
    ))
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
    if c.holds() {
        return Err(fail(format!(
            "this instance is not a member of the coordination group `{}` (or has not read the shared state since it joined); the change was not published",
            c.membership.group()
        )));
    }
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
    let timeout = new.proxy.connect_timeout.max(Duration::from_secs(5));
    let old_table = proxy.routes();
    let fence = proxy
        .flips(&old_table, &RouteTable::new(version, &new), timeout)
        .await
        .map_err(|e| fail(format!("{e}; the change was not published")))?
        .into_iter()
        .map(|f| f.topic)
        .collect();
    let record = Published {
        version,
        routes: new.routes.to_toml(),
        by: c.config.instance.clone(),
        at_ms: now_ms(),
        fence,
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
                let fence = c
                    .fences
                    .lock()
                    .expect("fences lock")
                    .iter()
                    .find(|f| f.version == version)
                    .cloned();
                if let Some(fence) = fence {
                    finish_fence(proxy, c, changing, &fence).await.map_err(|e| {
                        fail(format!("version {version} applied; its fence: {e} (released by another instance after the session timeout)"))
                    })?;
                }
                return Ok(version);
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

impl Proxy {
    /// Ends the fence of `topics`: records their marks (measured once every
    /// instance had stopped writing them) and lets writes reach the new cluster.
    pub(crate) fn release_fence(
        &self,
        _changing: &Changing<'_>,
        topics: &BTreeSet<String>,
        marks: Vec<Mark>,
    ) -> Result<(), ConfigErrors> {
        self.persist(marks, &[])?;
        let mut t = (*self.routes()).clone();
        t.fenced.retain(|topic| !topics.contains(topic));
        self.routes.store(Arc::new(t));
        for topic in topics {
            tracing::info!(%topic, "produce route flipped: fence released");
        }
        Ok(())
    }

    /// Records a mark another instance measured, unless this one has it.
    pub(crate) fn adopt_mark(&self, mark: Mark) {
        if self.state.marks().contains(&mark) {
            return;
        }
        if let Err(e) = self.write_state(|s| s.record_mark(mark)) {
            tracing::error!(error = %e, "coordination: a published switch mark could not be recorded here");
        }
    }
}
