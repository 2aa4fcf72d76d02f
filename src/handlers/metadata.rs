//! Metadata and DescribeCluster: the responses that tell clients where brokers are.
//! Every broker id becomes a virtual id, every address the proxy's advertised
//! address for that virtual broker, the cluster id the configured one, and every
//! leader epoch -1 (PROTOCOL.md §1: an epoch learned from one cluster must never be
//! compared with another cluster's).

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterResponse, MetadataResponse};
use kafka_protocol::protocol::StrBytes;

use super::VirtualMap;
use crate::codec::{self, DecodeError};

fn map_ids(ids: &mut [BrokerId], map: &VirtualMap) {
    for id in ids {
        id.0 = map.to_virtual(id.0);
    }
}

/// Rewrites a Metadata response in place.
pub fn rewrite_metadata(resp: &mut MetadataResponse, map: &VirtualMap) {
    for b in &mut resp.brokers {
        b.node_id.0 = map.to_virtual(b.node_id.0);
        b.host = StrBytes::from_string(map.host(b.node_id.0));
        b.port = map.port(b.node_id.0);
    }
    resp.controller_id.0 = map.to_virtual(resp.controller_id.0);
    resp.cluster_id = Some(StrBytes::from_string(map.cluster_id.clone()));
    for t in &mut resp.topics {
        for p in &mut t.partitions {
            p.leader_id.0 = map.to_virtual(p.leader_id.0);
            p.leader_epoch = -1;
            map_ids(&mut p.replica_nodes, map);
            map_ids(&mut p.isr_nodes, map);
            map_ids(&mut p.offline_replicas, map);
        }
    }
}

pub fn rewrite_metadata_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<MetadataResponse>(ApiKey::Metadata, version, frame)?;
    rewrite_metadata(&mut resp, map);
    codec::encode_response(ApiKey::Metadata, version, header.correlation_id, &resp)
}

/// Rewrites a DescribeCluster response in place.
pub fn rewrite_describe_cluster(resp: &mut DescribeClusterResponse, map: &VirtualMap) {
    for b in &mut resp.brokers {
        b.broker_id.0 = map.to_virtual(b.broker_id.0);
        b.host = StrBytes::from_string(map.host(b.broker_id.0));
        b.port = map.port(b.broker_id.0);
    }
    resp.controller_id.0 = map.to_virtual(resp.controller_id.0);
    resp.cluster_id = StrBytes::from_string(map.cluster_id.clone());
}

pub fn rewrite_describe_cluster_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<DescribeClusterResponse>(ApiKey::DescribeCluster, version, frame)?;
    rewrite_describe_cluster(&mut resp, map);
    codec::encode_response(
        ApiKey::DescribeCluster,
        version,
        header.correlation_id,
        &resp,
    )
}

#[cfg(test)]
mod tests {
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
}
