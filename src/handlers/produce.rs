//! Produce and InitProducerId.
//!
//! With several clusters, partitions of topics whose `produce` route is elsewhere
//! come back as NOT_LEADER_OR_FOLLOWER, so the client refreshes metadata and goes
//! there; the rest go upstream under their physical names, with this cluster's
//! producer id for each idempotent batch (switch::producers). InitProducerId
//! answers become virtual ids, which name the issuing cluster. With one cluster,
//! both go upstream untouched.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    ProducerId, TopicName,
};
use kafka_protocol::ResponseError;

use super::context::*;
use super::plan::{Plan, Refused};
use super::{Action, Forwarded, ResponseRewrite};
use crate::codec::{self, DecodeError, RequestFrame};
use crate::metrics;
use crate::switch::producers::{self, BatchError, PlanError, Producers, Sent};
use crate::upstream::ClusterView;

pub(crate) async fn produce(ctx: &mut Ctx<'_>, frame: &RequestFrame) -> Result<Action, RouteError> {
    if !ctx.shared.multi_cluster() {
        // One cluster: producer ids are the cluster's own and every topic is
        // written here; the records go up as the client sent them.
        let response = (codec::produce_acks(frame) != Some(0)).then_some(Forwarded {
            upstream_api: frame.api,
            upstream_version: frame.version(),
            rewrite: ResponseRewrite::None,
        });
        return Ok(Action::Forward {
            frame: frame.bytes.clone(),
            response,
        });
    }
    let mut req: ProduceRequest = frame.decode()?;
    ctx.session.role = Role::Writer;
    let key = ctx.identity(frame);
    ctx.shared
        .identities()
        .note_write(&key, req.topic_data.iter().map(|t| t.name.as_str()));
    let here = ctx.here().to_string();
    let here_idx = ctx.shared.cluster_index(&here);
    let mut plan = Plan::default();
    let mut changed = false;

    let routes = ctx.routes.clone();
    // An instance out of the coordination group writes nothing: the others may be
    // flipping any topic without it.
    let holding = ctx.shared.holding();
    req.topic_data.retain_mut(|t| {
        // A fenced topic (a flip in progress across instances) is written nowhere.
        let elsewhere = holding
            || routes.produce_cluster(&t.name) != here
            || (!routes.fenced.is_empty() && routes.fenced.contains(t.name.as_str()));
        let parts = t.partition_data.iter().map(|p| p.index);
        plan.route_topic(&routes, &here, &mut t.name, parts, elsewhere)
    });
    if !plan.refused.is_empty() || !plan.renames.is_empty() {
        changed = true;
    }
    if !plan.refused.is_empty() {
        metrics::steered("Produce", &here);
    }

    let acks = req.acks;
    if !req.topic_data.is_empty() {
        // Batches still in flight for these partitions on the cluster their writes
        // left complete first (their outcome, recorded when their responses are
        // handled, decides where the numbering continues below).
        let parts: Vec<(String, i32)> = req
            .topic_data
            .iter()
            .flat_map(|t| {
                let logical = plan.logical(&t.name).to_string();
                t.partition_data
                    .iter()
                    .map(move |p| (logical.clone(), p.index))
            })
            .collect();
        let limit = std::time::Duration::from_millis(req.timeout_ms.clamp(0, 30_000) as u64);
        let (guard, in_order) = ctx.shared.inflight().take(parts, here_idx, limit).await;
        if !in_order {
            tracing::warn!(cluster = %here, "produce went ahead while batches for its partitions were still in flight on another cluster");
        }
        plan.hold = Some(guard);
    }

    // Producer ids: batches of idempotent, non-transactional producers carry a
    // virtual id; upstream gets this cluster's id for that producer.
    // Partitions answered by the proxy after all, with the error for each.
    let mut not_next: Vec<(TopicName, i32, i16)> = Vec::new();
    // Producers whose first batch away from home is in this request.
    let mut announce: Vec<i64> = Vec::new();
    for t in &mut req.topic_data {
        let logical = plan.logical(&t.name);
        for p in &mut t.partition_data {
            let Some(records) = &p.records else { continue };
            let headers = match producers::batches(records) {
                Ok(h) => h,
                // Old formats carry no producer id; anything malformed is the
                // broker's to reject, with its own error.
                Err(BatchError::OldMagic { .. }) | Err(BatchError::Truncated(_)) => continue,
            };
            if !headers
                .iter()
                .any(|h| h.producer_id >= 0 && !h.transactional)
            {
                continue;
            }
            let mut out = BytesMut::from(&records[..]);
            let mut sent = Vec::new();
            for h in &headers {
                if h.producer_id < 0 || h.transactional {
                    continue;
                }
                let up = loop {
                    match ctx.shared.producers().plan(h, &logical, p.index, here_idx) {
                        Ok(up) => break Ok(up),
                        Err(PlanError::NotNext { .. }) => break Err(NOT_LEADER_OR_FOLLOWER),
                        // Never issued here (forged, or from before a restart) or
                        // forgotten: refused before anything goes upstream.
                        Err(PlanError::UnknownProducer) => break Err(UNKNOWN_PRODUCER_ID),
                        Err(PlanError::NeedProducerId { cluster }) => {
                            let timeout = ctx.shared.producers().transaction_timeout(h.producer_id);
                            let (pid, epoch) = match foreign_producer_id(
                                ctx.cluster,
                                ctx.call_timeout(),
                                timeout,
                            )
                            .await
                            {
                                Ok(id) => id,
                                Err(reason) => {
                                    // Nothing was written: the client retries
                                    // the batch as it is, in order.
                                    tracing::warn!(
                                        cluster = %here,
                                        virtual_id = h.producer_id,
                                        %reason,
                                        "no producer id from the cluster yet; batch answered as retriable"
                                    );
                                    break Err(NOT_LEADER_OR_FOLLOWER);
                                }
                            };
                            tracing::info!(
                                virtual_id = h.producer_id,
                                cluster = %here,
                                producer_id = pid,
                                "producer id issued for a producer from another cluster"
                            );
                            ctx.shared.producers().set_foreign(
                                h.producer_id,
                                cluster,
                                pid,
                                epoch,
                                h.epoch,
                            );
                        }
                    }
                };
                let up = match up {
                    Ok(up) => {
                        let home = producers::from_virtual(h.producer_id).0;
                        if home != here_idx
                            && ctx.shared.coordinator().is_some()
                            && ctx.shared.producers().needs_announcing(h.producer_id)
                        {
                            announce.push(h.producer_id);
                        }
                        up
                    }
                    Err(code) => {
                        not_next.push((logical.clone(), p.index, code));
                        sent.clear();
                        break;
                    }
                };
                producers::patch_batch(
                    &mut out[h.at..h.at + h.len],
                    up.producer_id,
                    up.epoch,
                    up.base_sequence,
                );
                sent.push(Sent {
                    producer_id: h.producer_id,
                    epoch: h.epoch,
                    topic: logical.to_string(),
                    partition: p.index,
                    cluster: here_idx,
                    client_base: h.base_sequence,
                    upstream_base: up.base_sequence,
                    count: h.count,
                });
            }
            plan.sent.append(&mut sent);
            p.records = Some(out.freeze());
            changed = true;
        }
    }
    if !not_next.is_empty() {
        // NotNext: a retriable error; the client resends them after the older
        // batches it still waits for, in order. Unknown ids: see PlanError.
        metrics::steered("Produce", &here);
        for (logical, index, code) in &not_next {
            for t in &mut req.topic_data {
                if plan.logical(&t.name) == *logical {
                    t.partition_data.retain(|p| p.index != *index);
                }
            }
            let list = if *code == UNKNOWN_PRODUCER_ID {
                &mut plan.unknown_producer
            } else {
                &mut plan.refused
            };
            match list.iter_mut().find(|r| r.topic == *logical) {
                Some(r) => r.partitions.push(*index),
                None => list.push(Refused {
                    topic: logical.clone(),
                    partitions: vec![*index],
                }),
            }
        }
        req.topic_data.retain(|t| !t.partition_data.is_empty());
    }
    if !plan.sent.is_empty() {
        plan.producers = Some(ctx.shared.producers().clone());
    }
    if let (Some(c), false) = (ctx.shared.coordinator(), announce.is_empty()) {
        // Before the first batch away from home goes up: another instance taking
        // the producer over must not write home under the home id.
        if let Err(e) = c.announce_relocated(&announce).await {
            tracing::warn!(error = %e, "could not announce producers writing away from home; retried with their next batch");
            for v in &announce {
                ctx.shared.producers().unannounce(*v);
            }
        }
    }

    if req.topic_data.is_empty() {
        if acks == 0 {
            return Ok(Action::Discard);
        }
        return respond(frame, &produce_errors(&plan, ProduceResponse::default()));
    }
    let bytes = codec::reencode_request(frame, changed, &req)?;
    if acks == 0 {
        return Ok(Action::Forward {
            frame: bytes,
            response: None,
        });
    }
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::Produce(Box::new(plan)),
    ))
}

