//! The picture of a run: one arrow per message of the text trace, dropped and lost ones
//! marked, spans for faults, the violation of an injected-bug seed, and a page no key can break.

use replicator_core::{InjectedBug, Key, NodeId, Time};
use transport_sim::{MessageAbout, TraceEvent, TraceMode, TraceWhat, WorldChange};

use super::{Fate, Violation, build, render};
use crate::run::{Outcome, with_trace};
use crate::{Shape, bug_shape_targeted, draw, hunt, run};

fn traced(seed: u64, shape: &Shape) -> Outcome {
    run(&with_trace(&draw(seed, shape), TraceMode::Keep))
}

/// The message lines of a text trace, read from the text alone: a copy sent (`send to`,
/// `send (dup) to`) or lost by the network (`lost to`).
fn message_lines(trace: &[String]) -> (usize, usize) {
    let sent = trace
        .iter()
        .filter(|l| {
            (l.contains(" send to ") && !l.contains(" send to unknown node"))
                || l.contains(" send (dup) to ")
        })
        .count();
    let lost = trace.iter().filter(|l| l.contains(" lost to ")).count();
    (sent, lost)
}

/// A seed with faults and a lossy network: drops and losses to draw.
fn faulty_seed() -> (u64, Outcome) {
    (0..40)
        .map(|seed| (seed, traced(seed, &Shape::default())))
        .find(|(_, o)| {
            o.trace.iter().any(|l| l.contains(" drop from "))
                && o.trace.iter().any(|l| l.contains(" lost to "))
                && o.trace.iter().any(|l| l.contains("FAULT crash"))
        })
        .expect("one of the first 40 seeds drops, loses and crashes")
}

#[test]
fn one_arrow_per_message_with_dropped_and_lost_marked() {
    let (seed, outcome) = faulty_seed();
    let p = build(&outcome.trace, &outcome.events);
    let (sent, lost) = message_lines(&outcome.trace);
    assert!(sent > 100, "seed {seed}: only {sent} messages");
    assert_eq!(
        p.arrows.len(),
        sent + lost,
        "seed {seed}: arrows vs message lines"
    );
    let count = |f: fn(&Fate) -> bool| p.arrows.iter().filter(|a| f(&a.fate)).count();
    let recv = outcome
        .trace
        .iter()
        .filter(|l| l.contains(" recv from "))
        .count();
    let drops = outcome
        .trace
        .iter()
        .filter(|l| l.contains(" drop from "))
        .count();
    assert_eq!(count(|f| *f == Fate::Delivered), recv);
    assert_eq!(count(|f| matches!(f, Fate::Dropped(_))), drops);
    assert_eq!(count(|f| *f == Fate::Lost), lost);
    let dups = outcome
        .trace
        .iter()
        .filter(|l| l.contains(" send (dup) to "))
        .count();
    assert_eq!(p.arrows.iter().filter(|a| a.dup).count(), dups);
    // A delivered arrow ends where it was received, never before it was sent.
    assert!(p.arrows.iter().all(|a| a.end_us >= a.sent_us));
    // Crashes shade their lanes.
    assert!(p.spans.iter().any(|s| s.kind == "down"));
    // The page's data carries every arrow with its fate.
    let json = p.to_json("t", None);
    assert_eq!(json.matches("\"fate\":").count(), p.arrows.len());
    assert_eq!(
        json.matches("\"fate\":\"dropped\"").count() + json.matches("\"fate\":\"lost\"").count(),
        drops + lost
    );
}

#[test]
fn an_injected_bug_seed_shows_its_violation_and_its_key() {
    let shape = bug_shape_targeted(InjectedBug::AcceptBelowPromise);
    let (seed, _, _) = hunt(&shape, 0, 50, true).expect("the bug is caught within 50 seeds");
    let outcome = traced(seed, &shape);
    let failure = outcome
        .result
        .as_ref()
        .expect_err("the traced replay fails too");
    let violation = Violation::of(failure);
    let key = violation.key.clone().expect("the violation names a key");
    let page = render("bug", &outcome.trace, &outcome.events, Some(&violation));
    let data = data_of(&page);
    assert!(
        data.contains(&format!(
            "\"violation\":{{\"t\":{},\"invariant\":",
            violation.at_us
        )),
        "the page's data carries the violation"
    );
    let p = build(&outcome.trace, &outcome.events);
    assert!(
        p.arrows.iter().any(|a| a.key.as_deref() == Some(&key)),
        "messages about the violating key {key} are drawn"
    );
    assert!(page.contains("class=\"violation-banner\""));
}

