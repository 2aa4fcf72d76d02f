//! The admin HTTP API (SPEC.md "Admin API"): Prometheus metrics, status, reload.
//! Bound to loopback by default; it can change routes, so it is an operator's port.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::proxy::{GroupSwitchRequest, Proxy, SwitchRefused, TopicSwitch};

#[derive(Clone)]
struct AdminState {
    proxy: Arc<Proxy>,
    metrics: PrometheusHandle,
}

pub fn router(proxy: Arc<Proxy>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/routes", get(routes))
        .route("/reload", post(reload))
        .route("/switch/topic/{name}", post(switch_topic))
        .route("/rollback/topic/{name}", post(rollback_topic))
        .route("/switch/group/{name}", post(switch_group))
        .route("/rollback/group/{name}", post(rollback_group))
        .route("/switch/{kind}/{name}", post(unknown_kind))
        .route("/rollback/{kind}/{name}", post(unknown_kind))
        .with_state(AdminState { proxy, metrics })
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(proxy, metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

fn routes_json(proxy: &Proxy) -> Value {
    let routes = proxy.routes();
    json!({
        "version": routes.version,
        "default_cluster": routes.default_cluster,
        "topics": routes.topics().iter().map(|t| json!({
            "match": t.matcher.source(),
            "produce": routes.produce_cluster(t.matcher.source()),
            "consume": routes.consume_cluster(t.matcher.source()),
            "rename": t.rename,
        })).collect::<Vec<_>>(),
        "groups": routes.groups().iter().map(|g| json!({
            "match": g.matcher.source(),
            "cluster": g.cluster,
            "offsets": g.offsets.as_str(),
            "when": g.when.as_str(),
        })).collect::<Vec<_>>(),
    })
}

/// Everything an operator needs to see at a glance: routes, clusters, versions.
pub fn status_json(proxy: &Proxy) -> Value {
    let config = proxy.config();
    let table = proxy.api_table();
    let clusters: Vec<Value> = proxy
        .clusters()
        .map(|c| {
            let ranges = c.api_ranges();
            let version_of = |api: kafka_protocol::messages::ApiKey| {
                ranges
                    .as_ref()
                    .and_then(|r| r.get(&(api as i16)).map(|(min, max)| json!([min, max])))
            };
            use kafka_protocol::messages::ApiKey;
            let map = proxy.virtual_map(c);
            json!({
                "name": c.name(),
                "reachable": c.reachable(),
                "last_error": c.last_error(),
                "upstream_cluster_id": c.upstream_cluster_id(),
                "node_id_offset": c.config.node_id_offset,
                "controller": c.controller(),
                "broker_count": c.brokers().len(),
                "brokers": c.brokers().values().map(|b| json!({
                    "id": b.id,
                    "virtual_id": b.id + c.config.node_id_offset,
                    "upstream": b.addr(),
                    "advertised": format!("{}:{}", map.host(map.to_virtual(b.id)), map.port(map.to_virtual(b.id))),
                })).collect::<Vec<_>>(),
                "version_range": {
                    "Produce": version_of(ApiKey::Produce),
                    "Fetch": version_of(ApiKey::Fetch),
                    "Metadata": version_of(ApiKey::Metadata),
                    "ListOffsets": version_of(ApiKey::ListOffsets),
                    "OffsetFetch": version_of(ApiKey::OffsetFetch),
                    "JoinGroup": version_of(ApiKey::JoinGroup),
                },
            })
        })
        .collect();
    let advertised: serde_json::Map<String, Value> = table
        .iter()
        .filter_map(|(k, (min, max))| {
            let api = kafka_protocol::messages::ApiKey::try_from(*k).ok()?;
            Some((
                crate::handlers::api_name(api).to_string(),
                json!([min, max]),
            ))
        })
        .collect();
    json!({
        "cluster_id": config.proxy.cluster_id,
        "route_version": proxy.routes().version,
        "listener": {
            "bind": config.listener.bind.to_string(),
            "advertised_host": config.listener.advertised_host,
            "broker_port_base": config.listener.broker_port_base,
        },
        "clusters": clusters,
        "routes": routes_json(proxy),
        "advertised_api_versions": advertised,
        "marks": proxy.marks(),
        "groups_attributed": proxy.identities.group_members(),
        "virtual_producers": proxy.producers.len(),
        "switches": proxy.group_switch_records().iter().map(switch_json).collect::<Vec<_>>(),
    })
}

async fn status(State(s): State<AdminState>) -> Json<Value> {
    Json(status_json(&s.proxy))
}

async fn routes(State(s): State<AdminState>) -> Json<Value> {
    Json(routes_json(&s.proxy))
}

fn outcome(proxy: &Proxy, result: Result<u64, crate::config::ConfigErrors>) -> Response {
    match result {
        Ok(version) => (StatusCode::OK, Json(json!({"route_version": version}))).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": e.0, "route_version": proxy.routes().version})),
        )
            .into_response(),
    }
}

async fn reload(State(s): State<AdminState>) -> Response {
    let result = s.proxy.reload().await;
    outcome(&s.proxy, result)
}

/// `POST /switch/topic/{topic}` with `{"produce": "...", "consume": "..."}`.
async fn switch_topic(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
    body: Option<Json<TopicSwitch>>,
) -> Response {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let result = s.proxy.switch_topic(&topic, req).await;
    let version = result.as_ref().ok().copied();
    let mut resp = outcome(&s.proxy, result);
    if let Some(v) = version {
        let routes = s.proxy.routes();
        resp = (
            StatusCode::OK,
            Json(json!({
                "route_version": v,
                "topic": topic,
                "produce": routes.produce_cluster(&topic),
                "consume": routes.consume_cluster(&topic),
                "marks": s.proxy.marks().into_iter().filter(|m| m.topic == topic).collect::<Vec<_>>(),
            })),
        )
            .into_response();
    }
    resp
}

async fn rollback_topic(State(s): State<AdminState>, Path(topic): Path<String>) -> Response {
    let result = s.proxy.rollback_topic(&topic).await;
    let ok = result.is_ok();
    let resp = outcome(&s.proxy, result);
    if ok {
        let routes = s.proxy.routes();
        return (
            StatusCode::OK,
            Json(json!({
                "route_version": routes.version,
                "topic": topic,
                "produce": routes.produce_cluster(&topic),
                "consume": routes.consume_cluster(&topic),
            })),
        )
            .into_response();
    }
    resp
}

fn switch_json(sw: &crate::state::GroupSwitch) -> Value {
    json!({
        "kind": "group",
        "name": sw.group,
        "from": sw.from,
        "to": sw.to,
        "offsets": sw.offsets,
        "when": sw.when,
        "phase": sw.phase.as_str(),
        "reason": sw.reason,
        "partitions": sw.moves.iter().map(|m| json!({
            "topic": m.topic,
            "partition": m.partition,
            "old_offset": m.old_offset,
            "new_offset": m.new_offset,
            "method": m.method,
        })).collect::<Vec<_>>(),
        "started_at_ms": sw.started_at_ms,
        "updated_at_ms": sw.updated_at_ms,
    })
}

fn group_outcome(proxy: &Proxy, group: &str, result: Result<u64, SwitchRefused>) -> Response {
    let routes = proxy.routes();
    match result {
        Ok(version) => {
            let sw = proxy
                .group_switch_records()
                .into_iter()
                .find(|s| s.group == group);
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "route_version": version,
                    "group": group,
                    "cluster": routes.group_cluster(group),
                    "switch": sw.as_ref().map(switch_json),
                })),
            )
                .into_response()
        }
        Err(SwitchRefused::Invalid(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": e.0, "route_version": routes.version})),
        )
            .into_response(),
        Err(SwitchRefused::Untranslatable(why)) => (
            StatusCode::CONFLICT,
            Json(json!({
                "errors": [format!("group `{group}` not switched: its offsets cannot be translated: {why}")],
                "group": group,
                "cluster": routes.group_cluster(group),
                "route_version": routes.version,
            })),
        )
            .into_response(),
    }
}

/// `POST /switch/group/{group}` with `{"to": "...", "offsets": "...", "when": "..."}`.
async fn switch_group(
    State(s): State<AdminState>,
    Path(group): Path<String>,
    body: Option<Json<GroupSwitchRequest>>,
) -> Response {
    let Some(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": ["a JSON body with `to` is required"]})),
        )
            .into_response();
    };
    let result = s.proxy.switch_group(&group, req).await;
    group_outcome(&s.proxy, &group, result)
}

async fn rollback_group(State(s): State<AdminState>, Path(group): Path<String>) -> Response {
    let result = s.proxy.rollback_group(&group).await;
    group_outcome(&s.proxy, &group, result)
}

async fn unknown_kind(Path((kind, name)): Path<(String, String)>) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "errors": [format!("cannot switch {kind} `{name}`: only `topic` and `group` switch")],
        })),
    )
        .into_response()
}
