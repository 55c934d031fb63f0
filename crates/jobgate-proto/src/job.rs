//! Jobs as clients see them: the submit request, its answer, and the snapshot.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Priority of a job whose request names none (0 lowest … 9 highest).
pub const DEFAULT_PRIORITY: u8 = 5;
/// Deliveries of a job before it fails with `max_attempts_exceeded`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The longest job kind name.
pub const MAX_KIND_LEN: usize = 128;
const MAX_ATTEMPTS_LIMIT: i64 = 100;
const MAX_TIMEOUT_S: i64 = 7 * 24 * 3600;
/// The longest a job may wait before it becomes runnable (`delay_ms`, or
/// `run_at` ahead of now): 30 days.
pub const MAX_DELAY_MS: i64 = 30 * 24 * 3600 * 1000;

/// A job id: a UUID (v7 when the gateway makes it, so ids sort by time),
/// always written lower-case and hyphenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// When the id was made (ms since the epoch), for the time-ordered ids
    /// the gateway makes; `None` for other UUIDs.
    pub fn created_at_ms(&self) -> Option<u64> {
        let (seconds, nanos) = self.0.get_timestamp()?.to_unix();
        Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The text is not a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJobId;

impl FromStr for JobId {
    type Err = InvalidJobId;

    /// Accepts only the canonical 36-character hyphenated form, so one job
    /// has exactly one spelling (and one set of Redis keys).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 36 {
            return Err(InvalidJobId);
        }
        let uuid = Uuid::try_parse(text).map_err(|_| InvalidJobId)?;
        if uuid.hyphenated().to_string() != text {
            return Err(InvalidJobId);
        }
        Ok(Self(uuid))
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom("not a job id (a lower-case hyphenated UUID)"))
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl FromStr for JobStatus {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(()),
        })
    }
}

/// A field of a request that is missing, mistyped or out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// `POST /v1/jobs` body, and the `job` of a WebSocket `submit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The job kind, as a worker registered it.
    pub kind: String,
    /// The handler's parameters: any JSON object, kept verbatim.
    pub params: Box<RawValue>,
    /// 0 (lowest) … 9 (highest); default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Deliveries before the job fails with `max_attempts_exceeded`; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    /// Seconds a worker lets one attempt run; 0 or absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<i64>,
    /// Milliseconds from submission until the job becomes runnable
    /// (0 … [`MAX_DELAY_MS`]); not together with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<i64>,
    /// When the job becomes runnable, ms since the epoch (at most
    /// [`MAX_DELAY_MS`] ahead; a time past runs it at once); not together
    /// with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<i64>,
}

