//! One consistent cluster for every client, tested in the middle: the proxy runs in
//! this process (`tests/inproc`) in front of two scripted brokers
//! (`tests/scripted`) that answer as a Kafka-compatible broker may, not only as
//! Apache Kafka does: Metadata with every topic whatever was asked, a fresh broker
//! that is not ready to issue producer ids. A raw-protocol client checks what it
//! gets back, and the scripted brokers what reached each cluster.

mod harness;
mod inproc;
mod scripted;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use inproc::{Client, InProcess};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, InitProducerIdRequest, InitProducerIdResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use scripted::{Reply, Script, ScriptedBroker};

/// Requests a scripted broker received: (api key, version, body).
type Seen = Arc<Mutex<Vec<(i16, i16, Bytes)>>>;

fn encode<T: Encodable>(body: &T, version: i16) -> Bytes {
    let mut b = BytesMut::new();
    body.encode(&mut b, version).unwrap();
    b.freeze()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// What a broker does beyond its defaults, by api; `None` keeps the default.
type Extra = dyn Fn(ApiKey, i16, &Bytes) -> Option<Reply> + Send + Sync;

/// A broker that answers every Metadata request with all its topics, whatever was
/// asked (as some Kafka-compatible brokers answer an empty list), and admin
/// requests with success for every entry; it records what it received.
fn loose_broker(topics: &[&str], seen: Seen, extra: Arc<Extra>) -> ScriptedBroker {
    let script: Arc<Script> = Arc::new(move |h: &RequestHeader, body: &Bytes| {
        let api = ApiKey::try_from(h.request_api_key).unwrap();
        let v = h.request_api_version;
        seen.lock()
            .unwrap()
            .push((h.request_api_key, v, body.clone()));
        if let Some(reply) = extra(api, v, body) {
            return reply;
        }
        match api {
            // Version 0 has no null list; its empty list is all topics.
            ApiKey::Metadata => Reply::DefaultFor(encode(
                &MetadataRequest::default().with_topics((v == 0).then(Vec::new)),
                v,
            )),
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body.clone(), v).unwrap();
                let resp = CreateTopicsResponse::default().with_topics(
                    req.topics
                        .iter()
                        .map(|t| CreatableTopicResult::default().with_name(t.name.clone()))
                        .collect(),
                );
                Reply::Body(encode(&resp, v))
            }
            ApiKey::DeleteTopics => {
                let req = DeleteTopicsRequest::decode(&mut body.clone(), v).unwrap();
                let resp = DeleteTopicsResponse::default().with_responses(
                    req.topic_names
                        .iter()
                        .map(|t| DeletableTopicResult::default().with_name(Some(t.clone())))
                        .collect(),
                );
                Reply::Body(encode(&resp, v))
            }
            ApiKey::DescribeConfigs => {
                let req = DescribeConfigsRequest::decode(&mut body.clone(), v).unwrap();
                let resp = DescribeConfigsResponse::default().with_results(
                    req.resources
                        .iter()
                        .map(|r| {
                            DescribeConfigsResult::default()
                                .with_resource_type(r.resource_type)
                                .with_resource_name(r.resource_name.clone())
                        })
                        .collect(),
                );
                Reply::Body(encode(&resp, v))
            }
            ApiKey::InitProducerId => Reply::Body(encode(
                &InitProducerIdResponse::default().with_producer_id(ProducerId(5)),
                v,
            )),
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body.clone(), v).unwrap();
                let resp = ProduceResponse::default().with_responses(
                    req.topic_data
                        .iter()
                        .map(|t| {
                            TopicProduceResponse::default()
                                .with_name(t.name.clone())
                                .with_partition_responses(
                                    t.partition_data
                                        .iter()
                                        .map(|p| {
                                            PartitionProduceResponse::default().with_index(p.index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                Reply::Body(encode(&resp, v))
            }
            _ => Reply::Default,
        }
    });
    ScriptedBroker::start(0, topics, script)
}

fn no_extra() -> Arc<Extra> {
    Arc::new(|_, _, _| None)
}

const ROUTES: &str = "[routes]\ndefault_cluster = \"source\"\n\n\
    [routes.topics.\"moved\"]\nproduce = \"target\"\nconsume = \"target\"\n\n\
    [routes.topics.\"renamed\"]\nproduce = \"target\"\nconsume = \"target\"\n\
    rename = { target = \"mirror.renamed\" }\n\n\
    [routes.topics.\"^new-t-.*$\"]\nproduce = \"target\"\nconsume = \"target\"\n";

/// The source has `both`, `only-s` and `renamed`; the target `both`, `moved`,
/// `only-t`, `mirror.renamed` (the target's name of `renamed`) and a topic
/// literally named `renamed` that is not the one clients mean.
struct Setup {
    source_seen: Seen,
    target_seen: Seen,
    proxy: InProcess,
    _source: ScriptedBroker,
    _target: ScriptedBroker,
}

fn setup(name: &str, target_extra: Arc<Extra>) -> Setup {
    let (source_seen, target_seen) = (Seen::default(), Seen::default());
    let source = loose_broker(
        &["both", "only-s", "renamed"],
        source_seen.clone(),
        no_extra(),
    );
    let target = loose_broker(
        &["both", "moved", "only-t", "mirror.renamed", "renamed"],
        target_seen.clone(),
        target_extra,
    );
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n\
         [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = 1000\n\n{ROUTES}",
        source.bootstrap(),
        target.bootstrap()
    );
    let proxy = InProcess::start(name, &toml, &[0, 1000]);
    Setup {
        source_seen,
        target_seen,
        proxy,
        _source: source,
        _target: target,
    }
}

/// (topic, leader) of every topic in a Metadata answer.
fn listed(m: &MetadataResponse) -> Vec<(String, i32, i16)> {
    m.topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                t.partitions.first().map(|p| p.leader_id.0).unwrap_or(-1),
                t.error_code,
            )
        })
        .collect()
}

fn metadata(client: &mut Client, version: i16, topics: Option<&[&str]>) -> MetadataResponse {
    let req = MetadataRequest::default().with_topics(topics.map(|ts| {
        ts.iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
            .collect()
    }));
    client.call(ApiKey::Metadata, version, &req)
}

#[test]
fn every_topic_is_listed_once_from_the_cluster_its_route_names() {
    let s = setup("merged-metadata", no_extra());
    let mut client = Client::connect(&s.proxy.bootstrap);

    // A topic on both clusters, routed to the source: once, led by the source.
    let m = metadata(&mut client, 9, Some(&["both"]));
    assert_eq!(listed(&m), vec![("both".into(), 0, 0)]);
    // An empty list asks for no topics (version 1 and later), even when the
    // brokers answer every topic to it.
    let m = metadata(&mut client, 9, Some(&[]));
    assert_eq!(listed(&m), vec![]);
    // Named, renamed and unknown topics, in the order asked.
    let m = metadata(
        &mut client,
        4,
        Some(&["renamed", "moved", "only-t", "both"]),
    );
    assert_eq!(
        listed(&m),
        vec![
            ("renamed".into(), 1000, 0),
            ("moved".into(), 1000, 0),
            ("only-t".into(), -1, 3),
            ("both".into(), 0, 0),
        ]
    );
    // All topics (null list, and version 0's empty list): each logical topic once,
    // from its routed cluster; no physical name of a renamed topic; a topic only on
    // a cluster this client is not routed to for it is not listed.
    let expect: Vec<(String, i32, i16)> = vec![
        ("both".into(), 0, 0),
        ("moved".into(), 1000, 0),
        ("only-s".into(), 0, 0),
        ("renamed".into(), 1000, 0),
    ];
    let mut all = listed(&metadata(&mut client, 9, None));
    all.sort();
    assert_eq!(all, expect);
    let mut all = listed(&metadata(&mut client, 0, Some(&[])));
    all.sort();
    assert_eq!(all, expect);
    // Brokers: each cluster's once, virtual ids only.
    let m = metadata(&mut client, 9, None);
    let ids: BTreeSet<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    assert_eq!(ids, [0, 1000].into_iter().collect());
    assert_eq!(m.brokers.len(), 2);
}

/// The CreateTopics topic names (or DescribeConfigs resource names) a broker got.
fn received(seen: &Seen, api: ApiKey) -> Vec<Vec<String>> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(k, _, _)| *k == api as i16)
        .map(|(_, v, body)| match api {
            ApiKey::CreateTopics => CreateTopicsRequest::decode(&mut body.clone(), *v)
                .unwrap()
                .topics
                .iter()
                .map(|t| t.name.to_string())
                .collect(),
            ApiKey::DeleteTopics => DeleteTopicsRequest::decode(&mut body.clone(), *v)
                .unwrap()
                .topic_names
                .iter()
                .map(|t| t.to_string())
                .collect(),
            ApiKey::DescribeConfigs => DescribeConfigsRequest::decode(&mut body.clone(), *v)
                .unwrap()
                .resources
                .iter()
                .map(|r| r.resource_name.to_string())
                .collect(),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn admin_writes_reach_the_cluster_the_topic_route_names() {
    let s = setup("merged-admin", no_extra());
    // Sent where a client sends them: the controller the merged Metadata names.
    let controller = {
        let mut c = Client::connect(&s.proxy.bootstrap);
        metadata(&mut c, 9, Some(&[])).controller_id.0
    };
    assert_eq!(controller, 0, "the default cluster's controller");
    let mut client = Client::connect(&s.proxy.broker(controller));

    let create = |names: &[&str]| {
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(
                names
                    .iter()
                    .map(|n| {
                        CreatableTopic::default()
                            .with_name(name(n))
                            .with_num_partitions(3)
                            .with_replication_factor(1)
                    })
                    .collect(),
            )
    };
    let resp: CreateTopicsResponse = client.call(
        ApiKey::CreateTopics,
        5,
        &create(&["new-t-1", "new-s-1", "renamed"]),
    );
    let mut answered: Vec<(String, i16)> = resp
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.error_code))
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        vec![
            ("new-s-1".into(), 0),
            ("new-t-1".into(), 0),
            ("renamed".into(), 0)
        ]
    );
    assert_eq!(
        received(&s.target_seen, ApiKey::CreateTopics),
        vec![vec!["new-t-1".to_string(), "mirror.renamed".to_string()]]
    );
    assert_eq!(
        received(&s.source_seen, ApiKey::CreateTopics),
        vec![vec!["new-s-1".to_string()]]
    );

    // Entirely the source's: up unchanged, on the client's own connection.
    let resp: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 5, &create(&["new-s-2"]));
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(received(&s.source_seen, ApiKey::CreateTopics).len(), 2);
    assert_eq!(received(&s.target_seen, ApiKey::CreateTopics).len(), 1);

    // Deletes and config reads follow the same rule.
    let del = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topic_names(vec![name("moved"), name("both")]);
    let resp: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &del);
    let mut names: Vec<String> = resp
        .responses
        .iter()
        .map(|r| r.name.as_ref().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["both", "moved"]);
    assert_eq!(
        received(&s.target_seen, ApiKey::DeleteTopics),
        vec![vec!["moved".to_string()]]
    );
    assert_eq!(
        received(&s.source_seen, ApiKey::DeleteTopics),
        vec![vec!["both".to_string()]]
    );

    let describe = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("renamed")),
        DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(StrBytes::from_static_str("1000")),
    ]);
    let resp: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, 2, &describe);
    let mut names: Vec<String> = resp
        .results
        .iter()
        .map(|r| r.resource_name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["1000", "renamed"]);
    // One part for the topic (any broker), one for broker 1000 (its own).
    let mut parts = received(&s.target_seen, ApiKey::DescribeConfigs);
    parts.sort();
    assert_eq!(
        parts,
        vec![vec!["0".to_string()], vec!["mirror.renamed".to_string()]]
    );
}

