//! Property tests of the wire format (`wire.rs`): every message the core can build survives a
//! round trip; any bytes at all decode to valid messages or to an error, never a panic; and a
//! frame that claims more than the bounds allow is refused without the memory it claims ever
//! being allocated.

mod strategies;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use replicator_core::wire::{
    self, BATCH_FRAME_BYTES, Batch, FRAME_BYTES_MAX, MESSAGES_PER_FRAME_MAX, WIRE_VERSION,
    WireError,
};
use replicator_core::*;
use strategies::*;

// ------------------------------------------------------------------ allocation tracking
//
// A peer controls every length prefix in a frame. The bound that matters is on what decoding
// allocates, so this test binary counts it: the largest single allocation made on the current
// thread while `largest_allocation` runs, and the most memory held at once (tests run on
// threads of their own, so they do not see each other's allocations).

struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated and not freed since tracking started, and their peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Records an allocation of `size` bytes that replaces `freed` bytes.
fn track(size: usize, freed: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + size as isize - freed as isize);
                let _ = PEAK.try_with(|p| p.set(p.get().max(live.get())));
            });
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the tracking only reads
// the requested sizes into thread-locals that never allocate (const-initialised `Cell`s).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(0, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let (out, largest, _) = allocations(f);
    (out, largest)
}

/// Runs `f` and returns its result with the largest allocation it made on this thread and
/// the most memory it held at once.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|l| l.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    let peak = PEAK.with(|p| p.get()).max(0) as usize;
    (out, LARGEST.with(|l| l.get()), peak)
}

/// No single allocation made while decoding a frame exceeds the frame limit, whatever its
/// length prefixes claim: strings are read straight from the frame (so never longer than it),
/// sequences are preallocated at most `SEQUENCE_PREALLOCATION_MAX`.
const ALLOCATION_MAX: usize = FRAME_BYTES_MAX;

/// What a string's claim past the frame's end costs: it is an error before anything is
/// allocated, so only the error's text.
const REFUSAL_ALLOCATION_MAX: usize = 4096;

/// What a sequence's claim costs, whatever it is: bincode's serde path hands the length to
/// serde unchecked, and serde preallocates at most 1 MiB for it (its "cautious" size hint);
/// beyond that a sequence grows only with elements actually read (and bincode's limit, which
/// counts them, stops it: see `the_most_amplifying_frame_is_decoded_within_a_bounded_memory`).
const SEQUENCE_PREALLOCATION_MAX: usize = 1 << 20;

// ------------------------------------------------------------------ helpers

/// A message re-encoded and decoded again is itself: whatever decoding produced is a message
/// the codec can carry, not a half-built value.
fn is_canonical(msg: &Message) -> bool {
    wire::decode(&wire::encode(msg)).as_ref() == Ok(msg)
}

/// A frame's messages, after its version byte and its (empty) table of node ids: what frames
/// of messages without node ids can be spliced from.
fn messages_of(frame: &[u8]) -> &[u8] {
    assert_eq!(frame[1], 0, "a frame without node ids");
    &frame[2..]
}

fn leave_check(seq: u64) -> Message {
    Message::LeaveCheck { seq }
}

/// The bincode varint of `n` (standard config): one byte below 251, else a marker and the
/// little-endian integer.
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [vec![251], (n as u16).to_le_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![252], (n as u32).to_le_bytes().to_vec()].concat(),
        _ => [vec![253], n.to_le_bytes().to_vec()].concat(),
    }
}

// ------------------------------------------------------------------ strategies

