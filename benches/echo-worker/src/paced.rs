//! Paced echo jobs: a job whose params hold `"bench": {"delay_ms",
//! "progress_steps", "step_ms"}` waits `delay_ms`, reports `progress_steps`
//! progress events `step_ms` apart, then completes with its params. The
//! fan-out benchmark uses one to give thousands of watchers time to
//! subscribe before the events they measure are published.
//!
//! Such a job runs in a task of its own on the shared (non-blocking)
//! connection, so the read loops keep serving other jobs meanwhile.

use std::sync::Arc;
use std::time::Duration;

use jobgate_proto::JobId;
use jobgate_store::keys;
use redis::RedisResult;

use crate::protocol::{self, Entry, Finished};
use crate::worker::{Call, Shared, run_calls};

const MAX_DELAY_MS: u64 = 120_000;
const MAX_STEPS: u64 = 10_000;
const MAX_STEP_MS: u64 = 10_000;

/// How a paced job behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    delay: Duration,
    steps: u64,
    step: Duration,
}

impl Pace {
    /// The pace asked for by `params`, or `None` for a plain echo job.
    pub(crate) fn of(params: &str) -> Option<Self> {
        // Plain echo jobs are the hot path: skip parsing unless asked.
        if !params.contains("\"bench\"") {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(params).ok()?;
        let bench = value.get("bench")?;
        let field = |name: &str, max: u64| {
            bench
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
                .min(max)
        };
        Some(Self {
            delay: Duration::from_millis(field("delay_ms", MAX_DELAY_MS)),
            steps: field("progress_steps", MAX_STEPS),
            step: Duration::from_millis(field("step_ms", MAX_STEP_MS)),
        })
    }
}

/// Runs one paced job in its own task.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    entry: Entry,
    job_id: JobId,
    attempt: i64,
    params: String,
    pace: Pace,
) {
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let shutdown = shared.shutdown.clone();
        tokio::select! {
            // Stopping: the entry stays pending and is reclaimed after its lease.
            () = shutdown.cancelled() => {}
            outcome = run(&shared, &entry, job_id, attempt, params, pace) => {
                if let Err(error) = outcome {
                    eprintln!("jobgate-echo-worker: paced job {job_id}: {error}");
                }
            }
        }
    });
}

async fn run(
    shared: &Shared,
    entry: &Entry,
    job_id: JobId,
    attempt: i64,
    params: String,
    pace: Pace,
) -> RedisResult<()> {
    let mut conn = shared.control.clone();
    let protocol = &shared.protocol;
    tokio::time::sleep(pace.delay).await;
    for done in 1..=pace.steps {
        let progress = serde_json::json!({ "done": done, "total": pace.steps }).to_string();
        let call = Call::new(job_id, "progress", vec![attempt.to_string(), progress]);
        let reply = run_calls(&mut conn, protocol, &[call]).await?.remove(0)?;
        if protocol::parse_finished(&reply).ok() != Some(Finished::Done) || is_over(&reply) {
            // Cancelled, stale or gone: nothing more to report.
            return Ok(());
        }
        if done < pace.steps {
            tokio::time::sleep(pace.step).await;
        }
    }
    let call = Call::new(job_id, "complete", vec![attempt.to_string(), params]);
    let reply = run_calls(&mut conn, protocol, &[call]).await?.remove(0)?;
    if protocol::parse_finished(&reply).ok() == Some(Finished::Done) {
        let stream = &protocol.streams[entry.band];
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(stream)
            .arg(keys::CONSUMER_GROUP)
            .arg(&entry.entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(&entry.entry_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

/// Whether a `progress` reply says the job already ended (`skip`/`missing`).
fn is_over(reply: &redis::Value) -> bool {
    match reply {
        redis::Value::Array(items) => !matches!(
            items.first(),
            Some(redis::Value::BulkString(word)) if word == b"ok"
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_params_are_not_paced() {
        assert_eq!(Pace::of(r#"{"x":1}"#), None);
    }

    #[test]
    fn reads_and_bounds_the_pace() {
        let pace = Pace::of(r#"{"bench":{"delay_ms":500,"progress_steps":3,"step_ms":999999}}"#)
            .expect("paced");
        assert_eq!(pace.delay, Duration::from_millis(500));
        assert_eq!(pace.steps, 3);
        assert_eq!(pace.step, Duration::from_millis(MAX_STEP_MS));
    }
}
