//! The events on their way to the node: a queue in front of the bounded channel, so that the
//! loop never waits for the node, and a bound on each kind of event (frames from peers,
//! membership changes) so that a slow node cannot make it grow without limit.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{MEMBERS_MAX, NetEvent};

/// Membership events waiting for the node, beyond the room frames may use.
const MEMBERSHIP_EVENTS_QUEUED_MAX: usize = 4 * MEMBERS_MAX;

pub(super) struct EventOutbox {
    events: mpsc::Sender<NetEvent>,
    /// Events not yet taken by the node's receiver (bounded: see `accepts_frame` and
    /// `emit_membership`).
    queued: VecDeque<NetEvent>,
    /// The node dropped its event receiver: events are discarded.
    closed: bool,
    event_queue_len: usize,
}

impl EventOutbox {
    pub(super) fn new(events: mpsc::Sender<NetEvent>, event_queue_len: usize) -> Self {
        Self {
            events,
            queued: VecDeque::new(),
            closed: false,
            event_queue_len,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// Whether a frame from a peer may be queued for the node: fewer than `event_queue_len`
    /// events are waiting, counting those already in the channel.
    pub(super) fn accepts_frame(&self) -> bool {
        let in_channel = self.events.max_capacity() - self.events.capacity();
        !self.closed && self.queued.len() + in_channel < self.event_queue_len
    }

    pub(super) fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The channel, for the loop to wait for room in it.
    pub(super) fn sender(&self) -> mpsc::Sender<NetEvent> {
        self.events.clone()
    }

    // ---- mutators -----------------------------------------------------------------------

    /// Queues a frame that [`Self::accepts_frame`] let in.
    pub(super) fn push_frame(&mut self, event: NetEvent) {
        self.queued.push_back(event);
    }

    pub(super) fn emit_membership(&mut self, event: NetEvent) {
        if self.closed {
            return;
        }
        if self.queued.len() >= self.event_queue_len + MEMBERSHIP_EVENTS_QUEUED_MAX {
            warn!(?event, "event queue full: membership event dropped");
            return;
        }
        self.queued.push_back(event);
    }

    /// Sends the oldest queued event with room the loop waited for.
    pub(super) fn send_first(&mut self, permit: mpsc::OwnedPermit<NetEvent>) {
        if let Some(event) = self.queued.pop_front() {
            permit.send(event);
        }
    }

    /// Moves queued events into the channel while it has room.
    pub(super) fn flush(&mut self) {
        while let Some(event) = self.queued.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.queued.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.close();
                    return;
                }
            }
        }
    }

    pub(super) fn close(&mut self) {
        if !self.closed {
            debug!("event receiver dropped: events are discarded");
        }
        self.closed = true;
        self.queued.clear();
    }
}
