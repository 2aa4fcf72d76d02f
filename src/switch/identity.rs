//! Group attribution (DESIGN.md decision 8, PROTOCOL.md §4).
//!
//! A Fetch carries no group id, so the proxy attributes connections to a client
//! identity: the authenticated principal when there is one, else (client_id, peer
//! IP). Group membership seen on any connection of an identity (JoinGroup,
//! SyncGroup, OffsetCommit) links it to that group; fetches of an identity linked to
//! exactly one group follow the group's route. The identity also remembers whether it
//! was seen writing or reading, which decides what a role-less connection is told in
//! Metadata.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

/// Identities remembered at most; the oldest half is dropped past this, which only
/// costs a client one metadata round of steering.
const MAX_IDENTITIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

#[derive(Debug, Default, Clone)]
pub struct Identity {
    pub groups: BTreeSet<String>,
    pub reads: bool,
    pub writes: bool,
    seen: u64,
}

#[derive(Debug, Default)]
pub struct Identities {
    inner: Mutex<(HashMap<IdentityKey, Identity>, u64)>,
}

impl Identities {
    fn update(&self, key: &IdentityKey, f: impl FnOnce(&mut Identity)) {
        let mut inner = self.inner.lock().expect("identities lock");
        let (map, clock) = &mut *inner;
        *clock += 1;
        let now = *clock;
        if map.len() >= MAX_IDENTITIES && !map.contains_key(key) {
            let mut ages: Vec<u64> = map.values().map(|i| i.seen).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, i| i.seen > cut);
        }
        let id = map.entry(key.clone()).or_default();
        id.seen = now;
        f(id);
    }

    /// Every group any identity was seen in.
    pub fn all_groups(&self) -> BTreeSet<String> {
        let inner = self.inner.lock().expect("identities lock");
        inner
            .0
            .values()
            .flat_map(|i| i.groups.iter().cloned())
            .collect()
    }

    pub fn link_group(&self, key: &IdentityKey, group: &str) {
        self.update(key, |i| {
            if !i.groups.contains(group) {
                i.groups.insert(group.to_string());
            }
            i.reads = true;
        });
    }

    pub fn note_read(&self, key: &IdentityKey) {
        self.update(key, |i| i.reads = true);
    }

    pub fn note_write(&self, key: &IdentityKey) {
        self.update(key, |i| i.writes = true);
    }

    pub fn get(&self, key: &IdentityKey) -> Option<Identity> {
        self.inner
            .lock()
            .expect("identities lock")
            .0
            .get(key)
            .cloned()
    }

    /// Number of identities linked to each group (for /status).
    pub fn group_members(&self) -> std::collections::BTreeMap<String, usize> {
        let inner = self.inner.lock().expect("identities lock");
        let mut out = std::collections::BTreeMap::new();
        for i in inner.0.values() {
            for g in &i.groups {
                *out.entry(g.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_principal_first() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = IdentityKey::new(Some("alice"), "c1", ip);
        let b = IdentityKey::new(Some("alice"), "c2", "10.0.0.2".parse().unwrap());
        assert_eq!(a, b);
        let c = IdentityKey::new(None, "c1", ip);
        assert_ne!(a, c);
    }

    #[test]
    fn groups_accumulate_per_identity() {
        let ids = Identities::default();
        let k = IdentityKey::new(None, "rdkafka", "127.0.0.1".parse().unwrap());
        assert!(ids.get(&k).is_none());
        ids.link_group(&k, "billing");
        assert_eq!(ids.get(&k).unwrap().groups.len(), 1);
        ids.link_group(&k, "billing");
        ids.link_group(&k, "audit");
        let groups: Vec<String> = ids.get(&k).unwrap().groups.into_iter().collect();
        assert_eq!(groups, ["audit", "billing"]);
    }
}
