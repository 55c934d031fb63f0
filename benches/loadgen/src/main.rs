//! `jobgate-loadgen`: parse options → run one scenario → print it.

mod cli;
mod driver;
mod fanout;
mod frames;
mod gateway;
mod idle;
mod poll;
mod procstat;
mod report;
mod sse;
mod stats;
mod ws;

use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Mode};
use crate::gateway::Gateway;

/// Beyond this, a scenario is abandoned whatever it is waiting for.
const HARD_LIMIT_SLACK: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.validate()?;
    if cli.mode == Mode::Report {
        return report::run(&cli);
    }
    let gateway = Gateway::parse(&cli.url, cli.token.clone())?;
    let limit = cli.duration() + cli.job_timeout() + HARD_LIMIT_SLACK;
    // The scenario runs as a task of the runtime, not on this thread: with
    // one runtime thread (as `benches/run.sh` runs it) the pacing and the
    // sessions then share that thread, and handing a job to a session or
    // returning its slot wakes no other thread.
    let scenario = tokio::spawn({
        let cli = cli.clone();
        async move {
            match cli.mode {
                Mode::Ws => ws::run(&cli, &gateway).await,
                Mode::Sse => sse::run(&cli, &gateway).await,
                Mode::Poll => poll::run(&cli, &gateway).await,
                Mode::Idle => idle::run(&cli, &gateway).await,
                Mode::Fanout => fanout::run(&cli, &gateway).await,
                Mode::Report => unreachable!("handled above"),
            }
        }
    });
    let mut report = tokio::time::timeout(limit, scenario)
        .await
        .map_err(|_| anyhow::anyhow!("the scenario did not finish within {limit:?}"))???;
    report.check_targets(&cli.targets)?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report::table(std::slice::from_ref(&report)));
        for sample in &report.error_samples {
            eprintln!("error: {sample}");
        }
    }
    Ok(())
}
