//! The HTTP API (axum). Every error is JSON `{"error": "...", "message": "..."}`.

// Helpers return a ready `Response` as their error: it is what a handler sends anyway, and
// one allocation per failed request does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use replicator_core::{
    Command, GetOutcome, Invalid, Key, NodeId, NotReady, PutOutcome, ReadState, RemoveOutcome,
    Reply, RequestId, Silence, Value,
};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::driver::{Handle, Status};
use crate::metrics::Metrics;

/// Room for a body beyond the largest value, so that a slightly-too-large value still gets
/// the core's precise "value too long" answer.
const BODY_SLACK_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Api {
    pub driver: Handle,
    pub metrics: Arc<Metrics>,
    pub value_bytes_max: usize,
}

pub fn router(api: Api) -> Router {
    let limit = api.value_bytes_max + BODY_SLACK_BYTES;
    Router::new()
        .route("/store/{key}", get(get_key).put(put_key))
        .route("/store", get(empty_key).put(empty_key))
        .route("/store/", get(empty_key).put(empty_key))
        .route("/peers", get(peers))
        .route("/peers/{peer}", axum::routing::delete(remove_peer))
        .route("/clusters", get(clusters))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message.into()})),
    )
        .into_response()
}

fn error_with(
    status: StatusCode,
    error: &str,
    message: impl Into<String>,
    extra: Json,
) -> Response {
    let mut body = json!({"error": error, "message": message.into()});
    if let (Some(b), Json::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (status, axum::Json(body)).into_response()
}

fn with_retry_after(mut r: Response, secs: u32) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET /openapi.json",
    )
}

async fn empty_key() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid",
        "the key is empty: use /store/{key}",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not supported on this path; see GET /openapi.json",
    )
}

fn value_json(v: &Value) -> Json {
    match std::str::from_utf8(v.as_bytes()) {
        Ok(s) => json!(s),
        Err(_) => json!(format!("<{} bytes, not UTF-8>", v.len())),
    }
}

fn silence_json(s: &Silence) -> Json {
    json!({
        "silent_nodes": s.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "silent_clusters": s.clusters.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    })
}

fn silence_message(s: &Silence) -> String {
    format!(
        "some nodes did not answer (nodes: [{}], clusters without any answer: [{}]); the outcome is not known yet and may still commit: retry with the same X-Request-Id to learn it",
        s.nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.clusters
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn invalid(i: &Invalid) -> Response {
    let status = match i {
        Invalid::ValueTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, "invalid", i.to_string())
}

/// What a node that an operator removed answers to every read and write (410 Gone: for good).
fn removed() -> Response {
    error(
        StatusCode::GONE,
        "removed",
        "an operator removed this node from the network: it serves no reads or writes any more \
         (it no longer receives commits, so its answers could be stale); ask another member. To \
         bring this machine back, stop it, wipe its data dir and start it as a new node with \
         --bootstrap of a member",
    )
}

/// The metrics label and the answer for a node that cannot serve.
fn not_ready_labelled(n: &NotReady) -> (&'static str, Response) {
    match n {
        NotReady::Removed => ("removed", removed()),
        _ => ("not_ready", not_ready(n)),
    }
}

fn not_ready(n: &NotReady) -> Response {
    let message = match n {
        NotReady::Removed => return removed(),
        NotReady::Joining => {
            "this node is still copying the keys of the network it joined".to_string()
        }
        NotReady::ClusterTooSmall { members, min } => {
            format!("this node's cluster has {members} members; writes need at least {min}")
        }
        NotReady::Leaving => "this node is leaving the network".to_string(),
    };
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message),
        1,
    )
}

fn overloaded() -> Response {
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight at this node; retry shortly",
        ),
        1,
    )
}

fn driver_gone() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopping",
        "the node is shutting down",
    )
}

fn key_from(path: Result<Path<String>, PathRejection>) -> Result<Key, Response> {
    match path {
        Ok(Path(k)) => Ok(Key::new(k)),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("bad key in the path: {e}"),
        )),
    }
}

async fn put_key(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (label, response) = put_inner(&api, path, headers, body).await;
    api.metrics.put_done(label, started.elapsed());
    response
}

