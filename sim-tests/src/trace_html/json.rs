//! A small JSON writer for the page's data. Its strings are safe inside an HTML `<script>`
//! element: `<`, `>` and `&` are written as `\u` escapes, so no key or value can close the
//! element or open another (and the line separators JavaScript once treated as newlines are
//! escaped too).

use std::fmt::Write as _;

/// Writes JSON into a string; the caller keeps the structure balanced.
#[derive(Default)]
pub(super) struct Json {
    pub(super) out: String,
    /// Whether the next value in the current object or array needs a comma first.
    comma: bool,
}

impl Json {
    pub(super) fn open_object(&mut self) {
        self.separate();
        self.out.push('{');
        self.comma = false;
    }
    pub(super) fn close_object(&mut self) {
        self.out.push('}');
        self.comma = true;
    }
    pub(super) fn open_array(&mut self) {
        self.separate();
        self.out.push('[');
        self.comma = false;
    }
    pub(super) fn close_array(&mut self) {
        self.out.push(']');
        self.comma = true;
    }
    /// The name of the next member of an object.
    pub(super) fn name(&mut self, name: &str) {
        self.separate();
        write_string(&mut self.out, name);
        self.out.push(':');
        self.comma = false;
    }
    pub(super) fn string(&mut self, s: &str) {
        self.separate();
        write_string(&mut self.out, s);
        self.comma = true;
    }
    pub(super) fn opt_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.raw("null"),
        }
    }
    pub(super) fn number(&mut self, n: u64) {
        self.separate();
        let _ = write!(self.out, "{n}");
        self.comma = true;
    }
    pub(super) fn opt_number(&mut self, n: Option<u64>) {
        match n {
            Some(n) => self.number(n),
            None => self.raw("null"),
        }
    }
    pub(super) fn boolean(&mut self, b: bool) {
        self.raw(if b { "true" } else { "false" });
    }
    fn raw(&mut self, token: &str) {
        self.separate();
        self.out.push_str(token);
        self.comma = true;
    }
    fn separate(&mut self) {
        if self.comma {
            self.out.push(',');
            self.comma = false;
        }
    }
}

/// A JSON string literal that cannot end a `<script>` element.
pub(super) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Text for HTML element content or a quoted attribute.
pub(super) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
