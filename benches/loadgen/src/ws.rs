//! `--mode ws`: jobs submitted over WebSocket sessions
//! (`{"type":"submit",…}`, or with `--batch N` up to N at once in a
//! `submit_batch` frame), measured from just before the frame is sent to
//! the pushed `completed` event of the job.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::Cli;
use crate::driver::{self, Pace, Submission};
use crate::frames::{self, Frame};
use crate::gateway::Gateway;
use crate::procstat::Watch;
use crate::report::Report;
use crate::stats::Recorder;

/// A client WebSocket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a session looks for jobs past their timeout.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Opens one session (Nagle off, like any latency-minded client).
pub(crate) async fn connect(url: &str, authorization: Option<&str>) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse()?);
    }
    // Small buffers, as the gateway uses: the default 128 KiB read buffer
    // per socket would make thousands of sessions cost the load generator
    // hundreds of MB and a cache miss on every read.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket connect timed out"))??;
    Ok(socket)
}

/// Opens `count` sessions, `at_once` at a time. Failures are counted, not
/// fatal; connect latencies go to the recorder.
pub(crate) async fn connect_many(
    gateway: &Gateway,
    count: usize,
    at_once: usize,
) -> (Vec<Socket>, Recorder) {
    let url = gateway.ws("/v1/ws");
    let authorization = gateway.authorization();
    let mut recorder = Recorder::new();
    let attempts = futures_util::stream::iter(0..count)
        .map(|_| async {
            let started = Instant::now();
            (
                connect(&url, authorization.as_deref()).await,
                started.elapsed(),
            )
        })
        .buffer_unordered(at_once);
    futures_util::pin_mut!(attempts);
    let mut sockets = Vec::with_capacity(count);
    while let Some((outcome, took)) = attempts.next().await {
        match outcome {
            Ok(socket) => {
                recorder.sample(took);
                sockets.push(socket);
            }
            Err(error) => recorder.error(format!("connect: {error}")),
        }
    }
    (sockets, recorder)
}

/// A job sent and not yet finished.
#[derive(Debug)]
struct Pending {
    sent: Instant,
    measured: bool,
    _permit: OwnedSemaphorePermit,
}

