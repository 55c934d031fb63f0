//! What `/readyz` and `/metrics` ask of Redis itself: does it answer, how
//! full is it, and — on a cluster — how its nodes are doing.
//!
//! On a cluster, one node answers for all: `CLUSTER INFO` (`cluster_state`)
//! and `CLUSTER NODES` (every node's role, flags, link and slots), read
//! from one node picked at random. A node that does not answer is only
//! skipped in favour of another by the cluster connection; the gateway
//! stays ready while any node answers (a shard failing over must not make
//! every gateway unready), and reports the failing ones.

use redis::Value;

use super::JobStore;
use crate::StoreError;
use crate::connection::RedisMode;

/// Redis's memory use against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisMemory {
    pub used_bytes: u64,
    /// `maxmemory`; 0 when there is no limit.
    pub max_bytes: u64,
}

impl RedisMemory {
    /// At or over `maxmemory`: Redis refuses writes (with `noeviction`).
    pub fn is_full(&self) -> bool {
        self.max_bytes > 0 && self.used_bytes >= self.max_bytes
    }

    /// How full, 0 to 1 (and over); 0 without a limit.
    fn fill(&self) -> f64 {
        if self.max_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.max_bytes as f64
        }
    }

    /// From an `INFO memory` reply.
    fn from_info(info: &str) -> Result<Self, StoreError> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .ok_or_else(|| StoreError::Protocol(format!("INFO memory has no {name}")))
        };
        Ok(Self {
            used_bytes: field("used_memory")?,
            max_bytes: field("maxmemory")?,
        })
    }
}

/// Redis as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStatus {
    /// `None` until Redis has answered once.
    pub mode: Option<RedisMode>,
    /// On a cluster: `cluster_state` (`ok` or `fail`) as one node sees it.
    pub cluster_state: Option<String>,
    /// On a cluster: every node that node knows of.
    pub nodes: Vec<ClusterNode>,
}

/// One node of a cluster, from `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterNode {
    /// `host:port`.
    pub address: String,
    /// `master` or `replica`.
    pub role: &'static str,
    /// `ok`; `fail` (the cluster agreed it is down); `suspected` (the
    /// answering node cannot reach it); `disconnected` (no link to it yet);
    /// `joining` (handshake).
    pub state: &'static str,
    /// How many slots it serves (masters).
    pub slots: u64,
}

impl ClusterNode {
    pub fn is_failing(&self) -> bool {
        self.state != "ok"
    }
}

