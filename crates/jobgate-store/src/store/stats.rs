//! Job outcome counts in Redis (`jobgate:stats:{<queue>}`, see
//! `outcomes.rs`): the gateway's own counts — a cancelled queued job, a job
//! failed because its enqueue was refused — kept in memory and written with
//! `HINCRBY` at most once a second by [`spawn_outcome_flusher`] (and once
//! more at shutdown), and the totals `/metrics` renders, read with `HGETALL`
//! per known queue at most once a second.
//!
//! These are metrics, not guarantees: a gateway that crashes loses at most
//! the last second of its counts; a write Redis refuses is kept and tried
//! with the next.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outcomes::OutcomeTotals;
use super::{JobStore, lock, unix_ms};
use crate::{StoreError, keys};

/// How often counts are written, and how long read totals are kept.
pub const OUTCOME_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const TOTALS_MAX_AGE: Duration = Duration::from_secs(1);

impl JobStore {
    /// Counts an `event` this gateway wrote for a job of `kind` in `queue`,
    /// created at `created_at` (ms, Redis's clock).
    pub(crate) fn count_outcome(&self, queue: &str, event: &str, kind: &str, created_at: u64) {
        let age_ms = unix_ms().saturating_sub(created_at);
        lock(&self.pending_outcomes).count(queue, event, kind, age_ms);
    }

    /// Writes the counts made since the last write: one `HINCRBY` per
    /// field, in one pipeline on a single server, one per queue on a
    /// cluster. Counts Redis did not take are kept for the next write.
    pub async fn flush_outcomes(&self) -> Result<(), StoreError> {
        let counts = {
            let mut pending = lock(&self.pending_outcomes);
            if pending.is_empty() {
                return Ok(());
            }
            pending.take()
        };
        let mut commands = Vec::new();
        for (queue, fields) in &counts {
            let key = keys::stats(queue);
            for (field, count) in fields {
                let mut cmd = redis::cmd("HINCRBY");
                cmd.arg(&key).arg(field).arg(*count);
                commands.push((key.clone(), cmd));
            }
        }
        let mut conn = self.connection();
        if let Err(error) = conn.query_by_slot(commands).await {
            // HINCRBY is not idempotent, but a failed pipeline on a single
            // server wrote nothing unless the link dropped mid-way: a rare
            // double count beats a lost one for these figures.
            lock(&self.pending_outcomes).restore(counts);
            return Err(error.into());
        }
        Ok(())
    }

    /// What the stats hashes of `queues` add up to, read at most once a
    /// second (one `HGETALL` per queue: one pipeline on a single server, one
    /// per queue on a cluster).
    pub async fn outcome_totals(&self, queues: &[String]) -> Result<OutcomeTotals, StoreError> {
        if let Some((totals, at)) = lock(&self.outcome_totals).as_ref()
            && at.elapsed() < TOTALS_MAX_AGE
        {
            return Ok(totals.clone());
        }
        let commands = queues
            .iter()
            .map(|queue| {
                let key = keys::stats(queue);
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(&key);
                (key, cmd)
            })
            .collect();
        let replies = self.reader().query_by_slot(commands).await?;
        let mut totals = OutcomeTotals::default();
        for reply in replies {
            let fields: HashMap<String, String> = redis::from_redis_value(reply)
                .map_err(|e| StoreError::Protocol(format!("stats hash: {e}")))?;
            totals.add_hash(fields);
        }
        *lock(&self.outcome_totals) = Some((totals.clone(), Instant::now()));
        Ok(totals)
    }
}

/// Starts the task that writes this gateway's outcome counts every
/// [`OUTCOME_FLUSH_INTERVAL`] while there are any; when `shutdown` fires it
/// writes once more and stops.
pub fn spawn_outcome_flusher(store: JobStore, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(OUTCOME_FLUSH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = ticks.tick() => false,
            };
            if let Err(error) = store.flush_outcomes().await {
                tracing::warn!(%error, "job outcome counts not written; they are kept for the next write");
            }
            if stopping {
                return;
            }
        }
    })
}

/// The trailing elements of a script reply after its status word, as text.
pub(super) fn reply_words(reply: &Value) -> Vec<String> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::SimpleString(text) => text.clone(),
            Value::Int(number) => number.to_string(),
            _ => String::new(),
        })
        .collect()
}