impl SubmitRequest {
    /// Checks every field's shape and range (whether a worker knows the kind
    /// is the gateway's question).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let invalid = |field, message: &str| ValidationError {
            field,
            message: message.to_owned(),
        };
        if self.kind.is_empty() || self.kind.len() > MAX_KIND_LEN {
            return Err(invalid("kind", "must be 1 to 128 characters"));
        }
        if !self
            .kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(invalid("kind", "may hold only letters, digits and _ . : -"));
        }
        if !self.params.get().trim_start().starts_with('{') {
            return Err(invalid("params", "must be a JSON object"));
        }
        if !matches!(self.priority, None | Some(0..=9)) {
            return Err(invalid("priority", "must be an integer from 0 to 9"));
        }
        if !matches!(self.max_attempts, None | Some(1..=MAX_ATTEMPTS_LIMIT)) {
            return Err(invalid("max_attempts", "must be an integer from 1 to 100"));
        }
        if !matches!(self.timeout_s, None | Some(0..=MAX_TIMEOUT_S)) {
            return Err(invalid("timeout_s", "must be an integer from 0 to 604800"));
        }
        if !matches!(self.delay_ms, None | Some(0..=MAX_DELAY_MS)) {
            return Err(invalid(
                "delay_ms",
                "must be an integer from 0 to 2592000000 (30 days)",
            ));
        }
        if self.run_at.is_some_and(|run_at| run_at < 0) {
            return Err(invalid(
                "run_at",
                "must be ms since the epoch, not negative",
            ));
        }
        if self.delay_ms.is_some() && self.run_at.is_some() {
            return Err(invalid("run_at", "give delay_ms or run_at, not both"));
        }
        Ok(())
    }

    /// Checks `run_at` against the clock (`now_ms`): at most
    /// [`MAX_DELAY_MS`] ahead.
    pub fn validate_run_at(&self, now_ms: u64) -> Result<(), ValidationError> {
        match self.run_at {
            Some(run_at) if run_at.saturating_sub(MAX_DELAY_MS) > now_ms as i64 => {
                Err(ValidationError {
                    field: "run_at",
                    message: "must be at most 30 days ahead".to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    pub fn priority(&self) -> u8 {
        self.priority
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(DEFAULT_PRIORITY)
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    pub fn timeout_s(&self) -> u64 {
        self.timeout_s
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }
}

/// Where to find a job's resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub events: String,
    pub cancel: String,
}

impl JobLinks {
    pub fn for_job(job_id: JobId) -> Self {
        Self {
            this: format!("/v1/jobs/{job_id}"),
            events: format!("/v1/jobs/{job_id}/events"),
            cancel: format!("/v1/jobs/{job_id}/cancel"),
        }
    }
}

/// `202` answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job_id: JobId,
    pub status: JobStatus,
    pub trace_id: String,
    pub links: JobLinks,
}

/// The last progress a worker reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: f64,
    pub total: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/jobs/{id}`: everything known about a job now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub job_id: JobId,
    pub kind: String,
    pub queue: String,
    pub status: JobStatus,
    pub priority: u8,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_s: u64,
    /// The seq of the job's last event.
    pub seq: u64,
    /// The epoch of the job's last event (see [`crate::EventPosition`]);
    /// 1 unless a failover made the job start another.
    #[serde(default = "crate::event::first_epoch")]
    pub epoch: u64,
    pub progress: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub updated_at: Option<u64>,
    pub trace_id: String,
    /// When a delayed job becomes (or became) runnable, ms since the epoch;
    /// absent for a job submitted without `delay_ms` or `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<u64>,
}

impl JobSnapshot {
    /// Where the job's last event stands in its order.
    pub fn position(&self) -> crate::EventPosition {
        crate::EventPosition::new(self.epoch, self.seq)
    }
}

/// `GET /v1/jobs`: a page of the caller's jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSnapshot>,
    /// Where the next page starts (opaque to clients); `None` at the end.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> SubmitRequest {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn job_ids_have_one_spelling() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        assert!(
            "0193A0B4-7C1E-7D4E-9A2B-1C2D3E4F5A6B"
                .parse::<JobId>()
                .is_err()
        );
        assert!("0193a0b47c1e7d4e9a2b1c2d3e4f5a6b".parse::<JobId>().is_err());
        assert!("../../etc/passwd".parse::<JobId>().is_err());
    }

    #[test]
    fn time_ordered_ids_tell_when_they_were_made() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let made = JobId::new().created_at_ms().expect("a v7 id");
        assert!(made >= before && made < before + 5_000);
        let v4: JobId = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d".parse().expect("id");
        assert_eq!(v4.created_at_ms(), None);
    }

    #[test]
    fn a_minimal_request_takes_the_defaults() {
        let req = request(r#"{"kind":"echo","params":{}}"#);
        assert_eq!(req.validate(), Ok(()));
        assert_eq!(req.priority(), DEFAULT_PRIORITY);
        assert_eq!(req.max_attempts(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(req.timeout_s(), 0);
    }

    #[test]
    fn out_of_range_fields_name_the_field() {
        for (json, field) in [
            (r#"{"kind":"","params":{}}"#, "kind"),
            (r#"{"kind":"a b","params":{}}"#, "kind"),
            (r#"{"kind":"echo","params":[1]}"#, "params"),
            (r#"{"kind":"echo","params":{},"priority":10}"#, "priority"),
            (
                r#"{"kind":"echo","params":{},"max_attempts":0}"#,
                "max_attempts",
            ),
            (r#"{"kind":"echo","params":{},"timeout_s":-1}"#, "timeout_s"),
            (r#"{"kind":"echo","params":{},"delay_ms":-1}"#, "delay_ms"),
            (
                r#"{"kind":"echo","params":{},"delay_ms":2592000001}"#,
                "delay_ms",
            ),
            (r#"{"kind":"echo","params":{},"run_at":-5}"#, "run_at"),
            (
                r#"{"kind":"echo","params":{},"delay_ms":5,"run_at":5}"#,
                "run_at",
            ),
        ] {
            assert_eq!(
                request(json).validate().map_err(|e| e.field),
                Err(field),
                "{json}"
            );
        }
    }

    #[test]
    fn run_at_is_at_most_thirty_days_ahead() {
        let now = 1_800_000_000_000_u64;
        let at = |run_at: u64| {
            request(&format!(
                r#"{{"kind":"echo","params":{{}},"run_at":{run_at}}}"#
            ))
        };
        let limit = now + MAX_DELAY_MS as u64;
        assert_eq!(at(limit).validate_run_at(now), Ok(()));
        assert_eq!(
            at(now - 1).validate_run_at(now),
            Ok(()),
            "a time past runs at once"
        );
        assert_eq!(
            at(limit + 1).validate_run_at(now).map_err(|e| e.field),
            Err("run_at")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_str::<SubmitRequest>(r#"{"kind":"echo","params":{},"prio":1}"#)
                .is_err()
        );
    }
}
