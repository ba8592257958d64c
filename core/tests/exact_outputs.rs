//! Exact-output tests: one node, inputs fed by hand, and the precise list of outputs each
//! input must produce, rendered one line each (`show`) and in order: what leaves, what is
//! written (and whether anything waits for it), what is answered, what is noted, and when the
//! node wants to be woken next.

use std::time::Duration;

use replicator_core::*;

// ==================================================================== rendering

fn show_proposal(a: &Proposal) -> String {
    match &a.request {
        Some(r) => format!("{}[{r}]={:?}", a.p, a.value),
        None => format!("{}={:?}", a.p, a.value),
    }
}

fn show_accepted(acc: &Option<(Ballot, Proposal)>) -> String {
    match acc {
        Some((b, a)) => format!("{b} {}", show_proposal(a)),
        None => "-".into(),
    }
}

fn show_request(r: &Request) -> String {
    match r {
        Request::Prepare { key, ballot, .. } => format!("Prepare({key} {ballot})"),
        Request::Accept {
            key,
            ballot,
            proposal,
            ..
        } => format!("Accept({key} {ballot} {})", show_proposal(proposal)),
        Request::Decide { key, chosen } => format!("Decide({key} {})", show_proposal(chosen)),
        Request::Query { key, tag, .. } => format!("Query({key} #{tag})"),
        Request::Read { key, tag } => format!("Read({key} #{tag})"),
    }
}

fn show_answer(a: &Answer) -> String {
    match a {
        Answer::Promise { accepted } => format!("Promise({})", show_accepted(accepted)),
        Answer::Accepted => "Accepted".into(),
        Answer::Nack {
            promised,
            holder,
            folded,
        } => match (holder, folded) {
            (Some(h), _) => format!("Nack({promised} holder {h})"),
            (None, false) => format!("Nack({promised})"),
            (None, true) => format!("Nack({promised} floor)"),
        },
        Answer::Stored { chosen } => format!("Stored({})", show_proposal(chosen)),
        Answer::Refused { reason } => format!("Refused({reason:?})"),
    }
}

fn show_response(r: &Response) -> String {
    match r {
        Response::Ballot {
            key,
            ballot,
            proposal,
            node,
            answer,
            ..
        } => {
            let p = proposal
                .as_ref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default();
            format!(
                "Answer({key} {ballot}{p} by {node}: {})",
                show_answer(answer)
            )
        }
        Response::Query {
            key,
            tag,
            node,
            state,
        } => {
            let state = match state {
                QueryState::Stored(a) => format!("Stored({})", show_proposal(a)),
                QueryState::Accepted(b, a) => format!("Accepted({b} {})", show_proposal(a)),
                other => format!("{other:?}"),
            };
            format!("QueryAnswer({key} #{tag} by {node}: {state})")
        }
        Response::Read {
            key,
            tag,
            node,
            state,
        } => format!("ReadAnswer({key} #{tag} by {node}: {state:?})"),
    }
}

fn show_message(m: &Message) -> String {
    match m {
        Message::Request(r) => show_request(r),
        Message::Response(r) => show_response(r),
        Message::Relay {
            cluster,
            targets,
            request,
        } => format!("Relay({cluster} {targets:?} {})", show_request(request)),
        Message::RelayReply { cluster, responses } => {
            let rs: Vec<String> = responses.iter().map(show_response).collect();
            format!("RelayReply({cluster} {rs:?})")
        }
        Message::View { members, departed } => {
            let clusters: Vec<String> = members
                .clusters()
                .map(|(c, nodes)| {
                    let mut nodes: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
                    nodes.sort();
                    format!("{c}={}", nodes.join(","))
                })
                .collect();
            format!("View({} departed {departed:?})", clusters.join(" "))
        }
        Message::SyncRequest { after, .. } => match after {
            Some(k) => format!("SyncRequest(after {k})"),
            None => "SyncRequest(from the start)".into(),
        },
        Message::SyncPage {
            after,
            entries,
            floor,
            seq,
            done,
        } => {
            let answers = match after {
                Some(k) => format!("after {k}"),
                None => "from the start".into(),
            };
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, s)| format!("{k}={}", show_state(s)))
                .collect();
            format!(
                "SyncPage({answers}: [{}] floor {floor} seq {seq} done={done})",
                entries.join(", ")
            )
        }
        Message::CatchUpPage {
            entries,
            last,
            latest,
        } => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, a)| format!("{k}={}", show_proposal(a)))
                .collect();
            format!(
                "CatchUpPage([{}] last {last} latest {latest})",
                entries.join(", ")
            )
        }
        other => format!("{other:?}"),
    }
}

fn show_state(s: &DurableKey) -> String {
    match s {
        DurableKey::Open { promised, accepted } => {
            format!(
                "Open(promised {promised}, accepted {})",
                show_accepted(accepted)
            )
        }
        DurableKey::Stored { chosen, seq } => format!("Stored({} #{seq})", show_proposal(chosen)),
    }
}

fn show_op(op: &WriteOp) -> String {
    match op {
        WriteOp::PutKey { key, state } => format!("PutKey({key} {})", show_state(state)),
        other => format!("{other:?}"),
    }
}

fn show(o: &Output) -> String {
    match o {
        Output::Send { to, msg } => format!("send {to} {}", show_message(msg)),
        Output::Persist {
            write,
            ops,
            urgency,
        } => {
            let ops: Vec<String> = ops.iter().map(show_op).collect();
            let lazy = match urgency {
                Urgency::Barrier => "",
                Urgency::Lazy => " (lazy)",
            };
            format!("persist #{}{lazy} {}", write.0, ops.join(", "))
        }
        Output::Reply { call, reply } => format!("reply {} {reply:?}", call.0),
        Output::Note(note) => format!("note {note:?}"),
    }
}

// ==================================================================== driving one node

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

/// Feeds `input` at `now` and renders what comes out.
fn step(n: &mut Node, now: Time, input: Input) -> Vec<String> {
    n.handle(now, input);
    drain(n).iter().map(show).collect()
}

fn ms(x: u64) -> Time {
    Time::from_millis(x)
}

fn from(sender: &str, msg: Message) -> Input {
    Input::Message {
        from: sender.into(),
        msg,
    }
}

fn persisted(write: u64) -> Input {
    Input::Persisted {
        upto: WriteId(write),
    }
}

fn put(key: &str, value: &str, call: u64) -> Input {
    Input::Client {
        call: CallId(call),
        cmd: Command::Put {
            key: key.into(),
            value: value.into(),
            request: None,
        },
    }
}

fn get(key: &str, call: u64) -> Input {
    Input::Client {
        call: CallId(call),
        cmd: Command::Get { key: key.into() },
    }
}

const NOTHING: [&str; 0] = [];

fn member(name: &str) -> (ClusterId, NodeId) {
    (ClusterId::from(&name[..1]), NodeId::from(name))
}

fn pid(coordinator: &str, counter: u64) -> ProposalId {
    ProposalId {
        coordinator: coordinator.into(),
        counter,
    }
}

fn proposal(coordinator: &str, counter: u64, value: &str) -> Proposal {
    Proposal {
        p: pid(coordinator, counter),
        request: None,
        value: value.into(),
    }
}

fn classic(round: u64, node: &str) -> Ballot {
    Ballot::classic(round, node.into())
}

/// The disk of a founding node of cluster "c" (c1, c2, c3) and, if `with_d`, cluster "d"
/// (d1, d2).
fn disk(with_d: bool) -> Recovered {
    let mut names = vec!["c1", "c2", "c3"];
    if with_d {
        names.extend(["d1", "d2"]);
    }
    Recovered::founder("net".into()).with_members(names.into_iter().map(member))
}

/// Node c1, started at time 0 from `disk`, with the default config (timers in seconds).
fn start(disk: Recovered) -> Node {
    start_with(Config::default(), disk)
}

/// Node j1 of cluster c, joining a network of `members` (the default config, time 0).
fn start_joiner(members: &[&str]) -> Node {
    let disk = Recovered::joiner("net".into()).with_members(members.iter().copied().map(member));
    Node::new(
        Config::default(),
        "j1".into(),
        "c".into(),
        disk.clone(),
        Box::new(DiskImage::new(disk)),
        Time::ZERO,
        1,
    )
    .unwrap()
}

