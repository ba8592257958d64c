//! Proptest strategies for every type that crosses the wire, shared by the codec tests (which
//! round-trip them) and the adversarial tests (which feed them to a node as a lying peer).
//! Ballots are drawn well formed or not, rounds small or beyond `ROUND_MAX`: the wire carries
//! whatever a peer sends, the node judges it.
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use replicator_core::wire::SyncRefusal;
use replicator_core::*;

/// The names the adversarial tests' nodes use (their members, keys and a stranger), so that
/// generated messages often name real nodes and keys; otherwise short random ids.
pub const VOCABULARY: [&str; 9] = ["k", "s", "o", "c1", "c2", "c3", "d1", "d2", "x9"];

pub fn arb_id() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => proptest::sample::select(&VOCABULARY[..]).prop_map(String::from),
        1 => "[a-z0-9]{1,6}",
    ]
}

/// Any text, empty and non-ASCII included (keys are checked by the node, not the codec).
pub fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => arb_id(), 1 => "\\PC{0,24}"]
}

pub fn arb_node() -> impl Strategy<Value = NodeId> {
    arb_id().prop_map(NodeId::from)
}

pub fn arb_cluster() -> impl Strategy<Value = ClusterId> {
    proptest::sample::select(&["c", "d", "e"][..]).prop_map(ClusterId::from)
}

pub fn arb_key() -> impl Strategy<Value = Key> {
    arb_text().prop_map(Key::from)
}

pub fn arb_value() -> impl Strategy<Value = Value> {
    vec(any::<u8>(), 0..48).prop_map(Value::from)
}

pub fn arb_round() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => Just(ROUND_MAX),
        1 => Just(ROUND_MAX + 1),
        1 => any::<u64>(),
    ]
}

/// Mostly well formed (the fast round, or a classic round with its node), sometimes not.
pub fn arb_ballot() -> impl Strategy<Value = Ballot> {
    prop_oneof![
        2 => Just(Ballot::FAST),
        4 => (1u64..6, arb_node()).prop_map(|(r, n)| Ballot::classic(r, n)),
        1 => (arb_round(), option::of(arb_node())).prop_map(|(round, node)| Ballot { round, node }),
    ]
}

pub fn arb_proposal_id() -> impl Strategy<Value = ProposalId> {
    (arb_node(), prop_oneof![0u64..4, any::<u64>()]).prop_map(|(coordinator, counter)| ProposalId {
        coordinator,
        counter,
    })
}

pub fn arb_proposal() -> impl Strategy<Value = Proposal> {
    (
        arb_proposal_id(),
        option::of(arb_text().prop_map(RequestId::from)),
        arb_value(),
    )
        .prop_map(|(p, request, value)| Proposal { p, request, value })
}

pub fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<u64>().prop_map(Digest)
}

pub fn arb_membership() -> impl Strategy<Value = Membership> {
    vec((arb_cluster(), arb_node()), 0..8).prop_map(Membership::from_pairs)
}

pub fn arb_refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::MembershipChanged),
        Just(RefuseReason::NotReady),
        Just(RefuseReason::Leaving),
        Just(RefuseReason::Departed),
        Just(RefuseReason::Overloaded),
        Just(RefuseReason::Abstaining),
    ]
}

pub fn arb_answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        option::of((arb_ballot(), arb_proposal()))
            .prop_map(|accepted| Answer::Promise { accepted }),
        Just(Answer::Accepted),
        (arb_ballot(), option::of(arb_proposal_id()), any::<bool>()).prop_map(
            |(promised, holder, folded)| Answer::Nack {
                promised,
                holder,
                folded,
            }
        ),
        arb_proposal().prop_map(|chosen| Answer::Stored { chosen }),
        arb_refuse_reason().prop_map(|reason| Answer::Refused { reason }),
    ]
}

