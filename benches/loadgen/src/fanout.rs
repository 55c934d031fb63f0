//! `--mode fanout`: one job watched by many SSE streams
//! (`/v1/jobs/{id}/events`) and WebSocket sessions (`subscribe`). Every
//! watcher must receive every event of the job; the latency is each
//! delivery's receipt time minus the event's `ts`.
//!
//! `ts` is the Redis server's clock in whole ms at the moment the script
//! published the event; Redis runs on this machine, so both clocks are the
//! same kernel clock. Because `ts` is truncated to the ms, a delivery's
//! latency is over-stated by up to 1 ms. The spread (receipt minus the
//! earliest receipt of the same event by any watcher) has no such bias and
//! is reported next to it.
//!
//! The job comes from the echo worker's paced mode (`params.bench`): it
//! waits `--fanout-delay-ms` so that every watcher has subscribed, then
//! reports `--fanout-steps` progress events and completes. Only events
//! published after the last watcher was live are measured; the earlier
//! ones reach the watchers from the history and are only checked for
//! completeness.
//!
//! A watcher closes its connection only once every watcher has the job's
//! last event (or gave up): the load generator is one thread on the same
//! cores, and closing the first watchers' connections (a WebSocket close
//! handshake each) while the others still read would put that work in
//! front of the reads it times. A dashboard's session outlives the jobs it
//! watches in the same way.
//!
//! Next to the overall figures the report gives the p99 of each transport
//! and of each event (`p99_ms_by_seq`), which tell what bounds the p99.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Barrier, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Cli;
use crate::frames::{self, Frame, unix_micros};
use crate::gateway::Gateway;
use crate::procstat::Watch;
use crate::report::Report;
use crate::sse::SseStream;
use crate::stats::Recorder;
use crate::ws::{self, Socket};

/// One event as one watcher received it.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    seq: u64,
    ts_ms: u64,
    received_us: u64,
}

/// What one watcher saw.
#[derive(Debug, Default)]
struct Watcher {
    deliveries: Vec<Delivery>,
    terminal_seq: Option<u64>,
    error: Option<String>,
}

impl Watcher {
    fn take(&mut self, frame: &Frame<'_>) -> bool {
        let received_us = unix_micros();
        let (Some(seq), Some(ts_ms)) = (frame.seq, frame.ts) else {
            return false;
        };
        self.deliveries.push(Delivery {
            seq,
            ts_ms,
            received_us,
        });
        if frame.terminal().is_some() {
            self.terminal_seq = Some(seq);
            return true;
        }
        false
    }

    /// Whether the watcher got seq 1 ..= the terminal seq, each once.
    fn complete(&self) -> bool {
        let Some(last) = self.terminal_seq else {
            return false;
        };
        let mut seqs: Vec<u64> = self.deliveries.iter().map(|d| d.seq).collect();
        seqs.sort_unstable();
        seqs == (1..=last).collect::<Vec<_>>()
    }

    fn first_received_us(&self) -> Option<u64> {
        self.deliveries.first().map(|d| d.received_us)
    }
}

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    let ws_count = cli.sessions.unwrap_or(1000);
    let sse_count = cli.sse_streams.unwrap_or(1000);
    let client = gateway.client()?;
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&cli.params_json())?;
    params.insert(
        "bench".into(),
        serde_json::json!({
            "delay_ms": cli.fanout_delay_ms,
            "progress_steps": cli.fanout_steps,
            "step_ms": cli.fanout_step_ms,
        }),
    );
    let body = frames::job_body(
        &serde_json::to_string(&cli.kind)?,
        &serde_json::Value::Object(params).to_string(),
    );
    let job_length = Duration::from_millis(
        cli.fanout_delay_ms + cli.fanout_steps.saturating_mul(cli.fanout_step_ms),
    );
    let deadline = job_length + cli.job_timeout();

    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    let submitted = Instant::now();
    let job_id = submit(&client, gateway, &body).await?;
    let (sockets, connects) = ws::connect_many(gateway, ws_count, cli.connect_concurrency).await;
    let mut tasks = Vec::with_capacity(ws_count + sse_count);
    // Passed by every watcher once it is done: then they close.
    let all_done = Arc::new(Barrier::new(sockets.len() + sse_count));
    for socket in sockets {
        tasks.push(tokio::spawn(watch_ws(
            socket,
            job_id.clone(),
            deadline,
            Arc::clone(&all_done),
        )));
    }
    let opening = Arc::new(Semaphore::new(cli.connect_concurrency));
    for _ in 0..sse_count {
        let url = gateway.http(&format!("/v1/jobs/{job_id}/events"));
        tasks.push(tokio::spawn(watch_sse(
            client.clone(),
            url,
            Arc::clone(&opening),
            deadline,
            Arc::clone(&all_done),
        )));
    }
    let mut watchers = Vec::with_capacity(tasks.len());
    for task in tasks {
        watchers.push(task.await.unwrap_or_else(|_| Watcher {
            error: Some("a watcher task failed".into()),
            ..Watcher::default()
        }));
    }
    let finished = Instant::now();
    let usage = watch.finish();
    Ok(summarize(
        cli,
        &watchers,
        &connects,
        usage,
        ws_count,
        sse_count,
        finished.duration_since(submitted),
    ))
}

