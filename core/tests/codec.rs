//! Property tests of the wire format: any bytes decode to a message or an error, never a
//! panic; every message the core builds survives a round trip.

use proptest::prelude::*;
use replicator_core::wire::{
    self, BATCH_FRAME_BYTES, Batch, FRAME_BYTES_MAX, MESSAGES_PER_FRAME_MAX, WIRE_VERSION,
    WireError,
};
use replicator_core::*;

fn arb_id() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,12}"
}

fn arb_proposal() -> impl Strategy<Value = ProposalId> {
    (arb_id(), any::<u64>()).prop_map(|(c, counter)| ProposalId {
        coordinator: c.into(),
        counter,
    })
}

fn arb_vote() -> impl Strategy<Value = Vote> {
    prop_oneof![
        Just(Vote::Granted),
        Just(Vote::Committed),
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of(arb_proposal()),
        )
            .prop_map(|(stored, holder)| Vote::Denied {
                reason: DenyReason::Busy,
                stored: stored.map(Value::from),
                holder,
            }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            arb_proposal(),
            arb_id(),
            proptest::collection::vec(any::<u8>(), 0..256),
            any::<u64>()
        )
            .prop_map(
                |(p, key, value, digest)| Message::Request(Request::Reserve {
                    p,
                    key: key.into(),
                    value: value.into(),
                    digest: Digest(digest),
                })
            ),
        (arb_proposal(), arb_id())
            .prop_map(|(p, key)| Message::Request(Request::Status { p, key: key.into() })),
        (arb_proposal(), arb_id(), arb_id(), arb_vote()).prop_map(|(p, key, node, vote)| {
            Message::Response(Response::Vote {
                p,
                key: key.into(),
                node: node.into(),
                vote,
            })
        }),
        (
            arb_id(),
            proptest::collection::vec(arb_id(), 0..8),
            arb_proposal(),
            arb_id()
        )
            .prop_map(|(cluster, targets, p, key)| Message::Relay {
                cluster: cluster.into(),
                targets: targets.into_iter().map(NodeId::from).collect(),
                request: Request::Commit { p, key: key.into() },
            }),
        proptest::option::of(arb_id()).prop_map(|after| Message::SyncRequest {
            after: after.map(Key::from)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&bytes);
        let mut framed = vec![WIRE_VERSION];
        framed.extend(&bytes);
        let _ = wire::decode(&framed);
    }

    #[test]
    fn messages_round_trip(msg in arb_message()) {
        let frame = wire::encode(&msg);
        prop_assert!(frame.len() <= FRAME_BYTES_MAX);
        prop_assert_eq!(wire::decode(&frame), Ok(msg));
    }

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

    #[test]
    fn a_cut_batch_yields_an_error_or_a_prefix(msgs in proptest::collection::vec(arb_message(), 2..16), cut in 1usize..8) {
        let mut batch = Batch::default();
        for m in &msgs {
            batch.push(m);
        }
        let frames = batch.into_frames();
        prop_assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        let cut = cut.min(frame.len() - 2);
        // A cut inside a message is an error; a cut between two leaves the messages before it
        // (the transport's length prefix, not the frame, says where a frame ends).
        if let Ok(decoded) = wire::decode_frame(&frame[..frame.len() - cut]) {
            prop_assert!(decoded.len() < msgs.len());
            prop_assert_eq!(&decoded[..], &msgs[..decoded.len()]);
        }
    }

    #[test]
    fn truncated_frames_are_errors(msg in arb_message(), cut in 1usize..64) {
        let frame = wire::encode(&msg);
        let cut = cut.min(frame.len() - 1);
        prop_assert!(wire::decode(&frame[..frame.len() - cut]).is_err());
    }
}

fn probe(sent: u64) -> Message {
    Message::Probe {
        sent: Time::from_micros(sent),
    }
}

#[test]
fn a_batch_starts_a_new_frame_at_its_bounds() {
    // Count: small messages fill a frame up to the message limit.
    let mut batch = Batch::default();
    for i in 0..MESSAGES_PER_FRAME_MAX + 1 {
        batch.push(&probe(i as u64));
    }
    let frames = batch.into_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(
        wire::decode_frame(&frames[0]).unwrap().len(),
        MESSAGES_PER_FRAME_MAX
    );
    assert_eq!(
        wire::decode_frame(&frames[1]).unwrap(),
        vec![probe(MESSAGES_PER_FRAME_MAX as u64)]
    );

    // Bytes: a frame past BATCH_FRAME_BYTES takes no more.
    let big = Message::Request(Request::Reserve {
        p: ProposalId {
            coordinator: "c".into(),
            counter: 1,
        },
        key: "k".into(),
        value: vec![7u8; BATCH_FRAME_BYTES].into(),
        digest: replicator_core::Digest(1),
    });
    let mut batch = Batch::default();
    batch.push(&big);
    batch.push(&probe(1));
    let frames = batch.into_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(wire::decode_frame(&frames[1]).unwrap(), vec![probe(1)]);
}

#[test]
fn a_frame_over_the_message_limit_is_refused_whole() {
    let mut frame = vec![WIRE_VERSION];
    let one = wire::encode(&probe(0));
    for _ in 0..MESSAGES_PER_FRAME_MAX + 1 {
        frame.extend(&one[1..]);
    }
    assert_eq!(wire::decode_frame(&frame), Err(WireError::TooManyMessages));
    // One message fewer is fine.
    let fine = frame.len() - (one.len() - 1);
    assert_eq!(
        wire::decode_frame(&frame[..fine]).map(|m| m.len()),
        Ok(MESSAGES_PER_FRAME_MAX)
    );
}

#[test]
fn a_frame_must_hold_a_message_and_decode_wants_exactly_one() {
    assert_eq!(wire::decode_frame(&[WIRE_VERSION]), Err(WireError::Empty));
    let mut two = wire::encode(&probe(1));
    two.extend(&wire::encode(&probe(2))[1..]);
    assert_eq!(wire::decode(&two), Err(WireError::Messages(2)));
    assert_eq!(wire::decode_frame(&two), Ok(vec![probe(1), probe(2)]));
}
