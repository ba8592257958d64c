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
        self.check_round_fresh(from, msg);
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
                self.tr.record(self.now, || TraceWhat::Lost {
                    from: self.nodes[from].id.clone(),
                    to: self.nodes[to].id.clone(),
                    about: MessageAbout::of(msg),
                });
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
            let number = self.tr.number_msg();
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
                self.tr.record(self.now, || TraceWhat::Sent {
                    msg: number,
                    from: self.nodes[from].id.clone(),
                    to: self.nodes[to].id.clone(),
                    arrives: at,
                    dup: copy > 0,
                    about: MessageAbout::of(msg),
                });
            }
            let frame = if copy + 1 == copies {
                std::mem::take(&mut frame)
            } else {
                frame.clone()
            };
            self.push(
                at,
                Ev::Deliver {
                    from,
                    to,
                    msg: number,
                    frame,
                },
            );
        }
    }

    /// A node's own answer may only leave it once the state it reports is on its disk
    /// (PROTOCOL.md, Durability): a promise of ballot `b` once its record shows a promise of
    /// `b` or more, an accept at `b` once it shows a value accepted at `b` or later (a
    /// decision, on disk, covers both: the key is decided). An answer may leave late (held
    /// behind a later write, or forwarded by a representative), so "at least" is what is
    /// checked.
    pub(super) fn check_durable_vote(&mut self, from: NodeIx, msg: &Message) {
        let responses = match msg {
            Message::Response(r) => std::slice::from_ref(r),
            Message::RelayReply { responses, .. } => responses.as_slice(),
            _ => return,
        };
        for r in responses {
            let me = &self.nodes[from];
            let Response::Ballot {
                key,
                ballot,
                node,
                answer,
                proposal,
                digest,
            } = r
            else {
                continue;
            };
            if *node != me.id {
                continue;
            }
            if let (Answer::Accepted, Some(p)) = (answer, proposal) {
                self.obs.push(Obs::Accepted {
                    node: from,
                    key: key.clone(),
                    ballot: ballot.clone(),
                    proposal: p.clone(),
                    digest: *digest,
                });
            }
            let me = &self.nodes[from];
            let disk = me.disk.lock();
            let on_disk = disk.keys.get(key);
            let durable = match (answer, on_disk) {
                (Answer::Promise { .. } | Answer::Accepted, Some(DurableKey::Stored { .. })) => {
                    true
                }
                (Answer::Promise { .. }, Some(DurableKey::Open { promised, .. })) => {
                    promised >= ballot
                }
                (Answer::Accepted, Some(DurableKey::Open { accepted, .. })) => {
                    accepted.as_ref().is_some_and(|(b, _)| b >= ballot)
                }
                (Answer::Promise { .. } | Answer::Accepted, None) => false,
                (Answer::Nack { .. } | Answer::Stored { .. } | Answer::Refused { .. }, _) => true,
            };
            if !durable {
                let what = format!(
                    "{} answered {answer:?} at {ballot} for {key:?}, which its disk does not show (it holds {on_disk:?})",
                    me.id
                );
                self.obs.push(Obs::Undurable {
                    node: from,
                    key: key.clone(),
                    what,
                });
            }
        }
    }

    /// A node runs each of its ballot rounds once, for one key, and never goes back to an
    /// older round, across restarts too (PROTOCOL.md: the round ceiling is durable before a
    /// ballot under it leaves). Checked on the Prepares it sends (one per member of its
    /// cluster, all for the same ballot).
    pub(super) fn check_round_fresh(&mut self, from: NodeIx, msg: &Message) {
        let Message::Request(Request::Prepare { key, ballot, .. }) = msg else {
            return;
        };
        let me = &mut self.nodes[from];
        if ballot.node.as_ref() != Some(&me.id) {
            return;
        }
        let latest = me
            .rounds_sent
            .last_key_value()
            .map(|(r, k)| (*r, k.clone()));
        let what = match (me.rounds_sent.get(&ballot.round), latest) {
            (Some(k), _) if k != key => Some(format!(
                "{} sent Prepare({key:?}, {ballot}) after using round {} for {k:?}",
                me.id, ballot.round
            )),
            (None, Some((r, k))) if r > ballot.round => Some(format!(
                "{} sent Prepare({key:?}, {ballot}) after round {r} (of {k:?}): an older round",
                me.id
            )),
            _ => None,
        };
        me.rounds_sent.insert(ballot.round, key.clone());
        if let Some(what) = what {
            self.obs.push(Obs::BallotReused {
                node: from,
                key: key.clone(),
                what,
            });
        }
    }

    /// A member that tells a leaving node of its cluster it holds its decisions up to a
    /// number vouches for its own disk: once the leaving node is gone, a decision it held must
    /// be held by the rest. So when the answer leaves, every decision the leaving node
    /// numbered up to it must be on the sender's disk (PROTOCOL.md, "Leaving safely").
    pub(super) fn check_durable_clearance(&mut self, from: NodeIx, to: &NodeId, msg: &Message) {
        let Message::LeaveClear { seq: held } = msg else {
            return;
        };
        let Some(leaver) = self.ix_of(to) else { return };
        if leaver == from || self.nodes[leaver].cluster != self.nodes[from].cluster {
            return;
        }
        let Some(leaving) = self.nodes[leaver].node.as_ref() else {
            return;
        };
        let me = &self.nodes[from];
        // What the leaver holds: its decisions in memory and on its disk.
        let leaver_disk = self.nodes[leaver].disk.lock();
        let mine = me.disk.lock();
        let missing = leaving
            .records_in_memory()
            .chain(leaver_disk.keys.iter())
            .find(|(key, state)| {
                matches!(state, DurableKey::Stored { seq, .. } if seq <= held)
                    && !mine.keys.get(*key).is_some_and(DurableKey::is_stored)
            })
            .map(|(key, state)| (key.clone(), state.clone()));
        drop((leaver_disk, mine));
        if let Some((key, state)) = missing {
            let what = format!(
                "{} told {to} it holds its decisions up to {held} ({msg:?}) while its disk lacks {key:?}, which {to} decided ({state:?})",
                me.id
            );
            let key = key.clone();
            self.obs.push(Obs::Undurable {
                node: from,
                key,
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
        delay + self.nodes[from].extra_us.max(self.nodes[to].extra_us)
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

    pub(super) fn deliver(&mut self, from: NodeIx, to: NodeIx, number: u64, frame: Vec<u8>) {
        if let Some(why) = self.unreachable(from, to) {
            self.stats.messages_blocked += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("drop from {}: {why}", self.nodes[from].id),
            );
            self.tr
                .record(self.now, || TraceWhat::Dropped { msg: number, why });
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
            self.tr
                .record(self.now, || TraceWhat::Received { msg: number });
        }
        let from = self.nodes[from].id.clone();
        self.handle(to, Input::Message { from, msg });
    }
}
