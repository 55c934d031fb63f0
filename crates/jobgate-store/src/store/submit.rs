//! Submission: the owner's rate, idempotency keys, and the two steps that
//! create a job — `create` (record and `queued` event, on the job's hash
//! tag) then the queue entry (on the queue's tag) with the owner's index and
//! new-job notice (on the owner's tag): one pipeline on a single server, one
//! per tag, sent together, on a cluster. A failed second step fails the
//! record, so no record claims to be queued without an entry.

use std::time::Duration;

use crate::connection::Connection;
use jobgate_proto::{JobId, SubmitRequest};
use redis::Cmd;

use super::delayed::delayed_member;
use super::{JobStore, unix_ms};
use crate::StoreError;
use crate::keys::{self, Band};

/// W3C trace context of a job.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
    pub trace_id: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: JobId,
    pub owner: String,
    pub request: SubmitRequest,
    pub queue: String,
    pub trace: TraceContext,
    /// The old API's free-form trace id; only its jobs have one, and only
    /// theirs get a `legacy_trace_id` field.
    pub legacy_trace_id: Option<String>,
}

/// How many jobs one owner may submit per window (over all gateways).
#[derive(Debug, Clone, Copy)]
pub struct SubmitRate {
    pub limit: u64,
    pub window: Duration,
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// The owner is over its rate: nothing was created.
    RateLimited {
        retry_after_s: u64,
    },
}

/// What an idempotency key was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now names the caller's job.
    Claimed,
    /// The key was used before, for this job and request fingerprint.
    Existing {
        job_id: JobId,
        fingerprint: String,
        trace_id: String,
    },
}

/// The value of an idempotency key.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    job_id: JobId,
    fingerprint: String,
    trace_id: String,
}

impl JobStore {
    /// Creates the job record (with its `queued` event) and enqueues it,
    /// counting it against the owner's `rate` first.
    /// When enqueueing fails after the record was written, the record is
    /// failed with `enqueue_failed` so that it never claims to be queued.
    pub async fn submit(
        &self,
        job: &NewJob,
        rate: Option<SubmitRate>,
    ) -> Result<Submitted, StoreError> {
        let mut conn = self.connection();
        if let Some(rate) = rate {
            let (count, retry_after_s) =
                count_in_window(&mut conn, &job.owner, rate.window).await?;
            if count > rate.limit {
                return Ok(Submitted::RateLimited { retry_after_s });
            }
        }
        let created_at = unix_ms();
        let due = self.create(&mut conn, job).await?;
        if let Err(error) = self.enqueue(&mut conn, job, due).await {
            // Best effort: the caller answers with the enqueue's error.
            match self.fail_unenqueued(&job.job_id).await {
                Ok(true) => self.count_outcome(&job.queue, "failed", &job.request.kind, created_at),
                Ok(false) => {}
                Err(repair) => {
                    tracing::error!(job_id = %job.job_id, error = %repair, "a job that could not be enqueued could not be failed either");
                }
            }
            return Err(error.into());
        }
        if due.is_some() {
            self.delayed_added.notify_one();
        }
        Ok(Submitted::Created)
    }

