//! The cutover machinery: which topics a new routing table moves, the switch marks
//! recorded when a topic's writes move, producer-id maps and group attribution.

pub mod coordination;
pub mod groups;
pub mod identity;
pub mod inflight;
pub mod membership;
pub mod mm2;
pub mod ops;
pub mod producers;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use crate::config::Matcher;
use crate::routes::RouteTable;
use crate::state::Mark;
use crate::upstream::{ClusterView, UpstreamError};

/// A topic whose `produce` route differs between two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceFlip {
    pub topic: String,
    pub from: String,
    pub to: String,
}

/// Topic names the proxy must consider when comparing two tables: every exact row,
/// and, when a regex row exists, every topic the clusters hold.
pub async fn candidate_topics(
    old: &RouteTable,
    new: &RouteTable,
    clusters: &[&ClusterView],
    timeout: Duration,
) -> Result<BTreeSet<String>, UpstreamError> {
    let mut names = BTreeSet::new();
    let mut regex = false;
    for t in old.topics().iter().chain(new.topics()) {
        match &t.matcher {
            Matcher::Exact(n) => {
                names.insert(n.clone());
            }
            Matcher::Regex(_) => regex = true,
        }
    }
    if regex || old.default_cluster != new.default_cluster {
        for c in clusters {
            for t in topic_names_all(c, timeout).await? {
                names.insert(t);
            }
        }
    }
    Ok(names)
}

/// The produce flips from `old` to `new` among `topics`.
pub fn produce_flips(
    old: &RouteTable,
    new: &RouteTable,
    topics: &BTreeSet<String>,
) -> Vec<ProduceFlip> {
    topics
        .iter()
        .filter_map(|t| {
            let (from, to) = (old.produce_cluster(t), new.produce_cluster(t));
            (from != to).then(|| ProduceFlip {
                topic: t.clone(),
                from: from.to_string(),
                to: to.to_string(),
            })
        })
        .collect()
}

/// Every topic the cluster holds, but Kafka's own internal ones.
pub(crate) async fn topic_names_all(
    c: &ClusterView,
    timeout: Duration,
) -> Result<Vec<String>, UpstreamError> {
    let v = c.version_for(ApiKey::Metadata, 9).unwrap_or(1);
    let resp: MetadataResponse = c
        .call(
            ApiKey::Metadata,
            v,
            &MetadataRequest::default().with_topics(None),
            timeout,
        )
        .await?;
    Ok(resp
        .topics
        .iter()
        .filter(|t| !t.is_internal)
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect())
}

/// End offsets of every partition of `physical` on `cluster`, asked of each
/// partition's leader. A topic the cluster does not have yet gets no partitions:
/// everything written to it later is after the mark.
pub async fn end_offsets(
    cluster: &ClusterView,
    physical: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, String> {
    ops::offsets_at(cluster, physical, ops::LATEST, timeout).await
}

/// Builds the mark for one flip (the end offsets of the cluster writes move to).
pub async fn mark_for(
    flip: &ProduceFlip,
    new: &RouteTable,
    cluster: &ClusterView,
    timeout: Duration,
) -> Result<Mark, String> {
    let physical = new.physical_topic(&flip.topic, &flip.to);
    let partitions = end_offsets(cluster, &physical, timeout)
        .await
        .map_err(|e| format!("switch mark for topic `{}`: {e}", flip.topic))?;
    Ok(Mark {
        topic: flip.topic.clone(),
        physical,
        cluster: flip.to.clone(),
        from: flip.from.clone(),
        route_version: new.version,
        recorded_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn table(version: u64, orders: &str) -> RouteTable {
        let c = Config::from_toml(
            &format!(
                r#"
                [clusters.source]
                bootstrap = ["s:9092"]
                [clusters.target]
                bootstrap = ["t:9092"]
                node_id_offset = 1000
                [routes]
                default_cluster = "source"
                [routes.topics."orders"]
                produce = "{orders}"
                [routes.topics."payments"]
                produce = "source"
                "#
            ),
            Vec::<(String, String)>::new(),
            Path::new("."),
        )
        .unwrap();
        RouteTable::new(version, &c)
    }

    #[test]
    fn flips_are_the_rows_whose_produce_changed() {
        let (a, b) = (table(1, "source"), table(2, "target"));
        let topics: BTreeSet<String> = ["orders".into(), "payments".into()].into();
        assert_eq!(
            produce_flips(&a, &b, &topics),
            vec![ProduceFlip {
                topic: "orders".into(),
                from: "source".into(),
                to: "target".into()
            }]
        );
        assert!(produce_flips(&b, &b, &topics).is_empty());
    }
}
