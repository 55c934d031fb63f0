//! [`Connection`]: the store's handle on the shared command connection, and
//! what keeps that connection honest across Redis restarts and memory
//! pressure.
//!
//! redis-rs's `ConnectionManager` learns that Redis is back only when a
//! request fails on its cached (failed) connection attempt; it reconnects
//! for the *next* request. Two things keep a request from being sacrificed:
//!
//! - a request refused at connect time (`ECONNREFUSED`: nothing was sent)
//!   is tried once more on the fresh connection that the failure started —
//!   safe for writes too, since Redis never saw the first try; an
//!   idempotent read ([`Retry::Reads`]) is also tried again after a
//!   dropped connection;
//! - [`watch`] pings every [`WATCH_INTERVAL`], so an idle gateway's manager
//!   has reconnected within a second of Redis coming back, before any
//!   client asks.
//!
//! Every `OOM` refusal passing through is counted in [`RedisHealth`], for
//! `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio_util::sync::CancellationToken;

use crate::error::{OOM_CODE, is_out_of_memory};

/// How often the watcher pings the shared connection.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long an `OOM` refusal keeps the store reporting memory pressure.
pub const OOM_MEMORY: Duration = Duration::from_secs(5);

/// Which failed requests may be tried a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only a request that never reached Redis (connection refused).
    NeverSent,
    /// Also after a dropped connection: for reads, which change nothing
    /// however often they run.
    Reads,
}

/// What the store has seen of Redis: `OOM` refusals (a counter and the
/// last one's time). Shared by every clone of the store.
#[derive(Debug, Default)]
pub struct RedisHealth {
    oom_refusals: AtomicU64,
    last_oom: Mutex<Option<Instant>>,
}

impl RedisHealth {
    /// Requests Redis refused for lack of memory, since the process started.
    pub fn oom_refusals(&self) -> u64 {
        self.oom_refusals.load(Ordering::Relaxed)
    }

    /// True when Redis refused a write for lack of memory within
    /// [`OOM_MEMORY`].
    pub fn recently_out_of_memory(&self) -> bool {
        let last = *self
            .last_oom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.is_some_and(|at| at.elapsed() < OOM_MEMORY)
    }

    fn observe(&self, error: &RedisError) {
        if is_out_of_memory(error) {
            self.note_oom();
        }
    }

    /// Server errors come back as replies (`Value::ServerError`), turned
    /// into errors only when the reply is read.
    fn observe_reply(&self, reply: &Value) {
        if let Value::ServerError(error) = reply
            && error.code() == OOM_CODE
        {
            self.note_oom();
        }
    }

    fn note_oom(&self) {
        self.oom_refusals.fetch_add(1, Ordering::Relaxed);
        *self
            .last_oom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }
}

/// The shared connection with a retry rule; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connection {
    manager: ConnectionManager,
    health: Arc<RedisHealth>,
    retry: Retry,
}

impl Connection {
    pub(crate) fn new(manager: ConnectionManager, health: Arc<RedisHealth>, retry: Retry) -> Self {
        Self {
            manager,
            health,
            retry,
        }
    }

    fn may_retry(&self, error: &RedisError) -> bool {
        match self.retry {
            Retry::NeverSent => error.is_connection_refusal(),
            // Not after a timeout: Redis may be slow, not gone.
            Retry::Reads => error.is_connection_refusal() || error.is_connection_dropped(),
        }
    }

    fn settle(&self, result: &Result<Value, RedisError>) {
        match result {
            Ok(reply) => self.health.observe_reply(reply),
            Err(error) => self.health.observe(error),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut result = self.manager.send_packed_command(cmd).await;
            if let Err(error) = &result
                && self.may_retry(error)
            {
                tracing::debug!(%error, "redis request failed on a lost connection; trying it once more");
                result = self.manager.send_packed_command(cmd).await;
            }
            self.settle(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut result = self
                .manager
                .send_packed_commands(pipeline, offset, count)
                .await;
            if let Err(error) = &result
                && self.may_retry(error)
            {
                tracing::debug!(%error, "redis pipeline failed on a lost connection; trying it once more");
                result = self
                    .manager
                    .send_packed_commands(pipeline, offset, count)
                    .await;
            }
            match &result {
                Ok(replies) => replies.iter().for_each(|r| self.health.observe_reply(r)),
                Err(error) => self.health.observe(error),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// Pings through `manager` every [`WATCH_INTERVAL`] until `shutdown`: a
/// failed ping makes the manager reconnect at once, so the connection is
/// rebuilt as soon as Redis is back, not by a client's request failing.
pub(crate) fn watch(manager: ConnectionManager, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut conn = manager;
        let mut up = true;
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let ping: Result<String, RedisError> = redis::cmd("PING").query_async(&mut conn).await;
            match (ping, up) {
                (Ok(_), false) => {
                    tracing::info!("redis answers again");
                    up = true;
                }
                (Err(error), true) => {
                    tracing::warn!(%error, "redis does not answer; reconnecting");
                    up = false;
                }
                _ => {}
            }
        }
    });
}
