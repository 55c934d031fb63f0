//! [`Connection`]: the store's one handle on Redis for commands, and what
//! keeps it honest across Redis restarts, failovers and memory pressure.
//!
//! [`open`] makes one from `JOBGATE_REDIS_URL` (its seeds are read by
//! `connect.rs`). Inside, one of two connections (`connect::Mode`), chosen
//! on first contact by asking the first reachable seed `INFO cluster` (also
//! `connect.rs`):
//!
//! - `Single`: redis-rs's `ConnectionManager` on one server — the path the
//!   gateway always had, at the same cost per request;
//! - `Cluster`: redis-rs's `cluster_async::ClusterConnection`, which routes
//!   each command by its key's slot, follows `MOVED`/`ASK` and learns a new
//!   topology (a failover, a moved slot) by itself. A pipeline sent through
//!   it must stay inside one slot: [`Connection::query_by_slot`] splits one
//!   per slot there and keeps a single pipeline on a single server.
//!
//! Nothing connects before the first request (or the watcher's first tick):
//! a gateway starts, and answers `503 redis_unavailable`, while Redis is
//! down. The choice is made once, by whichever comes first; until a seed
//! answers, every request fails as unavailable, a second attempt waiting
//! [`DETECT_RETRY`] after a failed one so that a burst of requests does not
//! queue behind connection attempts.
//!
//! On a single server, redis-rs's `ConnectionManager` learns that Redis is
//! back only when a request fails on its cached (failed) connection
//! attempt; it reconnects for the *next* request. Two things keep a request
//! from being sacrificed:
//!
//! - a request refused at connect time (`ECONNREFUSED`: nothing was sent)
//!   is tried once more on the fresh connection that the failure started —
//!   safe for writes too, since Redis never saw the first try; an
//!   idempotent read ([`Retry::Reads`]) is also tried again after a
//!   dropped connection;
//! - [`watch`] pings every [`WATCH_INTERVAL`], so an idle gateway's manager
//!   has reconnected within a second of Redis coming back, before any
//!   client asks. On a cluster it pings one node at random (the cluster
//!   connection reconnects to nodes, and refreshes its slot map, by itself).
//!
//! Every `OOM` refusal passing through is counted in [`RedisHealth`], for
//! `/readyz` and `/metrics`, whichever the mode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use redis::aio::ConnectionLike;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, ConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::connect::{self, Mode};
use crate::error::{OOM_CODE, is_out_of_memory};

/// How often the watcher pings the shared connection.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long an `OOM` refusal keeps the store reporting memory pressure.
pub const OOM_MEMORY: Duration = Duration::from_secs(5);
/// After a failed first contact, how long requests fail at once instead of
/// trying the seeds again (the watcher keeps trying every second).
const DETECT_RETRY: Duration = Duration::from_millis(200);

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

/// Which kind of Redis the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`cluster_enabled:0`), with or without replicas.
    Standalone,
    /// Redis Cluster (`cluster_enabled:1`).
    Cluster,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }
}

/// What every clone of a [`Connection`] shares.
struct Shared {
    seeds: Vec<ConnectionInfo>,
    mode: OnceCell<Mode>,
    /// When the last first contact failed, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
    health: RedisHealth,
}

/// The store's handle on Redis: cheap to clone, connects on first use.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    retry: Retry,
    /// The chosen connection, once this handle has used it.
    mode: Option<Mode>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("seeds", &self.shared.seeds.len())
            .field("mode", &self.mode().map(RedisMode::as_str))
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A handle on `seeds` (at least one); nothing connects yet.
    pub(crate) fn lazy(seeds: Vec<ConnectionInfo>) -> Self {
        Self {
            shared: Arc::new(Shared {
                seeds,
                mode: OnceCell::new(),
                last_failure: Mutex::new(None),
                health: RedisHealth::default(),
            }),
            retry: Retry::NeverSent,
            mode: None,
        }
    }

    /// Another handle on the same connection, with retry rule `retry`.
    pub(crate) fn with_retry(&self, retry: Retry) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            retry,
            mode: self.shared.mode.get().cloned(),
        }
    }

    /// What the store has seen of Redis (`OOM` refusals).
    pub(crate) fn health(&self) -> &RedisHealth {
        &self.shared.health
    }

    /// Standalone or cluster; `None` until a seed has answered.
    pub(crate) fn mode(&self) -> Option<RedisMode> {
        self.shared.mode.get().map(|mode| match mode {
            Mode::Single(_) => RedisMode::Standalone,
            Mode::Cluster(_) => RedisMode::Cluster,
        })
    }

    /// The chosen connection, choosing it now if no seed has answered yet.
    pub(crate) async fn resolve(&mut self) -> Result<&mut Mode, RedisError> {
        if self.mode.is_none() {
            let shared = Arc::clone(&self.shared);
            let mode = shared
                .mode
                .get_or_try_init(|| first_contact(&shared))
                .await?;
            self.mode = Some(mode.clone());
        }
        Ok(self.mode.as_mut().expect("resolved above"))
    }

    /// True on a cluster (after the first contact).
    pub(crate) async fn is_cluster(&mut self) -> Result<bool, RedisError> {
        Ok(matches!(self.resolve().await?, Mode::Cluster(_)))
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
            Ok(reply) => self.shared.health.observe_reply(reply),
            Err(error) => self.shared.health.observe(error),
        }
    }

    /// Runs `commands`, each placed by the key named with it, and returns
    /// their replies in order: one pipeline (one round trip) on a single
    /// server; on a cluster one pipeline per slot, sent concurrently. An
    /// error reply of any command fails the whole call, as a pipeline does.
    pub(crate) async fn query_by_slot(
        &mut self,
        commands: Vec<(String, Cmd)>,
    ) -> Result<Vec<Value>, RedisError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster().await? {
            let mut pipe = redis::pipe();
            for (_, cmd) in commands {
                pipe.add_command(cmd);
            }
            return pipe.query_async(self).await;
        }
        let count = commands.len();
        let groups = group_by_slot(commands);
        let replies = try_join_all(groups.into_iter().map(|(places, pipe)| {
            let mut conn = self.clone();
            async move {
                let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                Ok::<_, RedisError>(places.into_iter().zip(replies).collect::<Vec<_>>())
            }
        }))
        .await?;
        let mut ordered = vec![Value::Nil; count];
        for (place, reply) in replies.into_iter().flatten() {
            ordered[place] = reply;
        }
        Ok(ordered)
    }

    /// Runs `cmd` on one node (on a cluster, one at random; on a single
    /// server, that server).
    pub(crate) async fn on_any_node(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self.resolve().await? {
            Mode::Single(_) => cmd.query_async(self).await,
            Mode::Cluster(cluster) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                let result = cluster.route_command(cmd.clone(), routing).await;
                self.settle(&result);
                result
            }
        }
    }
}

