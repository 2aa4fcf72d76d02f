//! Tests of the request path: routing decisions as pure functions, and whole
//! requests through [`dispatch`] with a real `Proxy` whose clusters only count
//! connections.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::context::*;
use super::fetch::fetch_errors;
use super::group_link::*;
use super::plan::*;
use super::produce::*;
use super::*;
use crate::codec::{self, RequestFrame};
use crate::proxy::Proxy;
use crate::routes::RouteTable;
use crate::switch::identity::IdentityKey;
use crate::switch::producers;

mod routing {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn routes() -> RouteTable {
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
            [routes.groups."billing"]
            cluster = "target"
            [routes.groups."^billing-.*"]
            cluster = "target"
            "#,
            Vec::<(String, String)>::new(),
            Path::new("."),
        )
        .unwrap();
        RouteTable::new(3, &c)
    }

    #[test]
    fn an_empty_assignment_is_a_valid_consumer_assignment() {
        use kafka_protocol::messages::ConsumerProtocolAssignment;
        use kafka_protocol::protocol::Decodable;
        for version in 0..=3i16 {
            let mut real = BytesMut::new();
            real.extend_from_slice(&version.to_be_bytes());
            real.extend_from_slice(&[0, 0, 0, 9]);
            let empty = empty_assignment(&real.freeze());
            let mut b = empty.slice(2..);
            let a = ConsumerProtocolAssignment::decode(&mut b, version).unwrap();
            assert!(a.assigned_partitions.is_empty());
            assert!(a.user_data.is_none());
            assert_eq!(&empty[..2], &version.to_be_bytes());
        }
        assert_eq!(&empty_assignment(&Bytes::new())[..2], &[0, 0]);
    }

    #[test]
    fn reads_follow_the_group_then_the_topic() {
        let r = routes();
        let g = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Ctx::read_cluster(&r, &g(&["billing"]), "orders"), "target");
        assert_eq!(Ctx::read_cluster(&r, &g(&[]), "orders"), "source");
        assert_eq!(Ctx::read_cluster(&r, &g(&["other"]), "orders"), "source");
        // Several groups routed alike still decide; disagreeing ones fall back to
        // the topic's consume route.
        assert_eq!(
            Ctx::read_cluster(&r, &g(&["billing", "billing-eu"]), "orders"),
            "target"
        );
        assert_eq!(
            Ctx::read_cluster(&r, &g(&["billing", "other"]), "orders"),
            "source"
        );
    }

    #[test]
    fn refused_partitions_are_merged_into_produce_responses() {
        let mut plan = Plan::default();
        plan.renames
            .insert(topic_name("source.orders"), topic_name("orders"));
        plan.refused.push(Refused {
            topic: topic_name("payments"),
            partitions: vec![0, 2],
        });
        let upstream =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(topic_name("source.orders"))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(1)
                    .with_base_offset(41)])]);
        let frame = codec::encode_response(ApiKey::Produce, 8, 5, &upstream).unwrap();
        let out = rewrite_produce_response(frame, 8, &plan).unwrap();
        let (h, resp) = codec::decode_response::<ProduceResponse>(ApiKey::Produce, 8, out).unwrap();
        assert_eq!(h.correlation_id, 5);
        assert_eq!(resp.responses[0].name.as_str(), "orders");
        assert_eq!(resp.responses[0].partition_responses[0].base_offset, 41);
        assert_eq!(resp.responses[1].name.as_str(), "payments");
        let errs: Vec<_> = resp.responses[1]
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code))
            .collect();
        assert_eq!(errs, vec![(0, 6), (2, 6)]);
    }

    #[test]
    fn fetch_sessions_cannot_leak_partitions_routed_elsewhere() {
        let r = Arc::new(routes());
        let mut plan = Plan {
            not_here: Some(not_here(&r, vec!["billing".into()], "source")),
            ..Plan::default()
        };
        plan.refused.clear();
        let upstream =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(topic_name("orders"))
                .with_partitions(vec![PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(10)
                    .with_records(Some(Bytes::from_static(b"data")))])]);
        let mut out = upstream;
        assert!(fetch_errors(&plan, &mut out));
        let p = &out.responses[0].partitions[0];
        assert_eq!(p.error_code, NOT_LEADER_OR_FOLLOWER);
        assert_eq!(p.records.as_deref(), Some(&b""[..]));
    }
}

