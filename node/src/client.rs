//! `replicator put|get|status`: a small client of a node's HTTP API.
//!
//! Exit codes: 0 ok, 1 error or unavailable, 2 usage (clap), 3 conflict (exists or busy, or a
//! refused removal), 4 not found, 5 `status`: the node answers but a write cannot commit there
//! now, or it was removed.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{GetArgs, LeaveArgs, NodeArg, PutArgs, RemoveArgs};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFLICT: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
/// `status`: the node answers, but is degraded (a write cannot commit now) or removed.
pub const EXIT_DEGRADED: u8 = 5;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain-HTTP client (no TLS: nodes serve HTTP on a private network or localhost).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer` when set.
    token: Option<String>,
}

pub struct HttpResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
            token: None,
        }
    }
}

impl HttpClient {
    /// A client that sends the token of `--token-file`, if given.
    pub fn for_node(node: &NodeArg) -> Result<HttpClient> {
        let token = match &node.token_file {
            Some(path) => Some(crate::run::read_token(path)?),
            None => None,
        };
        Ok(HttpClient {
            token,
            ..HttpClient::default()
        })
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Vec<u8>,
        request_id: Option<&str>,
    ) -> Result<HttpResponse> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("bad URL {url}"))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.request(req))
            .await
            .map_err(|_| anyhow!("no answer from {url} within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("cannot read the answer")?
            .to_bytes();
        Ok(HttpResponse { status, body })
    }
}

/// Percent-encodes a key for a URL path segment.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn store_url(node: &str, key: &str) -> String {
    format!("{}/store/{}", node.trim_end_matches('/'), encode_key(key))
}

fn report(resp: &HttpResponse) -> String {
    let j = resp.json();
    match (j.get("error"), j.get("message")) {
        (Some(e), Some(m)) => {
            let mut s = format!(
                "{}: {}",
                e.as_str().unwrap_or("?"),
                m.as_str().unwrap_or("")
            );
            if let Some(v) = j.get("value").and_then(|v| v.as_str()) {
                s.push_str(&format!(" (stored value: {v:?})"));
            }
            s
        }
        _ => format!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ),
    }
}

fn exit_for(status: StatusCode) -> ExitCode {
    match status.as_u16() {
        200..=299 => ExitCode::SUCCESS,
        409 => ExitCode::from(EXIT_CONFLICT),
        404 => ExitCode::from(EXIT_NOT_FOUND),
        _ => ExitCode::from(EXIT_ERROR),
    }
}

fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(EXIT_USAGE)
}

pub async fn put(args: PutArgs) -> ExitCode {
    let value = if args.value == "-" {
        let mut v = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut v) {
            eprintln!("error: cannot read the value from stdin: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
        v
    } else {
        args.value.into_bytes()
    };
    let url = store_url(&args.node.node, &args.key);
    let client = match HttpClient::for_node(&args.node) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match client
        .request(Method::PUT, &url, value, args.request_id.as_deref())
        .await
    {
        Ok(resp) if resp.status == StatusCode::CREATED => {
            println!("stored {:?}", args.key);
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("{}", report(&resp));
            exit_for(resp.status)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub async fn get(args: GetArgs) -> ExitCode {
    let mut url = store_url(&args.node.node, &args.key);
    if args.verify {
        url.push_str("?verify=true");
    }
    let client = match HttpClient::for_node(&args.node) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match client.request(Method::GET, &url, Vec::new(), None).await {
        Ok(resp) if resp.status == StatusCode::OK => {
            if args.verify {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&resp.json()).unwrap_or_default()
                );
            } else {
                let mut out = std::io::stdout();
                let _ = out.write_all(&resp.body);
                if std::io::IsTerminal::is_terminal(&out) {
                    let _ = out.write_all(b"\n");
                }
            }
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("{}", report(&resp));
            exit_for(resp.status)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub async fn remove(args: RemoveArgs) -> ExitCode {
    let client = match HttpClient::for_node(&args.node) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let base = args.node.node.trim_end_matches('/');
    let url = format!(
        "{base}/peers/{}?force={}",
        encode_key(&args.peer),
        args.force
    );
    match client.request(Method::DELETE, &url, Vec::new(), None).await {
        Ok(resp) if resp.status.is_success() => {
            println!("removed {}", args.peer);
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("{}", report(&resp));
            if resp.status == StatusCode::CONFLICT {
                ExitCode::from(EXIT_CONFLICT)
            } else if resp.status == StatusCode::NOT_FOUND {
                ExitCode::from(EXIT_NOT_FOUND)
            } else {
                ExitCode::from(EXIT_ERROR)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub async fn leave(args: LeaveArgs) -> ExitCode {
    let client = match HttpClient::for_node(&args.node) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let base = args.node.node.trim_end_matches('/');
    let url = format!("{base}/leave?peer={}", encode_key(&args.peer));
    match client.request(Method::POST, &url, Vec::new(), None).await {
        Ok(resp) if resp.status.is_success() => {
            println!("{} left the network", args.peer);
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("{}", report(&resp));
            if resp.status == StatusCode::CONFLICT {
                ExitCode::from(EXIT_CONFLICT)
            } else {
                ExitCode::from(EXIT_ERROR)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub async fn status(args: NodeArg) -> ExitCode {
    let client = match HttpClient::for_node(&args) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let base = args.node.trim_end_matches('/');
    let mut all = serde_json::Map::new();
    for part in ["health", "peers", "clusters"] {
        match client
            .request(Method::GET, &format!("{base}/{part}"), Vec::new(), None)
            .await
        {
            Ok(resp) if resp.status.is_success() => {
                all.insert(part.to_string(), resp.json());
            }
            Ok(resp) => {
                eprintln!("{}", report(&resp));
                return ExitCode::from(EXIT_ERROR);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(EXIT_ERROR);
            }
        }
    }
    let silent = all
        .get("health")
        .and_then(|h| h.get("silent_nodes"))
        .and_then(|s| s.as_array())
        .map_or(0, Vec::len);
    let state = all
        .get("health")
        .and_then(|h| h.get("status"))
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_string();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(all)).unwrap_or_default()
    );
    if state == "ok" {
        if silent > 0 {
            eprintln!(
                "the node is ok: writes commit, but {silent} member(s) are silent (see \
                 health.silent_nodes); each cluster tolerates fewer failures until they return"
            );
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("the node is {state}: see health.not_writable");
        ExitCode::from(EXIT_DEGRADED)
    }
}
