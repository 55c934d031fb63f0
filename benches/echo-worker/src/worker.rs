//! The consumer-group loop, in the order of PROTOCOL.md "Processing":
//! `XREADGROUP` a batch → `start` each entry → run (echo: nothing to run) →
//! `complete` with the params as the result → `XACK` + `XDEL`.
//!
//! Round trips are batched where the protocol allows it: one pipeline
//! starts every entry of a batch, one completes them, and the
//! acknowledgements (`MULTI XACK XDEL EXEC`, so an entry never stays in the
//! backlog once acknowledged) travel in front of the next `XREADGROUP`. A
//! completion answered `stale` is not acknowledged: the entry belongs to the
//! worker that took it over. Each read loop owns its connection, because a
//! blocking `XREADGROUP` would stall every other command on a shared one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobgate_proto::JobId;
use jobgate_store::keys;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::paced::{self, Pace};
use crate::protocol::{self, Entry, Finished, Protocol, Started};

/// How often loop 0 looks for entries whose worker died.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(5);
/// How often the kinds are written to `jobgate:kinds` again.
const REGISTER_INTERVAL: Duration = Duration::from_secs(30);

/// What every read loop shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) protocol: Protocol,
    pub(crate) client: redis::Client,
    /// Non-blocking commands only: registration and paced jobs.
    pub(crate) control: MultiplexedConnection,
    pub(crate) shutdown: CancellationToken,
    /// Paced jobs in flight, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
}

/// Connects with a response timeout longer than the longest `BLOCK`.
pub(crate) async fn connect(
    client: &redis::Client,
    block: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Loads the script, creates the consumer group on every band, registers
/// the kinds, then runs `concurrency` read loops until `shutdown`.
pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = redis::Client::open(config.redis_url.as_str())?;
    let control = connect(&client, config.block()).await?;
    let shared = Arc::new(Shared {
        protocol: Protocol::new(&config.queue),
        config,
        client,
        control,
        shutdown,
        tasks: TaskTracker::new(),
    });
    let mut conn = shared.control.clone();
    load_script(&mut conn).await?;
    ensure_groups(&shared, &mut conn).await?;
    register_kinds(&shared, &mut conn).await?;
    eprintln!(
        "jobgate-echo-worker: queue {:?}, kinds {:?}, {} read loop(s), batch {}",
        shared.config.queue, shared.config.kinds, shared.config.concurrency, shared.config.batch
    );

    let registrar = tokio::spawn(keep_registered(Arc::clone(&shared)));
    let loops: Vec<_> = (0..shared.config.concurrency)
        .map(|index| tokio::spawn(read_loop(Arc::clone(&shared), index)))
        .collect();
    for handle in loops {
        handle.await?;
    }
    registrar.abort();
    shared.tasks.close();
    shared.tasks.wait().await;
    Ok(())
}

pub(crate) async fn load_script(conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(protocol::SCRIPT)
        .query_async(conn)
        .await?;
    Ok(())
}

