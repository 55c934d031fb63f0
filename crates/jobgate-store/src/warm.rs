//! [`WarmIds`]: job ids made ahead, each with its channel already
//! subscribed, so that a WebSocket submission need not wait for Redis to
//! confirm a new subscription before it creates its job.
//!
//! A session watches a job's channel before the job exists, so that its
//! first events cannot be missed (subscribe, then create). Waiting for that
//! confirmation is one round trip to Redis before the job is created. A
//! session that takes an id from here watches a channel Redis already
//! delivers ([`EventHub::watch`] resolves at once), then hands the id back
//! with [`WarmIds::release`]: this pool stops watching it and subscribes a
//! new one in the background. The guarantee does not rest on the pool: the
//! session still waits for its own watch, which simply has nothing to wait
//! for. An empty pool (a burst took them all, or Redis is away) means a
//! fresh id, as without it.
//!
//! Ids are time-ordered (UUID v7): one kept longer than [`MAX_AGE`] is
//! replaced, so a job's id still tells roughly when it was made.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use jobgate_proto::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{EventHub, Subscription};
use crate::keys;

/// Oldest id handed out; older ones are replaced.
const MAX_AGE: Duration = Duration::from_secs(60);
/// How long the pool waits before trying again after a subscription failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Job ids whose channels are subscribed; cheap to clone.
#[derive(Debug, Clone)]
pub struct WarmIds {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Confirmed ids, oldest first, with when they were made.
    ready: Mutex<VecDeque<(JobId, Instant)>>,
    released: mpsc::UnboundedSender<JobId>,
}

impl WarmIds {
    /// Keeps up to `size` ids warm until `shutdown`.
    pub fn start(hub: EventHub, size: usize, shutdown: CancellationToken) -> Self {
        let (released, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            ready: Mutex::new(VecDeque::with_capacity(size)),
            released,
        });
        tokio::spawn(keep_warm(
            hub,
            Arc::clone(&shared),
            receiver,
            size,
            shutdown,
        ));
        Self { shared }
    }

    /// An id whose channel Redis delivers, if one is ready. The caller
    /// watches it, then calls [`WarmIds::release`].
    pub fn take(&self) -> Option<JobId> {
        let mut ready = self.shared.lock();
        while let Some((job_id, made)) = ready.pop_front() {
            if made.elapsed() < MAX_AGE {
                return Some(job_id);
            }
            // Too old to hand out: let it go, and make another.
            let _ = self.shared.released.send(job_id);
        }
        None
    }

    /// The caller now watches `job_id` itself: the pool lets go of it.
    pub fn release(&self, job_id: JobId) {
        let _ = self.shared.released.send(job_id);
    }

    /// How many ids are ready (for tests).
    pub fn ready(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(JobId, Instant)>> {
        // Nothing is awaited while the lock is held.
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn keep_warm(
    hub: EventHub,
    shared: Arc<Shared>,
    mut released: mpsc::UnboundedReceiver<JobId>,
    size: usize,
    shutdown: CancellationToken,
) {
    let mut subscription: Subscription = hub.subscription();
    let mut pending = FuturesUnordered::new();
    let mut sweep = tokio::time::interval(MAX_AGE / 2);
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        let paused = paused_until.is_some_and(|until| tokio::time::Instant::now() < until);
        if !paused {
            let held = shared.lock().len() + pending.len();
            for _ in held..size {
                let job_id = JobId::new();
                let confirmed = hub.watch(&mut subscription, &keys::job_channel(&job_id));
                pending.push(async move { (job_id, confirmed.await) });
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(job_id) = released.recv() => {
                hub.unwatch(&mut subscription, &keys::job_channel(&job_id));
            }
            Some((job_id, confirmed)) = pending.next(), if !pending.is_empty() => match confirmed {
                Ok(()) => shared.lock().push_back((job_id, Instant::now())),
                Err(_) => {
                    hub.unwatch(&mut subscription, &keys::job_channel(&job_id));
                    paused_until = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            },
            // Nothing is published on these channels until a job takes
            // one (and by then the pool has let go of it); a resync after
            // a lost link is all there is to read.
            message = subscription.recv() => if message.is_none() { return },
            _ = sweep.tick() => {
                let stale: Vec<JobId> = {
                    let mut ready = shared.lock();
                    let keep = ready.iter().position(|(_, made)| made.elapsed() < MAX_AGE / 2).unwrap_or(ready.len());
                    ready.drain(..keep).map(|(job_id, _)| job_id).collect()
                };
                for job_id in stale {
                    hub.unwatch(&mut subscription, &keys::job_channel(&job_id));
                }
            }
            () = async {
                match paused_until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            } => paused_until = None,
        }
    }
}
