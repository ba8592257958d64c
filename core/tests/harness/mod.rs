//! A small in-memory harness: several clusters of real `Node`s, a network the test drives by
//! hand (deliver, drop, delay, duplicate), disks that apply writes at once, crash and restart.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use replicator_core::*;

pub fn config() -> Config {
    Config {
        vote_timeout: Duration::from_millis(300),
        representative_timeout: Duration::from_millis(150),
        relay_timeout: Duration::from_millis(100),
        lease: Duration::from_millis(600),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(400),
        put_timeout: Duration::from_secs(2),
        read_wait: Duration::from_millis(60),
        read_timeout: Duration::from_millis(1500),
        catch_up_interval: Duration::from_millis(500),
        ..Config::default()
    }
}

/// The network every harness node belongs to.
pub fn net() -> NetworkId {
    NetworkId::from("net-test")
}

pub struct Slot {
    pub cluster: ClusterId,
    pub node: Option<Node>,
    pub disk: DiskImage,
}

pub struct InFlight {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Message,
}

pub struct Harness {
    pub now: Time,
    pub config: Config,
    pub slots: BTreeMap<NodeId, Slot>,
    pub net: VecDeque<InFlight>,
    pub replies: BTreeMap<CallId, Reply>,
    pub notes: Vec<(NodeId, Note)>,
    /// Every message ever sent, for assertions about traffic.
    pub sent: Vec<(NodeId, NodeId, Message)>,
    next_call: u64,
    seed: u64,
    /// Nodes whose disk is slow: their writes wait in `pending_writes` until `flush_disk`.
    pub lazy_disk: std::collections::BTreeSet<NodeId>,
    pub pending_writes: BTreeMap<NodeId, Vec<(WriteId, Vec<WriteOp>)>>,
    /// The disk every founding node started from.
    pub founded: Recovered,
}

/// The disk the founding nodes started from (what a node that changed nothing still holds).
pub fn founded_disk(h: &Harness) -> Recovered {
    h.founded.clone()
}

/// The PUT outcome a call was answered with, if any.
pub fn put_reply(h: &Harness, call: CallId) -> Option<PutOutcome> {
    match h.reply(call) {
        Some(Reply::Put(p)) => Some(p.clone()),
        None => None,
        other => panic!("not a put reply: {other:?}"),
    }
}

/// The GET outcome a call was answered with, if any.
pub fn get_reply(h: &Harness, call: CallId) -> Option<GetOutcome> {
    match h.reply(call) {
        Some(Reply::Get(g)) => Some(g.clone()),
        None => None,
        other => panic!("not a get reply: {other:?}"),
    }
}

pub fn n(s: &str) -> NodeId {
    NodeId::from(s)
}
pub fn k(s: &str) -> Key {
    Key::from(s)
}
pub fn v(s: &str) -> Value {
    Value::from(s)
}

impl Harness {
    /// `clusters` clusters named a, b, c... of `size` nodes named a1, a2...
    pub fn new(clusters: usize, size: usize) -> Harness {
        Self::with_config(clusters, size, config())
    }

    pub fn with_config(clusters: usize, size: usize, config: Config) -> Harness {
        let mut pairs = Vec::new();
        for c in 0..clusters {
            let cname = ((b'a' + c as u8) as char).to_string();
            for i in 1..=size {
                pairs.push((ClusterId::from(cname.as_str()), n(&format!("{cname}{i}"))));
            }
        }
        // The founding nodes know each other from the start: their first disk records them.
        let founded = Recovered::founder(net()).with_members(pairs.clone());
        let mut h = Harness {
            founded: founded.clone(),
            now: Time::from_millis(1),
            config,
            slots: BTreeMap::new(),
            net: VecDeque::new(),
            replies: BTreeMap::new(),
            notes: Vec::new(),
            sent: Vec::new(),
            next_call: 0,
            seed: 7,
            lazy_disk: Default::default(),
            pending_writes: BTreeMap::new(),
        };
        for (c, id) in pairs {
            let disk = DiskImage::new(founded.clone());
            let node = Node::new(
                h.config.clone(),
                id.clone(),
                c.clone(),
                founded.clone(),
                Box::new(disk.clone()),
                h.now,
                h.seed,
            )
            .expect("valid config");
            h.seed += 1;
            h.slots.insert(
                id,
                Slot {
                    cluster: c,
                    node: Some(node),
                    disk,
                },
            );
        }
        h
    }

    pub fn node(&self, id: &str) -> &Node {
        self.slots[&n(id)].node.as_ref().expect("node is up")
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().cloned().collect()
    }

