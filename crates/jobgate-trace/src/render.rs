//! The narrative as text: a header (ids, time span, who took part), one line
//! per record — offset from the first record, time since the previous one,
//! writer, level, message, the line's telling fields — and a footer saying
//! what was read and what was skipped.

use std::io::{self, Write};

use serde_json::Value;

use crate::record::Record;
use crate::select::Trace;
use crate::target::short_id;
use crate::timestamp::Elapsed;
use crate::words::plural;

/// Fields every line has, or that only a machine needs; not shown per step.
const QUIET_FIELDS: [&str; 13] = [
    "timestamp",
    "level",
    "message",
    "service",
    "trace_id",
    "span_id",
    "parent_span_id",
    "time",
    "tag",
    "target",
    "logger",
    "thread",
    "taskName",
];
/// Fields shown first, in this order; the others follow in name order.
const LEADING_FIELDS: [&str; 12] = [
    "job_id",
    "attempt",
    "kind",
    "queue",
    "event",
    "status",
    "outcome",
    "reason",
    "duration_ms",
    "error",
    "code",
    "exception",
];
/// Fields holding a traceback: their last line says what happened.
const TRACEBACK_FIELDS: [&str; 3] = ["exception", "stack", "traceback"];
const WRITER_WIDTH_MAX: usize = 16;
/// Messages are padded to align the fields after them, up to this width.
const MESSAGE_WIDTH_MAX: usize = 32;
const VALUE_CHARS_MAX: usize = 80;

/// Writes the narrative of `trace` as text.
pub fn write_text(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    write_header(trace, out)?;
    writeln!(out)?;
    write_steps(trace, out)?;
    writeln!(out)?;
    write_footer(trace, out)
}

fn write_header(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    let trace_ids = distinct(trace.records.iter().filter_map(Record::trace_id));
    let job_ids = distinct(trace.records.iter().filter_map(Record::job_id));
    let shared: Vec<String> = trace_ids
        .iter()
        .map(|id| {
            if trace.shared_traces.iter().any(|shared| shared == id) {
                format!("{id} (shared with other jobs: only this job's lines)")
            } else {
                id.clone()
            }
        })
        .collect();
    write_list(out, "trace", &shared)?;
    write_list(out, "job", &job_ids)?;
    if let (Some(first), Some(last)) = (trace.records.first(), trace.records.last()) {
        writeln!(
            out,
            "{:<10}{}",
            "first",
            first.text("timestamp").unwrap_or("?")
        )?;
        writeln!(
            out,
            "{:<10}{}",
            "last",
            last.text("timestamp").unwrap_or("?")
        )?;
        let duration = Elapsed(last.timestamp.nanos_since(first.timestamp));
        writeln!(out, "{:<10}{duration}", "duration")?;
    }
    writeln!(out, "{:<10}{}", "services", services(&trace.records))
}

/// `label  a` or `labels a, b`; nothing when the list is empty.
fn write_list(out: &mut dyn Write, label: &str, items: &[String]) -> io::Result<()> {
    match items {
        [] => Ok(()),
        [one] => writeln!(out, "{label:<10}{one}"),
        many => writeln!(out, "{:<10}{}", format!("{label}s"), many.join(", ")),
    }
}

/// `ios-app (client) 2 · jobgate (gateway) 3 · …`, in order of appearance.
fn services(records: &[Record]) -> String {
    let mut counts: Vec<(&str, &str, usize)> = Vec::new();
    for record in records {
        let (service, role) = (record.service(), record.role.name());
        match counts
            .iter_mut()
            .find(|(s, r, _)| *s == service && *r == role)
        {
            Some((_, _, count)) => *count += 1,
            None => counts.push((service, role, 1)),
        }
    }
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(service, role, count)| format!("{service} ({role}) {count}"))
        .collect();
    parts.join(" · ")
}

