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

use crate::dashboard::{self, AuthView, Dashboard};
use crate::driver::{CallError, Handle};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::writability;

/// Room for a body beyond the largest value, so that a slightly-too-large value still gets
/// the core's precise "value too long" answer.
pub const BODY_SLACK_BYTES: usize = 1024;
/// The longest X-Request-Id (the core's `request_id_bytes_max`, as documented in openapi.json).
const REQUEST_ID_BYTES_MAX: usize = 128;

/// 1 to [`REQUEST_ID_BYTES_MAX`] bytes of visible ASCII (`!` to `~`), as openapi.json says.
fn valid_request_id(id: &[u8]) -> bool {
    (1..=REQUEST_ID_BYTES_MAX).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

#[derive(Clone)]
pub struct Api {
    pub driver: Handle,
    pub metrics: Arc<Metrics>,
    pub value_bytes_max: usize,
    /// No network key: anyone who reaches the libp2p address can join.
    pub network_open: bool,
    /// Who may call what.
    pub auth: Arc<Auth>,
    /// Where `POST /leave` asks the node's main task to leave the network.
    pub leave: tokio::sync::mpsc::Sender<LeaveAsk>,
    /// The members' reports and the rates history behind `GET /dashboard`.
    pub dashboard: Arc<Dashboard>,
}

/// A request to leave the network, answered once the leave completed or failed.
pub type LeaveAsk = tokio::sync::oneshot::Sender<LeaveAnswer>;

/// How a leave ended.
#[derive(Debug)]
pub enum LeaveAnswer {
    /// Every value accepted here is decided, this node's cluster holds its decisions, the
    /// leave is on its disk and its goodbye was said: the process exits.
    Left,
    /// It did not complete (why): the node stopped without goodbye and stays a member.
    Incomplete(String),
}

/// The API's bearer token and the requests that need it.
#[derive(Debug, Default)]
pub struct Auth {
    /// `None`: no token configured, the API is open to whoever reaches it.
    pub token: Option<String>,
    /// Writes (PUT) need the token too.
    pub writes: bool,
    /// Reads (GET /store, /peers, /clusters, /metrics) need the token too.
    pub reads: bool,
}

/// What a request does, for the token check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    /// /health, /openapi.json and the dashboard's page (`/`, its script and style: no data):
    /// for load balancers, tools and browsers, never protected.
    Public,
    Read,
    Write,
    /// Membership changes (DELETE /peers/{peer}, POST /leave).
    Operator,
}

impl Auth {
    fn needs_token(&self, access: Access) -> bool {
        match access {
            Access::Public => false,
            Access::Read => self.reads,
            Access::Write => self.writes,
            Access::Operator => true,
        }
    }

    /// The request carries the configured token.
    fn accepts(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token, given) {
            (Some(token), Some(given)) => constant_time_eq(given.as_bytes(), token.as_bytes()),
            _ => false,
        }
    }

    /// `Err` with the answer when the request may not go on.
    fn check(&self, access: Access, headers: &HeaderMap) -> Result<(), Response> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if !self.needs_token(access) {
            return Ok(());
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this request needs the API token: Authorization: Bearer <token>",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(r)
            }
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the API token is wrong",
            )),
        }
    }
}

/// Compares without an early exit, so that the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn access_of(method: &axum::http::Method, path: &str) -> Access {
    use axum::http::Method;
    if path.starts_with("/store") {
        if method == Method::PUT {
            Access::Write
        } else {
            Access::Read
        }
    } else if (path.starts_with("/peers/") && method == Method::DELETE) || path == "/leave" {
        Access::Operator
    } else if matches!(path, "/peers" | "/clusters" | "/metrics" | "/dashboard")
        || path.starts_with("/peers/")
    {
        Access::Read
    } else {
        Access::Public
    }
}

async fn authorize(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let access = access_of(request.method(), request.uri().path());
    match api.auth.check(access, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(r) => r,
    }
}

