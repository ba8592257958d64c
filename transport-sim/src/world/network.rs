//! The network: sending (every message through the wire codec), latencies, loss,
//! duplication, reordering, partitions and clogs, delivery; and the durable-vote rule that
//! only the world can check.

use super::*;

impl World {
    /// Whether `a` and `b` are up, unpaused, and can exchange messages both ways without delay.
    pub(super) fn reachable_now(&self, a: NodeIx, b: NodeIx) -> bool {
        let live = |x: NodeIx| {
            let n = &self.nodes[x];
            n.node.is_some() && !n.departed && n.paused_until <= self.now
        };
        let clogged = |f: NodeIx, t: NodeIx| self.clogs.get(&(f, t)).is_some_and(|u| *u > self.now);
        live(a)
            && live(b)
            && !self.blocked(a, b)
            && !self.blocked(b, a)
            && !clogged(a, b)
            && !clogged(b, a)
    }

    pub(super) fn send(&mut self, from: NodeIx, to: &NodeId, msg: &Message) {
        self.check_durable_vote(from, msg);
        self.check_durable_clearance(from, to, msg);
        let mut frame = wire::encode(msg);
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += frame.len() as u64;
        let Some(to) = self.ix_of(to) else {
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("send to unknown node {to}"),
            );
            return;
        };
        if self.lost_in_transit() {
            self.stats.messages_lost += 1;
            if self.spec.trace != TraceMode::Off {
                self.tr.node(
                    self.now,
                    &self.nodes,
                    from,
                    format_args!("lost to {} {msg:?}", self.nodes[to].id),
                );
            }
            return;
        }
        let net = &self.spec.net;
        let copies = if net.dup > 0.0 && self.rng_net.random_bool(net.dup) {
            self.stats.messages_duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let at = self.arrival(from, to);
            if self.spec.trace != TraceMode::Off {
                self.tr.node(
                    self.now,
                    &self.nodes,
                    from,
                    format_args!(
                        "send{} to {} at {at} {msg:?}",
                        if copy > 0 { " (dup)" } else { "" },
                        self.nodes[to].id
                    ),
                );
            }
            let frame = if copy + 1 == copies {
                std::mem::take(&mut frame)
            } else {
                frame.clone()
            };
            self.push(at, Ev::Deliver { from, to, frame });
        }
    }

    /// A node's own vote may only leave it once the state it reports is on its disk
    /// (PROTOCOL.md, Durability): a grant after its reservation, a commit vote after the key.
    /// A vote may leave late (held behind later writes, or aggregated by a representative),
    /// about a reservation aborted since, so "was durable" is what is checked.
    pub(super) fn check_durable_vote(&mut self, from: NodeIx, msg: &Message) {
        let responses = match msg {
            Message::Response(r) => std::slice::from_ref(r),
            Message::RelayReply { responses, .. } => responses.as_slice(),
            _ => return,
        };
        let me = &self.nodes[from];
        for r in responses {
            let Response::Vote { p, key, node, vote } = r else {
                continue;
            };
            if *node != me.id {
                continue;
            }
            // A Committed vote needs only the grant on disk: `Stored` is a lazy write
            // (PROTOCOL.md, "Lazy writes"), and a commit it reports is stable because every
            // participant's grant is durable.
            let ever = me.durable_ever.get(p);
            let durable = match vote {
                Vote::Granted | Vote::Committed => ever.is_some(),
                Vote::Denied { .. } => true,
            };
            if !durable {
                let what = format!(
                    "{} sent vote {vote:?} on {p} for {key:?}, which never reached its disk (it holds {:?})",
                    me.id,
                    me.disk.keys.get(key)
                );
                self.obs.push(Obs::Undurable {
                    node: from,
                    key: key.clone(),
                    what,
                });
            }
        }
    }

    /// An answer that a leave or removal may proceed ("clear", or no open reservation) vouches
    /// for the sender's disk: once the node is gone, a reservation naming it that a crash
    /// brings back (a commit still lazy) would be resolved with it counted fenced. So when it
    /// leaves, no reservation on the sender's disk may name that node (PROTOCOL.md, "Lazy
    /// writes").
    pub(super) fn check_durable_clearance(&mut self, from: NodeIx, to: &NodeId, msg: &Message) {
        let named = match msg {
            Message::LeaveClear { clear: true } => to,
            Message::RemoveCheckReply { node, open } if open.is_empty() => node,
            _ => return,
        };
        let me = &self.nodes[from];
        if *named == me.id || !me.disk.members.contains_key(named) {
            return;
        }
        let open = me.disk.keys.iter().find(|(_, state)| {
            matches!(state, DurableKey::Reserved { participants, .. } if participants.contains(named))
        });
        if let Some((key, state)) = open {
            let what = format!(
                "{} cleared {named} to go ({msg:?}) while its disk holds {state:?}, which names it",
                me.id
            );
            self.obs.push(Obs::Undurable {
                node: from,
                key: key.clone(),
                what,
            });
        }
    }

    /// When a message sent now from `from` reaches `to`: the link's latency, held until a
    /// clog on the link is released.
    pub(super) fn arrival(&mut self, from: NodeIx, to: NodeIx) -> Time {
        let delay = self.latency(from, to);
        let mut at = self.now + micros(delay);
        if let Some(&until) = self.clogs.get(&(from, to))
            && until > self.now
        {
            at = at.max(until + micros(delay));
        }
        at
    }

    pub(super) fn latency(&mut self, from: NodeIx, to: NodeIx) -> Micros {
        let (a, b) = (self.nodes[from].cluster, self.nodes[to].cluster);
        let net = &self.spec.net;
        let mut delay = if a == b {
            draw(&mut self.rng_net, net.lan_us)
        } else {
            let base = self.wan_us[a][b];
            let jitter = (base as f64 * net.wan_jitter) as Micros;
            base + self.rng_net.random_range(0..=jitter)
        };
        if net.reorder > 0.0 && self.rng_net.random_bool(net.reorder) {
            delay += self.rng_net.random_range(0..=net.reorder_us_max);
        }
        delay
    }

    pub(super) fn blocked(&self, from: NodeIx, to: NodeIx) -> bool {
        self.partitions.values().any(|p| {
            let (f, t) = (
                p.side.get(from).copied().unwrap_or(false),
                p.side.get(to).copied().unwrap_or(false),
            );
            if p.one_way { f && !t } else { f != t }
        })
    }

    /// Whether the network loses the message about to be sent (drawn only when loss is on:
    /// a reliable network draws nothing).
    pub(super) fn lost_in_transit(&mut self) -> bool {
        let loss = self.spec.net.loss;
        loss > 0.0 && self.rng_net.random_bool(loss)
    }

    /// Why a message from `from` cannot reach `to` now, if it cannot: `to` is down, or a
    /// partition cuts the link.
    pub(super) fn unreachable(&self, from: NodeIx, to: NodeIx) -> Option<&'static str> {
        if self.nodes[to].node.is_none() {
            Some("node down")
        } else if self.blocked(from, to) {
            Some("partition")
        } else {
            None
        }
    }

    pub(super) fn deliver(&mut self, from: NodeIx, to: NodeIx, frame: Vec<u8>) {
        if let Some(why) = self.unreachable(from, to) {
            self.stats.messages_blocked += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("drop from {}: {why}", self.nodes[from].id),
            );
            return;
        }
        let msg = match wire::decode(&frame) {
            Ok(msg) => msg,
            Err(e) => panic!("a frame the core encoded does not decode: {e}"),
        };
        self.stats.messages_delivered += 1;
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("recv from {} {msg:?}", self.nodes[from].id),
            );
        }
        let from = self.nodes[from].id.clone();
        self.handle(to, Input::Message { from, msg });
    }
}
