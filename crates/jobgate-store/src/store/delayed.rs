//! Delayed jobs on the store's side: the member a delayed job leaves in its
//! queue's delayed set (`jobgate:delayed:{<queue>}`, scored by its due time),
//! and the call of `proto-schemas/redis/delayed.lua` that moves every due
//! member of one queue into its band streams, atomically. The task that
//! makes that call over and over lives in `crate::mover`.

use redis::Script;

use super::{JobStore, NewJob};
use crate::StoreError;
use crate::keys::{self, Band};

/// Moves the due members of one queue into its band streams.
const SCRIPT: &str = include_str!("../../../../proto-schemas/redis/delayed.lua");
/// The most members one call of the script moves: a burst of due jobs is
/// moved in several short scripts rather than one long one.
const MOVE_BATCH: usize = 500;

pub(super) fn load() -> Script {
    Script::new(SCRIPT)
}

/// What the queue entry needs, as JSON: the delayed set's member for `job`.
/// Unique per job (it holds the job id).
pub(super) fn delayed_member(job: &NewJob, band: Band) -> String {
    serde_json::json!({
        "job_id": job.job_id.to_string(),
        "kind": job.request.kind,
        "band": band.as_str(),
        "traceparent": job.trace.traceparent,
        "tracestate": job.trace.tracestate,
    })
    .to_string()
}

impl JobStore {
    /// Moves every due job of `queue` into its band streams. Returns how
    /// many were moved and the ms until the next one is due (`None`: no
    /// delayed job is left).
    pub async fn move_due_jobs(&self, queue: &str) -> Result<(u64, Option<u64>), StoreError> {
        let mut conn = self.connection();
        let mut moved = 0;
        loop {
            let (count, wait_ms): (u64, i64) = self
                .delayed_script
                .key(keys::delayed(queue))
                .key(keys::queue(queue, Band::High))
                .key(keys::queue(queue, Band::Normal))
                .key(keys::queue(queue, Band::Low))
                .arg(MOVE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            moved += count;
            if count < MOVE_BATCH as u64 || wait_ms != 0 {
                return Ok((moved, u64::try_from(wait_ms).ok()));
            }
        }
    }

    /// Resolves when this process has added a delayed job since the last
    /// call (a permit is kept if nobody waits), so the mover can look again
    /// at how long to sleep.
    pub async fn delayed_job_added(&self) {
        self.delayed_added.notified().await;
    }
}
