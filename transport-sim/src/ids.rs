//! Fast maps and sets keyed by ids, for lookups only.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// A fast hasher for maps keyed by ids, which already carry a well-mixed hash (their `Hash`
/// writes it as one `u64`). Such maps are never iterated, so their order doesn't matter.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// A map keyed by ids, hashed with [`IdHasher`]: for lookups only, never iterated.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A set of ids, hashed with [`IdHasher`]: for lookups only, never iterated.
pub type IdSet<K> = std::collections::HashSet<K, BuildHasherDefault<IdHasher>>;
