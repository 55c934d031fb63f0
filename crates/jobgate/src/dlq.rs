//! `jobgate dlq list|show|retry|purge`: the dead letters from the command
//! line, for operators. It talks to Redis directly through the store (the
//! same operations as `/v1/admin/dead-letters`), reading
//! `JOBGATE_REDIS_URL` like the server; tables for people, `--json` for
//! scripts.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use jobgate_proto::JobId;
use jobgate_store::{DeadLetter, JobStore, RetryOutcome, StoreSettings};

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[arg(
        long,
        env = "JOBGATE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this queue (default: every registered queue).
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where to continue: the `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one job's dead letter and its job.
    Show {
        #[arg(value_parser = parse_job_id)]
        job_id: JobId,
    },
    /// Re-run one job (a new attempt, same job id), or --all of them.
    Retry {
        #[command(flatten)]
        which: Which,
        /// With --all: at most this many.
        #[arg(long, default_value_t = 100, requires = "all")]
        limit: usize,
        /// Who asked, recorded in the job's `retrying` event.
        #[arg(long, default_value = "cli")]
        by: String,
    },
    /// Remove one job's dead letter, or --all of them (the jobs stay failed).
    Purge {
        #[command(flatten)]
        which: Which,
    },
}

/// One job's dead letter, or `--all` of them (of one `--queue`).
#[derive(Debug, Args)]
struct Which {
    #[arg(required_unless_present = "all", conflicts_with = "all", value_parser = parse_job_id)]
    job_id: Option<JobId>,
    #[arg(long)]
    all: bool,
    /// With --all: only this queue.
    #[arg(long, requires = "all")]
    queue: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<()> {
    jobgate_store::check_url(&args.redis_url)?;
    let (redis, _) = jobgate_store::open(&args.redis_url)?;
    let store = JobStore::new(redis, StoreSettings::default());
    let json = args.json;
    match args.command {
        DlqCommand::List {
            queue,
            limit,
            cursor,
        } => {
            let cursor = cursor
                .as_deref()
                .map(jobgate_store::parse_cursor)
                .transpose()?;
            let page = store.dead_letters(queue.as_deref(), limit, cursor).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table(&page.items);
                if let Some(cursor) = page.next_cursor {
                    println!("more: --cursor {cursor}");
                }
            }
        }
        DlqCommand::Show { job_id } => {
            let letter = store
                .dead_letter(&job_id)
                .await?
                .with_context(|| format!("no dead letter for job {job_id}"))?;
            let job = store.record(&job_id).await?.map(|r| r.snapshot);
            if json {
                let shown = serde_json::json!({ "dead_letter": letter, "job": job });
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_table(std::slice::from_ref(&letter));
                if let Some(job) = job {
                    println!("\njob: {}", serde_json::to_string_pretty(&job)?);
                }
            }
        }
        DlqCommand::Retry {
            which: Which { job_id, queue, .. },
            limit,
            by,
        } => {
            let outcomes = match job_id {
                Some(job_id) => vec![(
                    job_id.to_string(),
                    store.retry_dead_letter(&job_id, &by).await?,
                )],
                None => {
                    store
                        .retry_dead_letters(queue.as_deref(), limit, &by)
                        .await?
                }
            };
            let single = job_id.is_some();
            report_retries(&outcomes, json)?;
            if single && outcomes.iter().any(|(_, o)| *o != RetryOutcome::Requeued) {
                bail!("the job was not re-run");
            }
        }
        DlqCommand::Purge {
            which: Which { job_id, queue, .. },
        } => {
            let purged = match job_id {
                Some(job_id) => {
                    if !store.remove_dead_letter(&job_id).await? {
                        bail!("no dead letter for job {job_id}");
                    }
                    1
                }
                None => store.purge_dead_letters(queue.as_deref()).await?,
            };
            if json {
                println!("{}", serde_json::json!({ "purged": purged }));
            } else {
                println!("purged {purged} dead letter(s)");
            }
        }
    }
    Ok(())
}

fn parse_job_id(text: &str) -> Result<JobId, String> {
    text.parse()
        .map_err(|_| "a job id is a lower-case hyphenated UUID".to_owned())
}

fn print_table(items: &[DeadLetter]) {
    println!(
        "{:<36}  {:<16}  {:<12}  {:<12}  {:>8}  {:<13}  ERROR",
        "JOB ID", "KIND", "QUEUE", "OWNER", "ATTEMPTS", "DEAD AT (ms)"
    );
    for d in items {
        let error = d
            .error
            .as_ref()
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .unwrap_or(&d.reason);
        println!(
            "{:<36}  {:<16}  {:<12}  {:<12}  {:>8}  {:<13}  {}",
            d.job_id,
            d.kind,
            d.queue,
            d.owner.as_deref().unwrap_or("-"),
            d.attempts.map_or("-".to_owned(), |a| a.to_string()),
            d.dead_lettered_at,
            error
        );
    }
}

fn report_retries(outcomes: &[(String, RetryOutcome)], json: bool) -> anyhow::Result<()> {
    let word = |outcome: &RetryOutcome| match outcome {
        RetryOutcome::Requeued => "requeued",
        RetryOutcome::NotFound => "not_found",
        RetryOutcome::RecordExpired => "record_expired",
        RetryOutcome::NotRetryable(_) => "not_retryable",
    };
    if json {
        let results: Vec<_> = outcomes
            .iter()
            .map(|(job_id, o)| serde_json::json!({ "job_id": job_id, "outcome": word(o) }))
            .collect();
        println!("{}", serde_json::json!({ "results": results }));
    } else {
        for (job_id, outcome) in outcomes {
            println!("{job_id}  {}", word(outcome));
        }
    }
    Ok(())
}
