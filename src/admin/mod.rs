//! The admin HTTP API (SPEC.md "Admin API"): Prometheus metrics, status, reload.
//! Bound to loopback by default; it can change routes, so it is an operator's port.
//!
//! # Who may call it
//!
//! Every request passes [`guard`] first. A request is *mutating* unless its method is
//! GET or HEAD (every route that changes anything is a POST).
//!
//! 1. **Token.** With `[admin] token_env` or `token_file` set, a mutating request
//!    needs `Authorization: Bearer <token>`; with `token_for_reads = true` so does
//!    every GET except [`OPEN_READS`]. Missing or wrong: 401 with
//!    `WWW-Authenticate: Bearer` and a JSON error. The token is compared as a
//!    SHA-256 digest in constant time and is never logged.
//! 2. **Host** (mutating, no token configured). `Host` must be `localhost`, a
//!    loopback IP, or the admin's bind IP, any port: a DNS-rebinding page reaches
//!    the port under its own name (`Host: evil.example`), which is refused (403).
//!    With a token configured the token is the proof and any `Host` is accepted,
//!    so a gateway can be called under its DNS name: a browser cannot attach an
//!    `Authorization` header to a cross-site request without a CORS preflight,
//!    which this API never grants.
//! 3. **Origin** (mutating, always). Browsers send `Origin` on every cross-site
//!    POST; when present it must be `http://` plus the request's own `Host`, else
//!    403. A web page on another origin can never trigger a change.
//! 4. **Content type** (mutating, always). A `Content-Type` other than
//!    `application/json`, or a body without one, is refused (415). HTML forms can
//!    only send `text/plain`, `application/x-www-form-urlencoded` and
//!    `multipart/form-data` without a preflight, so cross-site form posts never
//!    get through even where `Origin` is missing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::control::{GroupSwitchRequest, SwitchRefused, TopicSwitch};
use crate::proxy::Proxy;
pub use crate::token::{read_secret, AdminToken};

/// GETs that stay open with `token_for_reads = true`: liveness probes carry no
/// credentials and reveal nothing.
pub const OPEN_READS: &[&str] = &["/healthz", "/readyz"];

#[derive(Clone)]
struct AdminState {
    proxy: Arc<Proxy>,
    metrics: PrometheusHandle,
}

pub fn router(proxy: Arc<Proxy>, metrics: PrometheusHandle) -> Router {
    let state = AdminState { proxy, metrics };
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
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn refused(status: StatusCode, why: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [format!("admin API: {why}")] })),
    )
        .into_response()
}

/// The rules in the module doc, in that order.
async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let config = s.proxy.config();
    let token = s.proxy.admin_token();
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    let headers = req.headers();
    if let Some(expected) = &token {
        let needed = mutating
            || (config.admin_auth.token_for_reads && !OPEN_READS.contains(&req.uri().path()));
        if needed && !bearer(headers).is_some_and(|t| expected.matches(t)) {
            tracing::warn!(method = %req.method(), path = req.uri().path(), "admin request refused: missing or wrong bearer token");
            let mut resp = refused(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"switchyard-admin\""),
            );
            return resp;
        }
    }
    if mutating {
        let host = match &token {
            None => loopback_host(headers, config.admin_bind),
            Some(_) => Ok(()),
        };
        let check = host
            .and_then(|()| same_origin(headers))
            .map_err(|e| (StatusCode::FORBIDDEN, e))
            .and_then(|()| {
                json_or_empty(headers).map_err(|e| (StatusCode::UNSUPPORTED_MEDIA_TYPE, e))
            });
        if let Err((status, why)) = check {
            tracing::warn!(method = %req.method(), path = req.uri().path(), reason = %why, "admin request refused");
            return refused(status, &why);
        }
    }
    next.run(req).await
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn loopback_host(headers: &HeaderMap, bind: SocketAddr) -> Result<(), String> {
    let Some(host) = header_str(headers, header::HOST) else {
        return Err("a Host header is required".into());
    };
    let name = host_name(host);
    let ok = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| {
            ip.to_canonical().is_loopback() || (!ip.is_unspecified() && ip == bind.ip())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Host `{host}` is not this admin API's address; without a token only loopback names are accepted"
        ))
    }
}

fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let own = header_str(headers, header::HOST).map(|h| format!("http://{h}"));
    match own {
        Some(own) if own.eq_ignore_ascii_case(origin) => Ok(()),
        _ => Err(format!(
            "cross-origin request from `{origin}` refused; the admin API is not for web pages"
        )),
    }
}

fn json_or_empty(headers: &HeaderMap) -> Result<(), String> {
    match header_str(headers, header::CONTENT_TYPE) {
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(format!(
                    "Content-Type `{ct}` refused; send application/json"
                ))
            }
        }
        None => {
            let empty = !headers.contains_key(header::TRANSFER_ENCODING)
                && header_str(headers, header::CONTENT_LENGTH).is_none_or(|l| l.trim() == "0");
            if empty {
                Ok(())
            } else {
                Err("a request body needs Content-Type: application/json".into())
            }
        }
    }
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
    let (groups_sample, groups_total) = proxy.identities.group_members_sample(100);
    let attribution = proxy.identities.stats();
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
        // A sample: the full list is client-chosen names without bound.
        "groups_attributed": groups_sample,
        "groups_attributed_total": groups_total,
        "attribution": {
            "identities": attribution.identities,
            "links": attribution.links,
            "bytes": attribution.bytes,
        },
        "virtual_producers": proxy.producers.len(),
        "virtual_producer_bytes": proxy.producers.bytes(),
        "switches": proxy.group_switch_records().iter().map(switch_json).collect::<Vec<_>>(),
        "coordination": coordination_json(proxy),
    })
}

/// Where this instance stands among the instances sharing its routing table
/// (`null` without `[coordination]`).
fn coordination_json(proxy: &Proxy) -> Value {
    let Some(c) = proxy.coordination.as_ref() else {
        return Value::Null;
    };
    let fleet = c.fleet();
    let now = crate::switch::coordination::now_ms();
    let view = c.membership.view();
    let members = view.as_ref().map(|v| v.members.clone()).unwrap_or_default();
    let mut ids: std::collections::BTreeSet<&String> = fleet.instances.keys().collect();
    ids.extend(members.iter());
    let instances: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let seen = fleet.instances.get(id);
            json!({
                "instance": id,
                "route_version": seen.map(|s| s.version),
                "heartbeat_age_ms": seen.map(|s| now.saturating_sub(s.at_ms)),
                "live": members.contains(id),
                "leader": view.as_ref().is_some_and(|v| &v.leader == id),
            })
        })
        .collect();
    let fences: Vec<Value> = c
        .fences
        .lock()
        .expect("fences lock")
        .iter()
        .map(|f| {
            json!({
                "version": f.version,
                "by": f.by,
                "topics": f.flips.iter().map(|x| x.topic.clone()).collect::<Vec<_>>(),
                "held_ms": f.since.elapsed().as_millis() as u64,
                "acknowledged": fleet.acks.get(&f.version).cloned().unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "instance": c.config.instance,
        "cluster": c.config.cluster,
        "topic": c.config.topic,
        "group": c.membership.group(),
        "member": view.is_some(),
        "generation": view.as_ref().map(|v| v.generation),
        "leader": view.as_ref().map(|v| v.leader.clone()),
        "holding": c.holds(),
        "published_version": fleet.published,
        "applied_version": proxy.routes().version,
        "caught_up": fleet.caught_up,
        "error": fleet.error.clone().or_else(|| c.membership.error()),
        "instances": instances,
        "fences": fences,
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
    body: Result<Option<Json<GroupSwitchRequest>>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let error = match body {
        Ok(Some(Json(req))) => {
            let result = s.proxy.switch_group(&group, req).await;
            return group_outcome(&s.proxy, &group, result);
        }
        Ok(None) => "a JSON body with `to` is required".to_string(),
        // An unknown `offsets` or `when` is named by the request's types.
        Err(e) => e.body_text(),
    };
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"errors": [error], "route_version": s.proxy.routes().version})),
    )
        .into_response()
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