    /// Adds the queue entry (in the band of the job's priority) — or, for a
    /// job `due` later, its member of the queue's delayed set — indexes the
    /// job among its owner's recent jobs and publishes its id on the
    /// owner's channel (for the owner's feeds), in one round trip on a
    /// single server; on a cluster the queue's and the owner's commands go
    /// to their slots concurrently. The index stays bounded: entries older
    /// than the retention period and all but the newest `owner_index_max`
    /// are trimmed, and the key expires one retention period after its
    /// last write.
    async fn enqueue(
        &self,
        conn: &mut Connection,
        job: &NewJob,
        due: Option<u64>,
    ) -> Result<(), redis::RedisError> {
        let request = &job.request;
        let now_ms = unix_ms();
        let band = Band::for_priority(request.priority());
        let entry = match due {
            Some(due) => {
                let key = keys::delayed(&job.queue);
                let mut cmd = redis::cmd("ZADD");
                cmd.arg(&key).arg(due).arg(delayed_member(job, band));
                (key, cmd)
            }
            None => {
                let key = keys::queue(&job.queue, band);
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key)
                    .arg("*")
                    .arg("job_id")
                    .arg(job.job_id.to_string())
                    .arg("kind")
                    .arg(&request.kind)
                    .arg("traceparent")
                    .arg(&job.trace.traceparent)
                    .arg("tracestate")
                    .arg(&job.trace.tracestate)
                    .arg("enqueued_at")
                    .arg(now_ms);
                (key, cmd)
            }
        };
        let mut commands = vec![entry];
        commands.extend(self.index_for_owner(&job.owner, &job.job_id, now_ms));
        conn.query_by_slot(commands).await.map(drop)
    }

    /// The commands that add `job_id` to its owner's index (and trim it)
    /// and tell the owner's feeds about it: `SPUBLISH` of the id on the
    /// owner's channel, after the `ZADD`, so a feed that hears of the job
    /// finds it in the index. All on the owner's slot.
    fn index_for_owner(&self, owner: &str, job_id: &JobId, now_ms: u64) -> Vec<(String, Cmd)> {
        let retention_ms = self.settings.retention.as_millis() as u64;
        let owner_jobs = keys::owner_jobs(owner);
        let mut add = redis::cmd("ZADD");
        add.arg(&owner_jobs).arg(now_ms).arg(job_id.to_string());
        let mut trim_old = redis::cmd("ZREMRANGEBYSCORE");
        trim_old
            .arg(&owner_jobs)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(retention_ms)));
        let mut trim_many = redis::cmd("ZREMRANGEBYRANK");
        trim_many
            .arg(&owner_jobs)
            .arg(0)
            .arg(-(self.settings.owner_index_max.max(1) as i64) - 1);
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&owner_jobs).arg(retention_ms.max(1));
        let channel = keys::owner_channel(owner);
        let mut notice = redis::cmd("SPUBLISH");
        notice.arg(&channel).arg(job_id.to_string());
        vec![
            (owner_jobs.clone(), add),
            (owner_jobs.clone(), trim_old),
            (owner_jobs.clone(), trim_many),
            (owner_jobs, expire),
            (channel, notice),
        ]
    }

    /// Claims `key` for `job_id` for `ttl`, or tells what it already names.
    pub async fn claim_idempotency(
        &self,
        owner: &str,
        key: &str,
        job_id: JobId,
        fingerprint: &str,
        trace_id: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.connection();
        let record = IdempotencyRecord {
            job_id,
            fingerprint: fingerprint.to_owned(),
            trace_id: trace_id.to_owned(),
        };
        let value = serde_json::to_string(&record)
            .map_err(|e| StoreError::Protocol(format!("idempotency record: {e}")))?;
        let previous: Option<String> = redis::cmd("SET")
            .arg(keys::idempotency(owner, key))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        let Some(previous) = previous else {
            return Ok(IdempotencyClaim::Claimed);
        };
        let previous: IdempotencyRecord = serde_json::from_str(&previous)
            .map_err(|e| StoreError::Protocol(format!("idempotency record: {e}")))?;
        Ok(IdempotencyClaim::Existing {
            job_id: previous.job_id,
            fingerprint: previous.fingerprint,
            trace_id: previous.trace_id,
        })
    }

    /// Frees a key whose job could not be created, so a retry can succeed.
    pub async fn release_idempotency(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        let mut conn = self.connection();
        let _: i64 = redis::cmd("DEL")
            .arg(keys::idempotency(owner, key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Counts one submission of `owner` in the current fixed window of
/// `window` (shared by every gateway); returns the count so far and the
/// seconds left in the window.
async fn count_in_window(
    conn: &mut Connection,
    owner: &str,
    window: Duration,
) -> Result<(u64, u64), StoreError> {
    let window_s = window.as_secs().max(1);
    let now_s = unix_ms() / 1000;
    let slot = now_s / window_s;
    let key = keys::submit_rate(owner, slot);
    let (count,): (u64,) = redis::pipe()
        .cmd("INCR")
        .arg(&key)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(window_s * 2)
        .ignore()
        .query_async(conn)
        .await?;
    Ok((count, (slot + 1) * window_s - now_s))
}
