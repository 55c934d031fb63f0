//! What can go wrong talking to Redis, classified by type.

use redis::{ErrorKind, RedisError, ServerErrorKind};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, dropped, timed out, loading, down;
    /// on a cluster also: the slot's master is failing over or moving, so
    /// the library's retries still found no node to answer). Callers answer
    /// `503 redis_unavailable`.
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
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                            // Still redirected once the cluster
                            // connection's retries ran out: a failover
                            // or a slot migration in progress.
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
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

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    fn server_error(text: &'static str) -> RedisError {
        // A reply as Redis sends it: `-OOM command not allowed …`.
        let value = redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("reply");
        match value {
            redis::Value::ServerError(error) => error.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn an_oom_refusal_is_out_of_memory_by_its_code() {
        let oom = server_error("OOM command not allowed when used memory > 'maxmemory'.");
        assert!(is_out_of_memory(&oom));
        assert!(StoreError::from(oom).is_out_of_memory());
    }

    #[test]
    fn other_errors_are_not_out_of_memory_even_when_they_mention_it() {
        let other = server_error("ERR the job mentions OOM in its message");
        assert!(!is_out_of_memory(&other));
        assert!(!StoreError::from(other).is_out_of_memory());
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert!(StoreError::from(loading).is_unavailable());
    }

    #[test]
    fn a_cluster_reconfiguring_is_unavailable_but_a_cross_slot_call_is_a_bug() {
        for reply in [
            "MOVED 10786 127.0.0.1:30001",
            "ASK 10786 127.0.0.1:30001",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ] {
            assert!(
                StoreError::from(server_error(reply)).is_unavailable(),
                "{reply}"
            );
        }
        let cross = server_error("CROSSSLOT Keys in request don't hash to the same slot");
        assert!(!StoreError::from(cross).is_unavailable());
    }
}
