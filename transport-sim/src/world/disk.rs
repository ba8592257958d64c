//! The disks: each write completes after its fsync latency (a lazy write after a sync delay
//! too), in order; what completes is applied to the node's disk image, with every write before
//! it, and reported to its core.

use super::*;

impl World {
    pub(super) fn persist(
        &mut self,
        ix: NodeIx,
        write: WriteId,
        ops: Vec<WriteOp>,
        urgency: Urgency,
    ) {
        self.stats.writes += 1;
        if self.spec.trace != TraceMode::Off {
            self.tr.node(
                self.now,
                &self.nodes,
                ix,
                format_args!("persist w{} {urgency:?} {ops:?}", write.0),
            );
        }
        self.obs.push(Obs::Write {
            node: ix,
            ops: ops.clone(),
        });
        let latency = draw(&mut self.rng_disk, self.spec.disk.fsync_us);
        let done = match urgency {
            Urgency::Barrier => {
                let n = &mut self.nodes[ix];
                let done = (self.now + micros(latency)).max(n.disk_busy_until);
                n.disk_busy_until = done;
                done
            }
            // Synced after a delay unless a barrier write covers it first; it does not hold
            // up the barrier writes behind it.
            Urgency::Lazy => {
                let wait = draw(&mut self.rng_disk, self.spec.disk.lazy_sync_us);
                (self.now + micros(wait + latency)).max(self.nodes[ix].disk_busy_until)
            }
        };
        let n = &mut self.nodes[ix];
        n.inflight.push_back((write, ops));
        let incarnation = n.incarnation;
        self.push(
            done,
            Ev::Disk {
                node: ix,
                incarnation,
                write,
            },
        );
    }

    pub(super) fn disk_done(&mut self, ix: NodeIx, incarnation: u64, write: WriteId) {
        if self.nodes[ix].incarnation != incarnation || self.nodes[ix].node.is_none() {
            return;
        }
        let mut upto = None;
        while self.nodes[ix]
            .inflight
            .front()
            .is_some_and(|(w, _)| *w <= write)
        {
            let (w, ops) = self.nodes[ix].inflight.pop_front().expect("front exists");
            self.nodes[ix].apply_durable(&ops);
            self.obs.push(Obs::Durable { node: ix, ops });
            upto = Some(w);
        }
        if let Some(upto) = upto {
            self.tr.node(
                self.now,
                &self.nodes,
                ix,
                format_args!("durable upto w{}", upto.0),
            );
            self.handle(ix, Input::Persisted { upto });
        }
    }
}

impl SimNode {
    pub(super) fn apply_durable(&mut self, ops: &[WriteOp]) {
        self.disk.lock().apply_all(ops);
    }
}
