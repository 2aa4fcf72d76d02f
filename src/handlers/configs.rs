//! Config APIs name brokers by id in `resource_name` (resource types BROKER and
//! BROKER_LOGGER), and CreatePartitions names replica brokers by id. Clients only
//! know virtual ids, so requests are mapped to upstream ids and responses back.
//! Topic resources pass unchanged.

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreatePartitionsRequest,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::VirtualMap;
use crate::codec::{self, DecodeError, RequestFrame};

const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;

fn is_broker(resource_type: i8) -> bool {
    resource_type == BROKER || resource_type == BROKER_LOGGER
}

/// Maps a broker resource name ("1002") through `f`. Empty names (cluster-wide
/// defaults) and names that are not ids are left alone; the broker rejects the
/// latter with its own error.
fn map_name(name: &mut StrBytes, f: impl Fn(i32) -> Option<i32>) -> bool {
    match name.as_str().parse::<i32>().ok().and_then(f) {
        Some(id) => {
            *name = StrBytes::from_string(id.to_string());
            true
        }
        None => false,
    }
}

pub fn rewrite_request_frame(frame: &RequestFrame, map: &VirtualMap) -> Result<Bytes, DecodeError> {
    let up = |id: i32| map.to_upstream(id);
    match frame.api {
        ApiKey::DescribeConfigs => {
            let mut req: DescribeConfigsRequest = frame.decode()?;
            let mut changed = false;
            for r in &mut req.resources {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, up);
                }
            }
            codec::reencode_request(frame, changed, &req)
        }
        ApiKey::AlterConfigs => {
            let mut req: AlterConfigsRequest = frame.decode()?;
            let mut changed = false;
            for r in &mut req.resources {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, up);
                }
            }
            codec::reencode_request(frame, changed, &req)
        }
        ApiKey::IncrementalAlterConfigs => {
            let mut req: IncrementalAlterConfigsRequest = frame.decode()?;
            let mut changed = false;
            for r in &mut req.resources {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, up);
                }
            }
            codec::reencode_request(frame, changed, &req)
        }
        _ => Ok(frame.bytes.clone()),
    }
}

pub fn rewrite_response_frame(
    frame: Bytes,
    api: ApiKey,
    version: i16,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let virt = |id: i32| Some(map.to_virtual(id));
    match api {
        ApiKey::DescribeConfigs => {
            let (h, mut resp) =
                codec::decode_response::<DescribeConfigsResponse>(api, version, frame.clone())?;
            let mut changed = false;
            for r in &mut resp.results {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, virt);
                }
            }
            if changed {
                codec::encode_response(api, version, h.correlation_id, &resp)
            } else {
                Ok(frame)
            }
        }
        ApiKey::AlterConfigs => {
            let (h, mut resp) =
                codec::decode_response::<AlterConfigsResponse>(api, version, frame.clone())?;
            let mut changed = false;
            for r in &mut resp.responses {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, virt);
                }
            }
            if changed {
                codec::encode_response(api, version, h.correlation_id, &resp)
            } else {
                Ok(frame)
            }
        }
        ApiKey::IncrementalAlterConfigs => {
            let (h, mut resp) = codec::decode_response::<IncrementalAlterConfigsResponse>(
                api,
                version,
                frame.clone(),
            )?;
            let mut changed = false;
            for r in &mut resp.responses {
                if is_broker(r.resource_type) {
                    changed |= map_name(&mut r.resource_name, virt);
                }
            }
            if changed {
                codec::encode_response(api, version, h.correlation_id, &resp)
            } else {
                Ok(frame)
            }
        }
        _ => Ok(frame),
    }
}

/// Manual replica assignments name virtual brokers; the upstream needs its own ids.
pub fn rewrite_create_partitions(req: &mut CreatePartitionsRequest, map: &VirtualMap) -> bool {
    let mut changed = false;
    for t in &mut req.topics {
        for a in t.assignments.iter_mut().flatten() {
            for id in &mut a.broker_ids {
                if let Some(up) = map.to_upstream(id.0) {
                    id.0 = up;
                    changed = true;
                }
            }
        }
    }
    changed
}

pub fn rewrite_create_partitions_frame(
    frame: &RequestFrame,
    map: &VirtualMap,
) -> Result<Bytes, DecodeError> {
    let mut req: CreatePartitionsRequest = frame.decode()?;
    let changed = rewrite_create_partitions(&mut req, map);
    codec::reencode_request(frame, changed, &req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_map;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
    use kafka_protocol::messages::RequestHeader;

    #[test]
    fn broker_resources_map_both_ways_topics_untouched() {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(BROKER)
                .with_resource_name(StrBytes::from_static_str("1002")),
            DescribeConfigsResource::default()
                .with_resource_type(2) // TOPIC
                .with_resource_name(StrBytes::from_static_str("1002")),
            DescribeConfigsResource::default()
                .with_resource_type(BROKER)
                .with_resource_name(StrBytes::from_static_str("")),
        ]);
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::DescribeConfigs as i16)
            .with_request_api_version(4)
            .with_correlation_id(1);
        let bytes = codec::encode_request(ApiKey::DescribeConfigs, &header, &req).unwrap();
        let frame = codec::parse_request(bytes).unwrap();
        let out =
            codec::parse_request(rewrite_request_frame(&frame, &test_map()).unwrap()).unwrap();
        let out: DescribeConfigsRequest = out.decode().unwrap();
        let names: Vec<&str> = out
            .resources
            .iter()
            .map(|r| r.resource_name.as_str())
            .collect();
        assert_eq!(names, vec!["2", "1002", ""]);

        let resp =
            DescribeConfigsResponse::default().with_results(vec![DescribeConfigsResult::default()
                .with_resource_type(BROKER)
                .with_resource_name(StrBytes::from_static_str("2"))]);
        let f = codec::encode_response(ApiKey::DescribeConfigs, 4, 1, &resp).unwrap();
        let back = rewrite_response_frame(f, ApiKey::DescribeConfigs, 4, &test_map()).unwrap();
        let (_, back) =
            codec::decode_response::<DescribeConfigsResponse>(ApiKey::DescribeConfigs, 4, back)
                .unwrap();
        assert_eq!(back.results[0].resource_name.as_str(), "1002");
    }
}
