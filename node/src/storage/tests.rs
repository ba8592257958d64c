//! The storage against a simulated disk: crashes, checkpoints, damaged files, group commits.

use super::apply::*;
use super::checkpoint::*;
use super::commit_loop::*;
use super::open::*;
use super::*;
use crate::wal::LOG_FILE_BYTES_MAX;
use replicator_core::{
    Ballot, DurableKey, Key, Proposal, ProposalId, RequestId, RequestOutcome, RequestRecord, Value,
};

pub(super) fn net() -> NetworkId {
    NetworkId::new("0123456789abcdef0123456789abcdef")
}

pub(super) fn proposal(counter: u64) -> Proposal {
    Proposal {
        p: ProposalId {
            coordinator: NodeId::new("n1"),
            counter,
        },
        request: None,
        value: Value::from("v"),
    }
}

fn ballot(round: u64, node: &str) -> Ballot {
    Ballot {
        round,
        node: Some(NodeId::new(node)),
    }
}

fn request(seq: u64, outcome: Option<RequestOutcome>) -> WriteOp {
    WriteOp::PutRequest {
        id: RequestId::new(format!("r{seq}")),
        record: RequestRecord {
            seq,
            key: Key::new("k"),
            value_fingerprint: 42,
            proposal: proposal(seq).p,
            outcome,
        },
    }
}

fn member(cluster: &str, node: &str) -> WriteOp {
    WriteOp::AddMember {
        cluster: ClusterId::new(cluster),
        node: NodeId::new(node),
    }
}

#[test]
fn writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
    let ops = vec![
        WriteOp::PutKey {
            key: Key::new("k"),
            state: DurableKey::Stored {
                chosen: proposal(7),
                seq: 1,
            },
        },
        WriteOp::PutKey {
            key: Key::new("open"),
            state: DurableKey::Open {
                promised: ballot(5, "n3"),
                accepted: Some((ballot(4, "n2"), proposal(8))),
            },
        },
        WriteOp::BallotFloor(ballot(2, "n2")),
        WriteOp::BallotFloor(ballot(1, "n4")),
        WriteOp::RoundCeiling(4096),
        WriteOp::CaughtUp {
            peer: NodeId::new("n2"),
            seq: 5,
        },
        WriteOp::CaughtUp {
            peer: NodeId::new("n2"),
            seq: 3,
        },
        request(1, Some(RequestOutcome::Stored)),
        WriteOp::CounterCeiling(2048),
        member("c1", "n2"),
        member("c2", "n3"),
        member("c2", "n4"),
        WriteOp::Departed(NodeId::new("n3")),
    ];
    let mut expected = Recovered::founder(net());
    expected.apply_all(&ops);
    s.apply(&[PersistJob {
        write: WriteId(1),
        ops,
        urgency: Urgency::Barrier,
    }])
    .unwrap();
    drop(s);
    let mut s = Storage::open(dir.path(), None).unwrap();
    let loaded = whole(&mut s);
    assert_eq!(loaded, expected);
    assert_eq!(loaded.network, net());
    assert!(loaded.ready);
    let mut members: Vec<&str> = loaded.members.keys().map(|n| n.as_str()).collect();
    members.sort();
    assert_eq!(members, ["n2", "n4"], "a departed member is gone");
    assert!(loaded.departed.contains(&NodeId::new("n3")));
    assert_eq!(loaded.floor, ballot(2, "n2"), "the floor only rises");
    assert_eq!(
        loaded.caught_up[&NodeId::new("n2")],
        5,
        "catch-up only advances"
    );
}

pub(super) fn stored(key: &str, counter: u64) -> WriteOp {
    WriteOp::PutKey {
        key: Key::new(key),
        state: DurableKey::Stored {
            chosen: proposal(counter),
            seq: counter,
        },
    }
}

pub(super) fn job(write: u64, ops: Vec<WriteOp>) -> PersistJob {
    PersistJob {
        write: WriteId(write),
        ops,
        urgency: Urgency::Barrier,
    }
}

