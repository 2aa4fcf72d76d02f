//! Admin requests that name topics or brokers, across clusters: CreateTopics,
//! DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs and
//! IncrementalAlterConfigs.
//!
//! A client sends these to the one controller the merged Metadata names (the
//! default cluster's) or to any broker; what each entry means decides where it
//! goes:
//!
//! - a **topic** goes to the cluster its `produce` route names, under its physical
//!   name there (a topic is created, deleted, grown and configured where it is
//!   written; DescribeConfigs follows the same rule, so what an admin sets is what
//!   it reads back);
//! - a **broker** resource (`"1002"`) goes to the cluster and broker the virtual id
//!   stands for; an empty broker name (cluster-wide defaults) and a topic named by
//!   id only (DeleteTopics v6+) stay with the cluster of the connection.
//!
//! When every entry belongs where the connection already forwards, the request goes
//! up unchanged. Otherwise the proxy splits it per
//! cluster, sends each part itself (topic changes to that cluster's controller),
//! and answers with the merged results, each under the name the client used. A
//! cluster that cannot be reached answers its entries with REQUEST_TIMED_OUT
//! (retriable); a NOT_CONTROLLER from a controller that moved is retried once after
//! the cluster's brokers are re-read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::{
    alter_configs_request, alter_configs_response, incremental_alter_configs_request,
    incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse, ApiKey,
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::context::{forward, Ctx, RouteError};
use super::{configs, Action, ResponseRewrite};
use crate::codec::{self, RequestFrame};
use crate::upstream::{ClusterView, UpstreamError};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;

/// Where one entry goes: a cluster, and the broker there (`None`: the controller
/// for topic changes, any broker for configs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Dest {
    cluster: String,
    broker: Option<i32>,
}

/// One request's entries, split by destination, each with the name the client
/// used (a logical topic or a virtual broker id).
struct Split<T> {
    parts: BTreeMap<Dest, Vec<(T, StrBytes)>>,
    /// Whether anything must change: an entry for another cluster, a renamed topic,
    /// a broker resource to map.
    rewrite: bool,
}

impl<T> Split<T> {
    fn new() -> Split<T> {
        Split {
            parts: BTreeMap::new(),
            rewrite: false,
        }
    }

    fn push(&mut self, dest: Dest, entry: T, client_name: StrBytes) {
        self.parts
            .entry(dest)
            .or_default()
            .push((entry, client_name));
    }
}

fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

impl Ctx<'_> {
    /// Destination and physical name of a topic entry.
    fn topic_dest(&self, logical: &str, controller: bool) -> (Dest, String) {
        let cluster = self.routes.produce_cluster(logical).to_string();
        let physical = self.routes.physical_topic(logical, &cluster);
        let broker = controller.then_some(-1);
        (Dest { cluster, broker }, physical)
    }

    /// Destination and upstream name of a broker resource (`"1002"` → the cluster
    /// owning virtual id 1002 and its broker `"2"`).
    fn broker_dest(&self, name: &str) -> (Dest, String) {
        let here = Dest {
            cluster: self.cluster.name().to_string(),
            broker: None,
        };
        let Ok(virtual_id) = name.parse::<i32>() else {
            return (here, name.to_string());
        };
        match self.shared.resolve_virtual(virtual_id) {
            Some((cluster, upstream)) => (
                Dest {
                    cluster: cluster.name().to_string(),
                    broker: Some(upstream),
                },
                upstream.to_string(),
            ),
            None => (here, name.to_string()),
        }
    }

    fn config_dest(&self, resource_type: i8, name: &str) -> (Dest, String) {
        match resource_type {
            TOPIC => self.topic_dest(name, false),
            BROKER | BROKER_LOGGER => self.broker_dest(name),
            _ => (
                Dest {
                    cluster: self.cluster.name().to_string(),
                    broker: None,
                },
                name.to_string(),
            ),
        }
    }

    fn is_here(&self, dest: &Dest) -> bool {
        dest.cluster == self.cluster.name()
    }
}

