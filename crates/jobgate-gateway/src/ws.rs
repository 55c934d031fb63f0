//! The WebSocket session (`GET /v1/ws`).
//!
//! One task reads the client's frames and the session's [`Feed`]; a second
//! task writes to the socket from a bounded queue, so a client that stops
//! reading never blocks the session: when the queue is full the session is
//! closed with 4008 (slow consumer) and the client resumes with
//! `subscribe … after`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use jobgate_proto::ws::{ClientMessage, ServerMessage, SubmitFrame};
use jobgate_proto::{ErrorCode, JobId};
use jobgate_store::{Feed, FeedItem};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Principal, unauthorized};
use crate::error::ApiError;
use crate::jobs;
use crate::limits::TokenBucket;
use crate::metrics::Gauge;
use crate::state::AppState;
use crate::submit::{self, Submission};
use crate::telemetry::{record_ids, set_remote_parent};
use tracing::Instrument;

/// Close code for a session that fell too far behind.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a session whose pings went unanswered.
pub const CLOSE_PING_TIMEOUT: u16 = 4000;
/// Close code for a session whose token expired without an `auth` refresh.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
const CLOSE_GOING_AWAY: u16 = 1001;
/// How long a close frame may take to reach a jammed socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|rejection| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("this route speaks WebSocket: {}", rejection.body_text()),
        )
    })?;
    check_origin(&headers, &state.config.allowed_origins)?;
    let permit = state.connection_permit(&principal)?;
    let max = state.config.max_body_bytes;
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: thousands of mostly idle sessions must stay cheap
        // (the defaults hold 128 KiB per session).
        .read_buffer_size(1024)
        .write_buffer_size(1024)
        .on_upgrade(move |socket| async move {
            let metrics = std::sync::Arc::clone(&state.metrics);
            let _open = Gauge::up(&metrics.websocket_sessions);
            Session::run(socket, state, principal).await;
            drop(permit);
        }))
}

struct Session {
    state: AppState,
    principal: Principal,
    feed: Feed,
    outbound: mpsc::Sender<Message>,
    /// Messages the client may still send this second.
    budget: TokenBucket,
}

/// Why a session ends.
enum End {
    ClientGone,
    Close(u16, &'static str),
}

impl Session {
    async fn run(socket: WebSocket, state: AppState, principal: Principal) {
        let (sink, mut incoming) = socket.split();
        let (outbound, outbound_rx) = mpsc::channel(state.config.outbound_queue);
        let (close, close_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(sink, outbound_rx, close_rx));
        let feed = state.feed();
        let budget = TokenBucket::new(state.config.ws_messages_per_s);
        let mut session = Session {
            state,
            principal,
            feed,
            outbound,
            budget,
        };
        let end = session.serve(&mut incoming).await;
        match end {
            // Goes past the queue: the queue may be full of what the client
            // did not read.
            End::Close(code, reason) => {
                let _ = close.send((code, reason));
            }
            End::ClientGone => drop(close),
        }
        drop(session);
        let _ = writer.await;
    }

