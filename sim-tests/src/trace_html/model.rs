//! What the page draws, built from the structured trace: a lane per node, an arrow per message
//! copy with its fate, shaded spans for faults, client calls with their answers, and marks for
//! the rest of the world's changes.

use std::collections::BTreeMap;

use transport_sim::{TraceEvent, TraceWhat, WorldChange};

use super::Violation;
use super::json::Json;

/// The longest piece of a trace line the page carries (a sync page's line can be huge).
const TEXT_MAX: usize = 400;

/// How far a message the network lost is drawn, toward its target, when its arrival is unknown.
const LOST_DRAWN_US: u64 = 500;

/// The picture of one run.
#[derive(Debug, Default)]
pub struct Picture {
    /// Lane order: by cluster, then by the node's number in it.
    pub nodes: Vec<String>,
    pub arrows: Vec<Arrow>,
    pub spans: Vec<Span>,
    pub calls: Vec<Call>,
    pub marks: Vec<Mark>,
    /// The time of the last event.
    pub end_us: u64,
}

/// What became of a message copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// It arrived where it could not be delivered (node down, partition).
    Dropped(&'static str),
    /// The network lost it as it was sent.
    Lost,
    /// Still on its way when the run ended.
    InFlight,
}

#[derive(Debug)]
pub struct Arrow {
    pub from: usize,
    pub to: usize,
    pub sent_us: u64,
    /// Its delivery or drop (or where it is drawn to end, if lost or in flight).
    pub end_us: u64,
    pub fate: Fate,
    pub dup: bool,
    pub kind: &'static str,
    pub key: Option<String>,
    /// Its send line, and the line of its delivery or drop.
    pub text: String,
    pub end_text: Option<String>,
}

/// A fault shading one lane from `from_us` to `to_us`.
#[derive(Debug)]
pub struct Span {
    pub node: usize,
    /// The CSS class: `down`, `departed`, `paused`, `partitioned`, `clogged`.
    pub kind: &'static str,
    pub from_us: u64,
    pub to_us: u64,
    pub text: String,
}

/// A client's call at a node and its answer.
#[derive(Debug)]
pub struct Call {
    pub node: usize,
    pub call: u64,
    pub key: Option<String>,
    pub at_us: u64,
    pub answered_us: Option<u64>,
    pub text: String,
    pub answer: Option<String>,
    /// The node was down: the call was lost on arrival.
    pub lost: bool,
}

/// An instant worth a mark: a crash, a restart, a join, an operator's removal...
#[derive(Debug)]
pub struct Mark {
    pub node: Option<usize>,
    pub kind: &'static str,
    pub at_us: u64,
    pub text: String,
}

/// A span still open, waiting for its end.
struct Open {
    kind: &'static str,
    from_us: u64,
    /// When it ends by itself, if it does.
    until_us: Option<u64>,
    text: String,
}

