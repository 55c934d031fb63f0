//! What the user asked for — a trace, a job, or an old client's free-form
//! trace id — and which log lines it anchors on.

use std::fmt;

/// The argument of `jobgate trace`, classified by its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A W3C trace id (32 hex digits; a whole `traceparent` is accepted too):
    /// the lines whose `trace_id` is this one.
    Trace(String),
    /// A job id (a UUID): the lines whose `job_id` is this one, plus the lines
    /// of the traces they belong to (the gateway's request line has no job id).
    Job(String),
    /// Anything else: an old client's free-form trace id, which the gateway
    /// keeps as `legacy_trace_id` beside the W3C one. Lines whose `trace_id`
    /// or `legacy_trace_id` is this one, plus the lines of their W3C traces.
    Legacy(String),
}

impl Target {
    /// Classifies `input`; `None` when it is blank.
    ///
    /// Hex ids are lower-cased, the form every component writes.
    pub fn parse(input: &str) -> Option<Self> {
        let input = input.trim();
        if input.is_empty() {
            return None;
        }
        let lower = input.to_ascii_lowercase();
        let target = if is_hex(&lower, 32) {
            Self::Trace(lower)
        } else if let Some(trace_id) = trace_id_of_traceparent(&lower) {
            Self::Trace(trace_id.to_owned())
        } else if is_uuid(&lower) {
            Self::Job(lower)
        } else {
            Self::Legacy(input.to_owned())
        };
        Some(target)
    }

    /// The id itself.
    pub fn id(&self) -> &str {
        match self {
            Self::Trace(id) | Self::Job(id) | Self::Legacy(id) => id,
        }
    }

    /// Whether a line with these ids is one the target names directly.
    pub(crate) fn anchors(&self, ids: &LineIds<'_>) -> bool {
        match self {
            Self::Trace(id) => same_hex(ids.trace_id, id),
            Self::Job(id) => same_hex(ids.job_id, id),
            Self::Legacy(id) => ids.trace_id == Some(id) || ids.legacy_trace_id == Some(id),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trace(id) => write!(f, "trace_id {id}"),
            Self::Job(id) => write!(f, "job_id {id}"),
            Self::Legacy(id) => write!(f, "trace_id or legacy_trace_id {id:?}"),
        }
    }
}

/// The ids a log line carries, each where present and a string.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LineIds<'a> {
    pub(crate) trace_id: Option<&'a str>,
    pub(crate) job_id: Option<&'a str>,
    pub(crate) legacy_trace_id: Option<&'a str>,
}

/// Compares hex ids whatever their case (the schema says lower case; a
/// client that writes upper case still joins).
pub(crate) fn same_hex(found: Option<&str>, wanted: &str) -> bool {
    found.is_some_and(|found| found.eq_ignore_ascii_case(wanted))
}

/// The last 8 characters of a job id, for the narrative's `job=…1c2d0e11`.
///
/// The end, not the start: the gateway's UUIDv7 ids begin with a millisecond
/// timestamp, so jobs submitted within the same minute share their first 8
/// digits, while the last 8 are random.
pub(crate) fn short_id(id: &str) -> String {
    let start = id.char_indices().rev().nth(7).map_or(0, |(index, _)| index);
    if start == 0 {
        id.to_owned()
    } else {
        format!("…{}", &id[start..])
    }
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, digits)| is_hex(group, digits))
}

fn trace_id_of_traceparent(text: &str) -> Option<&str> {
    let mut parts = text.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && is_hex(version, 2)
        && is_hex(trace_id, 32)
        && is_hex(parent_id, 16)
        && is_hex(flags, 2);
    valid.then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_form() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(Target::parse(trace), Some(Target::Trace(trace.into())));
        assert_eq!(
            Target::parse(&trace.to_uppercase()),
            Some(Target::Trace(trace.into()))
        );
        assert_eq!(
            Target::parse(&format!("00-{trace}-00f067aa0ba902b7-01")),
            Some(Target::Trace(trace.into()))
        );
        let job = "0190c5a8-7b1e-7cc3-9f2a-3f9a1c2d0e11";
        assert_eq!(Target::parse(job), Some(Target::Job(job.into())));
        assert_eq!(
            Target::parse(" ios-1234 "),
            Some(Target::Legacy("ios-1234".into()))
        );
        assert_eq!(Target::parse("  "), None);
    }

    #[test]
    fn shortens_job_ids_to_their_random_end() {
        assert_eq!(
            short_id("0190c5a8-7b1e-7cc3-9f2a-3f9a1c2d0e11"),
            "…1c2d0e11"
        );
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("12345678"), "12345678");
    }
}
