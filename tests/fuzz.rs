//! Codec fuzz run, on the stable toolchain (no cargo-fuzz, no nightly).
//!
//! Every client and every broker of the company talks through the proxy, so a
//! panic or an allocation failure while decoding one hostile frame is an outage for
//! all of them. This harness feeds the proxy's own entry points (framing, request
//! header + body decoding, response decoding, the pure response rewrites, record
//! batch walking, SASL parsing) with mutated valid messages of every API and version
//! the protocol crate knows, and fails on:
//!
//! - a panic (caught with `catch_unwind`, reported with api, version and hex input,
//!   the input saved under `target/fuzz-failures/`);
//! - one allocation larger than [`alloc_bound`] of the input, measured by the
//!   counting global allocator below. An allocation too large to ever succeed is
//!   reported from inside the allocator before the process aborts, because the
//!   allocation failure that follows cannot be caught.
//!
//! `cargo test --test fuzz` runs a short, deterministic pass (array-count variants
//! first, then `SWITCHYARD_FUZZ_INPUTS` random inputs, default 100 000).
//! See docs/fuzzing.md for the long run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI16, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use switchyard::codec::{self, Framing};
use switchyard::config::Config;
use switchyard::handlers::group_admin::GroupsPlan;
use switchyard::handlers::offsets::EpochQuery;
use switchyard::handlers::plan::{Plan, Refused};
use switchyard::handlers::sasl::{SaslState, ServerSasl};
use switchyard::handlers::Session;
use switchyard::handlers::{self, api_versions, Forwarded, ResponseRewrite, VirtualMap};
use switchyard::proxy::Proxy;
use switchyard::routes::RouteTable;
use switchyard::sasl::{self as sasl_auth, Credentials, ScramEntry, ScramServer};
use switchyard::switch::producers;

// ------------------------------------------------------------------ allocator

/// Wraps the system allocator to see the size of every single allocation made while
/// one input is being processed. Only atomics are touched on the fast path, so the
/// allocator is re-entrant and costs a few nanoseconds per call.
struct Counting;

static TRACKING: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Above this, the allocation is refused after the input has been reported: the
/// process aborts on the refusal, which is what such a request did to the proxy.
static HARD_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// What is being processed, for the report made from inside the allocator.
static CUR_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CUR_LEN: AtomicUsize = AtomicUsize::new(0);
static CUR_API: AtomicI16 = AtomicI16::new(-1);
static CUR_VERSION: AtomicI16 = AtomicI16::new(-1);
static CUR_TARGET: AtomicU8 = AtomicU8::new(0);

/// Allocations of 1 GiB or more are never made for a frame the proxy accepts
/// (frames are capped far below that), so one means a count from the wire was
/// trusted; the system allocator may not even be able to satisfy it.
const HARD_LIMIT_BYTES: usize = 1 << 30;

fn note_alloc(size: usize) -> bool {
    if !TRACKING.load(Ordering::Relaxed) {
        return true;
    }
    PEAK.fetch_max(size, Ordering::Relaxed);
    if size >= HARD_LIMIT.load(Ordering::Relaxed) {
        TRACKING.store(false, Ordering::Relaxed);
        // Allocating while reporting is fine: tracking is off and nothing here
        // holds a lock the allocator needs. Never unwind out of the allocator.
        let _ = panic::catch_unwind(|| report_from_allocator(size));
        return false;
    }
    true
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note_alloc(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The largest single allocation allowed while processing an input of `len` bytes.
///
/// The patched decoder (vendor/kafka-protocol/SWITCHYARD-PATCH.md) never reserves
/// more than the bytes left could hold: a string or bytes field is a slice of the
/// input (no copy), an array reserves min(count, 1024) elements and count is at most
/// the bytes left, and a vector grows by doubling from elements actually decoded,
/// each of which consumed at least one input byte. So one allocation is at most
/// about 2 × (elements ≤ len) × (in-memory element size). The largest element
/// structs of kafka-protocol 0.18 measured are under 256 bytes (printed by
/// [`element_sizes`]; Fetch's PartitionData is 232), so 2 × 256 = 512 bytes per
/// input byte is sound for every decode, and the encoder's output buffer (a rewrite
/// re-encodes a message no more than a small constant larger than the one it
/// decoded, into a doubling BytesMut) stays well under it. The 64 KiB floor covers
/// costs that do not grow with the input: error strings, the first capacity of
/// small vectors and buffers. What this bound catches is the class of bug
/// that matters: memory following a count on the wire instead of the bytes
/// received (the 40-byte Fetch that asked for 200 GB).
///
/// Record batches get a 256 KiB floor: their decoder runs the decompressors, which
/// hold fixed buffers whatever the input (zstd's output block is 128 KiB + 3).
fn alloc_bound(target: Target, len: usize) -> usize {
    let floor = if target == Target::Records {
        256 * 1024
    } else {
        64 * 1024
    };
    512 * len + floor
}

// ------------------------------------------------------------------- failures

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Target {
    Request = 1,
    Response = 2,
    Frames = 3,
    Records = 4,
    Sasl = 5,
    /// A request or response body alone, decoded while the seeds are built.
    RequestBody = 6,
    ResponseBody = 7,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Request => "request",
            Target::Response => "response",
            Target::Frames => "frames",
            Target::Records => "records",
            Target::Sasl => "sasl",
            Target::RequestBody => "requestbody",
            Target::ResponseBody => "responsebody",
        }
    }
    fn from_u8(v: u8) -> Option<Target> {
        [
            Target::Request,
            Target::Response,
            Target::Frames,
            Target::Records,
            Target::Sasl,
            Target::RequestBody,
            Target::ResponseBody,
        ]
        .into_iter()
        .find(|t| *t as u8 == v)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn api_label(api: i16) -> String {
    match ApiKey::try_from(api) {
        Ok(k) => format!("{k:?}"),
        Err(()) => format!("api{api}"),
    }
}

fn failure_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

/// Prints the failure and keeps the input (the exact bytes handed to the target)
/// so it can be replayed: `SWITCHYARD_FUZZ_REPLAY=<file>` runs just that file.
fn report(target: Target, api: i16, version: i16, what: &str, input: &[u8]) {
    let name = format!(
        "{}-{}-v{}-{:016x}.bin",
        target.name(),
        api_label(api),
        version,
        fnv(input)
    );
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(&name);
    let _ = std::fs::write(&path, input);
    eprintln!(
        "fuzz FAILURE: {what}\n  target {} api {} ({api}) version {version}, {} bytes\n  input {}\n  saved {}",
        target.name(),
        api_label(api),
        input.len(),
        hex(input),
        path.display()
    );
}

fn report_from_allocator(size: usize) {
    let ptr = CUR_PTR.load(Ordering::Relaxed);
    let len = CUR_LEN.load(Ordering::Relaxed);
    // SAFETY: `guarded` publishes the input slice for exactly as long as it runs
    // the target, on this (the only) thread.
    let input: &[u8] = if ptr.is_null() {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(ptr, len) }
    };
    let target = Target::from_u8(CUR_TARGET.load(Ordering::Relaxed)).unwrap_or(Target::Request);
    report(
        target,
        CUR_API.load(Ordering::Relaxed),
        CUR_VERSION.load(Ordering::Relaxed),
        &format!(
            "allocation of {size} bytes for a {len}-byte input (bound {}); the process aborts next",
            alloc_bound(target, len)
        ),
        input,
    );
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

static PANIC_MSG: Mutex<String> = Mutex::new(String::new());
/// Responses that hit the crate's tag bug (see `DecodeResponse::tag_bug`).
static TAG_BUG: AtomicUsize = AtomicUsize::new(0);

/// Panics are expected to be caught here; keep the message instead of printing a
/// backtrace per input.
fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let tracking = TRACKING.swap(false, Ordering::Relaxed);
        let mut m = PANIC_MSG.lock().unwrap_or_else(|e| e.into_inner());
        m.clear();
        let _ = write!(m, "{info}");
        TRACKING.store(tracking, Ordering::Relaxed);
    }));
}

#[derive(Default)]
struct Stats {
    inputs: u64,
    failures: u64,
    decoded: u64,
    /// Largest allocation per input byte, among allocations above 64 KiB.
    worst_ratio: f64,
    /// Per target: largest single allocation and the length of its input.
    worst_peak: [(usize, usize); 8],
}