/// Builds the picture: `lines` is the kept trace, `events` its structured records.
pub fn build(lines: &[String], events: &[TraceEvent]) -> Picture {
    let text = |line: usize| -> String {
        let l = lines.get(line).map(String::as_str).unwrap_or("");
        match l.char_indices().nth(TEXT_MAX) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        }
    };
    let mut names: Vec<String> = Vec::new();
    for e in events {
        each_node(&e.what, |n| names.push(n.to_string()));
    }
    names.sort_by_key(|n| lane_order(n));
    names.dedup();
    let lane: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let ix = |n: &replicator_core::NodeId| lane[n.as_str()];

    let mut p = Picture {
        end_us: events.last().map_or(0, |e| e.at.as_micros()),
        ..Picture::default()
    };
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut calls: BTreeMap<u64, usize> = BTreeMap::new();
    // Open spans per (lane, kind, partition id or clog target).
    let mut open: BTreeMap<(usize, &'static str, String), Open> = BTreeMap::new();
    for e in events {
        let at = e.at.as_micros();
        // A span that ended by itself before this event is closed first.
        close_due(&mut open, &mut p.spans, at);
        match &e.what {
            TraceWhat::Sent {
                msg,
                from,
                to,
                arrives,
                dup,
                about,
            } => {
                copies.insert(*msg, p.arrows.len());
                p.arrows.push(Arrow {
                    from: ix(from),
                    to: ix(to),
                    sent_us: at,
                    end_us: arrives.as_micros(),
                    fate: Fate::InFlight,
                    dup: *dup,
                    kind: about.kind,
                    key: about.key.as_ref().map(|k| k.as_str().to_string()),
                    text: text(e.line),
                    end_text: None,
                });
            }
            TraceWhat::Lost { from, to, about } => p.arrows.push(Arrow {
                from: ix(from),
                to: ix(to),
                sent_us: at,
                end_us: at + LOST_DRAWN_US,
                fate: Fate::Lost,
                dup: false,
                kind: about.kind,
                key: about.key.as_ref().map(|k| k.as_str().to_string()),
                text: text(e.line),
                end_text: None,
            }),
            TraceWhat::Received { msg } | TraceWhat::Dropped { msg, .. } => {
                if let Some(a) = copies.get(msg).map(|i| &mut p.arrows[*i]) {
                    a.end_us = at;
                    a.end_text = Some(text(e.line));
                    a.fate = match &e.what {
                        TraceWhat::Dropped { why, .. } => Fate::Dropped(why),
                        _ => Fate::Delivered,
                    };
                }
            }
            TraceWhat::Call {
                node,
                call,
                key,
                lost,
            } => {
                calls.insert(*call, p.calls.len());
                p.calls.push(Call {
                    node: ix(node),
                    call: *call,
                    key: key.as_ref().map(|k| k.as_str().to_string()),
                    at_us: at,
                    answered_us: None,
                    text: text(e.line),
                    answer: None,
                    lost: *lost,
                });
            }
            TraceWhat::Reply { call, .. } => {
                if let Some(c) = calls.get(call).map(|i| &mut p.calls[*i]) {
                    c.answered_us = Some(at);
                    c.answer = Some(text(e.line));
                }
            }
            TraceWhat::World { node, change } => {
                let node = node.as_ref().map(ix);
                let line = text(e.line);
                world_change(&mut p, &mut open, node, change, at, line, &ix);
            }
        }
    }
    // Whatever is still open lasts to the end (or to its own end, if earlier).
    let end = p.end_us;
    for ((node, kind, _), o) in std::mem::take(&mut open) {
        let to_us = o.until_us.map_or(end, |u| u.min(end)).max(o.from_us);
        p.spans.push(Span {
            node,
            kind,
            from_us: o.from_us,
            to_us,
            text: o.text,
        });
    }
    p.nodes = names;
    p
}

