//! Server-Sent Events: one job's events (`/v1/jobs/{id}/events`) and all of
//! the caller's (`/v1/events`). Both resume from `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use jobgate_proto::{ErrorCode, JobId};
use jobgate_store::{Feed, FeedEvent, FeedItem, JobRecord};
use serde::Deserialize;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JobPath, Query};
use crate::metrics::Gauge;
use crate::push;
use crate::state::AppState;

/// Most recent jobs whose events `/v1/events` replays after a reconnect.
const OWNER_REPLAY_JOBS: usize = 200;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/events", get(owner_events))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterQuery {
    after: Option<u64>,
    /// Accepted here so browsers can authenticate EventSource.
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// The cursor to resume from: `Last-Event-ID` wins over `?after=`.
fn resume_point(headers: &HeaderMap, query: &AfterQuery) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "Last-Event-ID must be an integer",
                )
            }),
        None => Ok(query.after.unwrap_or(0)),
    }
}

async fn job_events(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(job_id): JobPath,
    Query(query): Query<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_point(&headers, &query)?;
    let permit = state.connection_permit(&principal)?;
    let mut feed = state.feed();
    let start = feed.watch(job_id, after).await?;
    let record = match start.record {
        Some(record) if principal.owns(&record.owner) => record,
        Some(_) => return Err(ApiError::not_found()),
        None => return Err(ApiError::missing_job(&job_id, state.config.retention())),
    };
    if record.snapshot.status.is_terminal() && record.snapshot.seq <= after {
        // Nothing can follow: 204 tells EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut lead = VecDeque::new();
    if let Some(first_seq) = start.truncated_from {
        lead.push_back(truncated_event(job_id, after, first_seq, &record));
    }
    let events = EventStream {
        feed,
        lead,
        shutdown: Box::pin(state.shutdown.child_token().cancelled_owned()),
        ends_after_terminal: true,
        id_is_ts: false,
        since_ts: 0,
        _permit: permit,
        metrics: std::sync::Arc::clone(&state.metrics),
    };
    Ok(sse(events.into_stream()))
}

fn truncated_event(job_id: JobId, after: u64, first_seq: u64, record: &JobRecord) -> Event {
    let data = serde_json::json!({
        "job_id": job_id,
        "after": after,
        "first_seq": first_seq,
        "snapshot": record.snapshot,
    });
    Event::default()
        .event("history_truncated")
        .data(data.to_string())
}

async fn owner_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since_ts = resume_point(&headers, &query)?;
    let permit = state.connection_permit(&principal)?;
    let mut feed =
        Feed::for_owner(state.store.clone(), state.hub.clone(), &principal.owner).await?;
    if since_ts > 0 {
        // Replay what the caller may have missed: events of its recent jobs
        // stamped at or after the cursor (the client de-duplicates by
        // `(job_id, seq)`, so replaying one event too many is harmless).
        let window_start = since_ts.saturating_sub(state.config.retention().as_millis() as u64);
        let jobs = state
            .store
            .owner_jobs_since(&principal.owner, window_start, OWNER_REPLAY_JOBS)
            .await?;
        for job_id in jobs {
            feed.replay(job_id, 0).await?;
        }
    }
    let events = EventStream {
        feed,
        lead: VecDeque::new(),
        shutdown: Box::pin(state.shutdown.child_token().cancelled_owned()),
        ends_after_terminal: false,
        id_is_ts: true,
        since_ts,
        _permit: permit,
        metrics: std::sync::Arc::clone(&state.metrics),
    };
    Ok(sse(events.into_stream()))
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Tell proxies (nginx) not to buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// The state of one SSE stream.
struct EventStream {
    feed: Feed,
    lead: VecDeque<Event>,
    /// Made once per stream, on the stream's own child of the shutdown
    /// token: polling the token every connection shares takes its lock on
    /// every event.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// A one-job stream ends after the job's terminal event.
    ends_after_terminal: bool,
    /// `/v1/events` uses the event's `ts` as its id, a job stream its `seq`.
    id_is_ts: bool,
    /// Events stamped before this are not sent (replay after a reconnect).
    since_ts: u64,
    /// The connection's place under `JOBGATE_MAX_CONNECTIONS`.
    _permit: crate::state::ConnectionPermit,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl EventStream {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        let open = Gauge::sse_stream(&self.metrics);
        stream::unfold(
            (self, false, open),
            |(mut state, finished, open)| async move {
                if let Some(event) = state.lead.pop_front() {
                    return Some((Ok(event), (state, finished, open)));
                }
                if finished {
                    return None;
                }
                loop {
                    let item = tokio::select! {
                        () = state.shutdown.as_mut() => return None,
                        item = state.feed.next() => item,
                    };
                    match item? {
                        FeedItem::Event(event) if event.ts < state.since_ts => continue,
                        FeedItem::Event(event) => {
                            let last = state.ends_after_terminal && event.event.is_terminal();
                            let sse_event = state.to_sse(&event);
                            return Some((Ok(sse_event), (state, last, open)));
                        }
                        FeedItem::Overflowed => {
                            state
                                .metrics
                                .slow_consumer_closes
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!("SSE client too slow; ending its stream so it resumes");
                            return None;
                        }
                        FeedItem::Unavailable(error) => {
                            tracing::warn!(%error, "SSE stream could not read missed events; retrying");
                        }
                    }
                }
            },
        )
    }

    fn to_sse(&self, event: &FeedEvent) -> Event {
        let id = if self.id_is_ts { event.ts } else { event.seq };
        Event::default()
            .id(id.to_string())
            .event(event.event.as_str())
            .data(push::event_text(&self.metrics, event).as_str())
    }
}
