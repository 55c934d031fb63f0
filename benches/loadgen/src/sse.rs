//! `--mode sse`: `POST /v1/jobs`, then Server-Sent Events — one
//! `/v1/jobs/{id}/events` stream per job, or (`--sse-streams M`) M
//! long-lived `/v1/events` streams that must each see every job's
//! `completed`. Also the SSE client the fan-out mode uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::cli::Cli;
use crate::driver::{self, Pace, Submission};
use crate::frames::{self, Frame};
use crate::gateway::Gateway;
use crate::procstat::Watch;
use crate::report::Report;
use crate::stats::Recorder;

/// How often jobs past their timeout are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) data: String,
    pub(crate) id: Option<String>,
}

/// An incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk; complete events are appended to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line_end = start + end;
            let line = &self.buffer[start..line_end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, out);
            start = line_end + 1;
        }
        self.buffer.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                let mut event = std::mem::take(&mut self.current);
                if event.event.is_empty() {
                    event.event = "message".to_owned();
                }
                out.push(event);
            }
            self.current = SseEvent::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// An open SSE response, read event by event.
#[derive(Debug)]
pub(crate) struct SseStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseStream {
    /// `GET url`; fails unless the answer is `200 text/event-stream`.
    pub(crate) async fn open(client: &reqwest::Client, url: &str) -> anyhow::Result<Self> {
        let response = client
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::OK,
            "GET {url}: {}",
            response.status()
        );
        Ok(Self {
            response,
            parser: SseParser::default(),
            ready: Default::default(),
        })
    }

    /// The next event; `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let Some(chunk) = self.response.chunk().await? else {
                return Ok(None);
            };
            let mut out = Vec::new();
            self.parser.feed(&chunk, &mut out);
            self.ready.extend(out);
        }
    }
}

/// Everything a job task needs.
#[derive(Debug)]
struct JobSpec {
    client: reqwest::Client,
    gateway: Gateway,
    body: String,
    timeout: Duration,
    fixed_rate: bool,
}

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    let spec = Arc::new(JobSpec {
        client: gateway.client()?,
        gateway: gateway.clone(),
        body: frames::job_body(&serde_json::to_string(&cli.kind)?, &cli.params_json()),
        timeout: cli.job_timeout(),
        fixed_rate: cli.rate.is_some(),
    });
    let streams = cli.sse_streams.unwrap_or(0);
    let mut report = if streams == 0 {
        per_job(cli, spec).await?
    } else {
        long_lived(cli, spec, streams).await?
    };
    report.sse_streams = Some(streams);
    Ok(report)
}

fn pace(cli: &Cli) -> Pace {
    Pace {
        jobs: cli.jobs,
        warmup: cli.warmup,
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration: cli.duration(),
    }
}

fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `POST /v1/jobs`; answers the job id.
async fn submit(spec: &JobSpec) -> anyhow::Result<String> {
    let response = spec
        .client
        .post(spec.gateway.http("/v1/jobs"))
        .header("content-type", "application/json")
        .body(spec.body.clone())
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

/// One stream per job: submit, open its events, read to the terminal one.
async fn per_job(cli: &Cli, spec: Arc<JobSpec>) -> anyhow::Result<Report> {
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    driver::drive(&pace(cli), |submission| {
        let spec = Arc::clone(&spec);
        let recorder = Arc::clone(&recorder);
        tokio::spawn(async move {
            let sent = if spec.fixed_rate {
                submission.due
            } else {
                Instant::now()
            };
            let outcome = tokio::time::timeout(spec.timeout, one_job(&spec)).await;
            let done = Instant::now();
            if !submission.measured {
                return;
            }
            let mut recorder = lock(&recorder);
            recorder.sent(sent);
            recorder.requests += 2;
            match outcome {
                Ok(Ok(true)) => recorder.completed(done.duration_since(sent), done),
                Ok(Ok(false)) => recorder.error("a job failed or was cancelled"),
                Ok(Err(error)) => recorder.error(error.to_string()),
                Err(_) => recorder.timeout(),
            }
            drop(submission.permit);
        });
    })
    .await;
    let recorder = lock(&recorder).clone();
    Ok(Report::new(cli, &recorder, watch.finish()))
}

/// Whether the job completed (`false`: failed or cancelled).
async fn one_job(spec: &JobSpec) -> anyhow::Result<bool> {
    let job_id = submit(spec).await?;
    let url = spec.gateway.http(&format!("/v1/jobs/{job_id}/events"));
    let mut stream = SseStream::open(&spec.client, &url).await?;
    while let Some(event) = stream.next().await? {
        match event.event.as_str() {
            "completed" => return Ok(true),
            "failed" | "cancelled" => return Ok(false),
            _ => {}
        }
    }
    anyhow::bail!("the event stream ended before the job did")
}

/// A job waiting for its `completed` on every long-lived stream.
#[derive(Debug)]
struct Watched {
    sent: Instant,
    measured: bool,
    remaining: usize,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
struct Tracker {
    jobs: HashMap<String, Watched>,
    /// Deliveries that arrived before the job's `POST` answered.
    early: HashMap<String, Vec<Instant>>,
    recorder: Recorder,
}

impl Tracker {
    fn delivered(&mut self, job_id: &str, at: Instant, completed: bool) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            self.early.entry(job_id.to_owned()).or_default().push(at);
            return;
        };
        if job.measured {
            if completed {
                self.recorder.sample(at.duration_since(job.sent));
            } else {
                self.recorder.error("a job failed or was cancelled");
            }
        }
        job.remaining = job.remaining.saturating_sub(1);
        if job.remaining == 0
            && let Some(job) = self.jobs.remove(job_id)
            && job.measured
        {
            self.recorder.finished(at);
        }
    }
}

