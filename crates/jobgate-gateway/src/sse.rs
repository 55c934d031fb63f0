//! Server-Sent Events: one job's events (`/v1/jobs/{id}/events`) and all of
//! the caller's (`/v1/events`). Both resume from `Last-Event-ID`: a job
//! stream's ids are the event's position (`<seq>` in the job's first epoch,
//! `<epoch>:<seq>` after a failover started another), the owner stream's
//! the event's `ts`.

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
use jobgate_proto::{ErrorCode, EventPosition, JobId};
use jobgate_store::{Feed, FeedEvent, FeedItem, JobRecord};
use serde::Deserialize;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JobPath, Query};
use crate::metrics::Gauge;
use crate::push;
use crate::state::AppState;

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

/// Where a job stream resumes: `Last-Event-ID` (`<seq>` or
/// `<epoch>:<seq>`) wins over `?after=` (a seq of the first epoch).
fn resume_position(headers: &HeaderMap, query: &AfterQuery) -> Result<EventPosition, ApiError> {
    match last_event_id(headers)? {
        Some(id) => id.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Last-Event-ID must be <seq> or <epoch>:<seq>",
            )
        }),
        None => Ok(EventPosition::new(
            jobgate_proto::FIRST_EPOCH,
            query.after.unwrap_or(0),
        )),
    }
}

/// Where the owner stream resumes: `Last-Event-ID` (an event's `ts`) wins
/// over `?after=`; 0 for a stream that does not resume.
fn resume_ts(headers: &HeaderMap, query: &AfterQuery) -> Result<u64, ApiError> {
    match last_event_id(headers)? {
        Some(id) => id.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Last-Event-ID must be an integer",
            )
        }),
        None => Ok(query.after.unwrap_or(0)),
    }
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("last-event-id")
        .map(|value| {
            value.to_str().map(str::trim).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "Last-Event-ID must be printable ASCII",
                )
            })
        })
        .transpose()
}

async fn job_events(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(job_id): JobPath,
    Query(query): Query<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_position(&headers, &query)?;
    let permit = state.connection_permit(&principal)?;
    let mut feed = state.feed();
    let start = feed.watch(job_id, after).await?;
    let record = match start.record {
        Some(record) if principal.owns(&record.owner) => record,
        Some(_) => return Err(ApiError::not_found()),
        None => return Err(ApiError::missing_job(&job_id, state.config.retention())),
    };
    if record.snapshot.status.is_terminal() && record.position() <= after {
        // Nothing can follow: 204 tells EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut lead = VecDeque::new();
    if let Some(first_seq) = start.truncated_from {
        lead.push_back(truncated_event(job_id, after.seq, first_seq, &record));
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
    let since_ts = resume_ts(&headers, &query)?;
    let permit = state.connection_permit(&principal)?;
    // After a reconnect, the caller's recent jobs are read from their start
    // and what is stamped before the cursor is dropped below: replaying one
    // event too many is harmless, the client de-duplicates by
    // `(job_id, epoch, seq)`.
    let feed = Feed::for_owner(
        state.store.clone(),
        state.hub.clone(),
        &principal.owner,
        (since_ts > 0).then_some(since_ts),
    )
    .await?;
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
    /// `/v1/events` uses the event's `ts` as its id, a job stream its
    /// position.
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
        let id = if self.id_is_ts {
            event.ts.to_string()
        } else {
            event.position().to_string()
        };
        Event::default()
            .id(id)
            .event(event.event.as_str())
            .data(push::event_text(&self.metrics, event).as_str())
    }
}
