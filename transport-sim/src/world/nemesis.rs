//! The nemesis: the fault primitives (pause, partition, clog, calm) and the random schedule
//! that injects them, with crashes, cluster restarts during partitions and removals.

use super::*;

impl World {
    /// Every event of the node waits until `until`.
    pub fn pause(&mut self, ix: NodeIx, until: Time) {
        self.fault_epoch += 1;
        self.nodes[ix].paused_until = until;
        self.stats.pauses += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            ix,
            format_args!("pause until {until}"),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[ix].id.clone()),
            change: WorldChange::Pause { until },
        });
    }

    /// Cuts the nodes with `side[ix]` from the others (only their sends if `one_way`) until
    /// `until`. Returns the partition's id.
    pub fn partition(&mut self, side: Vec<bool>, one_way: bool, until: Time) -> u64 {
        self.fault_epoch += 1;
        let id = self.next_partition;
        self.next_partition += 1;
        let members: Vec<NodeIx> = (0..side.len()).filter(|i| side[*i]).collect();
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!("partition #{id} one_way={one_way} side={members:?} until {until}"),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: None,
            change: WorldChange::Partition {
                id,
                members: members.iter().map(|m| self.nodes[*m].id.clone()).collect(),
                one_way,
                until,
            },
        });
        self.partitions.insert(id, Partition { side, one_way });
        self.stats.partitions += 1;
        self.push(until, Ev::Heal { partition: id });
        id
    }

    /// Holds every message from `from` to `to` until `until`.
    pub fn clog(&mut self, from: NodeIx, to: NodeIx, until: Time) {
        self.fault_epoch += 1;
        self.clogs.insert((from, to), until);
        self.stats.clogs += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            from,
            format_args!("clog link to {} until {until}", to),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: Some(self.nodes[from].id.clone()),
            change: WorldChange::Clog {
                to: self.nodes[to].id.clone(),
                until,
            },
        });
    }

    /// Ends every fault: stops the nemesis, heals partitions, releases clogs, resumes paused
    /// nodes, restarts crashed ones and makes the network reliable.
    pub fn calm(&mut self) {
        self.nemesis = false;
        self.partitions.clear();
        self.clogs.clear();
        self.spec.net.loss = 0.0;
        self.spec.net.dup = 0.0;
        self.spec.net.reorder = 0.0;
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!("calm: every fault healed, every node restarted"),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: None,
            change: WorldChange::Calm,
        });
        self.fault_epoch += 1;
        self.minority.clear();
        self.spec.disk.read_fail_permille = 0;
        for ix in 0..self.nodes.len() {
            self.nodes[ix].disk.fail_reads(0, 0);
            self.nodes[ix].paused_until = Time::ZERO;
            self.nodes[ix].extra_us = 0;
            self.restart(ix);
        }
        self.schedule_hellos();
    }
    pub(super) fn schedule_nemesis(&mut self) {
        let Some(range) = self.spec.faults.interval_us else {
            return;
        };
        let delay = draw(&mut self.rng_faults, range);
        let at = self.now + micros(delay);
        self.push(at, Ev::Nemesis);
    }

    pub(super) fn inject_fault(&mut self) {
        let total: u32 = self.spec.faults.kinds.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng_faults.random_range(0..total);
        let mut kind = self.spec.faults.kinds[0].0;
        for (k, w) in &self.spec.faults.kinds {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        let duration = draw(&mut self.rng_faults, self.spec.faults.duration_us);
        let until = self.now + micros(duration);
        let n = self.nodes.len();
        let victim = self.rng_faults.random_range(0..n);
        // An operator may name a node that said goodbye; the other faults skip it.
        if self.nodes[victim].departed && kind != FaultKind::Remove {
            return;
        }
        match kind {
            FaultKind::Crash => {
                let down = self.nodes.iter().filter(|n| n.node.is_none()).count();
                if down < self.spec.faults.down_max && self.nodes[victim].node.is_some() {
                    self.crash(victim);
                    self.push(until, Ev::Restart { node: victim });
                }
            }
            FaultKind::Pause => {
                if self.nodes[victim].node.is_some() {
                    self.pause(victim, until);
                }
            }
            FaultKind::IsolateNode => {
                let side = (0..n).map(|i| i == victim).collect();
                self.partition(side, false, until);
            }
            FaultKind::IsolateCluster => {
                let c = self.nodes[victim].cluster;
                let side = self.nodes.iter().map(|x| x.cluster == c).collect();
                self.partition(side, false, until);
            }
            FaultKind::Split | FaultKind::OneWay => {
                let side = (0..n).map(|_| self.rng_faults.random_bool(0.5)).collect();
                self.partition(side, kind == FaultKind::OneWay, until);
            }
            FaultKind::Clog => {
                let to = self.rng_faults.random_range(0..n);
                if to != victim {
                    self.clog(victim, to, until);
                }
            }
            FaultKind::RestartCluster => {
                let c = self.nodes[victim].cluster;
                let side: Vec<bool> = self.nodes.iter().map(|x| x.cluster == c).collect();
                self.restart_during_partition(side.clone(), side, duration);
            }
            FaultKind::RestartSplit => {
                let clusters = self.cluster_ids.len();
                let (side, restarted) = if clusters >= 2 {
                    // Two non-empty groups of clusters.
                    let mut group: Vec<bool> = (0..clusters)
                        .map(|_| self.rng_faults.random_bool(0.5))
                        .collect();
                    let pick = self.rng_faults.random_range(0..clusters);
                    if group.iter().all(|g| *g) {
                        group[pick] = false;
                    } else if !group.iter().any(|g| *g) {
                        group[pick] = true;
                    }
                    // Each side restarts whole: every node of every one of its clusters (the
                    // case where a node that forgot its peers sees only its side), or some of
                    // its clusters whole.
                    let mut restart_cluster = vec![false; clusters];
                    for g in [true, false] {
                        let whole = self.rng_faults.random_bool(0.6);
                        for (c, r) in restart_cluster.iter_mut().enumerate() {
                            if group[c] == g {
                                *r = whole || self.rng_faults.random_bool(0.5);
                            }
                        }
                    }
                    let side = self.nodes.iter().map(|x| group[x.cluster]).collect();
                    let restarted = self
                        .nodes
                        .iter()
                        .map(|x| restart_cluster[x.cluster])
                        .collect();
                    (side, restarted)
                } else {
                    // One cluster: a random split of its nodes, everyone restarted.
                    let side = (0..n).map(|_| self.rng_faults.random_bool(0.5)).collect();
                    (side, vec![true; n])
                };
                self.restart_during_partition(side, restarted, duration);
            }
            FaultKind::Remove => {
                if self.removals_done + self.removal_calls.len() >= self.spec.faults.removals_max {
                    return;
                }
                let up: Vec<NodeIx> = (0..n).filter(|ix| self.nodes[*ix].node.is_some()).collect();
                if up.is_empty() {
                    return;
                }
                let remover = up[self.rng_faults.random_range(0..up.len())];
                let silent: Vec<NodeIx> = (0..n)
                    .filter(|ix| *ix != remover && !self.nodes[*ix].departed)
                    .filter(|ix| !self.reachable_now(remover, *ix))
                    .collect();
                // A third of the time the operator names any node; a third of the time a node
                // that stopped answering the remover (down, paused or cut off), if there is
                // one; a third of the time a node whose network just failed (it is cut off
                // from everyone for a while, alive), as soon as it failed.
                let (victim, cut) = match self.rng_faults.random_range(0..3) {
                    1 if !silent.is_empty() => {
                        (silent[self.rng_faults.random_range(0..silent.len())], false)
                    }
                    2 if !self.nodes[victim].departed && self.nodes[victim].node.is_some() => {
                        (victim, true)
                    }
                    _ => (victim, false),
                };
                if victim == remover || !self.removal_leaves_a_writable_cluster(victim) {
                    return;
                }
                if cut {
                    // Long enough for the removal's check to run out while it stays cut off.
                    let check = self.spec.config.verify_timeout.as_micros() as Micros;
                    let cut_for = self.rng_faults.random_range(check * 3 / 2..=check * 4);
                    let side = (0..n).map(|i| i == victim).collect();
                    self.partition(side, false, self.now + micros(cut_for));
                }
                self.stats.removals += 1;
                self.remove_node(remover, victim, false);
            }
        }
    }

    /// Crashes the nodes with `restart[ix]`, cuts the nodes with `side[ix]` from the others for
    /// `duration`, and restarts the crashed nodes while the partition holds (each boots from
    /// its disk and sees only its own side).
    pub(super) fn restart_during_partition(
        &mut self,
        side: Vec<bool>,
        restart: Vec<bool>,
        duration: Micros,
    ) {
        let until = self.now + micros(duration);
        let crashed: Vec<NodeIx> = (0..self.nodes.len())
            .filter(|ix| restart.get(*ix).copied().unwrap_or(false))
            .filter(|ix| self.nodes[*ix].node.is_some() && !self.nodes[*ix].departed)
            .collect();
        self.stats.cluster_restarts += 1;
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!(
                "restart during a partition: nodes {crashed:?} crash, restart before it heals"
            ),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: None,
            change: WorldChange::Note,
        });
        self.partition(side, false, until);
        for ix in crashed {
            self.crash(ix);
            // Restart within the first 60% of the partition, so that the restarted nodes
            // spend a while with only their own side in sight.
            let at = self
                .rng_faults
                .random_range(duration / 10..=duration * 6 / 10 + 1);
            let at = self.now + micros(at);
            self.push(at, Ev::Restart { node: ix });
        }
    }

    /// Whether, without `victim` (and every node gone or leaving), some cluster keeps the
    /// members it needs to accept writes: the liveness phase must be able to write.
    pub(super) fn removal_leaves_a_writable_cluster(&self, victim: NodeIx) -> bool {
        let min = self.spec.config.cluster_size_min;
        (0..self.cluster_ids.len()).any(|c| {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(ix, x)| {
                    x.cluster == c
                        && *ix != victim
                        && !x.departed
                        && !x.removed
                        && !x.leaving
                        && !self.removal_pending(*ix)
                })
                .count()
                >= min
        })
    }
}
