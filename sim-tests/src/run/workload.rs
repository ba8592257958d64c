//! The workload of the safety phase: the clients (each at its home node, now and then
//! another), their ops and retries, bursts of concurrent proposals, graceful leaves and lulls.

use rand::RngExt;
use replicator_core::{
    CallId, Command, GetOutcome, Key, NotReady, PutOutcome, Reply, RequestId, Time, Value,
};
use transport_sim::NodeIx;

use super::ops::{ClientOp, OpKind};
use super::{ATTEMPTS_MAX, ONE_SHOT_CLIENT, Run};

pub(super) struct Client {
    pub(super) home: NodeIx,
    pub(super) done: usize,
    /// The op in flight: its index in the history and the call carrying it.
    pub(super) current: Option<(usize, Option<CallId>)>,
}

impl Run {
    /// Nodes a client may use: neither gone nor on their way out, as far as a client can tell
    /// (a node removed by an operator looks like any other until it answers NotReady(Removed)).
    fn staying(&self, ix: NodeIx) -> bool {
        !self.world.is_departed(ix) && !self.world.is_leaving(ix)
    }

    /// Nodes that take part (for bursts, leaves and the liveness probe): staying, not removed
    /// by an operator anywhere, and no removal of them being checked.
    pub(super) fn member(&self, ix: NodeIx) -> bool {
        self.staying(ix) && !self.world.is_gone(ix) && !self.world.removal_pending(ix)
    }

    /// Several nodes, in different clusters where there are several, propose one fresh key at
    /// the same instant: concurrent conflicting proposals.
    pub(super) fn burst(&mut self) {
        let n = self.world.node_count();
        let staying: Vec<NodeIx> = (0..n)
            .filter(|ix| self.member(*ix) && !self.world.minority().contains(ix))
            .collect();
        if staying.is_empty() {
            return;
        }
        let key = Key::new(format!("burst{}", self.history.len()));
        let width = self.rng.random_range(2..=4usize);
        for i in 0..width {
            let node = staying[self.rng.random_range(0..staying.len())];
            let value = Value::new(format!("b{}-{i}", self.history.len()));
            self.checker.proposed(key.clone(), value.clone());
            let op = self.history.len();
            self.history.push(ClientOp {
                client: ONE_SHOT_CLIENT + op,
                key: key.clone(),
                kind: OpKind::Put {
                    value,
                    request: None,
                },
                node,
                invoked: self.world.now(),
                returned: None,
                attempts: 1,
                last_invoked: self.world.now(),
                earlier_indeterminate: false,
                may_forget: false,
                reply: None,
                incarnation: self.world.incarnation(node),
                recovering: false,
            });
            let cmd = self.command(op);
            let call = self.world.submit(node, cmd);
            self.calls.insert(call, op);
        }
        self.recent.push(key);
    }

    /// A ready node of a cluster that keeps at least 3 members leaves gracefully.
    pub(super) fn start_leave(&mut self) {
        let n = self.world.node_count();
        let members = |run: &Self, c: usize| {
            (0..n)
                .filter(|ix| run.world.cluster_of(*ix) == c && run.member(*ix))
                .count()
        };
        let candidates: Vec<NodeIx> = (0..n)
            .filter(|ix| self.member(*ix) && members(self, self.world.cluster_of(*ix)) >= 4)
            .filter(|ix| self.world.node(*ix).is_some_and(|n| n.is_ready()))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let ix = candidates[self.rng.random_range(0..candidates.len())];
        self.world.leave(ix);
    }

    /// When the lull the safety phase is in ends, if it is in one.
    pub(super) fn lull_end(&self) -> Option<Time> {
        let (period, length) = self.spec.workload.lulls?;
        let now = self.world.now().as_micros();
        let into = now % period;
        (into >= period.saturating_sub(length)).then(|| Time::from_micros(now - into + period))
    }

    pub(super) fn client_wake(&mut self, c: usize) {
        if !self.safety {
            return;
        }
        if let Some(end) = self.lull_end() {
            self.world.wake_at(end, c as u64);
            return;
        }
        let client = &self.clients[c];
        match client.current {
            Some((op, None)) => {
                // A retry of a PUT with its request id.
                let node = self.history[op].node;
                let cmd = self.command(op);
                // Whether the node will answer it from a request record with no outcome (it
                // restarted since the last attempt, or answered it Unavailable): the recovery
                // path. Only this client uses the id, so nothing else changes the record.
                let incarnation = self.world.incarnation(node);
                let recovering = match &self.history[op].kind {
                    OpKind::Put {
                        request: Some(id), ..
                    } => {
                        let open = self
                            .world
                            .disk(node)
                            .requests
                            .get(id)
                            .is_some_and(|r| r.outcome.is_none());
                        let unavailable = matches!(
                            self.history[op].reply,
                            Some(Reply::Put(PutOutcome::Unavailable(_)))
                        );
                        self.world.is_up(node)
                            && open
                            && (incarnation != self.history[op].incarnation || unavailable)
                    }
                    _ => false,
                };
                let call = self.world.submit(node, cmd);
                self.history[op].incarnation = incarnation;
                self.history[op].recovering = recovering;
                self.history[op].attempts += 1;
                self.history[op].last_invoked = self.world.now();
                self.history[op].earlier_indeterminate = true;
                self.calls.insert(call, op);
                self.clients[c].current = Some((op, Some(call)));
            }
            Some((_, Some(_))) => {}
            None => {
                if client.done >= self.spec.workload.ops_per_client {
                    self.maybe_end_safety();
                    return;
                }
                self.start_op(c);
            }
        }
    }