async fn put_inner(
    api: &Api,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (&'static str, Response) {
    let key = match key_from(path) {
        Ok(k) => k,
        Err(r) => return ("invalid", r),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (
                "invalid",
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid",
                    format!(
                        "the body is larger than the limit of {} bytes per value",
                        api.value_bytes_max
                    ),
                ),
            );
        }
        Err(e) => {
            return (
                "invalid",
                error(e.status(), "invalid", format!("cannot read the body: {e}")),
            );
        }
    };
    let request = match headers.get("x-request-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) if !s.is_empty() => Some(RequestId::new(s)),
        Some(_) => {
            return (
                "invalid",
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "X-Request-Id must be non-empty visible ASCII",
                ),
            );
        }
    };
    let cmd = Command::Put {
        key: key.clone(),
        value: Value::new(&body),
        request,
    };
    let Some(reply) = api.driver.call(cmd).await else {
        return ("overloaded", overloaded());
    };
    let Reply::Put(outcome) = reply else {
        return (
            "error",
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "wrong reply"),
        );
    };
    match outcome {
        PutOutcome::Stored => (
            "stored",
            (
                StatusCode::CREATED,
                axum::Json(json!({"result": "stored", "key": key.as_str()})),
            )
                .into_response(),
        ),
        PutOutcome::Exists { value } => (
            "exists",
            error_with(
                StatusCode::CONFLICT,
                "exists",
                format!(
                    "the key {:?} already holds a value; choose another key",
                    key.as_str()
                ),
                json!({"value": value_json(&value)}),
            ),
        ),
        PutOutcome::Busy => (
            "busy",
            with_retry_after(
                error(
                    StatusCode::CONFLICT,
                    "busy",
                    "a concurrent write held this key and this one had no effect; retry in a moment (a retry learns whether the key was taken)",
                ),
                1,
            ),
        ),
        PutOutcome::Unavailable(s) => (
            "unavailable",
            error_with(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                silence_message(&s),
                silence_json(&s),
            ),
        ),
        PutOutcome::Invalid(i) => ("invalid", invalid(&i)),
        PutOutcome::Overloaded => ("overloaded", overloaded()),
        PutOutcome::NotReady(n) => not_ready_labelled(&n),
    }
}

#[derive(Deserialize)]
struct GetParams {
    #[serde(default)]
    verify: bool,
}

async fn get_key(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Response {
    let key = match key_from(path) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("bad query string (verify=true|false): {e}"),
            );
        }
    };
    if params.verify {
        return verify(&api, key).await;
    }
    let (label, response) = match api.driver.call(Command::Get { key: key.clone() }).await {
        None => ("overloaded", overloaded()),
        Some(Reply::Get(outcome)) => match outcome {
            GetOutcome::Value(v) => (
                "value",
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    v.as_bytes().to_vec(),
                )
                    .into_response(),
            ),
            GetOutcome::Unknown => (
                "unknown",
                error(
                    StatusCode::NOT_FOUND,
                    "unknown_key",
                    format!("no value is stored for the key {:?}", key.as_str()),
                ),
            ),
            GetOutcome::Unavailable(s) => (
                "unavailable",
                error_with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "a write of this key is in flight and its outcome could not be learned: {}",
                        silence_message(&s)
                    ),
                    silence_json(&s),
                ),
            ),
            GetOutcome::Invalid(i) => ("invalid", invalid(&i)),
            GetOutcome::Overloaded => ("overloaded", overloaded()),
            GetOutcome::NotReady(n) => not_ready_labelled(&n),
        },
        Some(_) => (
            "error",
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "wrong reply"),
        ),
    };
    api.metrics.get_done(label);
    response
}

