//! The benchmark's keys and records: shaped like the node's (`storage/schema.rs`), made from a
//! seeded generator so that every run and both stores see the same bytes.

/// What a sealed record adds to the value: the 4-byte checksum, and bincode's encoding of the
/// record around the value (ballot, writer, request id, decision number): about 90 bytes.
pub const RECORD_OVERHEAD_BYTES: usize = 90;

/// The text of key number `i`.
pub fn key_text(i: u64) -> String {
    format!("key-{i}")
}

/// Where the node stores a key's record: the FNV-1a hash of its text (big endian), then the
/// text (as `storage::schema::order_key`).
pub fn order_key(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&replicator_core::fnv1a(text.as_bytes()).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// Key number `i` as the store sees it, with its sealed record: a CRC-32 of the key's length,
/// the key and the bytes (as `storage::schema::seal`), then `value_bytes` +
/// [`RECORD_OVERHEAD_BYTES`] bytes. The bytes are pseudo-random, so that no store gains from
/// compressing them (a client's values may or may not compress).
pub fn record(i: u64, value_bytes: usize) -> (Vec<u8>, Vec<u8>) {
    let text = key_text(i);
    let mut bytes = vec![0u8; value_bytes + RECORD_OVERHEAD_BYTES];
    let mut random = SplitMix64(i);
    for chunk in bytes.chunks_mut(8) {
        let word = random.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let mut sealed = Vec::with_capacity(4 + bytes.len());
    sealed.extend_from_slice(&checksum(text.as_bytes(), &bytes).to_le_bytes());
    sealed.extend_from_slice(&bytes);
    (order_key(&text), sealed)
}

/// Whether `sealed`, read at `order_key`, is a record whose checksum matches: what the node
/// checks on every read (`storage::schema::open_record`), so both stores pay for it too.
pub fn record_is_intact(order_key: &[u8], sealed: &[u8]) -> bool {
    let Some(text) = order_key.get(8..) else {
        return false;
    };
    match sealed.split_first_chunk::<4>() {
        Some((sum, bytes)) => u32::from_le_bytes(*sum) == checksum(text, bytes),
        None => false,
    }
}

/// As `storage::schema::checksum`.
fn checksum(key: &[u8], bytes: &[u8]) -> u32 {
    replicator_node::crc::crc32(&[&(key.len() as u32).to_le_bytes(), key, bytes])
}

/// `count` distinct numbers below `below`, in a seeded random order: which keys a read phase
/// asks for (distinct, so that a cold phase never reads a key it already brought in).
pub fn distinct_sample(seed: u64, count: usize, below: u64) -> Vec<u64> {
    let count = count.min(usize::try_from(below).unwrap_or(usize::MAX));
    let mut random = SplitMix64(seed);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let n = random.next() % below;
        if seen.insert(n) {
            out.push(n);
        }
    }
    out
}

/// SplitMix64: a small, fast, seeded generator (no dependency, the same on every platform).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
