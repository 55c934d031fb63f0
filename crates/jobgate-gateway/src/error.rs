//! The one API error type. Every handler returns it; it renders as
//! `{code, message}` with the status from [`status_for`], the single table
//! mapping codes to statuses. 5xx bodies are generic: the cause is logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobgate_proto::{ErrorBody, ErrorCode};
use jobgate_store::StoreError;

/// The HTTP status of each error code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::InvalidJobId => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::InvalidRequest | ErrorCode::UnknownKind | ErrorCode::InvalidParams => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::NotFound | ErrorCode::NotSubscribed => StatusCode::NOT_FOUND,
        ErrorCode::HistoryExpired => StatusCode::GONE,
        ErrorCode::NotCancellable | ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::QueueFull | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ForbiddenOrigin | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::RedisUnavailable | ErrorCode::ShuttingDown | ErrorCode::TooManyConnections => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::RedisOutOfMemory => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SlowConsumer => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::NotRetryable => StatusCode::CONFLICT,
    }
}

/// How long a client should wait before retrying a write Redis refused for
/// lack of memory: memory is freed by jobs expiring or an operator, not in
/// a moment.
const OUT_OF_MEMORY_RETRY_AFTER_S: u64 = 5;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for `Retry-After`, when the client should come back later.
    pub retry_after_s: Option<u64>,
    /// The offending field, a JSON Pointer into the job's params
    /// (`invalid_params`).
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_s: None,
            field: None,
        }
    }

    /// The same error, telling the client when to retry.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such job")
    }

    /// `history_expired` when `job_id` is older than the retention period
    /// (its record and history are gone for good), else `not_found`.
    pub fn missing_job(job_id: &jobgate_proto::JobId, retention: std::time::Duration) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        match job_id.created_at_ms() {
            Some(created) if now_ms.saturating_sub(created) > retention.as_millis() as u64 => {
                Self::new(
                    ErrorCode::HistoryExpired,
                    "the job is older than the retention period: its events are no longer kept",
                )
            }
            _ => Self::not_found(),
        }
    }

    pub fn invalid_job_id() -> Self {
        Self::new(
            ErrorCode::InvalidJobId,
            "a job id is a lower-case hyphenated UUID",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            field: self.field.clone(),
            ..ErrorBody::new(self.code, self.message.clone())
        }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self::new(body.code, body.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_out_of_memory() {
            tracing::warn!(%error, "redis refused a write: out of memory");
            Self::new(
                ErrorCode::RedisOutOfMemory,
                "the job store is full; nothing was changed, try again later",
            )
            .retry_after(OUT_OF_MEMORY_RETRY_AFTER_S)
        } else if error.is_unavailable() {
            tracing::warn!(%error, "redis unavailable");
            Self::new(
                ErrorCode::RedisUnavailable,
                "the job store is unavailable; nothing was changed, try again",
            )
        } else {
            tracing::error!(%error, "store error");
            Self::new(ErrorCode::Internal, "internal error")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_for(self.code);
        let mut response = (status, axum::Json(self.body())).into_response();
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        let retry_after = match (self.retry_after_s, status) {
            (Some(seconds), _) => Some(seconds),
            (None, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(seconds));
        }
        response
    }
}