/// Runs `f` on `input` with allocation tracking, counting a panic or an allocation
/// above the bound as a failure. `f` returns whether the input decoded.
fn guarded(
    stats: &mut Stats,
    target: Target,
    api: i16,
    version: i16,
    input: &[u8],
    f: impl FnOnce(&[u8]) -> bool,
) {
    stats.inputs += 1;
    // A client frame names its own api and version.
    let (api, version) = match (target, input) {
        (Target::Request, [a, b, c, d, ..]) => {
            (i16::from_be_bytes([*a, *b]), i16::from_be_bytes([*c, *d]))
        }
        _ => (api, version),
    };
    CUR_PTR.store(input.as_ptr() as *mut u8, Ordering::Relaxed);
    CUR_LEN.store(input.len(), Ordering::Relaxed);
    CUR_API.store(api, Ordering::Relaxed);
    CUR_VERSION.store(version, Ordering::Relaxed);
    CUR_TARGET.store(target as u8, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Relaxed);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| f(input)));
    TRACKING.store(false, Ordering::Relaxed);
    CUR_PTR.store(std::ptr::null_mut(), Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    let bound = alloc_bound(target, input.len());
    match outcome {
        Err(_) => {
            stats.failures += 1;
            let msg = PANIC_MSG.lock().unwrap_or_else(|e| e.into_inner()).clone();
            report(target, api, version, &format!("panic: {msg}"), input);
        }
        Ok(decoded) => {
            stats.decoded += decoded as u64;
            if peak > bound {
                stats.failures += 1;
                report(
                    target,
                    api,
                    version,
                    &format!("allocation of {peak} bytes exceeds the bound {bound}"),
                    input,
                );
            }
        }
    }
    let ratio = peak as f64 / input.len().max(1) as f64;
    if peak > 64 * 1024 && ratio > stats.worst_ratio {
        stats.worst_ratio = ratio;
    }
    let w = &mut stats.worst_peak[target as usize];
    if peak > w.0 {
        *w = (peak, input.len());
    }
}

// ------------------------------------------------------------------------ prng

/// SplitMix64: tiny, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

// ------------------------------------------------------------- api dispatch

/// What the harness needs of a message type.
trait Msg: Encodable + Decodable + Default + PartialEq + Clone + std::fmt::Debug {}
impl<T: Encodable + Decodable + Default + PartialEq + Clone + std::fmt::Debug> Msg for T {}

/// Something done with the request and response types of one API.
trait Visit {
    fn visit<Req: Msg, Resp: Msg>(&mut self, api: ApiKey);
}

