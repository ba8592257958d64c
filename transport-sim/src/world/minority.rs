//! A minority of every cluster faulty from the start (PROTOCOL.md, invariant 9): as many nodes
//! of each cluster as its majority can do without (1 of 3 or 4, 2 of 5), down, paused, cut off
//! or slow, for the whole safety phase or coming and going. `calm` ends it with every other
//! fault.

use super::*;
use crate::spec::MinorityKind;

/// How long a faulty period lasts when the fault holds for the whole safety phase: paused
/// nodes are paused again at once, in chunks (a paused node's held events fire at the end of
/// a pause, so one endless pause would never let them go).
const STEADY_CHUNK_US: Micros = 400_000;

impl World {
    /// Picks the faulty minority of every cluster and starts its faults.
    pub(super) fn start_minority(&mut self) {
        let Some(spec) = self.spec.faults.minority.clone() else {
            return;
        };
        for c in 0..self.cluster_ids.len() {
            let mut nodes: Vec<NodeIx> = (0..self.nodes.len())
                .filter(|ix| self.nodes[*ix].cluster == c)
                .collect();
            let spare = replicator_core::quorum::tolerated(nodes.len());
            for _ in 0..spare {
                let pick = self.rng_faults.random_range(0..nodes.len());
                self.minority.push(nodes.swap_remove(pick));
            }
        }
        self.minority.sort_unstable();
        let faulty: Vec<String> = self
            .minority
            .iter()
            .map(|ix| self.nodes[*ix].id.to_string())
            .collect();
        self.tr.fault(
            self.now,
            &self.nodes,
            usize::MAX,
            format_args!(
                "minority {:?} {} for {faulty:?}",
                spec.kind,
                if spec.toggle_us.is_some() {
                    "coming and going"
                } else {
                    "for the whole safety phase"
                }
            ),
        );
        self.tr.record(self.now, || TraceWhat::World {
            node: None,
            change: WorldChange::Note,
        });
        for ix in self.minority.clone() {
            // Coming and going: each node starts at its own moment.
            let at = match spec.toggle_us {
                Some(range) => self.now + micros(draw(&mut self.rng_faults, range) / 2),
                None => self.now,
            };
            self.push(
                at,
                Ev::Minority {
                    node: ix,
                    start: true,
                },
            );
        }
    }

    /// A faulty node's period starts or ends; the next one is scheduled.
    pub(super) fn minority_fault(&mut self, ix: NodeIx, start: bool) {
        if !self.minority.contains(&ix) {
            return;
        }
        let Some(spec) = self.spec.faults.minority.clone() else {
            return;
        };
        let length = match spec.toggle_us {
            Some(range) => draw(&mut self.rng_faults, range),
            None => STEADY_CHUNK_US,
        };
        let until = self.now + micros(length);
        self.fault_epoch += 1;
        match (spec.kind, start) {
            (MinorityKind::Down, true) => {
                if self.nodes[ix].node.is_some() {
                    self.crash(ix);
                }
                if spec.toggle_us.is_none() {
                    // Down for the whole safety phase: `calm` restarts it.
                    return;
                }
            }
            (MinorityKind::Down, false) => self.restart(ix),
            (MinorityKind::Paused, true) => self.pause(ix, until),
            (MinorityKind::CutOff, true) => {
                let side = (0..self.nodes.len()).map(|i| i == ix).collect();
                self.partition(side, false, until);
            }
            (MinorityKind::Slow { extra_us }, true) => {
                self.nodes[ix].extra_us = extra_us;
                self.tr.fault(
                    self.now,
                    &self.nodes,
                    ix,
                    format_args!("slow: every message to or from it {extra_us}us later"),
                );
                self.tr.record(self.now, || TraceWhat::World {
                    node: Some(self.nodes[ix].id.clone()),
                    change: WorldChange::Slow,
                });
            }
            (MinorityKind::Slow { .. }, false) => self.nodes[ix].extra_us = 0,
            (MinorityKind::Paused | MinorityKind::CutOff, false) => {}
        }
        let next = match (spec.toggle_us, start) {
            (None, _) => Ev::Minority {
                node: ix,
                start: true,
            },
            (Some(_), true) => Ev::Minority {
                node: ix,
                start: false,
            },
            (Some(range), false) => {
                let healthy = draw(&mut self.rng_faults, range);
                self.push(
                    self.now + micros(healthy),
                    Ev::Minority {
                        node: ix,
                        start: true,
                    },
                );
                return;
            }
        };
        self.push(until, next);
    }
}