pub fn router(api: Api) -> Router {
    let limit = api.value_bytes_max + BODY_SLACK_BYTES;
    Router::new()
        .route("/store/{key}", get(get_key).put(put_key))
        .route("/store", get(empty_key).put(empty_key))
        .route("/store/", get(empty_key).put(empty_key))
        .route("/peers", get(peers))
        .route("/peers/{peer}", axum::routing::delete(remove_peer))
        .route("/leave", axum::routing::post(leave))
        .route("/clusters", get(clusters))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/dashboard", get(dashboard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

pub fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
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
    let (status, code) = match i {
        Invalid::ValueTooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "invalid"),
        // Not a malformed request: it conflicts with what this id was first used for.
        Invalid::RequestIdReused => (StatusCode::CONFLICT, "request_id_reused"),
        _ => (StatusCode::BAD_REQUEST, "invalid"),
    };
    error(status, code, i.to_string())
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

/// The answer when the core gave none.
fn call_failed(e: CallError) -> Response {
    match e {
        CallError::Overloaded => overloaded(),
        CallError::Stopped => driver_gone(),
        CallError::TimedOut => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "this node did not answer in time (its storage may be stalled); a write may still take effect: retry with the same X-Request-Id to learn it",
            ),
            1,
        ),
    }
}

fn call_label(e: CallError) -> &'static str {
    match e {
        CallError::Overloaded => "overloaded",
        CallError::Stopped => "error",
        CallError::TimedOut => "unavailable",
    }
}

/// What a node whose storage writes fail answers to anything that needs a write or the
/// protocol: nothing happened.
fn storage_stalled(why: &str) -> Response {
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!(
                "this node cannot write to its disk ({why}); nothing happened. It serves committed values it holds and resumes by itself once writes succeed again; ask another node meanwhile"
            ),
        ),
        5,
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
    let request = match headers.get("x-request-id").map(|v| v.as_bytes()) {
        None => None,
        Some(id) if valid_request_id(id) => {
            Some(RequestId::new(std::str::from_utf8(id).expect("ASCII")))
        }
        Some(_) => {
            return (
                "invalid",
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!(
                        "X-Request-Id must be 1 to {REQUEST_ID_BYTES_MAX} characters of visible ASCII (no spaces)"
                    ),
                ),
            );
        }
    };
    if let Some(why) = api.driver.storage_stalled() {
        return ("storage_unavailable", storage_stalled(&why));
    }
    let cmd = Command::Put {
        key: key.clone(),
        value: Value::new(&body),
        request,
    };
    let reply = match api.driver.call(cmd).await {
        Ok(r) => r,
        Err(e) => return (call_label(e), call_failed(e)),
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
    if let Some(why) = api.driver.storage_stalled() {
        let (label, response) = match api.driver.read_stored(key).await {
            Ok(Some(v)) => ("value", value_response(&v)),
            Ok(None) => ("storage_unavailable", storage_stalled(&why)),
            Err(e) => (call_label(e), call_failed(e)),
        };
        api.metrics.get_done(label);
        return response;
    }
    if params.verify {
        return verify(&api, key).await;
    }
    // A decision this node's storage holds: served without the core.
    if let Some(value) = api.driver.stored_value(&key) {
        api.metrics.get_done("value");
        return value_response(&value);
    }
    let (label, response) = match api.driver.call(Command::Get { key: key.clone() }).await {
        Err(e) => (call_label(e), call_failed(e)),
        Ok(Reply::Get(outcome)) => match outcome {
            GetOutcome::Value(v) => ("value", value_response(&v)),
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
                        "the key's state could not be learned in time (a write of it may be in flight, or too few of this node's cluster answered): {}",
                        silence_message(&s)
                    ),
                    silence_json(&s),
                ),
            ),
            GetOutcome::Invalid(i) => ("invalid", invalid(&i)),
            GetOutcome::Overloaded => ("overloaded", overloaded()),
            GetOutcome::NotReady(n) => not_ready_labelled(&n),
        },
        Ok(_) => (
            "error",
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "wrong reply"),
        ),
    };
    api.metrics.get_done(label);
    response
}

fn value_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        v.as_bytes().to_vec(),
    )
        .into_response()
}

