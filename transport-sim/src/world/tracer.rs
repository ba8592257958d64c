//! The event trace: one line per event, hashed (the one FNV-1a of the core, so a trace hash
//! is the same on every platform) and maybe kept.

use std::fmt::{self, Write as _};

use replicator_core::{Time, fnv1a_extend};

use super::SimNode;
use crate::TraceMode;
use crate::spec::NodeIx;
use crate::trace_event::{TraceEvent, TraceWhat};

/// The event trace: one line per event (time, node, message or fault), hashed and maybe kept.
pub(super) struct Tracer {
    pub(super) mode: TraceMode,
    pub(super) hash: u64,
    pub(super) lines: Vec<String>,
    pub(super) line: String,
    /// The structured records of the kept lines ([`TraceMode::Keep`] only).
    pub(super) events: Vec<TraceEvent>,
    /// The number the next message copy gets (counted in every mode: it costs nothing and
    /// changes nothing the run does).
    pub(super) next_msg: u64,
}

impl Tracer {
    pub(super) fn new(mode: TraceMode) -> Tracer {
        Tracer {
            mode,
            hash: replicator_core::FNV1A_OFFSET,
            lines: Vec::new(),
            line: String::new(),
            events: Vec::new(),
            next_msg: 0,
        }
    }

    /// Numbers a message copy about to be sent.
    pub(super) fn number_msg(&mut self) -> u64 {
        let msg = self.next_msg;
        self.next_msg += 1;
        msg
    }

    /// Records what the line just written says, structured (built only when the trace is
    /// kept). Call right after the line's [`Tracer::node`] or [`Tracer::fault`].
    pub(super) fn record(&mut self, now: Time, what: impl FnOnce() -> TraceWhat) {
        if self.mode != TraceMode::Keep {
            return;
        }
        let line = self.lines.len().saturating_sub(1);
        self.events.push(TraceEvent {
            at: now,
            line,
            what: what(),
        });
    }

    pub(super) fn node(
        &mut self,
        now: Time,
        nodes: &[SimNode],
        ix: NodeIx,
        args: fmt::Arguments<'_>,
    ) {
        if self.mode == TraceMode::Off {
            return;
        }
        self.write(now, nodes[ix].id.as_str(), args);
    }

    pub(super) fn fault(
        &mut self,
        now: Time,
        nodes: &[SimNode],
        ix: NodeIx,
        args: fmt::Arguments<'_>,
    ) {
        if self.mode == TraceMode::Off {
            return;
        }
        let who = nodes.get(ix).map_or("world", |n| n.id.as_str());
        self.write(now, who, format_args!("FAULT {args}"));
    }

    pub(super) fn write(&mut self, now: Time, who: &str, args: fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{now} {who} {args}");
        self.hash = fnv1a_extend(self.hash, self.line.as_bytes());
        self.hash = fnv1a_extend(self.hash, b"\n");
        if self.mode == TraceMode::Keep {
            self.lines.push(self.line.clone());
        }
    }
}