/// Calls `v` with the message types of `api`: the static type is what the proxy
/// decodes with (`frame.decode::<T>()`, `decode_response::<T>()`), so the harness
/// goes through the same generic code, for every API the crate knows.
fn dispatch<V: Visit>(api: ApiKey, v: &mut V) {
    match api {
        ApiKey::Produce => v.visit::<ProduceRequest, ProduceResponse>(api),
        ApiKey::Fetch => v.visit::<FetchRequest, FetchResponse>(api),
        ApiKey::ListOffsets => v.visit::<ListOffsetsRequest, ListOffsetsResponse>(api),
        ApiKey::Metadata => v.visit::<MetadataRequest, MetadataResponse>(api),
        ApiKey::OffsetCommit => v.visit::<OffsetCommitRequest, OffsetCommitResponse>(api),
        ApiKey::OffsetFetch => v.visit::<OffsetFetchRequest, OffsetFetchResponse>(api),
        ApiKey::FindCoordinator => v.visit::<FindCoordinatorRequest, FindCoordinatorResponse>(api),
        ApiKey::JoinGroup => v.visit::<JoinGroupRequest, JoinGroupResponse>(api),
        ApiKey::Heartbeat => v.visit::<HeartbeatRequest, HeartbeatResponse>(api),
        ApiKey::LeaveGroup => v.visit::<LeaveGroupRequest, LeaveGroupResponse>(api),
        ApiKey::SyncGroup => v.visit::<SyncGroupRequest, SyncGroupResponse>(api),
        ApiKey::DescribeGroups => v.visit::<DescribeGroupsRequest, DescribeGroupsResponse>(api),
        ApiKey::ListGroups => v.visit::<ListGroupsRequest, ListGroupsResponse>(api),
        ApiKey::SaslHandshake => v.visit::<SaslHandshakeRequest, SaslHandshakeResponse>(api),
        ApiKey::ApiVersions => v.visit::<ApiVersionsRequest, ApiVersionsResponse>(api),
        ApiKey::CreateTopics => v.visit::<CreateTopicsRequest, CreateTopicsResponse>(api),
        ApiKey::DeleteTopics => v.visit::<DeleteTopicsRequest, DeleteTopicsResponse>(api),
        ApiKey::DeleteRecords => v.visit::<DeleteRecordsRequest, DeleteRecordsResponse>(api),
        ApiKey::InitProducerId => v.visit::<InitProducerIdRequest, InitProducerIdResponse>(api),
        ApiKey::OffsetForLeaderEpoch => {
            v.visit::<OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse>(api)
        }
        ApiKey::AddPartitionsToTxn => {
            v.visit::<AddPartitionsToTxnRequest, AddPartitionsToTxnResponse>(api)
        }
        ApiKey::AddOffsetsToTxn => v.visit::<AddOffsetsToTxnRequest, AddOffsetsToTxnResponse>(api),
        ApiKey::EndTxn => v.visit::<EndTxnRequest, EndTxnResponse>(api),
        ApiKey::WriteTxnMarkers => v.visit::<WriteTxnMarkersRequest, WriteTxnMarkersResponse>(api),
        ApiKey::TxnOffsetCommit => v.visit::<TxnOffsetCommitRequest, TxnOffsetCommitResponse>(api),
        ApiKey::DescribeAcls => v.visit::<DescribeAclsRequest, DescribeAclsResponse>(api),
        ApiKey::CreateAcls => v.visit::<CreateAclsRequest, CreateAclsResponse>(api),
        ApiKey::DeleteAcls => v.visit::<DeleteAclsRequest, DeleteAclsResponse>(api),
        ApiKey::DescribeConfigs => v.visit::<DescribeConfigsRequest, DescribeConfigsResponse>(api),
        ApiKey::AlterConfigs => v.visit::<AlterConfigsRequest, AlterConfigsResponse>(api),
        ApiKey::AlterReplicaLogDirs => {
            v.visit::<AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse>(api)
        }
        ApiKey::DescribeLogDirs => v.visit::<DescribeLogDirsRequest, DescribeLogDirsResponse>(api),
        ApiKey::SaslAuthenticate => {
            v.visit::<SaslAuthenticateRequest, SaslAuthenticateResponse>(api)
        }
        ApiKey::CreatePartitions => {
            v.visit::<CreatePartitionsRequest, CreatePartitionsResponse>(api)
        }
        ApiKey::CreateDelegationToken => {
            v.visit::<CreateDelegationTokenRequest, CreateDelegationTokenResponse>(api)
        }
        ApiKey::RenewDelegationToken => {
            v.visit::<RenewDelegationTokenRequest, RenewDelegationTokenResponse>(api)
        }
        ApiKey::ExpireDelegationToken => {
            v.visit::<ExpireDelegationTokenRequest, ExpireDelegationTokenResponse>(api)
        }
        ApiKey::DescribeDelegationToken => {
            v.visit::<DescribeDelegationTokenRequest, DescribeDelegationTokenResponse>(api)
        }
        ApiKey::DeleteGroups => v.visit::<DeleteGroupsRequest, DeleteGroupsResponse>(api),
        ApiKey::ElectLeaders => v.visit::<ElectLeadersRequest, ElectLeadersResponse>(api),
        ApiKey::IncrementalAlterConfigs => {
            v.visit::<IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse>(api)
        }
        ApiKey::AlterPartitionReassignments => {
            v.visit::<AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse>(api)
        }
        ApiKey::ListPartitionReassignments => {
            v.visit::<ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse>(api)
        }
        ApiKey::OffsetDelete => v.visit::<OffsetDeleteRequest, OffsetDeleteResponse>(api),
        ApiKey::DescribeClientQuotas => {
            v.visit::<DescribeClientQuotasRequest, DescribeClientQuotasResponse>(api)
        }
        ApiKey::AlterClientQuotas => {
            v.visit::<AlterClientQuotasRequest, AlterClientQuotasResponse>(api)
        }
        ApiKey::DescribeUserScramCredentials => v
            .visit::<DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse>(
                api,
            ),
        ApiKey::AlterUserScramCredentials => {
            v.visit::<AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse>(api)
        }
        ApiKey::Vote => v.visit::<VoteRequest, VoteResponse>(api),
        ApiKey::BeginQuorumEpoch => {
            v.visit::<BeginQuorumEpochRequest, BeginQuorumEpochResponse>(api)
        }
        ApiKey::EndQuorumEpoch => v.visit::<EndQuorumEpochRequest, EndQuorumEpochResponse>(api),
        ApiKey::DescribeQuorum => v.visit::<DescribeQuorumRequest, DescribeQuorumResponse>(api),
        ApiKey::AlterPartition => v.visit::<AlterPartitionRequest, AlterPartitionResponse>(api),
        ApiKey::UpdateFeatures => v.visit::<UpdateFeaturesRequest, UpdateFeaturesResponse>(api),
        ApiKey::Envelope => v.visit::<EnvelopeRequest, EnvelopeResponse>(api),
        ApiKey::FetchSnapshot => v.visit::<FetchSnapshotRequest, FetchSnapshotResponse>(api),
        ApiKey::DescribeCluster => v.visit::<DescribeClusterRequest, DescribeClusterResponse>(api),
        ApiKey::DescribeProducers => {
            v.visit::<DescribeProducersRequest, DescribeProducersResponse>(api)
        }
        ApiKey::BrokerRegistration => {
            v.visit::<BrokerRegistrationRequest, BrokerRegistrationResponse>(api)
        }
        ApiKey::BrokerHeartbeat => v.visit::<BrokerHeartbeatRequest, BrokerHeartbeatResponse>(api),
        ApiKey::UnregisterBroker => {
            v.visit::<UnregisterBrokerRequest, UnregisterBrokerResponse>(api)
        }
        ApiKey::DescribeTransactions => {
            v.visit::<DescribeTransactionsRequest, DescribeTransactionsResponse>(api)
        }
        ApiKey::ListTransactions => {
            v.visit::<ListTransactionsRequest, ListTransactionsResponse>(api)
        }
        ApiKey::AllocateProducerIds => {
            v.visit::<AllocateProducerIdsRequest, AllocateProducerIdsResponse>(api)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            v.visit::<ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse>(api)
        }
        ApiKey::ConsumerGroupDescribe => {
            v.visit::<ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse>(api)
        }
        ApiKey::ControllerRegistration => {
            v.visit::<ControllerRegistrationRequest, ControllerRegistrationResponse>(api)
        }
        ApiKey::GetTelemetrySubscriptions => {
            v.visit::<GetTelemetrySubscriptionsRequest, GetTelemetrySubscriptionsResponse>(api)
        }
        ApiKey::PushTelemetry => v.visit::<PushTelemetryRequest, PushTelemetryResponse>(api),
        ApiKey::AssignReplicasToDirs => {
            v.visit::<AssignReplicasToDirsRequest, AssignReplicasToDirsResponse>(api)
        }
        ApiKey::ListConfigResources => {
            v.visit::<ListConfigResourcesRequest, ListConfigResourcesResponse>(api)
        }
        ApiKey::DescribeTopicPartitions => {
            v.visit::<DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse>(api)
        }
        ApiKey::ShareGroupHeartbeat => {
            v.visit::<ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse>(api)
        }
        ApiKey::ShareGroupDescribe => {
            v.visit::<ShareGroupDescribeRequest, ShareGroupDescribeResponse>(api)
        }
        ApiKey::ShareFetch => v.visit::<ShareFetchRequest, ShareFetchResponse>(api),
        ApiKey::ShareAcknowledge => {
            v.visit::<ShareAcknowledgeRequest, ShareAcknowledgeResponse>(api)
        }
        ApiKey::AddRaftVoter => v.visit::<AddRaftVoterRequest, AddRaftVoterResponse>(api),
        ApiKey::RemoveRaftVoter => v.visit::<RemoveRaftVoterRequest, RemoveRaftVoterResponse>(api),
        ApiKey::UpdateRaftVoter => v.visit::<UpdateRaftVoterRequest, UpdateRaftVoterResponse>(api),
        ApiKey::InitializeShareGroupState => {
            v.visit::<InitializeShareGroupStateRequest, InitializeShareGroupStateResponse>(api)
        }
        ApiKey::ReadShareGroupState => {
            v.visit::<ReadShareGroupStateRequest, ReadShareGroupStateResponse>(api)
        }
        ApiKey::WriteShareGroupState => {
            v.visit::<WriteShareGroupStateRequest, WriteShareGroupStateResponse>(api)
        }
        ApiKey::DeleteShareGroupState => {
            v.visit::<DeleteShareGroupStateRequest, DeleteShareGroupStateResponse>(api)
        }
        ApiKey::ReadShareGroupStateSummary => {
            v.visit::<ReadShareGroupStateSummaryRequest, ReadShareGroupStateSummaryResponse>(api)
        }
        ApiKey::DescribeShareGroupOffsets => {
            v.visit::<DescribeShareGroupOffsetsRequest, DescribeShareGroupOffsetsResponse>(api)
        }
        ApiKey::AlterShareGroupOffsets => {
            v.visit::<AlterShareGroupOffsetsRequest, AlterShareGroupOffsetsResponse>(api)
        }
        ApiKey::DeleteShareGroupOffsets => {
            v.visit::<DeleteShareGroupOffsetsRequest, DeleteShareGroupOffsetsResponse>(api)
        }
    }
}

// -------------------------------------------------------------------- seeds

#[derive(Clone)]
struct Seed {
    api: ApiKey,
    version: i16,
    target: Target,
    /// The frame without its length prefix: header then body.
    frame: Vec<u8>,
    body_offset: usize,
    /// Default-constructed body (false) or one the populator filled (true).
    populated: bool,
}

fn decode_body<T: Msg>(body: &[u8], version: i16) -> Option<T> {
    T::decode(&mut Bytes::copy_from_slice(body), version).ok()
}

fn encode_body<T: Msg>(m: &T, version: i16) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    m.encode(&mut buf, version).ok()?;
    Some(buf.to_vec())
}

/// Lengths of filler tried after a count set to one: an element of the smallest
/// struct is a few bytes, the largest a few dozen.
const FILL_LENS: &[usize] = &[
    1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64,
];

/// Valid encodings of `T` with more content than `body`: every empty array (i32 or
/// compact count) is in turn given one element, made of filler bytes that decode,
/// and every empty string gets "abc". The crate's message structs cannot be walked
/// generically, so the populator searches with the decoder itself and keeps a
/// candidate only if it re-encodes to something longer that decodes back equal.
fn populate<T: Msg>(
    body: &[u8],
    version: i16,
    rng: &mut Rng,
    limit: usize,
    sc: &mut SeedCtx,
) -> Vec<Vec<u8>> {
    let Some(base) = sc.decode::<T>(body, version) else {
        return Vec::new();
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut accept = |cand: &[u8], out: &mut Vec<Vec<u8>>| -> bool {
        let Some(m) = sc.decode::<T>(cand, version) else {
            return false;
        };
        if m == base {
            return false;
        }
        let Some(enc) = encode_body(&m, version) else {
            return false;
        };
        if enc.len() <= body.len() || decode_body::<T>(&enc, version).as_ref() != Some(&m) {
            return false;
        }
        if !out.contains(&enc) {
            out.push(enc);
        }
        true
    };
    let patterns: Vec<Vec<u8>> = {
        let mut p = vec![vec![0u8; 64], vec![1u8; 64]];
        for _ in 0..3 {
            p.push((0..64).map(|_| (rng.next() & 1) as u8).collect());
        }
        p
    };
    for i in 0..body.len() {
        if out.len() >= limit {
            break;
        }
        let w4 = body.get(i..i + 4);
        let w2 = body.get(i..i + 2);
        // (bytes replaced, replacement, whether filler follows, fixed insertion)
        let mut patches: Vec<(usize, Vec<u8>, bool, &[u8])> = Vec::new();
        if matches!(w4, Some([0, 0, 0, 0]) | Some([0xff, 0xff, 0xff, 0xff])) {
            patches.push((4, vec![0, 0, 0, 1], true, b""));
        }
        if matches!(w2, Some([0, 0]) | Some([0xff, 0xff])) {
            patches.push((2, vec![0, 3], false, b"abc"));
        }
        if body[i] <= 1 {
            patches.push((1, vec![2], true, b""));
            patches.push((1, vec![4], false, b"abc"));
        }
        for (width, repl, filler, fixed) in patches {
            let mut cand = Vec::with_capacity(body.len() + 80);
            let build = |cand: &mut Vec<u8>, ins: &[u8]| {
                cand.clear();
                cand.extend_from_slice(&body[..i]);
                cand.extend_from_slice(&repl);
                cand.extend_from_slice(ins);
                cand.extend_from_slice(&body[i + width..]);
            };
            if !filler {
                build(&mut cand, fixed);
                accept(&cand, &mut out);
                continue;
            }
            'found: for p in &patterns {
                for &k in FILL_LENS {
                    build(&mut cand, &p[..k]);
                    if accept(&cand, &mut out) {
                        break 'found;
                    }
                }
            }
        }
    }
    out
}

