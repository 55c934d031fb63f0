//! The submission batcher: jobs that are ready to be created at the same
//! time — from one session, a `submit_batch`, or many clients at once —
//! go to Redis together, through [`JobStore::submit_many`] (one call for
//! many jobs, grouped by slot on a cluster).
//!
//! Adaptive, with no added latency when idle: one task takes whatever is
//! waiting (at least one job, at most [`MAX_JOBS_PER_BATCH`]) and sends it
//! at once; while up to [`MAX_BATCHES_IN_FLIGHT`] batches wait for Redis,
//! the next one forms from what arrives meanwhile. A lone submission on an
//! idle gateway is sent as soon as it arrives, as before; under load the
//! batches grow by themselves.
//!
//! Everything decided about a job before it is created — validation,
//! routing, admission, idempotency, its trace — stays with the submission
//! (`submit.rs`); the batcher only carries the Redis writes. Each batch runs
//! in a task of its own, so a caller that goes away cannot stop it between
//! two of its writes.

use std::sync::Arc;

use jobgate_store::{JobStore, NewJob, StoreError, SubmitOutcome, SubmitRate};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most jobs sent to Redis in one batch.
pub(crate) const MAX_JOBS_PER_BATCH: usize = 256;
/// Batches waiting for Redis at once; the next forms meanwhile.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Submissions that may wait for a batch; past that, submitters wait.
const QUEUE_CAPACITY: usize = 8192;

/// One job waiting for its batch, and where its answer goes.
struct Pending {
    job: NewJob,
    answer: oneshot::Sender<SubmitOutcome>,
}

/// Handle to the batcher; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batcher's task over `store`; every job is counted against
    /// its owner's `rate`. The task ends when the last handle is dropped.
    pub(crate) fn start(store: JobStore, rate: Option<SubmitRate>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(store, rate, waiting));
        Self { queue }
    }

    /// Creates and enqueues `job` with whatever else is waiting.
    pub(crate) async fn submit(&self, job: NewJob) -> SubmitOutcome {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Pending { job, answer }).await.is_err() {
            return Err(stopped());
        }
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The batcher's loop: waits for a free place among the batches in flight,
/// then for a first job, takes what else is waiting and sends the batch.
async fn run(store: JobStore, rate: Option<SubmitRate>, mut waiting: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        let Ok(place) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(waiting.len().clamp(1, MAX_JOBS_PER_BATCH));
        if waiting.recv_many(&mut batch, MAX_JOBS_PER_BATCH).await == 0 {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (jobs, answers): (Vec<NewJob>, Vec<_>) = batch
                .into_iter()
                .map(|pending| (pending.job, pending.answer))
                .unzip();
            let outcomes = store.submit_many(&jobs, rate).await;
            drop(place);
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        });
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the submission batcher has stopped".to_owned())
}
