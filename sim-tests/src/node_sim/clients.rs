//! The clients: concurrent PUTs (fresh and hot keys, with and without request ids, retried
//! while indeterminate) and GETs through the driver's handle or the HTTP router, bursts past
//! the driver's queue, and what each answer tells the linearizability checker.

use std::sync::Arc;
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle as SimHandle;
use madsim::time::sleep;
use replicator_core::{Command, GetOutcome, Key, PutOutcome, Reply, RequestId, Value};
use replicator_node::driver::{CallError, REQUEST_QUEUE_LEN};

use crate::linearizability::{GetResult, Op, PutResult};

use super::world::{Running, World};
use super::{API_TOKEN, ATTEMPTS_MAX, CALL_TIMEOUT};

/// What one call was answered, in terms both paths (handle and HTTP) share.
enum Answer {
    Put(PutResult),
    Get(GetResult),
}

pub(super) async fn client(world: Arc<World>, c: usize, stop: Arc<std::sync::atomic::AtomicBool>) {
    let spec = world.spec.clone();
    let n = world.machines.len();
    let mut seq = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        sleep(Duration::from_millis(thread_rng().gen_range(0..40))).await;
        let ix = thread_rng().gen_range(0..n);
        if spec.minority().contains(&ix) {
            continue;
        }
        let Some(running) = world.running(ix) else {
            continue;
        };
        let via_http = thread_rng().gen_bool(spec.http_share);
        let hot = thread_rng().gen_bool(spec.hot_share);
        let key = if hot {
            format!("hot-{}", thread_rng().gen_range(0..spec.hot_keys))
        } else if thread_rng().gen_bool(0.5) && seq > 1 {
            // A key this client wrote before (a read of it must see it).
            format!("k-{c}-{}", thread_rng().gen_range(1..seq))
        } else {
            format!("k-{c}-{seq}")
        };
        if spec.bursts && thread_rng().gen_bool(0.01) {
            burst(&world, c, seq, ix, &running).await;
            continue;
        }
        if thread_rng().gen_bool(spec.read_share) {
            let invoked = world.micros();
            let answer = call(
                &world,
                ix,
                &running,
                via_http,
                CallKind::Get { key: key.clone() },
            )
            .await;
            let returned = world.micros();
            let result = match answer {
                Some(Answer::Get(r)) => r,
                _ => GetResult::Unavailable,
            };
            if matches!(result, GetResult::Unavailable) {
                world.minority_miss(format!("GET {key} at {}", world.machines[ix].id));
            }
            world.history.lock().unwrap().push(Op::get(
                c as u64,
                key,
                invoked,
                Some(returned),
                result,
            ));
            continue;
        }
        let value = format!("v-{c}-{seq}");
        let request = thread_rng()
            .gen_bool(spec.request_id_share)
            .then(|| format!("r-{c}-{seq}"));
        let invoked = world.micros();
        // The op's answer so far; `Pending` while no attempt was answered.
        let mut result = PutResult::Pending;
        let mut returned = None;
        for attempt in 0..ATTEMPTS_MAX {
            // A retry goes to the same node (the request record lives there), once it runs.
            let running = if attempt == 0 {
                Some(running.clone())
            } else {
                sleep(Duration::from_millis(200)).await;
                world.running(ix)
            };
            let Some(running) = running else {
                continue;
            };
            let kind = CallKind::Put {
                key: key.clone(),
                value: value.clone(),
                request: request.clone(),
            };
            let answer = call(&world, ix, &running, via_http, kind).await;
            let now = world.micros();
            let earlier_indeterminate = attempt > 0;
            match answer {
                Some(Answer::Put(r)) => {
                    returned = Some(now);
                    result = match r {
                        // Its own earlier attempt won: the op took effect within its interval.
                        PutResult::Exists { value: w } if w == value.as_bytes() => {
                            PutResult::Stored
                        }
                        // The retry was not even taken (overloaded, not ready): it says
                        // nothing about the earlier attempt, which may still commit.
                        PutResult::NoEffect if earlier_indeterminate => PutResult::Unavailable,
                        r => r,
                    };
                }
                _ => {
                    if result == PutResult::Pending {
                        returned = None;
                    }
                }
            }
            let definite = !matches!(result, PutResult::Unavailable | PutResult::Pending);
            if definite || request.is_none() {
                break;
            }
        }
        let returned = if result == PutResult::Pending {
            None
        } else {
            returned
        };
        if matches!(
            result,
            PutResult::Unavailable | PutResult::Pending | PutResult::NoEffect
        ) {
            world.minority_miss(format!(
                "PUT {key} at {}: {result:?}",
                world.machines[ix].id
            ));
        }
        if result == PutResult::Stored {
            world
                .acknowledged
                .lock()
                .unwrap()
                .insert(key.clone(), value.clone().into_bytes());
        }
        world.history.lock().unwrap().push(Op::put(
            c as u64,
            key,
            value.into_bytes(),
            invoked,
            returned,
            result,
        ));
    }
}