    fn start_op(&mut self, c: usize) {
        let w = self.spec.workload.clone();
        let n = self.world.node_count();
        let mut node = if self.rng.random_bool(w.roam_share) {
            self.rng.random_range(0..n)
        } else {
            self.clients[c].home
        };
        if !self.staying(node) || self.world.minority().contains(&node) {
            let staying: Vec<NodeIx> = (0..n)
                .filter(|ix| self.staying(*ix) && !self.world.minority().contains(ix))
                .collect();
            node = staying[self.rng.random_range(0..staying.len())];
            self.clients[c].home = node;
        }
        let seq = self.clients[c].done;
        let read = self.rng.random_bool(w.read_share);
        let hot = !self.hot.is_empty() && self.rng.random_bool(w.hot_share);
        let (key, kind) = if read {
            let key = if hot || self.recent.is_empty() {
                self.hot[self.rng.random_range(0..self.hot.len())].clone()
            } else {
                let from = self.recent.len().saturating_sub(16);
                self.recent[self.rng.random_range(from..self.recent.len())].clone()
            };
            let verify = self.rng.random_bool(0.15);
            (key, if verify { OpKind::Verify } else { OpKind::Get })
        } else {
            let key = if hot {
                self.hot[self.rng.random_range(0..self.hot.len())].clone()
            } else {
                Key::new(format!("k{c}-{seq}"))
            };
            let value = Value::new(format!("v{c}-{seq}"));
            let request = self
                .rng
                .random_bool(w.request_id_share)
                .then(|| RequestId::new(format!("r{c}-{seq}")));
            self.checker.proposed(key.clone(), value.clone());
            if !hot {
                self.recent.push(key.clone());
            }
            (key, OpKind::Put { value, request })
        };
        let op = self.history.len();
        self.history.push(ClientOp {
            client: c,
            key,
            kind,
            node,
            invoked: self.world.now(),
            returned: None,
            attempts: 1,
            last_invoked: self.world.now(),
            earlier_indeterminate: false,
            may_forget: self.spec.world.config.requests_max < 1000,
            reply: None,
            incarnation: self.world.incarnation(node),
            recovering: false,
        });
        let cmd = self.command(op);
        let call = self.world.submit(node, cmd);
        self.calls.insert(call, op);
        self.clients[c].current = Some((op, Some(call)));
        self.clients[c].done += 1;
    }

    pub(super) fn command(&self, op: usize) -> Command {
        let op = &self.history[op];
        match &op.kind {
            OpKind::Put { value, request } => Command::Put {
                key: op.key.clone(),
                value: value.clone(),
                request: request.clone(),
            },
            OpKind::Get => Command::Get {
                key: op.key.clone(),
            },
            OpKind::Verify => Command::Verify {
                key: op.key.clone(),
            },
        }
    }

    pub(super) fn answered(&mut self, call: CallId, reply: Option<Reply>) {
        let Some(op) = self.calls.remove(&call) else {
            return;
        };
        let now = self.world.now();
        let c = self.history[op].client;
        let retry = match (&self.history[op].kind, &reply) {
            (
                OpKind::Put {
                    request: Some(_), ..
                },
                None | Some(Reply::Put(PutOutcome::Unavailable(_))),
            ) => self.safety && self.history[op].attempts < ATTEMPTS_MAX,
            _ => false,
        };
        if self.history[op].recovering && reply.is_some() {
            self.recoveries += 1;
            if let (Some(Reply::Put(PutOutcome::Exists { value: w })), Some(v)) =
                (&reply, self.history[op].value())
                && w != v
            {
                self.recover_exists += 1;
            }
        }
        let removed = matches!(
            reply,
            Some(Reply::Put(PutOutcome::NotReady(NotReady::Removed)))
                | Some(Reply::Get(GetOutcome::NotReady(NotReady::Removed)))
        );
        // A lost answer keeps the previous one (if an earlier attempt was answered).
        if reply.is_some() || self.history[op].reply.is_none() {
            self.history[op].reply = reply;
        }
        self.history[op].returned = Some(now);
        if c >= ONE_SHOT_CLIENT {
            return;
        }
        if removed {
            // The node says an operator removed it: the client goes elsewhere.
            let n = self.world.node_count();
            let members: Vec<NodeIx> = (0..n).filter(|ix| self.member(*ix)).collect();
            if !members.is_empty() {
                self.clients[c].home = members[self.rng.random_range(0..members.len())];
            }
        }
        let (lo, hi) = self.spec.workload.think_us;
        if retry {
            self.clients[c].current = Some((op, None));
            let backoff = self.rng.random_range(50_000..=200_000);
            self.world
                .wake_at(now + std::time::Duration::from_micros(backoff), c as u64);
        } else {
            self.clients[c].current = None;
            let think = self.rng.random_range(lo..=hi.max(lo));
            self.world
                .wake_at(now + std::time::Duration::from_micros(think), c as u64);
        }
    }

    fn maybe_end_safety(&mut self) {
        let all_done = self
            .clients
            .iter()
            .all(|c| c.current.is_none() && c.done >= self.spec.workload.ops_per_client);
        if all_done && self.safety {
            self.start_liveness();
        }
    }
}
