//! The core's reads of decisions from the storage (`reads.rs`), restarts that load only what
//! is in flight, and the upgrade from format 5.

use replicator_core::{DecidedKeys, DurableKey, Key, PageLimit};

use super::tests::{fill_log, job, net, proposal, sim_disk, stored};
use super::*;
use crate::metrics::DamageCounters;

fn open_record_op(key: &str, round: u64) -> WriteOp {
    WriteOp::PutKey {
        key: Key::new(key),
        state: DurableKey::Open {
            promised: replicator_core::Ballot {
                round,
                node: Some(NodeId::new("n2")),
            },
            accepted: None,
        },
    }
}

const TEN: PageLimit = PageLimit {
    keys_max: 10,
    bytes_max: usize::MAX,
};

/// The numbers of the first ten decisions, in their order.
fn numbers(reader: &DecisionReader) -> Vec<u64> {
    let page = reader.decisions_after(0, TEN).unwrap();
    page.iter().map(|d| d.seq).collect()
}

fn decided(reader: &DecisionReader, key: &str) -> Option<u64> {
    reader.decision(&Key::new(key)).unwrap().map(|(seq, _)| seq)
}

/// A decision can be read as soon as its group is logged (before it is reported durable), and
/// after the checkpoint that moves it into the database.
#[test]
fn a_decision_is_read_from_the_log_then_from_the_database() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let reader = s.decision_reader(Default::default());
    assert_eq!(decided(&reader, "a"), None);
    s.commit_group(&[job(1, vec![stored("a", 1), open_record_op("o", 3)])])
        .unwrap();
    assert_eq!(decided(&reader, "a"), Some(1), "from the log");
    assert_eq!(decided(&reader, "o"), None, "an open record is the core's");
    s.checkpoint().unwrap();
    assert_eq!(decided(&reader, "a"), Some(1), "from the database");
    s.commit_group(&[job(2, vec![stored("b", 2)])]).unwrap();
    assert_eq!(numbers(&reader), [1, 2], "the database's, then the log's");
    let (keys, done) = reader.decisions_from(None, TEN).unwrap();
    assert!(done);
    assert_eq!(keys.len(), 2);
}

/// While a checkpoint runs beside the appends, and after it, every decision is read: the ones
/// it took from the database once it is done, the ones logged meanwhile from the log.
#[test]
fn decisions_are_read_while_a_checkpoint_runs_and_after() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let reader = s.decision_reader(Default::default());
    let mut write = 0;
    let taken = fill_log(&mut s, &disk, "k", &mut write);
    let first = taken.first().unwrap().clone();
    write += 1;
    s.commit_group(&[job(write, vec![stored("during", write)])])
        .unwrap();
    assert!(s.checkpointing.is_some(), "a checkpoint runs");
    assert_eq!(decided(&reader, &first), Some(1));
    assert_eq!(decided(&reader, "during"), Some(write));
    s.finish_checkpoint(true).unwrap();
    assert_eq!(decided(&reader, &first), Some(1), "from the database");
    assert_eq!(
        decided(&reader, "during"),
        Some(write),
        "still from the log"
    );
    let last = reader
        .decisions_after(write - 1, TEN)
        .unwrap()
        .into_iter()
        .map(|d| d.seq)
        .collect::<Vec<_>>();
    assert_eq!(last, [write], "in decision order too");
}

/// A restart loads the open records, the counters and the membership; decisions stay on disk
/// until read.
#[test]
fn a_restart_loads_only_what_is_in_flight() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let mut ops: Vec<WriteOp> = (1..=50).map(|i| stored(&format!("k{i}"), i)).collect();
    ops.push(open_record_op("o", 7));
    s.commit_group(&[job(1, ops)]).unwrap();
    s.checkpoint().unwrap();
    s.commit_group(&[job(2, vec![stored("late", 51)])]).unwrap();
    disk.complete_sync();
    drop(s);
    let mut s = Storage::open_sim(&disk, None).unwrap();
    let rec = s.load().unwrap().recovered;
    let keys: Vec<&str> = rec.keys.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["o"]);
    assert_eq!(rec.last_decision, 51);
    let reader = s.decision_reader(Default::default());
    assert_eq!(decided(&reader, "k7"), Some(7));
    assert_eq!(decided(&reader, "late"), Some(51));
    // Pages of 7, in key order and in decision order, list each decision once.
    let page = PageLimit {
        keys_max: 7,
        bytes_max: usize::MAX,
    };
    let (mut by_key, mut after) = (Vec::new(), None::<Key>);
    loop {
        let (decisions, done) = reader.decisions_from(after.as_ref(), page).unwrap();
        assert!(decisions.len() <= 7);
        after = decisions.last().map(|d| d.key.clone());
        by_key.extend(decisions.into_iter().map(|d| d.key));
        if done {
            break;
        }
    }
    assert!(by_key.is_sorted(), "the core's order of keys");
    assert_eq!(by_key.len(), 51);
    let (mut by_number, mut last) = (Vec::new(), 0);
    while let Some(d) = reader.decisions_after(last, page).unwrap().last().cloned() {
        let page_seqs: Vec<u64> = reader
            .decisions_after(last, page)
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        by_number.extend(page_seqs);
        last = d.seq;
    }
    assert_eq!(by_number, (1..=51).collect::<Vec<u64>>());
}

