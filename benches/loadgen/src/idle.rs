//! `--mode idle`: opens N idle WebSocket sessions and reports how much the
//! gateway's RSS grew per session. Every session is checked to be alive
//! (`ping` → `pong`) before the figure counts. The latency columns of this
//! scenario are WebSocket connect (handshake) times.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Cli;
use crate::frames::Frame;
use crate::gateway::Gateway;
use crate::procstat::{Watch, rss_kb};
use crate::report::Report;
use crate::stats::Recorder;
use crate::ws::{self, Socket};

/// Time for the gateway's allocator to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for a `pong`.
const PONG_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    let pid = cli
        .gateway_pid
        .ok_or_else(|| anyhow::anyhow!("--mode idle needs --gateway-pid to read its RSS"))?;
    let count = cli.sessions.unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kb = rss_kb(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/status"))?;
    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    let opening = tokio::time::Instant::now();
    let (sockets, mut recorder) = ws::connect_many(gateway, count, cli.connect_concurrency).await;
    let open_s = opening.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after_kb = rss_kb(pid).unwrap_or(before_kb);
    let opened = sockets.len();

    let (sockets, dead) = check_alive(sockets, cli.connect_concurrency).await;
    for _ in 0..dead {
        recorder.error("a session did not answer ping");
    }
    tokio::time::sleep(cli.duration()).await;
    let usage = watch.finish();
    close_all(sockets, cli.connect_concurrency).await;
    tokio::time::sleep(SETTLE).await;
    let after_close_kb = rss_kb(pid);

    let mut report = Report::new(cli, &Recorder::new(), usage);
    // The latency columns are the connect times; no jobs ran.
    let connects = Report::new(cli, &recorder, Default::default());
    report.samples = connects.samples;
    report.p50_ms = connects.p50_ms;
    report.p90_ms = connects.p90_ms;
    report.p99_ms = connects.p99_ms;
    report.p999_ms = connects.p999_ms;
    report.max_ms = connects.max_ms;
    report.mean_ms = connects.mean_ms;
    report.errors = recorder.errors;
    report.error_samples = recorder.error_samples;
    report.jobs_per_s = None;
    report.sessions = Some(opened);
    report.gateway_rss_start_kb = Some(before_kb);
    report.rss_per_session_kb = (opened > 0).then(|| {
        ((after_kb.saturating_sub(before_kb)) as f64 / opened as f64 * 10.0).round() / 10.0
    });
    report
        .extra
        .insert("rss_before_kb".into(), before_kb.into());
    report
        .extra
        .insert("rss_with_sessions_kb".into(), after_kb.into());
    report
        .extra
        .insert("rss_after_close_kb".into(), after_close_kb.into());
    report
        .extra
        .insert("open_s".into(), ((open_s * 1000.0).round() / 1000.0).into());
    report.extra.insert(
        "latency_is".into(),
        "WebSocket connect (handshake) time".into(),
    );
    Ok(report)
}

/// Sends `{"type":"ping"}` on every session and keeps those that answer.
async fn check_alive(sockets: Vec<Socket>, at_once: usize) -> (Vec<Socket>, usize) {
    let checks = futures_util::stream::iter(sockets)
        .map(|mut socket| async move {
            let alive = tokio::time::timeout(PONG_TIMEOUT, async {
                socket
                    .send(Message::text(r#"{"type":"ping"}"#))
                    .await
                    .ok()?;
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message
                        && Frame::parse(&text).is_some_and(|frame| frame.kind == "pong")
                    {
                        return Some(());
                    }
                }
                None
            })
            .await;
            (socket, matches!(alive, Ok(Some(()))))
        })
        .buffer_unordered(at_once);
    futures_util::pin_mut!(checks);
    let mut alive = Vec::new();
    let mut dead = 0;
    while let Some((socket, ok)) = checks.next().await {
        if ok {
            alive.push(socket);
        } else {
            dead += 1;
        }
    }
    (alive, dead)
}

async fn close_all(sockets: Vec<Socket>, at_once: usize) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(at_once, |mut socket| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
        })
        .await;
}
