//! Drives jobs through the state machine script the way a worker does, for
//! tests that need exact control over when each event happens. It runs the
//! same `proto-schemas/redis/jobgate.lua` (and `dead_letters.lua`'s `bury`)
//! as the Python worker, on a real Redis: one server, or a Redis Cluster
//! when given several comma-separated seed URLs (each call goes to the
//! node of its keys' slot).

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::repo_root;

/// An event's place in its job's history: `(epoch, seq)`.
pub fn event_position(event: &serde_json::Value) -> (u64, u64) {
    (
        event["epoch"].as_u64().expect("an epoch"),
        event["seq"].as_u64().expect("a seq"),
    )
}

/// The consumer group workers read queues through.
const CONSUMER_GROUP: &str = "jobgate-workers";

/// The driver's connection: to one server, or to a cluster.
#[derive(Clone)]
pub enum DriverConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for DriverConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "DriverConnection::Single",
            Self::Cluster(_) => "DriverConnection::Cluster",
        })
    }
}

impl ConnectionLike for DriverConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// A hand-driven worker.
pub struct JobDriver {
    conn: DriverConnection,
    script: Script,
    dead_letters: Script,
}

impl std::fmt::Debug for JobDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDriver").finish_non_exhaustive()
    }
}

impl JobDriver {
    /// Connects to `redis_url`: one server, or a cluster when it lists
    /// several comma-separated seeds.
    pub async fn connect(redis_url: &str) -> anyhow::Result<Self> {
        let conn = if redis_url.contains(',') {
            let seeds: Vec<&str> = redis_url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(std::time::Duration::from_secs(1))
                .response_timeout(std::time::Duration::from_secs(5))
                .build()?;
            DriverConnection::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(redis_url)?;
            DriverConnection::Single(client.get_multiplexed_async_connection().await?)
        };
        let scripts = repo_root().join("proto-schemas/redis");
        let source = std::fs::read_to_string(scripts.join("jobgate.lua"))?;
        let dead_letters = std::fs::read_to_string(scripts.join("dead_letters.lua"))?;
        Ok(Self {
            conn,
            script: Script::new(&source),
            dead_letters: Script::new(&dead_letters),
        })
    }

    /// Connects and registers each of `kinds` on the `default` queue, as a
    /// worker starting up would.
    pub async fn with_kinds(redis_url: &str, kinds: &[&str]) -> Self {
        let mut driver = Self::connect(redis_url).await.expect("driver connects");
        for kind in kinds {
            driver
                .register_kind(kind, "default")
                .await
                .expect("kind registers");
        }
        driver
    }