    async fn serve(&mut self, incoming: &mut futures_util::stream::SplitStream<WebSocket>) -> End {
        let interval = self.state.config.ws_ping_interval();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last_pong = Instant::now();
        let shutdown = self.state.shutdown.clone();
        loop {
            let expiry = token_expiry(&self.principal);
            tokio::select! {
                () = shutdown.cancelled() => return End::Close(CLOSE_GOING_AWAY, "server shutting down"),
                () = expiry => return End::Close(CLOSE_TOKEN_EXPIRED, "token expired; send auth before it expires"),
                frame = incoming.next() => {
                    let outcome = match frame {
                        Some(Ok(Message::Text(text))) => self.handle(&text).await,
                        Some(Ok(Message::Binary(_))) => self.reply(&ServerMessage::error(
                            None, None, ErrorCode::InvalidMessage, "frames must be JSON text frames")),
                        Some(Ok(Message::Pong(_))) => { last_pong = Instant::now(); Ok(()) }
                        Some(Ok(Message::Ping(_))) => Ok(()), // answered by the protocol layer
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::ClientGone,
                    };
                    if let Err(end) = outcome { return end; }
                }
                item = self.feed.next() => {
                    let outcome = match item {
                        Some(FeedItem::Event(event)) => {
                            if event.event.is_terminal() {
                                // Nothing follows: free the session's watch.
                                self.feed.unwatch(&event.job_id);
                            }
                            self.state.metrics.events_pushed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.send_text(event_text(event.json))
                        }
                        Some(FeedItem::Overflowed) => Err(self.slow_consumer()),
                        Some(FeedItem::Unavailable(error)) => {
                            tracing::warn!(%error, "session could not read missed events; retrying");
                            Ok(())
                        }
                        None => Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
                    };
                    if let Err(end) = outcome { return end; }
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > interval * 2 {
                        return End::Close(CLOSE_PING_TIMEOUT, "ping unanswered");
                    }
                    if let Err(end) = self.send(Message::Ping(Default::default())) { return end; }
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        if !self.budget.take() {
            return self.error(
                None,
                None,
                ApiError::new(
                    ErrorCode::RateLimited,
                    "too many messages; the message was dropped",
                ),
            );
        }
        let message = match ClientMessage::parse(text) {
            Ok(message) => message,
            Err(error) => {
                return self.reply(&ServerMessage::error(
                    error.request_id,
                    None,
                    error.code,
                    error.message,
                ));
            }
        };
        match message {
            ClientMessage::Submit(frame) => self.submit(frame).await,
            ClientMessage::Subscribe { job_id, after } => self.subscribe(job_id, after).await,
            ClientMessage::Unsubscribe { job_id } => self.unsubscribe(job_id),
            ClientMessage::Cancel { job_id, request_id } => self.cancel(job_id, request_id).await,
            ClientMessage::Auth { token } => self.refresh(&token),
            ClientMessage::Ping => self.reply(&ServerMessage::Pong),
        }
    }

    /// A fresh token for the same owner extends the session.
    fn refresh(&mut self, token: &str) -> Result<(), End> {
        let Some(verifier) = &self.state.auth else {
            return Ok(());
        };
        match verifier.verify(token) {
            Ok(principal) if principal.owner == self.principal.owner => {
                self.principal = principal;
                Ok(())
            }
            Ok(_) => self.error(None, None, unauthorized("the token is for another owner")),
            Err(error) => self.error(None, None, error),
        }
    }

    /// `rate_limited` when the session already watches as many jobs as it may.
    fn watch_limit(&self) -> Result<(), ApiError> {
        if self.feed.watching() >= self.state.config.max_subscriptions_per_session {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "the session watches as many jobs as it may; unsubscribe first",
            ));
        }
        Ok(())
    }

    async fn submit(&mut self, frame: SubmitFrame) -> Result<(), End> {
        if let Err(error) = self.watch_limit() {
            return self.error(Some(frame.request_id), None, error);
        }
        let job_id = JobId::new();
        // Watch before the job exists, so its first event cannot be missed.
        if let Err(error) = self.feed.expect(job_id).await {
            return self.error(Some(frame.request_id), None, error.into());
        }
        let request_id = frame.request_id;
        // The message is the request: its span continues the client's trace.
        let span = tracing::info_span!(
            "ws submit",
            otel.name = "WS submit",
            otel.kind = "server",
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        set_remote_parent(
            &span,
            frame.traceparent.as_deref(),
            frame.tracestate.as_deref(),
        );
        record_ids(&span);
        let submission = Submission {
            job_id,
            request: frame.job,
            traceparent: frame.traceparent,
            tracestate: frame.tracestate,
            idempotency_key: frame.idempotency_key,
            legacy_trace_id: None,
        };
        let accepted = match submit::submit(&self.state, &self.principal, submission)
            .instrument(span)
            .await
        {
            Ok(accepted) => accepted,
            Err(error) => {
                self.feed.unwatch(&job_id);
                return self.error(Some(request_id), None, error);
            }
        };
        self.reply(&ServerMessage::Accepted {
            request_id,
            job_id: accepted.job_id,
            trace_id: accepted.trace_id,
        })?;
        if accepted.replayed {
            // The job exists from an earlier submit: follow it from the start.
            self.feed.unwatch(&job_id);
            return self.subscribe(accepted.job_id, 0).await;
        }
        Ok(())
    }

    async fn subscribe(&mut self, id: JobId, after: u64) -> Result<(), End> {
        let job_id = id.to_string();
        let job_id = Some(job_id.as_str());
        if !self.feed.is_watching(&id)
            && let Err(error) = self.watch_limit()
        {
            return self.error(None, job_id, error);
        }
        let start = match self.feed.watch(id, after).await {
            Ok(start) => start,
            Err(error) => return self.error(None, job_id, error.into()),
        };
        let record = match start.record {
            Some(record) if self.principal.owns(&record.owner) => record,
            other => {
                self.feed.unwatch(&id);
                let error = match other {
                    Some(_) => ApiError::not_found(),
                    None => ApiError::missing_job(&id, self.state.config.retention()),
                };
                return self.error(None, job_id, error);
            }
        };
        if let Some(first_seq) = start.truncated_from {
            let snapshot = serde_json::value::to_raw_value(&record.snapshot)
                .map_err(|_| End::Close(1011, "internal error"))?;
            self.reply(&ServerMessage::HistoryTruncated {
                job_id: id,
                after,
                first_seq,
                snapshot,
            })?;
        }
        if record.snapshot.status.is_terminal() && record.snapshot.seq <= after {
            self.feed.unwatch(&id);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, id: JobId) -> Result<(), End> {
        if self.feed.is_watching(&id) {
            self.feed.unwatch(&id);
            return Ok(());
        }
        let error = ApiError::new(
            ErrorCode::NotSubscribed,
            "the session is not subscribed to that job",
        );
        self.error(None, Some(&id.to_string()), error)
    }

    async fn cancel(&mut self, id: JobId, request_id: Option<String>) -> Result<(), End> {
        match jobs::cancel_job(&self.state, &self.principal, &id).await {
            Ok(_) => Ok(()),
            Err(error) => self.error(request_id, Some(&id.to_string()), error),
        }
    }

    fn error(
        &self,
        request_id: Option<String>,
        job_id: Option<&str>,
        error: ApiError,
    ) -> Result<(), End> {
        self.reply(&ServerMessage::error(
            request_id,
            job_id.map(str::to_owned),
            error.code,
            error.message,
        ))
    }

    fn reply(&self, message: &ServerMessage) -> Result<(), End> {
        self.send_text(Utf8Bytes::from(message.to_json()))
    }

    fn send_text(&self, text: Utf8Bytes) -> Result<(), End> {
        self.send(Message::Text(text))
    }

    fn slow_consumer(&self) -> End {
        self.state
            .metrics
            .slow_consumer_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(owner = %self.principal.owner, "closing a WebSocket session that does not read its events");
        End::Close(
            CLOSE_SLOW_CONSUMER,
            "slow consumer: resume with subscribe after",
        )
    }

    /// Queues a frame for the writer; a full queue means the client is not
    /// reading.
    fn send(&self, message: Message) -> Result<(), End> {
        match self.outbound.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.slow_consumer()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::ClientGone),
        }
    }
}

/// Resolves when the session's credential expires (never without auth).
async fn token_expiry(principal: &Principal) {
    match principal.expires_at {
        Some(expires_at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(expires_at.saturating_sub(now))).await;
        }
        None => std::future::pending().await,
    }
}

/// Refuses a browser page from an origin that may not open sessions
/// (cross-site WebSocket hijacking). Clients that send no `Origin` are not
/// browsers and pass; without an allow-list only same-origin pages pass.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let same_origin = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
    if same_origin || allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ForbiddenOrigin,
            "this origin may not open WebSocket sessions",
        ))
    }
}

