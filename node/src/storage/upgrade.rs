//! Upgrading a format 5 database in place (see `FORMAT_VERSION`): its records move from `keys`
//! (by the key's text) into `records` (by the core's order of keys), the open ones are listed
//! in `open_records` and the decisions numbered in `decision_order`.

use super::*;

/// Moves format 5's records into format 6's tables, in `txn` (the caller records the new
/// format in the same transaction). Returns how many records moved. A record that fails its
/// checksum moves as it is and is listed as open: a restart reads every open record, finds it
/// damaged, and the node abstains for that key, as format 5 did.
pub(super) fn from_format_5(txn: &redb::WriteTransaction) -> Result<u64> {
    let old = txn.open_table(KEYS_FORMAT_5)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut open_records = txn.open_table(OPEN_RECORDS)?;
    let mut decision_order = txn.open_table(DECISION_ORDER)?;
    let mut meta = txn.open_table(META)?;
    let mut moved = 0;
    let mut last_decision = 0;
    for entry in old.iter()? {
        let (text, sealed) = entry?;
        let (text, sealed) = (text.value(), sealed.value());
        let at = order_key(text);
        records.insert(at.as_slice(), sealed)?;
        let state = open_record(text, sealed).and_then(|b| decode_record::<DurableKey>(b).ok());
        match state {
            Some(DurableKey::Stored { seq, .. }) => {
                decision_order.insert(seq, at.as_slice())?;
                last_decision = last_decision.max(seq);
            }
            Some(DurableKey::Open { .. }) | None => {
                open_records.insert(at.as_slice(), ())?;
            }
        }
        moved += 1;
    }
    drop(old);
    txn.delete_table(KEYS_FORMAT_5)?;
    apply::keep_max(&mut meta, META_LAST_DECISION, last_decision)?;
    Ok(moved)
}
