//! One seed's run as a picture: a self-contained HTML page (inline CSS, script and data,
//! nothing fetched) with a sequence diagram of the run: a lane per node grouped by cluster,
//! every message as an arrow from its send to its delivery (dropped and lost ones crossed),
//! faults as shaded spans, client calls with their answers, and the violation, if any, with
//! the events on its key. Built from the world's structured trace, not by parsing its text.
//!
//! | file (in `trace_html/`) | what it does |
//! |---|---|
//! | here | [`render`], [`Violation`], writing a run's page next to its trace |
//! | `model.rs` | the [`Picture`]: lanes, arrows, spans, calls, marks; its JSON |
//! | `json.rs` | JSON that is safe inside `<script>`, HTML escaping |
//! | `page.html`, `page.css`, `page.js` | the page's template, style and drawing code |

mod json;
mod model;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use transport_sim::TraceEvent;

use crate::run::{Failure, Outcome};

pub use model::{Arrow, Call, Fate, Mark, Picture, Span, build};

const TEMPLATE: &str = include_str!("trace_html/page.html");
const STYLE: &str = include_str!("trace_html/page.css");
const SCRIPT: &str = include_str!("trace_html/page.js");

/// The broken rule a page highlights.
#[derive(Clone, Debug)]
pub struct Violation {
    pub at_us: u64,
    pub invariant: String,
    pub detail: String,
    pub key: Option<String>,
}

impl Violation {
    pub fn of(failure: &Failure) -> Violation {
        Violation {
            at_us: failure.at.as_micros(),
            invariant: failure.broken.invariant.to_string(),
            detail: failure.broken.detail.clone(),
            key: failure.broken.key.as_ref().map(|k| k.as_str().to_string()),
        }
    }
}

/// The page of a run: `lines` is its kept trace, `events` the structured records of it.
pub fn render(
    title: &str,
    lines: &[String],
    events: &[TraceEvent],
    violation: Option<&Violation>,
) -> String {
    let picture = build(lines, events);
    let data = picture.to_json(title, violation);
    // One pass over the template: a replaced part is never searched again, so nothing in the
    // data can be taken for a placeholder.
    let mut page = String::with_capacity(TEMPLATE.len() + STYLE.len() + SCRIPT.len() + data.len());
    let mut rest = TEMPLATE;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        page.push_str(&rest[..start]);
        match &rest[start + 2..start + len] {
            "TITLE" => page.push_str(&json::escape_html(title)),
            "STYLE" => page.push_str(STYLE),
            "SCRIPT" => page.push_str(SCRIPT),
            "DATA" => page.push_str(&data),
            other => panic!("page.html names an unknown part {{{{{other}}}}}"),
        }
        rest = &rest[start + len + 2..];
    }
    page.push_str(rest);
    page
}

/// The page's path next to a trace file: `seed-N.trace` gives `seed-N.html`.
pub fn page_path(trace: &Path) -> PathBuf {
    trace.with_extension("html")
}

/// Writes the page of a run kept with its trace to `path`.
pub fn write_page(path: &Path, seed: u64, outcome: &Outcome) -> std::io::Result<()> {
    let violation = outcome.result.as_ref().err().map(Violation::of);
    let title = match &violation {
        Some(v) => format!("seed {seed}: {}", v.invariant),
        None => format!("seed {seed}: passed"),
    };
    let page = render(&title, &outcome.trace, &outcome.events, violation.as_ref());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, page)
}
