//! A scripted Kafka broker for tests that need an upstream whose every answer the
//! test decides: hostile responses, answers Apache Kafka would not give, exact
//! counts of the connections the proxy opens. It speaks just enough of the protocol
//! for the proxy's discovery (ApiVersions, Metadata) and answers everything else
//! with a default response of the request's type, unless the test's script says
//! otherwise. Runs on its own thread with its own runtime, on loopback only.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the broker does with one request.
pub enum Reply {
    /// The default answer (see the module doc).
    Default,
    /// The default answer to this request body instead of the one received: e.g.
    /// an all-topics Metadata answer to a request that named topics, as some
    /// Kafka-compatible brokers give.
    DefaultFor(Bytes),
    /// This response body, after a response header the broker writes.
    Body(Bytes),
    /// These bytes as the whole frame after the length prefix (header included).
    Raw(Bytes),
    /// Close the connection without answering.
    Close,
    /// Never answer (the connection stays open).
    Ignore,
    /// This response body, after the delay. Like Apache Kafka, the broker closes
    /// the connection as soon as it reads the client's end of stream, with any
    /// answer still waiting unsent.
    Later(std::time::Duration, Bytes),
}

/// Decides the answer to one request: (header, body bytes) → reply.
pub type Script = dyn Fn(&RequestHeader, &Bytes) -> Reply + Send + Sync;

pub struct ScriptedBroker {
    pub addr: SocketAddr,
    pub node_id: i32,
    /// Connections accepted so far, and open now.
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    /// Requests received, by api key, in order.
    pub requests: Arc<Mutex<Vec<i16>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The versions the scripted broker claims: those of Apache Kafka 3.x for the APIs a
/// client uses, so the proxy's intersection is that of a real broker.
const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 0, 12),
    (ApiKey::ListOffsets, 0, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 0, 8),
    (ApiKey::OffsetFetch, 0, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::DescribeCluster, 0, 1),
];