    /// Registers `kind` on `queue`, as a starting worker does (in the kinds
    /// registry, `jobgate:kinds:v2`).
    pub async fn register_kind(&mut self, kind: &str, queue: &str) -> anyhow::Result<()> {
        let registration =
            serde_json::json!({"queue": queue, "worker": "test-driver", "seen_at": 0});
        let _: i64 = redis::cmd("HSET")
            .arg("jobgate:kinds:v2")
            .arg(kind)
            .arg(registration.to_string())
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Registers `kind` on `queue` with `params_schema` (stored as it is
    /// given, valid or not), as a worker declaring its kind with a schema.
    pub async fn register_kind_with_schema(
        &mut self,
        kind: &str,
        queue: &str,
        params_schema: serde_json::Value,
    ) -> anyhow::Result<()> {
        let registration = serde_json::json!({
            "queue": queue, "worker": "test-driver", "seen_at": 0, "params_schema": params_schema,
        });
        let _: i64 = redis::cmd("HSET")
            .arg("jobgate:kinds:v2")
            .arg(kind)
            .arg(registration.to_string())
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Runs one script operation on `job_id`; returns the status word.
    pub async fn op(&mut self, job_id: &str, args: &[&str]) -> anyhow::Result<String> {
        let reply = self.op_reply(job_id, args).await?;
        Ok(reply.into_iter().next().unwrap_or_default())
    }

    /// Runs one script operation on `job_id`; returns the whole reply, its
    /// elements as text.
    pub async fn op_reply(&mut self, job_id: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut invocation = self.script.key(format!("jobgate:job:{{{job_id}}}"));
        invocation.key(format!("jobgate:events:{{{job_id}}}"));
        for arg in args {
            invocation.arg(*arg);
        }
        let reply: Value = invocation.invoke_async(&mut self.conn).await?;
        let Value::Array(items) = reply else {
            anyhow::bail!("unexpected reply {reply:?}");
        };
        let words = items
            .into_iter()
            .map(|item| match item {
                Value::BulkString(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                Value::SimpleString(text) => Ok(text),
                Value::Int(number) => Ok(number.to_string()),
                other => anyhow::bail!("unexpected reply element {other:?}"),
            })
            .collect::<anyhow::Result<Vec<String>>>()?;
        if words.is_empty() {
            anyhow::bail!("an empty reply");
        }
        Ok(words)
    }

    pub async fn start(&mut self, job_id: &str) -> anyhow::Result<String> {
        self.op(job_id, &["start", "test-driver"]).await
    }

    pub async fn progress(
        &mut self,
        job_id: &str,
        attempt: u32,
        done: u32,
        total: u32,
    ) -> anyhow::Result<String> {
        let data = format!(r#"{{"done":{done},"total":{total}}}"#);
        self.op(job_id, &["progress", &attempt.to_string(), &data])
            .await
    }

    pub async fn complete(
        &mut self,
        job_id: &str,
        attempt: u32,
        result: &str,
    ) -> anyhow::Result<String> {
        self.op(job_id, &["complete", &attempt.to_string(), result])
            .await
    }

    /// `start`, then a first `progress` (1 of 2) of attempt 1: the job's
    /// seq 2 and 3 after `queued`. Both must answer `ok`.
    pub async fn start_and_progress(&mut self, job_id: &str) {
        assert_eq!(self.start(job_id).await.expect("start"), "ok");
        assert_eq!(
            self.progress(job_id, 1, 1, 2).await.expect("progress"),
            "ok"
        );
    }

    /// The second `progress` (2 of 2), then `complete` with `result`, of
    /// attempt 1: seq 4 and 5 after [`JobDriver::start_and_progress`]. Both
    /// must answer `ok`.
    pub async fn progress_and_complete(&mut self, job_id: &str, result: &str) {
        assert_eq!(
            self.progress(job_id, 1, 2, 2).await.expect("progress"),
            "ok"
        );
        assert_eq!(
            self.complete(job_id, 1, result).await.expect("complete"),
            "ok"
        );
    }

    /// Every event of `job_id`'s history (`jobgate:events:{id}`), in order,
    /// as its [`event_position`].
    pub async fn history(&mut self, job_id: &str) -> Vec<(u64, u64)> {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(format!("jobgate:events:{{{job_id}}}"))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn)
            .await
            .expect("xrange");
        entries
            .iter()
            .map(|(_, fields)| {
                event_position(&serde_json::from_str(&fields["e"]).expect("event json"))
            })
            .collect()
    }

    /// Takes the next entry of `queue`'s `band` stream as consumer
    /// `test-driver` (creating the consumer group if needed), as a worker's
    /// read does: `(entry id, job id)`, or `None` when the band is empty.
    pub async fn take_entry(
        &mut self,
        queue: &str,
        band: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let stream = format!("jobgate:queue:{{{queue}}}:{band}");
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        if let Err(error) = created
            && error.code() != Some("BUSYGROUP")
        {
            return Err(error.into());
        }
        type Entries = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
        let read: Option<Entries> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(CONSUMER_GROUP)
            .arg("test-driver")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        let entry = read
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .next();
        Ok(entry.and_then(|(id, fields)| {
            let job_id = fields.into_iter().find(|(name, _)| name == "job_id")?.1;
            Some((id, job_id))
        }))
    }

    /// Buries `job_id` (whose entry `entry_id` this driver took from
    /// `queue`'s `band`) in the queue's dead letters, as a worker does after
    /// the job ran out of attempts (`dead_letters.lua` `bury`).
    pub async fn bury(
        &mut self,
        queue: &str,
        band: &str,
        job_id: &str,
        entry_id: &str,
        kind: &str,
    ) -> anyhow::Result<String> {
        let reply: Vec<String> = self
            .dead_letters
            .key(format!("jobgate:dead:{{{queue}}}"))
            .key(format!("jobgate:dead:{{{queue}}}:jobs"))
            .key(format!("jobgate:queue:{{{queue}}}:{band}"))
            .arg("bury")
            .arg(CONSUMER_GROUP)
            .arg(job_id)
            .arg(entry_id)
            .arg("job_id")
            .arg(job_id)
            .arg("kind")
            .arg(kind)
            .arg("reason")
            .arg("max_attempts_exceeded")
            .arg("error")
            .arg(r#"{"code":"boom","message":"failed on purpose"}"#)
            .arg("consumer")
            .arg("test-driver")
            .invoke_async(&mut self.conn)
            .await?;
        Ok(reply.into_iter().next().unwrap_or_default())
    }

    /// A raw command on the driver's connection.
    pub fn connection(&mut self) -> &mut DriverConnection {
        &mut self.conn
    }
}
