//! Drives jobs through the state machine script the way a worker does, for
//! tests that need exact control over when each event happens. It runs the
//! same `proto-schemas/redis/jobgate.lua` as the Python worker, on a real
//! Redis.

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};

use crate::repo_root;

/// A hand-driven worker.
pub struct JobDriver {
    conn: MultiplexedConnection,
    script: Script,
}

impl std::fmt::Debug for JobDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDriver").finish_non_exhaustive()
    }
}

impl JobDriver {
    pub async fn connect(redis_url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        let source = std::fs::read_to_string(repo_root().join("proto-schemas/redis/jobgate.lua"))?;
        Ok(Self {
            conn,
            script: Script::new(&source),
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

    /// Registers `kind` on `queue`, as a starting worker does.
    pub async fn register_kind(&mut self, kind: &str, queue: &str) -> anyhow::Result<()> {
        let registration =
            serde_json::json!({"queue": queue, "worker": "test-driver", "seen_at": 0});
        let _: i64 = redis::cmd("HSET")
            .arg("jobgate:kinds")
            .arg(kind)
            .arg(registration.to_string())
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Runs one script operation on `job_id`; returns the status word.
    pub async fn op(&mut self, job_id: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut invocation = self.script.key(format!("jobgate:job:{{{job_id}}}"));
        invocation.key(format!("jobgate:events:{{{job_id}}}"));
        for arg in args {
            invocation.arg(*arg);
        }
        let reply: Value = invocation.invoke_async(&mut self.conn).await?;
        match reply {
            Value::Array(items) => match items.first() {
                Some(Value::BulkString(word)) => Ok(String::from_utf8_lossy(word).into_owned()),
                other => anyhow::bail!("unexpected reply {other:?}"),
            },
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
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

    /// A raw command on the driver's connection.
    pub fn connection(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }
}
