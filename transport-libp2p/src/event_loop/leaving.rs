//! A graceful leave: stop advertising, refuse new frames, say Goodbye to every member, and
//! stop once each has acknowledged it or [`GOODBYE_WAIT`] has passed.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::EventLoop;
use crate::control::Control;

/// How long [`crate::Client::goodbye`] waits for the members' acknowledgements.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// A graceful leave in progress.
pub(super) struct Leaving {
    /// Whom to tell once the loop has stopped (every caller of goodbye).
    replies: Vec<oneshot::Sender<()>>,
    waiting: HashSet<OutboundRequestId>,
    deadline: Instant,
}

impl EventLoop {
    pub(super) fn start_leaving(&mut self, reply: oneshot::Sender<()>) {
        if let Some(leaving) = &mut self.leaving {
            // Already leaving: this caller is told when the loop stops, like the first.
            leaving.replies.push(reply);
            return;
        }
        info!(members = self.peers.members.len(), "saying goodbye");
        // Frames already queued are still written; new ones are refused.
        self.links.refuse_new();
        let rendezvous = self.rendezvous.clone();
        self.swarm.behaviour_mut().kad.stop_providing(&rendezvous);
        let goodbye = Control::Goodbye.encode();
        let mut waiting = HashSet::new();
        for (peer, addrs) in self.peers.member_addrs(&self.network) {
            let request_id = self
                .swarm
                .behaviour_mut()
                .control
                .send_request_with_addresses(&peer, goodbye.clone(), addrs);
            self.pending_control.insert(request_id, peer);
            waiting.insert(request_id);
        }
        self.peers.forget_candidates();
        self.leaving = Some(Leaving {
            replies: vec![reply],
            waiting,
            deadline: Instant::now() + GOODBYE_WAIT,
        });
        self.finish_leaving_if_acknowledged();
    }

    /// A control request got its answer or failed: one Goodbye fewer to wait for, if it was one.
    pub(super) fn control_request_done(&mut self, request_id: OutboundRequestId) {
        if let Some(leaving) = &mut self.leaving {
            leaving.waiting.remove(&request_id);
        }
        self.finish_leaving_if_acknowledged();
    }

    /// Stops waiting for acknowledgements once [`GOODBYE_WAIT`] has passed.
    pub(super) fn finish_leaving_if_late(&mut self, now: Instant) {
        if self.leaving.as_ref().is_some_and(|l| now >= l.deadline) {
            let waiting = self.leaving.as_ref().map_or(0, |l| l.waiting.len());
            warn!(
                unacknowledged = waiting,
                "goodbye not acknowledged by every member"
            );
            self.finish_leaving();
        }
    }

    fn finish_leaving_if_acknowledged(&mut self) {
        if self.leaving.as_ref().is_some_and(|l| l.waiting.is_empty()) {
            self.finish_leaving();
        }
    }

    fn finish_leaving(&mut self) {
        if let Some(leaving) = self.leaving.take() {
            info!("goodbye done");
            self.stop
                .get_or_insert_with(Vec::new)
                .extend(leaving.replies);
        }
    }
}
