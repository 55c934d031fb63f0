//! The WebSocket API (`GET /v1/ws`): the upgrade, with its origin check,
//! connection limits and subprotocol (`jobgate.v1`: `hello` and `auth_ok`),
//! and the close codes a client may see.
//!
//! - [`session`]: one task per session reads the client's frames and the
//!   session's feed, runs submissions concurrently and writes to the socket;
//! - [`outbox`]: the session's bounded queue of frames to send, written to
//!   the socket in batches.

mod outbox;
mod session;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::get;
use jobgate_proto::ErrorCode;
use jobgate_proto::ws::SUBPROTOCOL;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::Gauge;
use crate::state::AppState;
use session::Session;

/// Close code for a session that fell too far behind.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a session whose pings went unanswered.
pub const CLOSE_PING_TIMEOUT: u16 = 4000;
/// Close code for a session whose token expired without an `auth` refresh.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code (RFC 6455) when the server shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code (RFC 6455) when the server meets an error it cannot answer.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Bytes of a session's socket read buffer. Small: thousands of mostly
/// idle sessions must stay cheap (the default holds 128 KiB each).
const READ_BUFFER_BYTES: usize = 1024;

/// Bytes of frames a session gathers before it writes them without waiting
/// for its flush. Nothing is held in advance (the buffer grows as frames
/// come), so an idle session pays nothing for it; a session's writes of a
/// few frames each, the common case, go out whole, in one send.
const WRITE_BATCH_BYTES: usize = 8 * 1024;

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
    // Chosen only when the client offers it, and echoed in the handshake; a
    // client that offers none gets the frames it always got.
    let ws = ws.protocols([SUBPROTOCOL]);
    let greets = ws.selected_protocol().is_some();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(async move {
                let _open = Gauge::websocket_session(&state.metrics);
                Session::run(socket, state, principal, greets).await;
                drop(permit);
            })
        }))
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