/// One idempotent batch of `producer_id`, sequence 0.
fn batch(producer_id: i64) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 1,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce(topic: &str, producer_id: i64) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch(producer_id)))])])
}

#[test]
fn a_cluster_not_ready_for_producer_ids_gives_a_retriable_error() {
    // The target answers the proxy's own InitProducerId twice with
    // COORDINATOR_LOAD_IN_PROGRESS (a freshly started broker), then issues one.
    let refusals = Arc::new(AtomicUsize::new(0));
    let r = refusals.clone();
    let extra: Arc<Extra> = Arc::new(move |api, v, _| {
        (api == ApiKey::InitProducerId).then(|| {
            let resp = if r.fetch_add(1, Ordering::SeqCst) < 2 {
                InitProducerIdResponse::default()
                    .with_error_code(14)
                    .with_producer_id(ProducerId(-1))
            } else {
                InitProducerIdResponse::default().with_producer_id(ProducerId(77))
            };
            Reply::Body(encode(&resp, v))
        })
    });
    let s = setup("merged-pid", extra);

    // An idempotent producer gets its id at home (the source)...
    let mut home = Client::connect(&s.proxy.broker(0));
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(12_345)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let id: InitProducerIdResponse = home.call(ApiKey::InitProducerId, 2, &init);
    assert_eq!(id.error_code, 0);
    let vpid = id.producer_id.0;
    assert!(vpid > 5, "a virtual id: {vpid}");

    // ...and writes `moved`, routed to the target, which is not ready yet: a
    // retriable partition error, the connection stays, nothing reached the target.
    let mut abroad = Client::connect(&s.proxy.broker(1000));
    for _ in 0..2 {
        let resp: ProduceResponse = abroad.call(ApiKey::Produce, 7, &produce("moved", vpid));
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            (resp.responses[0].name.as_str(), p.error_code),
            ("moved", 6),
            "NOT_LEADER_OR_FOLLOWER"
        );
    }
    let produced = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| *k == ApiKey::Produce as i16)
            .count()
    };
    assert_eq!(produced(&s.target_seen), 0);
    // The retry succeeds once the target issues ids.
    let resp: ProduceResponse = abroad.call(ApiKey::Produce, 7, &produce("moved", vpid));
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(produced(&s.target_seen), 1);

    // The proxy asked the target for the transaction timeout the client asked for.
    let asked: Vec<i32> = s
        .target_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _, _)| *k == ApiKey::InitProducerId as i16)
        .map(|(_, v, b)| {
            InitProducerIdRequest::decode(&mut b.clone(), *v)
                .unwrap()
                .transaction_timeout_ms
        })
        .collect();
    assert_eq!(asked, vec![12_345; 3]);
}

