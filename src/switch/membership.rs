//! Which Switchyard instances take part in a migration, and which one leads: a
//! Kafka group on the coordination cluster, of Switchyard's own protocol type, the
//! way Kafka Connect workers find each other. The group coordinator (a broker)
//! decides membership: an instance whose heartbeats stop for the session timeout
//! is removed, every instance rejoins, and the leader of the new generation hands
//! every member the same view (the generation, the leader, the members).
//!
//! Each instance joins with its instance name as its static member id (KIP-345),
//! so a restarted instance takes its place back at once, and a second process with
//! the same name is refused (`FENCED_INSTANCE_ID`) instead of silently sharing it.
//!
//! An instance knows when it may have been removed without hearing of it: its
//! membership counts from the moment it *sent* its latest heartbeat that was
//! answered, and lapses a tenth of the session timeout before the coordinator could
//! remove it. While it has lapsed, the instance does not serve writes, fetches or
//! group requests (see `Coordinator::holds`), because the others may be switching
//! without it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use super::ops;
use crate::upstream::ClusterView;

/// The group's protocol type: no consumer or Connect worker can join it by mistake.
pub const PROTOCOL_TYPE: &str = "switchyard";
/// The one protocol this version speaks inside the group.
const PROTOCOL: &str = "switchyard-1";

/// The group as its leader last handed it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    pub generation: i32,
    /// The leader's instance name.
    pub leader: String,
    /// Every member's instance name.
    pub members: BTreeSet<String>,
}

/// What a member tells the leader when it joins.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JoinInfo {
    instance: String,
}

#[derive(Debug, Default)]
struct State {
    /// The latest view, while this instance is a member of its generation.
    view: Option<View>,
    member_id: String,
    /// How many times this instance became a member (from not being one).
    joins: u64,
    /// When the latest answered heartbeat (or join) was sent.
    confirmed: Option<Instant>,
    error: Option<String>,
}

/// This instance's membership of the coordination group.
pub struct Membership {
    cluster: Arc<ClusterView>,
    group: String,
    instance: String,
    session: Duration,
    timeout: Duration,
    state: Mutex<State>,
    /// Bumped on every change of view (a new generation, or the view lost).
    changed: watch::Sender<u64>,
}

/// Errors that mean "find the coordinator again".
fn moved(code: i16) -> bool {
    matches!(code, 14..=16)
}
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

