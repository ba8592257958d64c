//! The core's reads of decisions (`DecidedKeys`): from the database, and from the decisions the
//! write-ahead log holds that the database does not hold yet (`logged`).
//!
//! The storage thread writes, the driver's thread reads. A group commit adds the decisions it
//! logged to `logged` before it reports them durable, and a checkpoint clears `logged` only
//! after the database committed them; a read looks in `logged` first, then in the database. So
//! a decision the core was told is durable is always found: missing from `logged`, it was
//! checkpointed before the read looked, and the database read that follows sees it.
//!
//! While the storage reopens its database after a failed write, reads fail (`Unreadable`: the
//! node abstains for decided keys it has to read, and its GETs ask its cluster).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::{Mutex, OnceLock, RwLock};

use replicator_core::{DecidedKeys, Decision, DurableKey, Key, PageLimit, Proposal, Unreadable};

use super::*;
use crate::metrics::DamageCounters;

/// What the driver's reads share with the storage thread.
pub(super) struct ReadSide {
    db: RwLock<Option<Arc<Database>>>,
    logged: RwLock<Logged>,
    path: PathBuf,
    /// The simulated disk under the database, if it is one: its read faults apply here.
    disk: Option<SimDisk>,
    damage: Mutex<DamageSeen>,
    /// Set when the driver takes its reader ([`Storage::decision_reader`]).
    counters: OnceLock<Arc<DamageCounters>>,
}

type RecordsTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Decisions in the write-ahead log that the database does not hold yet.
#[derive(Default)]
struct Logged {
    by_order: BTreeMap<Vec<u8>, (u64, Proposal)>,
    by_seq: BTreeMap<u64, Vec<u8>>,
}

/// Damaged decided records found by reads, each logged and counted once (up to a bound).
#[derive(Default)]
struct DamageSeen {
    keys: HashSet<Vec<u8>>,
}

/// How many damaged keys are remembered to be reported once each; past it each find counts.
const DAMAGE_REMEMBERED_MAX: usize = 10_000;

impl ReadSide {
    pub(super) fn new(path: PathBuf, disk: Option<SimDisk>) -> ReadSide {
        ReadSide {
            db: RwLock::new(None),
            logged: RwLock::new(Logged::default()),
            path,
            disk,
            damage: Mutex::new(DamageSeen::default()),
            counters: OnceLock::new(),
        }
    }

    /// The database reads go to, and the log's writes it does not hold yet.
    pub(super) fn attach(&self, db: Arc<Database>, unapplied: &[WriteOp]) {
        let mut logged = Logged::default();
        logged.add(unapplied);
        *self.logged.write().unwrap_or_else(|p| p.into_inner()) = logged;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
    }

    /// Lets go of the database (it is being reopened after a failed write): reads fail until
    /// it is attached again.
    pub(super) fn detach(&self) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A group was logged (before it is reported durable).
    pub(super) fn logged(&self, jobs: &[PersistJob]) {
        let mut logged = self.logged.write().unwrap_or_else(|p| p.into_inner());
        for job in jobs {
            logged.add(&job.ops);
        }
    }

    /// The database committed what a checkpoint took: of the log's writes, only
    /// `still_logged` (appended since it started) are not in the database.
    pub(super) fn checkpointed(&self, still_logged: &[WriteOp]) {
        let mut logged = Logged::default();
        logged.add(still_logged);
        *self.logged.write().unwrap_or_else(|p| p.into_inner()) = logged;
    }

    fn database(&self) -> Result<Arc<Database>, Unreadable> {
        if self.disk.as_ref().is_some_and(SimDisk::reads_failing) {
            return Err(self.failed("the simulated disk fails reads"));
        }
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        db.clone().ok_or(Unreadable)
    }

    fn logged_read(&self) -> std::sync::RwLockReadGuard<'_, Logged> {
        self.logged.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The record at `at` ([`order_key`]) in the database: `Ok(None)` if there is none,
    /// `Err` if it cannot be read or is damaged (reported once).
    fn record(&self, table: &RecordsTable, at: &[u8]) -> Result<Option<DurableKey>, Unreadable> {
        let sealed = table.get(at).map_err(|e| self.failed(e))?;
        sealed.map(|s| self.decode(at, s.value())).transpose()
    }

    /// The record sealed in `sealed`, stored at `at`; `Err` if it is damaged (reported once).
    fn decode(&self, at: &[u8], sealed: &[u8]) -> Result<DurableKey, Unreadable> {
        let text = key_text(at).ok_or_else(|| self.damaged(at))?;
        open_record(text.as_bytes(), sealed)
            .and_then(|bytes| decode_record::<DurableKey>(bytes).ok())
            .ok_or_else(|| self.damaged(at))
    }