/// A client may send a request and end its side of the connection at once
/// (librdkafka retires its bootstrap connections so): the proxy keeps its upstream
/// connection open until the answer is in, since a Kafka broker closes a
/// connection outright when it reads the end of stream, and the client gets its
/// answer.
#[test]
fn a_client_that_hangs_up_after_a_request_still_gets_its_answer() {
    let delay = std::time::Duration::from_millis(300);
    let extra: Arc<Extra> = Arc::new(move |api, v, _| {
        (api == ApiKey::ListGroups).then(|| {
            Reply::Later(
                delay,
                encode(&kafka_protocol::messages::ListGroupsResponse::default(), v),
            )
        })
    });
    let (source_seen, target_seen) = (Seen::default(), Seen::default());
    let source = loose_broker(&["both"], source_seen, extra);
    let target = loose_broker(&["both"], target_seen, no_extra());
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n\
         [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = 1000\n\n{ROUTES}",
        source.bootstrap(),
        target.bootstrap()
    );
    let proxy = InProcess::start("hang-up", &toml, &[0, 1000]);
    let mut client = Client::connect(&proxy.broker(0));
    let answer: Option<kafka_protocol::messages::ListGroupsResponse> = client.send_then_hang_up(
        ApiKey::ListGroups,
        3,
        &kafka_protocol::messages::ListGroupsRequest::default(),
    );
    assert!(
        answer.is_some(),
        "the answer was lost when the client ended its side"
    );
}

