//! [`JobStore`]: the gateway's side of the job protocol. Every state change
//! goes through `proto-schemas/redis/jobgate.lua`, the same script the
//! Python worker runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jobgate_proto::{JobId, SubmitRequest};
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::keys::{self, Band};
use crate::{JobRecord, StoreError};

const SCRIPT: &str = include_str!("../../../proto-schemas/redis/jobgate.lua");

/// How long a job's kind → queue route is trusted before asking Redis again.
const ROUTE_TTL: Duration = Duration::from_secs(5);

/// Settings the store applies to every job it creates.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long a terminal job's record and history are kept.
    pub retention: Duration,
    /// The most events one job's history keeps.
    pub history_max: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            history_max: 10_000,
        }
    }
}

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

#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    job_id: JobId,
    fingerprint: String,
    trace_id: String,
}

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

/// A raw `XRANGE` entry: id and fields.
type HistoryEntry = (String, HashMap<String, Bytes>);

/// One event from a job's history.
pub(crate) struct StoredEvent {
    pub(crate) seq: u64,
    pub(crate) json: Bytes,
}

/// A job's record and the history after some seq, read together.
pub(crate) struct HistoryRead {
    pub(crate) record: Option<JobRecord>,
    pub(crate) events: Vec<StoredEvent>,
}

/// Cheap to clone: a handle on the shared connection and shared caches.
#[derive(Clone)]
pub struct JobStore {
    redis: ConnectionManager,
    script: Arc<Script>,
    settings: Arc<StoreSettings>,
    routes: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    depths: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JobStore {
    pub fn new(redis: ConnectionManager, settings: StoreSettings) -> Self {
        Self {
            redis,
            script: Arc::new(Script::new(SCRIPT)),
            settings: Arc::new(settings),
            routes: Arc::default(),
            depths: Arc::default(),
        }
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// A handle on the shared, multiplexed connection.
    fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// The queue that a worker registered `kind` for, or `None` when no
    /// worker knows the kind.
    pub async fn route(&self, kind: &str) -> Result<Option<String>, StoreError> {
        if let Some((queue, at)) = lock(&self.routes).get(kind)
            && at.elapsed() < ROUTE_TTL
        {
            return Ok(Some(queue.clone()));
        }
        let mut conn = self.connection();
        let entry: Option<String> = redis::cmd("HGET")
            .arg(keys::KINDS)
            .arg(kind)
            .query_async(&mut conn)
            .await?;
        let Some(entry) = entry else { return Ok(None) };
        #[derive(serde::Deserialize)]
        struct Registration {
            queue: String,
        }
        let registration: Registration = serde_json::from_str(&entry)
            .map_err(|e| StoreError::Protocol(format!("kind registration of {kind}: {e}")))?;
        lock(&self.routes).insert(
            kind.to_owned(),
            (registration.queue.clone(), Instant::now()),
        );
        Ok(Some(registration.queue))
    }

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
        let request = &job.request;
        let reply: Value = self
            .script
            .key(keys::job(&job.job_id))
            .key(keys::events(&job.job_id))
            .arg("create")
            .arg(job.job_id.to_string())
            .arg(&job.owner)
            .arg(&request.kind)
            .arg(&job.queue)
            .arg(request.params.get())
            .arg(request.priority())
            .arg(request.max_attempts())
            .arg(request.timeout_s())
            .arg(self.settings.retention.as_secs().max(1))
            .arg(self.settings.history_max.max(1))
            .arg(&job.trace.traceparent)
            .arg(&job.trace.tracestate)
            .arg(&job.trace.trace_id)
            .arg(job.legacy_trace_id.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await?;
        match status_word(&reply)?.as_str() {
            "ok" => {}
            other => {
                return Err(StoreError::Protocol(format!("create answered {other}")));
            }
        }
        let now_ms = unix_ms();
        let retention_ms = self.settings.retention.as_millis() as u64;
        let owner_jobs = keys::owner_jobs(&job.owner);
        let enqueued: Result<(), redis::RedisError> = redis::pipe()
            .cmd("XADD")
            .arg(keys::queue(
                &job.queue,
                Band::for_priority(request.priority()),
            ))
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
            .arg(now_ms)
            .ignore()
            .cmd("ZADD")
            .arg(&owner_jobs)
            .arg(now_ms)
            .arg(job.job_id.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&owner_jobs)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(retention_ms)))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&owner_jobs)
            .arg(retention_ms.max(1))
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(error) = enqueued {
            let _: Result<Value, _> = self
                .script
                .key(keys::job(&job.job_id))
                .key(keys::events(&job.job_id))
                .arg("fail")
                .arg("*")
                .arg("enqueue_failed")
                .arg("the job could not be enqueued")
                .invoke_async(&mut conn)
                .await;
            return Err(error.into());
        }
        Ok(Submitted::Created)
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

