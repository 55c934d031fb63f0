//! One WebSocket session: a single task reads the client's frames and the
//! session's [`Feed`] and writes to the socket. Frames to send wait in the
//! session's bounded [`Outbox`], written once nothing else is ready (so the
//! frames of one wake-up leave in one write) or 64 wait, whenever the
//! socket takes more, alongside the reading, so a client that stops
//! reading never blocks the session: when the outbox is full the session
//! is closed with 4008 (slow consumer) and the client resumes with
//! `subscribe … after`. Writing from the session's own task (not a writer
//! task fed by a channel) saves a task wake-up per frame; when one event
//! goes to thousands of sessions, each session's write follows its read at
//! once instead of after every other session's read.
//!
//! A session that negotiated the subprotocol `jobgate.v1` opens with a
//! `hello` (ping interval, token expiry, limits), answers each accepted
//! `auth` with `auth_ok` and each `subscribe` with `subscribed` (the job's
//! status and last position, so that a client knows when a finished job has
//! nothing more to send); other sessions get none of them, so clients
//! written before them see the same frames as ever.
//!
//! Submissions run concurrently: the session reads the next message and
//! pushes events while earlier submissions wait for Redis. Their answers may
//! come in another order than the messages; a job's events are held back
//! until its `accepted` is sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use jobgate_proto::batch::{BatchItem, SubmitBatchFrame, check_batch_size};
use jobgate_proto::ws::{ClientMessage, SUBPROTOCOL, ServerMessage, SessionLimits, SubmitFrame};
use jobgate_proto::{ErrorCode, EventPosition, JobId};
use jobgate_store::{Feed, FeedEvent, FeedItem};

use crate::auth::{Principal, unauthorized};
use crate::error::ApiError;
use crate::jobs;
use crate::limits::TokenBucket;
use crate::push;
use crate::state::AppState;
use crate::submit::{self, Accepted, Submission, Turn};
use crate::trace;
use tracing::Instrument;

use super::outbox::Outbox;
use super::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_PING_TIMEOUT, CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
};

/// How long a close frame may take to reach a jammed socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session, at shutdown, waits for the answers to the
/// submissions it already made and writes what it has queued.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

pub(super) struct Session {
    state: AppState,
    principal: Principal,
    feed: Feed,
    outbox: Outbox<Message>,
    /// Messages the client may still send this second.
    budget: TokenBucket,
    /// Submissions waiting for Redis: the session reads the next message
    /// and pushes events meanwhile.
    submits: FuturesUnordered<BoxFuture<'static, SubmitDone>>,
    /// The events of each job whose `accepted` is not sent yet, held back
    /// so that a client never gets an event of a job id it was not told.
    held: HashMap<JobId, Vec<FeedEvent>>,
    /// The client negotiated `jobgate.v1`: it gets `hello`, `auth_ok` and
    /// `subscribed`.
    greets: bool,
}

/// A submission's outcome, for the session that sent it.
struct SubmitDone {
    request_id: String,
    /// The job's place in a `submit_batch`.
    index: Option<usize>,
    job_id: JobId,
    result: Result<Accepted, ApiError>,
}

/// Why a session ends.
enum End {
    ClientGone,
    Close(u16, &'static str),
}

impl Session {
    pub(super) async fn run(
        socket: WebSocket,
        state: AppState,
        principal: Principal,
        greets: bool,
    ) {
        let (mut sink, mut incoming) = socket.split();
        let feed = state.feed();
        let budget = TokenBucket::new(state.config.ws_messages_per_s);
        let outbox = Outbox::new(state.config.outbound_queue);
        let mut session = Session {
            state,
            principal,
            feed,
            outbox,
            budget,
            submits: FuturesUnordered::new(),
            held: HashMap::new(),
            greets,
        };
        let end = match session.greet() {
            Ok(()) => session.serve(&mut sink, &mut incoming).await,
            Err(end) => end,
        };
        drop(session);
        match end {
            // Goes past the queue: the queue may be full of what the client
            // did not read.
            End::Close(code, reason) => send_close(sink, Some((code, reason))).await,
            End::ClientGone => send_close(sink, None).await,
        }
    }

