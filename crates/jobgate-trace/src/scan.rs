//! One streaming pass over the log files: every line is parsed just enough
//! to read its timestamp and ids (borrowed, no allocation), and only the
//! lines a caller keeps are parsed in full. Lines that are not a JSON object
//! with an RFC 3339 `timestamp` are counted and skipped.
//!
//! Besides plain JSON lines, the default layout of Fluentd's `file` output
//! (`<time>\t<tag>\t<json>`) is read too: the JSON after the first tab.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::files::{self, Unreadable};
use crate::lines::{self, Line, MAX_LINE_BYTES};
use crate::target::LineIds;
use crate::timestamp::Timestamp;

/// What reading the files found, beside the selected lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// How many files were read.
    pub files: usize,
    /// How many non-blank lines they held.
    pub lines: u64,
    /// Lines skipped: not a JSON object, no RFC 3339 `timestamp`, or too long.
    pub skipped: u64,
    /// Files and directories that could not be read, in part or at all.
    pub unreadable: Vec<Unreadable>,
}

/// The `--since`/`--until` window, both ends included.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    pub(crate) since: Option<Timestamp>,
    pub(crate) until: Option<Timestamp>,
}

impl Window {
    fn contains(self, moment: Timestamp) -> bool {
        self.since.is_none_or(|since| since <= moment)
            && self.until.is_none_or(|until| moment <= until)
    }

    pub(crate) fn is_set(self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// A readable line inside the window, as the visitor of [`scan`] sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub(crate) timestamp: Timestamp,
    pub(crate) ids: LineIds<'a>,
    /// The JSON object, without what surrounds it on the line.
    pub(crate) json: &'a [u8],
    pub(crate) file: usize,
    pub(crate) line: u64,
}

/// The fields read from every line. `RawValue` borrows the text and accepts
/// any JSON value, so a line with a numeric `job_id` still parses (and just
/// has no job id).
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trace_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    job_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    legacy_trace_id: Option<&'a RawValue>,
}

/// Reads every line of `files`, calling `visit` with each readable one
/// inside `window`. Files that fail to open or decode are reported in the
/// stats and the pass goes on.
pub(crate) fn scan(
    files: &[PathBuf],
    window: Window,
    mut visit: impl FnMut(Candidate<'_>),
) -> ScanStats {
    let mut stats = ScanStats {
        files: files.len(),
        ..ScanStats::default()
    };
    for (index, path) in files.iter().enumerate() {
        if let Err(reason) = scan_file(path, index, window, &mut stats, &mut visit) {
            stats.unreadable.push(Unreadable {
                path: path.clone(),
                reason,
            });
        }
    }
    stats
}

fn scan_file(
    path: &Path,
    file: usize,
    window: Window,
    stats: &mut ScanStats,
    visit: &mut impl FnMut(Candidate<'_>),
) -> Result<(), String> {
    let mut reader = files::open(path).map_err(|error| error.to_string())?;
    let mut buffer = Vec::new();
    let mut line = 0;
    loop {
        let found = lines::read_line(&mut *reader, &mut buffer, MAX_LINE_BYTES)
            .map_err(|error| format!("stopped after line {line}: {error}"))?;
        line += 1;
        let readable = match found {
            Line::End => return Ok(()),
            Line::TooLong => false,
            Line::Complete if buffer.trim_ascii().is_empty() => continue,
            Line::Complete => inspect(&buffer, file, line, window, visit),
        };
        stats.lines += 1;
        stats.skipped += u64::from(!readable);
    }
}

/// Parses one line's probe and passes it on if inside the window; `false`
/// when the line is not a log line.
fn inspect(
    text: &[u8],
    file: usize,
    line: u64,
    window: Window,
    visit: &mut impl FnMut(Candidate<'_>),
) -> bool {
    let Some(json) = json_object(text) else {
        return false;
    };
    let Ok(probe) = serde_json::from_slice::<Probe<'_>>(json) else {
        return false;
    };
    let Some(timestamp) = string(probe.timestamp).and_then(|t| Timestamp::parse_rfc3339(&t)) else {
        return false;
    };
    if window.contains(timestamp) {
        let (trace_id, job_id) = (string(probe.trace_id), string(probe.job_id));
        let legacy_trace_id = string(probe.legacy_trace_id);
        let ids = LineIds {
            trace_id: trace_id.as_deref(),
            job_id: job_id.as_deref(),
            legacy_trace_id: legacy_trace_id.as_deref(),
        };
        visit(Candidate {
            timestamp,
            ids,
            json,
            file,
            line,
        });
    }
    true
}

/// The JSON object on a line: the whole line, or what follows the first tab
/// (Fluentd's `<time>\t<tag>\t<json>` layout).
fn json_object(line: &[u8]) -> Option<&[u8]> {
    let line = line.trim_ascii();
    if line.starts_with(b"{") {
        return Some(line);
    }
    let start = memchr::memmem::find(line, b"\t{")? + 1;
    Some(&line[start..])
}

/// A JSON string's text, unescaped only when it has escapes; `None` for
/// `null` and values of other types.
fn string(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let json = raw?.get();
    let inner = json.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str(json).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_string(line: &str, key: &str) -> Option<String> {
        let probe: Probe<'_> = serde_json::from_str(line).ok()?;
        let raw = match key {
            "trace_id" => probe.trace_id,
            "job_id" => probe.job_id,
            _ => probe.timestamp,
        };
        string(raw).map(Cow::into_owned)
    }

    #[test]
    fn reads_ids_leniently() {
        let line = r#"{"timestamp":"2026-11-27T21:04:05Z","trace_id":"a\u0062c","job_id":7}"#;
        assert_eq!(probe_string(line, "trace_id").as_deref(), Some("abc"));
        assert_eq!(probe_string(line, "job_id"), None);
        assert_eq!(probe_string(r#"{"job_id":null}"#, "job_id"), None);
    }

    #[test]
    fn finds_the_json_object_on_a_line() {
        let plain: &[u8] = br#" {"a":1} "#;
        assert_eq!(json_object(plain), Some(&br#"{"a":1}"#[..]));
        let fluentd: &[u8] = b"2026-11-27T21:04:05+00:00\tjobgate\t{\"a\":1}";
        assert_eq!(json_object(fluentd), Some(&b"{\"a\":1}"[..]));
        assert_eq!(json_object(b"Traceback (most recent call last):"), None);
    }
}