    /// Entries waiting in `queue` (all bands), read at most every
    /// `max_age`; a bound for admission, not an exact count.
    pub async fn queue_length(&self, queue: &str, max_age: Duration) -> Result<u64, StoreError> {
        if let Some((length, at)) = lock(&self.depths).get(queue)
            && at.elapsed() < max_age
        {
            return Ok(*length);
        }
        let mut conn = self.connection();
        let lengths: (u64, u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::High))
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::Normal))
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::Low))
            .query_async(&mut conn)
            .await?;
        let length = lengths.0 + lengths.1 + lengths.2;
        lock(&self.depths).insert(queue.to_owned(), (length, Instant::now()));
        Ok(length)
    }

    /// Every queue a worker registered a kind for, with its length (all
    /// bands) and the age in ms of its oldest entry (waiting or running:
    /// acknowledged entries are deleted).
    pub async fn queue_stats(&self) -> Result<Vec<(String, u64, Option<u64>)>, StoreError> {
        let mut conn = self.connection();
        let registrations: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::KINDS)
            .query_async(&mut conn)
            .await?;
        let mut queues: Vec<String> = registrations
            .values()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .filter_map(|r| r["queue"].as_str().map(str::to_owned))
            .collect();
        queues.sort();
        queues.dedup();
        let now = unix_ms();
        let mut stats = Vec::with_capacity(queues.len());
        for queue in queues {
            let mut pipe = redis::pipe();
            for band in [Band::High, Band::Normal, Band::Low] {
                pipe.cmd("XLEN").arg(keys::queue(&queue, band));
                pipe.cmd("XRANGE")
                    .arg(keys::queue(&queue, band))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
            }
            type First = Vec<(String, HashMap<String, String>)>;
            let replies: (u64, First, u64, First, u64, First) = pipe.query_async(&mut conn).await?;
            let length = replies.0 + replies.2 + replies.4;
            let oldest = [&replies.1, &replies.3, &replies.5]
                .into_iter()
                .filter_map(|first| first.first())
                .filter_map(|(id, _)| {
                    id.split_once('-')
                        .and_then(|(ms, _)| ms.parse::<u64>().ok())
                })
                .min();
            stats.push((queue, length, oldest.map(|ms| now.saturating_sub(ms))));
        }
        Ok(stats)
    }

    /// The job record, or `None` when there is no such job.
    pub async fn record(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.connection();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::job(job_id))
            .query_async(&mut conn)
            .await?;
        JobRecord::from_fields(fields)
    }

    /// The record and the events with seq > `after`, read in one round trip.
    pub(crate) async fn history_after(
        &self,
        job_id: &JobId,
        after: u64,
    ) -> Result<HistoryRead, StoreError> {
        let mut conn = self.connection();
        let (fields, entries): (HashMap<String, String>, Vec<HistoryEntry>) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys::job(job_id))
            .cmd("XRANGE")
            .arg(keys::events(job_id))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let mut events = Vec::with_capacity(entries.len());
        for (id, mut fields) in entries {
            let seq = id
                .split_once('-')
                .and_then(|(seq, _)| seq.parse().ok())
                .ok_or_else(|| StoreError::Protocol(format!("history entry id {id}")))?;
            let json = fields
                .remove("e")
                .ok_or_else(|| StoreError::Protocol(format!("history entry {id} has no event")))?;
            events.push(StoredEvent { seq, json });
        }
        Ok(HistoryRead {
            record: JobRecord::from_fields(fields)?,
            events,
        })
    }

    /// Asks for a job to be cancelled.
    pub async fn cancel(&self, job_id: &JobId) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.connection();
        let reply: Value = self
            .script
            .key(keys::job(job_id))
            .key(keys::events(job_id))
            .arg("cancel")
            .invoke_async(&mut conn)
            .await?;
        Ok(match status_word(&reply)?.as_str() {
            "ok" => CancelOutcome::Cancelled,
            "requested" => CancelOutcome::Requested,
            "skip" => CancelOutcome::AlreadyTerminal,
            "missing" => CancelOutcome::NotFound,
            other => return Err(StoreError::Protocol(format!("cancel answered {other}"))),
        })
    }

    /// The owner's job ids created at or after `since_ms`, newest last, at
    /// most `limit`.
    pub async fn owner_jobs_since(
        &self,
        owner: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut conn = self.connection();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::owner_jobs(owner))
            .arg("+inf")
            .arg(since_ms)
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(ids.iter().rev().filter_map(|id| id.parse().ok()).collect())
    }
}

/// Counts one submission of `owner` in the current fixed window of
/// `window` (shared by every gateway); returns the count so far and the
/// seconds left in the window.
async fn count_in_window(
    conn: &mut ConnectionManager,
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

/// Locks one of the store's caches. They are only caches: a panic elsewhere
/// cannot leave them inconsistent, so a poisoned lock is still used.
fn lock<T>(cache: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first element of a script reply: its status word.
fn status_word(reply: &Value) -> Result<String, StoreError> {
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

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
