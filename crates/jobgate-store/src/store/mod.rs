//! [`JobStore`]: the gateway's side of the job protocol. Every state change
//! goes through `proto-schemas/redis/jobgate.lua`, the same script the
//! Python worker runs.
//!
//! The store is one handle; its methods are kept by what they do:
//! `submit.rs` (admission: the owner's rate, idempotency keys),
//! `batch.rs` (create and enqueue, for one job or many together), `reads.rs` (the record, the history, an owner's recent jobs),
//! `listing.rs` (a page of an owner's jobs, filtered, newest first),
//! `queues.rs` (kind → queue routes with their params schemas, the
//! registered kinds, queue lengths and stats),
//! `overview.rs` (what an operator sees of a queue; pause and resume),
//! `script.rs` (each call of the script and how its reply is read),
//! `delayed.rs` (delayed jobs' set members and moving the due ones),
//! `dead_letters.rs` (list, show, re-run and purge dead letters),
//! `outcomes.rs` and `stats.rs` (job outcome counts: the gateway's own,
//! written once a second, and the totals `/metrics` reads) and `health.rs`
//! (what `/readyz` asks: a ping, memory, a cluster's nodes). Here: the
//! handle, its settings and what the others share.
//!
//! **One slot per call.** On Redis Cluster every command, script call and
//! pipeline must touch keys of one slot (one hash tag). Calls that gather
//! keys of several tags — the queue entry and the owner's index at
//! submission, the records of a page of jobs — go through
//! `Connection::query_by_slot`: one pipeline on a single server (no extra
//! round trip), one per slot, concurrently, on a cluster.

mod batch;
mod dead_letters;
mod delayed;
mod health;
mod listing;
mod outcomes;
mod overview;
mod queues;
mod reads;
mod script;
mod single;
mod stats;
mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use tokio_util::sync::CancellationToken;

pub use self::batch::{MAX_JOBS_PER_CREATE, SubmitOutcome};
pub use self::dead_letters::{BadCursor, DeadLetter, DeadLetterPage, RetryOutcome, parse_cursor};
pub use self::health::{ClusterNode, RedisMemory, RedisStatus};
pub use self::listing::{JobPage, ListPosition, ListQuery};
use self::outcomes::PendingOutcomes;
pub use self::outcomes::{LATENCY_BUCKETS_S, LatencyTotals, OUTCOME_EVENTS, OutcomeTotals};
pub use self::overview::{BandDepths, QueueOverview, WorkerView};
pub use self::queues::Route;
pub(crate) use self::reads::StoredEvent;
pub use self::script::CancelOutcome;
pub use self::stats::{OUTCOME_FLUSH_INTERVAL, spawn_outcome_flusher};
pub use self::submit::{IdempotencyClaim, NewJob, SubmitRate, Submitted, TraceContext};
use crate::connection::{self, Connection, RedisHealth, RedisMode, Retry};

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
    /// The shared connection (single server or cluster), with what it has
    /// seen of Redis (`OOM` refusals).
    redis: Connection,
    script: Arc<Script>,
    /// `proto-schemas/redis/delayed.lua`; see `delayed.rs`.
    delayed_script: Arc<Script>,
    /// Woken when this process adds a delayed job; see `delayed.rs`.
    delayed_added: Arc<tokio::sync::Notify>,
    /// The same script flagged `allow-oom`, for the one repair that must
    /// not be refused at `maxmemory`; see `script.rs`.
    repair_script: Arc<Script>,
    settings: Arc<StoreSettings>,
    /// Kind → (its route, when it was read); see `queues.rs`.
    routes: Arc<Mutex<HashMap<String, (Route, Instant)>>>,
    /// Queue → (length, when it was read); see `queues.rs`.
    depths: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
    /// Outcomes this gateway wrote, not yet counted in Redis; see `stats.rs`.
    pending_outcomes: Arc<Mutex<PendingOutcomes>>,
    /// The outcome totals last read, and when; see `stats.rs`.
    outcome_totals: Arc<Mutex<Option<(OutcomeTotals, Instant)>>>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JobStore {
    /// The store over `redis` (from [`crate::open`]).
    pub fn new(redis: Connection, settings: StoreSettings) -> Self {
        Self {
            redis,
            script: Arc::new(script::load()),
            delayed_script: Arc::new(delayed::load()),
            delayed_added: Arc::default(),
            repair_script: Arc::new(script::load_allowing_oom()),
            settings: Arc::new(settings),
            routes: Arc::default(),
            depths: Arc::default(),
            pending_outcomes: Arc::default(),
            outcome_totals: Arc::default(),
        }
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// A handle on the shared connection, for writes: a request is tried
    /// again only when it never reached Redis.
    fn connection(&self) -> Connection {
        self.redis.with_retry(Retry::NeverSent)
    }

    /// A handle on the shared connection for reads, which are also tried
    /// again after a dropped connection.
    fn reader(&self) -> Connection {
        self.redis.with_retry(Retry::Reads)
    }

    /// What the store has seen of Redis (`OOM` refusals).
    pub fn health(&self) -> &RedisHealth {
        self.redis.health()
    }

    /// Whether Redis is a single server or a cluster; `None` until it has
    /// answered once.
    pub fn redis_mode(&self) -> Option<RedisMode> {
        self.redis.mode()
    }

    /// Pings Redis every second until `shutdown`, so that the shared
    /// connection is made (and Redis's mode learnt) at once, and rebuilt as
    /// soon as Redis is back (see `connection.rs`).
    pub fn keep_connected(&self, shutdown: CancellationToken) {
        connection::watch(self.redis.clone(), shutdown);
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