fn fetch(session_id: i32, epoch: i32, topics: &[&str]) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    kafka_protocol::messages::FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(10)
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    FetchTopic::default()
                        .with_topic(name(t))
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)])
                })
                .collect(),
        )
}

/// A consumer keeps an incremental fetch session (KIP-227) with the source's broker:
/// its requests name no partitions, the broker serves the session's. When the
/// topic's reads move to the target, the next incremental fetch ends the session
/// (FETCH_SESSION_ID_NOT_FOUND) instead of reaching the source, and the full fetch
/// that follows is steered.
#[test]
fn an_incremental_fetch_session_on_the_cluster_a_reader_left_is_ended() {
    use kafka_protocol::messages::FetchResponse;
    let extra: Arc<Extra> = Arc::new(|api, v, _| {
        (api == ApiKey::Fetch).then(|| {
            Reply::Body(encode(
                &kafka_protocol::messages::FetchResponse::default().with_session_id(7),
                v,
            ))
        })
    });
    let (source_seen, target_seen) = (Seen::default(), Seen::default());
    let source = loose_broker(&["both"], source_seen.clone(), extra);
    let target = loose_broker(&["both"], target_seen, no_extra());
    let clusters = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n\
         [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = 1000\n\n",
        source.bootstrap(),
        target.bootstrap()
    );
    let proxy = InProcess::start("fetch-session", &format!("{clusters}{ROUTES}"), &[0, 1000]);
    let fetches = || {
        source_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| *k == ApiKey::Fetch as i16)
            .count()
    };
    let mut client = Client::connect(&proxy.broker(0));
    let r: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(0, 0, &["both"]));
    assert_eq!((r.error_code, r.session_id), (0, 7));
    let r: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(7, 1, &[]));
    assert_eq!(r.error_code, 0);
    assert_eq!(fetches(), 2);

    let moved = format!(
        "{clusters}{ROUTES}\n[routes.topics.\"both\"]\nproduce = \"source\"\nconsume = \"target\"\n"
    );
    let (status, body) = proxy.reload(&moved);
    assert_eq!(status, 200, "{body}");

    let r: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(7, 2, &[]));
    assert_eq!(
        (r.error_code, r.session_id),
        (70, 0),
        "FETCH_SESSION_ID_NOT_FOUND"
    );
    assert_eq!(fetches(), 2, "the incremental fetch reached the source");
    let r: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(0, 0, &["both"]));
    let p = &r.responses[0].partitions[0];
    assert_eq!(
        (r.responses[0].topic.as_str(), p.error_code),
        ("both", 6),
        "NOT_LEADER_OR_FOLLOWER"
    );
    assert_eq!(fetches(), 2);
}

// ------------------------------------------------------------------ groups

use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedPartitions;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeClusterRequest,
    DescribeClusterResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
    ListGroupsRequest, ListGroupsResponse, OffsetFetchRequest, OffsetFetchResponse,
};

/// `billing` and `billing-eu` are coordinated on the target, every other group on
/// the source.
const GROUP_ROUTES: &str = "\n[routes.groups.\"billing\"]\ncluster = \"target\"\n\n\
    [routes.groups.\"billing-eu\"]\ncluster = \"target\"\n";

fn group(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

/// A consumer-protocol message as a member sends it: its version, then its body.
fn versioned<T: Encodable>(version: i16, msg: &T) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&version.to_be_bytes());
    msg.encode(&mut b, version).unwrap();
    b.freeze()
}