/// Asks `cluster` for a producer id of its own (idempotent, not transactional),
/// with the transaction timeout the client asked for. An error code in the answer
/// (a fresh broker says COORDINATOR_LOAD_IN_PROGRESS) or no answer at all is
/// returned as the reason; the caller answers the batch with a retriable error.
pub(crate) async fn foreign_producer_id(
    cluster: &ClusterView,
    timeout: std::time::Duration,
    transaction_timeout_ms: i32,
) -> Result<(i64, i16), String> {
    let version = cluster.version_for(ApiKey::InitProducerId, 2).unwrap_or(0);
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(transaction_timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp: InitProducerIdResponse = cluster
        .call(ApiKey::InitProducerId, version, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    match ResponseError::try_from_code(resp.error_code) {
        None => Ok((resp.producer_id.0, resp.producer_epoch)),
        Some(e) => Err(format!(
            "InitProducerId answered {e:?} ({})",
            resp.error_code
        )),
    }
}

pub(crate) fn produce_errors(plan: &Plan, mut resp: ProduceResponse) -> ProduceResponse {
    for t in &mut resp.responses {
        t.name = plan.logical(&t.name);
    }
    let refused = plan.refused.iter().map(|r| (r, NOT_LEADER_OR_FOLLOWER));
    let unknown = plan
        .unknown_producer
        .iter()
        .map(|r| (r, UNKNOWN_PRODUCER_ID));
    for (r, code) in refused.chain(unknown) {
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(r.topic.clone())
                .with_partition_responses(
                    r.partitions
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(*p)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
    resp
}

pub fn rewrite_produce_response(
    frame: Bytes,
    version: i16,
    plan: &Plan,
) -> Result<Bytes, DecodeError> {
    if plan.is_noop() && plan.sent.is_empty() {
        return Ok(frame);
    }
    let (header, resp) =
        codec::decode_response::<ProduceResponse>(ApiKey::Produce, version, frame.clone())?;
    if let Some(producers) = &plan.producers {
        for t in &resp.responses {
            let logical = plan.logical(&t.name);
            for p in &t.partition_responses {
                // DUPLICATE_SEQUENCE_NUMBER: written before, by an earlier attempt.
                if p.error_code != 0 && p.error_code != 46 {
                    continue;
                }
                for s in plan
                    .sent
                    .iter()
                    .filter(|s| s.partition == p.index && s.topic == logical.as_str())
                {
                    producers.acknowledged(s);
                }
            }
        }
    }
    if plan.is_noop() {
        return Ok(frame);
    }
    let resp = produce_errors(plan, resp);
    codec::encode_response(ApiKey::Produce, version, header.correlation_id, &resp)
}

pub(crate) fn init_producer_id(
    ctx: &mut Ctx<'_>,
    frame: &RequestFrame,
) -> Result<Action, RouteError> {
    ctx.session.role = Role::Writer;
    if !ctx.shared.multi_cluster() {
        return Ok(forward(frame, frame.bytes.clone(), ResponseRewrite::None));
    }
    let mut req: InitProducerIdRequest = frame.decode()?;
    if ctx.shared.holding() {
        // Out of the coordination group: an id issued now might carry a key the
        // other instances do not share yet; the client asks again.
        let resp = InitProducerIdResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        return respond(frame, &resp);
    }
    if req.transactional_id.is_some() {
        // Transactional producers keep their coordinator's id (module docs of
        // switch::producers).
        return Ok(forward(frame, frame.bytes.clone(), ResponseRewrite::None));
    }
    let here = ctx.shared.cluster_index(ctx.here());
    let mut bytes = frame.bytes.clone();
    if req.producer_id.0 >= 0 {
        // A client asking to bump its own (virtual) id: only its home can.
        let (home, pid) = producers::from_virtual(req.producer_id.0);
        if home == here {
            req.producer_id = ProducerId(pid);
        } else {
            req.producer_id = ProducerId(-1);
            req.producer_epoch = -1;
        }
        bytes = codec::encode_request(frame.api, &frame.header, &req)?;
    }
    Ok(forward(
        frame,
        bytes,
        ResponseRewrite::InitProducerId {
            cluster: here,
            name: ctx.here().to_string(),
            producers: ctx.shared.producers().clone(),
            transaction_timeout_ms: req.transaction_timeout_ms,
        },
    ))
}

pub fn rewrite_init_producer_id(
    frame: Bytes,
    version: i16,
    (cluster, cluster_name): (usize, &str),
    issued: &Producers,
    transaction_timeout_ms: i32,
) -> Result<Bytes, DecodeError> {
    let (header, mut resp) =
        codec::decode_response::<InitProducerIdResponse>(ApiKey::InitProducerId, version, frame)?;
    let virtual_id = issued.issue_id(resp.producer_id.0, cluster);
    if ResponseError::try_from_code(resp.error_code).is_none() {
        // The only place producer state is created (switch::producers docs).
        issued.issue(virtual_id);
        issued.set_transaction_timeout(virtual_id, transaction_timeout_ms);
        tracing::info!(
            cluster = %cluster_name,
            upstream_id = resp.producer_id.0,
            virtual_id,
            epoch = resp.producer_epoch,
            "producer id issued"
        );
    }
    resp.producer_id = ProducerId(virtual_id);
    codec::encode_response(
        ApiKey::InitProducerId,
        version,
        header.correlation_id,
        &resp,
    )
}
