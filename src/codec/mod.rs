//! Kafka framing and header decoding. No I/O: functions take bytes and return bytes,
//! so the codec can be unit-tested and fuzzed without sockets.
//!
//! A frame is a big-endian i32 length followed by that many bytes. Requests start with
//! a header (api key, api version, correlation id, client id, and tagged fields for
//! flexible versions); responses with the correlation id (and tagged fields for
//! flexible versions). Bodies stay as `Bytes` until a handler needs to look inside.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Why a frame was refused. Every variant is the client's fault; the connection that
/// sent it is closed with this reason in the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("connection closed mid-frame with {0} bytes of an incomplete frame buffered")]
    Truncated(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("malformed request header for api key {api_key} version {version}: {reason}")]
    BadHeader {
        api_key: i16,
        version: i16,
        reason: String,
    },
}

/// Outcome of looking for one complete frame at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Not enough bytes yet; at least this many more are needed.
    Incomplete(usize),
    /// A frame of this many body bytes (excluding the 4-byte length) is complete.
    Complete(usize),
}

/// Checks whether `buf` starts with a complete frame, without allocating. The length
/// is validated before any body byte is buffered, so a hostile length never makes the
/// proxy reserve memory.
pub fn check_frame(buf: &[u8], max_frame: usize) -> Result<Framing, FrameError> {
    if buf.len() < 4 {
        return Ok(Framing::Incomplete(4 - buf.len()));
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 {
        return Err(FrameError::NegativeLength(len));
    }
    let len = len as usize;
    if len > max_frame {
        return Err(FrameError::Oversize {
            len,
            max: max_frame,
        });
    }
    if buf.len() - 4 < len {
        Ok(Framing::Incomplete(len - (buf.len() - 4)))
    } else {
        Ok(Framing::Complete(len))
    }
}

/// Splits one complete frame off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, FrameError> {
    match check_frame(buf, max_frame)? {
        Framing::Incomplete(_) => Ok(None),
        Framing::Complete(len) => {
            buf.advance(4);
            Ok(Some(buf.split_to(len).freeze()))
        }
    }
}

/// A request whose header is decoded and whose body is still raw bytes.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    pub api: ApiKey,
    pub header: RequestHeader,
    /// The whole frame as received, without the length prefix.
    pub bytes: Bytes,
    /// Where the body starts inside `bytes`.
    pub body_offset: usize,
}

impl RequestFrame {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }

    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.body_offset..)
    }

    /// Decodes the body as `T` at the request's version.
    pub fn decode<T: Decodable>(&self) -> Result<T, DecodeError> {
        let mut body = self.body();
        T::decode(&mut body, self.version()).map_err(|e| DecodeError {
            api: self.api,
            version: self.version(),
            what: "request",
            reason: e.to_string(),
        })
    }
}

/// A message body that could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {api:?} v{version}: {reason}")]
pub struct DecodeError {
    pub api: ApiKey,
    pub version: i16,
    pub what: &'static str,
    pub reason: String,
}

/// Decodes the request header of one frame (without the length prefix).
pub fn parse_request(frame: Bytes) -> Result<RequestFrame, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(api_key).map_err(|_| FrameError::UnknownApiKey(api_key))?;
    let header_version = api.request_header_version(version);
    let mut cursor = frame.clone();
    let header =
        RequestHeader::decode(&mut cursor, header_version).map_err(|e| FrameError::BadHeader {
            api_key,
            version,
            reason: e.to_string(),
        })?;
    let body_offset = frame.len() - cursor.len();
    Ok(RequestFrame {
        api,
        header,
        bytes: frame,
        body_offset,
    })
}

/// Encodes a request (header + body) into a frame without the length prefix.
/// The bytes a forwarded request goes upstream as: `body` re-encoded when it
/// `changed`, else the client's own frame, uncopied.
pub fn reencode_request<T: Encodable>(
    frame: &RequestFrame,
    changed: bool,
    body: &T,
) -> Result<Bytes, DecodeError> {
    if changed {
        encode_request(frame.api, &frame.header, body)
    } else {
        Ok(frame.bytes.clone())
    }
}

pub fn encode_request<T: Encodable>(
    api: ApiKey,
    header: &RequestHeader,
    body: &T,
) -> Result<Bytes, DecodeError> {
    let version = header.request_api_version;
    let err = |e: anyhow::Error| DecodeError {
        api,
        version,
        what: "encode request",
        reason: e.to_string(),
    };
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(err)?;
    body.encode(&mut buf, version).map_err(err)?;
    Ok(buf.freeze())
}

/// Encodes a response (header + body) into a frame without the length prefix.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, DecodeError> {
    let err = |e: anyhow::Error| DecodeError {
        api,
        version,
        what: "encode response",
        reason: e.to_string(),
    };
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api.response_header_version(version))
        .map_err(err)?;
    body.encode(&mut buf, version).map_err(err)?;
    Ok(buf.freeze())
}

