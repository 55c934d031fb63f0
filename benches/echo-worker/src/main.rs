//! `jobgate-echo-worker`: config → connect → read loops until SIGINT/SIGTERM.

mod config;
mod paced;
mod protocol;
mod worker;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    config.validate()?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            stop_signal().await;
            eprintln!("jobgate-echo-worker: stopping");
            shutdown.cancel();
        }
    });
    worker::run(config, shutdown).await
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
