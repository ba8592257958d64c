//! The write-ahead log in front of the database: where a group commit makes its writes durable.
//!
//! A redb commit copies every page it touches and writes them with the allocator state before
//! its fsync: about 33 KB and 180 µs of CPU per commit, whatever the commit holds, which made
//! the storage thread half of a loaded node's CPU. The log makes a group durable with one
//! sequential write of just its records and one fdatasync; the database takes the logged
//! writes in bulk at a checkpoint ([`crate::storage`]), one transaction for thousands of them.
//!
//! # Format
//! The file is a sequence of records, one per `Persist` job, appended at its end:
//! ```text
//! len: u32 LE | crc: u32 LE (CRC-32 of the payload) | payload: len bytes (bincode Vec<WriteOp>)
//! ```
//! The file starts with a header that names the checkpoint the records follow and where they
//! start:
//! ```text
//! magic: b"RPLS" | generation: u64 LE | start: u64 LE | crc: u32 LE (CRC-32 of the 20 bytes before)
//! ```
//! so that a database that lost its last checkpoint (redb's repair falls back to the previous
//! commit when the newest one is damaged; a file restored from an older copy) is told from one
//! that holds everything (see `storage.rs`, [`crate::storage::Storage::open`]). A checkpoint runs
//! beside the appends (`storage/checkpoint.rs`): once the database holds the records before
//! some offset, [`Log::advance`] rewrites the header in place to start after them, and the
//! records appended meanwhile stay where they are. Once the file has grown past
//! [`LOG_FILE_BYTES_MAX`], a checkpoint of everything empties it ([`Log::clear`]).
//!
//! The file is extended ahead of the records, [`PREALLOCATED_BYTES`] at a time, with zeros
//! actually written: an append then overwrites blocks the file already has, and its fdatasync
//! flushes just those (an append that grows the file also commits the filesystem's journal for
//! the new size and blocks: about a third more per fsync, measured on ext4). A record's length
//! is never 0, so a zero length where a record would start, with nothing but zeros after it to
//! the end of the file, is where the records end.
//!
//! Logs written before checkpoints ran beside the appends have an older header, `b"RPLG"`,
//! generation and checksum (16 bytes, records right after it), and the oldest none at all
//! (records from byte 0): both are read. A magic read as a record length is far beyond
//! [`RECORD_BYTES_MAX`], so a log without a header is told apart.
//!
//! # Reading it back
//! [`Log::open`] reads records from the start until the file ends or a record is incomplete or
//! fails its checksum: that is the tail a crash cut short while it was being appended, which
//! was never reported durable, so it is dropped. A bad record followed by a good one is not a
//! torn tail but damage inside acknowledged writes: the log is refused, with a clear error,
//! rather than silently losing what follows.

use std::io;

use redb::StorageBackend;
use replicator_core::WriteOp;
use replicator_core::wire::{FRAME_BYTES_MAX, decode_record, encode_record};

use crate::crc::crc32;

const HEADER_BYTES: u64 = 8;

/// The first bytes of a log whose header names where its records start.
const MAGIC: [u8; 4] = *b"RPLS";
/// Magic, generation, start, checksum.
const LOG_HEADER_BYTES: u64 = 24;
/// The first bytes of an older log's header: generation only, records right after it.
const MAGIC_GENERATION_ONLY: [u8; 4] = *b"RPLG";
/// Magic, generation, checksum.
const GENERATION_ONLY_HEADER_BYTES: u64 = 16;

/// How far the file is extended with zeros when an append would pass its end.
#[cfg(not(madsim))]
const PREALLOCATED_BYTES: u64 = 1024 * 1024;
/// Under simulation, in step with the small checkpoint thresholds there.
#[cfg(madsim)]
const PREALLOCATED_BYTES: u64 = 16 * 1024;

/// Once the file is this long, the next checkpoint takes everything and empties it, instead of
/// running beside the appends (which only moves the header's start): bounds the file.
#[cfg(not(any(test, madsim)))]
pub const LOG_FILE_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// Shorter for the unit tests that fill it.
#[cfg(all(test, not(madsim)))]
pub const LOG_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Under simulation, eight checkpoints' worth (see `storage/checkpoint.rs`).
#[cfg(madsim)]
pub const LOG_FILE_BYTES_MAX: u64 = 128 * 1024;

