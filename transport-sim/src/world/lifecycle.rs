//! A node's life: boot from its own disk, join, crash, restart, leave, and an operator's
//! removal; client calls lost with a node.

use super::*;

impl World {
    /// A new node joins cluster `cluster` now. Its bootstrap node is a live node the world
    /// picks: the joiner learns the network id from it and starts empty, knowing nobody; it is
    /// discovered (and discovers) through Hellos like everyone else. `None` if no node is up to
    /// bootstrap from.
    pub fn join(&mut self, cluster: usize) -> Option<NodeIx> {
        let up: Vec<NodeIx> = (0..self.nodes.len())
            .filter(|ix| self.nodes[*ix].node.is_some())
            .collect();
        if up.is_empty() {
            self.tr.fault(
                self.now,
                &self.nodes,
                usize::MAX,
                format_args!("join skipped: no node is up to bootstrap from"),
            );
            self.tr.record(self.now, || TraceWhat::World {
                node: None,
                change: WorldChange::Note,
            });
            return None;
        }
        let bootstrap = up[self.rng_faults.random_range(0..up.len())];
        let network = self.nodes[bootstrap]
            .node
            .as_ref()
            .map(|n| n.network().clone())
            .expect("picked among the live nodes");
        let ix = self.add_node(cluster, Recovered::joiner(network.clone()));
        self.stats.joins += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!(
                "join cluster {} through {} (network {network})",
                self.cluster_ids[cluster], self.nodes[bootstrap].id
            ),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Join,
        });
        self.boot(ix);
        self.obs.push(Obs::Joined { node: ix });
        Some(ix)
    }

    /// Crashes a node now: volatile state is lost, durable writes kept; writes in flight are
    /// kept or (with `lose_unsynced`) a random suffix of them is lost.
    pub fn crash(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_none() {
            return;
        }
        self.fault_epoch += 1;
        let lose = self.spec.faults.lose_unsynced;
        let n = &mut self.nodes[ix];
        n.node = None;
        n.incarnation += 1;
        n.timer_at = None;
        n.paused_until = Time::ZERO;
        let inflight: Vec<(WriteId, Vec<WriteOp>)> = n.inflight.drain(..).collect();
        let keep = if lose {
            self.rng_disk.random_range(0..=inflight.len())
        } else {
            inflight.len()
        };
        let writes_lost = inflight.len() - keep;
        let commits_lost = inflight[keep..]
            .iter()
            .flat_map(|(_, ops)| ops)
            .filter(|op| matches!(op, WriteOp::PutKey { state, .. } if state.is_stored()))
            .count();
        for (_, ops) in inflight.iter().take(keep) {
            self.nodes[ix].apply_durable(ops);
            self.obs.push(Obs::Durable {
                node: ix,
                ops: ops.clone(),
            });
        }
        let calls: Vec<CallId> = std::mem::take(&mut self.nodes[ix].calls)
            .into_iter()
            .collect();
        for call in calls {
            self.call_lost(ix, call);
        }
        self.stats.crashes += 1;
        self.stats.writes_lost += writes_lost as u64;
        self.stats.commits_lost += commits_lost as u64;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!("crash, {writes_lost} unsynced writes lost"),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Crash,
        });
        self.obs.push(Obs::Crashed {
            node: ix,
            writes_lost,
        });
    }

    /// Restarts a crashed node from its disk image, and nothing else: its keys, ballot floor,
    /// ceilings, network id and the membership it recorded. (An operator that asked it to leave asks
    /// again.) A node that was removed is restarted too (a tired operator): it must learn
    /// that it was removed from its peers and serve nothing.
    pub fn restart(&mut self, ix: NodeIx) {
        if self.nodes[ix].node.is_some() || self.nodes[ix].departed {
            return;
        }
        self.fault_epoch += 1;
        self.boot(ix);
        self.stats.restarts += 1;
        let n = &self.nodes[ix];
        let (members, departed, keys) = {
            let disk = n.disk.lock();
            (disk.members.len(), disk.departed.len(), disk.keys.len())
        };
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!(
                "restart from disk: {} members, {} departed, {} keys{}",
                members,
                departed,
                keys,
                if n.removed {
                    " (removed by an operator)"
                } else {
                    ""
                }
            ),
        );
        self.obs.push(Obs::Restarted { node: ix });
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Restart,
        });
        if self.nodes[ix].leaving {
            self.handle(ix, Input::Leave);
        }
    }

    /// Asks a node to leave gracefully. Once it reports [`Note::LeaveComplete`] it says
    /// goodbye: every node it can reach then hears [`Input::NodeRemoved`] after the link's
    /// latency, and the node is gone for good.
    pub fn leave(&mut self, ix: NodeIx) {
        if self.nodes[ix].leaving || self.nodes[ix].departed {
            return;
        }
        self.nodes[ix].leaving = true;
        self.stats.leaves += 1;
        self.tr
            .fault(self.now, &self.nodes, ix, format_args!("leave requested"));
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Leave,
        });
        self.handle(ix, Input::Leave);
    }

    pub fn is_departed(&self, ix: NodeIx) -> bool {
        self.nodes[ix].departed
    }

    pub fn is_leaving(&self, ix: NodeIx) -> bool {
        self.nodes[ix].leaving
    }

    /// An operator asks `remover` to remove `victim`. The answer comes back as
    /// [`Obs::Removal`]. `force` only for a node that said goodbye (its cluster pulled every
    /// decision it held): forcing the removal of a node from an even cluster may lose a value
    /// a bare majority of it accepted.
    pub fn remove_node(&mut self, remover: NodeIx, victim: NodeIx, force: bool) -> CallId {
        assert!(
            !force || self.nodes[victim].departed,
            "a forced removal of a node that did not say goodbye"
        );
        // Strictly judged: the victim can hear the remover and answers it (it counts the
        // remover a member and was not removed itself), and nothing can get in the way.
        let answers = self.nodes[victim]
            .node
            .as_ref()
            .is_some_and(|n| !n.is_removed() && n.membership().contains(&self.nodes[remover].id));
        let clean = answers && self.reachable_now(remover, victim) && self.spec.net.loss == 0.0;
        let clean_epoch = clean.then_some((self.fault_epoch, self.nodes[victim].incarnation));
        let node = self.nodes[victim].id.clone();
        self.tr.fault(
            self.now,
            &self.nodes,
            remover,
            format_args!(
                "operator: remove {node}{} (asked here; {})",
                if force { ", forced" } else { "" },
                self.describe_state(victim)
            ),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[remover].id.clone()),
            change: WorldChange::Note,
        });
        let call = self.submit(remover, Command::RemoveNode { node, force });
        self.removal_calls.insert(
            call,
            RemovalCall {
                remover,
                victim,
                clean_epoch,
            },
        );
        call
    }

    /// How a node stands, for the trace.
    pub(super) fn describe_state(&self, ix: NodeIx) -> &'static str {
        let n = &self.nodes[ix];
        if n.departed {
            "it said goodbye"
        } else if n.node.is_none() {
            "it is down"
        } else if n.paused_until > self.now {
            "it is paused"
        } else if (0..self.nodes.len())
            .any(|j| !self.nodes[j].departed && (self.blocked(ix, j) || self.blocked(j, ix)))
        {
            "it is up, a partition holds"
        } else {
            "it is up"
        }
    }

    /// A client call is lost (its node is down or crashed before answering).
    pub(super) fn call_lost(&mut self, node: NodeIx, call: CallId) {
        if self.removal_calls.remove(&call).is_some() {
            self.tr.node(
                self.now,
                &self.nodes,
                node,
                format_args!("operator's removal call {} lost", call.0),
            );
        }
        self.obs.push(Obs::CallLost { node, call });
    }

    pub(super) fn add_node(&mut self, cluster: usize, disk: Recovered) -> NodeIx {
        let ix = self.nodes.len();
        let k = self.nodes.iter().filter(|n| n.cluster == cluster).count();
        let disk = DiskImage::new(disk);
        let failing = self.spec.disk.read_fail_permille;
        if failing > 0 {
            disk.fail_reads(
                failing,
                self.read_faults_seed ^ (ix as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
        }
        let id = node_id(cluster, k);
        self.index.insert(id.clone(), ix);
        self.nodes.push(SimNode {
            id,
            cluster,
            node: None,
            incarnation: 0,
            disk,
            inflight: VecDeque::new(),
            disk_busy_until: Time::ZERO,
            timer_at: None,
            paused_until: Time::ZERO,
            extra_us: 0,
            calls: BTreeSet::new(),
            leaving: false,
            departed: false,
            departed_seen: BTreeSet::new(),
            removed: false,
            rounds_sent: BTreeMap::new(),
        });
        ix
    }

    /// Starts the node from its disk image only.
    pub(super) fn boot(&mut self, ix: NodeIx) {
        let seed = self.rng_seeds.random::<u64>();
        let departed_seen: BTreeSet<NodeIx> = self.nodes[ix]
            .disk
            .lock()
            .departed
            .iter()
            .filter_map(|id| self.index.get(id).copied())
            .collect();
        let n = &mut self.nodes[ix];
        n.departed_seen = departed_seen;
        let recovered = n.disk.lock().clone();
        let node = Node::new(
            self.spec.config.clone(),
            n.id.clone(),
            self.cluster_ids[n.cluster].clone(),
            recovered,
            Box::new(n.disk.clone()),
            self.now,
            seed,
        );
        let node = match node {
            Ok(node) => node,
            Err(e) => panic!("the simulation's config is invalid: {e}"),
        };
        n.node = Some(node);
        n.disk_busy_until = self.now;
        self.arm(ix);
        // Like the real transport, a node that comes up connects and Hellos the peers it
        // can reach.
        self.schedule_hellos();
    }

    /// The answer to an operator's removal.
    pub(super) fn removal_answered(&mut self, r: RemovalCall, reply: Reply) {
        let outcome = match reply {
            Reply::Remove(o) => o,
            other => panic!("a RemoveNode command was answered {other:?}"),
        };
        if outcome == RemoveOutcome::Removed {
            self.removals_done += 1;
        }
        let clean = r.clean_epoch.is_some_and(|(epoch, incarnation)| {
            epoch == self.fault_epoch && incarnation == self.nodes[r.victim].incarnation
        });
        self.tr.fault(
            self.now,
            &self.nodes,
            r.remover,
            format_args!(
                "operator: removal of {} answered {outcome:?}{}",
                self.nodes[r.victim].id,
                if clean {
                    " (the node was live and reachable throughout)"
                } else {
                    ""
                }
            ),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[r.remover].id.clone()),
            change: WorldChange::Note,
        });
        self.obs.push(Obs::Removal {
            remover: r.remover,
            victim: r.victim,
            outcome,
            clean,
        });
    }
}
