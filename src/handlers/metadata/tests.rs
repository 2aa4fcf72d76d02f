//! Tests of the Metadata and DescribeCluster rewrites and of the merge.
use super::*;
use crate::handlers::test_map;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::TopicName;

fn upstream_metadata() -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("10.0.0.1"))
                .with_port(9092),
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("10.0.0.2"))
                .with_port(9092),
        ])
        .with_controller_id(BrokerId(2))
        .with_cluster_id(Some(StrBytes::from_static_str("upstream-id")))
        .with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
            .with_partitions(vec![MetadataResponsePartition::default()
                .with_partition_index(0)
                .with_leader_id(BrokerId(2))
                .with_leader_epoch(57)
                .with_replica_nodes(vec![BrokerId(2), BrokerId(1)])
                .with_isr_nodes(vec![BrokerId(2)])
                .with_offline_replicas(vec![BrokerId(1)])])])
}

#[test]
fn metadata_shows_only_virtual_brokers_and_no_epochs() {
    let mut m = upstream_metadata();
    rewrite_metadata(&mut m, &test_map());
    let ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    assert_eq!(ids, vec![1001, 1002]);
    assert!(m.brokers.iter().all(|b| b.host.as_str() == "proxy.local"));
    assert_eq!(m.brokers[0].port, 9100 + 1001);
    assert_eq!(m.controller_id.0, 1002);
    assert_eq!(m.cluster_id.as_deref(), Some("switchyard"));
    let p = &m.topics[0].partitions[0];
    assert_eq!(p.leader_id.0, 1002);
    assert_eq!(p.leader_epoch, -1);
    assert_eq!(p.replica_nodes, vec![BrokerId(1002), BrokerId(1001)]);
    assert_eq!(p.isr_nodes, vec![BrokerId(1002)]);
    assert_eq!(p.offline_replicas, vec![BrokerId(1001)]);
}

#[test]
fn leaderless_partition_stays_leaderless() {
    let mut m = upstream_metadata();
    m.topics[0].partitions[0].leader_id = BrokerId(-1);
    m.controller_id = BrokerId(-1);
    rewrite_metadata(&mut m, &test_map());
    assert_eq!(m.topics[0].partitions[0].leader_id.0, -1);
    assert_eq!(m.controller_id.0, -1);
}

#[test]
fn metadata_frame_round_trips_at_every_version() {
    for version in 0..=9 {
        let mut body = upstream_metadata();
        if version < 2 {
            body.cluster_id = None;
        }
        let frame = codec::encode_response(ApiKey::Metadata, version, 77, &body).unwrap();
        let out = rewrite_metadata_frame(frame, version, &test_map()).unwrap();
        let (h, m) =
            codec::decode_response::<MetadataResponse>(ApiKey::Metadata, version, out).unwrap();
        assert_eq!(h.correlation_id, 77);
        assert_eq!(m.brokers[1].node_id.0, 1002, "v{version}");
    }
}

#[test]
fn describe_cluster_is_virtual() {
    let mut d = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str("upstream"))
        .with_controller_id(BrokerId(3))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(3))
            .with_host(StrBytes::from_static_str("kafka-3"))
            .with_port(19092)]);
    rewrite_describe_cluster(&mut d, &test_map());
    assert_eq!(d.cluster_id.as_str(), "switchyard");
    assert_eq!(d.controller_id.0, 1003);
    assert_eq!(d.brokers[0].broker_id.0, 1003);
    assert_eq!(d.brokers[0].host.as_str(), "proxy.local");
    assert_eq!(d.brokers[0].port, 10103);
}

// ------------------------------------------------------------------ merge

/// Routes by table: topic → cluster; exact renames (logical, cluster) → physical.
struct Table {
    routes: HashMap<String, String>,
    renames: HashMap<(String, String), String>,
}

impl TopicView for Table {
    fn cluster_of(&self, topic: &str) -> String {
        self.routes.get(topic).cloned().unwrap_or("s".to_string())
    }
    fn physical(&self, topic: &str, cluster: &str) -> String {
        let key = (topic.to_string(), cluster.to_string());
        self.renames.get(&key).cloned().unwrap_or(topic.to_string())
    }
    fn logical(&self, topic: &str, cluster: &str) -> Option<String> {
        self.renames
            .iter()
            .find(|((_, c), p)| c == cluster && p.as_str() == topic)
            .map(|((l, _), _)| l.clone())
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A cluster's answer listing `topics`, one partition each led by `leader`.
fn answer(cluster: &str, leader: i32, topics: &[&str]) -> ClusterAnswer {
    let topics = topics
        .iter()
        .map(|t| {
            MetadataResponseTopic::default()
                .with_name(Some(name(t)))
                .with_partitions(vec![
                    MetadataResponsePartition::default().with_leader_id(BrokerId(leader))
                ])
        })
        .collect();
    ClusterAnswer {
        cluster: cluster.to_string(),
        response: Some(
            MetadataResponse::default()
                .with_brokers(vec![
                    MetadataResponseBroker::default().with_node_id(BrokerId(leader))
                ])
                .with_controller_id(BrokerId(leader))
                .with_topics(topics),
        ),
    }
}

fn listed(m: &MetadataResponse) -> Vec<(String, i32, i16)> {
    m.topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().unwrap().to_string(),
                t.partitions.first().map(|p| p.leader_id.0).unwrap_or(-1),
                t.error_code,
            )
        })
        .collect()
}

fn table(routes: &[(&str, &str)], renames: &[(&str, &str, &str)]) -> Table {
    Table {
        routes: routes
            .iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect(),
        renames: renames
            .iter()
            .map(|(l, c, p)| ((l.to_string(), c.to_string()), p.to_string()))
            .collect(),
    }
}