fn unversioned<T: Decodable>(bytes: &Bytes) -> T {
    let mut b = bytes.slice(2..);
    T::decode(&mut b, i16::from_be_bytes([bytes[0], bytes[1]])).unwrap()
}

/// A broker's groups: ListGroups lists `groups`; DescribeGroups describes each
/// group asked as a stable consumer group whose one member subscribes to `topics`
/// and owns and is assigned partition 0 of the first; OffsetFetch answers
/// `committed` (topic, offset) for all topics, offset 7 for each partition named.
fn group_broker(
    groups: &'static [&'static str],
    topics: &'static [&'static str],
    committed: &'static [(&'static str, i64)],
) -> Arc<Extra> {
    Arc::new(move |api, v, body| match api {
        ApiKey::ListGroups => {
            let resp = ListGroupsResponse::default().with_groups(
                groups
                    .iter()
                    .map(|g| {
                        ListedGroup::default()
                            .with_group_id(group(g))
                            .with_protocol_type(StrBytes::from_static_str("consumer"))
                    })
                    .collect(),
            );
            Some(Reply::Body(encode(&resp, v)))
        }
        ApiKey::DescribeGroups => {
            let req = DescribeGroupsRequest::decode(&mut body.clone(), v).unwrap();
            let subscription = ConsumerProtocolSubscription::default()
                .with_topics(
                    topics
                        .iter()
                        .map(|t| StrBytes::from_static_str(t))
                        .collect(),
                )
                .with_owned_partitions(vec![OwnedPartitions::default()
                    .with_topic(name(topics[0]))
                    .with_partitions(vec![0])]);
            let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                AssignedPartitions::default()
                    .with_topic(name(topics[0]))
                    .with_partitions(vec![0]),
            ]);
            let member = DescribedGroupMember::default()
                .with_member_id(StrBytes::from_static_str("m-1"))
                .with_member_metadata(versioned(1, &subscription))
                .with_member_assignment(versioned(1, &assignment));
            let resp = DescribeGroupsResponse::default().with_groups(
                req.groups
                    .iter()
                    .map(|g| {
                        DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_group_state(StrBytes::from_static_str("Stable"))
                            .with_protocol_type(StrBytes::from_static_str("consumer"))
                            .with_protocol_data(StrBytes::from_static_str("range"))
                            .with_members(vec![member.clone()])
                    })
                    .collect(),
            );
            Some(Reply::Body(encode(&resp, v)))
        }
        ApiKey::OffsetFetch => {
            let req = OffsetFetchRequest::decode(&mut body.clone(), v).unwrap();
            let answer =
                |asked: Option<Vec<(TopicName, Vec<i32>)>>| -> Vec<(TopicName, Vec<(i32, i64)>)> {
                    match asked {
                        None => committed
                            .iter()
                            .map(|(t, o)| (name(t), vec![(0, *o)]))
                            .collect(),
                        Some(list) => list
                            .into_iter()
                            .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, 7)).collect()))
                            .collect(),
                    }
                };
            let resp = if v >= 8 {
                OffsetFetchResponse::default().with_groups(
                    req.groups
                        .iter()
                        .map(|g| {
                            let asked = g.topics.as_ref().map(|ts| {
                                ts.iter()
                                    .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                                    .collect()
                            });
                            OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id.clone())
                                .with_topics(
                                    answer(asked)
                                        .into_iter()
                                        .map(|(t, ps)| {
                                            OffsetFetchResponseTopics::default()
                                                .with_name(t)
                                                .with_partitions(
                                                    ps.into_iter()
                                                        .map(|(p, o)| {
                                                            OffsetFetchResponsePartitions::default()
                                                                .with_partition_index(p)
                                                                .with_committed_offset(o)
                                                        })
                                                        .collect(),
                                                )
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            } else {
                let asked = req.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                        .collect()
                });
                OffsetFetchResponse::default().with_topics(
                    answer(asked)
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopic::default()
                                .with_name(t)
                                .with_partitions(
                                    ps.into_iter()
                                        .map(|(p, o)| {
                                            OffsetFetchResponsePartition::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(o)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            };
            Some(Reply::Body(encode(&resp, v)))
        }
        _ => None,
    })
}

/// Both clusters know the groups `billing` (routed to the target), `shared`
/// (routed to the source, the default) and one of their own; the source's members
/// read `both`, the target's `mirror.renamed` (the target's name of `renamed`).
/// The target has committed offsets for `mirror.renamed`, `moved` and its own
/// topic literally named `renamed`.
fn group_setup(name: &str) -> Setup {
    let (source_seen, target_seen) = (Seen::default(), Seen::default());
    let source = loose_broker(
        &["both", "only-s", "renamed"],
        source_seen.clone(),
        group_broker(
            &["billing", "shared", "only-s-group"],
            &["both"],
            &[("both", 1), ("only-s", 2)],
        ),
    );
    let target = loose_broker(
        &["both", "moved", "only-t", "mirror.renamed", "renamed"],
        target_seen.clone(),
        group_broker(
            &["billing", "shared", "only-t-group"],
            &["mirror.renamed", "both"],
            &[("mirror.renamed", 5), ("renamed", 9), ("moved", 3)],
        ),
    );
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n\
         [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = 1000\n\n{ROUTES}{GROUP_ROUTES}",
        source.bootstrap(),
        target.bootstrap()
    );
    let proxy = InProcess::start(name, &toml, &[0, 1000]);
    Setup {
        source_seen,
        target_seen,
        proxy,
        _source: source,
        _target: target,
    }
}

/// The bodies of the requests of `api` a broker received, decoded.
fn requests<T: Decodable>(seen: &Seen, api: ApiKey) -> Vec<T> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(k, _, _)| *k == api as i16)
        .map(|(_, v, body)| T::decode(&mut body.clone(), *v).unwrap())
        .collect()
}

#[test]
fn an_admin_asking_every_broker_lists_each_group_once_from_its_routed_cluster() {
    let s = group_setup("merged-list-groups");
    let mut all = Vec::new();
    for (broker, expect) in [(0, vec!["shared", "only-s-group"]), (1000, vec!["billing"])] {
        let mut client = Client::connect(&s.proxy.broker(broker));
        for version in [0, 4] {
            let resp: ListGroupsResponse =
                client.call(ApiKey::ListGroups, version, &ListGroupsRequest::default());
            let ids: Vec<String> = resp.groups.iter().map(|g| g.group_id.to_string()).collect();
            assert_eq!(ids, expect, "broker {broker} v{version}");
        }
        all.extend(expect);
    }
    // Each group once; `only-t-group` is on the target only and routed to the
    // source, so no client could use it through the proxy: not listed.
    all.sort();
    assert_eq!(all, ["billing", "only-s-group", "shared"]);
}

#[test]
fn groups_routed_elsewhere_are_not_described_by_the_cluster_asked() {
    let s = group_setup("merged-describe-groups");
    let describe = |groups: &[&str]| {
        DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| group(g)).collect())
    };
    let described = |resp: &DescribeGroupsResponse| -> Vec<(String, i16)> {
        resp.groups
            .iter()
            .map(|g| (g.group_id.to_string(), g.error_code))
            .collect()
    };

    // On the source: `billing` is the target's, answered NOT_COORDINATOR (16) by
    // the proxy in its place; the rest went up and came back in the order asked.
    let mut source = Client::connect(&s.proxy.broker(0));
    for version in [0, 5] {
        let resp: DescribeGroupsResponse = source.call(
            ApiKey::DescribeGroups,
            version,
            &describe(&["shared", "billing", "other"]),
        );
        assert_eq!(
            described(&resp),
            [
                ("shared".into(), 0),
                ("billing".into(), 16),
                ("other".into(), 0)
            ],
            "v{version}"
        );
    }
    let sent: Vec<Vec<String>> =
        requests::<DescribeGroupsRequest>(&s.source_seen, ApiKey::DescribeGroups)
            .iter()
            .map(|r| r.groups.iter().map(|g| g.to_string()).collect())
            .collect();
    assert_eq!(sent, vec![vec!["shared", "other"]; 2]);

    // On the target, where `renamed` is `mirror.renamed`: the member's subscription
    // and assignment name the logical topic.
    let mut target = Client::connect(&s.proxy.broker(1000));
    let resp: DescribeGroupsResponse =
        target.call(ApiKey::DescribeGroups, 5, &describe(&["billing"]));
    assert_eq!(described(&resp), [("billing".into(), 0)]);
    let member = &resp.groups[0].members[0];
    let sub: ConsumerProtocolSubscription = unversioned(&member.member_metadata);
    assert_eq!(
        sub.topics,
        ["renamed", "both"].map(StrBytes::from_static_str)
    );
    assert_eq!(sub.owned_partitions[0].topic.as_str(), "renamed");
    let assignment: ConsumerProtocolAssignment = unversioned(&member.member_assignment);
    assert_eq!(assignment.assigned_partitions[0].topic.as_str(), "renamed");
    assert_eq!(
        &member.member_metadata[..2],
        &[0, 1],
        "the member's version is kept"
    );

    // Only groups routed elsewhere: answered without going up.
    let resp: DescribeGroupsResponse =
        target.call(ApiKey::DescribeGroups, 5, &describe(&["shared"]));
    assert_eq!(described(&resp), [("shared".into(), 16)]);
    assert_eq!(
        requests::<DescribeGroupsRequest>(&s.target_seen, ApiKey::DescribeGroups).len(),
        1
    );
}