async fn verify(api: &Api, key: Key) -> Response {
    match api.driver.call(Command::Verify { key }).await {
        Err(e) => call_failed(e),
        Ok(Reply::Verify(report)) => {
            let answers: Vec<Json> = report
                .answers
                .iter()
                .map(|(node, state)| {
                    let (state, value) = match state {
                        ReadState::Stored(v) => ("stored", value_json(v)),
                        ReadState::Undecided => ("undecided", Json::Null),
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
        Ok(Reply::Get(GetOutcome::Invalid(i))) => invalid(&i),
        Ok(Reply::Get(GetOutcome::NotReady(n))) => not_ready(&n),
        Ok(Reply::Get(GetOutcome::Overloaded)) => overloaded(),
        Ok(other) => error(
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
struct LeaveQuery {
    peer: String,
}

/// An operator asks this node to leave the network for good (a stop, SIGTERM, is not a
/// leave). `peer` must name this node, so that a request sent to the wrong address does
/// nothing. Answers once the leave completed (200; the process then exits) or could not
/// (503 `leave_incomplete`: the node stopped without goodbye and stays a member).
async fn leave(
    State(api): State<Api>,
    query: Result<Query<LeaveQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected /leave?peer={this node's peer id}",
        );
    };
    let s = match status(&api).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if s.removed {
        return removed();
    }
    if q.peer != s.id.to_string() {
        return error(
            StatusCode::CONFLICT,
            "not_this_node",
            format!(
                "this node is {}, not {}: nothing done (name the node you ask to leave)",
                s.id, q.peer
            ),
        );
    }
    let (ask, answer) = tokio::sync::oneshot::channel();
    if api.leave.try_send(ask).is_err() {
        return stopping();
    }
    match answer.await {
        Ok(LeaveAnswer::Left) => {
            axum::Json(json!({"result": "left", "peer": s.id.to_string()})).into_response()
        }
        Ok(LeaveAnswer::Incomplete(why)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "leave_incomplete", why)
        }
        Err(_) => stopping(),
    }
}

/// A node already stopping or leaving.
fn stopping() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopping",
        "this node is stopping or already leaving",
    )
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// An operator removes a dead node from the membership (here, and through this node on every
/// member). Refused with 409 while the node answers (it is alive) or its cluster has an even
/// number of members, with 503 while its cluster's members cannot confirm it, unless
/// `?force=true`.
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
    if let Some(why) = api.driver.storage_stalled() {
        return storage_stalled(&why);
    }
    let cmd = Command::RemoveNode {
        node: NodeId::new(&peer),
        force: q.force,
    };
    match api.driver.call(cmd).await {
        Ok(Reply::Remove(RemoveOutcome::Removed)) => {
            axum::Json(json!({"result": "removed", "peer": peer})).into_response()
        }
        Ok(Reply::Remove(RemoveOutcome::Unknown)) => {
            if status(&api).await.is_ok_and(|s| s.removed) {
                return removed();
            }
            error(
                StatusCode::NOT_FOUND,
                "unknown_peer",
                format!("{peer} is not a member (or is this node)"),
            )
        }
        Ok(Reply::Remove(RemoveOutcome::Alive)) => error_with(
            StatusCode::CONFLICT,
            "alive",
            format!(
                "{peer} answered: it is alive, and only a dead node is removed (a live node that \
                 is removed would serve stale reads until it hears of it). Stop it for good \
                 first, or force it (?force=true; replicator remove --force)"
            ),
            json!({"peer": peer}),
        ),
        Ok(Reply::Remove(RemoveOutcome::EvenCluster { members })) => error_with(
            StatusCode::CONFLICT,
            "even_cluster",
            format!(
                "{peer}'s cluster has {members} members, an even number: without it, a majority \
                 of the rest might miss a value a majority of the whole cluster accepted. Add a \
                 node to the cluster first (then remove this one), or force it (?force=true; replicator \
                 remove --force)"
            ),
            json!({"cluster_members": members}),
        ),
        Ok(Reply::Remove(RemoveOutcome::Unconfirmed { silent, disagree })) => error_with(
            StatusCode::SERVICE_UNAVAILABLE,
            "unconfirmed",
            format!(
                "{} member(s) of {peer}'s cluster did not answer and {} know its members \
                 otherwise (views still converging); nothing was removed. Retry, or use \
                 ?force=true",
                silent.len(),
                disagree.len()
            ),
            json!({
                "silent_nodes": silent.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "disagreeing_nodes": disagree.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            }),
        ),
        Ok(Reply::Remove(RemoveOutcome::NotReady)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this node is still joining and may not know every member yet, so it cannot count \
             the node's cluster; ask a ready member",
        ),
        Ok(Reply::Remove(RemoveOutcome::InProgress)) => error(
            StatusCode::CONFLICT,
            "in_progress",
            "another removal is being checked at this node; retry in a moment",
        ),
        Ok(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "wrong reply"),
        Err(e) => call_failed(e),
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
        Ok(s) => axum::Json(health_json(&api, &s)).into_response(),
        Err(r) => r,
    }
}

/// `ready`: this node serves reads. `writable`: a write sent here can be decided now: a
/// majority of every cluster is reachable (this node counts for its own), and this node can
/// write to its disk. When it cannot, `not_writable` says why. `silent_nodes` names the members
/// the transport reports down: a minority of every cluster may be, at no cost to writes.
fn health_json(api: &Api, s: &Status) -> Json {
    let own = s.membership.nodes_of(&s.cluster).len();
    let ready = s.ready && !s.removed;
    let silent = writability::silent(s);
    let reach = writability::reach(s);
    let without_majority = writability::without_majority(&reach);
    let not_writable = writability::not_writable(s, &reach);
    let writable = not_writable.is_empty();
    let state = if s.removed {
        "removed"
    } else if writable {
        // Silent members a majority of every cluster outvotes cost nothing: still "ok" (they
        // are named in silent_nodes).
        "ok"
    } else {
        "degraded"
    };
    json!({
        "status": state,
        "node": s.id.to_string(),
        "cluster": s.cluster.to_string(),
        "network": s.network.to_string(),
        "network_open": api.network_open,
        "api_open": api.auth.token.is_none(),
        "removed": s.removed,
        "ready": ready,
        "leaving": s.leaving,
        "writable": writable,
        "not_writable": not_writable,
        "clusters_without_majority": without_majority,
        "silent_nodes": silent,
        "suspected_nodes": s.suspects.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "storage": match &s.storage_stalled {
            None => "ok".to_string(),
            Some(e) => format!("writes failing, retried: {e}"),
        },
        "members": s.membership.len(),
        "clusters": s.membership.cluster_count(),
        "cluster_members": own,
        "cluster_size_min": s.cluster_size_min,
        "peers_down": silent.len(),
        "keys_stored": s.stats.keys_stored,
        "accepted_undecided": s.stats.accepted_undecided,
        "damaged_keys": s.stats.damaged_keys,
        "puts_in_flight": s.stats.puts_in_flight,
        "proposers": s.stats.proposers,
        "behind": s.stats.behind,
    })
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

/// The page only loads its own script and style and only talks to this node.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                             connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                             form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_page() -> Response {
    asset("text/html; charset=utf-8", dashboard::INDEX_HTML)
}

async fn dashboard_script() -> Response {
    asset("text/javascript; charset=utf-8", dashboard::SCRIPT_JS)
}

async fn dashboard_style() -> Response {
    asset("text/css; charset=utf-8", dashboard::STYLE_CSS)
}

#[derive(Deserialize)]
struct DashboardQuery {
    /// Only the rate samples taken after this time (Unix milliseconds).
    since: Option<u64>,
}

async fn dashboard(
    State(api): State<Api>,
    headers: HeaderMap,
    query: Result<Query<DashboardQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected /dashboard[?since={unix milliseconds}]",
        );
    };
    let s = match status(&api).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let auth = AuthView {
        token_configured: api.auth.token.is_some(),
        writes_need_token: api.auth.token.is_some() && api.auth.writes,
        reads_need_token: api.auth.token.is_some() && api.auth.reads,
        token_accepted: api.auth.accepts(&headers),
    };
    let body = dashboard::dashboard_json(
        &api.dashboard,
        &s,
        &api.metrics,
        auth,
        api.network_open,
        q.since,
        unix_ms(),
    );
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