fn write_steps(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    let Some(first) = trace.records.first() else {
        return Ok(());
    };
    let show_trace = distinct(trace.records.iter().filter_map(Record::trace_id)).len() > 1;
    let offsets: Vec<String> = trace
        .records
        .iter()
        .map(|record| {
            format!(
                "+{}",
                Elapsed(record.timestamp.nanos_since(first.timestamp))
            )
        })
        .collect();
    let time_width = offsets.iter().map(String::len).max().unwrap_or(0).max(7);
    let writer_width = trace
        .records
        .iter()
        .map(|record| record.writer().chars().count().min(WRITER_WIDTH_MAX))
        .max()
        .unwrap_or(0)
        .max("service".len());
    let message_width = trace
        .records
        .iter()
        .map(|record| record.text("message").unwrap_or("").chars().count())
        .max()
        .unwrap_or(0)
        .min(MESSAGE_WIDTH_MAX);
    writeln!(
        out,
        "{:>time_width$}  {:>time_width$}  {:<writer_width$}  {:<5}  message",
        "offset", "step", "service", "level"
    )?;
    let mut previous = first.timestamp;
    for (index, (record, offset)) in trace.records.iter().zip(&offsets).enumerate() {
        let step = if index == 0 {
            String::new()
        } else {
            format!("+{}", Elapsed(record.timestamp.nanos_since(previous)))
        };
        previous = record.timestamp;
        let writer = truncate(record.writer(), WRITER_WIDTH_MAX);
        let level = record.text("level").unwrap_or("-");
        let message = one_line(record.text("message").unwrap_or(""));
        let fields = step_fields(record, show_trace);
        let line = format!(
            "{offset:>time_width$}  {step:>time_width$}  {writer:<writer_width$}  {level:<5}  {message:<message_width$}  {fields}"
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The telling fields of a step: `job=…1c2d0e11 attempt=1 kind=… key=value`.
fn step_fields(record: &Record, show_trace: bool) -> String {
    let mut parts = Vec::new();
    if show_trace && let Some(trace_id) = record.trace_id() {
        parts.push(format!("trace={}", short_id(trace_id)));
    }
    let leading = LEADING_FIELDS
        .iter()
        .filter_map(|key| record.fields.get_key_value(*key));
    let others = record.fields.iter().filter(|(key, _)| {
        !QUIET_FIELDS.contains(&key.as_str()) && !LEADING_FIELDS.contains(&key.as_str())
    });
    for (key, value) in leading.chain(others) {
        match (key.as_str(), value) {
            ("job_id", Value::String(job_id)) => parts.push(format!("job={}", short_id(job_id))),
            (key, value) => parts.push(format!("{key}={}", value_text(key, value))),
        }
    }
    parts.join(" ")
}

/// A value on one line: strings bare unless they need quotes, tracebacks by
/// their last line, other multi-line text by its first, all cut to a length.
fn value_text(key: &str, value: &Value) -> String {
    let text = match value {
        Value::String(text) => {
            let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
            let line = if TRACEBACK_FIELDS.contains(&key) {
                lines.next_back()
            } else {
                lines.next()
            };
            let line = line.unwrap_or("");
            let needs_quotes = line.is_empty()
                || line.contains(|c: char| c.is_whitespace() || c == '=' || c == '"');
            if needs_quotes {
                serde_json::to_string(line).unwrap_or_default()
            } else {
                line.to_owned()
            }
        }
        other => other.to_string(),
    };
    truncate(&text, VALUE_CHARS_MAX)
}

fn write_footer(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    let stats = &trace.stats;
    let files_used = distinct(trace.records.iter().map(|record| record.file.to_string())).len();
    writeln!(
        out,
        "{} from {files_used} of {}; {} read, {} skipped (not a JSON log line with a timestamp)",
        plural(trace.records.len() as u64, "line"),
        plural(stats.files as u64, "file"),
        plural(stats.lines, "line"),
        stats.skipped
    )?;
    for problem in &stats.unreadable {
        writeln!(
            out,
            "warning: {}: {}",
            problem.path.display(),
            problem.reason
        )?;
    }
    Ok(())
}

/// The distinct values, in order of first appearance.
fn distinct<T: AsRef<str>>(values: impl Iterator<Item = T>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for value in values {
        if !seen.iter().any(|known| known == value.as_ref()) {
            seen.push(value.as_ref().to_owned());
        }
    }
    seen
}

/// Control characters escaped, so one record stays on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '\n' => vec!['\\', 'n'],
            '\r' => vec!['\\', 'r'],
            '\t' => vec![' '],
            c if c.is_control() => vec!['?'],
            c => vec![c],
        })
        .collect()
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > max_chars => format!("{}…", &text[..cut]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_values_compactly() {
        assert_eq!(
            value_text("kind", &json!("mc_option_price")),
            "mc_option_price"
        );
        assert_eq!(value_text("reason", &json!("lease lost")), "\"lease lost\"");
        assert_eq!(value_text("attempt", &json!(2)), "2");
        let traceback = "Traceback (most recent call last):\n  File \"x.py\"\nValueError: bad";
        assert_eq!(
            value_text("exception", &json!(traceback)),
            "\"ValueError: bad\""
        );
        assert_eq!(
            value_text("error", &json!({"code": "x"})),
            r#"{"code":"x"}"#
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(one_line("a\nb\tc"), "a\\nb c");
    }
}
