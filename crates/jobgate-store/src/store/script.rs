//! The calls of `proto-schemas/redis/jobgate.lua` the gateway makes —
//! `fail` (after a failed enqueue), `cancel` and `revive` (`create_many`
//! is `batch.rs`'s) — with their
//! arguments in the order the script reads them, and how replies are read.
//! The script's own header documents every operation.

use jobgate_proto::JobId;
use redis::{Script, ScriptInvocation, Value};

use super::stats::reply_words;
use super::{JobStore, unix_ms};
use crate::{StoreError, keys};

/// The job state machine, shared with the Python worker.
const SCRIPT: &str = include_str!("../../../../proto-schemas/redis/jobgate.lua");

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled,
    /// The job is running; its worker was asked to stop it.
    Requested,
    /// The job had already ended.
    AlreadyTerminal,
    NotFound,
}

pub(super) fn load() -> Script {
    Script::new(SCRIPT)
}

/// The same script with the `allow-oom` flag: Redis runs it at `maxmemory`.
/// Used only for `fail *` after a failed enqueue, a write of a few hundred
/// bytes that must not be refused, or the record would claim a queued job
/// that no worker will ever see. (Without flags, Redis refuses a script's
/// first write at `maxmemory`, so a refused call changes nothing.)
pub(super) fn load_allowing_oom() -> Script {
    Script::new(&format!("#!lua flags=allow-oom\n{SCRIPT}"))
}

impl JobStore {
    /// Asks for a job to be cancelled. A queued job cancelled here is
    /// counted among the job outcomes (the script's reply names its kind,
    /// queue and creation time).
    pub async fn cancel(&self, job_id: &JobId) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.connection();
        let reply: Value = self
            .operation(job_id, "cancel")
            .invoke_async(&mut conn)
            .await?;
        Ok(match status_word(&reply)?.as_str() {
            "ok" => {
                // {'ok', seq, kind, queue, created_at}
                if let [_, _, kind, queue, created_at] = reply_words(&reply).as_slice() {
                    let created_at = created_at.parse().unwrap_or_else(|_| unix_ms());
                    self.count_outcome(queue, "cancelled", kind, created_at);
                }
                CancelOutcome::Cancelled
            }
            "requested" => CancelOutcome::Requested,
            "skip" => CancelOutcome::AlreadyTerminal,
            "missing" => CancelOutcome::NotFound,
            other => return Err(StoreError::Protocol(format!("cancel answered {other}"))),
        })
    }

    /// `fail * enqueue_failed`: fails the job whatever its attempt, so that
    /// a record whose queue entry could not be written does not claim to be
    /// queued. Run with `allow-oom`, so that an enqueue refused at
    /// `maxmemory` is repaired too. A job that already ended, or is gone,
    /// is left as it is. True when this call failed the job.
    pub async fn fail_unenqueued(&self, job_id: &JobId) -> Result<bool, StoreError> {
        let mut conn = self.connection();
        let mut invocation = self.repair_script.key(keys::job(job_id));
        invocation.key(keys::events(job_id)).arg("fail");
        let reply: Value = invocation
            .arg("*")
            .arg("enqueue_failed")
            .arg("the job could not be enqueued")
            .invoke_async(&mut conn)
            .await?;
        match status_word(&reply)?.as_str() {
            "ok" => Ok(true),
            "skip" | "missing" => Ok(false),
            other => Err(StoreError::Protocol(format!("fail answered {other}"))),
        }
    }

    /// `revive`: a failed job back to `queued` with a fresh attempt budget
    /// (re-run from the dead letters). The reply's words: the status word,
    /// then (for `ok` and `queued`) kind, queue, priority, traceparent and
    /// tracestate.
    pub(super) async fn revive(
        &self,
        job_id: &JobId,
        requested_by: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.connection();
        Ok(self
            .operation(job_id, "revive")
            .arg(requested_by)
            .invoke_async(&mut conn)
            .await?)
    }

    /// A call of operation `op` on `job_id`'s two keys; its arguments follow.
    fn operation(&self, job_id: &JobId, op: &str) -> ScriptInvocation<'_> {
        let mut invocation = self.script.key(keys::job(job_id));
        invocation.key(keys::events(job_id)).arg(op);
        invocation
    }
}

/// The first element of a script reply: its status word.
pub(super) fn status_word(reply: &Value) -> Result<String, StoreError> {
    let first = match reply {
        Value::Array(items) => items.first(),
        _ => None,
    };
    match first {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(text)) => Ok(text.clone()),
        _ => Err(StoreError::Protocol(format!("script reply {reply:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_word_is_read_from_either_string_kind() {
        let bulk = Value::Array(vec![Value::BulkString(b"ok".to_vec()), Value::Int(1)]);
        assert_eq!(status_word(&bulk).expect("a word"), "ok");
        let simple = Value::Array(vec![Value::SimpleString("missing".to_owned())]);
        assert_eq!(status_word(&simple).expect("a word"), "missing");
        assert!(status_word(&Value::Array(vec![])).is_err());
        assert!(status_word(&Value::Nil).is_err());
    }
}