/// More PUTs of fresh keys at once than the driver queues (backpressure): the calls it cannot
/// take are answered Overloaded, and those must have had no effect.
async fn burst(world: &Arc<World>, c: usize, seq: u64, ix: usize, running: &Running) {
    const BURST_CALLS: usize = REQUEST_QUEUE_LEN + 200;
    world.log(format!(
        "client {c}: a burst of {BURST_CALLS} PUTs at {}",
        world.machines[ix].id
    ));
    let mut calls = Vec::with_capacity(BURST_CALLS);
    for i in 0..BURST_CALLS {
        let handle = running.handle.clone();
        let key = format!("burst-{c}-{seq}-{i}");
        let value = format!("b-{c}-{seq}-{i}");
        let invoked = world.micros();
        let w = world.clone();
        calls.push(tokio::spawn(async move {
            let cmd = Command::Put {
                key: Key::new(&key),
                value: Value::from(value.as_str()),
                request: None,
            };
            let reply = tokio::time::timeout(CALL_TIMEOUT, handle.call(cmd)).await;
            let result = reply.map_or(PutResult::Unavailable, put_result);
            if result == PutResult::Stored {
                w.acknowledged
                    .lock()
                    .unwrap()
                    .insert(key.clone(), value.clone().into_bytes());
            }
            let returned = w.micros();
            w.history.lock().unwrap().push(Op::put(
                c as u64,
                key,
                value.into_bytes(),
                invoked,
                Some(returned),
                result,
            ));
        }));
    }
    for call in calls {
        let _ = call.await;
    }
}

enum CallKind {
    Put {
        key: String,
        value: String,
        request: Option<String>,
    },
    Get {
        key: String,
    },
}

/// One call to node `ix`: through its driver handle, or through its HTTP router run as a task
/// of the node (a kill of the node cuts it, as it cuts a connection). `None`: no answer.
async fn call(
    world: &World,
    ix: usize,
    running: &Running,
    via_http: bool,
    kind: CallKind,
) -> Option<Answer> {
    if via_http {
        let request = match &kind {
            CallKind::Put {
                key,
                value,
                request,
            } => {
                let mut b = axum::http::Request::builder()
                    .method("PUT")
                    .uri(format!("/store/{key}"));
                if let Some(r) = request {
                    b = b.header("x-request-id", r.as_str());
                }
                b = b.header("authorization", format!("Bearer {API_TOKEN}"));
                b.body(axum::body::Body::from(value.clone())).ok()?
            }
            CallKind::Get { key } => axum::http::Request::builder()
                .method("GET")
                .uri(format!("/store/{key}"))
                .body(axum::body::Body::empty())
                .ok()?,
        };
        let router = running.router.clone();
        // The node's current process (a handle kept from before a restart spawns nowhere).
        let node = SimHandle::current().get_node(world.sim_node(ix).id())?;
        let task = node.spawn(async move {
            use tower::ServiceExt;
            let response = router.oneshot(request).await.ok()?;
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()?
                .to_bytes();
            Some((status, body.to_vec()))
        });
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, task)
            .await
            .ok()?
            .ok()??;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let error = json.get("error").and_then(|e| e.as_str()).unwrap_or("");
        return Some(match kind {
            CallKind::Put { .. } => Answer::Put(match (status, error) {
                (201, _) => PutResult::Stored,
                (409, "exists") => PutResult::Exists {
                    value: json
                        .get("value")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .as_bytes()
                        .to_vec(),
                },
                (409, "busy") => PutResult::Busy,
                (503, "unavailable") => PutResult::Unavailable,
                (400 | 401 | 403 | 410 | 413, _)
                | (409, "request_id_reused")
                | (503, "not_ready" | "removed" | "storage_unavailable") => PutResult::NoEffect,
                // "overloaded" is also what the handler says when the driver dropped a call it
                // had taken (it may still commit), and anything else is unknown too.
                _ => PutResult::Unavailable,
            }),
            CallKind::Get { .. } => Answer::Get(match status {
                200 => GetResult::Value(body),
                404 if error == "unknown_key" => GetResult::Unknown,
                _ => GetResult::Unavailable,
            }),
        });
    }
    match kind {
        CallKind::Put {
            key,
            value,
            request,
        } => {
            let cmd = Command::Put {
                key: Key::new(key),
                value: Value::from(value.as_str()),
                request: request.map(RequestId::new),
            };
            let reply = tokio::time::timeout(CALL_TIMEOUT, running.handle.call(cmd))
                .await
                .ok()?;
            Some(Answer::Put(put_result(reply)))
        }
        CallKind::Get { key } => {
            let reply = tokio::time::timeout(
                CALL_TIMEOUT,
                running.handle.call(Command::Get { key: Key::new(key) }),
            )
            .await
            .ok()?;
            Some(Answer::Get(match reply {
                Ok(Reply::Get(GetOutcome::Value(v))) => GetResult::Value(v.as_bytes().to_vec()),
                Ok(Reply::Get(GetOutcome::Unknown)) => GetResult::Unknown,
                _ => GetResult::Unavailable,
            }))
        }
    }
}

/// What a PUT call's answer tells the linearizability checker (one mapping for every client).
pub(super) fn put_result(reply: Result<Reply, CallError>) -> PutResult {
    match reply {
        Ok(Reply::Put(o)) => match o {
            PutOutcome::Stored => PutResult::Stored,
            PutOutcome::Exists { value } => PutResult::Exists {
                value: value.as_bytes().to_vec(),
            },
            PutOutcome::Busy => PutResult::Busy,
            PutOutcome::Unavailable(_) => PutResult::Unavailable,
            PutOutcome::Invalid(_) | PutOutcome::Overloaded | PutOutcome::NotReady(_) => {
                PutResult::NoEffect
            }
        },
        // Nothing was queued: no effect.
        Err(CallError::Overloaded) => PutResult::NoEffect,
        // Taken, then no answer (the driver stopped, or stalled): unknown.
        _ => PutResult::Unavailable,
    }
}
