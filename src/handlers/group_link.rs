//! What a group request's answer does on its way back: a link from the client's
//! identity to the group once the broker accepted it, and the settle step of a
//! group switch (an empty first assignment on the new cluster).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, HeartbeatResponse, JoinGroupResponse, OffsetCommitResponse, SyncGroupResponse,
};
use kafka_protocol::ResponseError;

use super::{Action, ResponseRewrite};
use crate::codec::{self, DecodeError};
use crate::switch::groups::SyncVerdict;
use crate::switch::identity::{Identities, IdentityKey};

/// A SyncGroup answer on a group's new cluster after its switch flipped: recorded,
/// and made an empty assignment when that is the member's first there.
#[derive(Debug)]
pub struct SyncSettle {
    pub switches: Arc<crate::switch::groups::GroupSwitches>,
    pub group: String,
    pub member: String,
    pub key: IdentityKey,
    pub verdict: SyncVerdict,
}

/// The answer the client gets for a SyncGroup under [`SyncSettle`].
pub fn rewrite_sync_settle(
    frame: Bytes,
    version: i16,
    settle: &SyncSettle,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<SyncGroupResponse>(ApiKey::SyncGroup, version, frame.clone())?;
    if resp.error_code != 0 {
        return Ok(frame);
    }
    settle
        .switches
        .synced(&settle.group, &settle.member, &settle.key, settle.verdict);
    if settle.verdict == SyncVerdict::Pass {
        return Ok(frame);
    }
    tracing::info!(group = %settle.group, member = %settle.member, "first assignment on the new cluster answered empty; the member rejoins for its real one");
    resp.assignment = empty_assignment(&resp.assignment);
    codec::encode_response(ApiKey::SyncGroup, version, header.correlation_id, &resp)
}

/// A consumer-protocol assignment with no partitions and no user data, at the
/// version of `real` (0 when it has none).
pub(crate) fn empty_assignment(real: &Bytes) -> Bytes {
    let version = match real.get(..2) {
        Some(v) => i16::from_be_bytes([v[0], v[1]]).max(0),
        None => 0,
    };
    let mut out = BytesMut::with_capacity(10);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // no topics
    out.extend_from_slice(&(-1i32).to_be_bytes()); // null user data
    out.freeze()
}

/// Links an identity to a group when the broker accepted the request that showed
/// the membership (see [`confirm_group_link`]).
#[derive(Debug)]
pub struct GroupLink {
    pub identities: Identities,
    pub key: IdentityKey,
    pub group: String,
    /// Heartbeat: confirm an existing link again, create none.
    pub refresh_only: bool,
    /// What the response needs besides.
    pub then: ResponseRewrite,
}

/// Makes a forwarded group request confirm `link` on its response.
pub(crate) fn with_group_link(action: Action, mut link: GroupLink) -> Action {
    match action {
        Action::Forward {
            frame,
            response: Some(mut fwd),
        } => {
            // The action's own rewrite applies after the link; a SyncGroup brings
            // its own (`then`, set by the caller) and the plain handler none.
            let inner = std::mem::replace(&mut fwd.rewrite, ResponseRewrite::None);
            if !matches!(inner, ResponseRewrite::None) {
                link.then = inner;
            }
            fwd.rewrite = ResponseRewrite::GroupLink(Box::new(link));
            Action::Forward {
                frame,
                response: Some(fwd),
            }
        }
        other => other,
    }
}

/// Whether the upstream accepted a group request, read from its response: no
/// error for JoinGroup, SyncGroup and Heartbeat; for OffsetCommit at least one
/// partition committed (group-level refusals such as UNKNOWN_MEMBER_ID or
/// GROUP_AUTHORIZATION_FAILED come back on every partition).
pub fn group_request_accepted(frame: &Bytes, api: ApiKey, version: i16) -> bool {
    let ok = |code: i16| ResponseError::try_from_code(code).is_none();
    let frame = frame.clone();
    match api {
        ApiKey::JoinGroup => codec::decode_response::<JoinGroupResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::SyncGroup => codec::decode_response::<SyncGroupResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::Heartbeat => codec::decode_response::<HeartbeatResponse>(api, version, frame)
            .is_ok_and(|(_, r)| ok(r.error_code)),
        ApiKey::OffsetCommit => codec::decode_response::<OffsetCommitResponse>(api, version, frame)
            .is_ok_and(|(_, r)| {
                r.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| ok(p.error_code))
            }),
        _ => false,
    }
}

/// Confirms a group link on the upstream's answer to the request that showed it.
/// A response the proxy cannot read links nothing; the inner rewrite then decides
/// what the client gets.
pub fn confirm_group_link(frame: &Bytes, api: ApiKey, version: i16, link: &GroupLink) {
    if !group_request_accepted(frame, api, version) {
        return;
    }
    if link.refresh_only {
        link.identities.refresh_group(&link.key, &link.group);
    } else {
        link.identities.link_group(&link.key, &link.group);
    }
}