/// A record no longer than this is read; a longer length is damage (the core never writes
/// a job that large: its pages and lists are bounded well below it).
const RECORD_BYTES_MAX: u64 = FRAME_BYTES_MAX as u64;

/// Why a log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the write-ahead log cannot be read or written: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the write-ahead log is damaged at byte {offset}: a record fails its checksum but a good one follows, so acknowledged writes are in the damaged part"
    )]
    Damaged { offset: u64 },
    #[error(
        "a write-ahead log record at byte {offset} passed its checksum but does not decode: {why}"
    )]
    Undecodable { offset: u64, why: String },
    #[error("a write cannot be logged: {0}")]
    Encode(String),
    #[error("the write-ahead log's header (the checkpoint it follows) fails its checksum")]
    DamagedHeader,
}

pub struct Log {
    file: Box<dyn StorageBackend>,
    /// Where the records start: after the header (or further, once a checkpoint took the
    /// records before), or at 0 in a log without one.
    start: u64,
    /// Where the next record goes: the end of the records read or appended so far.
    end: u64,
    /// The length of the header the file starts with (0: none).
    header_bytes: u64,
    /// The file's length: zeros from `end` to here (written, so appends overwrite them).
    allocated: u64,
}

/// What [`Log::open`] found.
pub struct Opened {
    pub log: Log,
    /// The writes of every whole record, in order.
    pub ops: Vec<WriteOp>,
    /// Bytes after the last whole record up to the last one that is not zero (a tail a crash
    /// cut short; the zeros after it may be the file's extension), dropped.
    pub torn_bytes: u64,
    /// The checkpoint the records follow, from the header; `None` for a log without one
    /// (new, or written before headers existed).
    pub generation: Option<u64>,
}

impl Log {
    /// Reads the log back (see the module doc) and positions it after its last whole record.
    pub fn open(file: Box<dyn StorageBackend>) -> Result<Opened, LogError> {
        let len = file.len()?;
        let (generation, start, header_bytes) = match read_header(file.as_ref(), len)? {
            Some(Header {
                generation,
                start,
                bytes,
            }) => (Some(generation), start, bytes),
            None => (None, 0, 0),
        };
        let mut ops = Vec::new();
        // A start past the end: a clear cut the records off and a crash came before it wrote
        // its header (see `clear`). No records; appends go where the header says they start.
        let len = len.max(start);
        let mut at = start;
        while let Some(record) = read_record(file.as_ref(), at, len)? {
            let payload = match record {
                Record::Whole(payload) => payload,
                Record::Bad { next } => {
                    if next.is_some_and(|next| {
                        matches!(
                            read_record(file.as_ref(), next, len),
                            Ok(Some(Record::Whole(_)))
                        )
                    }) {
                        return Err(LogError::Damaged { offset: at });
                    }
                    break;
                }
            };
            let decoded: Vec<WriteOp> =
                decode_record(&payload).map_err(|e| LogError::Undecodable {
                    offset: at,
                    why: e.to_string(),
                })?;
            ops.extend(decoded);
            at += HEADER_BYTES + payload.len() as u64;
        }
        let torn_bytes = nonzero_end(file.as_ref(), at, len)? - at;
        Ok(Opened {
            log: Log {
                file,
                start,
                end: at,
                header_bytes,
                allocated: len,
            },
            ops,
            torn_bytes,
            generation,
        })
    }

