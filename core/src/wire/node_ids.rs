//! A frame's table of node ids: each distinct node id of a frame is written once, at the
//! frame's start, and every occurrence in its messages is the id's index in that table (a
//! varint, one byte for the first 128 ids).
//!
//! Node ids are 52-character libp2p peer ids, and a frame repeats a few of them in every
//! message: the answering node, the proposal's coordinator, a relay's targets, the members of
//! a view. Written as text they were most of a frame's bytes, and each occurrence was a string
//! to check and an allocation to make on the receiving side; with the table an occurrence is a
//! byte, and decoding one clones an id of the table.
//!
//! [`NodeId`]'s serde asks this module whether a frame is being encoded or decoded on this
//! thread, and only then uses the table; every other encoding (records on disk, reports)
//! keeps the plain string. The scopes are entered by `wire.rs` alone, around bincode calls
//! that cannot re-enter them; leaving a scope (even by unwinding) clears it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::types::NodeId;

/// Up to this many ids a table is searched in order (a hash and pointer compare each); past
/// it, through a map.
const LINEAR_SEARCH_MAX: usize = 16;

/// The node ids of a frame being built, in the order they first occurred.
#[derive(Debug, Default)]
pub(crate) struct EncodingTable {
    ids: Vec<NodeId>,
    /// Built once `ids` outgrows [`LINEAR_SEARCH_MAX`].
    index: BTreeMap<NodeId, u32>,
    /// The bytes the table will take in the frame (lengths and texts, not its own count).
    bytes: usize,
}

impl EncodingTable {
    fn index_of(&mut self, id: &NodeId) -> u32 {
        let found = if self.ids.len() <= LINEAR_SEARCH_MAX {
            self.ids.iter().position(|known| known == id).map(as_index)
        } else {
            if self.index.is_empty() {
                self.index = (self.ids.iter().cloned())
                    .zip((0..).map(as_index))
                    .collect();
            }
            self.index.get(id).copied()
        };
        if let Some(index) = found {
            return index;
        }
        let index = as_index(self.ids.len());
        self.ids.push(id.clone());
        if !self.index.is_empty() {
            self.index.insert(id.clone(), index);
        }
        self.bytes += varint_len(id.as_str().len()) + id.as_str().len();
        index
    }

    pub(crate) fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The bytes the table adds to its frame (its count included).
    pub(crate) fn encoded_len(&self) -> usize {
        varint_len(self.ids.len()) + self.bytes
    }
}

/// A frame holds far fewer ids than `u32::MAX` (it is at most `FRAME_BYTES_MAX` long and an
/// id takes at least a byte).
fn as_index(position: usize) -> u32 {
    u32::try_from(position).expect("a frame's ids fit in u32")
}

/// The length of bincode's varint encoding of `n` (its standard configuration).
fn varint_len(n: usize) -> usize {
    match n {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

enum Scope {
    None,
    Encoding(EncodingTable),
    Decoding(Vec<NodeId>),
}

thread_local! {
    static SCOPE: RefCell<Scope> = const { RefCell::new(Scope::None) };
}

/// Clears the scope when dropped, and hands an encoding table back.
struct Leave<'a>(Option<&'a mut EncodingTable>);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let left = SCOPE.with_borrow_mut(|scope| std::mem::replace(scope, Scope::None));
        if let (Some(table), Scope::Encoding(used)) = (self.0.take(), left) {
            *table = used;
        }
    }
}

/// Runs `encode` with `table` as the table node ids are added to.
pub(crate) fn encoding<R>(table: &mut EncodingTable, encode: impl FnOnce() -> R) -> R {
    SCOPE.with_borrow_mut(|scope| *scope = Scope::Encoding(std::mem::take(table)));
    let _leave = Leave(Some(table));
    encode()
}

/// Runs `decode` with `ids` as the table node id indices refer to.
pub(crate) fn decoding_with<R>(ids: Vec<NodeId>, decode: impl FnOnce() -> R) -> R {
    SCOPE.with_borrow_mut(|scope| *scope = Scope::Decoding(ids));
    let _leave = Leave(None);
    decode()
}

/// `id`'s index in the table of the frame being encoded on this thread (added if new), or
/// `None` outside a frame.
pub(crate) fn index_while_encoding(id: &NodeId) -> Option<u32> {
    SCOPE.with_borrow_mut(|scope| match scope {
        Scope::Encoding(table) => Some(table.index_of(id)),
        _ => None,
    })
}

/// Whether a frame's messages are being decoded on this thread.
pub(crate) fn decoding() -> bool {
    SCOPE.with_borrow(|scope| matches!(scope, Scope::Decoding(_)))
}

/// The id at `index` in the table of the frame being decoded.
pub(crate) fn lookup(index: u32) -> Result<NodeId, String> {
    SCOPE.with_borrow(|scope| match scope {
        Scope::Decoding(ids) => ids.get(index as usize).cloned().ok_or_else(|| {
            format!(
                "node id {index} is not in the frame's table of {} ids",
                ids.len()
            )
        }),
        _ => Err("a node id index outside a frame".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> NodeId {
        NodeId::new(format!("node-{n}"))
    }

    #[test]
    fn each_distinct_id_gets_the_next_index_and_keeps_it_past_the_linear_search() {
        let mut table = EncodingTable::default();
        for round in 0..2 {
            for n in 0..3 * LINEAR_SEARCH_MAX {
                assert_eq!(table.index_of(&id(n)), n as u32, "round {round}");
            }
        }
        assert_eq!(table.ids().len(), 3 * LINEAR_SEARCH_MAX);
        let texts: usize = table.ids().iter().map(|i| 1 + i.as_str().len()).sum();
        assert_eq!(table.encoded_len(), 1 + texts);
    }

    #[test]
    fn ids_are_indices_only_inside_a_scope_and_the_scope_ends_with_its_call() {
        let mut table = EncodingTable::default();
        assert_eq!(index_while_encoding(&id(1)), None);
        let inside = encoding(&mut table, || {
            (index_while_encoding(&id(7)), index_while_encoding(&id(7)))
        });
        assert_eq!(inside, (Some(0), Some(0)));
        assert_eq!(table.ids(), &[id(7)][..], "the table came back with its id");
        assert_eq!(index_while_encoding(&id(1)), None);
        assert!(!decoding());
        let looked_up = decoding_with(vec![id(3)], || (decoding(), lookup(0), lookup(1)));
        assert!(looked_up.0);
        assert_eq!(looked_up.1, Ok(id(3)));
        assert!(looked_up.2.is_err(), "an index past the table is an error");
        assert!(!decoding());
        let unwound = std::panic::catch_unwind(|| decoding_with(vec![], || panic!("bad")));
        assert!(unwound.is_err());
        assert!(!decoding(), "a panic inside leaves no scope behind");
    }
}