/// The request path in process: a real `Proxy` whose clusters point at a loopback
/// listener that only counts connections, so a test proves nothing went upstream.
mod request_path {
    use super::*;
    use crate::config::Config;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{GroupId, RequestHeader};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Harness {
        proxy: Arc<Proxy>,
        upstream_connections: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    async fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream_connections = Arc::new(AtomicUsize::new(0));
        let count = upstream_connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(sock);
            }
        });
        let toml = format!(
            r#"
            [proxy]
            state_dir = "{}"
            [clusters.source]
            bootstrap = ["{addr}"]
            [clusters.target]
            bootstrap = ["{addr}"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            "#,
            dir.path().join("state").display()
        );
        let config = Config::from_toml(&toml, Vec::<(String, String)>::new(), dir.path()).unwrap();
        Harness {
            proxy: Proxy::new(config, None).unwrap(),
            upstream_connections,
            _dir: dir,
        }
    }

    fn request<T: kafka_protocol::protocol::Encodable>(
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> RequestFrame {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("consumer-billing-1")));
        codec::parse_request(codec::encode_request(api, &header, body).unwrap()).unwrap()
    }

    /// Routes `frame` on a connection to `cluster`, as the connection does.
    async fn route_on(h: &Harness, cluster: &str, frame: &RequestFrame) -> Option<Action> {
        let view = h.proxy.cluster(cluster).unwrap().clone();
        let map = h.proxy.virtual_map(&view);
        let mut session = Session::new("10.0.0.9".parse().unwrap(), None);
        let mut ctx = Ctx {
            shared: &*h.proxy,
            routes: h.proxy.routes(),
            cluster: &view,
            map: &map,
            session: &mut session,
        };
        Some(dispatch(&mut ctx, frame).await.unwrap())
    }

    fn client_key() -> IdentityKey {
        IdentityKey::new(None, "consumer-billing-1", "10.0.0.9".parse().unwrap())
    }

    fn linked(h: &Harness) -> Vec<String> {
        h.proxy
            .identities
            .get(&client_key())
            .map(|i| i.groups.into_iter().collect())
            .unwrap_or_default()
    }

    fn answer<T: kafka_protocol::protocol::Encodable>(
        action: &Action,
        frame: &RequestFrame,
        h: &Harness,
        body: &T,
    ) -> Bytes {
        let Action::Forward {
            response: Some(fwd),
            ..
        } = action
        else {
            panic!("not forwarded: {action:?}");
        };
        let view = h.proxy.cluster("source").unwrap();
        let up = codec::encode_response(fwd.upstream_api, fwd.upstream_version, 7, body).unwrap();
        crate::handlers::rewrite_response(
            fwd,
            frame.api,
            frame.version(),
            up,
            &h.proxy.virtual_map(view),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn groups_are_linked_only_when_the_broker_accepts() {
        let h = harness().await;
        let sync = request(
            ApiKey::SyncGroup,
            3,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_member_id(StrBytes::from_static_str("m-1"))
                .with_generation_id(1),
        );
        let action = route_on(&h, "source", &sync).await.unwrap();
        assert!(linked(&h).is_empty(), "the request alone links nothing");
        let refused =
            SyncGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code());
        answer(&action, &sync, &h, &refused);
        assert!(linked(&h).is_empty(), "a refused SyncGroup links nothing");

        let action = route_on(&h, "source", &sync).await.unwrap();
        let out = answer(&action, &sync, &h, &SyncGroupResponse::default());
        assert_eq!(linked(&h), ["billing"]);
        // The client gets the upstream's answer as it was.
        let (_, resp) =
            codec::decode_response::<SyncGroupResponse>(ApiKey::SyncGroup, 3, out).unwrap();
        assert_eq!(resp.error_code, 0);
        assert_eq!(h.upstream_connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn offset_commits_link_only_with_a_committed_partition() {
        let h = harness().await;
        let commit = request(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_generation_id_or_member_epoch(-1),
        );
        let partition = |code: i16| {
            OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default()
                .with_name(topic_name("orders"))
                .with_partitions(vec![OffsetCommitResponsePartition::default()
                    .with_partition_index(0)
                    .with_error_code(code)])])
        };
        let action = route_on(&h, "source", &commit).await.unwrap();
        answer(
            &action,
            &commit,
            &h,
            &partition(ResponseError::GroupAuthorizationFailed.code()),
        );
        assert!(linked(&h).is_empty());
        let action = route_on(&h, "source", &commit).await.unwrap();
        answer(&action, &commit, &h, &partition(0));
        assert_eq!(linked(&h), ["billing"]);
    }

    #[tokio::test]
    async fn heartbeats_refresh_links_but_never_create_them() {
        let h = harness().await;
        let beat = request(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("billing")))
                .with_member_id(StrBytes::from_static_str("m-1")),
        );
        let action = route_on(&h, "source", &beat).await.unwrap();
        answer(&action, &beat, &h, &HeartbeatResponse::default());
        assert!(linked(&h).is_empty());
    }

    fn produce_with_producer_id(vpid: i64) -> RequestFrame {
        let hex: String = include_str!("../switch/testdata/java_batch.hex")
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        let mut batch: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        producers::patch_batch(&mut batch, vpid, 0, 0);
        request(
            ApiKey::Produce,
            8,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name("payments"))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch)))])]),
        )
    }

    #[tokio::test]
    async fn a_forged_producer_id_is_refused_without_going_upstream() {
        let h = harness().await;
        let target = h.proxy.cluster_index("target");
        // An id "issued by target" that target never issued, written on source.
        let forged = producers::to_virtual(4242, target);
        let frame = produce_with_producer_id(forged);
        let Some(Action::Respond(out)) = route_on(&h, "source", &frame).await else {
            panic!("the proxy must answer itself");
        };
        let (_, resp) = codec::decode_response::<ProduceResponse>(ApiKey::Produce, 8, out).unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(resp.responses[0].name.as_str(), "payments");
        assert_eq!(
            ResponseError::try_from_code(p.error_code),
            Some(ResponseError::UnknownProducerId)
        );
        assert!(h.proxy.producers.is_empty(), "no entry for a forged id");
        // Give a stray connection attempt time to land before checking.
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(h.upstream_connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn issued_ids_are_the_ones_that_may_write_abroad() {
        let h = harness().await;
        let init = request(
            ApiKey::InitProducerId,
            2,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        let action = route_on(&h, "target", &init).await.unwrap();
        // A refused InitProducerId issues nothing.
        answer(
            &action,
            &init,
            &h,
            &InitProducerIdResponse::default()
                .with_error_code(ResponseError::CoordinatorLoadInProgress.code())
                .with_producer_id(ProducerId(-1)),
        );
        assert!(h.proxy.producers.is_empty());
        let out = answer(
            &action,
            &init,
            &h,
            &InitProducerIdResponse::default().with_producer_id(ProducerId(4242)),
        );
        let (_, resp) =
            codec::decode_response::<InitProducerIdResponse>(ApiKey::InitProducerId, 2, out)
                .unwrap();
        let vpid = resp.producer_id.0;
        assert_eq!(
            producers::from_virtual(vpid),
            (h.proxy.cluster_index("target"), 4242)
        );
        assert!(h.proxy.producers.knows(vpid));
    }
}