/// `XGROUP CREATE <band> jobgate-workers 0 MKSTREAM` on every band.
async fn ensure_groups(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    for stream in &shared.protocol.streams {
        let created: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(keys::CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// `HSET jobgate:kinds <kind> {"queue", "worker", "seen_at"}` for every kind.
async fn register_kinds(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let registration = serde_json::json!({
        "queue": shared.config.queue,
        "worker": shared.config.consumer(),
        "seen_at": seconds * 1000 + micros / 1000,
    })
    .to_string();
    let mut hset = redis::cmd("HSET");
    hset.arg(keys::KINDS);
    for kind in &shared.config.kinds {
        hset.arg(kind).arg(&registration);
    }
    hset.query_async::<()>(conn).await
}

async fn keep_registered(shared: Arc<Shared>) {
    let mut conn = shared.control.clone();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(REGISTER_INTERVAL) => {}
        }
        if let Err(error) = register_kinds(&shared, &mut conn).await {
            eprintln!("jobgate-echo-worker: registering kinds failed: {error}");
        }
    }
}

/// One read loop: its own connection and consumer name.
async fn read_loop(shared: Arc<Shared>, index: usize) {
    let consumer = format!("{}-{index}", shared.config.consumer());
    let mut loop_state = Loop {
        shared: Arc::clone(&shared),
        consumer,
        acks: Vec::new(),
    };
    let mut backoff = Duration::from_millis(50);
    let mut next_reclaim = Instant::now();
    while !shared.shutdown.is_cancelled() {
        let mut conn = match connect(&shared.client, shared.config.block()).await {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("jobgate-echo-worker: connect failed: {error}");
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        loop {
            let reclaim = index == 0 && Instant::now() >= next_reclaim;
            let outcome = if reclaim {
                next_reclaim = Instant::now() + RECLAIM_INTERVAL;
                loop_state.reclaim(&mut conn).await
            } else {
                let read = tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    read = loop_state.read(&mut conn) => read,
                };
                match read {
                    Ok(entries) => loop_state.process(&mut conn, entries).await,
                    Err(error) => Err(error),
                }
            };
            if let Err(error) = outcome {
                if error.code() == Some("NOGROUP") {
                    let _ = ensure_groups(&shared, &mut conn).await;
                    continue;
                }
                eprintln!(
                    "jobgate-echo-worker: {} lost its connection: {error}",
                    loop_state.consumer
                );
                break;
            }
        }
    }
    // Stopping: hand in what was acknowledged but not yet sent.
    if !loop_state.acks.is_empty()
        && let Ok(mut conn) = connect(&shared.client, shared.config.block()).await
    {
        let mut pipe = redis::pipe();
        loop_state.queue_acks(&mut pipe);
        let _: RedisResult<()> = pipe.query_async(&mut conn).await;
    }
}

struct Loop {
    shared: Arc<Shared>,
    consumer: String,
    /// Entries done and waiting to be acknowledged with the next read.
    acks: Vec<Entry>,
}

impl Loop {
    /// Sends the pending acknowledgements, then `XREADGROUP … BLOCK`.
    async fn read(&mut self, conn: &mut MultiplexedConnection) -> RedisResult<Vec<Entry>> {
        let protocol = &self.shared.protocol;
        let mut pipe = redis::pipe();
        self.queue_acks(&mut pipe);
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(keys::CONSUMER_GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.shared.config.batch)
            .arg("BLOCK")
            .arg(self.shared.config.block_ms)
            .arg("STREAMS")
            .arg(&protocol.streams)
            .arg(&[">", ">", ">"][..]);
        let (reply,): (Option<StreamReadReply>,) = pipe.query_async(conn).await?;
        self.acks.clear();
        let mut entries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let band = protocol.band_of(&stream.key);
            for item in stream.ids {
                entries.push(Entry::from_fields(band, item.id, &item.map));
            }
        }
        // Higher bands first whenever a read returned several (stable: FIFO
        // within a band).
        entries.sort_by_key(|entry| entry.band);
        Ok(entries)
    }

    /// `MULTI`, `XACK` and `XDEL` per band, `EXEC` — all ignored in the reply.
    fn queue_acks(&self, pipe: &mut redis::Pipeline) {
        if self.acks.is_empty() {
            return;
        }
        pipe.cmd("MULTI").ignore();
        for (band, stream) in self.shared.protocol.streams.iter().enumerate() {
            let ids: Vec<&str> = self
                .acks
                .iter()
                .filter(|entry| entry.band == band)
                .map(|entry| entry.entry_id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            pipe.cmd("XACK")
                .arg(stream)
                .arg(keys::CONSUMER_GROUP)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(stream).arg(&ids).ignore();
        }
        pipe.cmd("EXEC").ignore();
    }

    /// Starts and completes one batch: two pipelined round trips.
    async fn process(
        &mut self,
        conn: &mut MultiplexedConnection,
        entries: Vec<Entry>,
    ) -> RedisResult<()> {
        let mut runnable = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.job_id {
                Some(job_id) => runnable.push((entry, job_id)),
                None => self.acks.push(entry),
            }
        }
        if runnable.is_empty() {
            return Ok(());
        }
        let starts: Vec<Call> = runnable
            .iter()
            .map(|(_, job_id)| Call::new(*job_id, "start", vec![self.consumer.clone()]))
            .collect();
        let replies = run_calls(conn, &self.shared.protocol, &starts).await?;
        let mut completes = Vec::with_capacity(runnable.len());
        let mut completing = Vec::with_capacity(runnable.len());
        for ((entry, job_id), reply) in runnable.into_iter().zip(replies) {
            match reply.map(|value| protocol::parse_started(&value)) {
                Ok(Ok(Started::Run { attempt, params })) => match Pace::of(&params) {
                    Some(pace) => paced::spawn(
                        Arc::clone(&self.shared),
                        entry,
                        job_id,
                        attempt,
                        params,
                        pace,
                    ),
                    None => {
                        completes.push(Call::new(
                            job_id,
                            "complete",
                            vec![attempt.to_string(), params],
                        ));
                        completing.push(entry);
                    }
                },
                Ok(Ok(Started::Nothing)) => self.acks.push(entry),
                // Left pending: reclaimed once its lease is over.
                Ok(Err(error)) => eprintln!("jobgate-echo-worker: start {job_id}: {error}"),
                Err(error) => eprintln!("jobgate-echo-worker: start {job_id}: {error}"),
            }
        }
        if completes.is_empty() {
            return Ok(());
        }
        let replies = run_calls(conn, &self.shared.protocol, &completes).await?;
        for (entry, reply) in completing.into_iter().zip(replies) {
            match reply.map(|value| protocol::parse_finished(&value)) {
                Ok(Ok(Finished::Done)) => self.acks.push(entry),
                Ok(Ok(Finished::Stale)) => {}
                Ok(Err(error)) => eprintln!("jobgate-echo-worker: complete: {error}"),
                Err(error) => eprintln!("jobgate-echo-worker: complete: {error}"),
            }
        }
        Ok(())
    }

    /// `XAUTOCLAIM`s entries idle longer than the lease (their worker died)
    /// and runs them; entries gone from the stream are acknowledged.
    async fn reclaim(&mut self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let streams = self.shared.protocol.streams.clone();
        let mut claimed = Vec::new();
        for (band, stream) in streams.iter().enumerate() {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(keys::CONSUMER_GROUP)
                .arg(&self.consumer)
                .arg(self.shared.config.lease_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(self.shared.config.batch)
                .query_async(conn)
                .await?;
            for item in reply.claimed {
                claimed.push(Entry::from_fields(band, item.id, &item.map));
            }
            for entry_id in reply.deleted_ids {
                self.acks.push(Entry {
                    band,
                    entry_id,
                    job_id: None,
                });
            }
        }
        if !claimed.is_empty() {
            eprintln!("jobgate-echo-worker: reclaimed {} entries", claimed.len());
        }
        self.process(conn, claimed).await
    }
}

/// One script call: the job, the operation and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    job_id: JobId,
    op: &'static str,
    args: Vec<String>,
}