/// The populator's candidates are hostile inputs too (a filler byte of 1 in a count's
/// high byte is a count of 16 million), so they are decoded under the same guard.
struct SeedCtx {
    stats: Stats,
    api: i16,
    target: Target,
}

impl SeedCtx {
    fn decode<T: Msg>(&mut self, body: &[u8], version: i16) -> Option<T> {
        let mut out = None;
        guarded(&mut self.stats, self.target, self.api, version, body, |b| {
            out = decode_body::<T>(b, version);
            out.is_some()
        });
        out
    }
}

struct SeedGen {
    rng: Rng,
    seeds: Vec<Seed>,
    sc: SeedCtx,
}

impl SeedGen {
    fn add<T: Msg>(
        &mut self,
        api: ApiKey,
        version: i16,
        target: Target,
        header: &[u8],
        body: Vec<u8>,
    ) {
        // Two rounds: arrays of elements that themselves hold a populated array
        // (a topic with a partition) come from populating a populated body.
        let mut bodies = vec![(body.clone(), false)];
        self.sc.api = api as i16;
        self.sc.target = match target {
            Target::Request => Target::RequestBody,
            _ => Target::ResponseBody,
        };
        let first = populate::<T>(&body, version, &mut self.rng, 6, &mut self.sc);
        for b in first.iter().take(3) {
            for b2 in populate::<T>(b, version, &mut self.rng, 3, &mut self.sc) {
                bodies.push((b2, true));
            }
        }
        bodies.extend(first.into_iter().map(|b| (b, true)));
        for (b, populated) in bodies {
            let mut frame = header.to_vec();
            frame.extend_from_slice(&b);
            self.seeds.push(Seed {
                api,
                version,
                target,
                frame,
                body_offset: header.len(),
                populated,
            });
        }
    }
}

impl Visit for SeedGen {
    fn visit<Req: Msg, Resp: Msg>(&mut self, api: ApiKey) {
        let range = api.valid_versions();
        for version in range.min..=range.max {
            let header = RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(0x0102_0304)
                .with_client_id(Some(StrBytes::from_static_str("fuzz-client")));
            let mut h = BytesMut::new();
            if header
                .encode(&mut h, api.request_header_version(version))
                .is_ok()
            {
                if let Some(body) = encode_body(&Req::default(), version) {
                    self.add::<Req>(api, version, Target::Request, &h, body);
                }
            }
            let mut h = BytesMut::new();
            if ResponseHeader::default()
                .with_correlation_id(0x0102_0304)
                .encode(&mut h, api.response_header_version(version))
                .is_ok()
            {
                if let Some(body) = encode_body(&Resp::default(), version) {
                    self.add::<Resp>(api, version, Target::Response, &h, body);
                }
            }
        }
    }
}

fn build_seeds(rng: &mut Rng) -> (Vec<Seed>, Stats) {
    let mut gen = SeedGen {
        rng: Rng(rng.next()),
        seeds: Vec::new(),
        sc: SeedCtx {
            stats: Stats::default(),
            api: -1,
            target: Target::RequestBody,
        },
    };
    for api in ApiKey::iter() {
        dispatch(api, &mut gen);
    }
    (gen.seeds, gen.sc.stats)
}

/// Decodes a saved body at its version (replay of a seed-time failure).
struct DecodeBody<'a> {
    body: &'a [u8],
    version: i16,
    request: bool,
}

impl Visit for DecodeBody<'_> {
    fn visit<Req: Msg, Resp: Msg>(&mut self, _api: ApiKey) {
        if self.request {
            decode_body::<Req>(self.body, self.version);
        } else {
            decode_body::<Resp>(self.body, self.version);
        }
    }
}

// ------------------------------------------------------------------ targets

/// Everything the pure proxy functions need, built once.
struct Ctx {
    map: VirtualMap,
    sni_map: VirtualMap,
    table: api_versions::ApiTable,
    sasl: ServerSasl,
    /// Proxies of one and of two clusters whose brokers refuse every connection:
    /// the request path runs in full, and what it asks upstream fails at once.
    proxies: [Arc<Proxy>; 2],
    _state: tempfile::TempDir,
}

/// A proxy over `clusters` clusters at a loopback port nothing listens on.
fn proxy(clusters: usize, dir: &std::path::Path) -> Arc<Proxy> {
    let mut toml = format!(
        "[proxy]\nstate_dir = \"{}\"\n",
        dir.join(format!("state-{clusters}")).display()
    );
    for (i, name) in ["source", "target"].iter().take(clusters).enumerate() {
        toml.push_str(&format!(
            "[clusters.{name}]\nbootstrap = [\"127.0.0.1:1\"]\nnode_id_offset = {}\n",
            i * 1000
        ));
    }
    toml.push_str("[routes]\ndefault_cluster = \"source\"\n");
    if clusters > 1 {
        toml.push_str(
            "[routes.topics.\"abc\"]\nproduce = \"target\"\nrename = { target = \"t.abc\" }\n\
             [routes.groups.\"g\"]\ncluster = \"target\"\n",
        );
    }
    let config = Config::from_toml(&toml, Vec::<(String, String)>::new(), dir).expect("config");
    Proxy::new(config, None).expect("proxy")
}

impl Ctx {
    fn new() -> Ctx {
        let map = VirtualMap {
            node_id_offset: 1000,
            advertised_host: "proxy.local".into(),
            broker_port_base: 9100,
            cluster_id: "switchyard".into(),
            sni_pattern: None,
            listener_port: 9092,
        };
        let sni_map = VirtualMap {
            sni_pattern: Some("b{node}.kafka.example.com".into()),
            ..map.clone()
        };
        // Every API at the widest range, so ApiVersions is answered for any version.
        let everything: switchyard::upstream::ApiRanges =
            ApiKey::iter().map(|k| (k as i16, (0, i16::MAX))).collect();
        let table = api_versions::build_table([&everything]);
        let mut credentials = Credentials::default();
        let mut entries = std::collections::BTreeMap::new();
        for (m, h) in [
            (sasl_auth::SCRAM_SHA_256, sasl_auth::Hash::Sha256),
            (sasl_auth::SCRAM_SHA_512, sasl_auth::Hash::Sha512),
        ] {
            entries.insert(m.to_string(), ScramEntry::new(h, "secret", 4096));
        }
        credentials.users.insert("alice".into(), entries);
        let state = tempfile::tempdir().expect("state dir");
        let proxies = [proxy(1, state.path()), proxy(2, state.path())];
        Ctx {
            proxies,
            _state: state,
            map,
            sni_map,
            table,
            sasl: ServerSasl {
                mechanisms: vec![
                    sasl_auth::PLAIN.into(),
                    sasl_auth::SCRAM_SHA_256.into(),
                    sasl_auth::SCRAM_SHA_512.into(),
                ],
                credentials,
            },
        }
    }
}

