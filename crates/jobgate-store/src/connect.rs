//! Reaching Redis from `JOBGATE_REDIS_URL`: one seed URL or several,
//! comma-separated (`redis://a:7000,redis://b:7001`), read by [`seeds`];
//! and first contact ([`detect`]), which builds the connection that
//! `connection.rs`'s handle then carries. `rediss://` URLs use
//! TLS (rustls), verifying the server against the system's trusted roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` add a private CA); a user and password
//! in the URL log in (every seed must carry the same ones).
//!
//! Whether Redis is a cluster is learnt on first contact ([`detect`]): the
//! first seed that answers is asked `INFO cluster`. `cluster_enabled:1`
//! gives a redis-rs cluster connection over every seed; anything else, a
//! connection to that one server, as the gateway always had.
//!
//! On a single server, commands share one connection: requests from every
//! session are written as they come and their replies matched in order, so
//! concurrent submissions are pipelined onto one socket instead of each
//! taking a pooled connection, a health-check round trip and system calls
//! of its own. The connection speaks RESP3 so that a dropped link is noticed
//! (and rebuilt) as soon as the server goes, not by the next request
//! failing. A rebuild that finds Redis still down gives up after a few
//! attempts; `connection.rs` rebuilds it again once Redis is back (a
//! watcher that pings every second) without a client's request failing.
//!
//! On a cluster, redis-rs keeps one multiplexed connection per node and
//! routes each command by its key's slot; it retries a request a few times
//! (a moved slot, a failover in progress) within the same response timeout.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, RedisError, ServerErrorKind,
};

use crate::StoreError;

/// How long a request may wait for its reply before it fails (and the
/// caller answers `503 redis_unavailable`); on a cluster, retries and
/// redirections included.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a cluster request is tried again after a retryable failure
/// (`MOVED` to a node not yet known, `TRYAGAIN`, `CLUSTERDOWN` while a
/// replica takes over, a node connection lost), and the bounds of the wait
/// between tries (ms).
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_RETRY_MIN_WAIT_MS: u64 = 50;
const CLUSTER_RETRY_MAX_WAIT_MS: u64 = 500;

/// Checks that `url` names one or more Redis servers the store can open.
pub fn check_url(url: &str) -> Result<(), StoreError> {
    seeds(url).map(drop)
}

/// The seed URLs of `url` (comma-separated), parsed. Every seed must be a
/// `redis://` or `rediss://` URL; there must be at least one.
pub fn seeds(url: &str) -> Result<Vec<ConnectionInfo>, StoreError> {
    let invalid = |message: String| StoreError::Protocol(format!("redis url: {message}"));
    let mut seeds = Vec::new();
    for seed in url.split(',').map(str::trim) {
        if seed.is_empty() {
            return Err(invalid("an empty seed in the list".to_owned()));
        }
        if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
            return Err(invalid(format!(
                "every seed must start with redis:// or rediss:// (got {})",
                redact(seed)
            )));
        }
        let info = seed
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        seeds.push(info);
    }
    let first = &seeds[0];
    let same = |info: &ConnectionInfo| {
        is_tls(info) == is_tls(first)
            && info.redis_settings().username() == first.redis_settings().username()
            && info.redis_settings().password() == first.redis_settings().password()
    };
    if !seeds.iter().all(same) {
        return Err(invalid(
            "every seed must use the same scheme, user and password".to_owned(),
        ));
    }
    Ok(seeds)
}

pub(crate) fn is_tls(seed: &ConnectionInfo) -> bool {
    matches!(seed.addr(), ConnectionAddr::TcpTls { .. })
}

/// A seed for an error message: without its credentials.
fn redact(seed: &str) -> String {
    match (seed.split_once("://"), seed.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", &seed[at..]),
        _ => seed.to_owned(),
    }
}

/// The connection chosen on first contact.
#[derive(Clone)]
pub(crate) enum Mode {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// First contact: asks each seed in turn whether Redis is a cluster, and
/// builds the connection for the first that answers. A seed that cannot be
/// reached is skipped; any other failure (a refused login) is returned.
pub(crate) async fn detect(seeds: &[ConnectionInfo]) -> Result<Mode, RedisError> {
    let mut unreachable = None;
    for seed in seeds {
        match cluster_enabled(seed).await {
            Ok(false) => return single(seed).map(Mode::Single),
            Ok(true) => return cluster(seeds).await.map(Mode::Cluster),
            Err(error) if is_unreachable(&error) => unreachable = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(unreachable.unwrap_or_else(|| {
        RedisError::from((ErrorKind::InvalidClientConfig, "no redis seed configured"))
    }))
}

fn is_unreachable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading)
        )
}

/// Asks `seed` `INFO cluster`. A user not allowed `INFO` is asked `CLUSTER
/// INFO` instead (a single server answers that cluster support is
/// disabled); a user allowed neither is taken to be on a single server.
async fn cluster_enabled(seed: &ConnectionInfo) -> Result<bool, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = redis::Client::open(seed.clone())?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let info: Result<String, RedisError> = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await;
    match info {
        Ok(info) => return Ok(info_says_cluster(&info)),
        Err(error) if !is_no_permission(&error) => return Err(error),
        Err(_) => {}
    }
    let cluster_info: Result<String, RedisError> = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await;
    match cluster_info {
        Ok(_) => Ok(true),
        Err(error) if is_no_permission(&error) => {
            tracing::warn!(
                "INFO and CLUSTER INFO are refused to this redis user: taking redis to be a single server"
            );
            Ok(false)
        }
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError) => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

fn is_no_permission(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
}

/// `cluster_enabled:1` in an `INFO cluster` reply (also how the hub tells
/// a cluster node from a single server).
pub(crate) fn info_says_cluster(info: &str) -> bool {
    info.lines()
        .filter_map(|line| line.trim().strip_prefix("cluster_enabled:"))
        .any(|value| value.trim() == "1")
}

/// The single server's connection: RESP3, connecting on first use.
fn single(seed: &ConnectionInfo) -> Result<ConnectionManager, RedisError> {
    let settings = seed
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let commands = redis::Client::open(seed.clone().set_redis_settings(settings))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // While Redis is down a request waits for at most these attempts,
        // then fails; the next request tries again.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(commands, config)
}

/// The cluster connection over every seed (TLS, user and password from
/// the seeds).
async fn cluster(seeds: &[ConnectionInfo]) -> Result<ClusterConnection, RedisError> {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_RETRY_MIN_WAIT_MS)
        .max_retry_wait(CLUSTER_RETRY_MAX_WAIT_MS)
        .build()?
        .get_async_connection()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_comma_separated_list_of_seeds() {
        assert_eq!(seeds("redis://127.0.0.1:6379").expect("one").len(), 1);
        let list =
            seeds("redis://127.0.0.1:7000, redis://127.0.0.1:7001,redis://h:7002").expect("three");
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].addr().to_string(), "127.0.0.1:7001");
    }

    #[test]
    fn bad_seed_lists_are_refused_clearly() {
        for bad in [
            "",
            "redis://a:1,",
            "redis://a:1,,redis://b:2",
            "redis://a:1,http://b:2",
            "redis://a:1,rediss://b:2",
            "redis://u:p@a:1,redis://b:2",
            "redis://a:notaport",
        ] {
            assert!(seeds(bad).is_err(), "{bad:?}");
        }
        let error = seeds("redis://a:1,http://user:secret@b:2")
            .expect_err("refused")
            .to_string();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn cluster_mode_is_read_from_info_cluster() {
        assert!(info_says_cluster("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!info_says_cluster("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!info_says_cluster(""));
    }
}
