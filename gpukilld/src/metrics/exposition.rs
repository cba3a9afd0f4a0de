//! Writing the Prometheus text format: metric families (HELP and TYPE with their first
//! sample, so a family without samples is absent), samples with escaped label values.

use std::fmt::{Display, Write};
use std::time::Duration;

/// A sample value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Seconds(Duration),
    Bool(bool),
}

impl Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Uint(v) => write!(f, "{v}"),
            // Rust never writes an exponent for f64; every value here is finite.
            Value::Float(v) => write!(f, "{v}"),
            Value::Seconds(d) => write!(f, "{}", d.as_secs_f64()),
            Value::Bool(b) => f.write_str(if *b { "1" } else { "0" }),
        }
    }
}

/// The text being written.
pub(super) struct Exposition {
    /// The text written so far.
    pub text: String,
}

impl Exposition {
    /// Starts a family; its HELP and TYPE lines are written with its first sample, so a
    /// family without samples (a metric no device reports) is absent altogether.
    pub fn family(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
    ) -> Family<'_> {
        Family {
            out: self,
            name,
            kind,
            help,
            started: false,
        }
    }
}

/// One metric family being written.
pub(super) struct Family<'a> {
    out: &'a mut Exposition,
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    started: bool,
}

impl Family<'_> {
    /// Writes one sample: `escaped` is a label list already escaped (or ""), `labels` more
    /// labels whose values are escaped here.
    pub fn sample(&mut self, escaped: &str, labels: &[(&str, &str)], value: Value) {
        let text = &mut self.out.text;
        if !self.started {
            self.started = true;
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n",
                name = self.name,
                help = self.help,
                kind = self.kind
            );
        }
        text.push_str(self.name);
        if !escaped.is_empty() || !labels.is_empty() {
            text.push('{');
            text.push_str(escaped);
            for (n, (name, value)) in labels.iter().enumerate() {
                if n > 0 || !escaped.is_empty() {
                    text.push(',');
                }
                text.push_str(name);
                text.push_str("=\"");
                escape_into(text, value);
                text.push('"');
            }
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
    }
}

/// Appends `value` escaped as a label value: backslash, double quote and line feed.
pub(super) fn escape_into(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
