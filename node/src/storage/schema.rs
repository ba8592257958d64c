//! The database's layout: its tables and settings, its format number, and how a record is sealed
//! with its checksum.

use super::*;

/// Every key's record (sealed: see [`seal`]), by [`order_key`]: in the core's order of keys, so
/// that a join-time copy pages through them as the core merges them with what it holds.
pub(super) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// The keys whose record is open (a promise, an accepted value), by [`order_key`]: what a
/// restart loads. Decided keys stay on disk until a read needs them.
pub(super) const OPEN_RECORDS: TableDefinition<&[u8], ()> = TableDefinition::new("open_records");
/// Decision number -> the decided key's [`order_key`]: catch-up reads decisions in this order.
/// A key decided again after its record was damaged keeps its old number here too; the record
/// names the number that counts.
pub(super) const DECISION_ORDER: TableDefinition<u64, &[u8]> =
    TableDefinition::new("decision_order");
/// Format 5's records, by the key's text: moved into [`RECORDS`] when such a database opens.
pub(super) const KEYS_FORMAT_5: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
pub(super) const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
/// For each member of this node's cluster: the last of its decisions pulled from it.
pub(super) const CAUGHT_UP: TableDefinition<&str, u64> = TableDefinition::new("caught_up");
/// Settings that are records: the ballot floor.
pub(super) const META_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_records");
pub(super) const DEPARTED: TableDefinition<&[u8], ()> = TableDefinition::new("departed");
/// Every other member this node recorded: node id -> cluster id.
pub(super) const MEMBERS: TableDefinition<&str, &str> = TableDefinition::new("members");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Text settings: the network id.
pub(super) const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");

pub(super) const META_COUNTER_CEILING: &str = "counter_ceiling";
pub(super) const META_ROUND_CEILING: &str = "round_ceiling";
pub(super) const META_FLOOR: &str = "ballot_floor";
pub(super) const META_READY: &str = "ready";
pub(super) const META_FORMAT: &str = "format";
pub(super) const META_NETWORK: &str = "network";
/// The peer id of the node this database belongs to.
pub(super) const META_PEER: &str = "peer";
/// When this node left the network (`replicator leave`): it never starts again.
pub(super) const META_LEFT: &str = "left";
/// How many checkpoints the database took; the log's header names the one its records follow
/// (see [`check_log_follows_database`]).
pub(super) const META_CHECKPOINTS: &str = "checkpoints";
/// The number of the last decision stored.
pub(super) const META_LAST_DECISION: &str = "last_decision";

/// 2: the membership and the network id are durable (tables `members`, `meta_text`).
/// 3: records of `keys`, `refusals` and `requests` carry a checksum (a format 2 database is
/// upgraded in place when it is opened).
/// 4: recent writes may be in the write-ahead log next to the database (`wal.rs`); a
/// replicator that reads format 3 would ignore them, so it must refuse the database.
/// 5: the quorum protocol: a key's record is a promise and an accepted value, or its decision;
/// refusals and watermarks are gone; a ballot floor, a round ceiling and catch-up positions are
/// new. Earlier formats hold the unanimous protocol's grants, which no rule here reads.
/// 6: records by the core's order of keys (`records`), with the open ones listed
/// (`open_records`) and decisions by number (`decision_order`, `meta.last_decision`), so that
/// a node loads only what is in flight and reads decisions when it needs them. A format 5
/// database is upgraded in place when it is opened (`upgrade.rs`).
/// 7: the write-ahead log's header names where its records start (`wal.rs`: checkpoints run
/// beside the appends and move it); a replicator that reads format 6 would read such a log as
/// one without a header and drop its records, so it must refuse the database. A format 5 or 6
/// database is upgraded in place (format 6's tables are unchanged).
pub const FORMAT_VERSION: u64 = 7;

/// The oldest format this node upgrades in place.
pub(super) const FORMAT_UPGRADABLE: u64 = 5;

/// Where a key's record sits in [`RECORDS`]: the FNV-1a hash of its text (big endian), then
/// the text. Byte order on these is the core's order of keys (hash, then text), which the
/// join-time copy relies on. Bytes, not only text: a format 5 record being upgraded may be
/// damaged (`upgrade.rs`).
pub(super) fn order_key(key: impl AsRef<[u8]>) -> Vec<u8> {
    let key = key.as_ref();
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&replicator_core::fnv1a(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The key's text in an [`order_key`], if it is one (8 bytes of hash, then UTF-8 text).
pub(super) fn key_text(order_key: &[u8]) -> Option<&str> {
    std::str::from_utf8(order_key.get(8..)?).ok()
}

/// The database file inside `--data-dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("replicator.redb")
}

/// The write-ahead log next to the database at `db`.
pub(super) fn log_path(db: &Path) -> PathBuf {
    db.with_extension("wal")
}

/// The path reported for a database on a simulated disk.
pub(super) const SIM_PATH: &str = "<simulated disk>";

/// A record as stored: a CRC-32 of `key` and `bytes` (4 bytes, little endian), then `bytes`.
pub(super) fn seal(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&checksum(key, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a sealed record, if its checksum matches.
pub(super) fn open_record<'a>(key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let (sum, bytes) = sealed.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*sum) == checksum(key, bytes)).then_some(bytes)
}

/// CRC-32 of the key's length, the key and the bytes.
pub(super) fn checksum(key: &[u8], bytes: &[u8]) -> u32 {
    crc32(&[&(key.len() as u32).to_le_bytes(), key, bytes])
}