pub fn arb_query_state() -> impl Strategy<Value = QueryState> {
    prop_oneof![
        arb_proposal().prop_map(QueryState::Stored),
        (arb_ballot(), arb_proposal()).prop_map(|(b, a)| QueryState::Accepted(b, a)),
        Just(QueryState::Nothing),
        arb_refuse_reason().prop_map(QueryState::Refused),
    ]
}

pub fn arb_read_state() -> impl Strategy<Value = ReadState> {
    prop_oneof![
        arb_value().prop_map(ReadState::Stored),
        Just(ReadState::Undecided),
        Just(ReadState::Free),
        Just(ReadState::NotReady),
    ]
}

pub fn arb_durable_key() -> impl Strategy<Value = DurableKey> {
    prop_oneof![
        (arb_ballot(), option::of((arb_ballot(), arb_proposal())))
            .prop_map(|(promised, accepted)| DurableKey::Open { promised, accepted }),
        (arb_proposal(), any::<u64>()).prop_map(|(chosen, seq)| DurableKey::Stored { chosen, seq }),
    ]
}

pub fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (arb_key(), arb_ballot(), arb_digest()).prop_map(|(key, ballot, digest)| {
            Request::Prepare {
                key,
                ballot,
                digest,
            }
        }),
        (arb_key(), arb_ballot(), arb_proposal(), arb_digest()).prop_map(
            |(key, ballot, proposal, digest)| Request::Accept {
                key,
                ballot,
                proposal,
                digest,
            }
        ),
        (arb_key(), arb_proposal()).prop_map(|(key, chosen)| Request::Decide { key, chosen }),
        (arb_key(), any::<u64>(), arb_digest()).prop_map(|(key, tag, digest)| Request::Query {
            key,
            tag,
            digest
        }),
        (arb_key(), any::<u64>()).prop_map(|(key, tag)| Request::Read { key, tag }),
    ]
}

pub fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            arb_key(),
            arb_ballot(),
            option::of(arb_proposal_id()),
            arb_node(),
            arb_digest(),
            arb_answer(),
        )
            .prop_map(|(key, ballot, proposal, node, digest, answer)| {
                Response::Ballot {
                    key,
                    ballot,
                    proposal,
                    node,
                    digest,
                    answer,
                }
            }),
        (arb_key(), any::<u64>(), arb_node(), arb_query_state()).prop_map(
            |(key, tag, node, state)| Response::Query {
                key,
                tag,
                node,
                state,
            }
        ),
        (arb_key(), any::<u64>(), arb_node(), arb_read_state()).prop_map(
            |(key, tag, node, state)| Response::Read {
                key,
                tag,
                node,
                state,
            }
        ),
    ]
}

pub fn arb_sync_refusal() -> impl Strategy<Value = SyncRefusal> {
    prop_oneof![
        Just(SyncRefusal::NotMember),
        Just(SyncRefusal::NotReady),
        Just(SyncRefusal::MembershipChanged)
    ]
}

/// Every variant of [`Message`], with every nested variant reachable.
pub fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        3 => arb_request().prop_map(Message::Request),
        3 => arb_response().prop_map(Message::Response),
        1 => (arb_cluster(), vec(arb_node(), 0..6), arb_request()).prop_map(
            |(cluster, targets, request)| Message::Relay {
                cluster,
                targets,
                request,
            }
        ),
        1 => (arb_cluster(), vec(arb_response(), 0..4))
            .prop_map(|(cluster, responses)| Message::RelayReply { cluster, responses }),
        1 => (option::of(arb_key()), arb_digest())
            .prop_map(|(after, digest)| Message::SyncRequest { after, digest }),
        1 => (
            option::of(arb_key()),
            vec((arb_key(), arb_durable_key()), 0..5),
            arb_ballot(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(after, entries, floor, seq, done)| Message::SyncPage {
                after,
                entries,
                floor,
                seq,
                done,
            }),
        1 => arb_sync_refusal().prop_map(|reason| Message::SyncRefused { reason }),
        1 => any::<u64>().prop_map(|after| Message::CatchUp { after }),
        1 => (vec((arb_key(), arb_proposal()), 0..5), any::<u64>(), any::<u64>()).prop_map(
            |(entries, last, latest)| Message::CatchUpPage {
                entries,
                last,
                latest,
            }
        ),
        1 => any::<u64>().prop_map(|seq| Message::LeaveCheck { seq }),
        1 => any::<u64>().prop_map(|seq| Message::LeaveClear { seq }),
        1 => arb_node().prop_map(|node| Message::Removed { node }),
        1 => arb_node().prop_map(|node| Message::RemoveCheck { node }),
        1 => (arb_node(), vec(arb_node(), 0..6))
            .prop_map(|(node, cluster)| Message::RemoveCheckReply { node, cluster }),
        1 => (arb_membership(), vec(arb_node(), 0..4))
            .prop_map(|(members, departed)| Message::View { members, departed }),
    ]
}

