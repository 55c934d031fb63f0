//! `jobgate queues`: every queue as an operator sees it (depth per band,
//! oldest age, running, dead letters, paused, its workers live or gone), and `jobgate queues pause
//! <queue>` / `resume <queue>`. Talks to Redis through the store directly,
//! so it works without a running gateway.

use anyhow::Context;
use clap::{Args, Subcommand};
use jobgate_store::{JobStore, QueueOverview, StoreSettings};

/// `jobgate queues [--json] [pause|resume <queue>]`.
#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    #[command(subcommand)]
    action: Option<QueueAction>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[arg(
        long,
        env = "JOBGATE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// Workers stop taking new jobs from the queue; running ones finish.
    Pause { queue: String },
    /// Workers take jobs from the queue again.
    Resume { queue: String },
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn run(args: QueuesArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let (redis, _) = jobgate_store::open(&args.redis_url)?;
    let store = JobStore::new(redis, StoreSettings::default());
    let (queue, paused) = match args.action {
        None => {
            let queues = store.queue_overviews().await?;
            if args.json {
                writeln!(out, "{}", serde_json::json!({ "queues": queues }))?;
            } else {
                write_table(&queues, out)?;
            }
            return Ok(());
        }
        Some(QueueAction::Pause { queue }) => (queue, true),
        Some(QueueAction::Resume { queue }) => (queue, false),
    };
    store
        .set_paused(&queue, paused)
        .await?
        .with_context(|| format!("no worker serves the queue {queue:?}"))?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"queue": queue, "paused": paused})
        )?;
    } else {
        let word = if paused { "paused" } else { "resumed" };
        writeln!(out, "{queue}: {word}")?;
    }
    Ok(())
}

fn write_table(queues: &[QueueOverview], out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>6}",
        "QUEUE", "PAUSED", "HIGH", "NORMAL", "LOW", "OLDEST_MS", "RUNNING", "DEAD"
    )?;
    for queue in queues {
        let oldest = queue
            .oldest_age_ms
            .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        writeln!(
            out,
            "{:<20} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>6}",
            queue.queue,
            if queue.paused { "yes" } else { "no" },
            queue.bands.high,
            queue.bands.normal,
            queue.bands.low,
            oldest,
            queue.running,
            queue.dead_letters,
        )?;
    }
    let workers: Vec<_> = queues.iter().flat_map(|queue| &queue.workers).collect();
    if workers.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<20} {:<24} {:<6} {:<16} {:>8} {:>5} {:>7}  KINDS",
        "QUEUE", "CONSUMER", "STATE", "HOST", "PID", "SLOTS", "IN_HAND"
    )?;
    for worker in workers {
        writeln!(
            out,
            "{:<20} {:<24} {:<6} {:<16} {:>8} {:>5} {:>7}  {}",
            worker.queue,
            worker.consumer,
            worker.state,
            worker.host,
            worker.pid,
            worker.concurrency,
            worker.in_hand.len(),
            worker.kinds.join(","),
        )?;
    }
    Ok(())
}