fn start_with(config: Config, disk: Recovered) -> Node {
    Node::new(
        config,
        "c1".into(),
        "c".into(),
        disk.clone(),
        Box::new(DiskImage::new(disk)),
        Time::ZERO,
        1,
    )
    .unwrap()
}

fn prepare(n: &Node, key: &str, ballot: Ballot) -> Message {
    Message::Request(Request::Prepare {
        key: key.into(),
        ballot,
        digest: n.membership().digest(),
    })
}

fn accept(n: &Node, key: &str, ballot: Ballot, proposal: Proposal) -> Message {
    Message::Request(Request::Accept {
        key: key.into(),
        ballot,
        proposal,
        digest: n.membership().digest(),
    })
}

/// `node`'s answer to c1 about `key` at `ballot` (to c1's Prepare if `p` is `None`, to its
/// Accept of `p` otherwise), given in c1's membership.
fn answer(
    n: &Node,
    node: &str,
    key: &str,
    ballot: Ballot,
    p: Option<ProposalId>,
    a: Answer,
) -> Message {
    Message::Response(Response::Ballot {
        key: key.into(),
        ballot,
        proposal: p,
        node: node.into(),
        digest: n.membership().digest(),
        answer: a,
    })
}

// ==================================================================== the acceptor

/// Prepare: a promise is written before it is answered, and nothing else is.
#[test]
fn a_prepare_is_promised_durably_before_the_promise_leaves() {
    let mut n = start(disk(false));
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["persist #1 PutKey(k Open(promised b1.c2, accepted -))"]
    );
    assert_eq!(
        step(&mut n, ms(2), persisted(1)),
        ["send c2 Answer(k b1.c2 by c1: Promise(-))"]
    );
    assert_eq!(
        n.key_state(&"k".into()),
        Ok(Some(DurableKey::Open {
            promised: classic(1, "c2"),
            accepted: None
        }))
    );
}

#[test]
fn a_prepare_below_the_promise_is_nacked_with_the_promise_and_changes_nothing() {
    let mut disk = disk(false);
    let held = proposal("c3", 4, "x");
    disk.keys.insert(
        "k".into(),
        DurableKey::Open {
            promised: classic(3, "c3"),
            accepted: Some((classic(2, "c3"), held.clone())),
        },
    );
    let mut n = start(disk);
    let before = n.key_state(&"k".into());
    for ballot in [classic(1, "c2"), classic(2, "c2")] {
        let msg = prepare(&n, "k", ballot.clone());
        assert_eq!(
            step(&mut n, ms(1), from("c2", msg)),
            [format!(
                "send c2 Answer(k {ballot} by c1: Nack(b3.c3 holder c3#4))"
            )]
        );
    }
    assert_eq!(n.key_state(&"k".into()), before);
    // The promised ballot itself is promised again (the same proposer asking twice), with
    // what was accepted, and without a new write: nothing changed.
    let msg = prepare(&n, "k", classic(3, "c3"));
    assert_eq!(
        step(&mut n, ms(1), from("c3", msg)),
        [r#"send c3 Answer(k b3.c3 by c1: Promise(b2.c3 c3#4="x"))"#]
    );
}

/// A joiner that has not finished its copy takes part in no ballot (it could promise
/// against a value its cluster already accepted): refused, and nothing is written.
#[test]
fn a_prepare_or_accept_at_a_node_not_ready_is_refused_without_a_write() {
    let joiner =
        Recovered::joiner("net".into()).with_members(["c1", "c2", "c3"].into_iter().map(member));
    let mut n = start(joiner);
    assert!(!n.is_ready());
    drain(&mut n);
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b1.c2 by c1: Refused(NotReady))"]
    );
    let msg = accept(&n, "k", Ballot::FAST, proposal("c2", 0, "v"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b0 c2#0 by c1: Refused(NotReady))"]
    );
    assert_eq!(n.key_state(&"k".into()), Ok(None));
}

