//! Property tests of the wire format: any bytes decode to a message or an error, never a
//! panic; every message the core builds survives a round trip.

use proptest::prelude::*;
use replicator_core::wire::{self, FRAME_BYTES_MAX, WIRE_VERSION};
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
    fn truncated_frames_are_errors(msg in arb_message(), cut in 1usize..64) {
        let frame = wire::encode(&msg);
        let cut = cut.min(frame.len() - 1);
        prop_assert!(wire::decode(&frame[..frame.len() - cut]).is_err());
    }
}
