//! `jobgate`: config → telemetry → state → serve, with graceful shutdown.

use anyhow::Context;
use clap::Parser;
use jobgate_gateway::Config;
use tokio_util::sync::CancellationToken;

/// A push-based realtime gateway for long-running computational jobs.
#[derive(Debug, Parser)]
#[command(name = "jobgate", version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().config;
    config.validate()?;
    jobgate_gateway::telemetry::init(&config.log);

    let shutdown = CancellationToken::new();
    let grace = config.shutdown_grace();
    let listen = config.listen;
    let state = jobgate_gateway::build_state(config, shutdown.clone())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "jobgate listening");

    let server = tokio::spawn(jobgate_gateway::serve(listener, state));
    jobgate_gateway::shutdown_signal().await;
    tracing::info!(grace_s = grace.as_secs(), "shutting down");
    shutdown.cancel();
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!("grace period over; dropping the remaining connections"),
    }
    Ok(())
}
