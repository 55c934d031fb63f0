//! [`JobStore`]: the gateway's side of the job protocol. Every state change
//! goes through `proto-schemas/redis/jobgate.lua`, the same script the
//! Python worker runs.
//!
//! The store is one handle; its methods are kept by what they do:
//! `submit.rs` (admission: the owner's rate, idempotency keys, create and
//! enqueue), `reads.rs` (the record, the history, an owner's recent jobs),
//! `listing.rs` (a page of an owner's jobs, filtered, newest first),
//! `queues.rs` (kind → queue routes, queue lengths and stats),
//! `overview.rs` (what an operator sees of a queue; pause and resume),
//! `script.rs` (each call of the script and how its reply is read),
//! `delayed.rs` (delayed jobs' set members and moving the due ones) and
//! `dead_letters.rs` (list, show, re-run and purge dead letters). Here:
//! the handle, its settings and what the others share.

mod dead_letters;
mod delayed;
mod listing;
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
use tokio_util::sync::CancellationToken;

pub use self::dead_letters::{BadCursor, DeadLetter, DeadLetterPage, RetryOutcome, parse_cursor};
pub use self::listing::{JobPage, ListPosition, ListQuery};
pub use self::overview::{BandDepths, QueueOverview, WorkerView};
pub(crate) use self::reads::StoredEvent;
pub use self::script::CancelOutcome;
pub use self::submit::{IdempotencyClaim, NewJob, SubmitRate, Submitted, TraceContext};
use crate::StoreError;
use crate::connection::{self, Connection, RedisHealth, Retry};

/// Settings the store applies to every job it creates.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long a terminal job's record and history are kept.
    pub retention: Duration,
    /// The most events one job's history keeps.
    pub history_max: u64,
    /// The most jobs an owner's index (`jobgate:owner:{<owner>}:jobs`)
    /// keeps: the newest; older ones drop out of listings and replays.
    pub owner_index_max: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            history_max: 10_000,
            owner_index_max: 10_000,
        }
    }
}

/// Cheap to clone: a handle on the shared connection and shared caches.
#[derive(Clone)]
pub struct JobStore {
    redis: ConnectionManager,
    /// `OOM` refusals seen on the shared connection.
    health: Arc<RedisHealth>,
    script: Arc<Script>,
    /// `proto-schemas/redis/delayed.lua`; see `delayed.rs`.
    delayed_script: Arc<Script>,
    /// Woken when this process adds a delayed job; see `delayed.rs`.
    delayed_added: Arc<tokio::sync::Notify>,
    /// The same script flagged `allow-oom`, for the one repair that must
    /// not be refused at `maxmemory`; see `script.rs`.
    repair_script: Arc<Script>,
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
            health: Arc::default(),
            script: Arc::new(script::load()),
            delayed_script: Arc::new(delayed::load()),
            delayed_added: Arc::default(),
            repair_script: Arc::new(script::load_allowing_oom()),
            settings: Arc::new(settings),
            routes: Arc::default(),
            depths: Arc::default(),
        }
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// A handle on the shared, multiplexed connection, for writes: a
    /// request is tried again only when it never reached Redis.
    fn connection(&self) -> Connection {
        Connection::new(
            self.redis.clone(),
            Arc::clone(&self.health),
            Retry::NeverSent,
        )
    }

    /// A handle on the shared connection for reads, which are also tried
    /// again after a dropped connection.
    fn reader(&self) -> Connection {
        Connection::new(self.redis.clone(), Arc::clone(&self.health), Retry::Reads)
    }

    /// What the store has seen of Redis (`OOM` refusals).
    pub fn health(&self) -> &RedisHealth {
        &self.health
    }

    /// Pings Redis every second until `shutdown`, so that the shared
    /// connection is rebuilt as soon as Redis is back (see `connection.rs`).
    pub fn keep_connected(&self, shutdown: CancellationToken) {
        connection::watch(self.redis.clone(), shutdown);
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.reader();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Redis's memory: `used_memory` and `maxmemory` (0: no limit) from
    /// `INFO memory`.
    pub async fn memory(&self) -> Result<RedisMemory, StoreError> {
        let mut conn = self.reader();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| StoreError::Protocol(format!("INFO memory has no {name}")))
        };
        Ok(RedisMemory {
            used_bytes: field("used_memory")?,
            max_bytes: field("maxmemory")?,
        })
    }
}

/// Redis's memory use against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisMemory {
    pub used_bytes: u64,
    /// `maxmemory`; 0 when there is no limit.
    pub max_bytes: u64,
}

impl RedisMemory {
    /// At or over `maxmemory`: Redis refuses writes (with `noeviction`).
    pub fn is_full(&self) -> bool {
        self.max_bytes > 0 && self.used_bytes >= self.max_bytes
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

#[cfg(test)]
mod tests {
    use super::RedisMemory;

    #[test]
    fn redis_is_full_at_its_limit_and_never_without_one() {
        let memory = |used_bytes, max_bytes| RedisMemory {
            used_bytes,
            max_bytes,
        };
        assert!(memory(100, 100).is_full());
        assert!(memory(101, 100).is_full());
        assert!(!memory(99, 100).is_full());
        assert!(!memory(u64::MAX, 0).is_full(), "0 is no limit");
    }
}
