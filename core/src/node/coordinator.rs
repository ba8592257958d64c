//! The coordinator of a client's PUT (core/PROTOCOL.md, "Writing a key (PUT)").

use crate::storage::WriteOp;
use crate::types::{NodeId, ProposalId};

use super::outbox::Outbox;

/// Proposal counters of this node: they never repeat, across restarts too, because the
/// ceiling under which ids are handed out is persisted (in blocks) before any id under it can
/// leave (it leaves behind the barrier).
pub(crate) struct ProposalIds {
    next: u64,
    ceiling: u64,
    block: u64,
}

impl ProposalIds {
    /// Counters of a node (re)started with `ceiling` recorded: it starts there.
    pub fn new(ceiling: u64, block: u64) -> ProposalIds {
        assert!(block > 0);
        ProposalIds {
            next: ceiling,
            ceiling,
            block,
        }
    }

    pub fn next(&mut self, coordinator: &NodeId, out: &mut Outbox) -> ProposalId {
        if self.next >= self.ceiling {
            self.ceiling = self.next + self.block;
            out.persist(WriteOp::CounterCeiling(self.ceiling));
        }
        assert!(self.next < self.ceiling);
        let p = ProposalId {
            coordinator: coordinator.clone(),
            counter: self.next,
        };
        self.next += 1;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Output;

    #[test]
    fn the_ceiling_is_persisted_once_per_block() {
        let mut out = Outbox::new("me".into(), false);
        let mut ids = ProposalIds::new(10, 3);
        let me = NodeId::from("me");
        let counters: Vec<u64> = (0..4).map(|_| ids.next(&me, &mut out).counter).collect();
        assert_eq!(counters, vec![10, 11, 12, 13]);
        out.flush();
        let Some(Output::Persist { ops, .. }) = out.poll() else {
            panic!("a write")
        };
        assert_eq!(
            ops,
            vec![WriteOp::CounterCeiling(13), WriteOp::CounterCeiling(16)]
        );
    }
}
