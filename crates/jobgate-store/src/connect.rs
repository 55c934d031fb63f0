//! Opening Redis: a pool for commands and a client for the pub/sub link.
//! `rediss://` URLs use TLS (rustls), verifying the server against the
//! system's trusted roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` add a private CA).

use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};

use crate::StoreError;

/// Builds the command pool and the pub/sub client for `url`. Nothing
/// connects yet: connections are made on first use, so a gateway starts
/// (and answers `503 redis_unavailable`) while Redis is down.
pub fn open(url: &str, pool_size: usize) -> Result<(Pool, redis::Client), StoreError> {
    if url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; a second install
        // (another gateway in the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client =
        redis::Client::open(url).map_err(|e| StoreError::Protocol(format!("redis url: {e}")))?;
    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(PoolConfig {
        max_size: pool_size,
        timeouts: Timeouts {
            wait: Some(Duration::from_secs(2)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        },
        ..PoolConfig::default()
    });
    let pool = config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| StoreError::Protocol(format!("redis pool: {e}")))?;
    Ok((pool, client))
}
