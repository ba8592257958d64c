//! Where the core reads the decisions it no longer holds in memory (core/PROTOCOL.md, "What a
//! node holds in memory").
//!
//! A node keeps in memory only what is in flight: open records (a promise, an accepted value)
//! and the decisions it learned whose write is not durable yet. Every other decision is read,
//! synchronously and read-only, from the driver's storage through [`DecidedKeys`]. The core
//! never writes through it (its writes are [`Output::Persist`](crate::Output::Persist)s), and
//! it never asks it for a decision whose write it has not seen reported durable, so a store
//! that shows every write the driver reported durable is all the core needs.
//!
//! Why a synchronous lookup rather than an output that asks the driver to load a key and an
//! input that brings it back: a write-once key's decision never changes once stored, so a
//! read cannot race a write of the same record; the core's handlers stay one step each (no
//! parked Prepare or Accept waiting for a load, no new interleavings to check); and the
//! deterministic simulator drives the same code with its own disk image. A read costs the
//! driver a point lookup in its database (its page cache bounds the memory).

use std::sync::{Arc, Mutex, MutexGuard};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::storage::{DurableKey, Recovered};
use crate::types::{Key, Proposal};

/// A decision's record could not be read: damaged on disk, or the disk failed the read. The
/// node treats the key as it treats a record found damaged at a restart: it abstains (no
/// promise, no accept, no answer to a read's question) until it learns the decision again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// One decision as the store holds it: its number in the order this node learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub seq: u64,
    pub key: Key,
    pub chosen: Proposal,
}

/// How much one page of decisions may hold: it ends before an entry once `keys_max` entries
/// are listed, or once the keys and values listed reach `bytes_max` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    pub keys_max: usize,
    pub bytes_max: usize,
}

impl PageLimit {
    /// Whether a page with `entries` entries and `bytes` bytes takes no more.
    pub fn full(&self, entries: usize, bytes: usize) -> bool {
        entries >= self.keys_max || bytes >= self.bytes_max
    }

    /// The bytes one entry counts for.
    pub fn bytes_of(key: &Key, chosen: &Proposal) -> usize {
        key.as_str().len() + chosen.value.len()
    }
}

/// The decisions a node's storage holds, read-only. Implemented by the real node's storage and
/// by [`DiskImage`] (the simulator's disk, and tests).
pub trait DecidedKeys: Send {
    /// The decision stored for `key`, with its number; `None` if the key has no decision here.
    fn decision(&self, key: &Key) -> Result<Option<(u64, Proposal)>, Unreadable>;

    /// The decisions numbered after `after`, in their order, one page of them.
    fn decisions_after(&self, after: u64, page: PageLimit) -> Result<Vec<Decision>, Unreadable>;

    /// The decisions of the keys after `after` (from the first key if `None`), in key order,
    /// one page of them, and whether no decided key follows the page.
    fn decisions_from(
        &self,
        after: Option<&Key>,
        page: PageLimit,
    ) -> Result<(Vec<Decision>, bool), Unreadable>;
}

/// A store shared with others (the real node reads its decisions for GETs too).
impl<T: DecidedKeys + Sync + ?Sized> DecidedKeys for Arc<T> {
    fn decision(&self, key: &Key) -> Result<Option<(u64, Proposal)>, Unreadable> {
        self.as_ref().decision(key)
    }

    fn decisions_after(&self, after: u64, page: PageLimit) -> Result<Vec<Decision>, Unreadable> {
        self.as_ref().decisions_after(after, page)
    }

    fn decisions_from(
        &self,
        after: Option<&Key>,
        page: PageLimit,
    ) -> Result<(Vec<Decision>, bool), Unreadable> {
        self.as_ref().decisions_from(after, page)
    }
}

/// A whole disk as a [`Recovered`] image, shared between the driver that applies the durable
/// writes to it and the node that reads its decisions: the simulator's disk, and tests'. Reads
/// may be made to fail at random ([`DiskImage::fail_reads`]), from a seed, so that a simulated
/// node exercises its abstention on unreadable records.
#[derive(Clone)]
pub struct DiskImage {
    inner: Arc<Mutex<ImageState>>,
}

