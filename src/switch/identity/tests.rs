//! Unit tests of group attribution to client identities.

use super::*;

fn key(client: &str) -> IdentityKey {
    IdentityKey::new(None, client, "127.0.0.1".parse().unwrap())
}

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
    let k = key("rdkafka");
    assert!(ids.get(&k).is_none());
    ids.link_group(&k, "billing");
    assert_eq!(ids.get(&k).unwrap().groups.len(), 1);
    ids.link_group(&k, "billing");
    ids.link_group(&k, "audit");
    let groups: Vec<String> = ids.get(&k).unwrap().groups.into_iter().collect();
    assert_eq!(groups, ["audit", "billing"]);
}

#[test]
fn many_long_groups_from_one_identity_stay_within_the_cap() {
    let ids = Identities::default();
    let k = key("attacker");
    let pad = "x".repeat(2048);
    for i in 0..20_000 {
        ids.link_group(&k, &format!("{i}-{pad}"));
    }
    let limits = ids.limits();
    let stats = ids.stats();
    assert_eq!(stats.identities, 1);
    assert_eq!(stats.links, limits.max_groups_per_identity);
    assert!(stats.bytes <= (limits.max_groups_per_identity + 1) * (2048 + 256));
    // The most recent links are the ones kept.
    let groups = ids.get(&k).unwrap().groups;
    assert!(groups.contains(&format!("19999-{pad}")));
    assert!(!groups.contains(&format!("0-{pad}")));
    assert_eq!(ids.all_groups().len(), limits.max_groups_per_identity);
}

#[test]
fn a_live_membership_survives_a_flood_of_links() {
    let ids = Identities::with_limits(IdentityLimits {
        max_groups_per_identity: 4,
        ..IdentityLimits::default()
    });
    let k = key("shared");
    ids.link_group(&k, "billing");
    for i in 0..100 {
        ids.link_group(&k, &format!("junk-{i}"));
        // The real member heartbeats between the junk links.
        if i % 2 == 0 {
            ids.refresh_group(&k, "billing");
        }
    }
    assert!(ids.get(&k).unwrap().groups.contains("billing"));
    // A heartbeat never creates a link.
    ids.refresh_group(&k, "never-joined");
    assert!(!ids.get(&k).unwrap().groups.contains("never-joined"));
}

#[test]
fn identities_are_capped_least_recently_seen_first() {
    let ids = Identities::with_limits(IdentityLimits {
        max_identities: 3,
        ..IdentityLimits::default()
    });
    let live = key("live");
    ids.link_group(&live, "billing");
    for i in 0..1000 {
        ids.note_read(&key(&format!("flood-{i}")), std::iter::empty());
        ids.note_read(&live, std::iter::empty());
    }
    assert_eq!(ids.stats().identities, 3);
    assert!(ids.get(&live).unwrap().groups.contains("billing"));
    assert!(ids.get(&key("flood-0")).is_none());
    assert!(ids.get(&key("flood-999")).is_some());
}

#[test]
fn bytes_are_capped_across_identities() {
    let ids = Identities::with_limits(IdentityLimits {
        max_bytes: 1 << 20,
        ..IdentityLimits::default()
    });
    let long = "g".repeat(32_767);
    for i in 0..1000 {
        let k = key(&format!("{i}-{}", "c".repeat(1000)));
        ids.link_group(&k, &format!("{i}{long}"));
    }
    let stats = ids.stats();
    assert!(stats.bytes <= 1 << 20, "{stats:?}");
    assert!(stats.identities > 0 && stats.identities < 1000);
    // The accounting matches what is held.
    let held: usize = ids.all_groups().iter().map(String::len).sum();
    assert!(held <= stats.bytes);
}

#[test]
fn idle_identities_and_links_age_out() {
    let ids = Identities::with_limits(IdentityLimits {
        idle: Duration::from_secs(60),
        ..IdentityLimits::default()
    });
    let t0 = Instant::now();
    let (a, b) = (key("a"), key("b"));
    ids.link_group_at(&a, "billing", t0);
    ids.link_group_at(&b, "audit", t0);
    // `a` keeps fetching but never confirms its group again; `b` goes quiet.
    let later = t0 + Duration::from_secs(61);
    ids.update(&a, later, |e, _, _| e.reads = true);
    let seen_a = ids.get_at(&a, later).unwrap();
    assert!(seen_a.groups.is_empty(), "unconfirmed link aged out");
    assert!(ids.get_at(&b, later).is_none());
    assert_eq!(ids.stats().identities, 1, "b dropped from memory");
    assert!(ids.all_groups().is_empty());
}

#[test]
fn the_registry_is_shared_by_clones() {
    let ids = Identities::default();
    let k = key("c");
    ids.clone().link_group(&k, "billing");
    assert!(ids.get(&k).unwrap().groups.contains("billing"));
    let (sample, total) = ids.group_members_sample(0);
    assert!(sample.is_empty());
    assert_eq!(total, 1);
}

#[test]
fn topics_are_remembered_per_side_most_recent_kept() {
    let ids = Identities::default();
    let k = key("app");
    ids.note_write(&k, ["out"].into_iter());
    ids.note_read(&k, ["in", "in"].into_iter());
    let i = ids.get(&k).unwrap();
    assert_eq!(i.written_topics, ["out".to_string()].into_iter().collect());
    assert_eq!(i.read_topics, ["in".to_string()].into_iter().collect());
    let many: Vec<String> = (0..MAX_TOPICS + 10).map(|n| format!("t{n}")).collect();
    ids.note_read(&k, many.iter().map(String::as_str));
    ids.note_read(&k, ["t10"].into_iter());
    let i = ids.get(&k).unwrap();
    assert_eq!(i.read_topics.len(), MAX_TOPICS);
    assert!(i.read_topics.contains("t10"), "a topic used again is kept");
    assert!(!i.read_topics.contains("in"), "the least recent one went");
}
