//! The few fields of the gateway's messages the load generator reads:
//! WebSocket frames and SSE `data:` (both carry the event JSON of
//! PROTOCOL.md). `data` and everything else are skipped, not parsed.

use std::borrow::Cow;

use serde::Deserialize;

/// A server message or event, by its routing fields.
#[derive(Debug, Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) request_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) job_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) event: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    /// Redis server time of the event, ms since the Unix epoch.
    #[serde(default)]
    pub(crate) ts: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) code: Option<Cow<'a, str>>,
    /// The job's place in a `submit_batch`.
    #[serde(default)]
    pub(crate) index: Option<u64>,
}

impl<'a> Frame<'a> {
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The terminal event type, when this is a terminal event.
    pub(crate) fn terminal(&self) -> Option<&str> {
        match self.event.as_deref() {
            Some(event @ ("completed" | "failed" | "cancelled")) => Some(event),
            _ => None,
        }
    }
}

/// `{"type":"submit","request_id":…,"job":{"kind":…,"params":…}}`.
pub(crate) fn submit_frame(request_id: u64, kind_json: &str, params_json: &str) -> String {
    format!(
        r#"{{"type":"submit","request_id":"{request_id}","job":{{"kind":{kind_json},"params":{params_json}}}}}"#
    )
}

/// `{"type":"submit_batch","request_id":…,"jobs":[{"job":…}, …]}` of
/// `count` jobs alike.
pub(crate) fn submit_batch_frame(
    request_id: u64,
    count: usize,
    kind_json: &str,
    params_json: &str,
) -> String {
    let job = format!(r#"{{"job":{{"kind":{kind_json},"params":{params_json}}}}}"#);
    let jobs = vec![job; count].join(",");
    format!(r#"{{"type":"submit_batch","request_id":"{request_id}","jobs":[{jobs}]}}"#)
}

/// The body of `POST /v1/jobs`.
pub(crate) fn job_body(kind_json: &str, params_json: &str) -> String {
    format!(r#"{{"kind":{kind_json},"params":{params_json}}}"#)
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_event() {
        let text = r#"{"type":"event","job_id":"j","seq":4,"event":"completed","data":{"result":{"x":[1]}},"ts":17,"trace_id":"t"}"#;
        let frame = Frame::parse(text).expect("event");
        assert_eq!(frame.kind, "event");
        assert_eq!(frame.terminal(), Some("completed"));
        assert_eq!((frame.seq, frame.ts), (Some(4), Some(17)));
    }

    #[test]
    fn builds_a_batch_that_parses() {
        let text = submit_batch_frame(3, 2, r#""echo""#, r#"{"a":1}"#);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["jobs"][1]["job"]["params"]["a"], 1);
        assert_eq!(value["jobs"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn builds_a_submit_that_parses() {
        let text = submit_frame(7, r#""echo""#, r#"{"a":1}"#);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["job"]["params"]["a"], 1);
        assert_eq!(value["request_id"], "7");
    }
}