pub(super) fn sim_disk() -> SimDisk {
    SimDisk::new(std::time::Duration::ZERO..std::time::Duration::ZERO)
}

/// Everything the storage holds as one image (`load_whole`), checked against the decisions
/// read in their order.
fn whole(s: &mut Storage) -> Recovered {
    use replicator_core::{DecidedKeys, PageLimit};
    let image = s.load_whole().unwrap().recovered;
    let reader = s.decision_reader(Default::default());
    // The decisions in their order read the same.
    let by_number: Vec<u64> = reader
        .decisions_after(
            0,
            PageLimit {
                keys_max: usize::MAX,
                bytes_max: usize::MAX,
            },
        )
        .unwrap()
        .iter()
        .map(|d| d.seq)
        .collect();
    assert_eq!(
        by_number,
        image.decision_order.keys().copied().collect::<Vec<_>>()
    );
    image
}

fn keys_after_restart(disk: &SimDisk) -> Vec<String> {
    let mut s = Storage::open_sim(disk, None).unwrap();
    let mut keys: Vec<String> = whole(&mut s)
        .keys
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    keys.sort();
    keys
}

/// A group is durable once its log append is synced, before the database holds it: a
/// crash then keeps it (the log is replayed on open), and a crash before the sync loses
/// it whole.
#[test]
fn a_logged_group_survives_a_crash_and_an_unsynced_one_is_lost() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    s.commit_group(&[job(1, vec![stored("a", 1)]), job(2, vec![stored("b", 2)])])
        .unwrap();
    disk.complete_sync();
    s.commit_group(&[job(3, vec![stored("c", 3)])]).unwrap();
    disk.crash();
    drop(s);
    assert_eq!(keys_after_restart(&disk), ["a", "b"]);
    // The replay was applied and the log emptied durably: a second crash changes nothing.
    disk.crash();
    assert_eq!(keys_after_restart(&disk), ["a", "b"]);
}

/// Commits groups of one stored key (and a filler) until the log holds
/// `CHECKPOINT_LOG_BYTES`; returns the keys, named `{prefix}{n}`.
pub(super) fn fill_log(
    s: &mut Storage,
    disk: &SimDisk,
    prefix: &str,
    write: &mut u64,
) -> Vec<String> {
    let mut keys = Vec::new();
    while s.log.len() < CHECKPOINT_LOG_BYTES {
        *write += 1;
        let key = format!("{prefix}{write:06}");
        let filler = WriteOp::CaughtUp {
            peer: NodeId::new("n".repeat(400)),
            seq: *write,
        };
        s.commit_group(&[job(*write, vec![stored(&key, *write), filler])])
            .unwrap();
        disk.complete_sync();
        keys.push(key);
    }
    keys
}

/// Past `CHECKPOINT_LOG_BYTES` the next group commit starts a checkpoint beside the appends:
/// groups go on being logged while it runs; once it is done the log's header starts after
/// what it took, with the groups logged meanwhile still there; a restart finds everything.
#[test]
fn a_checkpoint_runs_beside_the_appends_then_the_log_starts_after_it() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let mut write = 0;
    let mut expected = fill_log(&mut s, &disk, "k", &mut write);
    let generation = s.log_generation;
    let covers_to = s.log.end();
    write += 1;
    s.commit_group(&[job(write, vec![stored("during-1", write)])])
        .unwrap();
    assert!(
        s.checkpointing.is_some(),
        "the full log started a checkpoint"
    );
    write += 1;
    s.commit_group(&[job(write, vec![stored("during-2", write)])])
        .unwrap();
    disk.complete_sync();
    let logged_during = s.log.end();
    s.finish_checkpoint(true).unwrap();
    assert_eq!(s.log_generation, Some(generation.unwrap_or(0) + 1));
    assert_eq!(
        (s.log.end(), s.log.len()),
        (logged_during, logged_during - covers_to),
        "the log starts after the checkpoint's records and keeps the two groups logged during it"
    );
    assert_eq!(s.unapplied.len(), 2, "only the groups logged during it");
    expected.extend(["during-1".to_string(), "during-2".to_string()]);
    expected.sort();
    drop(s);
    disk.crash();
    assert_eq!(keys_after_restart(&disk), expected);
}

