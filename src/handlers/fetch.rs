//! Fetch. Record data is never touched; only the epoch fields around it are.
//!
//! Requests: `current_leader_epoch` and `last_fetched_epoch` go upstream as -1, so the
//! broker skips its epoch checks (an epoch from another cluster would fence the
//! fetch or report a divergence that never happened). Responses: the
//! `diverging_epoch` and `current_leader` hints are dropped and a preferred read
//! replica becomes a virtual broker id. When nothing needs changing, the original
//! bytes are forwarded, which is the common case.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};

use super::VirtualMap;
use crate::codec::{self, DecodeError, RequestFrame};

/// Clears client-sent epochs. Returns whether anything changed.
pub fn rewrite_request(req: &mut FetchRequest) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for p in &mut t.partitions {
            if p.current_leader_epoch != -1 || p.last_fetched_epoch != -1 {
                p.current_leader_epoch = -1;
                p.last_fetched_epoch = -1;
                changed = true;
            }
        }
    }
    changed
}

pub fn rewrite_request_frame(frame: &RequestFrame) -> Result<Bytes, DecodeError> {
    let mut req: FetchRequest = frame.decode()?;
    if rewrite_request(&mut req) {
        codec::encode_request(frame.api, &frame.header, &req)
    } else {
        Ok(frame.bytes.clone())
    }
}

/// Drops epoch hints and maps broker ids. Returns whether anything changed.
pub fn rewrite_response(resp: &mut FetchResponse, map: &VirtualMap) -> bool {
    let mut changed = false;
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            if p.diverging_epoch.epoch != -1 || p.diverging_epoch.end_offset != -1 {
                p.diverging_epoch = Default::default();
                changed = true;
            }
            if p.current_leader.leader_id.0 != -1 || p.current_leader.leader_epoch != -1 {
                p.current_leader = Default::default();
                changed = true;
            }
            if p.preferred_read_replica.0 >= 0 {
                p.preferred_read_replica.0 = map.to_virtual(p.preferred_read_replica.0);
                changed = true;
            }
        }
    }
    if !resp.node_endpoints.is_empty() {
        resp.node_endpoints.clear();
        changed = true;
    }
    changed
}

pub fn rewrite_response_frame(
    frame: Bytes,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    // Versions before 11 carry none of the fields above: skip decoding entirely.
    if version < 11 {
        return Ok(frame);
    }
    let (header, mut resp) =
        codec::decode_response::<FetchResponse>(ApiKey::Fetch, version, frame.clone())?;
    if rewrite_response(&mut resp, map) {
        codec::encode_response(ApiKey::Fetch, version, header.correlation_id, &resp)
    } else {
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_map;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn request_epochs_are_cleared() {
        let mut req = FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                FetchPartition::default()
                    .with_current_leader_epoch(57)
                    .with_last_fetched_epoch(56),
                FetchPartition::default(),
            ])]);
        assert!(rewrite_request(&mut req));
        for p in &req.topics[0].partitions {
            assert_eq!((p.current_leader_epoch, p.last_fetched_epoch), (-1, -1));
        }
        assert!(!rewrite_request(&mut req), "second pass changes nothing");
    }

    #[test]
    fn response_hints_are_dropped_and_records_untouched() {
        let records = Bytes::from_static(b"opaque record batches");
        let mut resp =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![PartitionData::default()
                    .with_diverging_epoch(
                        EpochEndOffset::default().with_epoch(4).with_end_offset(10),
                    )
                    .with_current_leader(
                        LeaderIdAndEpoch::default()
                            .with_leader_id(BrokerId(2))
                            .with_leader_epoch(9),
                    )
                    .with_preferred_read_replica(BrokerId(3))
                    .with_records(Some(records.clone()))])]);
        assert!(rewrite_response(&mut resp, &test_map()));
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.diverging_epoch, EpochEndOffset::default());
        assert_eq!(p.current_leader, LeaderIdAndEpoch::default());
        assert_eq!(p.preferred_read_replica.0, 1003);
        assert_eq!(p.records.as_ref(), Some(&records));
    }

    #[test]
    fn unchanged_response_is_forwarded_as_the_same_bytes() {
        let resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                PartitionData::default().with_records(Some(Bytes::from_static(b"abc")))
            ])]);
        let frame = codec::encode_response(ApiKey::Fetch, 12, 3, &resp).unwrap();
        let out = rewrite_response_frame(frame.clone(), 12, &test_map()).unwrap();
        assert_eq!(out.as_ptr(), frame.as_ptr(), "no copy when nothing changes");
    }
}
