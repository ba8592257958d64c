//! The event trace: one line per event, hashed (the one FNV-1a of the core, so a trace hash
//! is the same on every platform) and maybe kept.

use std::fmt::{self, Write as _};

use replicator_core::{Time, fnv1a_extend};

use super::SimNode;
use crate::TraceMode;
use crate::spec::NodeIx;

/// The event trace: one line per event (time, node, message or fault), hashed and maybe kept.
pub(super) struct Tracer {
    pub(super) mode: TraceMode,
    pub(super) hash: u64,
    pub(super) lines: Vec<String>,
    pub(super) line: String,
}

impl Tracer {
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
