//! Group attribution (DESIGN.md decision 8, PROTOCOL.md §4).
//!
//! A Fetch carries no group id, so the proxy attributes connections to a client
//! identity: the authenticated principal when there is one, else (client_id, peer
//! IP). Group membership the broker *accepted* on any connection of an identity
//! (JoinGroup, SyncGroup, OffsetCommit answered without error) links it to that
//! group; fetches of an identity linked to exactly one group follow the group's
//! route. The identity also remembers whether it was seen writing or reading, and
//! which topics (at most [`MAX_TOPICS`] of each, most recent kept), which decides
//! what a role-less connection is told in Metadata: an application whose reader and
//! writer share one client id opens new connections for metadata lookups, and each
//! must be given the view of the side that asks about that topic.
//!
//! # Bounds
//!
//! Everything here is keyed by client data (client ids, principals, group ids of up
//! to 32767 bytes each), so any client that can reach the listener could otherwise
//! grow it without end. The registry is bounded three ways ([`IdentityLimits`]):
//!
//! - **Identities:** at most `max_identities`, and the bytes of client data held
//!   (keys and group ids) at most `max_bytes`. Past either, the least recently seen
//!   identity is dropped, one at a time. Every fetch, produce and group request
//!   touches its identity, so a live client is always among the most recent and a
//!   flood of new identities evicts idle ones first. An evicted identity only loses
//!   attribution until its next accepted group request (a commit or heartbeat
//!   cycle): its fetches follow the topic's `consume` route meanwhile.
//! - **Groups per identity:** at most `max_groups_per_identity`; a new link past
//!   that drops the identity's least recently confirmed link. Refusing new links
//!   instead would freeze an identity on groups it left long ago and let stale (or
//!   hostile) links keep a real client from ever being attributed to its current
//!   group; live memberships are confirmed again on every successful heartbeat,
//!   commit and rejoin, so they are never the least recent.
//! - **Age:** identities not seen, and links not confirmed, for `idle` are dropped.
//!
//! Group ids are stored whole (legit ids can be long) but counted against
//! `max_bytes`, so long ids cost identities, not unbounded memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds of the registry (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLimits {
    pub max_identities: usize,
    pub max_groups_per_identity: usize,
    /// Bytes of client data held: identity keys plus linked group ids.
    pub max_bytes: usize,
    /// Identities not seen and links not confirmed for this long are dropped.
    pub idle: Duration,
}

impl Default for IdentityLimits {
    fn default() -> Self {
        IdentityLimits {
            max_identities: 100_000,
            // Far above what one consumer (or one principal's worth of them) joins.
            max_groups_per_identity: 64,
            max_bytes: 64 << 20,
            // Brokers forget idle producers after a day; a consumer away longer
            // rejoins (and is linked again) before it fetches.
            idle: Duration::from_secs(24 * 3600),
        }
    }
}

/// Bytes an identity or a link costs beyond its strings (map slots, counters), so
/// that many tiny entries are bounded by `max_bytes` too.
const IDENTITY_OVERHEAD: usize = 128;
const LINK_OVERHEAD: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IdentityKey {
    pub principal: Option<String>,
    pub client_id: String,
    pub ip: Option<IpAddr>,
}

impl IdentityKey {
    /// The principal alone when authenticated; otherwise client id and address.
    pub fn new(principal: Option<&str>, client_id: &str, ip: IpAddr) -> IdentityKey {
        match principal {
            Some(p) => IdentityKey {
                principal: Some(p.to_string()),
                client_id: String::new(),
                ip: None,
            },
            None => IdentityKey {
                principal: None,
                client_id: client_id.to_string(),
                ip: Some(ip),
            },
        }
    }

    fn bytes(&self) -> usize {
        self.principal.as_ref().map_or(0, String::len) + self.client_id.len()
    }
}

/// What is known about one identity (a copy; see [`Identities::get`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub groups: BTreeSet<String>,
    pub reads: bool,
    pub writes: bool,
    /// Topics (logical) this identity fetched or listed offsets of, and produced to.
    pub read_topics: BTreeSet<String>,
    pub written_topics: BTreeSet<String>,
}

/// Topics remembered per identity and side; past it the least recent one goes.
pub const MAX_TOPICS: usize = 64;
const TOPIC_OVERHEAD: usize = 32;

#[derive(Debug)]
struct Link {
    group: String,
    confirmed: Instant,
    /// Registry clock at the last confirmation: orders links within an identity
    /// even when several confirmations share an `Instant`.
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    links: Vec<Link>,
    reads: bool,
    writes: bool,
    /// Most recent last.
    read_topics: Vec<String>,
    written_topics: Vec<String>,
    /// Position in [`Registry::order`].
    tick: u64,
    seen: Instant,
    bytes: usize,
}

/// Moves `topic` to the most recent end of `list`, dropping the least recent past
/// [`MAX_TOPICS`].
fn remember(list: &mut Vec<String>, topic: &str) {
    if list.last().is_some_and(|t| t == topic) {
        return;
    }
    if let Some(i) = list.iter().position(|t| t == topic) {
        let t = list.remove(i);
        list.push(t);
        return;
    }
    if list.len() >= MAX_TOPICS {
        list.remove(0);
    }
    list.push(topic.to_string());
}