    fn records_table(&self) -> Result<RecordsTable, Unreadable> {
        let db = self.database()?;
        let txn = db.begin_read().map_err(|e| self.failed(e))?;
        txn.open_table(RECORDS).map_err(|e| self.failed(e))
    }

    fn damaged(&self, at: &[u8]) -> Unreadable {
        let mut seen = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        let first = seen.keys.len() < DAMAGE_REMEMBERED_MAX && seen.keys.insert(at.to_vec());
        if let Some(c) = self.counters.get()
            && (first || seen.keys.len() >= DAMAGE_REMEMBERED_MAX)
        {
            c.found_by_read();
        }
        if first {
            error!(
                key = %String::from_utf8_lossy(at.get(8..).unwrap_or(at)),
                db = %self.path.display(),
                "a decided key's record failed its checksum: this node abstains for it (no promise, no accept, no answer to a read) until it learns the decision again"
            );
        }
        Unreadable
    }

    fn failed(&self, e: impl std::fmt::Display) -> Unreadable {
        if let Some(c) = self.counters.get() {
            c.read_failed();
        }
        warn!(error = %e, db = %self.path.display(), "a read of a decision failed: this node abstains for that key for now");
        Unreadable
    }
}

impl Logged {
    fn add(&mut self, ops: &[WriteOp]) {
        for op in ops {
            if let WriteOp::PutKey {
                key,
                state: DurableKey::Stored { chosen, seq },
            } = op
            {
                let at = order_key(key.as_str());
                self.by_seq.insert(*seq, at.clone());
                self.by_order.insert(at, (*seq, chosen.clone()));
            }
        }
    }
}

impl Storage {
    /// The core's reads of this storage's decisions (see the module's doc); what they find
    /// damaged or fail to read is counted in `damage`.
    pub fn decision_reader(&self, damage: Arc<DamageCounters>) -> DecisionReader {
        let _ = self.reads.counters.set(damage);
        DecisionReader {
            side: self.reads.clone(),
        }
    }
}

/// The driver's handle on the decisions of its storage, for the core.
pub struct DecisionReader {
    pub(super) side: Arc<ReadSide>,
}

impl DecisionReader {
    /// Every decision the storage shows, in the core's order of keys, page by page: for checks
    /// and tests (the simulators' disk checks, node_sim's key counts), never on a node's
    /// serving path, since it reads every key.
    pub fn every_decision(&self, mut visit: impl FnMut(Decision)) -> Result<(), Unreadable> {
        let page = PageLimit {
            keys_max: 1024,
            bytes_max: 16 << 20,
        };
        let mut after: Option<Key> = None;
        loop {
            let (decisions, done) = self.decisions_from(after.as_ref(), page)?;
            let last = decisions.last().map(|d| d.key.clone());
            decisions.into_iter().for_each(&mut visit);
            match (done, last) {
                (false, Some(last)) => after = Some(last),
                _ => return Ok(()),
            }
        }
    }
}

fn decision(at: &[u8], seq: u64, chosen: Proposal) -> Option<Decision> {
    Some(Decision {
        seq,
        key: Key::new(key_text(at)?),
        chosen,
    })
}

impl DecidedKeys for DecisionReader {
    fn decision(&self, key: &Key) -> Result<Option<(u64, Proposal)>, Unreadable> {
        let side = &self.side;
        let at = order_key(key.as_str());
        if let Some((seq, chosen)) = side.logged_read().by_order.get(&at) {
            return Ok(Some((*seq, chosen.clone())));
        }
        let table = side.records_table()?;
        Ok(match side.record(&table, &at)? {
            Some(DurableKey::Stored { chosen, seq }) => Some((seq, chosen)),
            Some(DurableKey::Open { .. }) | None => None,
        })
    }

