//! ApiVersions is answered by the proxy (DESIGN.md decision 5): the advertised range
//! of each API is the intersection of what Switchyard handles ([`super::SUPPORTED`]),
//! what the protocol crate can decode, and what every cluster a client may be routed
//! to supports. A client therefore never negotiates a version that would break after
//! its traffic moves to another cluster.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::SUPPORTED;
use crate::codec::{self, DecodeError, RequestFrame};
use crate::upstream::ApiRanges;

/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = ResponseError::UnsupportedVersion.code();

/// The version table clients negotiate against.
pub type ApiTable = BTreeMap<i16, (i16, i16)>;

/// Builds the advertised table from the upstream clusters' ranges. Clusters whose
/// ranges are not known yet are skipped; with none known, the table holds only
/// ApiVersions itself so clients retry instead of guessing.
pub fn build_table<'a>(clusters: impl IntoIterator<Item = &'a ApiRanges>) -> ApiTable {
    let clusters: Vec<&ApiRanges> = clusters.into_iter().collect();
    let mut table = ApiTable::new();
    for (api, cap) in SUPPORTED {
        let key = *api as i16;
        let crate_range = api.valid_versions();
        let (mut min, mut max) = (crate_range.min, crate_range.max.min(*cap));
        if *api != ApiKey::ApiVersions {
            if clusters.is_empty() {
                continue;
            }
            let mut everywhere = true;
            for c in &clusters {
                match c.get(&key) {
                    Some((cmin, cmax)) => {
                        min = min.max(*cmin);
                        max = max.min(*cmax);
                    }
                    None => everywhere = false,
                }
            }
            if !everywhere {
                continue;
            }
        }
        if min <= max {
            table.insert(key, (min, max));
        }
    }
    table
}

/// Whether `version` of `api` may be sent by clients of this table.
pub fn allowed(table: &ApiTable, api: ApiKey, version: i16) -> bool {
    table
        .get(&(api as i16))
        .is_some_and(|(min, max)| (*min..=*max).contains(&version))
}

/// Answers an ApiVersions request. A version newer than the proxy knows is answered
/// the way brokers do: UNSUPPORTED_VERSION in a v0 response that still lists the
/// supported ranges, so the client can retry with a version both sides speak.
pub fn respond(frame: &RequestFrame, table: &ApiTable) -> Result<Bytes, DecodeError> {
    let (amin, amax) = table
        .get(&(ApiKey::ApiVersions as i16))
        .copied()
        .unwrap_or((0, 3));
    let requested = frame.version();
    let version = if (amin..=amax).contains(&requested) {
        requested
    } else {
        0
    };
    let response = ApiVersionsResponse::default()
        .with_error_code(if version == requested {
            0
        } else {
            UNSUPPORTED_VERSION
        })
        .with_api_keys(
            table
                .iter()
                .map(|(k, (min, max))| {
                    ApiVersion::default()
                        .with_api_key(*k)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        );
    codec::encode_response(
        ApiKey::ApiVersions,
        version,
        frame.correlation_id(),
        &response,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_response, encode_request, parse_request};
    use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader};

    /// Kafka 2.4.1 and 3.2.0 maxima from PROTOCOL.md §5, min 0.
    fn kafka_24() -> ApiRanges {
        [
            (0, (0, 8)),
            (1, (0, 11)),
            (2, (0, 5)),
            (3, (0, 9)),
            (8, (0, 8)),
            (9, (0, 6)),
            (10, (0, 3)),
            (11, (0, 6)),
            (18, (0, 3)),
            (23, (0, 3)),
        ]
        .into()
    }
    fn kafka_32() -> ApiRanges {
        [
            (0, (0, 9)),
            (1, (0, 13)),
            (2, (0, 7)),
            (3, (0, 12)),
            (8, (0, 8)),
            (9, (0, 8)),
            (10, (0, 4)),
            (11, (0, 9)),
            (18, (0, 3)),
            (23, (0, 4)),
            (68, (0, 0)),
        ]
        .into()
    }

    #[test]
    fn table_is_the_intersection_with_the_crate_and_caps() {
        let t = build_table([&kafka_24(), &kafka_32()]);
        assert_eq!(t[&0], (3, 8)); // Produce: crate min 3, 2.4 max 8
        assert_eq!(t[&1], (4, 11)); // Fetch: crate min 4, 2.4 max 11
        assert_eq!(t[&3], (0, 9)); // Metadata: capped at 9 (no topic ids)
        assert_eq!(t[&10], (0, 3));
        assert!(
            !t.contains_key(&68),
            "KIP-848 heartbeat is never advertised"
        );
        let only_new = build_table([&kafka_32()]);
        assert_eq!(only_new[&1], (4, 12), "Fetch capped below topic ids");
        assert_eq!(only_new[&0], (3, 9), "Produce capped below KIP-951");
        assert!(allowed(&only_new, ApiKey::Fetch, 12));
        assert!(!allowed(&only_new, ApiKey::Fetch, 13));
        assert!(!allowed(&only_new, ApiKey::SaslHandshake, 1));
    }

    #[test]
    fn too_new_api_versions_request_gets_v0_error_with_ranges() {
        let t = build_table([&kafka_32()]);
        let header = RequestHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(5);
        let mut bytes =
            encode_request(ApiKey::ApiVersions, &header, &ApiVersionsRequest::default())
                .unwrap()
                .to_vec();
        // Pretend the client asked for v9 (header layout of v3+ is the same).
        bytes[3] = 9;
        let frame = parse_request(Bytes::from(bytes)).unwrap();
        let out = respond(&frame, &t).unwrap();
        let (h, r) = decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 0, out).unwrap();
        assert_eq!(h.correlation_id, 5);
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert!(r
            .api_keys
            .iter()
            .any(|k| k.api_key == 18 && k.max_version == 3));
    }
}