/// Highest version the proxy lets clients use for `api`, if it handles it at all:
/// the handlers only ever see these (the connection checks first).
fn supported(api: ApiKey, version: i16) -> bool {
    handlers::SUPPORTED
        .iter()
        .any(|(k, cap)| *k == api && version >= api.valid_versions().min && version <= *cap)
}

struct DecodeRequest<'a> {
    frame: &'a codec::RequestFrame,
    ok: bool,
}

impl Visit for DecodeRequest<'_> {
    fn visit<Req: Msg, Resp: Msg>(&mut self, _api: ApiKey) {
        self.ok = self.frame.decode::<Req>().is_ok();
    }
}

struct DecodeResponse {
    api: ApiKey,
    version: i16,
    frame: Bytes,
    ok: bool,
    /// The decoded message does not re-encode to the size the crate computes for it.
    /// That is kafka-protocol 0.18's handling of tagged-field tags of 2^31 and more:
    /// decoded as u32, kept as a negative i32 key, counted in the tagged-field count
    /// but never written, so the re-encoded message is corrupt (not a crash; the
    /// peer that sent the invalid tag gets an invalid frame back).
    tag_bug: bool,
}

impl Visit for DecodeResponse {
    fn visit<Req: Msg, Resp: Msg>(&mut self, _api: ApiKey) {
        match codec::decode_response::<Resp>(self.api, self.version, self.frame.clone()) {
            Ok((_, m)) => {
                self.ok = true;
                let size = m.compute_size(self.version).ok();
                self.tag_bug = size != encode_body(&m, self.version).map(|b| b.len());
            }
            Err(_) => self.ok = false,
        }
    }
}

/// A client frame, as the connection's reader handles it: header, then the body at
/// the header's api and version, then the pure request handlers.
fn run_request(input: &[u8], ctx: &Ctx) -> bool {
    let Ok(frame) = codec::parse_request(Bytes::copy_from_slice(input)) else {
        return false;
    };
    let mut d = DecodeRequest {
        frame: &frame,
        ok: false,
    };
    dispatch(frame.api, &mut d);
    let (api, version) = (frame.api, frame.version());
    if api == ApiKey::ApiVersions {
        let _ = api_versions::respond(&frame, &ctx.table);
    }
    if matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        // PLAIN (state 1) runs a key derivation per attempt, far too slow for a
        // fuzz loop; its parsing has its own randomised test in src/sasl.rs.
        for state in [0, 2, 3] {
            let mut session = Session::new(ip, None);
            session.sasl = match state {
                0 => SaslState::Start,
                1 => SaslState::Mechanism(sasl_auth::PLAIN.into()),
                2 => SaslState::Mechanism(sasl_auth::SCRAM_SHA_256.into()),
                _ => match ScramServer::start(
                    &ctx.sasl.credentials,
                    sasl_auth::SCRAM_SHA_512,
                    b"n,,n=alice,r=fuzz",
                ) {
                    Ok((s, _)) => SaslState::Scram(s),
                    Err(_) => SaslState::Start,
                },
            };
            // Failed logins are answered after a delay: on a runtime with paused
            // time that delay passes at once.
            SASL_RUNTIME.with(|rt| {
                let _ = rt.block_on(handlers::sasl::handle(&ctx.sasl, &mut session, &frame));
            });
        }
    }
    if supported(api, version) {
        let _ = codec::produce_acks(&frame);
        // The one request path, as a connection to each cluster runs it.
        SASL_RUNTIME.with(|rt| {
            rt.block_on(async {
                for proxy in &ctx.proxies {
                    for view in proxy.clusters() {
                        for map in [&ctx.map, &ctx.sni_map] {
                            let mut session = Session::new([127, 0, 0, 1].into(), None);
                            let mut c = handlers::Ctx {
                                shared: &**proxy,
                                routes: proxy.routes(),
                                cluster: view,
                                map,
                                session: &mut session,
                            };
                            let _ = handlers::dispatch(&mut c, &frame).await;
                        }
                    }
                }
            })
        });
    }
    d.ok
}

thread_local! {
    static SASL_RUNTIME: tokio::runtime::Runtime = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt
    };
}

fn topic(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// A routing plan as a multi-cluster Produce/Fetch/ListOffsets leaves it: some
/// partitions refused, topic names the populator uses renamed.
fn plan(strip_records: bool) -> Plan {
    let mut p = Plan {
        refused: vec![Refused {
            topic: topic("moved-away"),
            partitions: vec![0, 1, 7],
        }],
        strip_records,
        ..Plan::default()
    };
    p.renames.insert(topic("abc"), topic("logical-abc"));
    p.renames.insert(topic(""), topic("logical-empty"));
    p
}

fn renames() -> HashMap<TopicName, TopicName> {
    [
        (topic("abc"), topic("logical-abc")),
        (topic(""), topic("x")),
    ]
    .into_iter()
    .collect()
}

/// The rewrites the proxy applies to a response of `api`, with the client's api and
/// version each answers.
fn rewrites_for(
    api: ApiKey,
    version: i16,
    rng_bit: bool,
    routes: &Arc<RouteTable>,
) -> Vec<(ResponseRewrite, ApiKey, i16)> {
    let same = |r: ResponseRewrite| (r, api, version);
    // Groups "g" (routed to the target) and "abc" (to the source), as the target sees
    // them: one answered by the proxy, one forwarded.
    let groups = || {
        let ids = [
            StrBytes::from_static_str("g"),
            StrBytes::from_static_str("abc"),
        ];
        Box::new(GroupsPlan::new(routes, "target", ids.iter()))
    };
    match api {
        ApiKey::ListGroups => vec![same(ResponseRewrite::ListGroups {
            routes: routes.clone(),
            cluster: "target".into(),
        })],
        ApiKey::DescribeGroups => vec![same(ResponseRewrite::Groups(groups()))],
        ApiKey::Metadata => vec![same(ResponseRewrite::Metadata)],
        ApiKey::FindCoordinator => vec![same(ResponseRewrite::FindCoordinator)],
        ApiKey::DescribeCluster => vec![same(ResponseRewrite::DescribeCluster)],
        ApiKey::Fetch => vec![
            same(ResponseRewrite::Fetch(None)),
            same(ResponseRewrite::Fetch(Some(Box::new(plan(rng_bit))))),
        ],
        ApiKey::ListOffsets => vec![
            same(ResponseRewrite::ListOffsets(None)),
            same(ResponseRewrite::ListOffsets(Some(Box::new(plan(false))))),
            (
                ResponseRewrite::EpochFromListOffsets(EpochQuery {
                    topics: vec![
                        (topic("abc"), vec![(0, 5), (1, -1)]),
                        (topic(""), vec![(0, 0)]),
                    ],
                    renamed: vec![(topic("abc"), topic("logical-abc"))],
                }),
                ApiKey::OffsetForLeaderEpoch,
                if rng_bit { 4 } else { 2 },
            ),
        ],
        ApiKey::OffsetFetch => vec![
            same(ResponseRewrite::OffsetFetch),
            same(ResponseRewrite::OffsetsRenamed(renames())),
            same(ResponseRewrite::Groups(groups())),
        ],
        ApiKey::OffsetCommit => vec![same(ResponseRewrite::OffsetsRenamed(renames()))],
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            vec![same(ResponseRewrite::Configs)]
        }
        ApiKey::Produce => vec![same(ResponseRewrite::Produce(Box::new(plan(false))))],
        ApiKey::InitProducerId => vec![same(ResponseRewrite::InitProducerId {
            cluster: 3,
            name: "target".into(),
            producers: std::sync::Arc::new(Default::default()),
            transaction_timeout_ms: 60_000,
        })],
        _ => Vec::new(),
    }
}