/// Every decision, paged in key order and in decision order: each page at most ten, each
/// decision once, only the last page saying it is the last.
fn page_through(reader: &DecisionReader) -> (Vec<Key>, Vec<u64>) {
    let (mut by_key, mut after, mut pages) = (Vec::new(), None::<Key>, 0);
    loop {
        let (decisions, done) = reader.decisions_from(after.as_ref(), TEN).unwrap();
        pages += 1;
        assert!(decisions.len() <= 10 && pages <= 10);
        after = decisions.last().map(|d| d.key.clone());
        by_key.extend(decisions.into_iter().map(|d| d.key));
        if done {
            break;
        }
    }
    assert!(by_key.is_sorted());
    let (mut by_number, mut last) = (Vec::new(), 0);
    loop {
        let page = reader.decisions_after(last, TEN).unwrap();
        let Some(d) = page.last() else { break };
        last = d.seq;
        by_number.extend(page.iter().map(|d| d.seq));
    }
    (by_key, by_number)
}

/// More decisions in the log than fit a page (a page of exactly ten from the log is not the
/// last one), alone and with some in the database: the pages list every one.
#[test]
fn pages_cover_a_log_longer_than_a_page() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let reader = s.decision_reader(Default::default());
    let early = (1..=20).map(|i| stored(&format!("d{i}"), i)).collect();
    s.commit_group(&[job(1, early)]).unwrap();
    let (by_key, by_number) = page_through(&reader);
    assert_eq!(by_key.len(), 20, "{by_key:?}");
    assert_eq!(by_number, (1..=20).collect::<Vec<u64>>());
    s.checkpoint().unwrap();
    let late = (21..=45).map(|i| stored(&format!("l{i}"), i)).collect();
    s.commit_group(&[job(2, late)]).unwrap();
    let (by_key, by_number) = page_through(&reader);
    assert_eq!(by_key.len(), 45, "{by_key:?}");
    assert_eq!(by_number, (1..=45).collect::<Vec<u64>>());
}

/// Records sit in the database in the core's order of keys (hash, then text): a join-time
/// copy pages through the database as the core merges it with what it holds.
#[test]
fn records_sit_in_the_cores_order_of_keys() {
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("{}-{i}", "x".repeat(i % 7)))
        .chain(["", "a", "ab", "b", "é"].map(String::from))
        .collect();
    let mut by_core: Vec<Key> = texts.iter().map(Key::new).collect();
    by_core.sort();
    let mut by_bytes: Vec<Vec<u8>> = texts.iter().map(order_key).collect();
    by_bytes.sort();
    let by_bytes: Vec<&str> = by_bytes.iter().map(|b| key_text(b).unwrap()).collect();
    let by_core: Vec<&str> = by_core.iter().map(|k| k.as_str()).collect();
    assert_eq!(by_core, by_bytes);
}

/// A decided record damaged on disk is not read at a restart (the restart does not read
/// decisions): it is found when read, counted once, and the read says so (the node abstains).
#[test]
fn a_damaged_decision_is_found_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
    s.commit_group(&[job(1, vec![stored("a", 1), stored("b", 2)])])
        .unwrap();
    s.checkpoint().unwrap();
    {
        let txn = s.db.begin_write().unwrap();
        let at = order_key("a");
        let mut records = txn.open_table(RECORDS).unwrap();
        let mut sealed = records
            .get(at.as_slice())
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let last = sealed.len() - 1;
        sealed[last] ^= 0x40;
        records.insert(at.as_slice(), sealed.as_slice()).unwrap();
        drop(records);
        txn.commit().unwrap();
    }
    drop(s);
    let mut s = Storage::open(dir.path(), None).unwrap();
    let loaded = s.load().unwrap();
    assert!(loaded.damaged_keys.is_empty(), "not read at the restart");
    let damage = Arc::new(DamageCounters::default());
    let reader = s.decision_reader(damage.clone());
    for _ in 0..3 {
        assert_eq!(
            reader.decision(&Key::new("a")),
            Err(replicator_core::Unreadable)
        );
    }
    assert_eq!(decided(&reader, "b"), Some(2));
    let mut text = String::new();
    damage.render_for_test(&mut text);
    assert!(
        text.contains("replicator_damaged_records_found_total{table=\"keys\"} 1"),
        "{text}"
    );
    // A catch-up page skips it: the member learns that decision elsewhere.
    assert_eq!(numbers(&reader), [2]);
}