#[test]
fn a_topic_on_both_clusters_is_listed_once_from_its_route() {
    // Both brokers answer every topic they have, asked or not (as some
    // Kafka-compatible brokers answer an empty list), and the target twice.
    let view = table(&[("moved", "t")], &[]);
    let answers = || {
        vec![
            answer("s", 1, &["both", "moved", "only-s"]),
            answer("t", 1001, &["both", "moved", "moved", "only-t"]),
        ]
    };
    let asked = [name("both"), name("moved"), name("both"), name("nowhere")];
    let m = merge(answers(), Some(&asked), "s", &view);
    assert_eq!(
        listed(&m),
        vec![
            ("both".into(), 1, 0),
            ("moved".into(), 1001, 0),
            ("nowhere".into(), -1, 3),
        ]
    );
    assert_eq!(m.controller_id.0, 1);
    assert_eq!(m.brokers.len(), 2);

    let m = merge(answers(), Some(&[]), "s", &view);
    assert!(m.topics.is_empty(), "{:?}", listed(&m));

    let m = merge(answers(), None, "s", &view);
    assert_eq!(
        listed(&m),
        vec![
            ("both".into(), 1, 0),
            ("moved".into(), 1001, 0),
            ("only-s".into(), 1, 0),
        ]
    );
}

#[test]
fn physical_names_of_renamed_topics_are_never_listed() {
    // "orders" is "source.orders" on the target; the target also has a topic
    // literally named "orders", which is not the one clients mean.
    let view = table(&[("orders", "t")], &[("orders", "t", "source.orders")]);
    let answers = vec![
        answer("s", 1, &["orders"]),
        answer("t", 1001, &["source.orders", "orders"]),
    ];
    let m = merge(answers, None, "s", &view);
    assert_eq!(listed(&m), vec![("orders".into(), 1001, 0)]);
}

#[test]
fn a_cluster_that_did_not_answer_leaves_its_topics_retriable() {
    let view = table(&[("moved", "t")], &[]);
    let answers = vec![
        answer("s", 1, &["a"]),
        ClusterAnswer {
            cluster: "t".into(),
            response: None,
        },
    ];
    let m = merge(answers, Some(&[name("a"), name("moved")]), "s", &view);
    assert_eq!(
        listed(&m),
        vec![("a".into(), 1, 0), ("moved".into(), -1, 5)]
    );
}

proptest::proptest! {
    /// For random routes, renames and topic sets on each cluster (each broker
    /// answering every topic it has, some twice), an all-topics and a named
    /// Metadata list each logical topic at most once, exactly when its routed
    /// cluster has it, led by that cluster's brokers only.
    #[test]
    fn every_logical_topic_once_from_its_routed_cluster(
        routed_to_t in proptest::collection::vec(proptest::bool::ANY, 12),
        renamed_on_t in proptest::collection::vec(proptest::bool::ANY, 12),
        on_s in proptest::collection::vec(proptest::bool::ANY, 12),
        on_t in proptest::collection::vec(proptest::bool::ANY, 12),
        twice in proptest::collection::vec(proptest::bool::ANY, 12),
        asked in proptest::collection::vec(0usize..14, 0..8),
    ) {
        let logical: Vec<String> = (0..12).map(|i| format!("topic-{i}")).collect();
        let mut view = table(&[], &[]);
        let (mut s_topics, mut t_topics) = (Vec::new(), Vec::new());
        for i in 0..12 {
            if routed_to_t[i] {
                view.routes.insert(logical[i].clone(), "t".into());
            }
            let on_target = if renamed_on_t[i] {
                let physical = format!("mirror.{}", logical[i]);
                view.renames.insert((logical[i].clone(), "t".into()), physical.clone());
                // The target may also hold a topic under the logical name.
                if twice[i] {
                    t_topics.push(logical[i].clone());
                }
                physical
            } else {
                logical[i].clone()
            };
            if on_s[i] {
                s_topics.push(logical[i].clone());
            }
            if on_t[i] {
                t_topics.push(on_target.clone());
                if twice[i] {
                    t_topics.push(on_target);
                }
            }
        }
        let answers = || {
            let s: Vec<&str> = s_topics.iter().map(|s| s.as_str()).collect();
            let t: Vec<&str> = t_topics.iter().map(|s| s.as_str()).collect();
            vec![answer("s", 1, &s), answer("t", 1001, &t)]
        };
        let has = |i: usize| if routed_to_t[i] { on_t[i] } else { on_s[i] };
        let leader = |i: usize| if routed_to_t[i] { 1001 } else { 1 };

        let m = merge(answers(), None, "s", &view);
        let got = listed(&m);
        let mut expect: Vec<(String, i32, i16)> = (0..12)
            .filter(|&i| has(i))
            .map(|i| (logical[i].clone(), leader(i), 0))
            .collect();
        expect.sort();
        proptest::prop_assert_eq!(got, expect);

        let names: Vec<TopicName> = asked
            .iter()
            .map(|&i| name(&format!("topic-{i}")))
            .collect();
        let m = merge(answers(), Some(&names), "s", &view);
        let mut once = HashSet::new();
        let expect: Vec<(String, i32, i16)> = asked
            .iter()
            .filter(|&&i| once.insert(i))
            .map(|&i| {
                let n = format!("topic-{i}");
                if i < 12 && has(i) {
                    (n, leader(i), 0)
                } else {
                    (n, -1, 3)
                }
            })
            .collect();
        proptest::prop_assert_eq!(listed(&m), expect);
    }
}