/// An upstream response frame, as the connection's pump handles it: decoded at the
/// version the request was forwarded with, then every rewrite that applies. A
/// rewritten frame must decode at the client's version: the client would otherwise
/// get an answer it cannot read.
fn run_response(api: ApiKey, version: i16, input: &[u8], ctx: &Ctx, bit: bool) -> bool {
    let frame = Bytes::copy_from_slice(input);
    let mut d = DecodeResponse {
        api,
        version,
        frame: frame.clone(),
        ok: false,
        tag_bug: false,
    };
    dispatch(api, &mut d);
    if !supported(api, version) {
        return d.ok;
    }
    if d.tag_bug {
        TAG_BUG.fetch_add(1, Ordering::Relaxed);
    }
    for (rewrite, client_api, client_version) in
        rewrites_for(api, version, bit, &ctx.proxies[1].routes())
    {
        let fwd = Forwarded {
            upstream_api: api,
            upstream_version: version,
            rewrite,
        };
        for map in [&ctx.map, &ctx.sni_map] {
            let Ok(out) =
                handlers::rewrite_response(&fwd, client_api, client_version, frame.clone(), map)
            else {
                continue;
            };
            if out == frame {
                continue;
            }
            let mut back = DecodeResponse {
                api: client_api,
                version: client_version,
                frame: out.clone(),
                ok: false,
                tag_bug: false,
            };
            dispatch(client_api, &mut back);
            assert!(
                back.ok || d.tag_bug,
                "rewrite {:?} produced a frame that does not decode at {client_api:?} v{client_version}: {}",
                fwd.rewrite,
                hex(&out)
            );
        }
    }
    d.ok
}

/// A byte stream of frames cut into random chunks, through the connection's framing.
/// Input layout: max frame (u32), chunking seed (u32), then the stream.
fn run_frames(input: &[u8]) -> bool {
    if input.len() < 8 {
        return false;
    }
    let max = u32::from_be_bytes(input[0..4].try_into().unwrap()) as usize;
    let mut rng = Rng(u32::from_be_bytes(input[4..8].try_into().unwrap()) as u64);
    let stream = &input[8..];
    let mut buf = BytesMut::new();
    let (mut fed, mut consumed) = (0usize, 0usize);
    let mut frames = 0;
    while fed < stream.len() {
        let n = 1 + rng.below((stream.len() - fed).min(97));
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            let checked = codec::check_frame(&buf, max);
            match codec::take_frame(&mut buf, max) {
                Ok(Some(f)) => {
                    let declared =
                        i32::from_be_bytes(stream[consumed..consumed + 4].try_into().unwrap());
                    assert!(f.len() <= max, "frame of {} > max {max}", f.len());
                    assert_eq!(declared as usize, f.len(), "frame length");
                    assert_eq!(before - buf.len(), 4 + f.len(), "bytes consumed");
                    assert_eq!(&f[..], &stream[consumed + 4..consumed + 4 + f.len()]);
                    assert_eq!(checked, Ok(Framing::Complete(f.len())));
                    consumed += 4 + f.len();
                    frames += 1;
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "incomplete frame consumed bytes");
                    assert!(
                        matches!(checked, Ok(Framing::Incomplete(n)) if n > 0
                            && before + n <= 4 + max),
                        "{checked:?}"
                    );
                    break;
                }
                Err(e) => {
                    // The connection closes here; the refusal must be justified.
                    let declared =
                        i32::from_be_bytes(stream[consumed..consumed + 4].try_into().unwrap());
                    assert!(
                        declared < 0 || declared as usize > max,
                        "{e} for {declared}"
                    );
                    assert_eq!(buf.len(), before, "refused frame consumed bytes");
                    return frames > 0;
                }
            }
        }
    }
    assert_eq!(consumed + buf.len(), stream.len(), "bytes lost");
    frames > 0
}

/// A records blob, as the switch code walks and patches it (producer id rewrite)
/// and as the MM2 readers decode it.
fn run_records(input: &[u8]) -> bool {
    let ok = match producers::batches(input) {
        Ok(batches) => {
            let table = producers::Producers::default();
            for b in batches {
                assert!(b.at + b.len <= input.len());
                // Sequence and epoch arithmetic on the batch's own numbers, at home
                // and on a cluster that issued a foreign id.
                let (home, _) = producers::from_virtual(b.producer_id);
                table.set_foreign(b.producer_id, 1, 77, 3, 0);
                for cluster in [home, 1] {
                    if let Ok(up) = table.plan(&b, "t", 0, cluster) {
                        let mut copy = input[b.at..b.at + b.len].to_vec();
                        producers::patch_batch(
                            &mut copy,
                            up.producer_id,
                            up.epoch,
                            up.base_sequence,
                        );
                        assert!(producers::crc_ok(&copy), "patched batch fails its CRC");
                    }
                }
            }
            true
        }
        Err(_) => false,
    };
    let mut buf = Bytes::copy_from_slice(input);
    let decoded = RecordBatchDecoder::decode_all(&mut buf).is_ok();
    // The decoder checks each v2 batch's CRC first, so a mutation would almost never
    // reach the decompressors and the record parser behind them. Once more with the
    // CRCs made right for the mutated bytes.
    let mut fixed = input.to_vec();
    let mut at = 0;
    while at + producers::HEADER_LEN <= fixed.len() {
        let len = i32::from_be_bytes(fixed[at + 8..at + 12].try_into().unwrap());
        // At least a header, so the loop always advances.
        let end = at
            .saturating_add(12 + len.max(0) as usize)
            .clamp(at + producers::HEADER_LEN, fixed.len());
        if fixed[at + 16] == 2 {
            let crc = crc32c::crc32c(&fixed[at + 21..end]);
            fixed[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
        }
        at = end;
    }
    let mut buf = Bytes::from(fixed);
    ok | decoded | RecordBatchDecoder::decode_all(&mut buf).is_ok()
}

/// SASL messages from a client: PLAIN, and SCRAM client-first then client-final
/// (separated by 0xfe in the input).
fn run_sasl(input: &[u8], ctx: &Ctx) -> bool {
    let creds = &ctx.sasl.credentials;
    let (first, last) = match input.iter().position(|b| *b == 0xfe) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &b""[..]),
    };
    // A PLAIN login of a known user costs 4096 PBKDF2 rounds; the parsing is the
    // same for any user, so only unknown users are tried at random.
    if !first.windows(5).any(|w| w == b"alice") {
        let _ = sasl_auth::plain_login(creds, first);
    }
    let mut ok = false;
    for mech in [sasl_auth::SCRAM_SHA_256, sasl_auth::SCRAM_SHA_512] {
        if let Ok((server, _)) = ScramServer::start(creds, mech, first) {
            ok = true;
            let _ = server.finish(last);
        }
    }
    ok
}

// ---------------------------------------------------------------- mutations

const INTERESTING_32: &[[u8; 4]] = &[
    [0x7f, 0xff, 0xff, 0xff],
    [0xff, 0xff, 0xff, 0xff],
    [0x80, 0, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 1],
    [0x7f, 0xff, 0xff, 0xfe],
    [0, 0x10, 0, 0],
];
const INTERESTING_16: &[[u8; 2]] = &[[0x7f, 0xff], [0xff, 0xff], [0x80, 0], [0, 0], [0, 1]];
const HUGE_VARINTS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0x07],
    &[0x80, 0x80, 0x80, 0x80, 0x08],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
];

fn overwrite(data: &mut Vec<u8>, at: usize, with: &[u8]) {
    for (i, b) in with.iter().enumerate() {
        match data.get_mut(at + i) {
            Some(d) => *d = *b,
            None => data.push(*b),
        }
    }
}