fn event_text(json: bytes::Bytes) -> Utf8Bytes {
    // Events are written by the job script as JSON text, so they are UTF-8.
    Utf8Bytes::try_from(json).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<(u16, &'static str)>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            reason = &mut close => return send_close(sink, reason.ok()).await,
            frame = frames.recv() => frame,
        };
        let Some(frame) = frame else {
            // The session ended; it may still have a close frame to send.
            return send_close(sink, close.await.ok()).await;
        };
        tokio::select! {
            biased;
            reason = &mut close => return send_close(sink, reason.ok()).await,
            sent = write_batch(&mut sink, &mut frames, frame) => if sent.is_err() { return },
        }
    }
}

/// The most frames written with one flush.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to
/// [`WRITE_BATCH`] frames), then flushes once: under load one system call
/// carries several events instead of one each.
async fn write_batch(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    frames: &mut mpsc::Receiver<Message>,
    first: Message,
) -> Result<(), axum::Error> {
    sink.feed(first).await?;
    for _ in 1..WRITE_BATCH {
        match frames.try_recv() {
            Ok(frame) => sink.feed(frame).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Sends a close frame (or just closes), giving a jammed socket
/// [`CLOSE_TIMEOUT`] to take it.
async fn send_close(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    reason: Option<(u16, &'static str)>,
) {
    let close = reason.map(|(code, reason)| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    });
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(close) = close {
            let _ = sink.send(close).await;
        }
        let _ = sink.close().await;
    })
    .await;
}
