//! Linearizability checker for a client history against one write-once register per key
//! (PROTOCOL.md, "Invariants the simulator checks", item 4).
//!
//! The checker is independent of the core crate: the simulator translates its client calls into
//! [`Op`]s and calls [`check`] (first violation) or [`check_all`] (one violation per bad key).
//!
//! # Model
//! Every key is checked on its own, against this sequential specification:
//! - the register starts empty;
//! - `PUT(v)` on an empty register makes it hold `v` and answers [`PutResult::Stored`];
//! - `PUT(v)` on a register holding `w` changes nothing and answers `Exists { value: w }`;
//! - `GET` answers [`GetResult::Unknown`] while empty and `Value(w)` once it holds `w`.
//!
//! An op takes effect at a single point within `[invoked, returned]` (`returned == None` means
//! it never returned: the interval is open to +infinity). Ops whose endpoints are equal may be
//! ordered either way. Answers that carry no information about the register are not
//! constrained: `Busy` and `NoEffect` PUTs had no effect, a GET answering `Unavailable` told the
//! client nothing. `Unavailable` and `Pending` PUTs are indeterminate: each may take effect at
//! any one point at or after its invocation (even after the client got its answer, since the
//! proposal may still commit later), or never.
//!
//! # Algorithm
//! A write-once register changes state exactly once, if at all, so a history is linearizable
//! iff some *winning write* `W` and a point `t_W` exist such that:
//! - `W` is the PUT that answered `Stored` (two `Stored` answers are a violation), or, if none
//!   did, an indeterminate PUT of the value that the ops were told about;
//! - every op that saw the register full (`GET Value`, `PUT Exists`) was told `W`'s value and can
//!   be placed at or after `t_W`: `t_W <= returned`;
//! - every op that saw it empty (`GET Unknown`) can be placed at or before `t_W`:
//!   `invoked <= t_W`;
//! - `t_W` lies in `W`'s own interval (`[invoked, returned]`, or `[invoked, +inf)` when `W` is
//!   indeterminate).
//!
//! Readers do not constrain each other except through `t_W`, so the conditions reduce to
//! `max(W.invoked, max invoked of empty-seers) <= min(W's end, min returned of value-seers)`.
//! Among indeterminate candidates the one invoked first is always the best choice. The check is
//! a linear pass per key (plus a hash map to group keys), so 100k-op histories take
//! milliseconds.
//!
//! ## Where each part lives
//!
//! | file (in `linearizability/`) | what it does |
//! |---|---|
//! | `history.rs` | the model: an [`Op`] of the history and its answer ([`PutResult`], [`GetResult`]) |
//! | `search.rs` | the check: [`check`], [`check_all`], the passes over one key's PUTs and observations, the winning write and its point |
//! | `report.rs` | what a failure says: [`Violation`], the ops and values shown for people |
//! | `tests.rs` | hand-made good and bad histories, large histories |
//! | `tests/cross_check.rs` | the check against a brute-force search over random histories |

mod history;
mod report;
mod search;
#[cfg(test)]
mod tests;

pub use history::{GetResult, Op, OpKind, PutResult, Time};
pub use report::Violation;
pub use search::{check, check_all};