/// A topic-admin request: split across clusters when its entries belong to
/// several, else forwarded where the connection goes, with broker resources and
/// CreatePartitions assignments mapped to upstream ids.
pub async fn handle(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    if ctx.shared.multi_cluster() {
        if let Some(action) = route(ctx, frame).await? {
            return Ok(action);
        }
    }
    let forward = |bytes, rewrite| forward(frame, bytes, rewrite);
    Ok(match frame.api {
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            forward(
                configs::rewrite_request_frame(frame, ctx.map)?,
                ResponseRewrite::Configs,
            )
        }
        ApiKey::CreatePartitions => forward(
            configs::rewrite_create_partitions_frame(frame, ctx.map)?,
            ResponseRewrite::None,
        ),
        _ => forward(frame.bytes.clone(), ResponseRewrite::None),
    })
}

/// Splits a topic-admin request across clusters; `None` when every entry belongs
/// where the connection forwards, so it can go up as it is.
async fn route(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Option<Action>, RouteError> {
    match frame.api {
        ApiKey::CreateTopics => create_topics(ctx, frame).await,
        ApiKey::DeleteTopics => delete_topics(ctx, frame).await,
        ApiKey::CreatePartitions => create_partitions(ctx, frame).await,
        ApiKey::DescribeConfigs => configs::<DescribeConfigsRequest>(ctx, frame).await,
        ApiKey::AlterConfigs => configs::<AlterConfigsRequest>(ctx, frame).await,
        ApiKey::IncrementalAlterConfigs => {
            configs::<IncrementalAlterConfigsRequest>(ctx, frame).await
        }
        _ => Ok(None),
    }
}

/// How long one part may take upstream: what the client gives the broker, plus the
/// proxy's own request timeout.
fn part_timeout(ctx: &Ctx<'_>, client_timeout_ms: i32) -> Duration {
    ctx.shared.config().proxy.request_timeout
        + Duration::from_millis(client_timeout_ms.clamp(0, 600_000) as u64)
}

/// Sends one part to its destination. `not_controller` tells whether an answer says
/// the controller moved; then the cluster is re-read and the part sent once more.
async fn send<Req: Encodable, Resp: Decodable>(
    ctx: &Ctx<'_>,
    dest: &Dest,
    api: ApiKey,
    version: i16,
    body: &Req,
    timeout: Duration,
    not_controller: impl Fn(&Resp) -> bool,
) -> Result<Resp, UpstreamError> {
    let Some(cluster): Option<Arc<ClusterView>> = ctx.shared.cluster(&dest.cluster).cloned() else {
        return Err(UpstreamError::NoBroker(dest.cluster.clone()));
    };
    let broker = |c: &ClusterView| match dest.broker {
        Some(-1) => Some(c.controller()).filter(|id| *id >= 0),
        other => other,
    };
    let resp: Resp = cluster
        .call_to(broker(&cluster), api, version, body, timeout)
        .await?;
    if dest.broker == Some(-1) && not_controller(&resp) {
        let _ = cluster
            .refresh(ctx.shared.config().proxy.connect_timeout)
            .await;
        return cluster
            .call_to(broker(&cluster), api, version, body, timeout)
            .await;
    }
    Ok(resp)
}

fn respond<T: Encodable>(frame: &RequestFrame, body: &T) -> Result<Option<Action>, RouteError> {
    Ok(Some(Action::Respond(codec::encode_response(
        frame.api,
        frame.version(),
        frame.correlation_id(),
        body,
    )?)))
}

fn unreachable_message(dest: &Dest, e: &UpstreamError) -> Option<StrBytes> {
    Some(str_bytes(format!(
        "cluster {} did not answer through Switchyard: {}",
        dest.cluster,
        e.kind()
    )))
}

const NOT_CONTROLLER: i16 = ResponseError::NotController.code();
const TIMED_OUT: i16 = ResponseError::RequestTimedOut.code();

// ------------------------------------------------------------------ topics

/// One topic-admin API whose request is a list of entries answered one result
/// each: how to split it, and how to merge the answers (see [`fan_out`]).
trait Fanned: Encodable + Clone {
    type Entry: Clone;
    type Resp: Decodable + Encodable + Default;
    type Result;
    fn with_entries(&self, entries: Vec<Self::Entry>) -> Self;
    fn entry_name(entry: &Self::Entry) -> &StrBytes;
    /// The answer's throttle time and results.
    fn results(resp: Self::Resp) -> (i32, Vec<Self::Result>);
    fn result_name(result: &mut Self::Result) -> &mut StrBytes;
    /// Whether an answer says the controller moved.
    fn not_controller(_resp: &Self::Resp) -> bool {
        false
    }
    /// The result for an entry whose cluster did not answer.
    fn failed(entry: &Self::Entry, name: StrBytes, message: Option<StrBytes>) -> Self::Result;
    fn merged(throttle_time_ms: i32, results: Vec<Self::Result>) -> Self::Resp;
}

/// Sends each part of `split` to its destination and merges the answers under the
/// names the client used; a part whose cluster does not answer gets
/// REQUEST_TIMED_OUT for each entry.
async fn fan_out<R: Fanned>(
    ctx: &Ctx<'_>,
    frame: &RequestFrame,
    req: &R,
    split: Split<R::Entry>,
    timeout: Duration,
) -> Result<Option<Action>, RouteError> {
    let (mut throttle, mut results) = (0, Vec::new());
    for (dest, entries) in split.parts {
        let (sent, names): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let part = req.with_entries(sent.clone());
        let answer: Result<R::Resp, _> = send(
            ctx,
            &dest,
            frame.api,
            frame.version(),
            &part,
            timeout,
            R::not_controller,
        )
        .await;
        match answer {
            Ok(resp) => {
                let (t, answered) = R::results(resp);
                throttle = throttle.max(t);
                for mut r in answered {
                    let name = R::result_name(&mut r);
                    *name = client_name(&sent, &names, name, R::entry_name);
                    results.push(r);
                }
            }
            Err(e) => {
                for (entry, name) in sent.iter().zip(names) {
                    results.push(R::failed(entry, name, unreachable_message(&dest, &e)));
                }
            }
        }
    }
    respond(frame, &R::merged(throttle, results))
}

async fn create_topics(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: CreateTopicsRequest = frame.decode()?;
    let mut split = Split::new();
    for mut t in req.topics.clone() {
        let logical = t.name.0.clone();
        let (dest, physical) = ctx.topic_dest(&logical, true);
        split.rewrite |= !ctx.is_here(&dest) || physical != logical.as_str();
        t.name = TopicName(str_bytes(physical));
        split.push(dest, t, logical);
    }
    if !split.rewrite {
        return Ok(None);
    }
    let timeout = part_timeout(ctx, req.timeout_ms);
    fan_out(ctx, frame, &req, split, timeout).await
}

impl Fanned for CreateTopicsRequest {
    type Entry = CreatableTopic;
    type Resp = CreateTopicsResponse;
    type Result = CreatableTopicResult;
    fn with_entries(&self, entries: Vec<CreatableTopic>) -> Self {
        self.clone().with_topics(entries)
    }
    fn entry_name(entry: &CreatableTopic) -> &StrBytes {
        &entry.name.0
    }
    fn results(resp: CreateTopicsResponse) -> (i32, Vec<CreatableTopicResult>) {
        (resp.throttle_time_ms, resp.topics)
    }
    fn result_name(result: &mut CreatableTopicResult) -> &mut StrBytes {
        &mut result.name.0
    }
    fn not_controller(resp: &CreateTopicsResponse) -> bool {
        resp.topics.iter().any(|t| t.error_code == NOT_CONTROLLER)
    }
    fn failed(_: &CreatableTopic, name: StrBytes, message: Option<StrBytes>) -> Self::Result {
        CreatableTopicResult::default()
            .with_name(TopicName(name))
            .with_error_code(TIMED_OUT)
            .with_error_message(message)
    }
    fn merged(throttle_time_ms: i32, topics: Vec<CreatableTopicResult>) -> Self::Resp {
        CreateTopicsResponse::default()
            .with_throttle_time_ms(throttle_time_ms)
            .with_topics(topics)
    }
}

/// The name the client used for the entry the broker answered as `upstream`.
fn client_name<T>(
    sent: &[T],
    names: &[StrBytes],
    upstream: &StrBytes,
    name_of: impl Fn(&T) -> &StrBytes,
) -> StrBytes {
    sent.iter()
        .position(|e| name_of(e) == upstream)
        .map(|i| names[i].clone())
        .unwrap_or_else(|| upstream.clone())
}

async fn delete_topics(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: DeleteTopicsRequest = frame.decode()?;
    let by_state = frame.version() >= 6;
    let here = Dest {
        cluster: ctx.cluster.name().to_string(),
        broker: Some(-1),
    };
    // Entries as (state, client name); before v6 names only.
    let entries: Vec<DeleteTopicState> = if by_state {
        req.topics.clone()
    } else {
        req.topic_names
            .iter()
            .map(|n| DeleteTopicState::default().with_name(Some(n.clone())))
            .collect()
    };
    let mut split = Split::new();
    for mut t in entries {
        let Some(logical) = t.name.as_ref().map(|n| n.0.clone()) else {
            split.push(here.clone(), t, StrBytes::default());
            continue;
        };
        let (dest, physical) = ctx.topic_dest(&logical, true);
        split.rewrite |= !ctx.is_here(&dest) || physical != logical.as_str();
        t.name = Some(TopicName(str_bytes(physical)));
        split.push(dest, t, logical);
    }
    if !split.rewrite {
        return Ok(None);
    }
    let timeout = part_timeout(ctx, req.timeout_ms);
    let mut merged = DeleteTopicsResponse::default();
    for (dest, entries) in split.parts {
        let (states, names): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let part = if by_state {
            req.clone().with_topics(states.clone())
        } else {
            req.clone()
                .with_topic_names(states.iter().filter_map(|s| s.name.clone()).collect())
        };
        let answer = send(
            ctx,
            &dest,
            frame.api,
            frame.version(),
            &part,
            timeout,
            |r: &DeleteTopicsResponse| r.responses.iter().any(|t| t.error_code == NOT_CONTROLLER),
        )
        .await;
        match answer {
            Ok(resp) => {
                merged.throttle_time_ms = merged.throttle_time_ms.max(resp.throttle_time_ms);
                for mut t in resp.responses {
                    if let Some(n) = &t.name {
                        let name = client_name(&states, &names, &n.0, |s| {
                            s.name.as_ref().map(|n| &n.0).unwrap_or(&EMPTY)
                        });
                        t.name = Some(TopicName(name));
                    }
                    merged.responses.push(t);
                }
            }
            Err(e) => {
                for (state, name) in states.into_iter().zip(names) {
                    merged.responses.push(
                        DeletableTopicResult::default()
                            .with_name(state.name.map(|_| TopicName(name)))
                            .with_topic_id(state.topic_id)
                            .with_error_code(TIMED_OUT)
                            .with_error_message(unreachable_message(&dest, &e)),
                    );
                }
            }
        }
    }
    respond(frame, &merged)
}

static EMPTY: StrBytes = StrBytes::from_static_str("");

async fn create_partitions(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Option<Action>, RouteError> {
    let req: CreatePartitionsRequest = frame.decode()?;
    let mut split = Split::new();
    for mut t in req.topics.clone() {
        let logical = t.name.0.clone();
        let (dest, physical) = ctx.topic_dest(&logical, true);
        split.rewrite |= !ctx.is_here(&dest) || physical != logical.as_str();
        t.name = TopicName(str_bytes(physical));
        // Manual assignments name virtual brokers; each becomes its cluster's id.
        for a in t.assignments.iter_mut().flatten() {
            for id in &mut a.broker_ids {
                if let Some((_, upstream)) = ctx.shared.resolve_virtual(id.0) {
                    *id = BrokerId(upstream);
                }
            }
        }
        split.push(dest, t, logical);
    }
    if !split.rewrite {
        return Ok(None);
    }
    let timeout = part_timeout(ctx, req.timeout_ms);
    fan_out(ctx, frame, &req, split, timeout).await
}

impl Fanned for CreatePartitionsRequest {
    type Entry = CreatePartitionsTopic;
    type Resp = CreatePartitionsResponse;
    type Result = CreatePartitionsTopicResult;
    fn with_entries(&self, entries: Vec<CreatePartitionsTopic>) -> Self {
        self.clone().with_topics(entries)
    }
    fn entry_name(entry: &CreatePartitionsTopic) -> &StrBytes {
        &entry.name.0
    }
    fn results(resp: CreatePartitionsResponse) -> (i32, Vec<CreatePartitionsTopicResult>) {
        (resp.throttle_time_ms, resp.results)
    }
    fn result_name(result: &mut CreatePartitionsTopicResult) -> &mut StrBytes {
        &mut result.name.0
    }
    fn not_controller(resp: &CreatePartitionsResponse) -> bool {
        resp.results.iter().any(|t| t.error_code == NOT_CONTROLLER)
    }
    fn failed(
        _: &CreatePartitionsTopic,
        name: StrBytes,
        message: Option<StrBytes>,
    ) -> Self::Result {
        CreatePartitionsTopicResult::default()
            .with_name(TopicName(name))
            .with_error_code(TIMED_OUT)
            .with_error_message(message)
    }
    fn merged(throttle_time_ms: i32, results: Vec<CreatePartitionsTopicResult>) -> Self::Resp {
        CreatePartitionsResponse::default()
            .with_throttle_time_ms(throttle_time_ms)
            .with_results(results)
    }
}

// ----------------------------------------------------------------- configs

/// DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: config resources
/// (type, name) split by destination, sent to any broker of a topic's cluster or
/// to the broker a broker resource names.
async fn configs<R>(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Option<Action>, RouteError>
where
    R: ConfigRequest + Decodable,
    R::Entry: ConfigResource,
{
    let req: R = frame.decode()?;
    let mut split = Split::new();
    for mut r in req.entries() {
        let client = r.name().clone();
        let (dest, name) = ctx.config_dest(r.resource_type(), &client);
        split.rewrite |= !ctx.is_here(&dest) || name != client.as_str();
        *r.name_mut() = str_bytes(name);
        split.push(dest, r, client);
    }
    if !split.rewrite {
        return Ok(None);
    }
    let timeout = ctx.shared.config().proxy.request_timeout;
    fan_out(ctx, frame, &req, split, timeout).await
}

/// A config resource of any of the three config APIs.
trait ConfigResource {
    fn resource_type(&self) -> i8;
    fn name(&self) -> &StrBytes;
    fn name_mut(&mut self) -> &mut StrBytes;
}

/// The resources of a config request.
trait ConfigRequest: Fanned {
    fn entries(&self) -> Vec<Self::Entry>;
}

/// Implements [`ConfigResource`] for a resource type and [`Fanned`] and
/// [`ConfigRequest`] for its request: the three config APIs differ only in names.
macro_rules! config_api {
    ($req:ty, $resource:ty, $resp:ty, $result:ty, $results:ident, $with_results:ident) => {
        impl ConfigResource for $resource {
            fn resource_type(&self) -> i8 {
                self.resource_type
            }
            fn name(&self) -> &StrBytes {
                &self.resource_name
            }
            fn name_mut(&mut self) -> &mut StrBytes {
                &mut self.resource_name
            }
        }

        impl ConfigRequest for $req {
            fn entries(&self) -> Vec<$resource> {
                self.resources.clone()
            }
        }

        impl Fanned for $req {
            type Entry = $resource;
            type Resp = $resp;
            type Result = $result;
            fn with_entries(&self, entries: Vec<$resource>) -> Self {
                self.clone().with_resources(entries)
            }
            fn entry_name(entry: &$resource) -> &StrBytes {
                &entry.resource_name
            }
            fn results(resp: $resp) -> (i32, Vec<$result>) {
                (resp.throttle_time_ms, resp.$results)
            }
            fn result_name(result: &mut $result) -> &mut StrBytes {
                &mut result.resource_name
            }
            fn failed(entry: &$resource, name: StrBytes, message: Option<StrBytes>) -> $result {
                <$result>::default()
                    .with_resource_type(entry.resource_type)
                    .with_resource_name(name)
                    .with_error_code(TIMED_OUT)
                    .with_error_message(message)
            }
            fn merged(throttle_time_ms: i32, results: Vec<$result>) -> $resp {
                <$resp>::default()
                    .with_throttle_time_ms(throttle_time_ms)
                    .$with_results(results)
            }
        }
    };
}

config_api!(
    DescribeConfigsRequest,
    DescribeConfigsResource,
    DescribeConfigsResponse,
    DescribeConfigsResult,
    results,
    with_results
);
config_api!(
    AlterConfigsRequest,
    alter_configs_request::AlterConfigsResource,
    AlterConfigsResponse,
    alter_configs_response::AlterConfigsResourceResponse,
    responses,
    with_responses
);
config_api!(
    IncrementalAlterConfigsRequest,
    incremental_alter_configs_request::AlterConfigsResource,
    IncrementalAlterConfigsResponse,
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    responses,
    with_responses
);
