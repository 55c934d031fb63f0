//! jobgate's Redis protocol, as the gateway speaks it.
//!
//! - [`keys`]: every key and channel name (the schema is in
//!   `proto-schemas/PROTOCOL.md`);
//! - [`JobStore`]: submit (with the owner's rate and idempotency keys),
//!   record, history, cancel — every change through the one state machine
//!   script shared with the Python worker — an owner's jobs a page at a
//!   time, kind routes and queue stats, and dead letters (list, show,
//!   re-run, purge);
//! - [`open`]: the command connection from `JOBGATE_REDIS_URL` (one server
//!   or the seeds of a Redis Cluster, told apart on first contact), and
//!   [`seeds`], the parsed seed list;
//! - [`spawn_delayed_mover`]: the task that moves due delayed jobs into
//!   their queues; [`spawn_outcome_flusher`]: the task that writes this
//!   gateway's job outcome counts;
//! - [`EventHub`]: sharded pub/sub, one connection per master (routed by
//!   slot; a standalone Redis is one master owning every slot), multiplexed
//!   across every client connection, re-established and re-routed on its
//!   own;
//! - [`Feed`]: subscribe-then-read for one client connection: history and
//!   live events merged, ordered and de-duplicated by `(job_id, epoch,
//!   seq)`.
//!
//! **This crate knows nothing of HTTP.** It depends on the wire types only
//! to name job ids and statuses.

mod connect;
mod connection;
mod cursor;
mod error;
mod feed;
mod hub;
pub mod keys;
mod mover;
mod record;
mod store;
mod warm;

pub use connect::{check_url, seeds};
pub use connection::{Connection, OOM_MEMORY, RedisHealth, RedisMode, WATCH_INTERVAL, open};
pub use error::StoreError;
pub use feed::{Feed, FeedEvent, FeedItem, WatchStart};
pub use hub::{EventHub, HubMessage, HubSettings, LiveHeader, NodeState, Published, Subscription};
pub use mover::{MAX_SLEEP as DELAYED_MOVER_MAX_SLEEP, spawn_delayed_mover};
pub use record::JobRecord;
pub use store::{
    BadCursor, BandDepths, CancelOutcome, ClusterNode, DeadLetter, DeadLetterPage,
    IdempotencyClaim, JobPage, JobStore, LATENCY_BUCKETS_S, LatencyTotals, ListPosition, ListQuery,
    MAX_JOBS_PER_CREATE, NewJob, OUTCOME_EVENTS, OUTCOME_FLUSH_INTERVAL, OutcomeTotals,
    QueueOverview, RedisMemory, RedisStatus, RetryOutcome, Route, StoreSettings, SubmitOutcome,
    SubmitRate, Submitted, TraceContext, WorkerView, parse_cursor, spawn_outcome_flusher,
};
pub use warm::WarmIds;
