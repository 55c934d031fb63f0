//! jobgate's gateway: the HTTP, WebSocket and SSE API over the job store.
//!
//! One module per feature, each with its own `router()`; [`app`] merges
//! them. Tests call [`app`] directly (oneshot) or [`serve`] on port 0.
//!
//! **This crate knows no Redis command**: everything Redis goes through
//! `jobgate-store`.

pub mod auth;
mod batcher;
mod client_logs;
pub mod config;
mod dashboard;
mod dead_letters;
pub mod error;
mod extract;
mod health;
mod job_list;
mod jobs;
mod jobs_batch;
mod kinds;
mod legacy;
mod limits;
pub mod metrics;
mod push;
mod queues;
mod sse;
pub mod state;
mod submit;
pub mod telemetry;
pub mod trace;
mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use jobgate_proto::ErrorCode;
use jobgate_store::{EventHub, HubSettings, JobStore, StoreSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;
pub use ws::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_PING_TIMEOUT, CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
};

/// The whole API.
pub fn app(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(jobs::router())
        .merge(jobs_batch::router())
        .merge(job_list::router())
        .merge(kinds::router())
        .merge(sse::router())
        .merge(ws::router())
        .merge(legacy::router())
        .merge(health::router())
        .merge(dashboard::router())
        .merge(client_logs::router())
        .merge(dead_letters::router())
        .merge(queues::router())
        .route_layer(axum::middleware::from_fn(trace::request_span))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(cors(&state.config.allowed_origins))
        .with_state(state)
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] jobgate_store::StoreError),
}

/// CORS for the configured dashboard origins (none: same-origin only).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::LOCATION,
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Builds the state for `config`: the Redis connection, the store, the token
/// verifier, the event hub, the delayed-job mover and the job outcome
/// counts' writer (whose tasks run until `shutdown`). Nothing connects yet.
pub fn build_state(config: Config, shutdown: CancellationToken) -> Result<AppState, StartError> {
    let auth = auth::Verifier::from_config(&config)?.map(std::sync::Arc::new);
    let (redis, _) = jobgate_store::open(&config.redis_url)?;
    let store = JobStore::new(
        redis,
        StoreSettings {
            retention: config.retention(),
            history_max: config.history_max,
            owner_index_max: config.owner_index_max,
        },
    );
    store.keep_connected(shutdown.clone());
    let hub = EventHub::start(
        jobgate_store::seeds(&config.redis_url)?,
        HubSettings {
            subscription_capacity: config.outbound_queue,
            ..HubSettings::default()
        },
        shutdown.clone(),
    );
    jobgate_store::spawn_delayed_mover(store.clone(), shutdown.clone());
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    jobgate_store::spawn_outcome_flusher(store.clone(), shutdown.clone());
    let metrics = std::sync::Arc::new(metrics::Metrics::default());
    let batcher = batcher::Batcher::start(store.clone(), submit::submit_rate(&config));
    let warm_ids = jobgate_store::WarmIds::start(hub.clone(), WARM_IDS, shutdown.clone());
    Ok(AppState {
        batcher,
        warm_ids,
        client_logs: None,
        metrics,
        owner_connections: std::sync::Arc::default(),
        auth,
        connections,
        sessions: tokio_util::task::TaskTracker::new(),
        config: std::sync::Arc::new(config),
        store,
        hub,
        shutdown,
    })
}

/// Serves `state` on `listener` until `shutdown` fires, then lets in-flight
/// requests finish (sessions and streams end on the same signal: each
/// WebSocket session writes its close frame before this returns) and writes
/// the job outcome counts they made.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let shutdown = state.shutdown.clone();
    let store = state.store.clone();
    let sessions = state.sessions.clone();
    // Events are small frames sent as they happen: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    // No upgrade is accepted any more (the listener is closed).
    sessions.close();
    sessions.wait().await;
    let flushed = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, store.flush_outcomes()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("the last job outcome counts could not be written");
    }
    served
}

/// Job ids kept with their channels subscribed ahead (`WarmIds`): enough
/// for a burst of WebSocket submits between two refills.
const WARM_IDS: usize = 32;

/// How long `serve` waits, once every request has finished, to write the
/// job outcome counts they made.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