async fn submit(client: &reqwest::Client, gateway: &Gateway, body: &str) -> anyhow::Result<String> {
    let response = client
        .post(gateway.http("/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::ACCEPTED,
        "POST /v1/jobs: {}",
        response.status()
    );
    let accepted: serde_json::Value = response.json().await?;
    accepted["job_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("POST /v1/jobs answered no job_id"))
}

async fn watch_ws(
    mut socket: Socket,
    job_id: String,
    deadline: Duration,
    all_done: Arc<Barrier>,
) -> Watcher {
    let mut watcher = Watcher::default();
    let outcome = tokio::time::timeout(deadline, async {
        let subscribe = serde_json::json!({ "type": "subscribe", "job_id": job_id }).to_string();
        socket
            .send(Message::text(subscribe))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(message) = socket.next().await {
            let Message::Text(text) = message.map_err(|e| e.to_string())? else {
                continue;
            };
            let Some(frame) = Frame::parse(&text) else {
                continue;
            };
            match frame.kind.as_ref() {
                "event" if watcher.take(&frame) => return Ok(()),
                "error" => return Err(format!("error frame {:?}", frame.code)),
                _ => {}
            }
        }
        Err("the session ended".to_owned())
    })
    .await;
    watcher.error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some("timed out".into()),
    };
    let _ = tokio::time::timeout(deadline, all_done.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    watcher
}

async fn watch_sse(
    client: reqwest::Client,
    url: String,
    opening: Arc<Semaphore>,
    deadline: Duration,
    all_done: Arc<Barrier>,
) -> Watcher {
    let mut watcher = Watcher::default();
    let mut open = None;
    let outcome = tokio::time::timeout(deadline, async {
        let stream = {
            let _permit = opening.acquire().await.map_err(|e| e.to_string())?;
            open.insert(
                SseStream::open(&client, &url)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        };
        while let Some(event) = stream.next().await.map_err(|e| e.to_string())? {
            if let Some(frame) = Frame::parse(&event.data)
                && watcher.take(&frame)
            {
                return Ok(());
            }
        }
        Err("the stream ended before the terminal event".to_owned())
    })
    .await;
    watcher.error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some("timed out".into()),
    };
    let _ = tokio::time::timeout(deadline, all_done.wait()).await;
    drop(open);
    watcher
}

fn summarize(
    cli: &Cli,
    watchers: &[Watcher],
    connects: &Recorder,
    usage: crate::procstat::Usage,
    ws_count: usize,
    sse_count: usize,
    took: Duration,
) -> Report {
    let mut recorder = Recorder::new();
    let mut spread = Recorder::new();
    recorder.errors += connects.errors;
    recorder
        .error_samples
        .extend(connects.error_samples.iter().cloned());
    // Every watcher was live once it had received its first event.
    let ready_us = watchers
        .iter()
        .filter_map(Watcher::first_received_us)
        .max()
        .unwrap_or(0);
    let mut first_receipt: HashMap<u64, u64> = HashMap::new();
    for delivery in watchers.iter().flat_map(|w| &w.deliveries) {
        let first = first_receipt.entry(delivery.seq).or_insert(u64::MAX);
        *first = (*first).min(delivery.received_us);
    }
    let mut measured = 0u64;
    let mut incomplete = 0u64;
    // What bounds the figure: the slowest events, and which transport.
    let mut by_event: BTreeMap<u64, Recorder> = BTreeMap::new();
    let mut by_transport = [Recorder::new(), Recorder::new()];
    for (index, watcher) in watchers.iter().enumerate() {
        // The WebSocket watchers come first.
        let transport = &mut by_transport[usize::from(index >= ws_count)];
        if let Some(error) = &watcher.error {
            recorder.error(format!("watcher: {error}"));
        } else if !watcher.complete() {
            incomplete += 1;
            recorder.error("a watcher missed an event");
        }
        for delivery in &watcher.deliveries {
            if delivery.ts_ms * 1000 <= ready_us {
                continue;
            }
            measured += 1;
            let latency =
                Duration::from_micros(delivery.received_us.saturating_sub(delivery.ts_ms * 1000));
            recorder.sample(latency);
            transport.sample(latency);
            by_event.entry(delivery.seq).or_default().sample(latency);
            let first = first_receipt.get(&delivery.seq).copied().unwrap_or(0);
            spread.sample(Duration::from_micros(
                delivery.received_us.saturating_sub(first),
            ));
        }
    }
    let mut report = Report::new(cli, &recorder, usage);
    report.jobs = measured;
    report.jobs_per_s = None;
    report.duration_s = (took.as_secs_f64() * 1000.0).round() / 1000.0;
    report.sessions = Some(ws_count);
    report.sse_streams = Some(sse_count);
    let spread = Report::new(cli, &spread, Default::default());
    let watcher_count = watchers.len() as u64;
    let extra = &mut report.extra;
    extra.insert("watchers".into(), watcher_count.into());
    extra.insert("watchers_incomplete".into(), incomplete.into());
    extra.insert("deliveries_measured".into(), measured.into());
    extra.insert(
        "events_measured_per_watcher".into(),
        measured.checked_div(watcher_count).unwrap_or(0).into(),
    );
    extra.insert("spread_p50_ms".into(), spread.p50_ms.into());
    extra.insert("spread_p99_ms".into(), spread.p99_ms.into());
    let p99 = |recorder: &Recorder| Report::new(cli, recorder, Default::default()).p99_ms;
    extra.insert("p99_ms_ws".into(), p99(&by_transport[0]).into());
    extra.insert("p99_ms_sse".into(), p99(&by_transport[1]).into());
    let by_event: serde_json::Map<String, serde_json::Value> = by_event
        .iter()
        .map(|(seq, recorder)| (seq.to_string(), p99(recorder).into()))
        .collect();
    extra.insert("p99_ms_by_seq".into(), by_event.into());
    extra.insert(
        "latency_is".into(),
        "receipt by each watcher minus the event's ts (Redis clock, ms; over-states by < 1 ms)"
            .into(),
    );
    report
}
