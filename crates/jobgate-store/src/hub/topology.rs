//! The hub's topology task: which masters there are and which slots each
//! owns, and one link per master.
//!
//! It reads the slot map at start and whenever the registry asks (a link
//! dropped or could not connect, a SSUBSCRIBE was answered MOVED, Redis
//! pushed an unasked `sunsubscribe`), from any node that answers: the
//! masters it knows first, then the seeds. A node that says
//! `cluster_enabled:0` is a standalone Redis, which owns every slot. Each
//! new map goes to the registry, which moves channels to their new
//! masters; a link is started for each master and stopped for each node
//! that is no longer one. While a channel has no reachable master (a
//! master died and its replica is not promoted yet), the map is read again
//! with backoff until one is.
//!
//! redis-rs's cluster client subscribes on its own too, but it neither says
//! which channels it lost nor when they are back, which is what
//! subscribe-then-read needs to know; hence links of the hub's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, Value};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::slots::{self, NodeName, SlotMap};

/// The first pause before the slot map is read again while the hub is not
/// settled (or asked again soon after a read); it doubles up to
/// [`MAX_REFRESH_BACKOFF`], and falls back once the hub is quiet for
/// [`QUIET`].
const MIN_REFRESH_BACKOFF: Duration = Duration::from_millis(50);
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(2);
const QUIET: Duration = Duration::from_secs(1);

/// A running link.
struct Link {
    stop: CancellationToken,
    info: ConnectionInfo,
}

/// What a read of the topology found: the map, and how to reach each
/// master.
struct Topology {
    map: SlotMap,
    masters: Vec<(NodeName, ConnectionInfo)>,
}

/// Runs until the hub's shutdown token fires, then stops every link.
pub(super) async fn run(seeds: Vec<ConnectionInfo>, hub: Arc<Inner>) {
    let shutdown = hub.shutdown.clone();
    let mut links: HashMap<NodeName, Link> = HashMap::new();
    let mut backoff = MIN_REFRESH_BACKOFF;
    let mut last_read: Option<Instant> = None;
    loop {
        if let Some(read_at) = last_read {
            let settled = hub.lock().is_settled();
            if settled {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = hub.refresh.notified() => {}
                }
            }
            // Still unsettled, or asked again soon after a read (a map that
            // a node still disagrees with): pause first, longer each time.
            if !settled || read_at.elapsed() < QUIET {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_REFRESH_BACKOFF);
            } else {
                backoff = MIN_REFRESH_BACKOFF;
            }
        }
        let known: Vec<ConnectionInfo> = links.values().map(|link| link.info.clone()).collect();
        let read = tokio::select! {
            () = shutdown.cancelled() => break,
            read = read_topology(&known, &seeds, hub.settings.io_timeout) => read,
        };
        last_read = Some(Instant::now());
        match read {
            Ok(topology) => install(&hub, &mut links, topology),
            Err(error) => tracing::warn!(%error, "could not read the Redis topology"),
        }
    }
    for link in links.values() {
        link.stop.cancel();
    }
}

/// Hands the map to the registry, then starts a link for each new master
/// and stops the links of nodes that are masters no more.
fn install(hub: &Arc<Inner>, links: &mut HashMap<NodeName, Link>, topology: Topology) {
    let Topology { map, masters } = topology;
    hub.lock().install_map(map);
    links.retain(|name, link| {
        let keep = masters.iter().any(|(master, _)| master == name);
        if !keep {
            tracing::info!(node = %name, "no longer a master; its pub/sub link stops");
            link.stop.cancel();
        }
        keep
    });
    for (name, info) in masters {
        if links.contains_key(&name) {
            continue;
        }
        let stop = hub.shutdown.child_token();
        tokio::spawn(super::link::run(
            name.clone(),
            info.clone(),
            Arc::clone(hub),
            stop.clone(),
        ));
        links.insert(name, Link { stop, info });
    }
}

/// Reads the topology from the first node that answers: known masters
/// first, then the seeds.
async fn read_topology(
    known: &[ConnectionInfo],
    seeds: &[ConnectionInfo],
    io_timeout: Duration,
) -> Result<Topology, String> {
    let template = seeds.first().ok_or("no Redis address to start from")?;
    let mut errors = Vec::new();
    for node in known.iter().chain(seeds) {
        match read_from(node, template, io_timeout).await {
            Ok(topology) => return Ok(topology),
            Err(error) => errors.push(format!("{}: {error}", name_of(node))),
        }
    }
    Err(errors.join("; "))
}

/// Asks `node` for the topology. A cluster's masters are reached with
/// `template`'s settings (TLS, user, password) at their own addresses.
async fn read_from(
    node: &ConnectionInfo,
    template: &ConnectionInfo,
    io_timeout: Duration,
) -> Result<Topology, String> {
    let client = redis::Client::open(node.clone()).map_err(|e| e.to_string())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(io_timeout))
        .set_response_timeout(Some(io_timeout));
    let mut conn = tokio::time::timeout(
        io_timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if !crate::connect::info_says_cluster(&info) {
        let name = name_of(node);
        return Ok(Topology {
            map: SlotMap::single(name.clone()),
            masters: vec![(name, node.clone())],
        });
    }
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let asked_host = host_of(node).unwrap_or_default();
    let map = SlotMap::from_cluster_slots(&reply, &asked_host).map_err(|e| e.to_string())?;
    let masters = map
        .masters()
        .iter()
        .filter_map(|master| {
            let (host, port) = master.address.as_ref()?;
            Some((master.name.clone(), at_address(template, host, *port)))
        })
        .collect();
    Ok(Topology { map, masters })
}

/// `template`'s settings at `host:port`.
fn at_address(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    template.clone().set_addr(addr)
}

/// The name the hub gives the node `info` reaches: `host:port`, or a
/// socket's path.
fn name_of(info: &ConnectionInfo) -> NodeName {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Arc::from(slots::endpoint(host, *port))
        }
        other => Arc::from(other.to_string()),
    }
}

fn host_of(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => Some(host.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    #[test]
    fn a_masters_address_keeps_the_seeds_tls_and_credentials() {
        let seed = "rediss://gateway:secret@seed.example:7000/"
            .into_connection_info()
            .expect("a url");
        let master = at_address(&seed, "10.0.0.2", 7001);
        assert!(matches!(
            master.addr(),
            ConnectionAddr::TcpTls { host, port: 7001, .. } if host == "10.0.0.2"
        ));
        assert_eq!(master.redis_settings().username(), Some("gateway"));
        assert_eq!(master.redis_settings().password(), Some("secret"));
        assert_eq!(&*name_of(&master), "10.0.0.2:7001");

        let plain = "redis://seed.example:7000"
            .into_connection_info()
            .expect("a url");
        assert!(matches!(
            at_address(&plain, "10.0.0.3", 7002).addr(),
            ConnectionAddr::Tcp(host, 7002) if host == "10.0.0.3"
        ));
    }
}