/// Commands grouped into one pipeline per slot: each group's pipeline and
/// the places its commands had in the original order.
fn group_by_slot(commands: Vec<(String, Cmd)>) -> Vec<(Vec<usize>, Pipeline)> {
    let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
    for (place, (key, cmd)) in commands.into_iter().enumerate() {
        let (places, pipe) = groups
            .entry(Slot::for_key(key.as_bytes()))
            .or_insert_with(|| (Vec::new(), redis::pipe()));
        places.push(place);
        pipe.add_command(cmd);
    }
    groups.into_values().collect()
}

/// First contact: asks the seeds in order, until one answers, whether
/// Redis is a cluster, and builds the connection for what it is.
async fn first_contact(shared: &Shared) -> Result<Mode, RedisError> {
    if let Some((at, why)) = shared
        .last_failure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        && at.elapsed() < DETECT_RETRY
    {
        return Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("no redis seed answered: {why}"),
        )));
    }
    let result = connect::detect(&shared.seeds).await;
    let mut last_failure = shared
        .last_failure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match &result {
        Ok(Mode::Single(_)) => {
            *last_failure = None;
            tracing::info!("redis is a single server");
        }
        Ok(Mode::Cluster(_)) => {
            *last_failure = None;
            tracing::info!(seeds = shared.seeds.len(), "redis is a cluster");
        }
        Err(error) => *last_failure = Some((Instant::now(), error.to_string())),
    }
    result
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut result = match self.resolve().await {
                Ok(mode) => send(mode, cmd).await,
                Err(error) => Err(error),
            };
            if let Err(error) = &result
                && self.may_retry(error)
                && let Some(mode) = self.mode.as_mut()
            {
                tracing::debug!(%error, "redis request failed on a lost connection; trying it once more");
                result = send(mode, cmd).await;
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
            let mut result = match self.resolve().await {
                Ok(mode) => send_pipeline(mode, pipeline, offset, count).await,
                Err(error) => Err(error),
            };
            if let Err(error) = &result
                && self.may_retry(error)
                && let Some(mode) = self.mode.as_mut()
            {
                tracing::debug!(%error, "redis pipeline failed on a lost connection; trying it once more");
                result = send_pipeline(mode, pipeline, offset, count).await;
            }
            match &result {
                Ok(replies) => replies
                    .iter()
                    .for_each(|r| self.shared.health.observe_reply(r)),
                Err(error) => self.shared.health.observe(error),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.mode {
            Some(Mode::Single(manager)) => manager.get_db(),
            _ => 0,
        }
    }
}

async fn send(mode: &mut Mode, cmd: &Cmd) -> Result<Value, RedisError> {
    match mode {
        Mode::Single(manager) => manager.send_packed_command(cmd).await,
        Mode::Cluster(cluster) => cluster.req_packed_command(cmd).await,
    }
}

async fn send_pipeline(
    mode: &mut Mode,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> Result<Vec<Value>, RedisError> {
    match mode {
        Mode::Single(manager) => manager.send_packed_commands(pipeline, offset, count).await,
        Mode::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count).await,
    }
}

/// Builds the command connection and the pub/sub client for `url` (the
/// client is the first seed's). Nothing connects yet: the connection is
/// made on first use, so a gateway starts (and answers `503
/// redis_unavailable`) while Redis is down.
pub fn open(url: &str) -> Result<(Connection, redis::Client), StoreError> {
    let seeds = connect::seeds(url)?;
    if seeds.iter().any(connect::is_tls) {
        // rustls needs one process-wide crypto provider; a second install
        // (another gateway in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let pubsub = redis::Client::open(seeds[0].clone())
        .map_err(|e| StoreError::Protocol(format!("redis url: {e}")))?;
    Ok((Connection::lazy(seeds), pubsub))
}

/// Pings through `conn` every [`WATCH_INTERVAL`] until `shutdown`: the first
/// ticks make the first contact if no request has yet; then a failed ping
/// makes a single server's manager reconnect at once, so the connection is
/// rebuilt as soon as Redis is back, not by a client's request failing. On a
/// cluster one node at random answers each ping.
pub(crate) fn watch(conn: Connection, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut conn = conn.with_retry(Retry::Reads);
        let mut up = true;
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let ping = conn.on_any_node(&redis::cmd("PING")).await;
            let ping = ping.and_then(|reply| match reply {
                Value::ServerError(error) => Err(error.into()),
                other => Ok(other),
            });
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
