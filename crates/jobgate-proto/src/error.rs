//! The error body every API answers with, and its stable codes.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Clients branch on these, so a
/// variant is never renamed; the HTTP status for each lives in the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not JSON, or not a JSON object.
    InvalidJson,
    /// A WebSocket frame has no known `type`.
    InvalidMessage,
    /// A field is missing, of the wrong type, or out of range.
    InvalidRequest,
    /// No worker has registered this job kind.
    UnknownKind,
    /// The id is not a job id.
    InvalidJobId,
    /// No such job, or not the caller's.
    NotFound,
    /// The job is already terminal.
    NotCancellable,
    /// The WebSocket session is not subscribed to that job.
    NotSubscribed,
    /// The body's content type is not JSON.
    UnsupportedMediaType,
    /// The body or frame is over the size limit.
    PayloadTooLarge,
    /// No route for this method and path.
    MethodNotAllowed,
    /// The history no longer holds the events asked for, and the job is gone.
    HistoryExpired,
    /// The queue holds as many jobs as it may; retry after `Retry-After`.
    QueueFull,
    /// The idempotency key was used before with a different request.
    IdempotencyConflict,
    /// The gateway holds as many connections as it may.
    TooManyConnections,
    /// No valid credential: missing, malformed, expired or for another
    /// audience or issuer.
    Unauthorized,
    /// Too many requests from this owner or session; retry after `Retry-After`.
    RateLimited,
    /// The page's origin may not open a WebSocket session or call the API.
    ForbiddenOrigin,
    /// The credential is valid but lacks the scope the request needs (the
    /// admin API needs `jobgate:admin`).
    Forbidden,
    /// Redis cannot be reached; nothing was written.
    RedisUnavailable,
    /// Redis is at its memory limit and refuses writes; nothing was
    /// written. Retry after `Retry-After`.
    RedisOutOfMemory,
    /// The connection did not read its events fast enough.
    SlowConsumer,
    /// The server is shutting down.
    ShuttingDown,
    /// Anything else; the details are only in the server's log.
    Internal,
    /// A dead letter's job is neither `failed` nor waiting to be re-enqueued.
    NotRetryable,
    /// The params break the JSON Schema a worker registered for the kind.
    InvalidParams,
}

impl ErrorCode {
    /// Every code, for documents and tests.
    pub const ALL: [Self; 26] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::InvalidRequest,
        Self::UnknownKind,
        Self::InvalidJobId,
        Self::NotFound,
        Self::NotCancellable,
        Self::NotSubscribed,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::MethodNotAllowed,
        Self::HistoryExpired,
        Self::QueueFull,
        Self::IdempotencyConflict,
        Self::TooManyConnections,
        Self::Unauthorized,
        Self::RateLimited,
        Self::ForbiddenOrigin,
        Self::Forbidden,
        Self::RedisUnavailable,
        Self::RedisOutOfMemory,
        Self::SlowConsumer,
        Self::ShuttingDown,
        Self::Internal,
        Self::NotRetryable,
        Self::InvalidParams,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::InvalidRequest => "invalid_request",
            Self::UnknownKind => "unknown_kind",
            Self::InvalidJobId => "invalid_job_id",
            Self::NotFound => "not_found",
            Self::NotCancellable => "not_cancellable",
            Self::NotSubscribed => "not_subscribed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::HistoryExpired => "history_expired",
            Self::QueueFull => "queue_full",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::TooManyConnections => "too_many_connections",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::Forbidden => "forbidden",
            Self::RedisUnavailable => "redis_unavailable",
            Self::RedisOutOfMemory => "redis_out_of_memory",
            Self::SlowConsumer => "slow_consumer",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::NotRetryable => "not_retryable",
            Self::InvalidParams => "invalid_params",
        }
    }
}

/// `{code, message, field?}`: the body of every HTTP error and the core of
/// a WebSocket `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The offending field as a JSON Pointer into the job's params (`/strike`),
    /// for `invalid_params`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }
}
