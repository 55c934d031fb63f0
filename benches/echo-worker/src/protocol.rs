//! The worker's half of the Redis protocol (`proto-schemas/PROTOCOL.md`):
//! key names come from `jobgate-store`, every state change goes through
//! `proto-schemas/redis/jobgate.lua`, compiled in unchanged.

use std::collections::HashMap;

use jobgate_proto::JobId;
use jobgate_store::keys::{self, Band};
use redis::Value;

/// The job state machine, the very file the gateway and the Python SDK load.
pub(crate) const SCRIPT: &str = include_str!("../../../proto-schemas/redis/jobgate.lua");

/// The bands of a queue in the order a worker serves them.
pub(crate) const BANDS: [Band; 3] = [Band::High, Band::Normal, Band::Low];

/// Names and the script digest, fixed for the life of the process.
#[derive(Debug, Clone)]
pub(crate) struct Protocol {
    /// `EVALSHA` digest of [`SCRIPT`].
    pub(crate) sha: String,
    /// The queue's band streams, highest first.
    pub(crate) streams: [String; 3],
}

impl Protocol {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
            streams: BANDS.map(|band| keys::queue(queue, band)),
        }
    }

    /// `EVALSHA <sha> 2n <job₁> <events₁> … batch n`; the caller adds each
    /// call's op, argument count and arguments.
    pub(crate) fn batch<'a>(
        &self,
        job_ids: impl ExactSizeIterator<Item = &'a JobId>,
    ) -> redis::Cmd {
        let n = job_ids.len();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(2 * n);
        for job_id in job_ids {
            cmd.arg(keys::job(job_id)).arg(keys::events(job_id));
        }
        cmd.arg("batch").arg(n);
        cmd
    }

    /// The band index (0 = high) of a stream name.
    pub(crate) fn band_of(&self, stream: &str) -> usize {
        self.streams
            .iter()
            .position(|name| name == stream)
            .unwrap_or(BANDS.len())
    }
}

/// One queue entry delivered to this consumer.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) band: usize,
    pub(crate) entry_id: String,
    /// `None` when the entry names no valid job: it is acknowledged and dropped.
    pub(crate) job_id: Option<JobId>,
}

impl Entry {
    pub(crate) fn from_fields(
        band: usize,
        entry_id: String,
        fields: &HashMap<String, Value>,
    ) -> Self {
        let job_id = match fields.get("job_id") {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse().ok()),
            _ => None,
        };
        Self {
            band,
            entry_id,
            job_id,
        }
    }
}

/// What `start` said about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Started {
    /// Run the job: this is attempt `attempt`, with these params.
    Run { attempt: i64, params: String },
    /// `skip` or `missing`: nothing to run, acknowledge the entry.
    Nothing,
}

/// What `complete` (or `fail`) said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// `ok`, `skip` or `missing`: the entry is done, acknowledge it.
    Done,
    /// `stale`: another worker took the entry over; it is theirs to acknowledge.
    Stale,
}

/// A reply that does not follow the script's documented shape.
#[derive(Debug)]
pub(crate) struct UnexpectedReply(pub(crate) String);

impl std::error::Error for UnexpectedReply {}

impl std::fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected script reply: {}", self.0)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        _ => None,
    }
}

fn items(reply: &Value) -> Result<&[Value], UnexpectedReply> {
    match reply {
        Value::Array(items) if !items.is_empty() => Ok(items),
        other => Err(UnexpectedReply(format!("{other:?}"))),
    }
}

/// Reads the reply of `start`: `{'ok', attempt, kind, params, …}`,
/// `{'skip', status}` or `{'missing'}`.
pub(crate) fn parse_started(reply: &Value) -> Result<Started, UnexpectedReply> {
    let items = items(reply)?;
    match text(&items[0]).as_deref() {
        Some("ok") => {
            let attempt = items
                .get(1)
                .and_then(text)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| UnexpectedReply(format!("start without attempt: {reply:?}")))?;
            let params = items
                .get(3)
                .and_then(text)
                .ok_or_else(|| UnexpectedReply(format!("start without params: {reply:?}")))?;
            Ok(Started::Run { attempt, params })
        }
        Some("skip" | "missing") => Ok(Started::Nothing),
        _ => Err(UnexpectedReply(format!("{reply:?}"))),
    }
}

/// Reads the reply of `complete`, `progress` or `fail`.
pub(crate) fn parse_finished(reply: &Value) -> Result<Finished, UnexpectedReply> {
    let items = items(reply)?;
    match text(&items[0]).as_deref() {
        Some("ok" | "skip" | "missing") => Ok(Finished::Done),
        Some("stale") => Ok(Finished::Stale),
        _ => Err(UnexpectedReply(format!("{reply:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_start_replies() {
        let ok = Value::Array(vec![
            bulk("ok"),
            Value::Int(1),
            bulk("echo"),
            bulk(r#"{"x":1}"#),
            bulk("0"),
        ]);
        assert_eq!(
            parse_started(&ok).expect("ok"),
            Started::Run {
                attempt: 1,
                params: r#"{"x":1}"#.into()
            }
        );
        let skip = Value::Array(vec![bulk("skip"), bulk("cancelled")]);
        assert_eq!(parse_started(&skip).expect("skip"), Started::Nothing);
        assert!(parse_started(&Value::Nil).is_err());
    }

    #[test]
    fn a_stale_completion_is_not_acknowledged() {
        let stale = Value::Array(vec![bulk("stale"), bulk("running")]);
        assert_eq!(parse_finished(&stale).expect("stale"), Finished::Stale);
        let ok = Value::Array(vec![bulk("ok"), Value::Int(4)]);
        assert_eq!(parse_finished(&ok).expect("ok"), Finished::Done);
    }

    #[test]
    fn the_streams_are_the_queue_bands_highest_first() {
        let protocol = Protocol::new("default");
        assert_eq!(protocol.streams[0], "jobgate:queue:{default}:high");
        assert_eq!(protocol.band_of("jobgate:queue:{default}:low"), 2);
        assert_eq!(protocol.sha.len(), 40);
    }
}