/// M long-lived `/v1/events` streams; every job must reach all of them.
async fn long_lived(cli: &Cli, spec: Arc<JobSpec>, streams: usize) -> anyhow::Result<Report> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let url = spec.gateway.http("/v1/events");
    let mut readers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut stream = SseStream::open(&spec.client, &url).await?;
        let tracker = Arc::clone(&tracker);
        readers.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.next().await {
                let now = Instant::now();
                let Some(frame) = Frame::parse(&event.data) else {
                    continue;
                };
                let (Some(terminal), Some(job_id)) = (frame.terminal(), frame.job_id.as_deref())
                else {
                    continue;
                };
                lock_tracker(&tracker).delivered(job_id, now, terminal == "completed");
            }
        }));
    }
    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    let sweeper = tokio::spawn(sweep(Arc::clone(&tracker), spec.timeout));
    driver::drive(&pace(cli), |submission: Submission| {
        let spec = Arc::clone(&spec);
        let tracker = Arc::clone(&tracker);
        tokio::spawn(async move {
            let sent = if spec.fixed_rate {
                submission.due
            } else {
                Instant::now()
            };
            let submitted = submit(&spec).await;
            let mut tracker = lock_tracker(&tracker);
            if submission.measured {
                tracker.recorder.sent(sent);
                tracker.recorder.requests += 1;
            }
            let job_id = match submitted {
                Ok(job_id) => job_id,
                Err(error) => {
                    if submission.measured {
                        tracker.recorder.error(error.to_string());
                    }
                    return;
                }
            };
            let early = tracker.early.remove(&job_id).unwrap_or_default();
            tracker.jobs.insert(
                job_id.clone(),
                Watched {
                    sent,
                    measured: submission.measured,
                    remaining: streams,
                    _permit: submission.permit,
                },
            );
            for at in early {
                tracker.delivered(&job_id, at, true);
            }
        });
    })
    .await;
    sweeper.abort();
    for reader in readers {
        reader.abort();
    }
    let recorder = lock_tracker(&tracker).recorder.clone();
    Ok(Report::new(cli, &recorder, watch.finish()))
}

fn lock_tracker(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Gives up on jobs past their timeout (dropping their permits).
async fn sweep(tracker: Arc<Mutex<Tracker>>, timeout: Duration) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut tracker = lock_tracker(&tracker);
        let expired: Vec<String> = tracker
            .jobs
            .iter()
            .filter(|(_, job)| now.duration_since(job.sent) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if tracker.jobs.remove(&id).is_some_and(|job| job.measured) {
                tracker.recorder.timeout();
            }
        }
        tracker.early.retain(|_, deliveries| {
            deliveries
                .first()
                .is_some_and(|at| now.duration_since(*at) < timeout)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        parser.feed(b": keep-alive\n\nid: 3\nevent: prog", &mut out);
        assert!(out.is_empty());
        parser.feed(
            b"ress\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n",
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].event, "progress");
        assert_eq!(out[0].id.as_deref(), Some("3"));
        assert_eq!(out[0].data, "{\"a\":1}");
        assert_eq!(out[1].event, "message");
        assert_eq!(out[1].data, "x\ny");
    }
}