/// A crash after the checkpoint's transaction committed but before the log's header moved
/// replays writes the database holds already (and the ones logged since): the same state.
#[test]
fn a_crash_before_the_header_moves_replays_to_the_same_state() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let mut write = 0;
    let mut expected = fill_log(&mut s, &disk, "k", &mut write);
    // The last of them is removed while the checkpoint that stores it runs.
    write += 1;
    s.commit_group(&[job(write, vec![stored("x", write)])])
        .unwrap();
    write += 1;
    s.commit_group(&[job(
        write,
        vec![WriteOp::RemoveKey {
            key: Key::new(expected.last().unwrap().as_str()),
        }],
    )])
    .unwrap();
    let (_, committed) = s.checkpointing.take().expect("a checkpoint runs").join();
    committed.unwrap();
    disk.complete_sync();
    disk.crash();
    drop(s);
    expected.pop();
    expected.push("x".into());
    expected.sort();
    assert_eq!(keys_after_restart(&disk), expected);
}

/// A checkpoint whose transaction fails (a full disk) takes nothing: its writes go back in
/// front of the ones logged since, in order, and the group commit that found it fails (the
/// storage then reopens, as after any failed write). The log keeps everything.
#[test]
fn a_failed_checkpoint_gives_its_writes_back() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let mut write = 0;
    let mut expected = fill_log(&mut s, &disk, "k", &mut write);
    let before = s.unapplied.clone();
    disk.set_failing(true);
    write += 1;
    assert!(
        s.commit_group(&[job(write, vec![stored("never", write)])])
            .is_err()
    );
    assert!(s.finish_checkpoint(true).is_err());
    assert_eq!(s.unapplied, before, "every write back, in order");
    assert!(s.checkpointing.is_none());
    drop(s);
    disk.set_failing(false);
    disk.crash();
    expected.sort();
    assert_eq!(keys_after_restart(&disk), expected);
}

/// Checkpoints beside the appends only move the header; once the file is
/// `LOG_FILE_BYTES_MAX` long, the next one takes everything in line and empties it.
#[test]
fn a_long_log_file_is_emptied_by_the_next_checkpoint() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let mut write = 0;
    let mut expected = Vec::new();
    let mut longest = 0;
    let emptied = loop {
        expected.extend(fill_log(&mut s, &disk, "k", &mut write));
        s.finish_checkpoint(true).unwrap();
        longest = longest.max(s.log.end());
        // The group that finds the log full starts the next checkpoint (or takes it in line).
        write += 1;
        let key = format!("k{write:06}");
        s.commit_group(&[job(write, vec![stored(&key, write)])])
            .unwrap();
        disk.complete_sync();
        expected.push(key);
        if s.log.end() < longest {
            break s.log.end();
        }
        assert!(longest < 2 * LOG_FILE_BYTES_MAX, "the file keeps growing");
    };
    assert!(longest >= LOG_FILE_BYTES_MAX, "emptied only once long");
    assert!(emptied < 1024, "emptied: {emptied} bytes left");
    assert!(s.checkpointing.is_none(), "taken in line");
    drop(s);
    disk.crash();
    expected.sort();
    assert_eq!(keys_after_restart(&disk), expected);
}

fn file_bytes(file: &crate::simdisk::SimBackend) -> Vec<u8> {
    use redb::StorageBackend;
    let mut bytes = vec![0u8; file.len().unwrap() as usize];
    file.read(0, &mut bytes).unwrap();
    bytes
}

fn put_file_bytes(file: &crate::simdisk::SimBackend, bytes: &[u8]) {
    use redb::StorageBackend;
    file.set_len(0).unwrap();
    file.write(0, bytes).unwrap();
}