/// A format 5 database (records by the key's text in `keys`) is upgraded in place when it is
/// opened: the same records, the open ones loaded, a damaged one abstained for, decisions read.
#[test]
fn a_format_5_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
    {
        // Back to format 5's layout.
        let txn = s.db.begin_write().unwrap();
        txn.delete_table(RECORDS).unwrap();
        txn.delete_table(OPEN_RECORDS).unwrap();
        txn.delete_table(DECISION_ORDER).unwrap();
        let mut keys = txn.open_table(KEYS_FORMAT_5).unwrap();
        let record = |key: &str, state: &DurableKey| {
            seal(
                key.as_bytes(),
                &replicator_core::wire::encode_record(state).unwrap(),
            )
        };
        let a = DurableKey::Stored {
            chosen: proposal(4),
            seq: 4,
        };
        let WriteOp::PutKey { state: o, .. } = open_record_op("o", 2) else {
            unreachable!()
        };
        keys.insert(b"a".as_slice(), record("a", &a).as_slice())
            .unwrap();
        keys.insert(b"o".as_slice(), record("o", &o).as_slice())
            .unwrap();
        keys.insert(b"x".as_slice(), b"\0\0\0\0garbage".as_slice())
            .unwrap();
        drop(keys);
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT, FORMAT_UPGRADABLE)
            .unwrap();
        txn.commit().unwrap();
    }
    drop(s);
    let mut s = Storage::open(dir.path(), None).unwrap();
    let loaded = s.load().unwrap();
    let keys: Vec<&str> = loaded.recovered.keys.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["o"]);
    assert_eq!(loaded.damaged_keys, ["x"]);
    assert_eq!(loaded.recovered.last_decision, 4);
    let reader = s.decision_reader(Default::default());
    assert_eq!(decided(&reader, "a"), Some(4));
    let txn = s.db.begin_read().unwrap();
    assert!(
        txn.open_table(KEYS_FORMAT_5).is_err(),
        "the old table is gone"
    );
    let format = txn.open_table(META).unwrap().get(META_FORMAT).unwrap();
    assert_eq!(format.map(|v| v.value()), Some(FORMAT_VERSION));
}

/// A format 6 database with a log that has the older header (generation only) and writes in
/// it, as a node of the previous release leaves them when it is killed: opened, it is format 7,
/// the log's writes are applied, and the log now has the header that names where its records
/// start.
#[test]
fn a_format_6_database_and_its_log_are_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
    s.commit_group(&[job(1, vec![stored("a", 4), open_record_op("o", 2)])])
        .unwrap();
    {
        let txn = s.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT, 6)
            .unwrap();
        txn.commit().unwrap();
    }
    drop(s);
    // The records with the older header in front: magic, generation 0, checksum.
    let log = log_path(&db_path(dir.path()));
    let bytes = std::fs::read(&log).unwrap();
    let start = if bytes.starts_with(b"RPLS") {
        u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize
    } else {
        0
    };
    // The records end where a zero length starts the zeros the file was extended with.
    let mut end = start;
    while let Some(len) = bytes.get(end..end + 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        end += 8 + len;
    }
    let records = &bytes[start..end];
    let mut older = b"RPLG".to_vec();
    older.extend_from_slice(&0u64.to_le_bytes());
    let sum = crate::crc::crc32(&[&older]);
    older.extend_from_slice(&sum.to_le_bytes());
    older.extend_from_slice(records);
    std::fs::write(&log, &older).unwrap();

    let mut s = Storage::open(dir.path(), None).unwrap();
    let loaded = s.load().unwrap();
    let keys: Vec<&str> = loaded.recovered.keys.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["o"]);
    let reader = s.decision_reader(Default::default());
    assert_eq!(decided(&reader, "a"), Some(4));
    let txn = s.db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get(META_FORMAT).unwrap();
    assert_eq!(format.map(|v| v.value()), Some(FORMAT_VERSION));
    assert_eq!(&std::fs::read(&log).unwrap()[..4], b"RPLS");
}