/// The strategies are what the round-trip properties are worth: they must reach every
/// variant of every enum that crosses the wire. (A new variant does not compile in
/// `strategies::variants_in` until it is named, and then fails here until a strategy builds it.)
#[test]
fn the_strategies_reach_every_variant_of_every_wire_enum() {
    let mut runner = TestRunner::deterministic();
    let strategy = arb_message();
    let mut seen = BTreeSet::new();
    for _ in 0..4000 {
        let msg = strategy.new_tree(&mut runner).expect("a value").current();
        seen.extend(variants_in(&msg));
    }
    let missing: Vec<String> = every_variant()
        .into_iter()
        .filter(|v| !seen.contains(v))
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(msg in arb_message()) {
        let frame = wire::encode(&msg);
        prop_assert_eq!(frame[0], WIRE_VERSION);
        prop_assert!(frame.len() <= FRAME_BYTES_MAX);
        prop_assert_eq!(wire::decode(&frame), Ok(msg.clone()));
        prop_assert_eq!(wire::decode_frame(&frame), Ok(vec![msg]));
    }

    /// Storage records use the same bounded codec (`encode_record`): a record round-trips,
    /// and a record followed by anything is refused (a torn or padded write is not silently
    /// read as a shorter record).
    #[test]
    fn records_round_trip_and_refuse_trailing_bytes(
        record in arb_durable_key(),
        members in arb_membership(),
        extra in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let bytes = wire::encode_record(&record).expect("encodes");
        prop_assert_eq!(wire::decode_record::<DurableKey>(&bytes), Ok(record));
        let mut padded = bytes.clone();
        padded.extend(&extra);
        prop_assert_eq!(
            wire::decode_record::<DurableKey>(&padded),
            Err(WireError::Trailing(extra.len()))
        );
        // A membership's digest is derived, not carried: it comes back equal.
        let bytes = wire::encode_record(&members).expect("encodes");
        let back: Membership = wire::decode_record(&bytes).expect("decodes");
        prop_assert_eq!(back.digest(), members.digest());
        prop_assert_eq!(back, members);
    }

    #[test]
    fn any_bytes_decode_to_valid_messages_or_an_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        // As they come (mostly a wrong version), and behind the right version byte.
        let mut framed = vec![WIRE_VERSION];
        framed.extend(&bytes);
        for frame in [&bytes, &framed] {
            if let Ok(msgs) = wire::decode_frame(frame) {
                prop_assert!(!msgs.is_empty() && msgs.len() <= MESSAGES_PER_FRAME_MAX);
                for m in &msgs {
                    prop_assert!(is_canonical(m), "{:?}", m);
                }
            }
            if let Ok(m) = wire::decode(frame) {
                prop_assert!(is_canonical(&m), "{:?}", m);
            }
        }
    }

    #[test]
    fn a_flipped_bit_yields_an_error_or_valid_messages(msg in arb_message(), bit in any::<usize>()) {
        let mut frame = wire::encode(&msg);
        let bit = bit % (frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        match wire::decode_frame(&frame) {
            Ok(msgs) => {
                prop_assert!(bit >= 8, "a flipped version byte decoded");
                for m in &msgs {
                    prop_assert!(is_canonical(m), "{:?}", m);
                }
            }
            Err(WireError::Version(v)) => prop_assert_eq!(v, frame[0]),
            Err(_) => prop_assert!(bit >= 8, "a bad version must be named as such"),
        }
    }

    /// The encoding is self-delimiting: a frame cut anywhere inside its one message never
    /// decodes (to a shorter message, say), it is an error.
    #[test]
    fn a_truncated_frame_is_an_error(msg in arb_message(), cut in 1usize..64) {
        let frame = wire::encode(&msg);
        let cut = cut.min(frame.len() - 1);
        prop_assert!(wire::decode(&frame[..frame.len() - cut]).is_err());
        prop_assert!(wire::decode_frame(&frame[..frame.len() - cut]).is_err());
    }
}

proptest! {
    // Heavier cases (many messages each, or a frame's worth of memory): fewer of them.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_batch_round_trips_in_order(msgs in proptest::collection::vec(arb_message(), 1..64)) {
        let mut batch = Batch::default();
        for m in &msgs {
            batch.push(m);
        }
        let mut decoded = Vec::new();
        for frame in batch.into_frames() {
            prop_assert!(frame.len() <= FRAME_BYTES_MAX);
            decoded.extend(wire::decode_frame(&frame).expect("own batch decodes"));
        }
        prop_assert_eq!(decoded, msgs);
    }

    /// A cut inside a message is an error; a cut between two leaves the messages before it
    /// (the transport's length prefix, not the frame, says where a frame ends).
    #[test]
    fn a_cut_batch_yields_an_error_or_a_prefix(
        msgs in proptest::collection::vec(arb_message(), 2..16),
        cut in 1usize..8,
    ) {
        let mut batch = Batch::default();
        for m in &msgs {
            batch.push(m);
        }
        let frames = batch.into_frames();
        prop_assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        let cut = cut.min(frame.len() - 2);
        if let Ok(decoded) = wire::decode_frame(&frame[..frame.len() - cut]) {
            prop_assert!(decoded.len() < msgs.len());
            prop_assert_eq!(&decoded[..], &msgs[..decoded.len()]);
        }
    }

    /// Whatever length a prefix claims, decoding allocates no more than the frame limit at
    /// once, and what it yields (if anything) is a valid message.
    #[test]
    fn a_claimed_length_never_allocates_past_the_frame_limit(
        msg in arb_message(),
        at in any::<usize>(),
        claim in prop_oneof![Just(u64::MAX), 1u64 << 20..1u64 << 40, Just(FRAME_BYTES_MAX as u64)],
    ) {
        // Splice a big varint in at any byte of a valid frame: where it lands on a length
        // prefix, the frame claims a huge collection.
        let frame = wire::encode(&msg);
        let at = 1 + at % (frame.len() - 1);
        let forged = [&frame[..at], &varint(claim)[..], &frame[at..]].concat();
        let (decoded, largest) = largest_allocation(|| wire::decode_frame(&forged));
        prop_assert!(
            largest <= ALLOCATION_MAX,
            "a frame of {} bytes allocated {} bytes at once", forged.len(), largest
        );
        if let Ok(msgs) = decoded {
            for m in &msgs {
                prop_assert!(is_canonical(m), "{:?}", m);
            }
        }
    }
}