struct ImageState {
    image: Recovered,
    /// Reads fail with this probability (per mille), drawn from `rng`.
    failing_permille: u32,
    rng: ChaCha8Rng,
    failed_reads: u64,
}

impl DiskImage {
    pub fn new(image: Recovered) -> DiskImage {
        DiskImage {
            inner: Arc::new(Mutex::new(ImageState {
                image,
                failing_permille: 0,
                rng: ChaCha8Rng::seed_from_u64(0),
                failed_reads: 0,
            })),
        }
    }

    /// The image, to read or to apply durable writes to.
    pub fn lock(&self) -> ImageGuard<'_> {
        ImageGuard(self.state())
    }

    /// From now on a read of a decision fails with probability `permille`/1000, drawn from
    /// `seed` (0: never).
    pub fn fail_reads(&self, permille: u32, seed: u64) {
        let mut s = self.state();
        s.failing_permille = permille.min(1000);
        s.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// How many reads were made to fail.
    pub fn failed_reads(&self) -> u64 {
        self.state().failed_reads
    }

    fn state(&self) -> MutexGuard<'_, ImageState> {
        // A panic elsewhere while holding the lock leaves a consistent image (every apply is
        // one op at a time): keep reading it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The image for one read, or `Unreadable` if this read is drawn to fail.
    fn read(&self) -> Result<MutexGuard<'_, ImageState>, Unreadable> {
        let mut s = self.state();
        if s.failing_permille > 0 && s.rng.random_range(0..1000) < s.failing_permille {
            s.failed_reads += 1;
            return Err(Unreadable);
        }
        Ok(s)
    }
}

/// The image of a [`DiskImage`], locked.
pub struct ImageGuard<'a>(MutexGuard<'a, ImageState>);

impl std::ops::Deref for ImageGuard<'_> {
    type Target = Recovered;
    fn deref(&self) -> &Recovered {
        &self.0.image
    }
}

impl std::ops::DerefMut for ImageGuard<'_> {
    fn deref_mut(&mut self) -> &mut Recovered {
        &mut self.0.image
    }
}

impl DecidedKeys for DiskImage {
    fn decision(&self, key: &Key) -> Result<Option<(u64, Proposal)>, Unreadable> {
        let s = self.read()?;
        if s.image.damaged.contains(key) {
            return Err(Unreadable);
        }
        Ok(match s.image.keys.get(key) {
            Some(DurableKey::Stored { chosen, seq }) => Some((*seq, chosen.clone())),
            _ => None,
        })
    }

    fn decisions_after(&self, after: u64, page: PageLimit) -> Result<Vec<Decision>, Unreadable> {
        let s = self.read()?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (&seq, key) in s.image.decision_order.range(after.saturating_add(1)..) {
            if page.full(out.len(), bytes) {
                break;
            }
            let Some(DurableKey::Stored { chosen, .. }) = s.image.keys.get(key) else {
                // Damaged since: its decision is learned again under a new number.
                continue;
            };
            bytes += PageLimit::bytes_of(key, chosen);
            out.push(Decision {
                seq,
                key: key.clone(),
                chosen: chosen.clone(),
            });
        }
        Ok(out)
    }

    fn decisions_from(
        &self,
        after: Option<&Key>,
        page: PageLimit,
    ) -> Result<(Vec<Decision>, bool), Unreadable> {
        use std::ops::Bound;
        let s = self.read()?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (key, state) in s.image.keys.range::<Key, _>((from, Bound::Unbounded)) {
            let DurableKey::Stored { chosen, seq } = state else {
                continue;
            };
            if page.full(out.len(), bytes) {
                return Ok((out, false));
            }
            bytes += PageLimit::bytes_of(key, chosen);
            out.push(Decision {
                seq: *seq,
                key: key.clone(),
                chosen: chosen.clone(),
            });
        }
        Ok((out, true))
    }
}
