//! Opening Redis: one multiplexed connection for commands and a client for
//! the pub/sub link. `rediss://` URLs use TLS (rustls), verifying the server
//! against the system's trusted roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` add a
//! private CA).
//!
//! Commands share one connection: requests from every session are written
//! as they come and their replies matched in order, so concurrent
//! submissions are pipelined onto one socket instead of each taking a
//! pooled connection, a health-check round trip and system calls of its
//! own. The connection speaks RESP3 so that a dropped link is noticed (and
//! rebuilt) as soon as the server goes, not by the next request failing.
//! A rebuild that finds Redis still down gives up after a few attempts;
//! `connection.rs` rebuilds it again once Redis is back (a watcher that
//! pings every second) without a client's request failing.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};

use crate::StoreError;

/// How long a request may wait for its reply before it fails (and the
/// caller answers `503 redis_unavailable`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that `url` names a Redis server the store can open.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    url.into_connection_info()
        .map(drop)
        .map_err(|e| StoreError::Protocol(format!("redis url: {e}")))
}

/// Builds the command connection and the pub/sub client for `url`. Nothing
/// connects yet: the connection is made on first use, so a gateway starts
/// (and answers `503 redis_unavailable`) while Redis is down.
pub fn open(url: &str) -> Result<(ConnectionManager, redis::Client), StoreError> {
    if url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; a second install
        // (another gateway in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let invalid = |e: redis::RedisError| StoreError::Protocol(format!("redis url: {e}"));
    let pubsub = redis::Client::open(url).map_err(invalid)?;
    let info = url.into_connection_info().map_err(invalid)?;
    let redis_info = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let commands = redis::Client::open(info.set_redis_settings(redis_info)).map_err(invalid)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // While Redis is down a request waits for at most these attempts,
        // then fails; the next request tries again.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let manager = ConnectionManager::new_lazy_with_config(commands, config)
        .map_err(|e| StoreError::Protocol(format!("redis connection: {e}")))?;
    Ok((manager, pubsub))
}