/// The correlation id at the front of a response frame.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    (frame.len() >= 4).then(|| i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
}

/// Decodes a response frame's header and body as `T`.
pub fn decode_response<T: Decodable>(
    api: ApiKey,
    version: i16,
    frame: Bytes,
) -> Result<(ResponseHeader, T), DecodeError> {
    let err = |e: anyhow::Error| DecodeError {
        api,
        version,
        what: "decode response",
        reason: e.to_string(),
    };
    let mut cursor = frame;
    let header =
        ResponseHeader::decode(&mut cursor, api.response_header_version(version)).map_err(err)?;
    let body = T::decode(&mut cursor, version).map_err(err)?;
    Ok((header, body))
}

/// Writes the 4-byte length prefix for a frame of `len` bytes.
pub fn length_prefix(len: usize) -> [u8; 4] {
    (len as i32).to_be_bytes()
}

/// Puts a whole frame (prefix + body) into `out`.
pub fn put_frame(out: &mut BytesMut, frame: &[u8]) {
    out.reserve(4 + frame.len());
    out.put_i32(frame.len() as i32);
    out.put_slice(frame);
}

/// Skips a (nullable) string at the front of `b`: compact (unsigned varint of
/// length + 1) in flexible versions, else an i16 length.
fn skip_string(b: &[u8], compact: bool) -> Option<&[u8]> {
    if compact {
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut b = b;
        loop {
            let byte = *b.first()?;
            b = &b[1..];
            len |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        b.get(len.saturating_sub(1) as usize..)
    } else {
        let len = i16::from_be_bytes([*b.first()?, *b.get(1)?]);
        let b = &b[2..];
        if len > 0 {
            b.get(len as usize..)
        } else {
            Some(b)
        }
    }
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads `acks` from a Produce request body without decoding the records. Produce
/// v3+ starts with transactional_id (nullable string; compact from v9) then acks.
pub fn produce_acks(frame: &RequestFrame) -> Option<i16> {
    let body = frame.body();
    let b = produce_after_txn_id(frame, &body)?;
    i16_at(b, 0)
}

fn produce_after_txn_id<'a>(frame: &RequestFrame, body: &'a [u8]) -> Option<&'a [u8]> {
    match frame.version() {
        0..=2 => Some(body),
        v => skip_string(body, v >= 9),
    }
}