/// What every session needs to build its frames.
#[derive(Debug)]
struct JobSpec {
    kind_json: String,
    params_json: String,
    timeout: Duration,
    fixed_rate: bool,
    /// Most jobs per `submit_batch` frame; 1: `submit` frames.
    batch: usize,
}

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    let session_count = cli.sessions.unwrap_or(cli.concurrency.min(100)).max(1);
    let (sockets, connects) = connect_many(gateway, session_count, cli.connect_concurrency).await;
    anyhow::ensure!(
        sockets.len() == session_count,
        "could not open every session: {:?}",
        connects.error_samples
    );
    let spec = Arc::new(JobSpec {
        kind_json: serde_json::to_string(&cli.kind)?,
        params_json: cli.params_json(),
        timeout: cli.job_timeout(),
        fixed_rate: cli.rate.is_some(),
        batch: cli.batch.max(1),
    });
    let watch = Watch::start(cli.gateway_pid, cli.redis_pid, &cli.worker_pids);
    let mut senders = Vec::with_capacity(session_count);
    let mut sessions = Vec::with_capacity(session_count);
    for socket in sockets {
        let (tx, rx) = mpsc::channel(cli.concurrency + 1);
        senders.push(tx);
        sessions.push(tokio::spawn(session(socket, rx, Arc::clone(&spec))));
    }
    let undelivered = AtomicU64::new(0);
    let pace = Pace {
        jobs: cli.jobs,
        warmup: cli.warmup,
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration: cli.duration(),
    };
    driver::drive(&pace, |submission| {
        let session = submission.index as usize % senders.len();
        if senders[session].try_send(submission).is_err() {
            undelivered.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
    drop(senders);
    let mut recorder = Recorder::new();
    let mut stages = Stages::default();
    for session in sessions {
        match tokio::time::timeout(spec.timeout + Duration::from_secs(10), session).await {
            Ok(Ok((result, session_stages))) => {
                recorder.merge(&result);
                stages.merge(&session_stages);
            }
            _ => recorder.error("a session did not finish"),
        }
    }
    for _ in 0..undelivered.load(Ordering::Relaxed) {
        recorder.error("a session had closed before the job was handed to it");
    }
    let mut report = Report::new(cli, &recorder, watch.finish());
    report.sessions = Some(session_count);
    stages.report(cli, &mut report);
    Ok(report)
}

/// One session: sends the submissions it is handed and reads the gateway's
/// frames until every job it sent has finished. Answers the jobs' outcomes
/// and where their time went.
async fn session(
    socket: Socket,
    mut submissions: mpsc::Receiver<Submission>,
    spec: Arc<JobSpec>,
) -> (Recorder, Stages) {
    let (mut sink, mut stream) = socket.split();
    let mut book = Book::default();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut accepting = true;
    while accepting || !book.pending.is_empty() {
        tokio::select! {
            submission = submissions.recv(), if accepting => {
                let Some(submission) = submission else {
                    accepting = false;
                    continue;
                };
                let frame = if spec.batch > 1 {
                    let mut batch = vec![submission];
                    while batch.len() < spec.batch {
                        match submissions.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let request_id = batch[0].index;
                    let frame = frames::submit_batch_frame(request_id, batch.len(), &spec.kind_json, &spec.params_json);
                    let now = Instant::now();
                    for (place, submission) in batch.into_iter().enumerate() {
                        book.in_batch.insert((request_id, place as u64), submission.index);
                        let sent = if spec.fixed_rate { submission.due } else { now };
                        book.sending(submission, sent);
                    }
                    frame
                } else {
                    let frame = frames::submit_frame(submission.index, &spec.kind_json, &spec.params_json);
                    let sent = if spec.fixed_rate { submission.due } else { Instant::now() };
                    book.sending(submission, sent);
                    frame
                };
                if let Err(error) = sink.send(Message::text(frame)).await {
                    book.recorder.error(format!("send: {error}"));
                    break;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => book.received(&text, Instant::now()),
                Some(Ok(Message::Close(frame))) => {
                    book.recorder.error(format!("the gateway closed the session: {frame:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    book.recorder.error(format!("session: {error}"));
                    break;
                }
                None => {
                    book.recorder.error("the session ended");
                    break;
                }
            },
            _ = sweep.tick() => book.expire(Instant::now(), spec.timeout),
        }
    }
    for job in book.pending.values() {
        if job.measured {
            book.recorder
                .error("the session ended before the job finished");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
    (book.recorder, book.stages)
}

/// One session's bookkeeping: jobs sent, matched to their ids by
/// `accepted`, and recorded when their terminal event arrives.
#[derive(Debug, Default)]
struct Book {
    recorder: Recorder,
    stages: Stages,
    /// By request id (the submission's index).
    pending: HashMap<u64, Pending>,
    request_of_job: HashMap<String, u64>,
    /// `ts` of each job's `queued` and `started` events.
    stamps: HashMap<String, (u64, u64)>,
    /// Terminal events that overtook their `accepted` (not expected, but
    /// nothing in the protocol forbids it).
    early: HashMap<String, (Instant, bool)>,
    /// `(batch request id, index)` → the submission's own index.
    in_batch: HashMap<(u64, u64), u64>,
}

impl Book {
    fn sending(&mut self, submission: Submission, sent: Instant) {
        if submission.measured {
            self.recorder.sent(sent);
            self.recorder.requests += 1;
        }
        self.pending.insert(
            submission.index,
            Pending {
                sent,
                measured: submission.measured,
                _permit: submission.permit,
            },
        );
    }

    fn received(&mut self, text: &str, now: Instant) {
        let Some(frame) = Frame::parse(text) else {
            self.recorder.error("a frame that is not JSON");
            return;
        };
        match frame.kind.as_ref() {
            "accepted" => self.accepted(&frame, now),
            "event" => self.event(&frame, now),
            "error" => {
                let request = self.request_of(&frame);
                let code = frame.code.as_deref().unwrap_or("?");
                match request.and_then(|r| self.pending.remove(&r)) {
                    Some(job) if !job.measured => {}
                    _ => self.recorder.error(format!("error frame: {code}")),
                }
            }
            _ => {}
        }
    }

    /// The submission an `accepted` or `error` answers: its request id, or
    /// for one job of a batch, the job the `(request id, index)` names.
    fn request_of(&mut self, frame: &Frame<'_>) -> Option<u64> {
        let request = frame.request_id.as_deref()?.parse::<u64>().ok()?;
        match frame.index {
            Some(index) => self.in_batch.remove(&(request, index)),
            None => Some(request),
        }
    }

    fn accepted(&mut self, frame: &Frame<'_>, now: Instant) {
        let (Some(request), Some(job)) = (self.request_of(frame), frame.job_id.as_deref()) else {
            return;
        };
        if let Some(job) = self.pending.get(&request).filter(|job| job.measured) {
            self.stages.accepted.sample(now.duration_since(job.sent));
        }
        if let Some((at, completed)) = self.early.remove(job) {
            finish(
                &mut self.recorder,
                self.pending.remove(&request),
                at,
                completed,
            );
        } else if self.pending.contains_key(&request) {
            self.request_of_job.insert(job.to_owned(), request);
        }
    }

    fn event(&mut self, frame: &Frame<'_>, now: Instant) {
        let Some(job) = frame.job_id.as_deref() else {
            return;
        };
        let ts = frame.ts.unwrap_or(0);
        match frame.event.as_deref() {
            Some("queued") => self.stamps.entry(job.to_owned()).or_default().0 = ts,
            Some("started") => self.stamps.entry(job.to_owned()).or_default().1 = ts,
            _ => {}
        }
        let Some(terminal) = frame.terminal() else {
            return;
        };
        let completed = terminal == "completed";
        if let Some((queued, started)) = self.stamps.remove(job)
            && completed
        {
            self.stages
                .record(queued, started, ts, frames::unix_micros());
        }
        match self.request_of_job.remove(job) {
            Some(request) => {
                finish(
                    &mut self.recorder,
                    self.pending.remove(&request),
                    now,
                    completed,
                );
            }
            None => {
                self.early.insert(job.to_owned(), (now, completed));
            }
        }
    }

    /// Gives up on jobs sent longer than `timeout` ago.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, job)| now.duration_since(job.sent) > timeout)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            if self
                .pending
                .remove(&request)
                .is_some_and(|job| job.measured)
            {
                self.recorder.timeout();
            }
            self.request_of_job.retain(|_, r| *r != request);
        }
    }
}

/// Where a job's time goes, stage by stage. `accepted` is measured by the
/// client's clock (µs); the others come from the events' `ts` (the Redis
/// clock, in whole ms, so each is ±1 ms) and the client's wall clock.
#[derive(Debug, Clone, Default)]
struct Stages {
    /// Submit sent → `accepted` received: the gateway's submit path.
    accepted: Recorder,
    /// `queued` → `started`: waiting in the queue stream for a worker.
    queued: Recorder,
    /// `started` → `completed`: the worker's run and its `complete` call.
    running: Recorder,
    /// `completed` published → received: pub/sub, the gateway's fan-out and
    /// the WebSocket write (over-stated by < 1 ms, `ts` being truncated).
    delivery: Recorder,
}

impl Stages {
    fn record(&mut self, queued_ms: u64, started_ms: u64, completed_ms: u64, received_us: u64) {
        if queued_ms == 0 || started_ms == 0 {
            return;
        }
        let ms = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
        self.queued.sample(ms(queued_ms, started_ms));
        self.running.sample(ms(started_ms, completed_ms));
        self.delivery.sample(Duration::from_micros(
            received_us.saturating_sub(completed_ms * 1000),
        ));
    }

    fn merge(&mut self, other: &Self) {
        self.accepted.merge(&other.accepted);
        self.queued.merge(&other.queued);
        self.running.merge(&other.running);
        self.delivery.merge(&other.delivery);
    }

    fn report(&self, cli: &Cli, report: &mut Report) {
        for (name, recorder) in [
            ("accepted", &self.accepted),
            ("queued", &self.queued),
            ("running", &self.running),
            ("delivery", &self.delivery),
        ] {
            let figures = Report::new(cli, recorder, Default::default());
            report
                .extra
                .insert(format!("stage_{name}_p50_ms"), figures.p50_ms.into());
            report
                .extra
                .insert(format!("stage_{name}_p99_ms"), figures.p99_ms.into());
        }
    }
}

/// Records a finished job.
fn finish(recorder: &mut Recorder, job: Option<Pending>, at: Instant, completed: bool) {
    let Some(job) = job else { return };
    if !job.measured {
        return;
    }
    if completed {
        recorder.completed(at.duration_since(job.sent), at);
    } else {
        recorder.error("a job failed or was cancelled");
    }
}