/// One to four random mutations. Most land in the body (`from`); a mutated header
/// is refused before any body is decoded, which is tested less often.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, from: usize, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let lo = if rng.chance(8) {
            0
        } else {
            from.min(data.len())
        };
        let span = data.len() - lo;
        let pos = lo + if span > 0 { rng.below(span) } else { 0 };
        match rng.below(12) {
            0 if span > 0 => data[pos] ^= 1 << rng.below(8),
            1 if span > 0 => {
                data[pos] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => 0x7f + rng.below(2) as u8,
                    _ => rng.byte(),
                }
            }
            2 => overwrite(data, pos, &INTERESTING_32[rng.below(INTERESTING_32.len())]),
            3 => overwrite(data, pos, &INTERESTING_16[rng.below(INTERESTING_16.len())]),
            4 => overwrite(data, pos, HUGE_VARINTS[rng.below(HUGE_VARINTS.len())]),
            5 => {
                let v = HUGE_VARINTS[rng.below(HUGE_VARINTS.len())];
                data.splice(pos..pos, v.iter().copied());
            }
            6 => data.truncate(pos),
            7 => {
                let n = 1 + rng.below(64);
                data.extend((0..n).map(|_| rng.byte()));
            }
            8 if !other.is_empty() => {
                let from_other = rng.below(other.len());
                data.truncate(pos);
                data.extend_from_slice(&other[from_other..]);
            }
            9 if span > 0 => {
                let end = (pos + 1 + rng.below(16)).min(data.len());
                data.drain(pos..end);
            }
            10 if span > 0 => {
                let end = (pos + 1 + rng.below(32)).min(data.len());
                let copy = data[pos..end].to_vec();
                let at = lo + rng.below(span);
                data.splice(at..at, copy);
            }
            _ => {
                // A small varint or count: arrays and strings of a few elements.
                data.splice(pos..pos, [rng.below(8) as u8]);
            }
        }
    }
}

// ------------------------------------------------------------------- phases

fn run_seed_input(stats: &mut Stats, ctx: &Ctx, s: &Seed, input: &[u8], bit: bool, version: i16) {
    match s.target {
        Target::Request => guarded(
            stats,
            Target::Request,
            s.api as i16,
            s.version,
            input,
            |i| run_request(i, ctx),
        ),
        _ => guarded(stats, Target::Response, s.api as i16, version, input, |i| {
            run_response(s.api, version, i, ctx, bit)
        }),
    }
}

/// For every API and version, a request and a response with content (populated when
/// the populator found a way, else the default): at every byte offset, an i32 of
/// 0x7fffffff written over the encoding, and a 5-byte huge varint written over it
/// and inserted into it. Wherever the decoder reads a count or a length, one of
/// these puts the largest value there, the class of the 40-byte Fetch that asked for
/// 200 GB. Deterministic and complete, so it runs first on every `cargo test`.
fn array_count_variants(stats: &mut Stats, ctx: &Ctx, seeds: &[Seed]) -> usize {
    let mut best: HashMap<(i16, i16, u8), &Seed> = HashMap::new();
    for s in seeds {
        let e = best
            .entry((s.api as i16, s.version, s.target as u8))
            .or_insert(s);
        if s.frame.len() > e.frame.len() {
            *e = s;
        }
    }
    let mut keys: Vec<_> = best.keys().copied().collect();
    keys.sort();
    let before = stats.inputs;
    let mut populated = 0;
    for k in &keys {
        let s = best[k];
        populated += s.populated as usize;
        for at in 0..s.frame.len() {
            let mut a = s.frame.clone();
            overwrite(&mut a, at, &[0x7f, 0xff, 0xff, 0xff]);
            run_seed_input(stats, ctx, s, &a, false, s.version);
            let mut b = s.frame.clone();
            overwrite(&mut b, at, HUGE_VARINTS[0]);
            run_seed_input(stats, ctx, s, &b, true, s.version);
            let mut c = s.frame.clone();
            c.splice(at..at, HUGE_VARINTS[0].iter().copied());
            run_seed_input(stats, ctx, s, &c, false, s.version);
        }
    }
    // Record batches: the record count, the lengths and the header count of each
    // record, the varint lengths inside compressed blocks.
    let records = record_seeds();
    for r in &records {
        // The seeds are valid (every compression codec): they must decode, or the
        // decoder's bounds reject real data.
        guarded(stats, Target::Records, -1, -1, r, |i| {
            let sets = RecordBatchDecoder::decode_all(&mut Bytes::copy_from_slice(i));
            assert!(sets.is_ok(), "valid record seed refused: {sets:?}");
            true
        });
        for at in 0..r.len() {
            for (insert, v) in [
                (false, &[0x7f, 0xff, 0xff, 0xff][..]),
                (false, HUGE_VARINTS[0]),
                (true, HUGE_VARINTS[0]),
            ] {
                let mut a = r.clone();
                if insert {
                    a.splice(at..at, v.iter().copied());
                } else {
                    overwrite(&mut a, at, v);
                }
                guarded(stats, Target::Records, -1, -1, &a, run_records);
            }
        }
    }
    // SASL texts: every token the parsers split on, and multi-byte characters, at
    // every position of every seed (a key of 3 bytes once panicked the parser).
    for seed in sasl_seeds() {
        for at in 0..=seed.len() {
            for t in SASL_TOKENS {
                let mut a = seed.clone();
                a.splice(at..at, t.bytes());
                guarded(stats, Target::Sasl, -1, -1, &a, |i| run_sasl(i, ctx));
            }
        }
    }
    println!(
        "fuzz: array-count variants: {} inputs over {} api/version/direction encodings ({} with populated arrays or strings) and {} record blobs, plus SASL token insertions, {} failures so far",
        stats.inputs - before,
        keys.len(),
        populated,
        records.len(),
        stats.failures
    );
    keys.len()
}

fn record_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 5,
            producer_epoch: 1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from(vec![b'v'; 10 * i as usize])),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"x")),
            )]
            .into_iter()
            .collect(),
        })
        .collect();
    for (version, compression) in [
        (2, Compression::None),
        (2, Compression::Gzip),
        (2, Compression::Snappy),
        (2, Compression::Lz4),
        (2, Compression::Zstd),
        (1, Compression::None),
        (0, Compression::None),
    ] {
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version,
            compression,
        };
        if RecordBatchEncoder::encode(&mut buf, &records, &opts).is_ok() {
            // Two batches back to back, as a Produce partition carries them.
            let mut two = buf.to_vec();
            two.extend_from_slice(&buf);
            out.push(buf.to_vec());
            out.push(two);
        }
    }
    out
}