/// A database, and the same one after two checkpoints (keys "a", then "b"), with its
/// image from after the first.
fn two_checkpoints() -> (SimDisk, Vec<u8>) {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    s.commit_group(&[job(1, vec![stored("a", 1)])]).unwrap();
    s.checkpoint().unwrap();
    disk.complete_sync();
    let after_first = file_bytes(&disk.backend());
    s.commit_group(&[job(2, vec![stored("b", 2)])]).unwrap();
    s.checkpoint().unwrap();
    disk.complete_sync();
    drop(s);
    assert_eq!(keys_after_restart(&disk), ["a", "b"]);
    (disk, after_first)
}

fn refusal(disk: &SimDisk) -> String {
    match Storage::open_sim(disk, None) {
        Ok(_) => panic!("the storage opened"),
        Err(e) => {
            assert!(
                matches!(e, StorageError::Unusable(_)),
                "not Unusable: {e:#}"
            );
            format!("{e:#}")
        }
    }
}

/// What redb's repair does with a damaged newest commit (it falls back to the previous
/// one, silently), or an operator restoring an old copy: the database lost a checkpoint
/// that the log was emptied after. The node must not start on it.
#[test]
fn a_database_that_lost_its_last_checkpoint_is_refused() {
    let (disk, after_first) = two_checkpoints();
    put_file_bytes(&disk.backend(), &after_first);
    let why = refusal(&disk);
    assert!(why.contains("older than its write-ahead log"), "{why}");
    assert!(why.contains(SIM_PATH), "the database is named: {why}");
}

/// A log deleted (or replaced) after checkpoints: acknowledged writes may be gone.
#[test]
fn a_log_that_does_not_follow_the_database_is_refused() {
    let (disk, _) = two_checkpoints();
    put_file_bytes(&disk.log_backend(), &[]);
    let why = refusal(&disk);
    assert!(why.contains("does not belong to the database"), "{why}");
}

/// The rule itself, case by case: equal, or the database one ahead (a crash between a
/// checkpoint's commit and the log's emptying), is the only good pairing.
#[test]
fn the_database_follows_the_log_or_is_one_ahead() {
    let db = Path::new("/d/replicator.redb");
    for (checkpoints, log, good) in [
        (0, None, true),
        (1, None, true),
        (2, None, false),
        (3, Some(3), true),
        (4, Some(3), true),
        (5, Some(3), false),
        (2, Some(3), false),
        (0, Some(1), false),
    ] {
        assert_eq!(
            check_log_follows_database(checkpoints, log, db).is_ok(),
            good,
            "database {checkpoints} checkpoints, log {log:?}"
        );
    }
}

/// A checkpoint that could not empty the log is taken again under the same number: the
/// database never gets two ahead of its log, however often that happens.
#[test]
fn a_checkpoint_whose_log_was_not_emptied_keeps_its_number() {
    let disk = sim_disk();
    let mut s = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    for write in 1..=3 {
        s.commit_group(&[job(write, vec![stored(&format!("k{write}"), write)])])
            .unwrap();
        // The checkpoint's transaction, without the emptying of the log.
        let number = s.log_generation.unwrap_or(0) + 1;
        s.apply_ops(&s.unapplied, Some(number)).unwrap();
    }
    disk.complete_sync();
    drop(s);
    assert_eq!(keys_after_restart(&disk), ["k1", "k2", "k3"]);
}

