//! The old polling API (`POST /submit`, `GET /status/{job_id}`), kept so
//! existing clients work unchanged.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{JobId, JobStatus};

/// The job kind an old client gets when its params name none (the
/// gateway's `JOBGATE_LEGACY_KIND` default).
pub const DEFAULT_LEGACY_KIND: &str = "mc_option_price";
/// The params field that carries a `computation_params` string that is not
/// a JSON object's text, as it came: `{"computation_params": "<text>"}`.
pub const LEGACY_TEXT_FIELD: &str = "computation_params";

/// `POST /submit` body.
#[derive(Debug, Clone, Deserialize)]
pub struct LegacySubmitRequest {
    /// The job's params: an object, or a string (a JSON object's text is
    /// read as that object; other text goes to the legacy kind under
    /// [`LEGACY_TEXT_FIELD`]). `computation_params.kind`, when present,
    /// picks the kind.
    pub computation_params: Box<RawValue>,
    /// The old clients' free-form trace id, kept with the job and in logs.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// `POST /submit` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegacySubmitResponse {
    pub job_id: JobId,
}

/// The old service's status words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyStatus {
    Pending,
    Processing,
    Complete,
    Failed,
}

impl From<JobStatus> for LegacyStatus {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => Self::Pending,
            JobStatus::Running => Self::Processing,
            JobStatus::Completed => Self::Complete,
            JobStatus::Failed | JobStatus::Cancelled => Self::Failed,
        }
    }
}

/// `GET /status/{job_id}` answer: `result` is the job's result when complete,
/// its error when failed, and `null` otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegacyStatusResponse {
    pub status: LegacyStatus,
    pub result: Option<Box<RawValue>>,
}