/// How long the broker may legitimately hold this request before answering, read
/// from the request without decoding it: a Fetch's max wait, a Produce's timeout, a
/// JoinGroup's rebalance timeout (the broker answers when the rebalance completes).
/// The proxy's upstream deadline for the request is this plus its own margin.
pub fn request_wait(frame: &RequestFrame) -> std::time::Duration {
    let body = frame.body();
    let v = frame.version();
    let ms = match frame.api {
        // replica_id, max_wait_ms (replica_id moved to tagged fields in v15).
        ApiKey::Fetch if v >= 15 => i32_at(&body, 0),
        ApiKey::Fetch => i32_at(&body, 4),
        // [transactional_id] acks timeout_ms
        ApiKey::Produce => produce_after_txn_id(frame, &body).and_then(|b| i32_at(b, 2)),
        // group_id session_timeout_ms rebalance_timeout_ms (v1+)
        ApiKey::JoinGroup => skip_string(&body, v >= 6).and_then(|b| {
            let session = i32_at(b, 0)?;
            Some(if v >= 1 {
                i32_at(b, 4)?.max(session)
            } else {
                session
            })
        }),
        _ => None,
    };
    std::time::Duration::from_millis(ms.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, ProduceRequest, TransactionalId};
    use kafka_protocol::protocol::StrBytes;

    fn header(api: ApiKey, version: i16, corr: i32) -> RequestHeader {
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_static_str("test-client")))
    }

    #[test]
    fn framing_waits_for_a_whole_frame() {
        let mut buf = BytesMut::new();
        buf.put_i32(10);
        buf.put_slice(&[1, 2, 3]);
        assert_eq!(check_frame(&buf, 100), Ok(Framing::Incomplete(7)));
        buf.put_slice(&[0; 7]);
        buf.put_slice(&[9, 9]); // start of the next frame
        let f = take_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(f.len(), 10);
        assert_eq!(&buf[..], &[9, 9]);
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        assert_eq!(
            check_frame(&(-1i32).to_be_bytes(), 100),
            Err(FrameError::NegativeLength(-1))
        );
        assert_eq!(
            check_frame(&(i32::MAX).to_be_bytes(), 100),
            Err(FrameError::Oversize {
                len: i32::MAX as usize,
                max: 100
            })
        );
    }

    #[test]
    fn header_round_trip_and_errors() {
        let body = MetadataRequest::default().with_topics(None);
        let bytes =
            encode_request(ApiKey::Metadata, &header(ApiKey::Metadata, 9, 42), &body).unwrap();
        let frame = parse_request(bytes.clone()).unwrap();
        assert_eq!(frame.api, ApiKey::Metadata);
        assert_eq!(frame.correlation_id(), 42);
        assert_eq!(frame.header.client_id.as_deref(), Some("test-client"));
        let decoded: MetadataRequest = frame.decode().unwrap();
        assert_eq!(decoded, body);

        assert_eq!(
            parse_request(Bytes::from_static(&[0, 3])).unwrap_err(),
            FrameError::TooShort(2)
        );
        let mut unknown = bytes.to_vec();
        unknown[0] = 0x7f;
        assert!(matches!(
            parse_request(Bytes::from(unknown)),
            Err(FrameError::UnknownApiKey(_))
        ));
        // Truncated client id: header claims a 11-byte string, frame ends early.
        let truncated = bytes.slice(..12);
        assert!(matches!(
            parse_request(truncated),
            Err(FrameError::BadHeader { .. })
        ));
    }

    #[test]
    fn produce_acks_is_read_without_decoding_records() {
        for (version, txn) in [(3, None), (7, Some("tx-1")), (9, None), (9, Some("tx-22"))] {
            let body = ProduceRequest::default()
                .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_static_str(t))))
                .with_acks(0)
                .with_timeout_ms(1000);
            let bytes =
                encode_request(ApiKey::Produce, &header(ApiKey::Produce, version, 1), &body)
                    .unwrap();
            let frame = parse_request(bytes).unwrap();
            assert_eq!(produce_acks(&frame), Some(0), "v{version} {txn:?}");
        }
    }

    /// The request that aborted the process before the decoder was patched: a
    /// Fetch v4 of 40 bytes whose topic array claims 0x7fffffff entries. It must
    /// fail to decode, not reserve ~200 GB.
    #[test]
    fn hostile_array_count_is_a_decode_error() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Fetch as i16);
        frame.put_i16(4);
        frame.put_i32(7);
        frame.put_i16(9);
        frame.put_slice(b"hostile-f");
        frame.put_i32(-1); // replica id
        frame.put_i32(500); // max wait
        frame.put_i32(1); // min bytes
        frame.put_i32(1 << 20); // max bytes
        frame.put_i8(0); // isolation level
        frame.put_i32(0x7fff_ffff); // topics
        assert_eq!(frame.len(), 40);
        let frame = parse_request(frame.freeze()).unwrap();
        let err = frame
            .decode::<kafka_protocol::messages::FetchRequest>()
            .unwrap_err();
        assert!(err.reason.contains("array length"), "{err}");
    }

    #[test]
    fn request_wait_reads_the_wait_each_request_asks_for() {
        use kafka_protocol::messages::{FetchRequest, JoinGroupRequest};
        let f = |api, v, bytes: Bytes| {
            let frame = parse_request(bytes).unwrap();
            assert_eq!(frame.api, api);
            let _ = v;
            request_wait(&frame).as_millis()
        };
        for v in [4, 12] {
            let body = FetchRequest::default().with_max_wait_ms(777);
            let bytes = encode_request(ApiKey::Fetch, &header(ApiKey::Fetch, v, 1), &body).unwrap();
            assert_eq!(f(ApiKey::Fetch, v, bytes), 777, "fetch v{v}");
        }
        for v in [3, 7, 9] {
            let body = ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("t"))))
                .with_acks(-1)
                .with_timeout_ms(3000);
            let bytes =
                encode_request(ApiKey::Produce, &header(ApiKey::Produce, v, 1), &body).unwrap();
            assert_eq!(f(ApiKey::Produce, v, bytes), 3000, "produce v{v}");
        }
        for v in [1, 5, 6, 9] {
            let body = JoinGroupRequest::default()
                .with_group_id(kafka_protocol::messages::GroupId(
                    StrBytes::from_static_str("billing"),
                ))
                .with_session_timeout_ms(45_000)
                .with_rebalance_timeout_ms(300_000);
            let bytes =
                encode_request(ApiKey::JoinGroup, &header(ApiKey::JoinGroup, v, 1), &body).unwrap();
            assert_eq!(f(ApiKey::JoinGroup, v, bytes), 300_000, "join v{v}");
        }
        // Garbage bodies give no wait, never a panic.
        let mut short = BytesMut::new();
        short.put_i16(ApiKey::Fetch as i16);
        short.put_i16(4);
        short.put_i32(1);
        short.put_i16(-1);
        short.put_slice(&[0, 1]);
        assert_eq!(f(ApiKey::Fetch, 4, short.freeze()), 0);
    }
}