#[test]
fn describe_cluster_shows_the_brokers_metadata_shows() {
    let s = group_setup("merged-describe-cluster");
    let brokers = |resp: &DescribeClusterResponse| -> Vec<(i32, String, i32)> {
        let mut b: Vec<_> = resp
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, b.host.to_string(), b.port))
            .collect();
        b.sort();
        b
    };
    let req = DescribeClusterRequest::default();
    let mut client = Client::connect(&s.proxy.broker(1000));
    let m = metadata(&mut client, 9, Some(&[]));
    let mut shown: Vec<(i32, String, i32)> = m
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    shown.sort();
    assert_eq!(shown.iter().map(|b| b.0).collect::<Vec<_>>(), [0, 1000]);
    for version in [0, 1] {
        let resp: DescribeClusterResponse = client.call(ApiKey::DescribeCluster, version, &req);
        assert_eq!(resp.error_code, 0);
        assert_eq!(
            brokers(&resp),
            shown,
            "v{version}, on a connection to the target"
        );
        assert_eq!(resp.controller_id.0, m.controller_id.0);
        assert_eq!(resp.controller_id.0, 0, "the default cluster's controller");
        assert_eq!(resp.cluster_id.as_str(), "switchyard-test");
    }
    // A cluster that does not answer contributes no brokers.
    let Setup { proxy, _target, .. } = s;
    drop(_target);
    let mut client = Client::connect(&proxy.broker(0));
    let resp: DescribeClusterResponse = client.call(ApiKey::DescribeCluster, 1, &req);
    assert_eq!(resp.error_code, 0);
    assert_eq!(brokers(&resp), shown[..1]);
}

