//! The delayed-job mover: one task per gateway that moves every due job
//! from its queue's delayed set into the queue's band streams (through
//! `JobStore::move_due_jobs`, one atomic script per queue, so gateways
//! moving at once never enqueue a job twice), then sleeps until the next
//! job is due — at most [`MAX_SLEEP`], so a job another gateway delays is
//! moved in time too, and at once when this gateway delays one. No task
//! or timer per job. It stops with the shutdown token; when Redis is away
//! it logs and tries again after [`MAX_SLEEP`].

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::JobStore;

/// The longest the mover sleeps between two looks at the delayed sets.
pub const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How long the mover keeps the list of registered queues before reading it
/// again (it reads it at once when this gateway delays a job): a look every
/// [`MAX_SLEEP`] costs one script call per queue, not a kinds read too.
const QUEUES_MAX_AGE: Duration = Duration::from_secs(1);

/// Starts the mover; it runs until `shutdown` fires.
pub fn spawn_delayed_mover(store: JobStore, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut queues: Option<(Vec<String>, Instant)> = None;
        loop {
            let sleep = match move_due(&store, &mut queues).await {
                Ok(sleep) => sleep,
                Err(error) => {
                    tracing::warn!(error = %error, "could not move due delayed jobs; retrying");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                // Its queue may be new: read the queues again.
                () = store.delayed_job_added() => queues = None,
            }
        }
    })
}

/// One pass over every queue (`queues` is the list last read, and when);
/// returns how long to sleep.
async fn move_due(
    store: &JobStore,
    queues: &mut Option<(Vec<String>, Instant)>,
) -> Result<Duration, crate::StoreError> {
    let stale = queues
        .as_ref()
        .is_none_or(|(_, read_at)| read_at.elapsed() >= QUEUES_MAX_AGE);
    if stale {
        *queues = Some((store.registered_queues().await?, Instant::now()));
    }
    let mut waits = Vec::new();
    for queue in queues.iter().flat_map(|(names, _)| names) {
        let (moved, wait_ms) = store.move_due_jobs(queue).await?;
        if moved > 0 {
            tracing::debug!(queue = %queue, moved, "delayed jobs are due: moved to their queue");
        }
        waits.push(wait_ms);
    }
    Ok(sleep_for(waits))
}

/// How long to sleep, given each queue's ms until its next due job
/// (`None`: nothing delayed): until the earliest, at most [`MAX_SLEEP`].
fn sleep_for(waits: impl IntoIterator<Item = Option<u64>>) -> Duration {
    waits
        .into_iter()
        .flatten()
        .map(Duration::from_millis)
        .min()
        .map_or(MAX_SLEEP, |wait| wait.min(MAX_SLEEP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_earliest_due_job_and_never_longer_than_the_bound() {
        assert_eq!(sleep_for([]), MAX_SLEEP);
        assert_eq!(sleep_for([None, None]), MAX_SLEEP);
        assert_eq!(
            sleep_for([Some(120), None, Some(40)]),
            Duration::from_millis(40)
        );
        assert_eq!(sleep_for([Some(0)]), Duration::ZERO);
        assert_eq!(sleep_for([Some(60_000)]), MAX_SLEEP);
    }
}