impl Call {
    pub(crate) fn new(job_id: JobId, op: &'static str, args: Vec<String>) -> Self {
        Self { job_id, op, args }
    }
}

/// Runs `calls` as one `batch` script call (one atomic call, as the
/// protocol allows on a single server) and answers one result per call.
/// A batch the server answered `NOSCRIPT` (its script cache was flushed or
/// it restarted) did not run: the script is loaded again and it is sent once
/// more.
pub(crate) async fn run_calls(
    conn: &mut MultiplexedConnection,
    protocol: &Protocol,
    calls: &[Call],
) -> RedisResult<Vec<RedisResult<Value>>> {
    let reply = match send_batch(conn, protocol, calls).await {
        Err(error) if error.code() == Some("NOSCRIPT") => {
            load_script(conn).await?;
            send_batch(conn, protocol, calls).await?
        }
        other => other?,
    };
    match reply {
        Value::Array(mut items) if items.len() == calls.len() + 1 => {
            items.remove(0);
            Ok(items.into_iter().map(Ok).collect())
        }
        other => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected batch reply",
            format!("{other:?}"),
        ))),
    }
}

async fn send_batch(
    conn: &mut MultiplexedConnection,
    protocol: &Protocol,
    calls: &[Call],
) -> RedisResult<Value> {
    let mut cmd = protocol.batch(calls.iter().map(|call| &call.job_id));
    for call in calls {
        cmd.arg(call.op).arg(call.args.len()).arg(&call.args);
    }
    cmd.query_async(conn).await
}
