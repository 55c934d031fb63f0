//! `--mode ws`: jobs submitted over WebSocket sessions
//! (`{"type":"submit",…}`), measured from just before the frame is sent to
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
        request.headers_mut().insert("authorization", value.parse()?);
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
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
            (connect(&url, authorization.as_deref()).await, started.elapsed())
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
}

pub(crate) async fn run(cli: &Cli, gateway: &Gateway) -> anyhow::Result<Report> {
    let session_count = cli.sessions.unwrap_or(cli.concurrency.min(100)).max(1);
    let (sockets, connects) =
        connect_many(gateway, session_count, cli.connect_concurrency).await;
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
    for session in sessions {
        match tokio::time::timeout(spec.timeout + Duration::from_secs(10), session).await {
            Ok(Ok(result)) => recorder.merge(&result),
            _ => recorder.error("a session did not finish"),
        }
    }
    for _ in 0..undelivered.load(Ordering::Relaxed) {
        recorder.error("a session had closed before the job was handed to it");
    }
    let mut report = Report::new(cli, &recorder, watch.finish());
    report.sessions = Some(session_count);
    Ok(report)
}

/// One session: sends the submissions it is handed, matches `accepted`
/// frames to them and records each job when its terminal event arrives.
async fn session(
    socket: Socket,
    mut submissions: mpsc::Receiver<Submission>,
    spec: Arc<JobSpec>,
) -> Recorder {
    let mut recorder = Recorder::new();
    let (mut sink, mut stream) = socket.split();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut request_of_job: HashMap<String, u64> = HashMap::new();
    // Terminal events that overtook their `accepted` (not expected, but
    // nothing in the protocol forbids it).
    let mut early: HashMap<String, (Instant, bool)> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut accepting = true;
    while accepting || !pending.is_empty() {
        tokio::select! {
            submission = submissions.recv(), if accepting => {
                let Some(submission) = submission else {
                    accepting = false;
                    continue;
                };
                let frame = frames::submit_frame(submission.index, &spec.kind_json, &spec.params_json);
                let sent = if spec.fixed_rate { submission.due } else { Instant::now() };
                if submission.measured {
                    recorder.sent(sent);
                    recorder.requests += 1;
                }
                if let Err(error) = sink.send(Message::text(frame)).await {
                    recorder.error(format!("send: {error}"));
                    break;
                }
                pending.insert(submission.index, Pending {
                    sent,
                    measured: submission.measured,
                    _permit: submission.permit,
                });
            }
            message = stream.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        recorder.error(format!("the gateway closed the session: {frame:?}"));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => {
                        recorder.error(format!("session: {error}"));
                        break;
                    }
                    None => {
                        recorder.error("the session ended");
                        break;
                    }
                };
                let now = Instant::now();
                let Some(frame) = Frame::parse(&text) else {
                    recorder.error("a frame that is not JSON");
                    continue;
                };
                match frame.kind.as_ref() {
                    "accepted" => {
                        let (Some(request), Some(job)) = (frame.request_id, frame.job_id) else { continue };
                        let Ok(request) = request.parse::<u64>() else { continue };
                        if let Some((at, completed)) = early.remove(job.as_ref()) {
                            finish(&mut recorder, pending.remove(&request), at, completed);
                        } else if pending.contains_key(&request) {
                            request_of_job.insert(job.into_owned(), request);
                        }
                    }
                    "event" => {
                        let (Some(terminal), Some(job)) = (frame.terminal(), frame.job_id.as_deref()) else { continue };
                        let completed = terminal == "completed";
                        match request_of_job.remove(job) {
                            Some(request) => finish(&mut recorder, pending.remove(&request), now, completed),
                            None => { early.insert(job.to_owned(), (now, completed)); }
                        }
                    }
                    "error" => {
                        let request = frame.request_id.as_deref().and_then(|r| r.parse::<u64>().ok());
                        let code = frame.code.as_deref().unwrap_or("?").to_owned();
                        match request.and_then(|r| pending.remove(&r)) {
                            Some(job) if !job.measured => {}
                            _ => recorder.error(format!("error frame: {code}")),
                        }
                    }
                    _ => {}
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<u64> = pending
                    .iter()
                    .filter(|(_, job)| now.duration_since(job.sent) > spec.timeout)
                    .map(|(request, _)| *request)
                    .collect();
                for request in expired {
                    if pending.remove(&request).is_some_and(|job| job.measured) {
                        recorder.timeout();
                    }
                    request_of_job.retain(|_, r| *r != request);
                }
            }
        }
    }
    for job in pending.values() {
        if job.measured {
            recorder.error("the session ended before the job finished");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(None))).await;
    recorder
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