impl JobStore {
    /// Redis answers a `PING` (on a cluster, one node at random).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.reader();
        match conn.on_any_node(&redis::cmd("PING")).await? {
            Value::ServerError(error) => Err(redis::RedisError::from(error).into()),
            _ => Ok(()),
        }
    }

    /// How Redis is doing: standalone, a `PING`; on a cluster, `CLUSTER
    /// INFO` and `CLUSTER NODES` of one node. An error when no node
    /// answers.
    pub async fn redis_status(&self) -> Result<RedisStatus, StoreError> {
        let mut conn = self.reader();
        if !conn.is_cluster().await? {
            self.ping().await?;
            return Ok(RedisStatus {
                mode: Some(RedisMode::Standalone),
                cluster_state: None,
                nodes: Vec::new(),
            });
        }
        // No key: the pipeline goes to one node at random.
        let (info, nodes): (String, String) = redis::pipe()
            .cmd("CLUSTER")
            .arg("INFO")
            .cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        Ok(RedisStatus {
            mode: Some(RedisMode::Cluster),
            cluster_state: info_field(&info, "cluster_state").map(str::to_owned),
            nodes: parse_cluster_nodes(&nodes),
        })
    }

    /// Redis's memory: `used_memory` and `maxmemory` (0: no limit) from
    /// `INFO memory`; on a cluster, the fullest master's.
    pub async fn memory(&self) -> Result<RedisMemory, StoreError> {
        let nodes = self.memory_by_node().await?;
        nodes
            .into_iter()
            .map(|(_, memory)| memory)
            .max_by(|a, b| a.fill().total_cmp(&b.fill()))
            .ok_or_else(|| StoreError::Protocol("INFO memory answered nothing".to_owned()))
    }

    /// `INFO memory` of every master (one, on a single server), by address
    /// (empty on a single server).
    pub async fn memory_by_node(&self) -> Result<Vec<(String, RedisMemory)>, StoreError> {
        let mut conn = self.reader();
        let reply: Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        match reply {
            // A cluster: every master's reply, by address.
            Value::Map(replies) => replies
                .into_iter()
                .map(|(address, reply)| {
                    let address: String = redis::from_redis_value(address)
                        .map_err(|e| StoreError::Protocol(format!("INFO memory: {e}")))?;
                    let info: String = match reply {
                        Value::ServerError(error) => {
                            return Err(redis::RedisError::from(error).into());
                        }
                        reply => redis::from_redis_value(reply)
                            .map_err(|e| StoreError::Protocol(format!("INFO memory: {e}")))?,
                    };
                    Ok((address, RedisMemory::from_info(&info)?))
                })
                .collect(),
            reply => {
                let info: String = redis::from_redis_value(reply)
                    .map_err(|e| StoreError::Protocol(format!("INFO memory: {e}")))?;
                Ok(vec![(String::new(), RedisMemory::from_info(&info)?)])
            }
        }
    }
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The nodes of a `CLUSTER NODES` reply: `<id> <ip:port@cport[,hostname]>
/// <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state>
/// <slot> <slot> ...`.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut nodes: Vec<ClusterNode> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, flags, link) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
            let address = address.split(['@', ',']).next()?.to_owned();
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.contains(&"noaddr") {
                return None;
            }
            let role = if flags.contains(&"master") {
                "master"
            } else {
                "replica"
            };
            let state = if flags.contains(&"fail") {
                "fail"
            } else if flags.contains(&"fail?") {
                "suspected"
            } else if flags.contains(&"handshake") {
                "joining"
            } else if *link != "connected" && !flags.contains(&"myself") {
                "disconnected"
            } else {
                "ok"
            };
            let slots = fields.iter().skip(8).map(|range| slot_count(range)).sum();
            Some(ClusterNode {
                address,
                role,
                state,
                slots,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address));
    nodes
}

/// Slots in one `CLUSTER NODES` slot field: `n`, `a-b`; slots being
/// imported or migrated (`[n->-id]`) are not counted.
fn slot_count(range: &str) -> u64 {
    if range.starts_with('[') {
        return 0;
    }
    match range.split_once('-') {
        Some((first, last)) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(first), Ok(last)) if last >= first => last - first + 1,
            _ => 0,
        },
        None => u64::from(range.parse::<u64>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_full_at_its_limit_and_never_without_one() {
        let memory = |used_bytes, max_bytes| RedisMemory {
            used_bytes,
            max_bytes,
        };
        assert!(memory(100, 100).is_full());
        assert!(memory(101, 100).is_full());
        assert!(!memory(99, 100).is_full());
        assert!(!memory(u64::MAX, 0).is_full(), "0 is no limit");
    }

    #[test]
    fn cluster_nodes_are_read_with_their_role_state_and_slots() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,host-b master - 0 1 2 connected 5461-10922 [10923->-c3]
c3 127.0.0.1:30003@40003 master,fail - 1 1 3 disconnected
d4 127.0.0.1:30004@40004 slave a1 0 1 1 connected
e5 127.0.0.1:30005@40005 master,fail? - 0 1 5 connected 10923-16383
f6 :0@0 noaddr,master - 0 0 0 disconnected
";
        let nodes = parse_cluster_nodes(text);
        let view: Vec<(&str, &str, &str, u64)> = nodes
            .iter()
            .map(|n| (n.address.as_str(), n.role, n.state, n.slots))
            .collect();
        assert_eq!(
            view,
            [
                ("127.0.0.1:30001", "master", "ok", 5461),
                ("127.0.0.1:30002", "master", "ok", 5462),
                ("127.0.0.1:30003", "master", "fail", 0),
                ("127.0.0.1:30004", "replica", "ok", 0),
                ("127.0.0.1:30005", "master", "suspected", 5461),
            ]
        );
        assert!(nodes[2].is_failing() && !nodes[0].is_failing());
    }

    #[test]
    fn memory_is_read_from_info_memory() {
        let memory = RedisMemory::from_info("# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\n")
            .expect("fields");
        assert_eq!((memory.used_bytes, memory.max_bytes), (1024, 0));
        assert!(RedisMemory::from_info("# Memory\r\n").is_err());
    }
}
