//! Group coordination APIs. JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! DescribeGroups and ListGroups pass through untouched; FindCoordinator names a
//! broker, so its answer is rewritten to the virtual broker in front of it.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::VirtualMap;
use crate::codec::{self, DecodeError};

/// Rewrites a FindCoordinator response in place: both the single-key form (v0–v3)
/// and the batched `coordinators` list (v4+).
pub fn rewrite_find_coordinator(
    resp: &mut FindCoordinatorResponse,
    version: i16,
    map: &VirtualMap,
) {
    // v4+ has only the batched list; the single-key fields must stay at defaults.
    if version < 4 && resp.node_id.0 >= 0 {
        resp.node_id.0 = map.to_virtual(resp.node_id.0);
        resp.host = StrBytes::from_string(map.host(resp.node_id.0));
        resp.port = map.port(resp.node_id.0);
    }
    for c in &mut resp.coordinators {
        if c.node_id.0 >= 0 {
            c.node_id.0 = map.to_virtual(c.node_id.0);
            c.host = StrBytes::from_string(map.host(c.node_id.0));
            c.port = map.port(c.node_id.0);
        }
    }
}

pub fn rewrite_find_coordinator_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<FindCoordinatorResponse>(ApiKey::FindCoordinator, version, frame)?;
    rewrite_find_coordinator(&mut resp, version, map);
    codec::encode_response(
        ApiKey::FindCoordinator,
        version,
        header.correlation_id,
        &resp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_map;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::BrokerId;

    #[test]
    fn single_and_batched_coordinators_are_virtual() {
        let mut r = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("kafka-2"))
            .with_port(9092)
            .with_coordinators(vec![
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("g1"))
                    .with_node_id(BrokerId(3))
                    .with_host(StrBytes::from_static_str("kafka-3"))
                    .with_port(9092),
                // COORDINATOR_NOT_AVAILABLE: no node, nothing to map.
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("g2"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(kafka_protocol::ResponseError::CoordinatorNotAvailable.code()),
            ]);
        rewrite_find_coordinator(&mut r, 3, &test_map());
        assert_eq!(
            (r.node_id.0, r.host.as_str(), r.port),
            (1002, "proxy.local", 10102)
        );
        let c = &r.coordinators[0];
        assert_eq!(
            (c.node_id.0, c.host.as_str(), c.port),
            (1003, "proxy.local", 10103)
        );
        assert_eq!(r.coordinators[1].node_id.0, -1);
        assert_eq!(r.coordinators[1].host.as_str(), "");
    }

    #[test]
    fn v4_response_round_trips() {
        let r = FindCoordinatorResponse::default().with_coordinators(vec![Coordinator::default()
            .with_key(StrBytes::from_static_str("g1"))
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("kafka-1"))
            .with_port(9092)]);
        let frame = codec::encode_response(ApiKey::FindCoordinator, 4, 8, &r).unwrap();
        let out = rewrite_find_coordinator_frame(frame, 4, &test_map()).unwrap();
        let (_, back) =
            codec::decode_response::<FindCoordinatorResponse>(ApiKey::FindCoordinator, 4, out)
                .unwrap();
        assert_eq!(back.coordinators[0].node_id.0, 1001);
        assert_eq!(back.coordinators[0].port, 10101);
    }
}