// ------------------------------------------------------------------ the bounds, one by one

#[test]
fn a_frame_over_the_byte_limit_is_refused_before_it_is_read() {
    let mut frame = vec![0u8; FRAME_BYTES_MAX + 1];
    frame[0] = WIRE_VERSION;
    let (decoded, largest) = largest_allocation(|| wire::decode_frame(&frame));
    assert_eq!(decoded, Err(WireError::TooLarge(FRAME_BYTES_MAX + 1)));
    assert_eq!(largest, 0, "refused before anything was decoded");
    // At the limit itself the frame is read: whatever else is wrong with it, not its size.
    frame.truncate(FRAME_BYTES_MAX);
    assert_ne!(
        wire::decode_frame(&frame),
        Err(WireError::TooLarge(FRAME_BYTES_MAX))
    );
}

/// Each collection a peer can size, claimed far beyond the frame limit in a frame of a few
/// bytes: an error, and nothing near the claim allocated (at most serde's cautious
/// preallocation for a sequence, nothing for a string).
#[test]
fn every_collection_length_beyond_the_limit_is_refused_without_allocating_it() {
    let huge = varint(u64::MAX);
    let past_limit = varint(FRAME_BYTES_MAX as u64 + 1);
    // Message variant indices, in declaration order (wire.rs).
    let (request, relay, relay_reply, sync_page, catch_up_page, remove_check_reply, view) =
        (0u8, 2u8, 3u8, 5u8, 8u8, 13u8, 14u8);
    let accept = 1u8;
    let (seq, string) = (SEQUENCE_PREALLOCATION_MAX, REFUSAL_ALLOCATION_MAX);
    let mut frames: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    for len in [&huge, &past_limit] {
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            (
                "relay targets",
                [vec![relay, 1, b'a'], len.clone()].concat(),
                seq,
            ),
            (
                "relay reply responses",
                [vec![relay_reply, 1, b'a'], len.clone()].concat(),
                seq,
            ),
            (
                "sync page entries",
                [vec![sync_page], len.clone()].concat(),
                seq,
            ),
            (
                "catch-up page entries",
                [vec![catch_up_page], len.clone()].concat(),
                seq,
            ),
            // `node`: the table's first id.
            (
                "remove check reply nodes",
                [vec![remove_check_reply, 0], len.clone()].concat(),
                seq,
            ),
            (
                "view membership pairs",
                [vec![view], len.clone()].concat(),
                seq,
            ),
            // Request::Accept: the key's length.
            (
                "a key",
                [vec![request, accept], len.clone()].concat(),
                string,
            ),
        ];
        // A table of one node id, "n".
        for (name, body, max) in cases {
            frames.push((name, [vec![WIRE_VERSION, 1, 1, b'n'], body].concat(), max));
        }
        frames.push((
            "the node id table",
            [vec![WIRE_VERSION], len.clone()].concat(),
            seq,
        ));
        frames.push((
            "a node id of the table",
            [vec![WIRE_VERSION, 1], len.clone()].concat(),
            string,
        ));
    }
    for (name, frame, max) in frames {
        let (decoded, largest) = largest_allocation(|| wire::decode_frame(&frame));
        assert!(
            matches!(decoded, Err(WireError::Malformed(_))),
            "{name}: {decoded:?}"
        );
        assert!(
            largest <= max,
            "{name}: allocated {largest} bytes for a frame of {} bytes",
            frame.len()
        );
    }
}

