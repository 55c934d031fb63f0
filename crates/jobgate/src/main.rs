//! `jobgate`: config → telemetry → state → serve, with graceful shutdown.
//! `jobgate token` mints a development token; `jobgate dlq` (in `dlq.rs`)
//! acts on dead letters; `jobgate queues` (in `queues.rs`) shows, pauses
//! and resumes queues.

mod dlq;
mod queues;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jobgate_gateway::Config;
use tokio_util::sync::CancellationToken;

// mimalloc: the fan-out and WebSocket paths allocate and free small buffers
// at a high rate from several threads; glibc's allocator spent a tenth of
// the gateway's CPU there under load (see benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A push-based realtime gateway for long-running computational jobs.
#[derive(Debug, Parser)]
#[command(
    name = "jobgate",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(Box<Config>),
    /// Print one job's narrative across services from the JSON-lines logs
    /// Fluentd wrote (see fluent/README.md).
    Trace(jobgate_trace::TraceArgs),
    /// Dead letters: list, show, re-run and purge jobs that ran out of
    /// attempts (reads JOBGATE_REDIS_URL).
    Dlq(dlq::DlqArgs),
    /// Show every queue (depth per band, oldest age, running, dead
    /// letters, paused); pause or resume one.
    Queues(queues::QueuesArgs),
    /// Print an HS256 token for JOBGATE_JWT_SECRET (development and tests).
    Token {
        /// The owner the token names (`sub`).
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        #[arg(long, env = "JOBGATE_JWT_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, env = "JOBGATE_JWT_AUDIENCE")]
        audience: Option<String>,
        #[arg(long, env = "JOBGATE_JWT_ISSUER")]
        issuer: Option<String>,
        /// Grant the admin API (the `jobgate:admin` scope).
        #[arg(long)]
        admin: bool,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobgate: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.config),
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::Trace(args)) => {
            jobgate_trace::run(&args, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Some(Command::Dlq(args)) => dlq::run(args),
        Some(Command::Queues(args)) => queues::run(args, &mut std::io::stdout().lock()),
        Some(Command::Token {
            sub,
            ttl_s,
            secret,
            audience,
            issuer,
            admin,
        }) => {
            let token = jobgate_gateway::auth::mint_hs256_with_scope(
                &secret,
                &sub,
                ttl_s,
                audience.as_deref(),
                issuer.as_deref(),
                admin.then_some(jobgate_gateway::auth::ADMIN_SCOPE),
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        runtime.worker_threads(config.threads);
    }
    runtime.enable_all().build()?.block_on(serve_with(config))
}

async fn serve_with(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let telemetry = jobgate_gateway::telemetry::init(&config)?;
    let served = serve_until_signal(config, &telemetry).await;
    // Also after a failed start: the log lines written so far go out.
    telemetry.shutdown(std::time::Duration::from_secs(2)).await;
    served
}

async fn serve_until_signal(
    config: Config,
    telemetry: &jobgate_gateway::telemetry::Telemetry,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let grace = config.shutdown_grace();
    let listen = config.listen;
    let mut state = jobgate_gateway::build_state(config, shutdown.clone())?;
    state
        .metrics
        .set_log_forwarding(telemetry.forwarding_stats());
    state.client_logs = telemetry.client_logs();
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