/// A checkpoint that skips overwritten writes ends in the state that applying every write
/// in order reaches (compared through what the core recovers from each).
#[test]
fn a_checkpoint_without_overwritten_writes_reaches_the_same_state() {
    let open = |key: &str, c: u64| WriteOp::PutKey {
        key: Key::new(key),
        state: DurableKey::Open {
            promised: ballot(c, "n2"),
            accepted: Some((ballot(c, "n2"), proposal(c))),
        },
    };
    let ops = vec![
        open("a", 1),
        stored("a", 1),
        open("b", 2),
        WriteOp::RemoveKey { key: Key::new("b") },
        request(2, None),
        open("c", 3),
        WriteOp::RemoveKey { key: Key::new("c") },
        stored("c", 4),
        request(5, None),
        WriteOp::RemoveRequest {
            id: RequestId::new("r5"),
        },
        member("c1", "n7"),
        WriteOp::Departed(NodeId::new("n7")),
        member("c1", "n7"),
        WriteOp::CaughtUp {
            peer: NodeId::new("n2"),
            seq: 9,
        },
        WriteOp::CaughtUp {
            peer: NodeId::new("n2"),
            seq: 4,
        },
        open("d", 6),
    ];
    let kept = superseded_dropped(&ops);
    assert_eq!(kept.len(), ops.len() - 5, "{kept:?}");
    let load = |apply: &dyn Fn(&Storage)| {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), Some(&Recovered::founder(net()))).unwrap();
        apply(&s);
        drop(s);
        let mut s = Storage::open(dir.path(), None).unwrap();
        whole(&mut s)
    };
    let all = load(&|s| s.apply_ops(&ops, None).unwrap());
    let collapsed = load(&|s| s.apply_ops(superseded_dropped(&ops), None).unwrap());
    assert_eq!(collapsed, all);
    let mut expected = Recovered::founder(net());
    expected.apply_all(&ops);
    assert_eq!(all, expected);
}

/// A failing disk refuses the append; nothing of the group counts, and the same group
/// commits once the disk works again (on the database opened anew).
#[test]
fn a_failed_append_commits_nothing_until_retried() {
    let disk = sim_disk();
    let storage = Storage::open_sim(&disk, Some(&Recovered::founder(net()))).unwrap();
    let location = storage.location();
    let mut storage = Some(storage);
    let batch = [job(1, vec![stored("a", 1)])];
    disk.set_failing(true);
    assert!(commit_once(&mut storage, &location, &batch).is_err());
    assert!(storage.is_none(), "dropped, to reopen");
    disk.set_failing(false);
    commit_once(&mut storage, &location, &batch).unwrap();
    disk.complete_sync();
    disk.crash();
    drop(storage);
    assert_eq!(keys_after_restart(&disk), ["a"]);
}

/// The membership only changes through its writes: a departed node is never added again,
/// a departure drops a member, and a removal of this node itself is on record.
#[test]
fn membership_and_departures_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
    let batches = [
        vec![member("eu", "a"), member("eu", "b"), member("us", "c")],
        vec![WriteOp::Departed(NodeId::new("b")), member("eu", "b")],
        vec![member("us", "d"), WriteOp::Departed(NodeId::new("me"))],
    ];
    let mut expected = Recovered::joiner(net());
    for (w, ops) in batches.into_iter().enumerate() {
        expected.apply_all(&ops);
        s.apply(&[PersistJob {
            write: WriteId(w as u64 + 1),
            ops,
            urgency: Urgency::Barrier,
        }])
        .unwrap();
    }
    drop(s);
    let loaded = whole(&mut Storage::open(dir.path(), None).unwrap());
    assert_eq!(loaded, expected);
    let mut members: Vec<(&str, &str)> = loaded
        .members
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    members.sort();
    assert_eq!(members, [("a", "eu"), ("c", "us"), ("d", "us")]);
    assert!(loaded.departed.contains(&NodeId::new("me")));
    assert!(!loaded.ready);
}

/// `open` with a fresh state records all of it at once (a founder that knows members, a
/// joiner's network id), and a second `open` never overwrites what is there.
#[test]
fn fresh_state_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = Recovered::founder(net()).with_members([
        (ClusterId::new("eu"), NodeId::new("a")),
        (ClusterId::new("us"), NodeId::new("b")),
    ]);
    let mut s = Storage::open(dir.path(), Some(&fresh)).unwrap();
    assert_eq!(s.network().unwrap(), net());
    assert_eq!(s.load().unwrap().recovered, fresh);
    drop(s);
    let other = Recovered::joiner(NetworkId::new("another"));
    let mut s = Storage::open(dir.path(), Some(&other)).unwrap();
    assert_eq!(
        s.load().unwrap().recovered,
        fresh,
        "an existing database is kept"
    );
}