/// (topic, partition, offset) of one group's answer.
type Offsets = Vec<(String, i32, i64)>;

/// One group's offsets, sorted.
fn offsets_of(topics: Vec<(String, Vec<(i32, i64)>)>) -> Offsets {
    let mut out: Vec<_> = topics
        .into_iter()
        .flat_map(|(t, ps)| ps.into_iter().map(move |(p, o)| (t.clone(), p, o)))
        .collect();
    out.sort();
    out
}

fn group_offsets(g: &OffsetFetchResponseGroup) -> Vec<(String, i32, i64)> {
    offsets_of(
        g.topics
            .iter()
            .map(|t| {
                let ps = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.committed_offset));
                (t.name.to_string(), ps.collect())
            })
            .collect(),
    )
}

/// Every committed offset of `group` at `version` (v8 as a one-group batch).
fn all_offsets(client: &mut Client, version: i16, g: &str) -> Vec<(String, i32, i64)> {
    let req = if version >= 8 {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(group(g))
            .with_topics(None)])
    } else {
        OffsetFetchRequest::default()
            .with_group_id(group(g))
            .with_topics(None)
    };
    let resp: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, version, &req);
    if version >= 8 {
        assert_eq!(resp.groups.len(), 1);
        assert_eq!(resp.groups[0].error_code, 0);
        return group_offsets(&resp.groups[0]);
    }
    assert_eq!(resp.error_code, 0);
    offsets_of(
        resp.topics
            .iter()
            .map(|t| {
                let ps = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.committed_offset));
                (t.name.to_string(), ps.collect())
            })
            .collect(),
    )
}

#[test]
fn offsets_of_all_partitions_name_logical_topics_only() {
    let s = group_setup("merged-offset-fetch");
    // The target, where `renamed` is `mirror.renamed`: the renamed topic under its
    // logical name, once; its physical name never; the target's own `renamed`
    // hidden behind it, as Metadata hides it.
    let mut target = Client::connect(&s.proxy.broker(1000));
    let expect = vec![("moved".to_string(), 0, 3), ("renamed".to_string(), 0, 5)];
    for version in 2..=8 {
        assert_eq!(
            all_offsets(&mut target, version, "billing"),
            expect,
            "v{version}"
        );
    }
    // The source has no renames: its answer as it is.
    let mut source = Client::connect(&s.proxy.broker(0));
    for version in [2, 7, 8] {
        assert_eq!(
            all_offsets(&mut source, version, "shared"),
            [("both".to_string(), 0, 1), ("only-s".to_string(), 0, 2)],
            "v{version}"
        );
    }

    // Several groups at once (v8): each group's own answer, the proxy's
    // NOT_COORDINATOR for a group coordinated elsewhere, in the order asked.
    let batch = |groups: &[(&str, Option<&str>)]| {
        OffsetFetchRequest::default()
            .with_require_stable(true)
            .with_groups(
                groups
                    .iter()
                    .map(|(g, t)| {
                        OffsetFetchRequestGroup::default()
                            .with_group_id(group(g))
                            .with_topics(t.map(|t| {
                                vec![OffsetFetchRequestTopics::default()
                                    .with_name(name(t))
                                    .with_partition_indexes(vec![0])]
                            }))
                    })
                    .collect(),
            )
    };
    let resp: OffsetFetchResponse = target.call(
        ApiKey::OffsetFetch,
        8,
        &batch(&[
            ("billing", None),
            ("shared", None),
            ("billing-eu", Some("renamed")),
        ]),
    );
    let got: Vec<(String, i16, Offsets)> = resp
        .groups
        .iter()
        .map(|g| (g.group_id.to_string(), g.error_code, group_offsets(g)))
        .collect();
    assert_eq!(
        got,
        [
            ("billing".to_string(), 0, expect.clone()),
            ("shared".to_string(), 16, vec![]),
            (
                "billing-eu".to_string(),
                0,
                vec![("renamed".to_string(), 0, 7)]
            ),
        ]
    );
    // The target was asked for its own groups only, under its own topic names.
    let sent = requests::<OffsetFetchRequest>(&s.target_seen, ApiKey::OffsetFetch);
    let last = sent.last().unwrap();
    assert!(last.require_stable);
    let asked: Vec<(String, Option<Vec<String>>)> = last
        .groups
        .iter()
        .map(|g| {
            let topics = g
                .topics
                .as_ref()
                .map(|ts| ts.iter().map(|t| t.name.to_string()).collect());
            (g.group_id.to_string(), topics)
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("billing".to_string(), None),
            (
                "billing-eu".to_string(),
                Some(vec!["mirror.renamed".to_string()])
            ),
        ]
    );
    // None of the groups here: answered without going up.
    let before = sent.len();
    let resp: OffsetFetchResponse = target.call(
        ApiKey::OffsetFetch,
        8,
        &batch(&[("shared", None), ("other", None)]),
    );
    let codes: Vec<i16> = resp.groups.iter().map(|g| g.error_code).collect();
    assert_eq!(codes, [16, 16]);
    assert_eq!(
        requests::<OffsetFetchRequest>(&s.target_seen, ApiKey::OffsetFetch).len(),
        before
    );
}