    /// Bytes of records in the log.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Where the next record goes: the file's length, records before `start` included.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Appends one record per write and makes them durable (one write, one fdatasync). On an
    /// error nothing counts as appended: the next append writes over the same place.
    pub fn append<'a>(
        &mut self,
        writes: impl IntoIterator<Item = &'a [WriteOp]>,
    ) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for ops in writes {
            let payload = encode_record(&ops).map_err(|e| LogError::Encode(e.to_string()))?;
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32(&[&payload]).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        let end = self.end + buf.len() as u64;
        if end > self.allocated {
            let allocated = end.max(self.allocated + PREALLOCATED_BYTES);
            let zeros = vec![0u8; (allocated - self.allocated) as usize];
            self.file.write(self.allocated, &zeros)?;
            self.allocated = allocated;
        }
        self.file.write(self.end, &buf)?;
        self.file.sync_data()?;
        self.end = end;
        Ok(())
    }

    /// Empties the log (the database holds everything in it now, as of checkpoint
    /// `generation`) and makes that durable.
    ///
    /// The records are cut off first, durably, with the old header left as it was; then the
    /// new header is written. A crash in between leaves the old header with no records behind
    /// it (its start is at or past the end: [`Log::open`] reads that as empty), a crash after
    /// it the new one: never a header with records that are not its own.
    pub fn clear(&mut self, generation: u64) -> Result<(), LogError> {
        let old_header = if self.start == 0 {
            0
        } else {
            self.header_bytes
        };
        self.file.set_len(old_header)?;
        self.file.sync_data()?;
        self.allocated = old_header;
        self.file.write(0, &header(generation, LOG_HEADER_BYTES))?;
        self.file.sync_data()?;
        self.start = LOG_HEADER_BYTES;
        self.end = LOG_HEADER_BYTES;
        self.header_bytes = LOG_HEADER_BYTES;
        self.allocated = LOG_HEADER_BYTES;
        Ok(())
    }

    /// The database holds every record before `start` now, as of checkpoint `generation`:
    /// the header says the records start there (rewritten in place, synced), and the records
    /// from `start` on stay where they are. A crash keeps the old header or the new one; with
    /// the old one the records from its start are replayed, which changes nothing (see
    /// `storage.rs`).
    ///
    /// `start` must be the end of a record, at or after the end of the new header (which must
    /// not overwrite a record still needed) and not before the current start; the caller's
    /// checkpoints take at least [`crate::storage`]'s threshold of bytes, far more than a
    /// header.
    pub fn advance(&mut self, generation: u64, start: u64) -> Result<(), LogError> {
        if start < LOG_HEADER_BYTES || start < self.start || start > self.end {
            return Err(LogError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the log's records cannot start at byte {start} (they start at {}, end at {}, and the header takes {LOG_HEADER_BYTES})",
                    self.start, self.end
                ),
            )));
        }
        self.file.write(0, &header(generation, start))?;
        self.file.sync_data()?;
        self.start = start;
        self.header_bytes = LOG_HEADER_BYTES;
        Ok(())
    }
}

/// What a log's header says.
struct Header {
    generation: u64,
    /// Where the records start.
    start: u64,
    /// How long the header is.
    bytes: u64,
}