#[test]
fn old_or_uninitialised_databases_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A database of format 1: no members, no network id.
        let db = Database::create(db_path(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT, 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let e = format!("{:#}", Storage::open(dir.path(), None).err().unwrap());
    assert!(
        e.contains("format 1") && e.contains("quorums") && e.contains("new node"),
        "{e}"
    );
    let e = Storage::open(dir.path(), Some(&Recovered::joiner(net())))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("format 1"), "{e:#}");

    let dir = tempfile::tempdir().unwrap();
    drop(Database::create(db_path(dir.path())).unwrap());
    let e = format!("{:#}", Storage::open(dir.path(), None).err().unwrap());
    assert!(e.contains("never initialised"), "{e}");
}

/// The group-commit loop on this thread, as the storage thread runs it, until `jobs` closes.
fn run_commit_loop(
    s: Storage,
    jobs: mpsc::UnboundedReceiver<PersistJob>,
    durable: watch::Sender<Durable>,
    counters: Arc<CommitCounters>,
) {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(s.commit_loop(jobs, durable, counters));
}

#[test]
fn lazy_writes_ride_with_the_next_barrier_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
    let job = |w: u64, urgency| PersistJob {
        write: WriteId(w),
        ops: vec![WriteOp::CounterCeiling(w * 10)],
        urgency,
    };
    tx.send(job(1, Urgency::Lazy)).unwrap();
    tx.send(job(2, Urgency::Lazy)).unwrap();
    tx.send(job(3, Urgency::Barrier)).unwrap();
    drop(tx);
    let counters = Arc::new(CommitCounters::default());
    run_commit_loop(s, rx, durable_tx, counters.clone());
    assert_eq!(*durable.borrow(), Durable::Upto(WriteId(3)));
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&counters.commits), 1, "one fsync for the three writes");
    assert_eq!(get(&counters.lazy_writes), 2);
}

#[test]
fn a_lazy_write_alone_is_synced_after_a_short_delay() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
    let counters = Arc::new(CommitCounters::default());
    let worker = {
        let counters = counters.clone();
        std::thread::spawn(move || run_commit_loop(s, rx, durable_tx, counters))
    };
    let sent = std::time::Instant::now();
    tx.send(PersistJob {
        write: WriteId(1),
        ops: vec![WriteOp::CounterCeiling(10)],
        urgency: Urgency::Lazy,
    })
    .unwrap();
    // The queue stays open: only the delay can commit it.
    while *durable.borrow() != Durable::Upto(WriteId(1)) {
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(10),
            "never synced"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(sent.elapsed() >= LAZY_SYNC_AFTER, "synced before its delay");
    drop(tx);
    worker.join().unwrap();
    let commits = counters.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(commits, 1);
}

#[test]
fn group_commit_reports_the_highest_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), Some(&Recovered::joiner(net()))).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (durable_tx, durable) = watch::channel(Durable::Upto(WriteId(0)));
    for w in 1..=50u64 {
        tx.send(PersistJob {
            write: WriteId(w),
            ops: vec![WriteOp::CounterCeiling(w * 10)],
            urgency: Urgency::Barrier,
        })
        .unwrap();
    }
    drop(tx);
    run_commit_loop(s, rx, durable_tx, Arc::default());
    assert_eq!(*durable.borrow(), Durable::Upto(WriteId(50)));
    let rec = Storage::open(dir.path(), None)
        .unwrap()
        .load()
        .unwrap()
        .recovered;
    assert_eq!(rec.counter_ceiling, 500);
    assert!(
        !rec.ready,
        "a joiner stays not ready until its copy is done"
    );
}
