//! The echo worker's settings: flags or the same `JOBGATE_*` variables the
//! Python worker reads.

use std::time::Duration;

use clap::Parser;

/// A minimal jobgate worker for benchmarks: answers every job of its kinds
/// with its params as the result, speaking the protocol of
/// `proto-schemas/PROTOCOL.md` through `proto-schemas/redis/jobgate.lua`.
#[derive(Debug, Clone, Parser)]
#[command(name = "jobgate-echo-worker", version, about)]
pub(crate) struct Config {
    /// Redis URL.
    #[arg(
        long,
        env = "JOBGATE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub(crate) redis_url: String,

    /// The queue to consume (its `high`, `normal` and `low` band streams).
    #[arg(long, env = "JOBGATE_QUEUE", default_value = "default")]
    pub(crate) queue: String,

    /// Job kinds registered in `jobgate:kinds` for this queue (repeatable).
    #[arg(long = "kind", default_values_t = vec!["echo".to_owned()])]
    pub(crate) kinds: Vec<String>,

    /// Consumer name in the group; each read loop appends `-<n>`.
    /// Default: `echo-<pid>`.
    #[arg(long, env = "JOBGATE_CONSUMER")]
    pub(crate) consumer: Option<String>,

    /// Read loops, each with its own Redis connection and consumer name.
    #[arg(long, env = "JOBGATE_CONCURRENCY", default_value_t = 1)]
    pub(crate) concurrency: usize,

    /// Most entries one `XREADGROUP` fetches (its `COUNT`); a batch is
    /// started and completed with one pipeline each.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,

    /// Longest a blocking `XREADGROUP` waits, in ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) block_ms: u64,

    /// Entries pending longer than this (ms) are reclaimed with `XAUTOCLAIM`.
    #[arg(long, env = "JOBGATE_LEASE_MS", default_value_t = 30_000)]
    pub(crate) lease_ms: u64,
}

impl Config {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch),
            "--batch must be 1 to 10000"
        );
        anyhow::ensure!(self.block_ms >= 1, "--block-ms must be at least 1");
        anyhow::ensure!(self.lease_ms >= 100, "--lease-ms must be at least 100");
        anyhow::ensure!(!self.kinds.is_empty(), "at least one --kind is needed");
        anyhow::ensure!(
            self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://"),
            "the Redis URL must start with redis:// or rediss://"
        );
        Ok(())
    }

    pub(crate) fn consumer(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("echo-{}", std::process::id()))
    }

    pub(crate) fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }
}