/// A value's length within the limit but past the frame's end: an error once the bytes run
/// out, and (a value being a sequence to serde) at most serde's cautious preallocation of
/// 1 MiB behind it, not the claimed 4 MiB.
#[test]
fn a_value_longer_than_its_frame_is_refused_without_allocating_it() {
    let key = Key::from("k");
    let proposal = Proposal {
        p: ProposalId {
            coordinator: "c".into(),
            counter: 1,
        },
        request: None,
        value: Value::from("v"),
    };
    let msg = Message::Request(Request::Decide {
        key,
        chosen: proposal,
    });
    let frame = wire::encode(&msg);
    // The value's length prefix is the byte before its last byte ("v").
    let at = frame.len() - 2;
    assert_eq!(frame[at], 1);
    let claim = (FRAME_BYTES_MAX / 2) as u64;
    let forged = [&frame[..at], &varint(claim)[..], &frame[at + 1..]].concat();
    let (decoded, largest) = largest_allocation(|| wire::decode(&forged));
    assert!(
        matches!(decoded, Err(WireError::Malformed(_))),
        "{decoded:?}"
    );
    assert!(
        largest <= SEQUENCE_PREALLOCATION_MAX,
        "allocated {largest} bytes"
    );
}

/// The frame that amplifies most: a page of the smallest entries the wire allows (5 bytes
/// each, ~100 in memory with their shared ids), as many as the frame limit holds. bincode's
/// limit counts the decoded entries too, so decoding gives up once they outgrow the limit:
/// what a frame can make a node hold at once stays a small multiple of the frame limit
/// (measured: about 46 MiB for an 8 MiB frame), not twenty times the frame.
#[test]
fn the_most_amplifying_frame_is_decoded_within_a_bounded_memory() {
    let tiny = (
        Key::from(""),
        Proposal {
            p: ProposalId {
                coordinator: "".into(),
                counter: 0,
            },
            request: None,
            value: Value::from(""),
        },
    );
    let page = |n: usize| Message::CatchUpPage {
        entries: vec![tiny.clone(); n],
        last: 0,
        latest: 0,
    };
    // The first entry adds its coordinator to the frame's table of node ids; the others refer
    // to it by index.
    let per_entry = wire::encode(&page(2)).len() - wire::encode(&page(1)).len();
    assert_eq!(per_entry, 5);
    let frame = wire::encode(&page((FRAME_BYTES_MAX - 16) / per_entry));
    assert!(frame.len() <= FRAME_BYTES_MAX);
    let (decoded, _, peak) = allocations(|| wire::decode_frame(&frame));
    assert!(
        matches!(decoded, Err(WireError::Malformed(_))),
        "{:?}",
        decoded.map(|m| m.len())
    );
    assert!(
        peak <= 8 * FRAME_BYTES_MAX,
        "decoding a frame of {} bytes held {peak} bytes at once",
        frame.len()
    );
    // An eighth of it (1 MiB) is a valid message: the node then refuses it as longer than its
    // configured page.
    let frame = wire::encode(&page(FRAME_BYTES_MAX / 40));
    assert!(wire::decode_frame(&frame).is_ok());
}

#[test]
fn a_frame_over_the_message_limit_is_refused_whole() {
    let mut frame = vec![WIRE_VERSION, 0];
    let one = wire::encode(&leave_check(7));
    for _ in 0..MESSAGES_PER_FRAME_MAX + 1 {
        frame.extend(messages_of(&one));
    }
    assert_eq!(wire::decode_frame(&frame), Err(WireError::TooManyMessages));
    // One message fewer is fine.
    let fine = frame.len() - messages_of(&one).len();
    assert_eq!(
        wire::decode_frame(&frame[..fine]).map(|m| m.len()),
        Ok(MESSAGES_PER_FRAME_MAX)
    );
}