/// A key whose record the driver found damaged: the node cannot know what it promised or
/// accepted, so it abstains from every ballot and read of it until it learns the decision.
#[test]
fn a_damaged_key_abstains_from_prepare_accept_and_query_until_decided() {
    let mut disk = disk(false);
    disk.damaged.insert("k".into());
    let mut n = start(disk);
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b1.c2 by c1: Refused(Abstaining))"]
    );
    let msg = accept(&n, "k", classic(1, "c2"), proposal("c2", 0, "v"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b1.c2 c2#0 by c1: Refused(Abstaining))"]
    );
    let query = Message::Request(Request::Query {
        key: "k".into(),
        tag: 9,
        digest: n.membership().digest(),
    });
    assert_eq!(
        step(&mut n, ms(1), from("c2", query.clone())),
        ["send c2 QueryAnswer(k #9 by c1: Refused(Abstaining))"]
    );
    assert_eq!(n.stats().damaged_keys, 1);
    // The decision repairs it (a lazy write: the decision can be learned again).
    let decide = Message::Request(Request::Decide {
        key: "k".into(),
        chosen: proposal("c2", 0, "v"),
    });
    assert_eq!(
        step(&mut n, ms(2), from("c2", decide)),
        [r#"persist #1 (lazy) PutKey(k Stored(c2#0="v" #1))"#]
    );
    assert_eq!(n.stats().damaged_keys, 0);
    assert_eq!(
        step(&mut n, ms(3), from("c2", query)),
        [r#"send c2 QueryAnswer(k #9 by c1: Stored(c2#0="v"))"#]
    );
}

/// Accept at the promised ballot (or above): accepted, written first, then answered; the
/// lease that recovers the value if nobody decides it is armed.
#[test]
fn an_accept_at_or_above_the_promise_is_accepted_durably_before_the_answer() {
    let mut disk = disk(false);
    disk.keys.insert(
        "k".into(),
        DurableKey::Open {
            promised: classic(2, "c2"),
            accepted: None,
        },
    );
    // Catch-ups far apart, so that the lease is the next timer once the first one ran.
    let config = Config {
        catch_up_interval: Duration::from_secs(60),
        ..Config::default()
    };
    let mut n = start_with(config, disk);
    let catch_up = n.poll_timeout().expect("the first catch-up");
    let msg = accept(&n, "k", classic(2, "c2"), proposal("c2", 5, "v"));
    assert_eq!(
        step(&mut n, ms(10), from("c2", msg)),
        [r#"persist #1 PutKey(k Open(promised b2.c2, accepted b2.c2 c2#5="v"))"#]
    );
    assert_eq!(
        step(&mut n, ms(11), persisted(1)),
        ["send c2 Answer(k b2.c2 c2#5 by c1: Accepted)"]
    );
    // Above the promise: accepted too, and the promise rises with it.
    let msg = accept(&n, "k", classic(4, "c3"), proposal("c3", 1, "w"));
    assert_eq!(
        step(&mut n, ms(12), from("c3", msg)),
        [r#"persist #2 PutKey(k Open(promised b4.c3, accepted b4.c3 c3#1="w"))"#]
    );
    assert_eq!(
        step(&mut n, ms(13), persisted(2)),
        ["send c3 Answer(k b4.c3 c3#1 by c1: Accepted)"]
    );
    // The first catch-up is still due first; the lease lies between 1 and 1.5 leases ahead.
    assert_eq!(n.poll_timeout(), Some(catch_up));
    n.handle(catch_up, Input::Timeout);
    drain(&mut n);
    let lease = Config::default().lease;
    let due = n.poll_timeout().expect("the lease");
    let (earliest, latest) = (ms(12) + lease, ms(12) + lease + lease / 2);
    assert!(earliest <= due && due <= latest, "lease due at {due}");
}

#[test]
fn an_accept_below_the_promise_is_nacked_and_changes_nothing() {
    let mut disk = disk(false);
    disk.keys.insert(
        "k".into(),
        DurableKey::Open {
            promised: classic(3, "c3"),
            accepted: None,
        },
    );
    let mut n = start(disk);
    let before = n.key_state(&"k".into());
    let msg = accept(&n, "k", classic(2, "c2"), proposal("c2", 5, "v"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b2.c2 c2#5 by c1: Nack(b3.c3))"]
    );
    assert_eq!(n.key_state(&"k".into()), before);
    // The fast round is below every classic promise.
    let msg = accept(&n, "k", Ballot::FAST, proposal("c2", 6, "v"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["send c2 Answer(k b0 c2#6 by c1: Nack(b3.c3))"]
    );
    assert_eq!(n.key_state(&"k".into()), before);
}

/// The fast round (ballot 0) is shared by every coordinator: the first value a node accepts
/// there is the only one; any other proposal at ballot 0 is nacked naming the holder (the
/// race rule reads it), and the same one again is answered Accepted without a new write.
#[test]
fn the_fast_round_accepts_the_first_proposal_only() {
    let mut n = start(disk(false));
    let first = proposal("c2", 0, "x");
    let msg = accept(&n, "k", Ballot::FAST, first.clone());
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg.clone())),
        [r#"persist #1 PutKey(k Open(promised b0, accepted b0 c2#0="x"))"#]
    );
    assert_eq!(
        step(&mut n, ms(1), persisted(1)),
        ["send c2 Answer(k b0 c2#0 by c1: Accepted)"]
    );
    let other = accept(&n, "k", Ballot::FAST, proposal("c3", 0, "y"));
    assert_eq!(
        step(&mut n, ms(2), from("c3", other)),
        ["send c3 Answer(k b0 c3#0 by c1: Nack(b0 holder c2#0))"]
    );
    assert_eq!(
        step(&mut n, ms(3), from("c2", msg)),
        ["send c2 Answer(k b0 c2#0 by c1: Accepted)"],
        "a duplicate is answered again, with no write"
    );
}

/// A fast-round Accept of a key this node holds nothing for, once its ballot floor rose (it
/// folded promise-only records into it), is nacked with the floor, marked as one: no proposer
/// is at work on the key. A key with a promise of its own is nacked unmarked.
#[test]
fn a_nack_from_the_ballot_floor_says_so() {
    let mut disk = disk(false);
    disk.floor = classic(3, "c2");
    disk.keys.insert(
        "promised".into(),
        DurableKey::Open {
            promised: classic(4, "c3"),
            accepted: None,
        },
    );
    let mut n = start(disk);
    let fresh = accept(&n, "fresh", Ballot::FAST, proposal("c2", 0, "x"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", fresh)),
        ["send c2 Answer(fresh b0 c2#0 by c1: Nack(b3.c2 floor))"]
    );
    let held = accept(&n, "promised", Ballot::FAST, proposal("c2", 1, "x"));
    assert_eq!(
        step(&mut n, ms(2), from("c2", held)),
        ["send c2 Answer(promised b0 c2#1 by c1: Nack(b4.c3))"]
    );
}

/// A fast round nacked by a floor goes on to a classic ballot after a short backoff; nacked
/// by another node's ballot at work on the key, it first gives that one time to finish (at
/// least `vote_timeout`).
#[test]
fn a_floor_is_no_proposer_to_wait_for() {
    let retry_after = |folded: bool| {
        let mut n = start(disk(false));
        step(&mut n, ms(0), put("k", "v", 1));
        step(&mut n, ms(0), persisted(1));
        step(&mut n, ms(0), persisted(2));
        let p = pid("c1", 0);
        let nack = Answer::Nack {
            promised: classic(3, "c2"),
            holder: None,
            folded,
        };
        let msg = answer(&n, "c2", "k", Ballot::FAST, Some(p), nack);
        step(&mut n, ms(1), from("c2", msg));
        loop {
            let due = n.poll_timeout().expect("a retry is due");
            assert!(due < ms(5_000), "no Prepare within 5 s");
            let now = due;
            let mut out = step(&mut n, now, Input::Timeout);
            // A classic ballot's round is durable before its Prepare leaves.
            let writes: Vec<u64> = out
                .iter()
                .filter_map(|o| o.strip_prefix("persist #")?.split(' ').next()?.parse().ok())
                .collect();
            for w in writes {
                out.extend(step(&mut n, now, persisted(w)));
            }
            if out.iter().any(|o| o.contains("Prepare(k")) {
                return now.since(ms(1));
            }
        }
    };
    let after_floor = retry_after(true);
    let after_proposer = retry_after(false);
    let vote_timeout = Config::default().vote_timeout;
    assert!(
        after_floor < vote_timeout / 2,
        "after a floor: {after_floor:?}"
    );
    assert!(
        after_proposer >= vote_timeout,
        "after another proposer's ballot: {after_proposer:?}"
    );
}

/// Prepare and Accept of a key decided here answer the decision: the proposer learns it
/// instead of running a ballot that could only end the same way.
#[test]
fn a_prepare_or_accept_of_a_stored_key_is_answered_with_the_decision() {
    let mut disk = disk(false);
    disk.keys.insert(
        "k".into(),
        DurableKey::Stored {
            chosen: proposal("c3", 1, "v"),
            seq: 1,
        },
    );
    let mut n = start(disk);
    let msg = prepare(&n, "k", classic(9, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        [r#"send c2 Answer(k b9.c2 by c1: Stored(c3#1="v"))"#]
    );
    let msg = accept(&n, "k", classic(9, "c2"), proposal("c2", 7, "w"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        [r#"send c2 Answer(k b9.c2 c2#7 by c1: Stored(c3#1="v"))"#]
    );
}

/// A Decide is stored with a lazy write (a crash that loses it loses nothing: the accepted
/// value recovers to the same decision) and answered by nobody.
#[test]
fn a_decide_is_stored_lazily_and_numbered() {
    let mut n = start(disk(false));
    let decide = |key: &str, counter| {
        Message::Request(Request::Decide {
            key: key.into(),
            chosen: proposal("c2", counter, "v"),
        })
    };
    assert_eq!(
        step(&mut n, ms(1), from("c2", decide("k", 1))),
        [r#"persist #1 (lazy) PutKey(k Stored(c2#1="v" #1))"#]
    );
    assert_eq!(
        step(&mut n, ms(1), from("c3", decide("j", 2))),
        [r#"persist #2 (lazy) PutKey(j Stored(c2#2="v" #2))"#]
    );
    assert_eq!(step(&mut n, ms(2), from("c3", decide("k", 1))), NOTHING);
    assert_eq!(n.stats().keys_stored, 2);
}

// ==================================================================== the proposer

/// Fast round (PROTOCOL "Writing a key", rule 1): the counter ceiling is durable before the
/// proposal id leaves; Accept(0) goes to every participant (its own cluster directly, the
/// other through one representative); the value is chosen only when every participant
/// accepted, and then told to everyone, stored lazily and answered.
#[test]
fn the_fast_round_decides_when_every_participant_accepted() {
    let mut n = start(disk(true));
    let p = pid("c1", 0);
    assert_eq!(
        step(&mut n, ms(0), put("k", "v", 1)),
        ["persist #1 CounterCeiling(1024)"]
    );
    // Nothing leaves before the counter is durable: a proposal id must never repeat.
    assert_eq!(
        step(&mut n, ms(0), persisted(1)),
        [
            r#"send d1 Relay(d [d2, d1] Accept(k b0 c1#0="v"))"#,
            r#"send c2 Accept(k b0 c1#0="v")"#,
            r#"send c3 Accept(k b0 c1#0="v")"#,
            // Its own Accept came back through the inbox: accepted, written...
            r#"persist #2 PutKey(k Open(promised b0, accepted b0 c1#0="v"))"#,
        ]
    );
    // ...and its own answer counted once that is durable: one of five.
    assert_eq!(step(&mut n, ms(0), persisted(2)), NOTHING);
    let digest = n.membership().digest();
    let accepted = |node: &str| Response::Ballot {
        key: "k".into(),
        ballot: Ballot::FAST,
        proposal: Some(p.clone()),
        node: node.into(),
        digest,
        answer: Answer::Accepted,
    };
    assert_eq!(
        step(&mut n, ms(5), from("c2", Message::Response(accepted("c2")))),
        NOTHING
    );
    let reply = Message::RelayReply {
        cluster: "d".into(),
        responses: vec![accepted("d1"), accepted("d2")],
    };
    // Four of five, a majority of every cluster (what a classic ballot needs): not chosen
    // at ballot 0, which needs everyone.
    assert_eq!(step(&mut n, ms(8), from("d1", reply)), NOTHING);
    assert_eq!(n.stats().puts_in_flight, 1);
    assert_eq!(
        step(&mut n, ms(9), from("c3", Message::Response(accepted("c3")))),
        [
            "note Decided { key: k, chosen: c1#0, ballot: b0 }",
            r#"send d1 Relay(d [d2, d1] Decide(k c1#0="v"))"#,
            r#"send c2 Decide(k c1#0="v")"#,
            r#"send c3 Decide(k c1#0="v")"#,
            "reply 1 Put(Stored)",
            r#"persist #3 (lazy) PutKey(k Stored(c1#0="v" #1))"#,
        ]
    );
    // The PUT's deadline, the phase, the representative's and the lease timers are gone: only
    // the periodic catch-up is left.
    let stats = n.stats();
    assert_eq!(
        (stats.puts_in_flight, stats.proposers, stats.timers),
        (0, 0, 1)
    );
}

/// Node c1 of one cluster of five (c1..c5).
fn five(disk_keys: Vec<(&str, DurableKey)>) -> Node {
    let mut disk = Recovered::founder("net".into())
        .with_members(["c1", "c2", "c3", "c4", "c5"].into_iter().map(member));
    for (key, state) in disk_keys {
        disk.keys.insert(key.into(), state);
    }
    start(disk)
}

/// Phase 1 then phase 2 of a classic ballot (PROTOCOL "Writing a key", rules 2 and 3): a
/// node whose record of the key shows anything skips the fast round; its ballot is above
/// every ballot it knows of, and its round ceiling is durable before the ballot leaves; once
/// a majority of its cluster promised, it proposes the value accepted at the highest ballot
/// among the promises (not the first or the last to arrive, and not its client's), and the
/// client is told Exists.
#[test]
fn phase_two_proposes_the_value_accepted_at_the_highest_ballot_among_the_promises() {
    let x = proposal("c2", 1, "x");
    let (y, z) = (proposal("c4", 1, "y"), proposal("c3", 1, "z"));
    let mut n = five(vec![(
        "k",
        DurableKey::Open {
            promised: classic(4, "c2"),
            accepted: Some((classic(2, "c2"), x.clone())),
        },
    )]);
    // The ballot goes above the highest this node knows of (b4.c2): round 5. Its round
    // ceiling is written first, with the proposal counter's.
    assert_eq!(
        step(&mut n, ms(0), put("k", "mine", 1)),
        ["persist #1 CounterCeiling(1024), RoundCeiling(1029)"]
    );
    assert_eq!(
        step(&mut n, ms(0), persisted(1)),
        [
            "send c2 Prepare(k b5.c1)",
            "send c3 Prepare(k b5.c1)",
            "send c4 Prepare(k b5.c1)",
            "send c5 Prepare(k b5.c1)",
            r#"persist #2 PutKey(k Open(promised b5.c1, accepted b2.c2 c2#1="x"))"#,
        ]
    );
    // Its own promise (carrying x, at b2) counts once durable: one of the three needed.
    assert_eq!(step(&mut n, ms(0), persisted(2)), NOTHING);
    let b = classic(5, "c1");
    let promise = |acc: Option<(Ballot, Proposal)>| Answer::Promise { accepted: acc };
    // z at b4 arrives second, y at b1 last: the first is x, the last y, the highest z.
    let msg = answer(
        &n,
        "c2",
        "k",
        b.clone(),
        None,
        promise(Some((classic(4, "c3"), z.clone()))),
    );
    assert_eq!(step(&mut n, ms(1), from("c2", msg)), NOTHING);
    let msg = answer(
        &n,
        "c3",
        "k",
        b.clone(),
        None,
        promise(Some((classic(1, "c4"), y))),
    );
    assert_eq!(
        step(&mut n, ms(2), from("c3", msg)),
        [
            r#"send c2 Accept(k b5.c1 c3#1="z")"#,
            r#"send c3 Accept(k b5.c1 c3#1="z")"#,
            r#"send c4 Accept(k b5.c1 c3#1="z")"#,
            r#"send c5 Accept(k b5.c1 c3#1="z")"#,
            r#"persist #3 PutKey(k Open(promised b5.c1, accepted b5.c1 c3#1="z"))"#,
        ]
    );
    assert_eq!(step(&mut n, ms(2), persisted(3)), NOTHING);
    // A majority of the one cluster accepted (c1, c2, c4): chosen; the client learns that
    // another value won, by proposal id, not by bytes.
    let msg = answer(
        &n,
        "c2",
        "k",
        b.clone(),
        Some(z.p.clone()),
        Answer::Accepted,
    );
    assert_eq!(step(&mut n, ms(3), from("c2", msg)), NOTHING);
    let msg = answer(
        &n,
        "c4",
        "k",
        b.clone(),
        Some(z.p.clone()),
        Answer::Accepted,
    );
    assert_eq!(
        step(&mut n, ms(3), from("c4", msg)),
        [
            "note Decided { key: k, chosen: c3#1, ballot: b5.c1 }",
            r#"send c2 Decide(k c3#1="z")"#,
            r#"send c3 Decide(k c3#1="z")"#,
            r#"send c4 Decide(k c3#1="z")"#,
            r#"send c5 Decide(k c3#1="z")"#,
            r#"reply 1 Put(Exists { value: "z" })"#,
            r#"persist #4 (lazy) PutKey(k Stored(c3#1="z" #1))"#,
        ]
    );
}

/// With nothing accepted among the promises, phase 2 proposes the client's own value.
#[test]
fn phase_two_proposes_the_clients_value_when_no_promise_carries_one() {
    let mut disk = disk(false);
    disk.keys.insert(
        "k".into(),
        DurableKey::Open {
            promised: classic(1, "c2"),
            accepted: None,
        },
    );
    let mut n = start(disk);
    assert_eq!(
        step(&mut n, ms(0), put("k", "mine", 1)),
        ["persist #1 CounterCeiling(1024), RoundCeiling(1026)"]
    );
    assert_eq!(
        step(&mut n, ms(0), persisted(1)),
        [
            "send c2 Prepare(k b2.c1)",
            "send c3 Prepare(k b2.c1)",
            "persist #2 PutKey(k Open(promised b2.c1, accepted -))",
        ]
    );
    assert_eq!(step(&mut n, ms(0), persisted(2)), NOTHING);
    let msg = answer(
        &n,
        "c3",
        "k",
        classic(2, "c1"),
        None,
        Answer::Promise { accepted: None },
    );
    assert_eq!(
        step(&mut n, ms(1), from("c3", msg)),
        [
            r#"send c2 Accept(k b2.c1 c1#0="mine")"#,
            r#"send c3 Accept(k b2.c1 c1#0="mine")"#,
            r#"persist #3 PutKey(k Open(promised b2.c1, accepted b2.c1 c1#0="mine"))"#,
        ]
    );
}

// ==================================================================== reads

/// A key stored here is read at once, with no message.
#[test]
fn a_read_of_a_stored_key_is_answered_at_once_without_asking_anyone() {
    let mut disk = disk(false);
    disk.keys.insert(
        "k".into(),
        DurableKey::Stored {
            chosen: proposal("c2", 1, "v"),
            seq: 1,
        },
    );
    let mut n = start(disk);
    assert_eq!(
        step(&mut n, ms(1), get("k", 1)),
        [r#"reply 1 Get(Value("v"))"#]
    );
    assert_eq!(n.stats().reads_waiting, 0);
}

/// A key not stored here: the node asks its cluster, itself included, and says "unknown"
/// only once a majority of the cluster showed nothing accepted (a chosen value is accepted
/// by a majority of every cluster), never from its own state alone.
#[test]
fn a_read_of_a_free_key_is_unknown_only_after_a_majority_of_the_cluster_shows_nothing() {
    let mut n = start(disk(true));
    // Its own answer (Nothing) came back through the inbox: one of three, not enough.
    assert_eq!(
        step(&mut n, ms(1), get("k", 1)),
        ["send c2 Query(k #0)", "send c3 Query(k #0)"]
    );
    let nothing = |node: &str, tag| {
        Message::Response(Response::Query {
            key: "k".into(),
            tag,
            node: node.into(),
            state: QueryState::Nothing,
        })
    };
    // An answer from another cluster does not count toward this cluster's majority.
    assert_eq!(step(&mut n, ms(2), from("d1", nothing("d1", 0))), NOTHING);
    assert_eq!(
        step(&mut n, ms(2), from("c3", nothing("c3", 0))),
        ["reply 1 Get(Unknown)"]
    );
    assert_eq!(n.stats().reads_waiting, 0);
    // Late answers to a finished read change nothing.
    assert_eq!(step(&mut n, ms(3), from("c2", nothing("c2", 0))), NOTHING);
}

/// A majority showed a value accepted and not known to be decided: the read answers neither
/// "unknown" nor that value; it waits for the decision.
#[test]
fn a_read_that_finds_an_accepted_value_waits_for_its_decision() {
    let mut n = start(disk(false));
    assert_eq!(
        step(&mut n, ms(1), get("k", 1)),
        ["send c2 Query(k #0)", "send c3 Query(k #0)"]
    );
    let v = proposal("c2", 3, "v");
    let accepted = Message::Response(Response::Query {
        key: "k".into(),
        tag: 0,
        node: "c2".into(),
        state: QueryState::Accepted(Ballot::FAST, v.clone()),
    });
    assert_eq!(step(&mut n, ms(2), from("c2", accepted)), NOTHING);
    let decide = Message::Request(Request::Decide {
        key: "k".into(),
        chosen: v,
    });
    assert_eq!(
        step(&mut n, ms(3), from("c2", decide)),
        [
            r#"reply 1 Get(Value("v"))"#,
            r#"persist #1 (lazy) PutKey(k Stored(c2#3="v" #1))"#,
        ]
    );
}

// ==================================================================== the barrier

/// Durability (PROTOCOL "Durability: the barrier"): nothing produced after a barrier write
/// leaves before the driver reports it durable, not even answers that need no write of their
/// own, and nothing overtakes what waits. A report of a write never issued releases nothing.
#[test]
fn nothing_leaves_before_the_write_it_follows_is_durable() {
    let mut disk = disk(false);
    disk.keys.insert(
        "s".into(),
        DurableKey::Stored {
            chosen: proposal("c2", 1, "v"),
            seq: 1,
        },
    );
    let mut n = start(disk);
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg)),
        ["persist #1 PutKey(k Open(promised b1.c2, accepted -))"]
    );
    let query = Message::Request(Request::Query {
        key: "s".into(),
        tag: 4,
        digest: n.membership().digest(),
    });
    assert_eq!(step(&mut n, ms(2), from("c3", query)), NOTHING);
    assert_eq!(step(&mut n, ms(2), get("s", 7)), NOTHING);
    assert_eq!(n.stats().held_messages, 3);
    assert_eq!(step(&mut n, ms(3), persisted(0)), NOTHING);
    assert_eq!(
        step(&mut n, ms(3), persisted(2)),
        [r#"note Violation { reason: "driver reported write 2 durable but only 1 were issued" }"#]
    );
    assert_eq!(
        step(&mut n, ms(4), persisted(1)),
        [
            "send c2 Answer(k b1.c2 by c1: Promise(-))",
            r#"send c3 QueryAnswer(s #4 by c1: Stored(c2#1="v"))"#,
            r#"reply 7 Get(Value("v"))"#,
        ]
    );
    assert_eq!(n.stats().held_messages, 0);
}

/// Executes every output of `n` until it is quiet, making each write durable on `disk` at
/// once; returns the proposal ids of the Accepts that left for c2.
fn settle(n: &mut Node, now: Time, disk: &mut Recovered) -> Vec<ProposalId> {
    let mut sent = Vec::new();
    loop {
        let mut upto = None;
        for out in drain(n) {
            match out {
                Output::Persist { write, ops, .. } => {
                    disk.apply_all(&ops);
                    upto = Some(write);
                }
                Output::Send {
                    to,
                    msg: Message::Request(Request::Accept { proposal, .. }),
                } if to == NodeId::from("c2") => sent.push(proposal.p),
                _ => {}
            }
        }
        match upto {
            Some(upto) => n.handle(now, Input::Persisted { upto }),
            None => return sent,
        }
    }
}

/// Proposal ids never repeat, across restarts too: the counter ceiling is a barrier write
/// made in blocks, and a restarted node starts at the ceiling it recorded, skipping the rest
/// of the block it was in.
#[test]
fn proposal_ids_never_repeat_across_restarts() {
    let config = Config {
        counter_block: 2,
        ..Config::default()
    };
    let mut disk = disk(false);
    let mut sent = Vec::new();
    for life in 0..3u64 {
        // Each life starts from the disk alone (the node before it crashed).
        let mut n = start_with(config.clone(), disk.clone());
        for i in 0..3u64 {
            n.handle(ms(life), put(&format!("k{life}.{i}"), "v", i));
            sent.extend(settle(&mut n, ms(life), &mut disk));
        }
    }
    let counters: Vec<u64> = sent.iter().map(|p| p.counter).collect();
    assert_eq!(counters, [0, 1, 2, 4, 5, 6, 8, 9, 10]);
    assert_eq!(disk.counter_ceiling, 12);
}

// ==================================================================== joining, catch-up

/// The member's side of the join-time copy (PROTOCOL "Joining"): pages in key order, with
/// the member's ballot floor and decision number; a node it does not count as a member is
/// refused.
#[test]
fn a_member_serves_its_records_in_pages_and_refuses_a_non_member() {
    let mut disk = disk(false);
    for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        disk.keys.insert(
            key.into(),
            DurableKey::Stored {
                chosen: proposal("c2", i as u64, key),
                seq: i as u64 + 1,
            },
        );
    }
    let config = Config {
        sync_page_keys: 2,
        ..Config::default()
    };
    let mut n = start_with(config, disk);
    let digest = n.membership().digest();
    let ask = |after: Option<&str>| Message::SyncRequest {
        after: after.map(Key::from),
        digest,
    };
    // Keys go in the ids' order (hash, then text), the same on every node.
    assert_eq!(
        step(&mut n, ms(0), from("c2", ask(None))),
        [
            r#"send c2 SyncPage(from the start: [k2=Stored(c2#1="k2" #2), k3=Stored(c2#2="k3" #3)] floor b0 seq 3 done=false)"#
        ]
    );
    assert_eq!(
        step(&mut n, ms(0), from("c2", ask(Some("k3")))),
        [r#"send c2 SyncPage(after k3: [k1=Stored(c2#0="k1" #1)] floor b0 seq 3 done=true)"#]
    );
    assert_eq!(
        step(&mut n, ms(0), from("x9", ask(None))),
        ["send x9 SyncRefused { reason: NotMember }"]
    );
    // A joiner whose membership differs gets this node's view, then a refusal: no page is
    // cut in a view the joiner does not share.
    let other_view = Message::SyncRequest {
        after: None,
        digest: Digest(digest.0 ^ 1),
    };
    assert_eq!(
        step(&mut n, ms(0), from("c2", other_view)),
        [
            "send c2 View(c=c1,c2,c3 departed [])",
            "send c2 SyncRefused { reason: MembershipChanged }"
        ]
    );
}

/// A member whose view differs refused: the joiner sends its own view and asks the same
/// member for the same page again a quarter of `sync_timeout` later (not the next member,
/// and not from the start).
#[test]
fn a_joiner_asks_the_same_page_again_once_views_are_exchanged() {
    let mut n = start_joiner(&["c1", "c2", "c3"]);
    assert_eq!(
        step(&mut n, ms(0), Input::Timeout),
        ["send c2 SyncRequest(from the start)"]
    );
    let page = Message::SyncPage {
        after: None,
        entries: vec![(
            Key::from("k1"),
            DurableKey::Open {
                promised: classic(1, "c2"),
                accepted: None,
            },
        )],
        floor: Ballot::FAST,
        seq: 4,
        done: false,
    };
    let out = step(&mut n, ms(1), from("c2", page));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        step(&mut n, ms(1), persisted(1)),
        ["send c2 SyncRequest(after k1)"]
    );
    let differs = Message::SyncRefused {
        reason: replicator_core::wire::SyncRefusal::MembershipChanged,
    };
    assert_eq!(
        step(&mut n, ms(2), from("c2", differs)),
        ["send c2 View(c=c1,c2,c3,j1 departed [])"]
    );
    assert_eq!(n.poll_timeout(), Some(ms(502)));
    assert_eq!(
        step(&mut n, ms(502), Input::Timeout),
        ["send c2 SyncRequest(after k1)"]
    );
}

/// The joiner's side: it asks one member at a time; it merges a page (a promise or an
/// accepted value is a barrier write, a decision a lazy one) and raises its ballot floor
/// before it asks for the next page; a refusal moves on to the next member.
#[test]
fn a_joiner_writes_each_page_before_asking_for_the_next() {
    let mut n = start_joiner(&["c1", "c2", "c3", "d1", "d2"]);
    assert!(!n.is_ready());
    assert_eq!(
        step(&mut n, ms(0), Input::Timeout),
        ["send c2 SyncRequest(from the start)"]
    );
    // c2 does not count j1 yet: j1 asks the next member a quarter of sync_timeout later.
    let refused = Message::SyncRefused {
        reason: replicator_core::wire::SyncRefusal::NotMember,
    };
    assert_eq!(step(&mut n, ms(1), from("c2", refused)), NOTHING);
    assert_eq!(n.poll_timeout(), Some(ms(501)));
    assert_eq!(
        step(&mut n, ms(501), Input::Timeout),
        ["send c3 SyncRequest(from the start)"]
    );
    let page = |after: Option<&str>, entries: Vec<(&str, DurableKey)>, done| Message::SyncPage {
        after: after.map(Key::from),
        entries: entries
            .into_iter()
            .map(|(k, s)| (Key::from(k), s))
            .collect(),
        floor: classic(1, "c3"),
        seq: 9,
        done,
    };
    let first = page(
        None,
        vec![
            (
                "k2",
                DurableKey::Open {
                    promised: classic(3, "d1"),
                    accepted: Some((classic(2, "d1"), proposal("d1", 7, "r"))),
                },
            ),
            (
                "k3",
                DurableKey::Stored {
                    chosen: proposal("d1", 1, "c"),
                    seq: 4,
                },
            ),
            (
                "k1",
                DurableKey::Open {
                    promised: classic(1, "c2"),
                    accepted: None,
                },
            ),
        ],
        false,
    );
    // The decision is numbered by the joiner itself (#1), not by the member (#4).
    assert_eq!(
        step(&mut n, ms(510), from("c3", first)),
        [concat!(
            r#"persist #1 PutKey(k2 Open(promised b3.d1, accepted b2.d1 d1#7="r")), "#,
            r#"PutKey(k3 Stored(d1#1="c" #1)), PutKey(k1 Open(promised b1.c2, accepted -)), "#,
            "BallotFloor(b1.c3)"
        )]
    );
    assert_eq!(
        step(&mut n, ms(510), persisted(1)),
        ["send c3 SyncRequest(after k1)"]
    );
    // c3's copy is complete: j1 pulls c3's decisions from c3's number at its first page on
    // (a lazy write: pulling again is harmless), then copies from a second member.
    assert_eq!(
        step(&mut n, ms(520), from("c3", page(Some("k1"), vec![], true))),
        ["persist #2 (lazy) CaughtUp { peer: c3, seq: 9 }"]
    );
    assert_eq!(
        step(&mut n, ms(520), Input::Timeout),
        ["send c1 SyncRequest(from the start)"]
    );
    assert_eq!(
        step(&mut n, ms(530), from("c1", page(None, vec![], true))),
        ["persist #3 (lazy) CaughtUp { peer: c1, seq: 9 }"]
    );
    // Two of the three other members of its cluster: a majority. Ready, durably, before it
    // answers anything as a ready node.
    assert!(!n.is_ready());
    assert_eq!(
        step(&mut n, ms(530), Input::Timeout),
        ["note Ready", "persist #4 Ready(true)"]
    );
    assert!(n.is_ready());
}

fn stored_disk(with_d: bool, keys: &[&str]) -> Recovered {
    let mut disk = disk(with_d);
    for (i, key) in keys.iter().enumerate() {
        disk.apply(&WriteOp::PutKey {
            key: (*key).into(),
            state: DurableKey::Stored {
                chosen: proposal("c2", i as u64, key),
                seq: i as u64 + 1,
            },
        });
    }
    disk
}

/// Catch-up (PROTOCOL "Decide and catch-up"), the serving side: a member of the same cluster
/// gets the decisions numbered after its `after`, in order; a node of another cluster gets
/// nothing (it catches up from its own cluster).
#[test]
fn a_member_serves_its_decisions_in_their_order_to_its_own_cluster_only() {
    let mut n = start(stored_disk(true, &["k1", "k2", "k3"]));
    assert_eq!(
        step(&mut n, ms(0), from("c2", Message::CatchUp { after: 1 })),
        [r#"send c2 CatchUpPage([k2=c2#1="k2", k3=c2#2="k3"] last 3 latest 3)"#]
    );
    assert_eq!(
        step(&mut n, ms(0), from("d1", Message::CatchUp { after: 0 })),
        NOTHING
    );
}

/// Catch-up, the pulling side: every member of its cluster is asked from where it left off;
/// a page's decisions are stored, how far it got is recorded (lazily), and the next page is
/// asked for at once while the member has more.
#[test]
fn a_node_pulls_the_decisions_of_its_cluster_page_by_page() {
    let mut n = start(disk(true));
    let due = n.poll_timeout().expect("a catch-up at start");
    assert_eq!(
        step(&mut n, due, Input::Timeout),
        [
            "send c2 CatchUp { after: 0 }",
            "send c3 CatchUp { after: 0 }"
        ]
    );
    let page = Message::CatchUpPage {
        entries: vec![("k".into(), proposal("c3", 1, "v"))],
        last: 4,
        latest: 6,
    };
    assert_eq!(
        step(&mut n, due, from("c2", page)),
        [
            "send c2 CatchUp { after: 4 }",
            r#"persist #1 (lazy) CaughtUp { peer: c2, seq: 4 }, PutKey(k Stored(c3#1="v" #1))"#,
        ]
    );
    // A page that goes back (a duplicate overtaken by a later one) is not news.
    let old = Message::CatchUpPage {
        entries: vec![("j".into(), proposal("c3", 2, "w"))],
        last: 2,
        latest: 6,
    };
    assert_eq!(step(&mut n, due, from("c2", old)), NOTHING);
    assert_eq!(n.key_state(&"j".into()), Ok(None));
}

/// A representative (PROTOCOL "Terms"): it sends a remote proposer's Accept to the listed
/// nodes of its own cluster (itself included) and forwards their own answers: at once once a
/// majority of its cluster accepted (what phase 2 needs), then one by one.
#[test]
fn a_representative_forwards_its_clusters_own_answers() {
    let mut n = start(disk(true));
    let accept = Request::Accept {
        key: "k".into(),
        ballot: Ballot::FAST,
        proposal: proposal("d1", 0, "v"),
        digest: n.membership().digest(),
    };
    let relay = Message::Relay {
        cluster: "c".into(),
        targets: vec!["c1".into(), "c2".into(), "c3".into(), "d2".into()],
        request: accept,
    };
    // d2 is not of this cluster: a representative never reaches beyond its own.
    assert_eq!(
        step(&mut n, ms(0), from("d1", relay)),
        [
            r#"send c2 Accept(k b0 d1#0="v")"#,
            r#"send c3 Accept(k b0 d1#0="v")"#,
            r#"persist #1 PutKey(k Open(promised b0, accepted b0 d1#0="v"))"#,
        ]
    );
    // Its own Accepted: one of three, held for now.
    assert_eq!(step(&mut n, ms(0), persisted(1)), NOTHING);
    let digest = n.membership().digest();
    let accepted = |node: &str| {
        Message::Response(Response::Ballot {
            key: "k".into(),
            ballot: Ballot::FAST,
            proposal: Some(pid("d1", 0)),
            node: node.into(),
            digest,
            answer: Answer::Accepted,
        })
    };
    assert_eq!(
        step(&mut n, ms(1), from("c2", accepted("c2"))),
        [
            r#"send d1 RelayReply(c ["Answer(k b0 d1#0 by c1: Accepted)", "Answer(k b0 d1#0 by c2: Accepted)"])"#
        ]
    );
    assert_eq!(
        step(&mut n, ms(2), from("c3", accepted("c3"))),
        [r#"send d1 RelayReply(c ["Answer(k b0 d1#0 by c3: Accepted)"])"#]
    );
    assert_eq!(
        n.stats().relays,
        0,
        "every target answered: the relay is closed"
    );
}

/// Leaving (PROTOCOL "Leaving safely"): nothing new is promised, accepted or written for a
/// client; every member is asked to pull this node's decisions up to its last; the node is
/// done once every member answered clear.
#[test]
fn a_leaving_node_asks_every_member_and_completes_once_all_are_clear() {
    let mut n = start(stored_disk(true, &["k1", "k2"]));
    // Its last decision is #2: every member is asked to hold up to it.
    assert_eq!(
        step(&mut n, ms(0), Input::Leave),
        [
            "send d2 LeaveCheck { seq: 2 }",
            "send d1 LeaveCheck { seq: 2 }",
            "send c2 LeaveCheck { seq: 2 }",
            "send c3 LeaveCheck { seq: 2 }",
        ]
    );
    assert!(n.is_leaving());
    assert_eq!(
        step(&mut n, ms(1), put("k", "v", 1)),
        ["reply 1 Put(NotReady(Leaving))"]
    );
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(2), from("c2", msg)),
        ["send c2 Answer(k b1.c2 by c1: Refused(Leaving))"]
    );
    assert_eq!(n.key_state(&"k".into()), Ok(None));
    let clear = |seq| Message::LeaveClear { seq };
    assert_eq!(step(&mut n, ms(3), from("c2", clear(2))), NOTHING);
    // c3 holds up to #1 only: not clear yet.
    assert_eq!(step(&mut n, ms(3), from("c3", clear(1))), NOTHING);
    for node in ["d1", "d2"] {
        assert_eq!(step(&mut n, ms(3), from(node, clear(u64::MAX))), NOTHING);
    }
    // Asked again, every backoff_max, is the member not clear yet (the periodic catch-up,
    // due first, runs too).
    assert_eq!(
        step(&mut n, ms(600), Input::Timeout),
        [
            "send c2 CatchUp { after: 0 }",
            "send c3 CatchUp { after: 0 }",
            "send c3 LeaveCheck { seq: 2 }",
        ]
    );
    assert_eq!(
        step(&mut n, ms(601), from("c3", clear(2))),
        ["note LeaveComplete"]
    );
    assert_eq!(step(&mut n, ms(602), from("c3", clear(2))), NOTHING);
}

/// The member's side of a leave check: a member of the leaver's cluster starts pulling its
/// decisions and answers how far it holds them; a member of another cluster needs none; a
/// node it does not know gets no answer.
#[test]
fn a_leave_check_is_answered_with_how_far_this_node_holds_the_leavers_decisions() {
    let mut n = start(disk(true));
    assert_eq!(
        step(&mut n, ms(0), from("c2", Message::LeaveCheck { seq: 5 })),
        [
            "send c2 CatchUp { after: 0 }",
            "send c2 LeaveClear { seq: 0 }"
        ]
    );
    assert_eq!(
        step(&mut n, ms(0), from("d1", Message::LeaveCheck { seq: 5 })),
        ["send d1 LeaveClear { seq: 18446744073709551615 }"]
    );
    // A node it does not know as a member: it cannot tell its cluster, so it vouches for
    // nothing (the leaver asks again).
    assert_eq!(
        step(&mut n, ms(0), from("x9", Message::LeaveCheck { seq: 5 })),
        NOTHING
    );
}

/// The fast round needs everyone: when a participant is silent at half the vote timeout, the
/// proposer runs a classic ballot at once (its round ceiling written first), and in phase 2
/// it reaches the silent cluster through the next representative.
#[test]
fn a_fast_round_missing_an_answer_falls_back_to_a_classic_ballot() {
    let mut n = start(disk(true));
    let p = pid("c1", 0);
    // The catch-up every node runs at start, out of the way.
    let due = n.poll_timeout().expect("a catch-up at start");
    step(&mut n, due, Input::Timeout);
    assert!(due <= ms(10));
    step(&mut n, ms(10), put("k", "v", 1));
    step(&mut n, ms(10), persisted(1));
    step(&mut n, ms(10), persisted(2));
    for node in ["c2", "c3"] {
        let msg = answer(
            &n,
            node,
            "k",
            Ballot::FAST,
            Some(p.clone()),
            Answer::Accepted,
        );
        step(&mut n, ms(15), from(node, msg));
    }
    // Four of five accepted; d1, the representative of d, relayed nothing back. At half the
    // vote timeout: a classic ballot, above the fast round.
    assert_eq!(
        step(&mut n, ms(510), Input::Timeout),
        ["persist #3 RoundCeiling(1025)"]
    );
    assert_eq!(
        step(&mut n, ms(510), persisted(3)),
        [
            "send c2 Prepare(k b1.c1)",
            "send c3 Prepare(k b1.c1)",
            r#"persist #4 PutKey(k Open(promised b1.c1, accepted b0 c1#0="v"))"#,
        ]
    );
    assert_eq!(step(&mut n, ms(510), persisted(4)), NOTHING);
    let b = classic(1, "c1");
    let own = Some((Ballot::FAST, proposal("c1", 0, "v")));
    let msg = answer(&n, "c2", "k", b, None, Answer::Promise { accepted: own });
    // Phase 2 goes to d through d2 now: d1 did not answer.
    assert_eq!(
        step(&mut n, ms(511), from("c2", msg)),
        [
            r#"send d2 Relay(d [d2, d1] Accept(k b1.c1 c1#0="v"))"#,
            r#"send c2 Accept(k b1.c1 c1#0="v")"#,
            r#"send c3 Accept(k b1.c1 c1#0="v")"#,
            r#"persist #5 PutKey(k Open(promised b1.c1, accepted b1.c1 c1#0="v"))"#,
        ]
    );
}

// ==================================================================== what a node holds in memory

/// Node c1 on a disk image it reads its decisions from (the image is what the test makes
/// durable).
fn start_on(config: Config, image: &DiskImage) -> Node {
    let recovered = image.lock().clone();
    Node::new(
        config,
        "c1".into(),
        "c".into(),
        recovered,
        Box::new(image.clone()),
        Time::ZERO,
        1,
    )
    .unwrap()
}

/// Feeds `input`, then makes every write it issued durable on `image` and reports it; renders
/// everything that came out.
fn step_durable(n: &mut Node, image: &DiskImage, now: Time, input: Input) -> Vec<String> {
    n.handle(now, input);
    let mut shown = Vec::new();
    loop {
        let out = drain(n);
        if out.is_empty() {
            return shown;
        }
        let mut upto = None;
        for o in &out {
            if let Output::Persist { write, ops, .. } = o {
                image.lock().apply_all(ops);
                upto = Some(*write);
            }
        }
        shown.extend(out.iter().map(show));
        match upto {
            Some(upto) => n.handle(now, Input::Persisted { upto }),
            None => return shown,
        }
    }
}

fn decide(key: &str, counter: u64) -> Message {
    Message::Request(Request::Decide {
        key: key.into(),
        chosen: proposal("c2", counter, key),
    })
}

/// PROTOCOL "What a node holds in memory": a decision stays in memory until its write is
/// durable (the store does not have it before), then memory lets it go and every read of it
/// goes to the store.
#[test]
fn a_decision_leaves_memory_once_durable_and_is_read_from_the_store() {
    let image = DiskImage::new(disk(false));
    let mut n = start_on(Config::default(), &image);
    assert_eq!(
        step(&mut n, ms(1), from("c2", decide("k", 1))),
        [r#"persist #1 (lazy) PutKey(k Stored(c2#1="k" #1))"#]
    );
    assert_eq!(n.stats().undurable_decisions, 1);
    // Not durable, not in the store: answered from memory.
    assert_eq!(
        step(&mut n, ms(1), get("k", 7)),
        [r#"reply 7 Get(Value("k"))"#]
    );
    image.lock().apply_all(&[WriteOp::PutKey {
        key: "k".into(),
        state: DurableKey::Stored {
            chosen: proposal("c2", 1, "k"),
            seq: 1,
        },
    }]);
    assert_eq!(step(&mut n, ms(2), persisted(1)), NOTHING);
    assert_eq!(n.stats().undurable_decisions, 0);
    assert_eq!(n.records_in_memory().count(), 0);
    // Every question about it is answered from the store.
    assert_eq!(
        step(&mut n, ms(3), get("k", 8)),
        [r#"reply 8 Get(Value("k"))"#]
    );
    let msg = prepare(&n, "k", classic(4, "c3"));
    assert_eq!(
        step(&mut n, ms(3), from("c3", msg)),
        [r#"send c3 Answer(k b4.c3 by c1: Stored(c2#1="k"))"#]
    );
    assert_eq!(step(&mut n, ms(3), from("c3", decide("k", 1))), NOTHING);
    assert_eq!(n.stats().keys_stored, 1);
}

/// A decision the store cannot read (a damaged record, a failed read) is as a key damaged at a
/// restart: no promise, no accept, no answer to a read's question; once readable again the
/// decision answers.
#[test]
fn an_unreadable_decision_abstains() {
    let mut disk = disk(false);
    disk.apply(&WriteOp::PutKey {
        key: "k".into(),
        state: DurableKey::Stored {
            chosen: proposal("c2", 1, "v"),
            seq: 1,
        },
    });
    let image = DiskImage::new(disk);
    let mut n = start_on(Config::default(), &image);
    image.fail_reads(1000, 1);
    let msg = prepare(&n, "k", classic(1, "c2"));
    assert_eq!(
        step(&mut n, ms(1), from("c2", msg.clone())),
        ["send c2 Answer(k b1.c2 by c1: Refused(Abstaining))"]
    );
    let query = Message::Request(Request::Query {
        key: "k".into(),
        tag: 9,
        digest: n.membership().digest(),
    });
    assert_eq!(
        step(&mut n, ms(1), from("c2", query)),
        ["send c2 QueryAnswer(k #9 by c1: Refused(Abstaining))"]
    );
    assert_eq!(
        step(&mut n, ms(1), from("c2", Message::CatchUp { after: 0 })),
        NOTHING,
        "a catch-up page the store cannot give is not answered (the member asks again)"
    );
    assert!(image.failed_reads() >= 3);
    image.fail_reads(0, 0);
    assert_eq!(
        step(&mut n, ms(2), from("c2", msg)),
        [r#"send c2 Answer(k b1.c2 by c1: Stored(c2#1="v"))"#]
    );
}

/// Catch-up pages run over the store's decisions and on into the ones still in memory, in
/// their order, each listed once.
#[test]
fn catch_up_pages_run_from_the_store_into_memory() {
    let image = DiskImage::new(disk(false));
    let mut n = start_on(Config::default(), &image);
    for (i, key) in ["k1", "k2"].into_iter().enumerate() {
        step_durable(&mut n, &image, ms(1), from("c2", decide(key, i as u64)));
    }
    assert_eq!(n.stats().undurable_decisions, 0);
    // k3 is decided, its write not durable yet.
    assert_eq!(
        step(&mut n, ms(2), from("c2", decide("k3", 2))),
        [r#"persist #3 (lazy) PutKey(k3 Stored(c2#2="k3" #3))"#]
    );
    // The page waits for every write (the decision numbers it names must be on disk).
    assert_eq!(
        step(&mut n, ms(2), from("c2", Message::CatchUp { after: 1 })),
        ["persist #4 "]
    );
    assert_eq!(
        step_durable(&mut n, &image, ms(3), persisted(4)),
        [r#"send c2 CatchUpPage([k2=c2#1="k2", k3=c2#2="k3"] last 3 latest 3)"#]
    );
}

/// The join-time copy merges, in key order, the store's decisions with the records in memory
/// (open ones, and decisions not durable yet), page by page.
#[test]
fn the_join_copy_merges_the_store_and_memory_in_key_order() {
    let image = DiskImage::new(disk(false));
    let config = Config {
        sync_page_keys: 2,
        ..Config::default()
    };
    let mut n = start_on(config, &image);
    for (i, key) in ["k1", "k3"].into_iter().enumerate() {
        step_durable(&mut n, &image, ms(1), from("c2", decide(key, i as u64)));
    }
    let msg = prepare(&n, "k2", classic(1, "c2"));
    step_durable(&mut n, &image, ms(1), from("c2", msg));
    n.handle(ms(1), from("c2", decide("k4", 9)));
    // Written lazily: the driver makes it durable with the next write it syncs.
    let mut lazy: Vec<WriteOp> = drain(&mut n)
        .into_iter()
        .flat_map(|o| match o {
            Output::Persist { ops, .. } => ops,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(n.records_in_memory().count(), 2, "k2 open, k4 not durable");
    let digest = n.membership().digest();
    let ask = |after: Option<Key>| Message::SyncRequest { after, digest };
    let mut after = None;
    let mut copied = Vec::new();
    for _ in 0..4 {
        n.handle(ms(2), from("c3", ask(after.clone())));
        image.lock().apply_all(&std::mem::take(&mut lazy));
        let out = step_durable(&mut n, &image, ms(2), Input::Timeout);
        let page = out.last().expect("a page").clone();
        let keys: Vec<String> = ["k1", "k2", "k3", "k4"]
            .into_iter()
            .filter(|k| page.contains(&format!("{k}=")))
            .map(String::from)
            .collect();
        after = Some(Key::from(keys.last().expect("keys").as_str()));
        copied.extend(keys);
        if page.contains("done=true") {
            break;
        }
    }
    copied.sort();
    assert_eq!(copied, ["k1", "k2", "k3", "k4"]);
}

/// A joiner whose own record of a copied key cannot be read (it may hold the decision) never
/// writes the copy's open record over it: it abstains for the key. The mark is not forever
/// for a read that only failed for a while: once the decision can be read it is the record.
/// A key with no decision to read stays marked until its decision is learned.
#[test]
fn a_copied_open_record_never_replaces_an_unreadable_one() {
    let disk =
        Recovered::joiner("net".into()).with_members(["c1", "c2", "c3"].into_iter().map(member));
    let image = DiskImage::new(disk.clone());
    let decided = proposal("c1", 1, "v");
    image.lock().apply(&WriteOp::PutKey {
        key: Key::from("k"),
        state: DurableKey::Stored {
            chosen: decided.clone(),
            seq: 1,
        },
    });
    let mut n = Node::new(
        Config::default(),
        "j1".into(),
        "c".into(),
        disk,
        Box::new(image.clone()),
        Time::ZERO,
        1,
    )
    .unwrap();
    assert_eq!(
        step(&mut n, ms(0), Input::Timeout),
        ["send c2 SyncRequest(from the start)"]
    );
    image.fail_reads(1000, 1);
    let open = || DurableKey::Open {
        promised: classic(3, "c2"),
        accepted: None,
    };
    let mut entries = vec![(Key::from("k"), open()), (Key::from("m"), open())];
    entries.sort_by(|a, b| a.0.cmp(&b.0)); // the core's order of keys
    let page = Message::SyncPage {
        after: None,
        entries,
        floor: Ballot::FAST,
        seq: 0,
        done: false,
    };
    let out = step(&mut n, ms(1), from("c2", page));
    assert!(
        !out.iter().any(|o| o.contains("PutKey(")),
        "an open record written over an unreadable one: {out:?}"
    );
    assert_eq!(n.stats().damaged_keys, 2);
    image.fail_reads(0, 1);
    let k = n.key_state(&Key::from("k"));
    assert_eq!(
        k,
        Ok(Some(DurableKey::Stored {
            chosen: decided,
            seq: 1
        }))
    );
    assert_eq!(n.key_state(&Key::from("m")), Err(Unreadable));
}
