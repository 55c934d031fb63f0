//! Soak: many jobs through several worker processes while one of them is
//! `kill -9`ed every few seconds. Counts lost jobs (no terminal event) and
//! duplicate terminal events; both must be 0.
//!
//! ```sh
//! make venv
//! cargo run --release -p jobgate --example soak -- 10000 4 3
//! #                                           jobs ─┘  │  └─ seconds between kills
//! #                                          workers ──┘
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jobgate_testkit::{PythonWorker, RedisServer, TestGateway, WsClient};
use serde_json::json;

const SESSIONS: usize = 8;
const IN_FLIGHT_PER_SESSION: usize = 25;

#[derive(Default)]
struct Tally {
    terminal: HashMap<String, Vec<String>>,
    seqs: HashMap<String, Vec<u64>>,
    retrying: usize,
}

fn worker(redis: &RedisServer, n: usize) -> PythonWorker {
    let apps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps");
    PythonWorker::start_app(
        &redis.url(),
        "fault_app:worker",
        Some(&apps),
        &format!("soak-{n}"),
        &["--lease-ms", "2000", "--concurrency", "8"],
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Numeric arguments, in order (the program name is not a number).
    let args: Vec<u64> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let jobs = *args.first().unwrap_or(&10_000) as usize;
    let workers_wanted = *args.get(1).unwrap_or(&4) as usize;
    let kill_every = Duration::from_secs(*args.get(2).unwrap_or(&3));

    let redis = RedisServer::start();
    let mut workers: Vec<PythonWorker> = (0..workers_wanted).map(|n| worker(&redis, n)).collect();
    redis.wait_for_kinds(&["sleep"]).await;
    // A load test, not a rate-limit test: the owner's submission rate is unbounded.
    let mut config = jobgate_gateway::Config::for_redis(redis.url());
    config.submits_per_minute = 0;
    let gateway = TestGateway::start_with(config).await;
    let started = Instant::now();

    // The killer: every few seconds one worker dies without warning and a
    // fresh one takes its place.
    let stop = tokio_util::sync::CancellationToken::new();
    let killer = {
        let stop = stop.clone();
        let url = redis.url();
        tokio::task::spawn_blocking(move || {
            let redis_url = url;
            let mut kills = 0;
            let mut next = workers_wanted;
            while !stop.is_cancelled() {
                std::thread::sleep(kill_every);
                if stop.is_cancelled() {
                    break;
                }
                let victim = kills % workers.len();
                workers[victim].kill();
                kills += 1;
                workers[victim] = PythonWorker::start_app(
                    &redis_url,
                    "fault_app:worker",
                    Some(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")),
                    &format!("soak-{next}"),
                    &["--lease-ms", "2000", "--concurrency", "8"],
                );
                next += 1;
            }
            (kills, workers)
        })
    };

    let per_session = jobs.div_ceil(SESSIONS);
    let mut tasks = Vec::new();
    for session in 0..SESSIONS {
        let url = gateway.ws_url();
        let count = per_session.min(jobs - session * per_session);
        tasks.push(tokio::spawn(async move {
            run_session(&url, session, count).await
        }));
    }
    let mut tally = Tally::default();
    let mut submitted = 0;
    for task in tasks {
        let (accepted, session_tally) = task.await??;
        submitted += accepted;
        tally.retrying += session_tally.retrying;
        tally.terminal.extend(session_tally.terminal);
        tally.seqs.extend(session_tally.seqs);
    }
    stop.cancel();
    let (kills, _workers) = killer.await?;
    let elapsed = started.elapsed();

    let lost = submitted - tally.terminal.len();
    let duplicate_terminals: usize = tally
        .terminal
        .values()
        .map(|t| t.len().saturating_sub(1))
        .sum();
    let gaps_or_duplicates = tally
        .seqs
        .values()
        .filter(|seqs| seqs.iter().enumerate().any(|(i, seq)| *seq != i as u64 + 1))
        .count();
    let completed = tally
        .terminal
        .values()
        .filter(|t| t.first().map(String::as_str) == Some("completed"))
        .count();
    println!(
        "{}",
        json!({
            "jobs_submitted": submitted,
            "jobs_completed": completed,
            "jobs_lost": lost,
            "duplicate_terminal_events": duplicate_terminals,
            "jobs_with_seq_gap_or_duplicate": gaps_or_duplicates,
            "retrying_events": tally.retrying,
            "workers": workers_wanted,
            "worker_kills": kills,
            "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    anyhow::ensure!(
        lost == 0 && duplicate_terminals == 0 && gaps_or_duplicates == 0,
        "the soak lost or duplicated events"
    );
    Ok(())
}

/// Submits `count` short jobs over one session, at most
/// `IN_FLIGHT_PER_SESSION` at a time, and records every event it is pushed.
async fn run_session(url: &str, session: usize, count: usize) -> anyhow::Result<(usize, Tally)> {
    let mut ws = WsClient::connect(url).await?;
    let mut tally = Tally::default();
    let (mut sent, mut accepted, mut finished) = (0, 0, 0);
    while finished < count {
        while sent < count && sent - finished < IN_FLIGHT_PER_SESSION {
            let job = json!({"kind": "sleep", "params": {"s": 0.05}, "max_attempts": 10});
            ws.send(
                json!({"type": "submit", "request_id": format!("{session}-{sent}"), "job": job}),
            )
            .await?;
            sent += 1;
        }
        let frame = ws.next(Duration::from_secs(120)).await?;
        match frame["type"].as_str() {
            Some("accepted") => accepted += 1,
            Some("event") => {
                let job = frame["job_id"].as_str().unwrap_or_default().to_owned();
                tally
                    .seqs
                    .entry(job.clone())
                    .or_default()
                    .push(frame["seq"].as_u64().unwrap_or(0));
                match frame["event"].as_str() {
                    Some("retrying") => tally.retrying += 1,
                    Some(terminal @ ("completed" | "failed" | "cancelled")) => {
                        let terminals = tally.terminal.entry(job).or_default();
                        if terminals.is_empty() {
                            finished += 1;
                        }
                        terminals.push(terminal.to_owned());
                    }
                    _ => {}
                }
            }
            _ => anyhow::bail!("session {session}: unexpected frame {frame}"),
        }
    }
    // Anything still arriving would be a duplicate: listen a moment longer.
    while let Ok(frame) = ws.next(Duration::from_millis(500)).await {
        if let (Some(job), Some("completed" | "failed" | "cancelled")) =
            (frame["job_id"].as_str(), frame["event"].as_str())
        {
            tally
                .terminal
                .entry(job.to_owned())
                .or_default()
                .push("late".into());
        }
    }
    Ok((accepted, tally))
}