fn header(generation: u64, start: u64) -> [u8; LOG_HEADER_BYTES as usize] {
    let mut bytes = [0u8; LOG_HEADER_BYTES as usize];
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[4..12].copy_from_slice(&generation.to_le_bytes());
    bytes[12..20].copy_from_slice(&start.to_le_bytes());
    let sum = crc32(&[&bytes[..20]]);
    bytes[20..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// The log's header (either kind), `None` if the log does not start with one.
fn read_header(file: &dyn StorageBackend, len: u64) -> Result<Option<Header>, LogError> {
    if len < MAGIC.len() as u64 {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    file.read(0, &mut magic)?;
    let size = match magic {
        MAGIC => LOG_HEADER_BYTES,
        MAGIC_GENERATION_ONLY => GENERATION_ONLY_HEADER_BYTES,
        _ => return Ok(None),
    };
    if len < size {
        return Err(LogError::DamagedHeader);
    }
    let mut bytes = vec![0u8; size as usize];
    file.read(0, &mut bytes)?;
    let (covered, sum) = bytes.split_at(size as usize - 4);
    let sum = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
    if crc32(&[covered]) != sum {
        return Err(LogError::DamagedHeader);
    }
    let generation = u64::from_le_bytes(covered[4..12].try_into().expect("8 bytes"));
    let start = if magic == MAGIC {
        u64::from_le_bytes(covered[12..20].try_into().expect("8 bytes"))
    } else {
        GENERATION_ONLY_HEADER_BYTES
    };
    if start < size {
        return Err(LogError::DamagedHeader);
    }
    Ok(Some(Header {
        generation,
        start,
        bytes: size,
    }))
}

/// Where the bytes of `[from, len)` that are not all zeros end: `from` if they all are (the
/// zeros the file was extended with), else just past the last byte that is not zero.
fn nonzero_end(file: &dyn StorageBackend, from: u64, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut chunk = vec![0u8; CHUNK as usize];
    while end > from {
        let size = (end - from).min(CHUNK);
        let bytes = &mut chunk[..size as usize];
        file.read(end - size, bytes)?;
        if let Some(last) = bytes.iter().rposition(|b| *b != 0) {
            return Ok(end - size + last as u64 + 1);
        }
        end -= size;
    }
    Ok(from)
}

enum Record {
    Whole(Vec<u8>),
    /// Incomplete or failing its checksum; `next` is where the record after it would start if
    /// its length is believable.
    Bad {
        next: Option<u64>,
    },
}

/// The record at `at`, or `None` at the end of the file.
fn read_record(file: &dyn StorageBackend, at: u64, len: u64) -> io::Result<Option<Record>> {
    if at == len {
        return Ok(None);
    }
    if len - at < HEADER_BYTES {
        return Ok(Some(Record::Bad { next: None }));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read(at, &mut header)?;
    let size = u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
    let sum = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let start = at + HEADER_BYTES;
    if size == 0 && nonzero_end(file, at, len)? == at {
        // The zeros the file was extended with: the records end here.
        return Ok(None);
    }
    if size == 0 || size > RECORD_BYTES_MAX || len - start < size {
        return Ok(Some(Record::Bad { next: None }));
    }
    let mut payload = vec![0u8; size as usize];
    file.read(start, &mut payload)?;
    if crc32(&[&payload]) != sum {
        return Ok(Some(Record::Bad {
            next: Some(start + size),
        }));
    }
    Ok(Some(Record::Whole(payload)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use replicator_core::{Key, WriteOp};

    use super::*;
    use crate::simdisk::SimDisk;

    fn disk() -> SimDisk {
        SimDisk::new(Duration::ZERO..Duration::ZERO)
    }

    fn op(i: u64) -> WriteOp {
        WriteOp::RemoveKey {
            key: Key::from(format!("k{i}").as_str()),
        }
    }

    fn open(disk: &SimDisk) -> Opened {
        Log::open(Box::new(disk.log_backend())).expect("the log opens")
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let disk = disk();
        let mut log = open(&disk).log;
        assert!(log.is_empty());
        log.append([&[op(1), op(2)][..], &[op(3)][..]]).unwrap();
        log.append([&[op(4)][..]]).unwrap();
        disk.complete_sync();
        let opened = open(&disk);
        assert_eq!(opened.ops, vec![op(1), op(2), op(3), op(4)]);
        assert_eq!(opened.torn_bytes, 0);
        assert_eq!(opened.log.len(), log.len());
    }

    #[test]
    fn a_crash_keeps_exactly_the_synced_records_and_clear_is_durable() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..]]).unwrap();
        disk.complete_sync();
        log.append([&[op(2)][..]]).unwrap();
        disk.crash();
        let mut reopened = open(&disk);
        assert_eq!(reopened.ops, vec![op(1)]);
        reopened.log.clear(1).unwrap();
        disk.complete_sync();
        disk.crash();
        assert!(open(&disk).ops.is_empty());
    }

    /// The file is extended with zeros ahead of the records; they read as the end of the log,
    /// not as a torn tail, and appends go over them. A clear gives the space back.
    #[test]
    fn the_zeros_ahead_of_the_records_end_the_log() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.clear(1).unwrap();
        log.append([&[op(1)][..]]).unwrap();
        let file = disk.log_backend();
        assert_eq!(file.len().unwrap(), LOG_HEADER_BYTES + PREALLOCATED_BYTES);
        disk.complete_sync();
        let opened = open(&disk);
        assert_eq!((opened.ops, opened.torn_bytes), (vec![op(1)], 0));
        assert_eq!(opened.log.end(), log.end());
        // Appends past the extension extend it again.
        let big: Vec<WriteOp> = (0..20_000).map(op).collect();
        let mut log = opened.log;
        log.append([&big[..]]).unwrap();
        log.append([&big[..]]).unwrap();
        assert!(file.len().unwrap() > log.end());
        log.append([&[op(2)][..]]).unwrap();
        disk.complete_sync();
        disk.crash();
        let opened = open(&disk);
        assert_eq!(opened.ops.len(), 1 + 2 * big.len() + 1);
        assert_eq!(opened.torn_bytes, 0);
        let mut log = opened.log;
        log.clear(2).unwrap();
        assert_eq!(disk.log_backend().len().unwrap(), LOG_HEADER_BYTES);
    }

    /// Something other than zeros after a zero length is a torn tail, not the end of the zeros.
    #[test]
    fn bytes_inside_the_zeros_are_a_torn_tail() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.clear(1).unwrap();
        log.append([&[op(1)][..]]).unwrap();
        let end = log.end();
        disk.log_backend().write(end + 100, &[7]).unwrap();
        let opened = open(&disk);
        assert_eq!((opened.ops, opened.torn_bytes), (vec![op(1)], 101));
    }

    /// A tail cut anywhere inside the last record is dropped; the records before it stay, and
    /// the next append goes where the cut record started.
    #[test]
    fn a_torn_tail_is_dropped_wherever_the_cut_falls() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..]]).unwrap();
        let first_end = log.len();
        log.append([&[op(2), op(3)][..]]).unwrap();
        let full = log.len();
        for cut in first_end + 1..full {
            let file = disk.log_backend();
            let mut bytes = vec![0u8; full as usize];
            file.read(0, &mut bytes).unwrap();
            file.set_len(0).unwrap();
            file.write(0, &bytes[..cut as usize]).unwrap();
            let mut opened = open(&disk);
            assert_eq!(opened.ops, vec![op(1)], "cut at {cut}");
            // Counted up to its last byte that is not zero (zeros may be the file's extension).
            assert!(
                (1..=cut - first_end).contains(&opened.torn_bytes),
                "cut at {cut}: {} torn bytes",
                opened.torn_bytes
            );
            opened.log.append([&[op(9)][..]]).unwrap();
            assert_eq!(open(&disk).ops, vec![op(1), op(9)], "cut at {cut}");
            // Put the whole log back for the next cut.
            file.set_len(0).unwrap();
            file.write(0, &bytes).unwrap();
        }
    }

    /// A flipped byte in a record with good records after it is damage, not a torn tail.
    #[test]
    fn a_damaged_record_before_good_ones_refuses_the_log() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..], &[op(2)][..], &[op(3)][..]])
            .unwrap();
        let file = disk.log_backend();
        let mut byte = [0u8; 1];
        file.read(HEADER_BYTES + 2, &mut byte).unwrap();
        file.write(HEADER_BYTES + 2, &[byte[0] ^ 0x40]).unwrap();
        match Log::open(Box::new(disk.log_backend())) {
            Err(LogError::Damaged { offset: 0 }) => {}
            Err(e) => panic!("expected damage at 0, got {e}"),
            Ok(o) => panic!("a damaged log opened with {} ops", o.ops.len()),
        }
    }

    /// A cleared log names the checkpoint it follows; records appended after it read back
    /// behind the header, and a second clear keeps them where they were.
    #[test]
    fn the_header_names_the_checkpoint_the_records_follow() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..]]).unwrap();
        assert_eq!(open(&disk).generation, None, "no header before a clear");
        log.clear(7).unwrap();
        assert!(log.is_empty());
        log.append([&[op(2)][..]]).unwrap();
        let opened = open(&disk);
        assert_eq!((opened.generation, opened.ops), (Some(7), vec![op(2)]));
        let mut log = opened.log;
        log.clear(8).unwrap();
        log.append([&[op(3)][..]]).unwrap();
        disk.complete_sync();
        disk.crash();
        let opened = open(&disk);
        assert_eq!((opened.generation, opened.ops), (Some(8), vec![op(3)]));
    }

    /// A log that follows checkpoint 1 and holds op(1) then op(2); where op(1)'s record ends.
    fn two_records(disk: &SimDisk) -> (Log, u64) {
        let mut log = open(disk).log;
        log.clear(1).unwrap();
        log.append([&[op(1)][..]]).unwrap();
        let first_end = log.end();
        log.append([&[op(2)][..]]).unwrap();
        (log, first_end)
    }

    /// Once the database holds the records before an offset, the header starts after them:
    /// they are not read again, the ones behind stay. Until the new header is synced, a crash
    /// keeps the old one, with every record.
    #[test]
    fn advance_starts_the_log_after_what_the_database_took() {
        let disk = disk();
        let (mut log, taken) = two_records(&disk);
        disk.complete_sync();
        log.advance(2, taken).unwrap();
        let opened = open(&disk);
        assert_eq!((opened.generation, opened.ops), (Some(2), vec![op(2)]));
        assert_eq!(opened.log.end(), log.end());

        let mut log = opened.log;
        log.append([&[op(3)][..]]).unwrap();
        let taken = log.end();
        log.append([&[op(4)][..]]).unwrap();
        disk.complete_sync();
        let file = disk.log_backend();
        file.write(0, &header(3, taken)).unwrap();
        disk.crash();
        let opened = open(&disk);
        assert_eq!(
            (opened.generation, opened.ops),
            (Some(2), vec![op(2), op(3), op(4)]),
            "the unsynced header is lost with the crash"
        );
    }

    /// A header may only move to the end of a record, forward, past its own bytes.
    #[test]
    fn advance_refuses_a_start_that_is_not_the_end_of_what_was_taken() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..]]).unwrap();
        assert!(
            log.advance(1, LOG_HEADER_BYTES - 1).is_err(),
            "under the header"
        );
        assert!(log.advance(1, log.end() + 1).is_err(), "past the end");
        log.clear(1).unwrap();
        log.append([&[op(2)][..]]).unwrap();
        let end = log.end();
        log.advance(2, end).unwrap();
        assert!(log.advance(3, LOG_HEADER_BYTES).is_err(), "backwards");
        assert_eq!(open(&disk).generation, Some(2));
    }

    /// A clear cuts the records off (synced) before it writes its header: a crash in between
    /// leaves the old header with its start past the end, an empty log that takes appends.
    #[test]
    fn a_clear_cut_short_leaves_an_empty_log() {
        let disk = disk();
        let (mut log, taken) = two_records(&disk);
        log.advance(2, taken).unwrap();
        disk.complete_sync();
        disk.log_backend().set_len(LOG_HEADER_BYTES).unwrap();
        disk.complete_sync();
        let opened = open(&disk);
        assert_eq!(
            (opened.generation, opened.ops.len(), opened.torn_bytes),
            (Some(2), 0, 0)
        );
        let mut log = opened.log;
        log.append([&[op(3)][..]]).unwrap();
        assert_eq!(open(&disk).ops, vec![op(3)]);
    }

    /// A log with the older header (generation only, records right after it) reads back, and
    /// moves to the newer header when the database takes its first records.
    #[test]
    fn a_log_with_the_older_header_is_read() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.append([&[op(1)][..]]).unwrap();
        log.append([&[op(2)][..]]).unwrap();
        let records = {
            let file = disk.log_backend();
            let mut bytes = vec![0u8; file.len().unwrap() as usize];
            file.read(0, &mut bytes).unwrap();
            bytes
        };
        let mut older = MAGIC_GENERATION_ONLY.to_vec();
        older.extend_from_slice(&5u64.to_le_bytes());
        let sum = crc32(&[&older]);
        older.extend_from_slice(&sum.to_le_bytes());
        older.extend_from_slice(&records);
        let file = disk.log_backend();
        file.set_len(0).unwrap();
        file.write(0, &older).unwrap();
        let opened = open(&disk);
        assert_eq!(
            (opened.generation, opened.ops),
            (Some(5), vec![op(1), op(2)])
        );
        let mut log = opened.log;
        let end = log.end();
        log.append([&[op(3)][..]]).unwrap();
        log.advance(6, end).unwrap();
        let opened = open(&disk);
        assert_eq!((opened.generation, opened.ops), (Some(6), vec![op(3)]));
    }

    /// A header that fails its checksum is damage: the log is refused, not read as one
    /// without a header.
    #[test]
    fn a_damaged_header_refuses_the_log() {
        let disk = disk();
        let mut log = open(&disk).log;
        log.clear(3).unwrap();
        log.append([&[op(1)][..]]).unwrap();
        let file = disk.log_backend();
        file.write(6, &[0xFF]).unwrap();
        assert!(matches!(
            Log::open(Box::new(disk.log_backend())),
            Err(LogError::DamagedHeader)
        ));
    }

    /// Whatever the bytes, opening never panics: it reads records, stops, or refuses.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..300 {
            let disk = disk();
            let file = disk.log_backend();
            let len = (round * 7) % 97;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            file.write(0, &bytes).unwrap();
            let _ = Log::open(Box::new(disk.log_backend()));
        }
    }
}