impl Membership {
    pub fn new(
        cluster: Arc<ClusterView>,
        group: String,
        instance: String,
        session: Duration,
        timeout: Duration,
    ) -> Membership {
        Membership {
            cluster,
            group,
            instance,
            session,
            timeout,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// How long after its latest answered heartbeat this instance counts itself a
    /// member: a tenth short of the session timeout, so it stops before the
    /// coordinator can have removed it.
    fn lapse(&self) -> Duration {
        self.session - self.session / 10
    }

    fn heartbeat_every(&self) -> Duration {
        self.session / 4
    }

    /// The current view, while this instance is a member whose membership has not
    /// lapsed.
    pub fn view(&self) -> Option<View> {
        let s = self.state.lock().expect("membership lock");
        if self.fresh(&s) {
            s.view.clone()
        } else {
            None
        }
    }

    /// How many times this instance has become a member, while it is one and its
    /// membership has not lapsed; nothing copied (every request asks).
    pub fn joins(&self) -> Option<u64> {
        let s = self.state.lock().expect("membership lock");
        (self.fresh(&s) && s.view.is_some()).then_some(s.joins)
    }

    fn fresh(&self, s: &State) -> bool {
        s.confirmed.is_some_and(|t| t.elapsed() < self.lapse())
    }

    /// The view last handed out, lapsed or not (for `/status`).
    pub fn last_view(&self) -> Option<View> {
        self.state.lock().expect("membership lock").view.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.view().is_some_and(|v| v.leader == self.instance)
    }

    pub fn error(&self) -> Option<String> {
        self.state.lock().expect("membership lock").error.clone()
    }

    /// Notified on every change of view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set_view(&self, view: Option<View>, confirmed: Option<Instant>) {
        let mut s = self.state.lock().expect("membership lock");
        if s.view != view {
            match &view {
                Some(v) => {
                    tracing::info!(group = %self.group, generation = v.generation, leader = %v.leader, members = ?v.members, "coordination: group view")
                }
                None => {
                    tracing::warn!(group = %self.group, "coordination: not a member of the group")
                }
            }
            if s.view.is_none() && view.is_some() {
                s.joins += 1;
            }
            s.view = view;
            self.changed.send_modify(|n| *n += 1);
        }
        if confirmed.is_some() {
            s.confirmed = confirmed;
            s.error = None;
        }
    }

    fn failed(&self, e: String) {
        self.state.lock().expect("membership lock").error = Some(e);
    }

    /// Joins the group and stays in it: runs for the life of the process.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.join().await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    self.beat().await;
                }
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "coordination: cannot join the group; retrying");
                    self.failed(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Removes other instances from the group (LeaveGroup by instance name): used
    /// for a member that does not acknowledge a fence within the session timeout.
    pub async fn remove(&self, instances: &[String]) -> Result<(), String> {
        let members: Vec<(String, Option<String>)> = instances
            .iter()
            .map(|i| (String::new(), Some(i.clone())))
            .collect();
        ops::remove_members(&self.cluster, &self.group, &members, self.timeout).await
    }

    /// Leaves the group (a clean stop): the others go on without waiting for this
    /// instance's session to expire.
    pub async fn leave(&self) {
        let member_id = self.member_id();
        if member_id.is_empty() {
            return;
        }
        let me = [(member_id, Some(self.instance.clone()))];
        match ops::remove_members(&self.cluster, &self.group, &me, self.timeout).await {
            Ok(()) => tracing::info!(group = %self.group, "coordination: left the group"),
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "coordination: could not leave the group; the others wait for this instance's session to expire")
            }
        }
        self.set_view(None, None);
    }

    fn member_id(&self) -> String {
        self.state
            .lock()
            .expect("membership lock")
            .member_id
            .clone()
    }

    fn group_id(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.group.clone()))
    }

    fn version(&self, api: ApiKey, cap: i16) -> Result<i16, String> {
        self.cluster
            .version_for(api, cap)
            .ok_or_else(|| format!("`{}` does not support {api:?}", self.cluster.name()))
    }

    /// One JoinGroup (twice when the coordinator first hands out a member id) and
    /// the SyncGroup after it.
    async fn join(&self) -> Result<(), String> {
        let coord = ops::coordinator(&self.cluster, &self.group, self.timeout).await?;
        let jv = self.version(ApiKey::JoinGroup, 7)?;
        let sv = self.version(ApiKey::SyncGroup, 5)?;
        let instance_id = (jv >= 5).then(|| StrBytes::from_string(self.instance.clone()));
        let info = serde_json::to_vec(&JoinInfo {
            instance: self.instance.clone(),
        })
        .expect("serializes");
        // The coordinator answers a join once every member rejoined, or after the
        // rebalance timeout (the session timeout here): wait for that and more.
        let wait = self.session + self.timeout;
        let mut attempts = 0;
        let joined = loop {
            attempts += 1;
            let member_id = self
                .state
                .lock()
                .expect("membership lock")
                .member_id
                .clone();
            let req = JoinGroupRequest::default()
                .with_group_id(self.group_id())
                .with_session_timeout_ms(self.session.as_millis() as i32)
                .with_rebalance_timeout_ms(self.session.as_millis() as i32)
                .with_member_id(StrBytes::from_string(member_id))
                .with_group_instance_id(instance_id.clone())
                .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(PROTOCOL))
                    .with_metadata(Bytes::from(info.clone()))]);
            let sent = Instant::now();
            let resp: JoinGroupResponse = self
                .cluster
                .call_to(Some(coord), ApiKey::JoinGroup, jv, &req, wait)
                .await
                .map_err(|e| format!("joining `{}`: {e}", self.group))?;
            match resp.error_code {
                0 => break (resp, sent),
                MEMBER_ID_REQUIRED | UNKNOWN_MEMBER_ID if attempts < 3 => {
                    self.state.lock().expect("membership lock").member_id =
                        if resp.error_code == MEMBER_ID_REQUIRED {
                            resp.member_id.to_string()
                        } else {
                            String::new()
                        };
                }
                REBALANCE_IN_PROGRESS if attempts < 3 => {}
                FENCED_INSTANCE_ID => {
                    return Err(format!(
                        "another process has joined `{}` as instance `{}`; every instance needs its own [coordination] instance name",
                        self.group, self.instance
                    ))
                }
                code => return Err(format!("joining `{}`: error {code}", self.group)),
            }
        };
        let (resp, sent) = joined;
        let member_id = resp.member_id.to_string();
        self.state.lock().expect("membership lock").member_id = member_id.clone();
        let mut assignments = Vec::new();
        if resp.leader == resp.member_id {
            // The leader hands every member the same view.
            let members: BTreeSet<String> = resp
                .members
                .iter()
                .filter_map(|m| {
                    serde_json::from_slice::<JoinInfo>(&m.metadata)
                        .ok()
                        .map(|i| i.instance)
                        .or_else(|| m.group_instance_id.as_ref().map(|s| s.to_string()))
                })
                .collect();
            let view = View {
                generation: resp.generation_id,
                leader: self.instance.clone(),
                members,
            };
            let bytes = Bytes::from(serde_json::to_vec(&view).expect("serializes"));
            assignments = resp
                .members
                .iter()
                .map(|m| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(m.member_id.clone())
                        .with_assignment(bytes.clone())
                })
                .collect();
        }
        let req = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(resp.generation_id)
            .with_member_id(resp.member_id.clone())
            .with_group_instance_id(instance_id)
            .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
            .with_protocol_name(Some(StrBytes::from_static_str(PROTOCOL)))
            .with_assignments(assignments);
        let synced: SyncGroupResponse = self
            .cluster
            .call_to(Some(coord), ApiKey::SyncGroup, sv, &req, wait)
            .await
            .map_err(|e| format!("syncing `{}`: {e}", self.group))?;
        match synced.error_code {
            0 => {}
            UNKNOWN_MEMBER_ID => {
                self.state
                    .lock()
                    .expect("membership lock")
                    .member_id
                    .clear();
                return Err(format!("syncing `{}`: unknown member", self.group));
            }
            code => return Err(format!("syncing `{}`: error {code}", self.group)),
        }
        let view: View = serde_json::from_slice(&synced.assignment)
            .map_err(|e| format!("the view handed out in `{}`: {e}", self.group))?;
        self.set_view(Some(view), Some(sent));
        Ok(())
    }

    /// Heartbeats until the group rebalances or this member is out of it.
    async fn beat(&self) {
        let Ok(v) = self.version(ApiKey::Heartbeat, 4) else {
            return;
        };
        let mut coord = None;
        loop {
            tokio::time::sleep(self.heartbeat_every()).await;
            let (member_id, generation) = {
                let s = self.state.lock().expect("membership lock");
                (
                    s.member_id.clone(),
                    s.view.as_ref().map(|v| v.generation).unwrap_or(-1),
                )
            };
            let id = match coord {
                Some(id) => id,
                None => match ops::coordinator(&self.cluster, &self.group, self.timeout).await {
                    Ok(id) => {
                        coord = Some(id);
                        id
                    }
                    Err(e) => {
                        self.failed(e);
                        self.lapse_if_due();
                        continue;
                    }
                },
            };
            let req = HeartbeatRequest::default()
                .with_group_id(self.group_id())
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(member_id))
                .with_group_instance_id(
                    (v >= 3).then(|| StrBytes::from_string(self.instance.clone())),
                );
            let sent = Instant::now();
            let resp: Result<HeartbeatResponse, _> = self
                .cluster
                .call_to(Some(id), ApiKey::Heartbeat, v, &req, self.heartbeat_every())
                .await;
            match resp {
                Ok(r) if r.error_code == 0 => {
                    let view = self.state.lock().expect("membership lock").view.clone();
                    self.set_view(view, Some(sent));
                }
                // Still a member; the others are joining: join again now.
                Ok(r) if r.error_code == REBALANCE_IN_PROGRESS => {
                    let view = self.state.lock().expect("membership lock").view.clone();
                    self.set_view(view, Some(sent));
                    return;
                }
                Ok(r) if moved(r.error_code) => coord = None,
                Ok(r) => {
                    // Removed (session expired, or removed by the leader), or fenced.
                    if r.error_code == UNKNOWN_MEMBER_ID || r.error_code == FENCED_INSTANCE_ID {
                        self.state
                            .lock()
                            .expect("membership lock")
                            .member_id
                            .clear();
                    }
                    let what = match r.error_code {
                        ILLEGAL_GENERATION => "a newer generation".to_string(),
                        UNKNOWN_MEMBER_ID => "removed from the group".to_string(),
                        FENCED_INSTANCE_ID => "another process took this instance name".to_string(),
                        code => format!("error {code}"),
                    };
                    self.failed(format!("heartbeat: {what}"));
                    self.set_view(None, None);
                    return;
                }
                Err(e) => {
                    coord = None;
                    self.failed(format!("heartbeat: {e}"));
                    self.lapse_if_due();
                    if self.view().is_none() {
                        // Out by now as far as the coordinator is concerned: join
                        // anew once it can be reached.
                        return;
                    }
                }
            }
        }
    }

    /// Forgets the view once the membership lapsed (the heartbeats went unanswered).
    fn lapse_if_due(&self) {
        if self.view().is_none() && self.last_view().is_some() {
            self.set_view(None, None);
        }
    }
}