    /// Feeds an input and executes the outputs: sends go to the network, writes are made
    /// durable at once (and reported), replies and notes are recorded.
    pub fn input(&mut self, id: &NodeId, input: Input) {
        let now = self.now;
        let Some(node) = self.slots.get_mut(id).and_then(|s| s.node.as_mut()) else {
            return;
        };
        node.handle(now, input);
        self.drain(id);
    }

    fn drain(&mut self, id: &NodeId) {
        let mut persisted = Vec::new();
        loop {
            let now = self.now;
            let slot = self.slots.get_mut(id).expect("slot");
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            match node.poll_output() {
                Some(Output::Send { to, msg }) => {
                    self.sent.push((id.clone(), to.clone(), msg.clone()));
                    self.net.push_back(InFlight {
                        from: id.clone(),
                        to,
                        msg,
                    });
                }
                Some(Output::Persist { write, ops, .. }) => {
                    trace(now, &format!("persist at {id} {write:?}: {ops:?}"));
                    if self.lazy_disk.contains(id) {
                        self.pending_writes
                            .entry(id.clone())
                            .or_default()
                            .push((write, ops));
                    } else {
                        slot.disk.lock().apply_all(&ops);
                        persisted.push(write);
                    }
                }
                Some(Output::Reply { call, reply }) => {
                    self.replies.insert(call, reply);
                }
                Some(Output::Note(note)) => {
                    trace(now, &format!("note at {id}: {note:?}"));
                    self.notes.push((id.clone(), note))
                }
                None => match persisted.pop() {
                    Some(upto) => {
                        persisted.clear();
                        node.handle(now, Input::Persisted { upto });
                    }
                    None => return,
                },
            }
        }
    }

    pub fn put(&mut self, at: &str, key: &str, value: &str) -> CallId {
        self.put_with(at, key, value, None)
    }

    pub fn put_with(&mut self, at: &str, key: &str, value: &str, request: Option<&str>) -> CallId {
        let call = self.call();
        let cmd = Command::Put {
            key: k(key),
            value: v(value),
            request: request.map(RequestId::from),
        };
        self.input(&n(at), Input::Client { call, cmd });
        call
    }

    pub fn get(&mut self, at: &str, key: &str) -> CallId {
        let call = self.call();
        self.input(
            &n(at),
            Input::Client {
                call,
                cmd: Command::Get { key: k(key) },
            },
        );
        call
    }

    /// An operator asks `at` to remove `node` (not forced).
    pub fn input_remove(&mut self, at: &str, node: &str) -> CallId {
        let call = self.call();
        let cmd = Command::RemoveNode {
            node: n(node),
            force: false,
        };
        self.input(&n(at), Input::Client { call, cmd });
        call
    }

    fn call(&mut self) -> CallId {
        self.next_call += 1;
        CallId(self.next_call)
    }

    pub fn reply(&self, call: CallId) -> Option<&Reply> {
        self.replies.get(&call)
    }

    /// Delivers the first in-flight message that matches; returns whether one did.
    pub fn deliver_one(&mut self, pred: impl Fn(&InFlight) -> bool) -> bool {
        let Some(i) = self.net.iter().position(pred) else {
            return false;
        };
        let m = self.net.remove(i).expect("index");
        self.deliver(m);
        true
    }

    pub fn deliver(&mut self, m: InFlight) {
        let up = self.slots.get(&m.to).is_some_and(|s| s.node.is_some());
        trace(
            self.now,
            &format!("deliver {} -> {} (up {up}): {:?}", m.from, m.to, m.msg),
        );
        if up {
            self.input(
                &m.to.clone(),
                Input::Message {
                    from: m.from,
                    msg: m.msg,
                },
            );
        }
    }

    /// Delivers messages (including the ones they cause) until the network is empty.
    pub fn deliver_all(&mut self) {
        for _ in 0..1_000_000 {
            let Some(m) = self.net.pop_front() else {
                return;
            };
            self.deliver(m);
        }
        panic!("network never went quiet");
    }

    /// Delivers all messages but drops those `drop` selects (now and as they are caused).
    pub fn deliver_all_dropping(&mut self, drop: impl Fn(&InFlight) -> bool) {
        for _ in 0..1_000_000 {
            let Some(m) = self.net.pop_front() else {
                return;
            };
            if !drop(&m) {
                self.deliver(m);
            }
        }
        panic!("network never went quiet");
    }

    pub fn drop_where(&mut self, pred: impl Fn(&InFlight) -> bool) -> usize {
        let before = self.net.len();
        self.net.retain(|m| !pred(m));
        before - self.net.len()
    }

    /// Advances time by `d` in steps, firing timers and delivering every message at once.
    pub fn run_for(&mut self, d: Duration) {
        self.run_for_dropping(d, |_| false);
    }