    fn decisions_after(&self, after: u64, page: PageLimit) -> Result<Vec<Decision>, Unreadable> {
        let side = &self.side;
        // At most a page from the log; `log_cut`: the last number taken if the log holds more
        // (nothing past it may be answered, or the asker would skip the log's rest).
        let (from_log, log_cut): (Vec<Decision>, Option<u64>) = {
            let logged = side.logged_read();
            let mut range = logged.by_seq.range(after.saturating_add(1)..);
            let taken: Vec<(u64, &Vec<u8>)> = range
                .by_ref()
                .take(page.keys_max)
                .map(|(seq, at)| (*seq, at))
                .collect();
            let log_cut = range.next().and(taken.last().map(|(seq, _)| *seq));
            let decisions = taken
                .into_iter()
                .filter_map(|(seq, at)| {
                    let (_, chosen) = logged.by_order.get(at)?;
                    decision(at, seq, chosen.clone())
                })
                .collect();
            (decisions, log_cut)
        };
        let db = side.database()?;
        let txn = db.begin_read().map_err(|e| side.failed(e))?;
        let order = txn.open_table(DECISION_ORDER).map_err(|e| side.failed(e))?;
        let records = txn.open_table(RECORDS).map_err(|e| side.failed(e))?;
        let mut merged: BTreeMap<u64, Decision> = BTreeMap::new();
        let mut cut_at = None;
        let mut bytes = 0;
        for entry in order
            .range(after.saturating_add(1)..)
            .map_err(|e| side.failed(e))?
        {
            if page.full(merged.len(), bytes) {
                cut_at = merged.keys().next_back().copied();
                break;
            }
            let (seq, at) = entry.map_err(|e| side.failed(e))?;
            let (seq, at) = (seq.value(), at.value().to_vec());
            if log_cut.is_some_and(|cut| seq > cut) {
                break;
            }
            // A damaged record is skipped: the member learns that decision elsewhere. A read
            // that fails fails the page (skipping it would lose the decision for the asker).
            let Some(sealed) = records.get(&at[..]).map_err(|e| side.failed(e))? else {
                continue;
            };
            let Ok(DurableKey::Stored { chosen, seq: now }) = side.decode(&at, sealed.value())
            else {
                continue;
            };
            if now != seq {
                continue; // decided again under a later number after damage
            }
            bytes += at.len().saturating_sub(8) + chosen.value.len();
            if let Some(d) = decision(&at, seq, chosen) {
                merged.insert(seq, d);
            }
        }
        for d in from_log {
            if cut_at.is_none_or(|cut| d.seq <= cut) {
                merged.insert(d.seq, d);
            }
        }
        Ok(take_page(merged.into_values(), page).0)
    }

    fn decisions_from(
        &self,
        after: Option<&Key>,
        page: PageLimit,
    ) -> Result<(Vec<Decision>, bool), Unreadable> {
        let side = &self.side;
        let after_at = after.map(|k| order_key(k.as_str()));
        let from = after_at
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        // At most a page from the log; `log_cut`: the last key taken if the log holds more
        // (nothing past it may be answered, and the page is not the last).
        let (from_log, log_cut) = {
            let logged = side.logged_read();
            let mut range = logged.by_order.range::<[u8], _>((from, Bound::Unbounded));
            let taken: Vec<(Vec<u8>, Decision)> = range
                .by_ref()
                .take(page.keys_max)
                .filter_map(|(at, (seq, chosen))| {
                    Some((at.clone(), decision(at, *seq, chosen.clone())?))
                })
                .collect();
            let log_cut = range.next().and(taken.last().map(|(at, _)| at.clone()));
            (taken, log_cut)
        };
        let table = side.records_table()?;
        let mut merged: BTreeMap<Vec<u8>, Decision> = BTreeMap::new();
        let mut cut_at: Option<Vec<u8>> = None;
        let mut bytes = 0;
        for entry in table
            .range::<&[u8]>((from, Bound::Unbounded))
            .map_err(|e| side.failed(e))?
        {
            if page.full(merged.len(), bytes) {
                cut_at = merged.keys().next_back().cloned();
                break;
            }
            let (at, sealed) = entry.map_err(|e| side.failed(e))?;
            let at = at.value().to_vec();
            if log_cut.as_ref().is_some_and(|cut| at > *cut) {
                break;
            }
            // Open records are the core's (it holds every one); damaged ones have nothing to
            // give (as at a restart).
            let Ok(DurableKey::Stored { chosen, seq }) = side.decode(&at, sealed.value()) else {
                continue;
            };
            bytes += at.len().saturating_sub(8) + chosen.value.len();
            if let Some(d) = decision(&at, seq, chosen) {
                merged.insert(at, d);
            }
        }
        let db_done = cut_at.is_none();
        for (at, d) in from_log {
            if cut_at.as_ref().is_none_or(|cut| at <= *cut) {
                merged.insert(at, d);
            }
        }
        let (entries, all) = take_page(merged.into_values(), page);
        Ok((entries, db_done && log_cut.is_none() && all))
    }
}

/// The first page of `decisions` (in their order), and whether it took all of them.
fn take_page(decisions: impl Iterator<Item = Decision>, page: PageLimit) -> (Vec<Decision>, bool) {
    let mut out = Vec::new();
    let mut bytes = 0;
    for d in decisions {
        if page.full(out.len(), bytes) {
            return (out, false);
        }
        bytes += PageLimit::bytes_of(&d.key, &d.chosen);
        out.push(d);
    }
    (out, true)
}