#[test]
fn a_frame_must_hold_a_message_of_this_version_and_decode_wants_exactly_one() {
    assert_eq!(wire::decode_frame(&[]), Err(WireError::Empty));
    assert_eq!(wire::decode_frame(&[WIRE_VERSION]), Err(WireError::Empty));
    // A table of node ids and no message.
    assert_eq!(
        wire::decode_frame(&[WIRE_VERSION, 0]),
        Err(WireError::Empty)
    );
    assert_eq!(
        wire::decode_frame(&[WIRE_VERSION, 1, 1, b'n']),
        Err(WireError::Empty)
    );
    let mut old = wire::encode(&leave_check(1));
    old[0] = WIRE_VERSION - 1;
    assert_eq!(
        wire::decode(&old),
        Err(WireError::Version(WIRE_VERSION - 1))
    );
    let mut two = wire::encode(&leave_check(1));
    two.extend(messages_of(&wire::encode(&leave_check(2))));
    assert_eq!(wire::decode(&two), Err(WireError::Messages(2)));
    assert_eq!(
        wire::decode_frame(&two),
        Ok(vec![leave_check(1), leave_check(2)])
    );
    // Bytes after a message that are not a message: the whole frame is refused.
    let mut junk = wire::encode(&leave_check(1));
    junk.push(0xff);
    assert!(matches!(
        wire::decode_frame(&junk),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn a_batch_starts_a_new_frame_at_its_bounds() {
    // Count: small messages fill a frame up to the message limit.
    let mut batch = Batch::default();
    for i in 0..MESSAGES_PER_FRAME_MAX + 1 {
        batch.push(&leave_check(i as u64));
    }
    let frames = batch.into_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(
        wire::decode_frame(&frames[0]).unwrap().len(),
        MESSAGES_PER_FRAME_MAX
    );
    assert_eq!(
        wire::decode_frame(&frames[1]).unwrap(),
        vec![leave_check(MESSAGES_PER_FRAME_MAX as u64)]
    );

    // Bytes: a frame past BATCH_FRAME_BYTES takes no more.
    let big = Message::Request(Request::Decide {
        key: "k".into(),
        chosen: Proposal {
            p: ProposalId {
                coordinator: "c".into(),
                counter: 1,
            },
            request: None,
            value: vec![7u8; BATCH_FRAME_BYTES].into(),
        },
    });
    let mut batch = Batch::default();
    batch.push(&big);
    batch.push(&leave_check(1));
    let frames = batch.into_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(wire::decode_frame(&frames[0]).unwrap(), vec![big]);
    assert_eq!(
        wire::decode_frame(&frames[1]).unwrap(),
        vec![leave_check(1)]
    );
}

// ------------------------------------------------------------------ the frame's node id table

/// A libp2p-like node id (52 characters), as the real network's are.
fn long_node(n: u8) -> NodeId {
    NodeId::new(format!(
        "12D3KooW{}",
        char::from(b'a' + n).to_string().repeat(44)
    ))
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A relay's answers name their nodes and the coordinator again and again: in the frame each
/// id's text is there once, whatever the number of messages and occurrences.
#[test]
fn each_node_id_is_written_once_per_frame() {
    let coordinator = long_node(0);
    let answer = |node: &NodeId| Response::Ballot {
        key: "k".into(),
        ballot: Ballot::FAST,
        proposal: Some(ProposalId {
            coordinator: coordinator.clone(),
            counter: 9,
        }),
        node: node.clone(),
        digest: Digest(1),
        answer: Answer::Accepted,
    };
    let members: Vec<NodeId> = (1..4).map(long_node).collect();
    let reply = Message::RelayReply {
        cluster: "c2".into(),
        responses: members.iter().map(answer).collect(),
    };
    let mut batch = Batch::default();
    for _ in 0..5 {
        batch.push(&reply);
    }
    let frames = batch.into_frames();
    assert_eq!(frames.len(), 1);
    for id in members.iter().chain([&coordinator]) {
        assert_eq!(occurrences(&frames[0], id.as_str().as_bytes()), 1, "{id}");
    }
    assert_eq!(wire::decode_frame(&frames[0]), Ok(vec![reply; 5]));
}

/// An index past the frame's table names no node: the frame is refused, nothing invented.
#[test]
fn a_node_id_index_past_the_table_is_refused() {
    let removed = |node: NodeId| Message::Removed { node };
    let frame = wire::encode(&removed(long_node(1)));
    // The version, a table of one id (its length and text), then Removed and the index 0.
    let index_at = frame.len() - 1;
    assert_eq!(frame[index_at], 0);
    let mut forged = frame.clone();
    forged[index_at] = 1;
    assert!(
        matches!(wire::decode_frame(&forged), Err(WireError::Malformed(e)) if e.contains("table")),
        "{:?}",
        wire::decode_frame(&forged)
    );
    assert_eq!(wire::decode(&frame), Ok(removed(long_node(1))));
}

/// Records on disk keep node ids as text: the table is the frame's, and the database format
/// does not depend on it.
#[test]
fn records_keep_node_ids_as_text() {
    let id = long_node(2);
    let as_text = wire::encode_record(&id.as_str().to_string()).expect("encodes");
    assert_eq!(wire::encode_record(&id).expect("encodes"), as_text);
    assert_eq!(wire::decode_record::<NodeId>(&as_text), Ok(id));
}
