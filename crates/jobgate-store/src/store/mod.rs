//! [`JobStore`]: the gateway's side of the job protocol. Every state change
//! goes through `proto-schemas/redis/jobgate.lua`, the same script the
//! Python worker runs.
//!
//! The store is one handle; its methods are kept by what they do:
//! `submit.rs` (admission: the owner's rate, idempotency keys, create and
//! enqueue), `reads.rs` (the record, the history, an owner's recent jobs),
//! `queues.rs` (kind → queue routes, queue lengths and stats) and
//! `overview.rs` (what an operator sees of a queue; pause and resume),
//! `script.rs` (each call of the script and how its reply is read). Here:
//! the handle, its settings and what the others share.

mod overview;
mod queues;
mod reads;
mod script;
mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

pub use self::overview::{BandDepths, QueueOverview, WorkerView};
pub(crate) use self::reads::StoredEvent;
pub use self::script::CancelOutcome;
pub use self::submit::{IdempotencyClaim, NewJob, SubmitRate, Submitted, TraceContext};
use crate::StoreError;

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

/// Cheap to clone: a handle on the shared connection and shared caches.
#[derive(Clone)]
pub struct JobStore {
    redis: ConnectionManager,
    script: Arc<Script>,
    settings: Arc<StoreSettings>,
    /// Kind → (queue, when it was read); see `queues.rs`.
    routes: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    /// Queue → (length, when it was read); see `queues.rs`.
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
            script: Arc::new(script::load()),
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
}

/// Locks one of the store's caches. They are only caches: a panic elsewhere
/// cannot leave them inconsistent, so a poisoned lock is still used.
fn lock<T>(cache: &Mutex<T>) -> MutexGuard<'_, T> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The gateway's clock, in ms since the epoch: for queue entries, an
/// owner's job index and rate windows. (Job timestamps are Redis's, taken
/// inside the script.)
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