fn sasl_seeds() -> Vec<Vec<u8>> {
    [
        &b"\0alice\0secret"[..],
        b"alice\0alice\0secret",
        b"\0mallory\0pw",
        b"n,,n=alice,r=abcdef\xfec=biws,r=abcdef,p=AAAA",
        b"n,a=alice,n=alice,r=x\xfec=biws,r=x,p=",
        b"y,,n=al=2Cice,r=n0nce\xfec=biws,r=n0nce,p=dGVzdA==",
        b"n,,n=,r=",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// Tokens the SASL parsers split on or decode, and multi-byte characters.
const SASL_TOKENS: &[&str] = &[
    ",",
    "=",
    "n=",
    "r=",
    "p=",
    "c=",
    "s=",
    "i=",
    "a=",
    "\0",
    "=2C",
    "=3D",
    ",p=",
    "n,,",
    "é",
    "€",
    "😀",
    "\u{fffd}",
    "é=",
    "€=",
    "😀=",
    ",€=",
    "\u{fffd}=",
];

fn random_frames_input(rng: &mut Rng) -> Vec<u8> {
    let max = [0usize, 1, 8, 100, 4096, 1 << 20][rng.below(6)];
    let mut v = Vec::new();
    v.extend_from_slice(&(max as u32).to_be_bytes());
    v.extend_from_slice(&(rng.next() as u32).to_be_bytes());
    for _ in 0..rng.below(8) {
        let len: i32 = match rng.below(10) {
            0 => -1 - rng.below(1000) as i32,
            1 => i32::MAX - rng.below(3) as i32,
            2 => (max as i32).saturating_add(rng.below(3) as i32),
            3 => 0,
            _ => rng.below(200.min(max + 1)) as i32,
        };
        v.extend_from_slice(&len.to_be_bytes());
        let body = if len > 0 { (len as usize).min(300) } else { 0 };
        v.extend((0..body).map(|_| rng.byte()));
    }
    v
}

fn random_inputs(stats: &mut Stats, ctx: &Ctx, seeds: &[Seed], n: u64, rng: &mut Rng) {
    let records = record_seeds();
    let sasl = sasl_seeds();
    // Seeds of one API, to splice two inputs of the same message type.
    let mut by_api: HashMap<(i16, u8), Vec<usize>> = HashMap::new();
    for (i, s) in seeds.iter().enumerate() {
        by_api
            .entry((s.api as i16, s.target as u8))
            .or_default()
            .push(i);
    }
    let apis: Vec<ApiKey> = ApiKey::iter().collect();
    let started = Instant::now();
    let mut next_report = 1u64 << 20;
    for i in 0..n {
        if i == next_report {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "fuzz: {i} random inputs in {secs:.0} s ({:.0}/s), {} failures",
                i as f64 / secs,
                stats.failures
            );
            next_report *= 2;
        }
        match rng.below(100) {
            0..=2 => {
                // Fully random bytes, as a request or as any API's response.
                let cap = if rng.chance(4) { 2048 } else { 64 };
                let len = rng.below(cap);
                let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                if rng.chance(2) {
                    guarded(stats, Target::Request, -1, -1, &input, |i| {
                        run_request(i, ctx)
                    });
                } else {
                    let api = apis[rng.below(apis.len())];
                    let r = api.valid_versions();
                    let v = r.min + rng.below((r.max - r.min + 1) as usize) as i16;
                    let bit = rng.chance(2);
                    guarded(stats, Target::Response, api as i16, v, &input, |i| {
                        run_response(api, v, i, ctx, bit)
                    });
                }
            }
            3..=5 => {
                let input = random_frames_input(rng);
                guarded(stats, Target::Frames, -1, -1, &input, run_frames);
            }
            6..=8 => {
                let mut input = records[rng.below(records.len())].clone();
                let other = &records[rng.below(records.len())];
                mutate(rng, &mut input, 0, other);
                guarded(stats, Target::Records, -1, -1, &input, run_records);
            }
            9..=10 => {
                let mut input = sasl[rng.below(sasl.len())].clone();
                for _ in 0..rng.below(3) {
                    let t = SASL_TOKENS[rng.below(SASL_TOKENS.len())].as_bytes();
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, t.iter().copied());
                }
                if rng.chance(2) {
                    let other = &sasl[rng.below(sasl.len())];
                    mutate(rng, &mut input, 0, other);
                }
                guarded(stats, Target::Sasl, -1, -1, &input, |i| run_sasl(i, ctx));
            }
            _ => {
                let s = &seeds[rng.below(seeds.len())];
                let same = &by_api[&(s.api as i16, s.target as u8)];
                let other = &seeds[same[rng.below(same.len())]];
                let mut input = s.frame.clone();
                mutate(
                    rng,
                    &mut input,
                    s.body_offset,
                    &other.frame[other.body_offset..],
                );
                // Now and then a broker answers at another version than asked.
                let mut version = s.version;
                if s.target == Target::Response && rng.chance(16) {
                    let r = s.api.valid_versions();
                    version = r.min + rng.below((r.max - r.min + 1) as usize) as i16;
                }
                let bit = rng.chance(2);
                run_seed_input(stats, ctx, s, &input, bit, version);
            }
        }
    }
}

/// In-memory sizes of the largest element types, for the allocation bound's
/// argument (see [`alloc_bound`]).
fn element_sizes() -> String {
    use std::mem::size_of;
    format!(
        "MetadataResponseTopic {}, MetadataResponsePartition {}, FetchableTopicResponse {}, PartitionData {}, DescribedGroupMember {}, DescribeConfigsResourceResult {}, CreatableTopic {}, Record {}",
        size_of::<metadata_response::MetadataResponseTopic>(),
        size_of::<metadata_response::MetadataResponsePartition>(),
        size_of::<fetch_response::FetchableTopicResponse>(),
        size_of::<fetch_response::PartitionData>(),
        size_of::<describe_groups_response::DescribedGroupMember>(),
        size_of::<describe_configs_response::DescribeConfigsResourceResult>(),
        size_of::<create_topics_request::CreatableTopic>(),
        size_of::<Record>(),
    )
}

/// Replays one saved failure: `SWITCHYARD_FUZZ_REPLAY=target/fuzz-failures/<file>`.
fn replay(path: &str, ctx: &Ctx, stats: &mut Stats) {
    let input = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let mut parts = name.split('-');
    let target = parts.next().unwrap_or("");
    let api = parts
        .next()
        .and_then(|a| ApiKey::iter().find(|k| format!("{k:?}") == a));
    let version = parts
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<i16>().ok())
        .unwrap_or(-1);
    match (target, api) {
        ("request", _) => guarded(stats, Target::Request, -1, -1, &input, |i| {
            run_request(i, ctx)
        }),
        ("response", Some(api)) => {
            for bit in [false, true] {
                guarded(stats, Target::Response, api as i16, version, &input, |i| {
                    run_response(api, version, i, ctx, bit)
                })
            }
        }
        ("frames", _) => guarded(stats, Target::Frames, -1, -1, &input, run_frames),
        ("records", _) => guarded(stats, Target::Records, -1, -1, &input, run_records),
        ("sasl", _) => guarded(stats, Target::Sasl, -1, -1, &input, |i| run_sasl(i, ctx)),
        (body @ ("requestbody" | "responsebody"), Some(api)) => {
            let request = body == "requestbody";
            let t = if request {
                Target::RequestBody
            } else {
                Target::ResponseBody
            };
            guarded(stats, t, api as i16, version, &input, |body| {
                let mut d = DecodeBody {
                    body,
                    version,
                    request,
                };
                dispatch(api, &mut d);
                true
            })
        }
        _ => panic!("cannot tell the target of {name}"),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim().replace('_', "");
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

fn main() {
    // `cargo test <filter>` passes the filter to every test binary: behave like a
    // libtest binary holding one test named "fuzz", so a filtered run of other
    // tests does not spend its time here.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("fuzz: test");
        return;
    }
    let mut filters: Vec<&String> = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            // libtest options that take a value as the next argument
            "--test-threads" | "--skip" | "--format" | "--color" | "--logfile" => {
                rest.next();
            }
            _ if a.starts_with('-') => {}
            _ => filters.push(a),
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| "fuzz".contains(f.as_str())) {
        return;
    }
    install_panic_hook();
    let ctx = Ctx::new();
    HARD_LIMIT.store(HARD_LIMIT_BYTES, Ordering::Relaxed);
    let mut stats = Stats::default();
    let started = Instant::now();
    if let Ok(path) = std::env::var("SWITCHYARD_FUZZ_REPLAY") {
        replay(&path, &ctx, &mut stats);
    } else {
        let n = env_u64("SWITCHYARD_FUZZ_INPUTS", 100_000);
        let seed = env_u64("SWITCHYARD_FUZZ_SEED", 0x5717_c4a2_d5ee_d001);
        println!("fuzz: element sizes (bytes): {}", element_sizes());
        // Seeds come from their own stream so the same seeds are used whatever
        // SWITCHYARD_FUZZ_SEED is.
        let (seeds, seed_stats) = build_seeds(&mut Rng(1));
        println!(
            "fuzz: {} seed encodings ({} populated) for {} apis from {} guarded decodes ({} failures), in {:.1} s",
            seeds.len(),
            seeds.iter().filter(|s| s.populated).count(),
            ApiKey::iter().count(),
            seed_stats.inputs,
            seed_stats.failures,
            started.elapsed().as_secs_f64()
        );
        stats.failures += seed_stats.failures;
        array_count_variants(&mut stats, &ctx, &seeds);
        let mut rng = Rng(seed);
        println!("fuzz: {n} random inputs, seed {seed:#x}");
        random_inputs(&mut stats, &ctx, &seeds, n, &mut rng);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut peaks = String::new();
    for t in [
        Target::Request,
        Target::Response,
        Target::Frames,
        Target::Records,
        Target::Sasl,
    ] {
        // Seed-time body decodes are reported with the seed line.
        let (peak, len) = stats.worst_peak[t as usize];
        let _ = write!(peaks, " {} {peak} B ({len}-byte input);", t.name());
    }
    println!(
        "fuzz: {} inputs ({} decoded) in {secs:.1} s; largest single allocation:{peaks} above 64 KiB at most {:.1} B per input byte",
        stats.inputs, stats.decoded, stats.worst_ratio
    );
    println!(
        "fuzz: {} responses hit the crate's tagged-field bug (tags >= 2^31 are dropped on re-encode; not a crash, see docs/fuzzing.md)",
        TAG_BUG.load(Ordering::Relaxed)
    );
    println!("fuzz: {} inputs, {} crashes", stats.inputs, stats.failures);
    if stats.failures > 0 {
        std::process::exit(1);
    }
}