impl ScriptedBroker {
    /// Starts a broker with node id `node_id` on a free loopback port; `topics` are
    /// the topics it has (one partition each, led by itself).
    pub fn start(node_id: i32, topics: &[&str], script: Arc<Script>) -> ScriptedBroker {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let topics: Arc<Vec<String>> = Arc::new(topics.iter().map(|t| t.to_string()).collect());
        let (acc, op, reqs) = (accepted.clone(), open.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (socket, _) = tokio::select! {
                        _ = &mut stop_rx => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    };
                    acc.fetch_add(1, Ordering::SeqCst);
                    op.fetch_add(1, Ordering::SeqCst);
                    let (op, reqs, script, topics) =
                        (op.clone(), reqs.clone(), script.clone(), topics.clone());
                    tokio::spawn(async move {
                        let _ = serve(socket, addr, node_id, &topics, &*script, &reqs).await;
                        op.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
        });
        ScriptedBroker {
            addr,
            node_id,
            accepted,
            open,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A broker that answers every request with its default.
    pub fn plain(node_id: i32, topics: &[&str]) -> ScriptedBroker {
        Self::start(node_id, topics, Arc::new(|_, _| Reply::Default))
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn count(&self, api: ApiKey) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|&&k| k == api as i16)
            .count()
    }
}

impl Drop for ScriptedBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    addr: SocketAddr,
    node_id: i32,
    topics: &[String],
    script: &Script,
    requests: &Mutex<Vec<i16>>,
) -> std::io::Result<()> {
    let (mut read, mut write) = socket.into_split();
    // Answers go out in order, each when it is due, from a writer task; reading
    // the client's end of stream ends both (the writer is aborted, answers still
    // due are never sent), as a Kafka broker does.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
    let writer = tokio::spawn(async move {
        while let Some((due, framed)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if write.write_all(&framed).await.is_err() {
                return;
            }
        }
    });
    let mut writer = AbortOnDrop(writer);
    let mut buf = BytesMut::new();
    loop {
        while buf.len() >= 4 {
            let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4);
            let frame = buf.split_to(len).freeze();
            let mut cursor = frame.clone();
            let key = i16::from_be_bytes([frame[0], frame[1]]);
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let Ok(api) = ApiKey::try_from(key) else {
                return Ok(());
            };
            let header = RequestHeader::decode(&mut cursor, api.request_header_version(version))
                .map_err(std::io::Error::other)?;
            requests.lock().unwrap().push(key);
            let body = cursor;
            let mut due = tokio::time::Instant::now();
            let reply = match script(&header, &body) {
                Reply::Default => {
                    Reply::Body(default_answer(api, version, &body, addr, node_id, topics))
                }
                Reply::DefaultFor(instead) => Reply::Body(default_answer(
                    api, version, &instead, addr, node_id, topics,
                )),
                Reply::Later(delay, b) => {
                    due += delay;
                    Reply::Body(b)
                }
                r => r,
            };
            let out = match reply {
                Reply::Close => {
                    // What was answered before goes out first.
                    drop(tx);
                    let _ = (&mut writer.0).await;
                    return Ok(());
                }
                Reply::Ignore => continue,
                Reply::Raw(b) => b,
                Reply::Body(b) => {
                    let mut out = BytesMut::new();
                    ResponseHeader::default()
                        .with_correlation_id(header.correlation_id)
                        .encode(&mut out, api.response_header_version(version))
                        .unwrap();
                    out.put_slice(&b);
                    out.freeze()
                }
                Reply::Default | Reply::DefaultFor(_) | Reply::Later(..) => unreachable!(),
            };
            let mut framed = BytesMut::with_capacity(4 + out.len());
            framed.put_i32(out.len() as i32);
            framed.put_slice(&out);
            if tx.send((due, framed.freeze())).is_err() {
                return Ok(());
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn encode<T: Encodable>(body: &T, version: i16) -> Bytes {
    let mut b = BytesMut::new();
    body.encode(&mut b, version).unwrap();
    b.freeze()
}

/// The answer Apache Kafka would give, reduced to what tests need.
pub fn default_answer(
    api: ApiKey,
    version: i16,
    body: &Bytes,
    addr: SocketAddr,
    node_id: i32,
    topics: &[String],
) -> Bytes {
    match api {
        ApiKey::ApiVersions => {
            let keys = VERSIONS
                .iter()
                .map(|(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect();
            encode(&ApiVersionsResponse::default().with_api_keys(keys), version)
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut body.clone(), version).unwrap_or_default();
            let asked: Vec<String> = match req.topics {
                None => topics.to_vec(),
                Some(t) if t.is_empty() && version == 0 => topics.to_vec(),
                Some(t) => t
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
                    .collect(),
            };
            let broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(node_id))
                .with_host(StrBytes::from_string(addr.ip().to_string()))
                .with_port(addr.port() as i32);
            let topics = asked
                .iter()
                .map(|name| {
                    let known = topics.contains(name);
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_error_code(if known { 0 } else { 3 })
                        .with_partitions(if known {
                            vec![MetadataResponsePartition::default()
                                .with_partition_index(0)
                                .with_leader_id(BrokerId(node_id))
                                .with_replica_nodes(vec![BrokerId(node_id)])
                                .with_isr_nodes(vec![BrokerId(node_id)])]
                        } else {
                            vec![]
                        })
                })
                .collect();
            encode(
                &MetadataResponse::default()
                    .with_brokers(vec![broker])
                    .with_cluster_id(Some(StrBytes::from_static_str("scripted")))
                    .with_controller_id(BrokerId(node_id))
                    .with_topics(topics),
                version,
            )
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(&mut body.clone(), version).unwrap_or_default();
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_offset(42)
                                })
                                .collect(),
                        )
                })
                .collect();
            encode(&ListOffsetsResponse::default().with_topics(topics), version)
        }
        _ => default_response(api, version),
    }
}

/// A default-constructed response of `api` at `version`.
pub fn default_response(api: ApiKey, version: i16) -> Bytes {
    use kafka_protocol::messages::ResponseKind;
    let kind = match api {
        ApiKey::Produce => ResponseKind::Produce(Default::default()),
        ApiKey::Fetch => ResponseKind::Fetch(Default::default()),
        ApiKey::OffsetCommit => ResponseKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => ResponseKind::OffsetFetch(Default::default()),
        ApiKey::FindCoordinator => ResponseKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => ResponseKind::JoinGroup(Default::default()),
        ApiKey::Heartbeat => ResponseKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => ResponseKind::LeaveGroup(Default::default()),
        ApiKey::SyncGroup => ResponseKind::SyncGroup(Default::default()),
        ApiKey::DescribeGroups => ResponseKind::DescribeGroups(Default::default()),
        ApiKey::ListGroups => ResponseKind::ListGroups(Default::default()),
        ApiKey::CreateTopics => ResponseKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(Default::default()),
        ApiKey::InitProducerId => ResponseKind::InitProducerId(Default::default()),
        ApiKey::OffsetForLeaderEpoch => ResponseKind::OffsetForLeaderEpoch(Default::default()),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(Default::default()),
        ApiKey::DescribeCluster => ResponseKind::DescribeCluster(Default::default()),
        other => panic!("scripted broker has no default answer for {other:?}"),
    };
    let mut b = BytesMut::new();
    kind.encode(&mut b, version).unwrap();
    b.freeze()
}