    /// At shutdown, before the close 1001: answers the submissions this
    /// session already made (their jobs are being created; a client must
    /// learn their ids) and writes what is queued, within
    /// [`SHUTDOWN_DRAIN`]. Nothing more is read from the client.
    async fn drain(&mut self, sink: &mut SplitSink<WebSocket, Message>) -> End {
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
            while let Some(done) = self.submits.next().await {
                Box::pin(self.submitted(done)).await?;
            }
            self.outbox.write(sink).await.map_err(|_| End::ClientGone)
        })
        .await;
        match drained {
            Ok(Err(end)) => end,
            Ok(Ok(())) | Err(_) => End::Close(CLOSE_GOING_AWAY, "server shutting down"),
        }
    }

    /// Queues `hello`, the first frame of a `jobgate.v1` session.
    fn greet(&mut self) -> Result<(), End> {
        if !self.greets {
            return Ok(());
        }
        let config = &self.state.config;
        let interval = config.ws_ping_interval();
        let hello = ServerMessage::Hello {
            protocol: SUBPROTOCOL.to_owned(),
            session_id: uuid::Uuid::new_v4().to_string(),
            ping_interval_ms: interval.as_millis() as u64,
            // The gateway closes a session whose pong is this late (4000).
            ping_timeout_ms: (interval * 2).as_millis() as u64,
            token_expires_in_ms: expires_in_ms(self.principal.expires_at),
            limits: SessionLimits {
                max_subscriptions: config.max_subscriptions_per_session,
                messages_per_s: config.ws_messages_per_s,
                max_message_bytes: config.max_body_bytes,
                outbound_queue: config.outbound_queue,
            },
        };
        self.reply(&hello)
    }

    async fn serve(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        incoming: &mut SplitStream<WebSocket>,
    ) -> End {
        let interval = self.state.config.ws_ping_interval();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last_pong = Instant::now();
        // Both waits are made once per session, not per message. Shutdown
        // is watched through the session's own child token: polling the
        // token every session shares takes its lock, and thousands of
        // sessions would contend for it on every event.
        let shutdown = self.state.shutdown.child_token().cancelled_owned();
        tokio::pin!(shutdown);
        let mut expires_at = self.principal.expires_at;
        let expiry = tokio::time::sleep_until(expiry_deadline(expires_at));
        tokio::pin!(expiry);
        let mut flush = false;
        let mut yielded = false;
        loop {
            if self.principal.expires_at != expires_at {
                // `auth` brought a fresh token.
                expires_at = self.principal.expires_at;
                expiry.as_mut().reset(expiry_deadline(expires_at));
            }
            // Biased: what is ready is handled before anything is written,
            // so the frames it brings (the events of one pub/sub read, the
            // `accepted` of one submission batch) go out in one write
            // instead of one each. Once nothing is ready the session yields
            // once, letting the tasks that feed it (the hub's link, the
            // submission batcher) hand over what they are holding, and
            // writes when nothing is ready after that (`flush`). A backlog
            // is written as it grows, before the outbox fills. Handling a
            // message or a submission's answer is boxed: its state (Redis
            // reads and writes) would otherwise be part of the session's for
            // as long as the session is open, idle or not.
            tokio::select! {
                biased;
                () = &mut shutdown => return self.drain(sink).await,
                () = &mut expiry, if expires_at.is_some() => return End::Close(CLOSE_TOKEN_EXPIRED, "token expired; send auth before it expires"),
                written = self.outbox.write(sink), if flush || self.outbox.is_backlogged() => {
                    if written.is_err() { return End::ClientGone; }
                    flush = false;
                    yielded = false;
                }
                item = self.feed.next() => {
                    let outcome = match item {
                        Some(FeedItem::Event(event)) => self.deliver(event),
                        Some(FeedItem::Overflowed) => Err(self.slow_consumer()),
                        Some(FeedItem::Unavailable(error)) => {
                            tracing::warn!(%error, "session could not read missed events; retrying");
                            Ok(())
                        }
                        None => Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
                    };
                    if let Err(end) = outcome { return end; }
                }
                Some(done) = self.submits.next(), if !self.submits.is_empty() => {
                    if let Err(end) = Box::pin(self.submitted(done)).await { return end; }
                }
                frame = incoming.next() => {
                    let outcome = match frame {
                        Some(Ok(Message::Text(text))) => Box::pin(self.handle(&text)).await,
                        Some(Ok(Message::Binary(_))) => self.reply(&ServerMessage::error(
                            None, None, ErrorCode::InvalidMessage, "frames must be JSON text frames")),
                        Some(Ok(Message::Pong(_))) => { last_pong = Instant::now(); Ok(()) }
                        Some(Ok(Message::Ping(_))) => Ok(()), // answered by the protocol layer
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::ClientGone,
                    };
                    if let Err(end) = outcome { return end; }
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > interval * 2 {
                        return End::Close(CLOSE_PING_TIMEOUT, "ping unanswered");
                    }
                    if let Err(end) = self.send(Message::Ping(Default::default())) { return end; }
                }
                () = std::future::ready(()), if !flush && self.outbox.has_work() => {
                    if yielded {
                        flush = true;
                    } else {
                        yielded = true;
                        tokio::task::yield_now().await;
                    }
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
            ClientMessage::Submit(frame) => self.submit(frame),
            ClientMessage::SubmitBatch(frame) => self.submit_batch(frame),
            ClientMessage::Subscribe { job_id, after } => {
                self.subscribe(job_id, after, self.greets).await
            }
            ClientMessage::Unsubscribe { job_id } => self.unsubscribe(job_id),
            ClientMessage::Cancel { job_id, request_id } => self.cancel(job_id, request_id).await,
            ClientMessage::Auth { token, request_id } => self.refresh(&token, request_id),
            ClientMessage::Ping => self.reply(&ServerMessage::Pong),
        }
    }

    /// A fresh token for the same owner extends the session (answered with
    /// `auth_ok` on a `jobgate.v1` session). A refused one changes nothing:
    /// the session ends when the token it has expires.
    fn refresh(&mut self, token: &str, request_id: Option<String>) -> Result<(), End> {
        if let Some(verifier) = &self.state.auth {
            match verifier.verify(token) {
                Ok(principal) if principal.owner == self.principal.owner => {
                    self.principal = principal;
                }
                Ok(_) => {
                    let error = unauthorized("the token is for another owner");
                    return self.error(request_id, None, error);
                }
                Err(error) => return self.error(request_id, None, error),
            }
        }
        if !self.greets {
            return Ok(());
        }
        self.reply(&ServerMessage::AuthOk {
            request_id,
            token_expires_in_ms: expires_in_ms(self.principal.expires_at),
        })
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

    /// Sends one event, or holds it while its job's `accepted` is not sent.
    fn deliver(&mut self, event: FeedEvent) -> Result<(), End> {
        if let Some(held) = self.held.get_mut(&event.job_id) {
            held.push(event);
            return Ok(());
        }
        if event.event.is_terminal() {
            // Nothing follows: free the session's watch.
            self.feed.unwatch(&event.job_id);
        }
        let text = push::event_text(&self.state.metrics, &event);
        self.send_text(text)
    }

    /// Starts a submission; its answer is sent when it is in
    /// ([`Session::submitted`]). Submissions of one session run
    /// concurrently, so their answers may come in another order than the
    /// messages; each job's events come after its `accepted`.
    fn submit(&mut self, frame: SubmitFrame) -> Result<(), End> {
        let item = BatchItem {
            job: frame.job,
            idempotency_key: frame.idempotency_key,
            traceparent: frame.traceparent,
            tracestate: frame.tracestate,
        };
        self.submit_job(frame.request_id, None, item, Turn::default())
    }

    /// Starts every job of a `submit_batch`, each answered on its own with
    /// its `index` (`accepted`, or an `error` that refuses that job alone).
    /// A batch of no jobs or more than the limit is refused whole. A job
    /// whose idempotency key an earlier job of the batch has is submitted
    /// once that one is done, so the earlier one creates the job.
    fn submit_batch(&mut self, frame: SubmitBatchFrame) -> Result<(), End> {
        let SubmitBatchFrame {
            request_id, jobs, ..
        } = frame;
        if let Err(error) = check_batch_size(jobs.len(), self.state.config.max_batch_jobs) {
            return self.error(Some(request_id), None, error.into());
        }
        for (index, (item, turn)) in submit::batch_items(&jobs).into_iter().enumerate() {
            match item {
                Ok(item) => self.submit_job(request_id.clone(), Some(index), item, turn)?,
                Err(error) => self.reply(&ServerMessage::Error {
                    request_id: Some(request_id.clone()),
                    index: Some(index),
                    job_id: None,
                    code: error.code,
                    message: error.message,
                    field: None,
                })?,
            }
        }
        Ok(())
    }

    /// Starts one job's submission (of a `submit`, or of a batch at `index`).
    fn submit_job(
        &mut self,
        request_id: String,
        index: Option<usize>,
        item: BatchItem,
        turn: Turn,
    ) -> Result<(), End> {
        if let Err(error) = self.watch_limit() {
            return self.error_at(request_id, index, error);
        }
        // Watch before the job exists, so its first event cannot be missed:
        // the job is created only once Redis confirms the subscription. An
        // id from the warm pool has its channel subscribed already.
        let warm = self.state.warm_ids.take();
        let job_id = warm.unwrap_or_default();
        let subscribed = self.feed.expect(job_id);
        if warm.is_some() {
            self.state.warm_ids.release(job_id);
        }
        self.held.insert(job_id, Vec::new());
        // The message is the request: its span continues the client's trace.
        let span = trace::ws_submit_span(
            &request_id,
            item.traceparent.as_deref(),
            item.tracestate.as_deref(),
        );
        let submission = Submission::of_item(job_id, item);
        let (state, principal) = (self.state.clone(), self.principal.clone());
        self.submits.push(Box::pin(async move {
            let result = match subscribed.await {
                Ok(()) => {
                    submit::submit_in_turn(&state, &principal, submission, turn)
                        .instrument(span)
                        .await
                }
                Err(error) => Err(error.into()),
            };
            SubmitDone {
                request_id,
                index,
                job_id,
                result,
            }
        }));
        Ok(())
    }

    /// Answers a submission, then sends the events held for its job.
    async fn submitted(&mut self, done: SubmitDone) -> Result<(), End> {
        let SubmitDone {
            request_id,
            index,
            job_id,
            result,
        } = done;
        let held = self.held.remove(&job_id).unwrap_or_default();
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(error) => {
                self.feed.unwatch(&job_id);
                return self.error_at(request_id, index, error);
            }
        };
        self.reply(&ServerMessage::Accepted {
            request_id,
            index,
            job_id: accepted.job_id,
            trace_id: accepted.trace_id,
        })?;
        if accepted.replayed {
            // The job exists from an earlier submit: follow it from the start.
            self.feed.unwatch(&job_id);
            return self
                .subscribe(accepted.job_id, EventPosition::START, false)
                .await;
        }
        held.into_iter().try_for_each(|event| self.deliver(event))
    }

    /// Watches a job from after `after`. With `answer` (a client's
    /// `subscribe` on a `jobgate.v1` session) the watch is answered with
    /// `subscribed` before anything it replays.
    async fn subscribe(
        &mut self,
        id: JobId,
        after: EventPosition,
        answer: bool,
    ) -> Result<(), End> {
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
        if answer {
            self.reply(&ServerMessage::Subscribed {
                job_id: id,
                status: record.snapshot.status,
                epoch: record.snapshot.epoch,
                seq: record.snapshot.seq,
            })?;
        }
        if let Some(first_seq) = start.truncated_from {
            let snapshot = serde_json::value::to_raw_value(&record.snapshot)
                .map_err(|_| End::Close(CLOSE_INTERNAL_ERROR, "internal error"))?;
            self.reply(&ServerMessage::HistoryTruncated {
                job_id: id,
                after: after.seq,
                first_seq,
                snapshot,
            })?;
        }
        if record.snapshot.status.is_terminal() && record.position() <= after {
            // Nothing follows (`subscribed` told a jobgate.v1 client so).
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
        &mut self,
        request_id: Option<String>,
        job_id: Option<&str>,
        error: ApiError,
    ) -> Result<(), End> {
        self.reply(&ServerMessage::Error {
            request_id,
            index: None,
            job_id: job_id.map(str::to_owned),
            code: error.code,
            message: error.message,
            field: error.field,
        })
    }

    /// A submission's error, with the job's `index` when it is one of a batch.
    fn error_at(
        &mut self,
        request_id: String,
        index: Option<usize>,
        error: ApiError,
    ) -> Result<(), End> {
        self.reply(&ServerMessage::Error {
            request_id: Some(request_id),
            index,
            job_id: None,
            code: error.code,
            message: error.message,
            field: error.field,
        })
    }

    fn reply(&mut self, message: &ServerMessage) -> Result<(), End> {
        self.send_text(Utf8Bytes::from(message.to_json()))
    }

    fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
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

    /// Queues a frame to be written; a full queue means the client is not
    /// reading.
    fn send(&mut self, message: Message) -> Result<(), End> {
        if self.outbox.push(message) {
            Ok(())
        } else {
            Err(self.slow_consumer())
        }
    }
}

/// Milliseconds until a credential that expires at `expires_at` (Unix
/// seconds) runs out; `None` for one that does not expire.
fn expires_in_ms(expires_at: Option<u64>) -> Option<u64> {
    let unix_now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    expires_at.map(|at| at.saturating_mul(1000).saturating_sub(unix_now_ms))
}

/// When a credential that expires at `expires_at` (Unix seconds) runs out;
/// a credential without expiry gets a deadline that is never awaited.
fn expiry_deadline(expires_at: Option<u64>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let Some(expires_at) = expires_at else {
        return now;
    };
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    now + Duration::from_secs(expires_at.saturating_sub(unix_now))
}

/// Sends a close frame (or just closes), giving a jammed socket
/// [`CLOSE_TIMEOUT`] to take it.
async fn send_close(mut sink: SplitSink<WebSocket, Message>, reason: Option<(u16, &'static str)>) {
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
