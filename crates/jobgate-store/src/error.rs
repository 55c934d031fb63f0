//! What can go wrong talking to Redis, classified by type.

use redis::{ErrorKind, RedisError, ServerErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, dropped, timed out, loading, down).
    /// Callers answer `503 redis_unavailable`.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered, but not as the protocol says it should.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Any other error Redis reported.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        let unavailable = error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_timeout()
            || error.is_unrecoverable_error()
            || matches!(
                error.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
            );
        if unavailable {
            Self::Unavailable(error.to_string())
        } else {
            Self::Redis(error)
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