#[derive(Debug, Default)]
struct Registry {
    map: HashMap<Arc<IdentityKey>, Entry>,
    /// Identities by last touch, oldest first.
    order: BTreeMap<u64, Arc<IdentityKey>>,
    clock: u64,
    bytes: usize,
}

impl Registry {
    fn remove(&mut self, key: &IdentityKey) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }

    /// Drops identities not seen for `idle`, oldest first (touch order is time
    /// order, so this stops at the first recent one).
    fn expire(&mut self, now: Instant, idle: Duration) {
        while let Some((_, key)) = self.order.first_key_value() {
            let seen = self.map[key].seen;
            if now.saturating_duration_since(seen) < idle {
                break;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Drops least recently seen identities other than `keep` while over a bound.
    fn shrink(&mut self, limits: &IdentityLimits, keep: &IdentityKey) {
        while self.map.len() > limits.max_identities || self.bytes > limits.max_bytes {
            let victim = self.order.values().find(|k| k.as_ref() != keep).cloned();
            match victim {
                Some(k) => self.remove(&k),
                None => break,
            }
        }
    }
}

/// Identity → groups and roles, bounded (module docs). Cloning shares the registry,
/// so the response path can confirm links.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    inner: Arc<Mutex<Registry>>,
    limits: IdentityLimits,
    /// With `[coordination]`: where new links go, to be shared with the other
    /// instances (a client's connections may land on several).
    shared: Arc<Mutex<Option<LinkSender>>>,
}

/// Where new links go to be shared (`Identities::share_links`).
pub type LinkSender = tokio::sync::mpsc::Sender<(IdentityKey, String)>;

impl Identities {
    pub fn with_limits(limits: IdentityLimits) -> Identities {
        Identities {
            inner: Arc::default(),
            limits,
            shared: Arc::default(),
        }
    }

    /// Sends every new link (not a refresh, not an adopted one) to `tx`, to be
    /// published for the other instances (`[coordination]`).
    pub fn share_links(&self, tx: LinkSender) {
        *self.shared.lock().expect("identities share lock") = Some(tx);
    }

    /// A link another instance confirmed (`[coordination]`): the same as one
    /// confirmed here, and not shared again.
    pub fn adopt_link(&self, key: &IdentityKey, group: &str) {
        self.link_at(key, group, Instant::now());
    }

    pub fn limits(&self) -> IdentityLimits {
        self.limits
    }

    fn update(
        &self,
        key: &IdentityKey,
        now: Instant,
        f: impl FnOnce(&mut Entry, u64, &IdentityLimits),
    ) {
        let limits = &self.limits;
        let mut guard = self.inner.lock().expect("identities lock");
        let reg = &mut *guard;
        reg.expire(now, limits.idle);
        reg.clock += 1;
        let tick = reg.clock;
        if !reg.map.contains_key(key) {
            let bytes = IDENTITY_OVERHEAD + key.bytes();
            reg.bytes += bytes;
            reg.map.insert(
                Arc::new(key.clone()),
                Entry {
                    links: Vec::new(),
                    reads: false,
                    writes: false,
                    read_topics: Vec::new(),
                    written_topics: Vec::new(),
                    tick,
                    seen: now,
                    bytes,
                },
            );
        }
        let shared = reg
            .map
            .get_key_value(key)
            .map(|(k, _)| k.clone())
            .expect("inserted above");
        let entry = reg.map.get_mut(key).expect("inserted above");
        reg.order.remove(&entry.tick);
        entry.tick = tick;
        entry.seen = now;
        let before = entry.bytes;
        // Links age on their own: a client still seen (fetching) may have left a
        // group long ago.
        entry
            .links
            .retain(|l| now.saturating_duration_since(l.confirmed) < limits.idle);
        f(entry, tick, limits);
        entry.bytes = IDENTITY_OVERHEAD
            + key.bytes()
            + entry
                .links
                .iter()
                .map(|l| LINK_OVERHEAD + l.group.len())
                .sum::<usize>()
            + entry
                .read_topics
                .iter()
                .chain(&entry.written_topics)
                .map(|t| TOPIC_OVERHEAD + t.len())
                .sum::<usize>();
        reg.bytes = reg.bytes - before + entry.bytes;
        reg.order.insert(tick, shared);
        reg.shrink(limits, key);
    }

    /// Every group any identity is linked to.
    pub fn all_groups(&self) -> BTreeSet<String> {
        let reg = self.inner.lock().expect("identities lock");
        reg.map
            .values()
            .flat_map(|e| e.links.iter().map(|l| l.group.clone()))
            .collect()
    }

    /// Links `key` to `group`. Only for membership the broker accepted: the caller
    /// confirms on the response (handlers::group_link::confirm_group_link), never on the request.
    pub fn link_group(&self, key: &IdentityKey, group: &str) {
        self.link_group_at(key, group, Instant::now())
    }

    pub(crate) fn link_group_at(&self, key: &IdentityKey, group: &str, now: Instant) {
        if self.link_at(key, group, now) {
            if let Some(tx) = self.shared.lock().expect("identities share lock").as_ref() {
                // A full queue drops the news: the client's next accepted group
                // request on another instance links it there.
                let _ = tx.try_send((key.clone(), group.to_string()));
            }
        }
    }

    /// Links or confirms; returns whether the link is new.
    fn link_at(&self, key: &IdentityKey, group: &str, now: Instant) -> bool {
        let mut new = false;
        self.update(key, now, |e, tick, limits| {
            e.reads = true;
            if let Some(l) = e.links.iter_mut().find(|l| l.group == group) {
                l.confirmed = now;
                l.tick = tick;
                return;
            }
            if limits.max_groups_per_identity == 0 {
                return;
            }
            while e.links.len() >= limits.max_groups_per_identity {
                let oldest = e
                    .links
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, l)| l.tick)
                    .map(|(i, _)| i)
                    .expect("not empty");
                let dropped = e.links.swap_remove(oldest);
                tracing::debug!(
                    group_bytes = dropped.group.len(),
                    "identity reached its group cap; least recently confirmed link dropped"
                );
            }
            e.links.push(Link {
                group: group.to_string(),
                confirmed: now,
                tick,
            });
            new = true;
        });
        new
    }

    /// Confirms an existing link again (a successful Heartbeat), creating nothing.
    pub fn refresh_group(&self, key: &IdentityKey, group: &str) {
        self.refresh_group_at(key, group, Instant::now())
    }

    pub(crate) fn refresh_group_at(&self, key: &IdentityKey, group: &str, now: Instant) {
        let linked = {
            let reg = self.inner.lock().expect("identities lock");
            reg.map
                .get(key)
                .is_some_and(|e| e.links.iter().any(|l| l.group == group))
        };
        if linked {
            self.link_group_at(key, group, now);
        }
    }

    /// `key` read `topics` (logical names).
    pub fn note_read<'a>(&self, key: &IdentityKey, topics: impl Iterator<Item = &'a str>) {
        self.update(key, Instant::now(), |e, _, _| {
            e.reads = true;
            for t in topics {
                remember(&mut e.read_topics, t);
            }
        });
    }

    /// `key` produced to `topics` (logical names).
    pub fn note_write<'a>(&self, key: &IdentityKey, topics: impl Iterator<Item = &'a str>) {
        self.update(key, Instant::now(), |e, _, _| {
            e.writes = true;
            for t in topics {
                remember(&mut e.written_topics, t);
            }
        });
    }

    pub fn get(&self, key: &IdentityKey) -> Option<Identity> {
        self.get_at(key, Instant::now())
    }

    pub(crate) fn get_at(&self, key: &IdentityKey, now: Instant) -> Option<Identity> {
        let idle = self.limits.idle;
        let reg = self.inner.lock().expect("identities lock");
        let e = reg.map.get(key)?;
        if now.saturating_duration_since(e.seen) >= idle {
            return None;
        }
        Some(Identity {
            groups: e
                .links
                .iter()
                .filter(|l| now.saturating_duration_since(l.confirmed) < idle)
                .map(|l| l.group.clone())
                .collect(),
            reads: e.reads,
            writes: e.writes,
            read_topics: e.read_topics.iter().cloned().collect(),
            written_topics: e.written_topics.iter().cloned().collect(),
        })
    }

    /// Sizes for /status and metrics.
    pub fn stats(&self) -> IdentityStats {
        let reg = self.inner.lock().expect("identities lock");
        IdentityStats {
            identities: reg.map.len(),
            links: reg.map.values().map(|e| e.links.len()).sum(),
            bytes: reg.bytes,
        }
    }

    /// Number of identities linked to each group (for /status).
    pub fn group_members(&self) -> BTreeMap<String, usize> {
        self.group_members_sample(usize::MAX).0
    }

    /// The first `limit` groups by name with their number of linked identities, and
    /// how many distinct groups there are in all. /status shows this rather than
    /// every group, which can be millions of bytes of client-chosen names.
    pub fn group_members_sample(&self, limit: usize) -> (BTreeMap<String, usize>, usize) {
        let reg = self.inner.lock().expect("identities lock");
        let mut all: HashMap<&str, usize> = HashMap::new();
        for e in reg.map.values() {
            for l in &e.links {
                *all.entry(l.group.as_str()).or_insert(0) += 1;
            }
        }
        let total = all.len();
        let mut names: Vec<(&str, usize)> = all.into_iter().collect();
        names.sort_unstable();
        let sample = names
            .into_iter()
            .take(limit)
            .map(|(g, n)| (g.to_string(), n))
            .collect();
        (sample, total)
    }
}

/// How big the registry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IdentityStats {
    pub identities: usize,
    pub links: usize,
    pub bytes: usize,
}

#[cfg(test)]
mod tests;
