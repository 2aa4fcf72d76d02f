//! Micro-benchmarks of the per-request work the proxy adds: header parsing, the
//! Metadata rewrite, and the producer-id rewrite of a record batch (header fields
//! and CRC-32C). Run with `cargo bench --bench codec`.

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
        sni_pattern: None,
        listener_port: 9092,
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

fn batch_rewrite(c: &mut Criterion) {
    use switchyard::switch::producers::{self, BatchHeader, Producers};
    // A 16 KiB batch as the Java client sends them at batch.size defaults.
    let mut batch = vec![0u8; 16 * 1024];
    batch[8..12].copy_from_slice(&(16 * 1024 - 12i32).to_be_bytes());
    batch[16] = 2;
    let mut group = c.benchmark_group("producer id rewrite");
    group.throughput(criterion::Throughput::Bytes(batch.len() as u64));
    group.bench_function("patch header + CRC-32C, 16 KiB batch", |b| {
        b.iter(|| producers::patch_batch(&mut batch, 42, 1, 1000))
    });
    let p = Producers::default();
    let vpid = producers::to_virtual(7, 0);
    p.set_foreign(vpid, 1, 99, 0, 0);
    let mut seq = 0;
    group.bench_function("sequence plan for one batch", |b| {
        b.iter(|| {
            seq = (seq + 10) % 1_000_000;
            let h = BatchHeader {
                at: 0,
                len: 0,
                producer_id: vpid,
                epoch: 0,
                base_sequence: seq,
                count: 10,
                transactional: false,
            };
            p.plan(&h, "orders", 3, 1).unwrap()
        })
    });
    group.finish();
}

criterion_group!(codec_benches, benches, batch_rewrite);
criterion_main!(codec_benches);
