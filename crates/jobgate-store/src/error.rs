//! What can go wrong talking to Redis, classified by type.

use redis::{ErrorKind, RedisError, ServerErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, dropped, timed out, loading, down).
    /// Callers answer `503 redis_unavailable`.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a write for lack of memory (`OOM`, at `maxmemory`):
    /// nothing was written. Callers answer `503 redis_out_of_memory`.
    #[error("redis is out of memory: {0}")]
    OutOfMemory(String),
    /// Redis answered, but not as the protocol says it should.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Any other error Redis reported.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        if is_out_of_memory(&error) {
            return Self::OutOfMemory(error.to_string());
        }
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

    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::OutOfMemory(_))
    }
}

/// The error code Redis gives a write it refuses at `maxmemory`.
pub(crate) const OOM_CODE: &str = "OOM";

/// True when Redis refused the request (or, in a pipeline, one of its
/// commands) with the `OOM` error code. A script whose first write is
/// refused fails with the same code.
pub(crate) fn is_out_of_memory(error: &RedisError) -> bool {
    if error.code() == Some(OOM_CODE) {
        return true;
    }
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == OOM_CODE))
}