// ------------------------------------------------------------------ variant names
//
// Exhaustive matches: a new variant does not compile until it is named here, and the codec
// test that checks the strategies reach every name then fails until a strategy makes it.

pub fn message_variant(m: &Message) -> String {
    match m {
        Message::Request(r) => format!("Request::{}", request_variant(r)),
        Message::Response(r) => format!("Response::{}", response_variant(r)),
        Message::Relay { .. } => "Relay".into(),
        Message::RelayReply { .. } => "RelayReply".into(),
        Message::SyncRequest { .. } => "SyncRequest".into(),
        Message::SyncPage { .. } => "SyncPage".into(),
        Message::SyncRefused { .. } => "SyncRefused".into(),
        Message::CatchUp { .. } => "CatchUp".into(),
        Message::CatchUpPage { .. } => "CatchUpPage".into(),
        Message::LeaveCheck { .. } => "LeaveCheck".into(),
        Message::LeaveClear { .. } => "LeaveClear".into(),
        Message::Removed { .. } => "Removed".into(),
        Message::RemoveCheck { .. } => "RemoveCheck".into(),
        Message::RemoveCheckReply { .. } => "RemoveCheckReply".into(),
        Message::View { .. } => "View".into(),
    }
}

pub fn request_variant(r: &Request) -> &'static str {
    match r {
        Request::Prepare { .. } => "Prepare",
        Request::Accept { .. } => "Accept",
        Request::Decide { .. } => "Decide",
        Request::Query { .. } => "Query",
        Request::Read { .. } => "Read",
    }
}

pub fn response_variant(r: &Response) -> &'static str {
    match r {
        Response::Ballot { .. } => "Ballot",
        Response::Query { .. } => "Query",
        Response::Read { .. } => "Read",
    }
}

pub fn answer_variant(a: &Answer) -> &'static str {
    match a {
        Answer::Promise { .. } => "Promise",
        Answer::Accepted => "Accepted",
        Answer::Nack { .. } => "Nack",
        Answer::Stored { .. } => "Stored",
        Answer::Refused { .. } => "Refused",
    }
}

pub fn refuse_reason_variant(r: &RefuseReason) -> &'static str {
    match r {
        RefuseReason::MembershipChanged => "MembershipChanged",
        RefuseReason::NotReady => "NotReady",
        RefuseReason::Leaving => "Leaving",
        RefuseReason::Departed => "Departed",
        RefuseReason::Overloaded => "Overloaded",
        RefuseReason::Abstaining => "Abstaining",
    }
}

pub fn query_state_variant(s: &QueryState) -> &'static str {
    match s {
        QueryState::Stored(_) => "Stored",
        QueryState::Accepted(..) => "Accepted",
        QueryState::Nothing => "Nothing",
        QueryState::Refused(_) => "Refused",
    }
}

pub fn read_state_variant(s: &ReadState) -> &'static str {
    match s {
        ReadState::Stored(_) => "Stored",
        ReadState::Undecided => "Undecided",
        ReadState::Free => "Free",
        ReadState::NotReady => "NotReady",
    }
}