async fn verify(api: &Api, key: Key) -> Response {
    match api.driver.call(Command::Verify { key }).await {
        None => overloaded(),
        Some(Reply::Verify(report)) => {
            let answers: Vec<Json> = report
                .answers
                .iter()
                .map(|(node, state)| {
                    let (state, value) = match state {
                        ReadState::Stored(v) => ("stored", value_json(v)),
                        ReadState::Reserved => ("reserved", Json::Null),
                        ReadState::Free => ("free", Json::Null),
                        ReadState::NotReady => ("not_ready", Json::Null),
                    };
                    json!({"node": node.to_string(), "state": state, "value": value})
                })
                .collect();
            let mut body = json!({
                "key": report.key.as_str(),
                "agree": report.agree,
                "answers": answers,
            });
            if let (Some(b), Json::Object(s)) = (body.as_object_mut(), silence_json(&report.silent))
            {
                b.extend(s);
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Some(Reply::Get(GetOutcome::Invalid(i))) => invalid(&i),
        Some(Reply::Get(GetOutcome::NotReady(n))) => not_ready(&n),
        Some(Reply::Get(GetOutcome::Overloaded)) => overloaded(),
        Some(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected reply {other:?}"),
        ),
    }
}

async fn status(api: &Api) -> Result<Status, Response> {
    match tokio::time::timeout(Duration::from_secs(5), api.driver.status()).await {
        Ok(Some(s)) => Ok(s),
        _ => Err(driver_gone()),
    }
}

async fn peers(State(api): State<Api>) -> Response {
    match status(&api).await {
        Ok(s) => axum::Json(json!({
            "node": s.id.to_string(),
            "network": s.network.to_string(),
            "peers": s.peers,
        }))
        .into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// An operator removes a dead node from the membership (here, and through this node on every
/// member). Refused with 409 while the node answers (it is alive) or reservations name it,
/// unless `?force=true`.
async fn remove_peer(
    State(api): State<Api>,
    peer: Result<Path<String>, PathRejection>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Response {
    let (Ok(Path(peer)), Ok(Query(q))) = (peer, query) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected /peers/{peer id}[?force=true]",
        );
    };
    let cmd = Command::RemoveNode {
        node: NodeId::new(&peer),
        force: q.force,
    };
    match api.driver.call(cmd).await {
        Some(Reply::Remove(RemoveOutcome::Removed)) => {
            axum::Json(json!({"result": "removed", "peer": peer})).into_response()
        }
        Some(Reply::Remove(RemoveOutcome::Unknown)) => {
            if status(&api).await.is_ok_and(|s| s.removed) {
                return removed();
            }
            error(
                StatusCode::NOT_FOUND,
                "unknown_peer",
                format!("{peer} is not a member (or is this node)"),
            )
        }
        Some(Reply::Remove(RemoveOutcome::Alive)) => error_with(
            StatusCode::CONFLICT,
            "alive",
            format!(
                "{peer} answered: it is alive, and only a dead node is removed (a live node that \
                 is removed would serve stale reads until it hears of it). Stop it for good \
                 first, or retry with ?force=true"
            ),
            json!({"peer": peer}),
        ),
        Some(Reply::Remove(RemoveOutcome::Refused { open })) => error_with(
            StatusCode::CONFLICT,
            "open_reservations",
            format!(
                "{} reservation(s) held here name {peer}; removing it may abort or strand them. \
                 Bring it back, or retry with ?force=true",
                open.len()
            ),
            json!({"proposals": open.iter().map(|p| p.to_string()).collect::<Vec<_>>()}),
        ),
        Some(Reply::Remove(RemoveOutcome::Unconfirmed { silent })) => error_with(
            StatusCode::SERVICE_UNAVAILABLE,
            "unconfirmed",
            format!(
                "{} member(s) did not say whether reservations there name {peer}; nothing was \
                 removed. Retry, or use ?force=true",
                silent.len()
            ),
            json!({"silent_nodes": silent.iter().map(|n| n.to_string()).collect::<Vec<_>>()}),
        ),
        Some(Reply::Remove(RemoveOutcome::InProgress)) => error(
            StatusCode::CONFLICT,
            "in_progress",
            "another removal is being checked at this node; retry in a moment",
        ),
        Some(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "wrong reply"),
        None => overloaded(),
    }
}

async fn clusters(State(api): State<Api>) -> Response {
    match status(&api).await {
        Ok(s) => {
            let clusters: serde_json::Map<String, Json> = s
                .membership
                .clusters()
                .map(|(c, nodes)| {
                    (
                        c.to_string(),
                        json!(nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
                    )
                })
                .collect();
            axum::Json(json!({
                "network": s.network.to_string(),
                "digest": format!("{:016x}", s.membership.digest().0),
                "clusters": clusters,
            }))
            .into_response()
        }
        Err(r) => r,
    }
}

async fn health(State(api): State<Api>) -> Response {
    match status(&api).await {
        Ok(s) => {
            let own = s.membership.nodes_of(&s.cluster).len();
            let ready = s.ready && !s.removed;
            let writable = ready && !s.leaving && own >= s.cluster_size_min;
            let state = if s.removed {
                "removed"
            } else if writable {
                "ok"
            } else {
                "degraded"
            };
            axum::Json(json!({
                "status": state,
                "node": s.id.to_string(),
                "cluster": s.cluster.to_string(),
                "network": s.network.to_string(),
                "removed": s.removed,
                "ready": ready,
                "leaving": s.leaving,
                "writable": writable,
                "members": s.membership.len(),
                "clusters": s.membership.cluster_count(),
                "cluster_members": own,
                "cluster_size_min": s.cluster_size_min,
                "peers_down": s.peers.iter().filter(|p| !p.up).count(),
                "keys_stored": s.stats.keys_stored,
                "reservations_open": s.stats.reservations_open,
                "proposals_in_flight": s.stats.proposals_in_flight,
                "resolutions": s.stats.resolutions,
            }))
            .into_response()
        }
        Err(r) => r,
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let s = status(&api).await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(s.as_ref()),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