    pub fn run_for_dropping(&mut self, d: Duration, drop: impl Fn(&InFlight) -> bool) {
        let end = self.now + d;
        for _ in 0..1_000_000 {
            self.deliver_all_dropping(&drop);
            let next = self
                .slots
                .values()
                .filter_map(|s| s.node.as_ref().and_then(|n| n.poll_timeout()))
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for id in self.ids() {
                        let due = self.slots[&id].node.as_ref().and_then(|n| n.poll_timeout());
                        if due.is_some_and(|t| t <= self.now) {
                            self.input(&id, Input::Timeout);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers never settled");
    }

    /// Like `run_for`, but messages `hold` selects are taken out of the network (now and as
    /// they are caused) and returned, to be delivered later (or never).
    pub fn run_for_holding(
        &mut self,
        d: Duration,
        hold: impl Fn(&InFlight) -> bool,
    ) -> Vec<InFlight> {
        let end = self.now + d;
        let mut held = Vec::new();
        for _ in 0..1_000_000 {
            for _ in 0..1_000_000 {
                let Some(m) = self.net.pop_front() else {
                    break;
                };
                if hold(&m) {
                    held.push(m);
                } else {
                    self.deliver(m);
                }
            }
            let next = self
                .slots
                .values()
                .filter_map(|s| s.node.as_ref().and_then(|n| n.poll_timeout()))
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for id in self.ids() {
                        let due = self.slots[&id].node.as_ref().and_then(|n| n.poll_timeout());
                        if due.is_some_and(|t| t <= self.now) {
                            self.input(&id, Input::Timeout);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    return held;
                }
            }
        }
        panic!("timers never settled");
    }

    /// The node loses its volatile state; messages to it are lost while it is down. Writes
    /// still waiting on a lazy disk are lost too.
    pub fn crash(&mut self, id: &str) {
        trace(self.now, &format!("CRASH {id}"));
        self.slots.get_mut(&n(id)).expect("slot").node = None;
        self.pending_writes.remove(&n(id));
    }

    /// Makes every write waiting on `id`'s lazy disk durable, and reports it.
    pub fn flush_disk(&mut self, id: &str) {
        let id = n(id);
        let writes = self.pending_writes.remove(&id).unwrap_or_default();
        let Some(upto) = writes.last().map(|(w, _)| *w) else {
            return;
        };
        let slot = self.slots.get_mut(&id).expect("slot");
        for (_, ops) in &writes {
            slot.disk.lock().apply_all(ops);
        }
        self.input(&id, Input::Persisted { upto });
    }

    /// Adds a brand-new node that joins `cluster`: it starts from an empty disk
    /// (`Recovered::joiner`), and it and every live node discover each other.
    pub fn join(&mut self, cluster: &str, id: &str) {
        self.join_discovering(cluster, id, |_| true);
    }

    /// Like [`Harness::join`], but only the nodes `discovers` picks and the new node discover
    /// each other (the others are behind a partition, for discovery at least).
    pub fn join_discovering(
        &mut self,
        cluster: &str,
        id: &str,
        discovers: impl Fn(&NodeId) -> bool,
    ) {
        for other in self.ids().into_iter().filter(|o| discovers(o)) {
            self.discover(other.as_str(), cluster, id);
        }
        let others: Vec<(ClusterId, NodeId)> = self
            .slots
            .iter()
            .filter(|(id, _)| discovers(id))
            .map(|(id, s)| (s.cluster.clone(), id.clone()))
            .collect();
        self.seed += 1;
        let disk = DiskImage::new(Recovered::joiner(net()));
        let node = Node::new(
            self.config.clone(),
            n(id),
            ClusterId::from(cluster),
            Recovered::joiner(net()),
            Box::new(disk.clone()),
            self.now,
            self.seed,
        )
        .expect("valid config");
        self.slots.insert(
            n(id),
            Slot {
                cluster: ClusterId::from(cluster),
                node: Some(node),
                disk,
            },
        );
        self.drain(&n(id));
        for (cluster, node) in others {
            self.input(
                &n(id),
                Input::NodeDiscovered {
                    cluster,
                    node,
                    network: net(),
                },
            );
        }
    }

    /// `at` discovers `node` of `cluster`.
    pub fn discover(&mut self, at: &str, cluster: &str, node: &str) {
        let discovered = Input::NodeDiscovered {
            cluster: ClusterId::from(cluster),
            node: n(node),
            network: net(),
        };
        self.input(&n(at), discovered);
    }

    /// `id` said goodbye (or was removed): it is gone for good, and every live node hears of it.
    pub fn remove(&mut self, id: &str, goodbye: bool) {
        self.slots.remove(&n(id));
        self.net.retain(|m| m.to != n(id));
        for other in self.ids() {
            self.input(
                &other,
                Input::NodeRemoved {
                    node: n(id),
                    goodbye,
                },
            );
        }
    }

    /// Injects `msg` at `to` as if `from` had sent it.
    pub fn inject(&mut self, from: &str, to: &str, msg: Message) {
        self.deliver(InFlight {
            from: n(from),
            to: n(to),
            msg,
        });
    }

    /// The proposal that `id` stores for `key`, if any.
    pub fn stored_at(&self, id: &str, key: &str) -> Option<Proposal> {
        self.node(id)
            .key_state(&k(key))
            .ok()
            .flatten()
            .and_then(|s| s.stored().cloned())
    }

    /// The proposal `id` accepted for `key` and has not seen decided, with its ballot.
    pub fn accepted_at(&self, id: &str, key: &str) -> Option<(Ballot, Proposal)> {
        self.node(id)
            .key_state(&k(key))
            .ok()
            .flatten()
            .and_then(|s| s.accepted().cloned())
    }

    /// Decisions noted anywhere for `key`: (node, chosen proposal, ballot).
    pub fn decisions(&self, key: &str) -> Vec<(NodeId, ProposalId, Ballot)> {
        self.notes
            .iter()
            .filter_map(|(id, note)| match note {
                Note::Decided {
                    key: q,
                    chosen,
                    ballot,
                } if *q == k(key) => Some((id.clone(), chosen.clone(), ballot.clone())),
                _ => None,
            })
            .collect()
    }

    /// Restarts a crashed node from its disk only (membership included).
    pub fn restart(&mut self, id: &str) {
        let slot = self.slots.get_mut(&n(id)).expect("slot");
        self.seed += 1;
        let node = Node::new(
            self.config.clone(),
            n(id),
            slot.cluster.clone(),
            slot.disk.lock().clone(),
            Box::new(slot.disk.clone()),
            self.now,
            self.seed,
        )
        .expect("valid config");
        slot.node = Some(node);
        self.drain(&n(id));
    }

    /// Every live node's state of `key`.
    pub fn states(&self, key: &str) -> BTreeMap<NodeId, Option<DurableKey>> {
        self.slots
            .iter()
            .filter_map(|(id, s)| {
                s.node
                    .as_ref()
                    .map(|node| (id.clone(), node.key_state(&k(key)).ok().flatten()))
            })
            .collect()
    }

    pub fn stored_everywhere(&self, key: &str, value: &str) -> bool {
        self.states(key).values().all(
            |s| matches!(s, Some(DurableKey::Stored { chosen, .. }) if chosen.value == v(value)),
        )
    }

    /// Live nodes that store `key`, with the value.
    pub fn stored_count(&self, key: &str) -> usize {
        self.states(key)
            .values()
            .filter(|s| s.as_ref().is_some_and(|s| s.is_stored()))
            .count()
    }

    /// Accepted values not known to be decided, over every live node.
    pub fn undecided_left(&self) -> usize {
        self.slots
            .values()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.stats().accepted_undecided)
            .sum()
    }

    pub fn violations(&self) -> Vec<String> {
        self.notes
            .iter()
            .filter_map(|(id, note)| match note {
                Note::Violation { reason } => Some(format!("{id}: {reason}")),
                _ => None,
            })
            .collect()
    }

    pub fn count_sent(&self, pred: impl Fn(&NodeId, &NodeId, &Message) -> bool) -> usize {
        self.sent.iter().filter(|(f, t, m)| pred(f, t, m)).count()
    }
}

pub fn is_request(m: &Message, pred: impl Fn(&Request) -> bool) -> bool {
    match m {
        Message::Request(r) | Message::Relay { request: r, .. } => pred(r),
        _ => false,
    }
}

pub fn is_decide(m: &InFlight) -> bool {
    is_request(&m.msg, |r| matches!(r, Request::Decide { .. }))
}

/// Whether a message goes to or comes from `node` (a node that is down, or cut off).
pub fn touches(m: &InFlight, node: &str) -> bool {
    m.from == n(node) || m.to == n(node)
}

/// With `HARNESS_TRACE=<substring>`, prints every event whose text contains it.
fn trace(now: Time, line: &str) {
    thread_local! {
        static FILTER: Option<String> = std::env::var("HARNESS_TRACE").ok();
    }
    FILTER.with(|f| {
        if let Some(f) = f
            && (line.contains(f.as_str()) || line.starts_with("CRASH"))
        {
            eprintln!("{now:?} {line}");
        }
    });
}