/// One cluster runs the same request path as many: the test drives each API family
/// through a one-cluster proxy and checks what the broker received and what the
/// client got. Records and producer ids go up as the client sent them (nothing is
/// routed elsewhere, so there are no virtual producer ids), leader epochs are
/// cleared on the way up, and broker ids come back as virtual brokers.
#[test]
fn one_cluster_runs_the_same_path_with_nothing_elsewhere() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{
        FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    };
    let seen = Seen::default();
    let broker = loose_broker(&["orders"], seen.clone(), no_extra());
    let toml = format!(
        "[clusters.only]\nbootstrap = [\"{}\"]\nnode_id_offset = 100\n\n[routes]\ndefault_cluster = \"only\"\n",
        broker.bootstrap()
    );
    let proxy = InProcess::start("one-cluster", &toml, &[100]);
    let mut client = Client::connect(&proxy.broker(100));
    let last = |api: ApiKey| -> (i16, Bytes) {
        let s = seen.lock().unwrap();
        let (_, v, b) = s.iter().rev().find(|(k, _, _)| *k == api as i16).unwrap();
        (*v, b.clone())
    };

    // Metadata: forwarded, brokers virtual.
    let m = metadata(&mut client, 9, Some(&["orders"]));
    assert_eq!(listed(&m).len(), 1, "{m:?}");
    assert!(
        m.brokers.iter().all(|b| b.node_id.0 == 100),
        "{:?}",
        m.brokers
    );
    assert!(m
        .topics
        .iter()
        .all(|t| t.partitions.iter().all(|p| p.leader_id.0 == 100)));

    // InitProducerId: the broker's own id, not a virtual one.
    let ip: InitProducerIdResponse = client.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(ip.producer_id, ProducerId(5));

    // Produce: the records reach the broker byte for byte.
    let sent = produce("orders", 5);
    let _: ProduceResponse = client.call(ApiKey::Produce, 9, &sent);
    let (v, body) = last(ApiKey::Produce);
    let up = ProduceRequest::decode(&mut body.clone(), v).unwrap();
    assert_eq!(
        up.topic_data[0].partition_data[0].records,
        sent.topic_data[0].partition_data[0].records
    );

    // Fetch and ListOffsets: the client's leader epochs go up as -1.
    let mut f: FetchRequest = fetch(0, -1, &["orders"]);
    f.topics[0].partitions[0].current_leader_epoch = 7;
    f.topics[0].partitions[0].last_fetched_epoch = 6;
    let _: FetchResponse = client.call(ApiKey::Fetch, 12, &f);
    let (v, body) = last(ApiKey::Fetch);
    let up = FetchRequest::decode(&mut body.clone(), v).unwrap();
    let p = &up.topics[0].partitions[0];
    assert_eq!((p.current_leader_epoch, p.last_fetched_epoch), (-1, -1));

    let lo = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name("orders"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_current_leader_epoch(9)
                .with_timestamp(-1)])]);
    let answer: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 7, &lo);
    let (v, body) = last(ApiKey::ListOffsets);
    let up = ListOffsetsRequest::decode(&mut body.clone(), v).unwrap();
    assert_eq!(up.topics[0].partitions[0].current_leader_epoch, -1);
    assert!(answer.topics[0]
        .partitions
        .iter()
        .all(|p| p.leader_epoch == -1));
}