/// Opens, closes or marks what a change of the world means for the lanes.
fn world_change(
    p: &mut Picture,
    open: &mut BTreeMap<(usize, &'static str, String), Open>,
    node: Option<usize>,
    change: &WorldChange,
    at: u64,
    line: String,
    ix: &impl Fn(&replicator_core::NodeId) -> usize,
) {
    let start = |open: &mut BTreeMap<_, _>, n: usize, kind, tag: String, until| {
        open.entry((n, kind, tag)).or_insert(Open {
            kind,
            from_us: at,
            until_us: until,
            text: line.clone(),
        });
    };
    match (change, node) {
        (WorldChange::Crash, Some(n)) => {
            close(open, &mut p.spans, at, |(l, k, _)| {
                *l == n && *k == "paused"
            });
            start(open, n, "down", String::new(), None);
        }
        (WorldChange::Restart, Some(n)) => {
            close(open, &mut p.spans, at, |(l, k, _)| *l == n && *k == "down")
        }
        (WorldChange::Goodbye, Some(n)) => start(open, n, "departed", String::new(), None),
        (WorldChange::Pause { until }, Some(n)) => {
            close(open, &mut p.spans, at, |(l, k, _)| {
                *l == n && *k == "paused"
            });
            start(open, n, "paused", String::new(), Some(until.as_micros()));
        }
        (
            WorldChange::Partition {
                id, members, until, ..
            },
            _,
        ) => {
            for m in members {
                start(
                    open,
                    ix(m),
                    "partitioned",
                    id.to_string(),
                    Some(until.as_micros()),
                );
            }
        }
        (WorldChange::Heal { id }, _) => {
            let tag = id.to_string();
            close(open, &mut p.spans, at, |(_, k, t)| {
                *k == "partitioned" && *t == tag
            });
        }
        (WorldChange::Clog { to, until }, Some(n)) => {
            let tag = to.as_str().to_string();
            start(open, n, "clogged", tag, Some(until.as_micros()));
        }
        (WorldChange::Calm, _) => {
            // Every partition, pause and clog ends; crashed nodes restart (their own lines).
            close(open, &mut p.spans, at, |(_, k, _)| {
                matches!(*k, "paused" | "partitioned" | "clogged")
            });
            p.marks.push(Mark {
                node,
                kind: "calm",
                at_us: at,
                text: line,
            });
            return;
        }
        _ => {}
    }
    let kind = match change {
        WorldChange::Crash => "crash",
        WorldChange::Restart => "restart",
        WorldChange::Join => "join",
        WorldChange::Leave => "leave",
        WorldChange::Goodbye => "goodbye",
        WorldChange::Slow => "slow",
        WorldChange::Note => "note",
        // Drawn as spans, not marks.
        WorldChange::Pause { .. }
        | WorldChange::Partition { .. }
        | WorldChange::Heal { .. }
        | WorldChange::Clog { .. }
        | WorldChange::Calm => return,
    };
    p.marks.push(Mark {
        node,
        kind,
        at_us: at,
        text: line,
    });
}

type OpenKey = (usize, &'static str, String);

/// Ends, at `at`, every open span `which` picks.
fn close(
    open: &mut BTreeMap<OpenKey, Open>,
    spans: &mut Vec<Span>,
    at: u64,
    which: impl Fn(&OpenKey) -> bool,
) {
    let keys: Vec<OpenKey> = open.keys().filter(|k| which(k)).cloned().collect();
    for k in keys {
        if let Some(o) = open.remove(&k) {
            let to_us = o.until_us.map_or(at, |u| u.min(at)).max(o.from_us);
            spans.push(Span {
                node: k.0,
                kind: o.kind,
                from_us: o.from_us,
                to_us,
                text: o.text,
            });
        }
    }
}

/// Ends the spans whose own end came before `at`.
fn close_due(open: &mut BTreeMap<OpenKey, Open>, spans: &mut Vec<Span>, at: u64) {
    let due: Vec<OpenKey> = open
        .iter()
        .filter(|(_, o)| o.until_us.is_some_and(|u| u <= at))
        .map(|(k, _)| k.clone())
        .collect();
    for k in due {
        if let Some(o) = open.remove(&k) {
            spans.push(Span {
                node: k.0,
                kind: o.kind,
                from_us: o.from_us,
                to_us: o.until_us.unwrap_or(at),
                text: o.text,
            });
        }
    }
}

/// Every node an event names.
fn each_node(what: &TraceWhat, mut f: impl FnMut(&str)) {
    match what {
        TraceWhat::Sent { from, to, .. } | TraceWhat::Lost { from, to, .. } => {
            f(from.as_str());
            f(to.as_str());
        }
        TraceWhat::Call { node, .. } | TraceWhat::Reply { node, .. } => f(node.as_str()),
        TraceWhat::World { node, change } => {
            if let Some(n) = node {
                f(n.as_str());
            }
            match change {
                WorldChange::Partition { members, .. } => {
                    members.iter().for_each(|m| f(m.as_str()))
                }
                WorldChange::Clog { to, .. } => f(to.as_str()),
                _ => {}
            }
        }
        TraceWhat::Received { .. } | TraceWhat::Dropped { .. } => {}
    }
}

/// Lanes sort by cluster, then node number (`n01.10` after `n01.9`); other names after, by name.
fn lane_order(name: &str) -> (u64, u64, String) {
    let parsed = name.strip_prefix('n').and_then(|rest| {
        let (c, k) = rest.split_once('.')?;
        Some((c.parse().ok()?, k.parse().ok()?))
    });
    let (c, k) = parsed.unwrap_or((u64::MAX, u64::MAX));
    (c, k, name.to_string())
}

/// The cluster a lane belongs to, as its name shows it (`n01.2`: `01`).
fn cluster_of(name: &str) -> &str {
    name.strip_prefix('n')
        .and_then(|rest| rest.split_once('.'))
        .map_or("?", |(c, _)| c)
}

impl Picture {
    /// The page's data, as JSON safe to embed in a `<script>` element.
    pub fn to_json(&self, title: &str, violation: Option<&Violation>) -> String {
        let mut j = Json::default();
        j.open_object();
        j.name("title");
        j.string(title);
        j.name("end");
        j.number(self.end_us);
        j.name("nodes");
        j.open_array();
        for n in &self.nodes {
            j.open_object();
            j.name("name");
            j.string(n);
            j.name("cluster");
            j.string(cluster_of(n));
            j.close_object();
        }
        j.close_array();
        j.name("arrows");
        j.open_array();
        for a in &self.arrows {
            j.open_object();
            j.name("from");
            j.number(a.from as u64);
            j.name("to");
            j.number(a.to as u64);
            j.name("t0");
            j.number(a.sent_us);
            j.name("t1");
            j.number(a.end_us);
            j.name("fate");
            j.string(match a.fate {
                Fate::Delivered => "delivered",
                Fate::Dropped(_) => "dropped",
                Fate::Lost => "lost",
                Fate::InFlight => "inflight",
            });
            j.name("why");
            j.opt_string(match a.fate {
                Fate::Dropped(why) => Some(why),
                Fate::Lost => Some("lost in transit"),
                _ => None,
            });
            j.name("dup");
            j.boolean(a.dup);
            j.name("kind");
            j.string(a.kind);
            j.name("key");
            j.opt_string(a.key.as_deref());
            j.name("text");
            j.string(&a.text);
            j.name("endText");
            j.opt_string(a.end_text.as_deref());
            j.close_object();
        }
        j.close_array();
        j.name("spans");
        j.open_array();
        for s in &self.spans {
            j.open_object();
            j.name("node");
            j.number(s.node as u64);
            j.name("kind");
            j.string(s.kind);
            j.name("t0");
            j.number(s.from_us);
            j.name("t1");
            j.number(s.to_us);
            j.name("text");
            j.string(&s.text);
            j.close_object();
        }
        j.close_array();
        j.name("calls");
        j.open_array();
        for c in &self.calls {
            j.open_object();
            j.name("node");
            j.number(c.node as u64);
            j.name("call");
            j.number(c.call);
            j.name("key");
            j.opt_string(c.key.as_deref());
            j.name("t0");
            j.number(c.at_us);
            j.name("t1");
            j.opt_number(c.answered_us);
            j.name("text");
            j.string(&c.text);
            j.name("answer");
            j.opt_string(c.answer.as_deref());
            j.name("lost");
            j.boolean(c.lost);
            j.close_object();
        }
        j.close_array();
        j.name("marks");
        j.open_array();
        for m in &self.marks {
            j.open_object();
            j.name("node");
            j.opt_number(m.node.map(|n| n as u64));
            j.name("kind");
            j.string(m.kind);
            j.name("t");
            j.number(m.at_us);
            j.name("text");
            j.string(&m.text);
            j.close_object();
        }
        j.close_array();
        j.name("violation");
        match violation {
            Some(v) => {
                j.open_object();
                j.name("t");
                j.number(v.at_us);
                j.name("invariant");
                j.string(&v.invariant);
                j.name("detail");
                j.string(&v.detail);
                j.name("key");
                j.opt_string(v.key.as_deref());
                j.close_object();
            }
            None => j.opt_string(None),
        }
        j.close_object();
        j.out
    }
}
