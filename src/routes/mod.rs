//! The routing table: an immutable, versioned snapshot built from a validated
//! [`Config`]. Connections load the current snapshot once per request (through
//! `ArcSwap`) and use it to the end of that request; a reload stores a whole new table.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, GroupRoute, Matcher, TopicRoute};

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub version: u64,
    pub default_cluster: String,
    topics: Vec<TopicRoute>,
    groups: Vec<GroupRoute>,
    /// Groups held on a cluster other than their row's while a switch runs: the
    /// group stays where it is until the switch flips.
    pub pins: BTreeMap<String, String>,
    /// Topics whose writes are held on every cluster while a produce flip is fenced
    /// across instances (`[coordination]`): refused with a retriable error until
    /// every instance has stopped writing them to the old cluster.
    pub fenced: BTreeSet<String>,
}

impl RouteTable {
    pub fn new(version: u64, config: &Config) -> RouteTable {
        RouteTable {
            version,
            default_cluster: config.routes.default_cluster.clone(),
            topics: config.routes.topics.clone(),
            groups: config.routes.groups.clone(),
            pins: BTreeMap::new(),
            fenced: BTreeSet::new(),
        }
    }

    /// The row for a topic: an exact row wins over regex rows; among regex rows the
    /// first in key order wins (keys are sorted, so this is deterministic across
    /// replicas).
    pub fn topic_row(&self, topic: &str) -> Option<&TopicRoute> {
        self.topics
            .iter()
            .find(|t| matches!(&t.matcher, Matcher::Exact(n) if n == topic))
            .or_else(|| {
                self.topics
                    .iter()
                    .find(|t| matches!(t.matcher, Matcher::Regex(_)) && t.matcher.matches(topic))
            })
    }

    pub fn group_row(&self, group: &str) -> Option<&GroupRoute> {
        self.groups
            .iter()
            .find(|g| matches!(&g.matcher, Matcher::Exact(n) if n == group))
            .or_else(|| {
                self.groups
                    .iter()
                    .find(|g| matches!(g.matcher, Matcher::Regex(_)) && g.matcher.matches(group))
            })
    }

    /// Cluster that takes writes for `topic`.
    pub fn produce_cluster(&self, topic: &str) -> &str {
        self.topic_row(topic)
            .and_then(|t| t.produce.as_deref())
            .unwrap_or(&self.default_cluster)
    }

    /// Cluster that serves reads of `topic` for consumers not attributed to a group.
    pub fn consume_cluster(&self, topic: &str) -> &str {
        self.topic_row(topic)
            .and_then(|t| t.consume.as_deref())
            .unwrap_or(&self.default_cluster)
    }

    /// Cluster that coordinates `group` and serves its reads and commits.
    pub fn group_cluster(&self, group: &str) -> &str {
        match self.pins.get(group) {
            Some(pinned) => pinned,
            None => self.configured_group_cluster(group),
        }
    }

    /// The group's cluster by its row alone, whatever switch is running.
    pub fn configured_group_cluster(&self, group: &str) -> &str {
        self.group_row(group)
            .map(|g| g.cluster.as_str())
            .unwrap_or(&self.default_cluster)
    }

    /// Physical name of logical topic `topic` on `cluster`. A regex row's rename is a
    /// replacement pattern (`$1`, `${name}`) applied to the logical name.
    pub fn physical_topic(&self, topic: &str, cluster: &str) -> String {
        match self.topic_row(topic) {
            Some(row) => match (row.rename.get(cluster), &row.matcher) {
                (Some(name), Matcher::Exact(_)) => name.clone(),
                (Some(pattern), Matcher::Regex(re)) => {
                    re.replace(topic, pattern.as_str()).into_owned()
                }
                (None, _) => topic.to_string(),
            },
            None => topic.to_string(),
        }
    }

    /// (physical, logical) names of the exact rows renamed on `cluster`.
    pub fn renamed_on<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.topics.iter().filter_map(move |t| match &t.matcher {
            Matcher::Exact(logical) => t
                .rename
                .get(cluster)
                .map(|p| (p.as_str(), logical.as_str())),
            Matcher::Regex(_) => None,
        })
    }

    /// Rows, for `/status`.
    pub fn topics(&self) -> &[TopicRoute] {
        &self.topics
    }

    pub fn groups(&self) -> &[GroupRoute] {
        &self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table() -> RouteTable {
        let c = Config::from_toml(
            r#"
            [clusters.source]
            bootstrap = ["s:9092"]
            [clusters.target]
            bootstrap = ["t:9092"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            [routes.topics."orders"]
            produce = "target"
            consume = "source"
            rename = { target = "source.orders" }
            [routes.topics."^metrics\\.(.*)$"]
            produce = "target"
            rename = { target = "src.metrics.$1" }
            [routes.groups."billing"]
            cluster = "target"
            "#,
            Vec::<(String, String)>::new(),
            Path::new("."),
        )
        .unwrap();
        RouteTable::new(7, &c)
    }

    #[test]
    fn exact_rows_then_regex_then_default() {
        let t = table();
        assert_eq!(t.produce_cluster("orders"), "target");
        assert_eq!(t.consume_cluster("orders"), "source");
        assert_eq!(t.produce_cluster("payments"), "source");
        assert_eq!(t.consume_cluster("metrics.mem"), "source");
        assert_eq!(t.group_cluster("billing"), "target");
        assert_eq!(t.group_cluster("other"), "source");
        assert_eq!(t.version, 7);
    }

    #[test]
    fn exact_row_beats_a_matching_regex_row() {
        let t = table();
        assert_eq!(t.produce_cluster("metrics.cpu"), "target");
        assert_eq!(t.physical_topic("metrics.cpu", "target"), "src.metrics.cpu");
    }

    #[test]
    fn physical_names() {
        let t = table();
        assert_eq!(t.physical_topic("orders", "target"), "source.orders");
        assert_eq!(t.physical_topic("orders", "source"), "orders");
        assert_eq!(
            t.physical_topic("metrics.disk", "target"),
            "src.metrics.disk"
        );
        assert_eq!(t.physical_topic("payments", "target"), "payments");
    }
}
