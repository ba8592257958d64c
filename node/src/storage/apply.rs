//! What a transaction of logged writes does to the database: each write op applied to its
//! table, and the writes a later one overwrites left out (a checkpoint's, in line or beside
//! the appends, and a new database's first state).

use super::*;

impl Storage {
    /// Applies a group of writes straight to the database, in one durable transaction (for
    /// setting a database up; a running node's writes go through [`Storage::commit_group`]).
    pub fn apply(&self, jobs: &[PersistJob]) -> Result<()> {
        let ops: Vec<&WriteOp> = jobs.iter().flat_map(|j| &j.ops).collect();
        self.apply_ops(ops, None)
    }

    /// Applies `ops` in one durable transaction, which records checkpoint number `checkpoint`
    /// if it is one.
    pub(super) fn apply_ops<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a WriteOp>,
        checkpoint: Option<u64>,
    ) -> Result<()> {
        apply_ops_to(&self.db, ops, checkpoint)
    }
}

/// Applies `ops` to `db` in one durable transaction, which records checkpoint number
/// `checkpoint` if it is one.
pub(super) fn apply_ops_to<'a>(
    db: &Database,
    ops: impl IntoIterator<Item = &'a WriteOp>,
    checkpoint: Option<u64>,
) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut records = txn.open_table(RECORDS)?;
        let mut open_records = txn.open_table(OPEN_RECORDS)?;
        let mut decision_order = txn.open_table(DECISION_ORDER)?;
        let mut requests = txn.open_table(REQUESTS)?;
        let mut departed = txn.open_table(DEPARTED)?;
        let mut members = txn.open_table(MEMBERS)?;
        let mut caught_up = txn.open_table(CAUGHT_UP)?;
        let mut meta = txn.open_table(META)?;
        let mut meta_records = txn.open_table(META_RECORDS)?;
        let mut last_decision = 0;
        if let Some(number) = checkpoint {
            meta.insert(META_CHECKPOINTS, number)?;
        }
        for op in ops {
            match op {
                WriteOp::PutKey { key, state } => {
                    let text = key.as_str().as_bytes();
                    let at = order_key(key.as_str());
                    let at = at.as_slice();
                    records.insert(at, seal(text, &encode_record(state)?).as_slice())?;
                    match state {
                        DurableKey::Stored { seq, .. } => {
                            open_records.remove(at)?;
                            decision_order.insert(*seq, at)?;
                            last_decision = last_decision.max(*seq);
                        }
                        DurableKey::Open { .. } => {
                            open_records.insert(at, ())?;
                        }
                    }
                }
                WriteOp::RemoveKey { key } => {
                    let at = order_key(key.as_str());
                    records.remove(at.as_slice())?;
                    open_records.remove(at.as_slice())?;
                }
                WriteOp::BallotFloor(floor) => {
                    let k = META_FLOOR.as_bytes();
                    let old = meta_records
                        .get(META_FLOOR)?
                        .and_then(|v| open_record(k, v.value()).map(<[u8]>::to_vec))
                        .and_then(|b| decode_record::<replicator_core::Ballot>(&b).ok());
                    if old.is_none_or(|old| *floor > old) {
                        meta_records
                            .insert(META_FLOOR, seal(k, &encode_record(floor)?).as_slice())?;
                    }
                }
                WriteOp::CounterCeiling(c) => keep_max(&mut meta, META_COUNTER_CEILING, *c)?,
                WriteOp::RoundCeiling(c) => keep_max(&mut meta, META_ROUND_CEILING, *c)?,
                WriteOp::CaughtUp { peer, seq } => {
                    let old = caught_up
                        .get(peer.as_str())?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    caught_up.insert(peer.as_str(), old.max(*seq))?;
                }
                WriteOp::PutRequest { id, record } => {
                    let k = id.as_str().as_bytes();
                    requests.insert(k, seal(k, &encode_record(record)?).as_slice())?;
                }
                WriteOp::RemoveRequest { id } => {
                    requests.remove(id.as_str().as_bytes())?;
                }
                WriteOp::Ready(r) => {
                    meta.insert(META_READY, u64::from(*r))?;
                }
                WriteOp::AddMember { cluster, node } => {
                    // As `Recovered::apply`: a departed node is never a member again.
                    if departed.get(node.as_str().as_bytes())?.is_none() {
                        members.insert(node.as_str(), cluster.as_str())?;
                    }
                }
                WriteOp::Departed(n) => {
                    departed.insert(n.as_str().as_bytes(), ())?;
                    members.remove(n.as_str())?;
                    caught_up.remove(n.as_str())?;
                }
            }
        }
        if last_decision > 0 {
            keep_max(&mut meta, META_LAST_DECISION, last_decision)?;
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    txn.commit()?;
    Ok(())
}

/// `ops` without the writes a later one in `ops` overwrites: of the writes to one key or one
/// request record, only the last matters (each sets or removes its row, and the tables are
/// independent). Under load most keys are written twice between checkpoints (accepted, then
/// stored): the first write is skipped. Every other op is kept, in order (membership writes
/// depend on each other's order; the others keep a maximum).
pub(super) fn superseded_dropped(ops: &[WriteOp]) -> Vec<&WriteOp> {
    use std::collections::HashSet;
    let mut keys = HashSet::new();
    let mut requests = HashSet::new();
    let mut kept: Vec<&WriteOp> = ops
        .iter()
        .rev()
        .filter(|op| match op {
            WriteOp::PutKey { key, .. } | WriteOp::RemoveKey { key } => keys.insert(key),
            WriteOp::PutRequest { id, .. } | WriteOp::RemoveRequest { id } => requests.insert(id),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

/// Raises a counter in the meta table to `value`, never lowering it (ceilings only grow, so a
/// replayed log applies to the same end state).
pub(super) fn keep_max(meta: &mut redb::Table<&str, u64>, name: &str, value: u64) -> Result<()> {
    let old = meta.get(name)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(name, old.max(value))?;
    Ok(())
}
