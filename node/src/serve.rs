//! The HTTP server loop: hyper connections around the axum router, with limits so that slow or
//! idle clients can never hold the API.
//!
//! - at most `connections_max` connections: when they are all open, a new one takes the place of
//!   the connection idle the longest (no request in progress: it is closed), and is itself
//!   closed at once only if every connection is busy. So a flood of idle or slow sockets never
//!   keeps others out, and the process keeps file descriptors for everything else;
//! - a request head must arrive within `header` of its first byte (slowloris on headers);
//! - a body within `body` of its head (answered 408, connection closed);
//! - a connection with no request in progress for `idle` is closed (new connections that send
//!   nothing, and idle keep-alive ones).
//!
//! Each connection has a watchdog that reads its [`Activity`]; the byte stream is wrapped so
//! that the first byte of a request head is seen.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tower_service::Service;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The server's limits (flags of `replicator run`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub connections_max: usize,
    /// The largest body read; a larger one is answered 413.
    pub body_bytes_max: usize,
}

/// How often a failing `accept` (e.g. out of file descriptors) is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How often a refused connection is logged at most.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often a stopping server looks whether its last requests were answered.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Serves `app` on `listener` until `stop` fires; then accepts nothing more and returns once
/// every request being served was answered (requests that arrive later on open connections
/// are served too, until then). The caller bounds how long it waits for that.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let origin = Instant::now();
    let open = Arc::new(Mutex::new(Open::default()));
    let mut refused_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => {
                while lock(&open).conns.values().any(|a| a.busy.load(Ordering::Relaxed) > 0) {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                return;
            }
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot accept an HTTP connection; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let activity = Arc::new(Activity::new(origin));
        let Some(id) = lock(&open).admit(activity.clone(), limits.connections_max) else {
            metrics.inc(&metrics.http_connections_refused);
            if refused_logged.is_none_or(|t| t.elapsed() >= REFUSED_LOG_INTERVAL) {
                refused_logged = Some(Instant::now());
                warn!(
                    max = limits.connections_max,
                    remote = %remote,
                    "every HTTP connection is busy: closing new ones (--http-connections-max)"
                );
            }
            drop(stream);
            continue;
        };
        let (app, limits, open) = (app.clone(), limits.clone(), open.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, limits, activity).await;
            lock(&open).conns.remove(&id);
        });
    }
}

/// The open connections.
#[derive(Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, Arc<Activity>>,
}

impl Open {
    /// Registers a new connection, making room by evicting the connection idle the longest if
    /// `max` are open. `None`: every connection is busy.
    fn admit(&mut self, activity: Arc<Activity>, max: usize) -> Option<u64> {
        if self.conns.len() >= max {
            let victim = self
                .conns
                .iter()
                .filter(|(_, a)| a.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, a)| a.quiet_since_ms())
                .map(|(id, _)| *id)?;
            if let Some(a) = self.conns.remove(&victim) {
                a.evict.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        self.conns.insert(id, activity);
        Some(id)
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().expect("never poisoned: no panics inside")
}

/// What the watchdog knows of one connection, in ms since the server started.
struct Activity {
    origin: Instant,
    /// Requests being handled.
    busy: AtomicUsize,
    /// When the first byte of the next request head arrived (0: none yet).
    head_started_ms: AtomicU64,
    /// When the connection last became idle (accepted, or a response done).
    idle_since_ms: AtomicU64,
    /// Close the connection: another one needs its place.
    evict: Notify,
}

impl Activity {
    fn new(origin: Instant) -> Self {
        let a = Activity {
            origin,
            busy: AtomicUsize::new(0),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
        };
        a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
        a
    }

    /// Never 0, so that 0 means "not set".
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// Since when the connection has not made progress: its idle start, or the first byte of a
    /// head still incomplete (a slow head goes first).
    fn quiet_since_ms(&self) -> u64 {
        match self.head_started_ms.load(Ordering::Relaxed) {
            0 => self.idle_since_ms.load(Ordering::Relaxed),
            head => head.min(self.idle_since_ms.load(Ordering::Relaxed)),
        }
    }

    fn bytes_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                0,
                self.now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
    }

    fn request_done(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Why the connection should be closed now, if it should.
    fn overdue(&self, limits: &Limits) -> Option<&'static str> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now_ms();
        let head = self.head_started_ms.load(Ordering::Relaxed);
        let idle = self.idle_since_ms.load(Ordering::Relaxed);
        if head != 0 {
            (now.saturating_sub(head) > limits.header.as_millis() as u64)
                .then_some("request head too slow")
        } else {
            (now.saturating_sub(idle) > limits.idle.as_millis() as u64).then_some("idle")
        }
    }
}

/// The TCP stream, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_connection(stream: TcpStream, app: Router, limits: Limits, activity: Arc<Activity>) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let (activity, limits) = (activity.clone(), limits.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let (app, activity, limits) = (app.clone(), activity.clone(), limits.clone());
            async move {
                activity.request_started();
                let response = handle(app, request, &limits).await;
                activity.request_done();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let tick = (limits.header.min(limits.idle) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = activity.evict.notified() => {
                debug!("closing an idle HTTP connection: a new one needs its place");
                return;
            }
            _ = watchdog.tick() => {
                if let Some(why) = activity.overdue(&limits) {
                    debug!(why, "closing an HTTP connection");
                    return;
                }
            }
        }
    }
}

/// Reads the body within the limits, then hands the request to the router.
async fn handle(mut app: Router, request: Request<Incoming>, limits: &Limits) -> Response {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, limits.body_bytes_max);
    let bytes = match tokio::time::timeout(limits.body, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return closing(crate::http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid",
                format!(
                    "the body is larger than the limit of {} bytes",
                    limits.body_bytes_max
                ),
            ));
        }
        Ok(Err(e)) => {
            return closing(crate::http::error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("cannot read the body: {e}"),
            ));
        }
        Err(_) => {
            return closing(crate::http::error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body did not arrive within {} ms (--http-body-timeout-ms)",
                    limits.body.as_millis()
                ),
            ));
        }
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    match app.call(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The connection closes after this answer (the rest of the request is not read).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r.into_response()
}

/// Raises the soft open-files limit to the hard one, so that `connections_max` HTTP
/// connections and the libp2p connections fit. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return None;
            }
            if l.rlim_cur < l.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: l.rlim_max,
                    rlim_max: l.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    return Some(raised.rlim_cur);
                }
            }
        }
        Some(l.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}