#[test]
fn a_passing_run_has_no_violation() {
    let outcome = traced(3, &Shape::default());
    assert!(outcome.result.is_ok());
    let page = render("ok", &outcome.trace, &outcome.events, None);
    assert!(data_of(&page).ends_with("\"violation\":null}"));
}

/// The JSON inside the page's data element.
fn data_of(page: &str) -> &str {
    let open = "<script id=\"trace-data\" type=\"application/json\">";
    let start = page.find(open).expect("the data element") + open.len();
    let len = page[start..].find("</script>").expect("its end");
    &page[start..start + len]
}

#[test]
fn no_key_value_or_detail_can_break_the_page() {
    let evil = "</script><b>x</b>&\u{2028}\"'";
    let (a, b) = (NodeId::new("n00.0"), NodeId::new("n00.1"));
    let events = vec![
        TraceEvent {
            at: Time::from_micros(10),
            line: 0,
            what: TraceWhat::Sent {
                msg: 0,
                from: a.clone(),
                to: b.clone(),
                arrives: Time::from_micros(900),
                dup: false,
                about: MessageAbout {
                    kind: "Prepare",
                    key: Some(Key::new(evil)),
                },
            },
        },
        TraceEvent {
            at: Time::from_micros(20),
            line: 1,
            what: TraceWhat::Call {
                node: b,
                call: 0,
                key: Some(Key::new(evil)),
                lost: false,
            },
        },
    ];
    let lines = vec![
        format!("0.000010s n00.0 send to n00.1 at 0.000900s Prepare {{ key: {evil} }}"),
        format!("0.000020s n00.1 client call 0 Put {{ key: {evil} }}"),
    ];
    let violation = Violation {
        at_us: 20,
        invariant: evil.into(),
        detail: evil.into(),
        key: Some(evil.into()),
    };
    let page = render(evil, &lines, &events, Some(&violation));
    // Only the page's own two script elements end; nothing of the data opens an element.
    assert_eq!(page.matches("</script>").count(), 2, "{page}");
    assert!(!page.contains("<b>"));
    let data = data_of(&page);
    assert!(!data.contains('<') && !data.contains('>') && !data.contains('\u{2028}'));
    assert!(data.contains("\\u003c/script\\u003e\\u003cb\\u003ex"));
    assert!(page.contains("<title>&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;&amp;"));
    // Every placeholder of the template was filled.
    assert!(!page.contains("{{"));
    // Self-contained: nothing is loaded from anywhere.
    for outside in ["src=", "href=", "@import", "url(http", "fetch("] {
        assert!(
            !page.contains(outside),
            "the page loads something: {outside}"
        );
    }
}

#[test]
fn faults_become_spans_that_end_where_they_end() {
    let n = |s: &str| NodeId::new(s);
    let at = |us: u64, line: usize, what: TraceWhat| TraceEvent {
        at: Time::from_micros(us),
        line,
        what,
    };
    let world = |node: Option<&str>, change| TraceWhat::World {
        node: node.map(n),
        change,
    };
    let events = vec![
        at(100, 0, world(Some("n01.0"), WorldChange::Crash)),
        at(
            150,
            1,
            world(
                None,
                WorldChange::Partition {
                    id: 4,
                    members: vec![n("n00.1"), n("n00.0")],
                    one_way: false,
                    until: Time::from_micros(900),
                },
            ),
        ),
        at(
            200,
            2,
            world(
                Some("n00.0"),
                WorldChange::Pause {
                    until: Time::from_micros(300),
                },
            ),
        ),
        at(400, 3, world(Some("n01.0"), WorldChange::Restart)),
        at(500, 4, world(None, WorldChange::Heal { id: 4 })),
        at(1000, 5, world(Some("n00.1"), WorldChange::Goodbye)),
    ];
    let lines: Vec<String> = (0..6).map(|i| format!("line {i}")).collect();
    let p = build(&lines, &events);
    assert_eq!(
        p.nodes,
        ["n00.0", "n00.1", "n01.0"],
        "lanes by cluster, then number"
    );
    let span = |node: usize, kind: &str| {
        let s = p
            .spans
            .iter()
            .find(|s| s.node == node && s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} span on lane {node}: {:?}", p.spans));
        (s.from_us, s.to_us)
    };
    assert_eq!(span(2, "down"), (100, 400));
    assert_eq!(span(0, "partitioned"), (150, 500));
    assert_eq!(span(1, "partitioned"), (150, 500));
    assert_eq!(span(0, "paused"), (200, 300));
    assert_eq!(span(1, "departed"), (1000, 1000));
    assert_eq!(p.spans.len(), 5);
}