pub fn durable_key_variant(s: &DurableKey) -> &'static str {
    match s {
        DurableKey::Open { .. } => "Open",
        DurableKey::Stored { .. } => "Stored",
    }
}

pub fn sync_refusal_variant(s: &SyncRefusal) -> &'static str {
    match s {
        SyncRefusal::NotMember => "NotMember",
        SyncRefusal::NotReady => "NotReady",
        SyncRefusal::MembershipChanged => "MembershipChanged",
    }
}

/// Every variant name inside `m`, nested ones included, prefixed by the type they belong to.
pub fn variants_in(m: &Message) -> Vec<String> {
    let mut names = vec![format!("Message::{}", message_variant(m))];
    fn request(r: &Request, names: &mut Vec<String>) {
        names.push(format!("Request::{}", request_variant(r)));
    }
    fn response(r: &Response, names: &mut Vec<String>) {
        names.push(format!("Response::{}", response_variant(r)));
        match r {
            Response::Ballot { answer, .. } => {
                names.push(format!("Answer::{}", answer_variant(answer)));
                if let Answer::Refused { reason } = answer {
                    names.push(format!("RefuseReason::{}", refuse_reason_variant(reason)));
                }
            }
            Response::Query { state, .. } => {
                names.push(format!("QueryState::{}", query_state_variant(state)));
                if let QueryState::Refused(reason) = state {
                    names.push(format!("RefuseReason::{}", refuse_reason_variant(reason)));
                }
            }
            Response::Read { state, .. } => {
                names.push(format!("ReadState::{}", read_state_variant(state)));
            }
        }
    }
    match m {
        Message::Request(r) | Message::Relay { request: r, .. } => request(r, &mut names),
        Message::Response(r) => response(r, &mut names),
        Message::RelayReply { responses, .. } => {
            for r in responses {
                response(r, &mut names);
            }
        }
        Message::SyncPage { entries, .. } => {
            for (_, s) in entries {
                names.push(format!("DurableKey::{}", durable_key_variant(s)));
            }
        }
        Message::SyncRefused { reason } => {
            names.push(format!("SyncRefusal::{}", sync_refusal_variant(reason)));
        }
        _ => {}
    }
    names
}

/// Every name [`variants_in`] can produce: what the strategies must reach.
pub fn every_variant() -> Vec<String> {
    let mut all = Vec::new();
    let messages = [
        "Request::Prepare",
        "Request::Accept",
        "Request::Decide",
        "Request::Query",
        "Request::Read",
        "Response::Ballot",
        "Response::Query",
        "Response::Read",
        "Relay",
        "RelayReply",
        "SyncRequest",
        "SyncPage",
        "SyncRefused",
        "CatchUp",
        "CatchUpPage",
        "LeaveCheck",
        "LeaveClear",
        "Removed",
        "RemoveCheck",
        "RemoveCheckReply",
        "View",
    ];
    all.extend(messages.iter().map(|m| format!("Message::{m}")));
    for r in ["Prepare", "Accept", "Decide", "Query", "Read"] {
        all.push(format!("Request::{r}"));
    }
    for r in ["Ballot", "Query", "Read"] {
        all.push(format!("Response::{r}"));
    }
    for a in ["Promise", "Accepted", "Nack", "Stored", "Refused"] {
        all.push(format!("Answer::{a}"));
    }
    for r in [
        "MembershipChanged",
        "NotReady",
        "Leaving",
        "Departed",
        "Overloaded",
        "Abstaining",
    ] {
        all.push(format!("RefuseReason::{r}"));
    }
    for s in ["Stored", "Accepted", "Nothing", "Refused"] {
        all.push(format!("QueryState::{s}"));
    }
    for s in ["Stored", "Undecided", "Free", "NotReady"] {
        all.push(format!("ReadState::{s}"));
    }
    for s in ["Open", "Stored"] {
        all.push(format!("DurableKey::{s}"));
    }
    for s in ["NotMember", "NotReady", "MembershipChanged"] {
        all.push(format!("SyncRefusal::{s}"));
    }
    all
}
