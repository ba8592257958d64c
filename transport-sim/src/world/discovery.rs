//! Discovery and goodbyes over the simulated network: Hello rounds (a request and its answer,
//! as the real transport's Hello) and a leaving node's goodbye.

use super::*;

impl World {
    /// The node says goodbye: the message goes to every member its core knows, over the
    /// network (lost on a cut link or to a node that is down), and the node is gone for good.
    pub(super) fn goodbye(&mut self, ix: NodeIx) {
        if self.nodes[ix].departed || self.nodes[ix].node.is_none() {
            return;
        }
        let calls: Vec<CallId> = std::mem::take(&mut self.nodes[ix].calls)
            .into_iter()
            .collect();
        for call in calls {
            self.call_lost(ix, call);
        }
        let members: Vec<NodeIx> = self.nodes[ix]
            .node
            .as_ref()
            .map(|n| {
                n.membership()
                    .nodes()
                    .filter_map(|id| self.ix_of(id))
                    .collect()
            })
            .unwrap_or_default();
        let n = &mut self.nodes[ix];
        n.departed = true;
        n.node = None;
        n.incarnation += 1;
        n.timer_at = None;
        n.inflight.clear();
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("goodbye"));
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Goodbye,
        });
        self.obs.push(Obs::Departed { node: ix });
        for to in members {
            if to == ix || self.nodes[to].departed {
                continue;
            }
            self.stats.goodbyes_sent += 1;
            if self.lost_in_transit() {
                self.stats.goodbyes_lost += 1;
                self.tr.node(
                    self.now,
                    &self.nodes,
                    ix,
                    format_args!("goodbye to {} lost (message loss)", self.nodes[to].id),
                );
                continue;
            }
            let at = self.arrival(ix, to);
            self.push(at, Ev::GoodbyeHeard { from: ix, to });
        }
    }

    // ------------------------------------------------------------ discovery and goodbyes

    /// Makes sure a Hello round runs soon.
    pub(super) fn schedule_hellos(&mut self) {
        if self.hello_scheduled {
            return;
        }
        self.hello_scheduled = true;
        let at = self.now + micros(self.spec.hello_interval_us.max(1));
        self.push(at, Ev::HelloRound);
    }

    /// Whether `a`'s core lacks `b`: not a member there, and not seen leaving.
    pub(super) fn lacks(&self, a: NodeIx, b: NodeIx) -> bool {
        let n = &self.nodes[a];
        match &n.node {
            Some(core) => {
                !core.membership().contains(&self.nodes[b].id) && !n.departed_seen.contains(&b)
            }
            None => false,
        }
    }

    /// Whether `a`'s core lacks some node of the world (a cheap count: its members and the
    /// nodes it saw leave are disjoint and all in the world).
    pub(super) fn lacks_any(&self, a: NodeIx) -> bool {
        let n = &self.nodes[a];
        let Some(core) = &n.node else { return false };
        let known = core.membership().len() + n.departed_seen.iter().filter(|d| **d != a).count();
        known < self.nodes.len()
    }

    /// Whether a node can take part in a Hello now.
    pub(super) fn can_hello(&self, x: NodeIx) -> bool {
        let n = &self.nodes[x];
        n.node.is_some() && !n.departed && n.paused_until <= self.now
    }

    /// One Hello round: every pair of nodes where one lacks the other, both up and unpaused
    /// with the link open both ways, exchanges a Hello (the lacking node sends it, the other
    /// answers). Another round follows while such a pair is left that could still meet.
    pub(super) fn hello_round(&mut self) {
        self.hello_scheduled = false;
        let n = self.nodes.len();
        let lacking: Vec<bool> = (0..n).map(|a| self.lacks_any(a)).collect();
        let mut again = false;
        for a in 0..n {
            if !lacking[a] {
                continue;
            }
            for (b, &b_lacks) in lacking.iter().enumerate() {
                // A pair of two lacking nodes is looked at once, from its lower index.
                if a == b || (b_lacks && b < a) {
                    continue;
                }
                let (ab, ba) = (self.lacks(a, b), b_lacks && self.lacks(b, a));
                if !ab && !ba {
                    continue;
                }
                let (a_up, b_up) = (self.nodes[a].node.is_some(), self.nodes[b].node.is_some());
                if !a_up || !b_up || self.nodes[b].departed {
                    // A restart or a join schedules the next round.
                    continue;
                }
                again = true;
                if !self.can_hello(a)
                    || !self.can_hello(b)
                    || self.blocked(a, b)
                    || self.blocked(b, a)
                {
                    continue;
                }
                let (from, to) = if ab { (a, b) } else { (b, a) };
                self.send_hello(from, to, false);
            }
        }
        if again {
            self.schedule_hellos();
        }
    }

    pub(super) fn send_hello(&mut self, from: NodeIx, to: NodeIx, answer: bool) {
        let Some(network) = self.nodes[from].node.as_ref().map(|n| n.network().clone()) else {
            return;
        };
        self.stats.hellos_sent += 1;
        let what = if answer { "hello answer" } else { "hello" };
        if self.lost_in_transit() {
            self.stats.hellos_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("{what} to {} lost (message loss)", self.nodes[to].id),
            );
            return;
        }
        let at = self.arrival(from, to);
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                from,
                format_args!("{what} to {} at {at}", self.nodes[to].id),
            );
        }
        self.push(
            at,
            Ev::Hello {
                from,
                to,
                network,
                answer,
            },
        );
    }

    /// A Hello reaches `to`: it learns `from` first-hand (if it lacks it), and answers a
    /// request with its own Hello.
    pub(super) fn hello_arrived(
        &mut self,
        from: NodeIx,
        to: NodeIx,
        network: NetworkId,
        answer: bool,
    ) {
        let what = if answer { "hello answer" } else { "hello" };
        if let Some(why) = self.unreachable(from, to) {
            self.stats.hellos_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("{what} from {} lost: {why}", self.nodes[from].id),
            );
            return;
        }
        if self.lacks(to, from) {
            let cluster = self.cluster_ids[self.nodes[from].cluster].clone();
            let node = self.nodes[from].id.clone();
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("{what} from {node}: discovered in {cluster} (network {network})"),
            );
            self.handle(
                to,
                Input::NodeDiscovered {
                    cluster,
                    node,
                    network,
                },
            );
        } else {
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!(
                    "{what} from {} (a member already, or seen leaving)",
                    self.nodes[from].id
                ),
            );
        }
        if !answer && self.nodes[to].node.is_some() {
            self.send_hello(to, from, true);
        }
    }

    /// `from`'s goodbye reaches `to`, unless `to` is down or cut from it.
    pub(super) fn goodbye_arrived(&mut self, from: NodeIx, to: NodeIx) {
        let why_lost = self.unreachable(from, to);
        let id = self.nodes[from].id.clone();
        if let Some(why) = why_lost {
            self.stats.goodbyes_lost += 1;
            self.tr.node(
                self.now,
                &self.nodes,
                to,
                format_args!("goodbye from {id} lost: {why}"),
            );
            return;
        }
        self.tr.node(
            self.now,
            &self.nodes,
            to,
            format_args!("goodbye from {id} delivered"),
        );
        self.handle(
            to,
            Input::NodeRemoved {
                node: id,
                goodbye: true,
            },
        );
    }
}
