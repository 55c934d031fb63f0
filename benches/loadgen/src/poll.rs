//! `--mode poll`: the client of the old design — `POST /submit`, then
//! `GET /status/{id}` every `--poll-interval-ms` until the job is
//! `complete` — for comparison with push at the same load.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::cli::Cli;
use crate::driver::{self, Pace};
use crate::gateway::Gateway;
use crate::procstat::Watch;
use crate::report::Report;
use crate::stats::Recorder;

#[derive(Debug)]
struct JobSpec {
    client: reqwest::Client,
    gateway: Gateway,
    body: String,
    interval: Duration,
    timeout: Duration,
    fixed_rate: bool,
}

#[derive(Debug, Deserialize)]
struct Submitted {
    job_id: String,
}

#[derive(Debug, Deserialize)]
struct Status {
    status: String,
}

/// How one polled job ended, and the requests it took.
#[derive(Debug)]
struct Polled {
    completed: bool,
    requests: u64,
}

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    // The old API takes the kind inside `computation_params`.
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&cli.params_json())?;
    params.insert("kind".into(), cli.kind.clone().into());
    let spec = Arc::new(JobSpec {
        client: gateway.client()?,
        gateway: gateway.clone(),
        body: serde_json::json!({ "computation_params": params }).to_string(),
        interval: Duration::from_millis(cli.poll_interval_ms),
        timeout: cli.job_timeout(),
        fixed_rate: cli.rate.is_some(),
    });
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    let pace = Pace {
        jobs: cli.jobs,
        warmup: cli.warmup,
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration: cli.duration(),
    };
    driver::drive(&pace, |submission| {
        let spec = Arc::clone(&spec);
        let recorder = Arc::clone(&recorder);
        tokio::spawn(async move {
            let sent = if spec.fixed_rate {
                submission.due
            } else {
                Instant::now()
            };
            let mut requests = 0;
            let outcome = tokio::time::timeout(spec.timeout, poll_one(&spec, &mut requests)).await;
            let done = Instant::now();
            if !submission.measured {
                return;
            }
            let mut recorder = lock(&recorder);
            recorder.sent(sent);
            match outcome {
                Ok(Ok(polled)) => {
                    recorder.requests += polled.requests;
                    if polled.completed {
                        recorder.completed(done.duration_since(sent), done);
                    } else {
                        recorder.error("a job failed");
                    }
                }
                Ok(Err(error)) => {
                    recorder.requests += requests;
                    recorder.error(error.to_string());
                }
                Err(_) => {
                    recorder.requests += requests;
                    recorder.timeout();
                }
            }
            drop(submission.permit);
        });
    })
    .await;
    let recorder = lock(&recorder).clone();
    let mut report = Report::new(cli, &recorder, watch.finish());
    report
        .extra
        .insert("poll_interval_ms".into(), cli.poll_interval_ms.into());
    Ok(report)
}

fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn poll_one(spec: &JobSpec, requests: &mut u64) -> anyhow::Result<Polled> {
    *requests += 1;
    let response = spec
        .client
        .post(spec.gateway.http("/submit"))
        .header("content-type", "application/json")
        .body(spec.body.clone())
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "POST /submit: {}",
        response.status()
    );
    let submitted: Submitted = response.json().await?;
    let url = spec.gateway.http(&format!("/status/{}", submitted.job_id));
    loop {
        tokio::time::sleep(spec.interval).await;
        *requests += 1;
        let response = spec.client.get(&url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET /status: {}",
            response.status()
        );
        let status: Status = response.json().await?;
        match status.status.as_str() {
            "complete" => {
                return Ok(Polled {
                    completed: true,
                    requests: *requests,
                });
            }
            "failed" => {
                return Ok(Polled {
                    completed: false,
                    requests: *requests,
                });
            }
            _ => {}
        }
    }
}
