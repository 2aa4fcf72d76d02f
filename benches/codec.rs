//! Micro-benchmarks of the per-request work the proxy adds: header parsing and the
//! Metadata rewrite. Run with `cargo bench --bench codec`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, MetadataResponse, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use switchyard::codec;
use switchyard::handlers::{metadata, VirtualMap};

fn metadata_response() -> MetadataResponse {
    let brokers = (1..=3)
        .map(|i| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(i))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9092)
        })
        .collect();
    let topics = (0..50)
        .map(|t| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(format!("topic-{t}")))))
                .with_partitions(
                    (0..12)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(p % 3 + 1))
                                .with_leader_epoch(7)
                                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                                .with_isr_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                        })
                        .collect(),
                )
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics)
}

fn benches(c: &mut Criterion) {
    let map = VirtualMap {
        node_id_offset: 1000,
        advertised_host: "proxy".into(),
        broker_port_base: 9100,
        cluster_id: "switchyard".into(),
    };
    let frame = codec::encode_response(ApiKey::Metadata, 9, 1, &metadata_response()).unwrap();
    c.bench_function("metadata rewrite, 50 topics x 12 partitions", |b| {
        b.iter(|| metadata::rewrite_metadata_frame(frame.clone(), 9, &map).unwrap())
    });
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("producer-1")));
    let produce = codec::encode_request(
        ApiKey::Produce,
        &header,
        &ProduceRequest::default().with_acks(-1),
    )
    .unwrap();
    let mut with_records = produce.to_vec();
    with_records.extend(std::iter::repeat_n(0u8, 16 * 1024));
    let produce = Bytes::from(with_records);
    c.bench_function("request header parse + acks peek (16 KiB produce)", |b| {
        b.iter(|| {
            let f = codec::parse_request(produce.clone()).unwrap();
            codec::produce_acks(&f)
        })
    });
}

criterion_group!(codec_benches, benches);
criterion_main!(codec_benches);
