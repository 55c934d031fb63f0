//! A real Redis Cluster per test: `redis-server` processes with
//! `cluster-enabled yes` on ephemeral ports (client and bus port both
//! chosen free, `cluster-port`), joined by `redis-cli --cluster create`.
//!
//! Fault injection works on nodes by index (the order they were started
//! in): [`RedisCluster::kill`] is `kill -9`, [`RedisCluster::restart`]
//! brings a node back on the same ports from its folder (its `nodes.conf`
//! keeps its identity, so it rejoins), [`RedisCluster::kill_master_of`]
//! kills the master serving a key and [`RedisCluster::wait_for_failover`]
//! waits for a replica to take over, [`RedisCluster::migrate_slot`] moves a
//! slot with the same steps as `redis-cli --cluster reshard`.
//!
//! [`RedisCluster::start_tls`] also opens a TLS port on every node (and runs
//! the cluster bus over TLS): clients connecting there get the TLS ports in
//! `CLUSTER SLOTS`, while the harness keeps using the plain ones.

mod migrate;
mod node;
mod slots;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use self::node::ClusterNode;
use self::slots::{SlotRange, cluster_info_field, info_field, parse_slot_ranges};
use crate::redis_server::wait_for_kinds;
use crate::{TlsFiles, free_port};

/// How long [`RedisCluster::start`] and [`RedisCluster::wait_for_failover`]
/// wait for the cluster to settle before failing the test.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of real `redis-server` children, killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `masters` masters, no replicas, and waits for
    /// `cluster_state:ok` on every node.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` masters with `replicas` replicas each (nodes
    /// `0..masters` are the masters at first, the rest their replicas), and
    /// waits until every node reports `cluster_state:ok` and every replica
    /// is attached to its master.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        Self::start_nodes(masters, replicas, None)
    }

    /// Starts `masters` masters (no replicas) that also serve TLS clients on
    /// a port of their own with `tls` (no client certificates asked), and
    /// talk to each other over TLS. See [`RedisCluster::tls_url`].
    pub fn start_tls(masters: usize, tls: &TlsFiles) -> Self {
        Self::start_nodes(masters, 0, Some(tls))
    }

    fn start_nodes(masters: usize, replicas: usize, tls: Option<&TlsFiles>) -> Self {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        let dir = std::env::temp_dir().join(format!(
            "jobgate-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster folder");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for index in 0..masters * (1 + replicas) {
            let node_dir = cluster.dir.join(format!("node-{index}"));
            std::fs::create_dir_all(&node_dir).expect("create a node folder");
            let mut node = ClusterNode::new(node_dir, tls);
            node.spawn_on_free_ports();
            cluster.nodes.push(node);
        }
        cluster.create(masters, replicas);
        cluster
    }

    /// `redis-cli --cluster create`: masters first, then the replicas, as
    /// redis-cli assigns them (every node is on 127.0.0.1).
    fn create(&mut self, masters: usize, replicas: usize) {
        let mut command = Command::new(redis_cli_binary());
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port));
        }
        command.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (make test installs it)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let settled = (0..self.nodes.len()).all(|index| self.node_reports_ok(index))
                && self.masters_sync().len() == masters
                && self.replicas_sync() == masters * replicas;
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The comma-separated seed URLs of every node, as
    /// `JOBGATE_REDIS_URL` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The comma-separated `rediss://` seed URLs of every node's TLS port
    /// (a cluster started with [`RedisCluster::start_tls`]).
    pub fn tls_url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                let (port, _) = node.tls.as_ref().expect("a cluster started with TLS");
                format!("rediss://127.0.0.1:{port}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of node `index` alone.
    pub fn node_url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[index].port)
    }

    /// How many nodes the cluster has (masters and replicas).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client port of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].port
    }

    /// A client of node `index` alone (commands for keys of other nodes
    /// answer `MOVED`).
    pub fn node_client(&self, index: usize) -> redis::Client {
        redis::Client::open(self.node_url(index)).expect("redis url")
    }

    /// A cluster client over every node, for checking what the tests did.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        let seeds: Vec<String> = (0..self.nodes.len())
            .map(|index| self.node_url(index))
            .collect();
        redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("cluster client")
    }

    /// An async cluster connection (follows `MOVED`/`ASK`).
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .expect("cluster connection")
    }

    async fn node_connection(&self, index: usize) -> MultiplexedConnection {
        self.node_client(index)
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| panic!("connect to node {index}: {error}"))
    }

    /// The indexes of the nodes that are masters now, by `CLUSTER SLOTS`
    /// (a master without slots is not counted).
    pub async fn masters(&self) -> Vec<usize> {
        let mut masters: Vec<usize> = self
            .slot_ranges()
            .await
            .iter()
            .filter_map(|range| self.index_of_port(range.master_port))
            .collect();
        masters.sort_unstable();
        masters.dedup();
        masters
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let mut conn = self.any_live_connection().await;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("cluster keyslot")
    }

    /// The index of the master that serves `key` now (`CLUSTER KEYSLOT`,
    /// then `CLUSTER SLOTS`).
    pub async fn master_for_key(&self, key: &str) -> usize {
        let slot = self.slot_of(key).await;
        self.master_for_slot(slot).await
    }

    /// The index of the master that serves `slot` now.
    pub async fn master_for_slot(&self, slot: u16) -> usize {
        self.slot_ranges()
            .await
            .iter()
            .find(|range| range.first <= slot && slot <= range.last)
            .and_then(|range| self.index_of_port(range.master_port))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// `kill -9` of node `index`: it stops at once, without saving.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Kills (`kill -9`) the master serving `key`; returns its index.
    pub async fn kill_master_of(&mut self, key: &str) -> usize {
        let index = self.master_for_key(key).await;
        self.kill(index);
        index
    }

    /// Waits until every slot is served by a live master again and every
    /// live node reports `cluster_state:ok` (after [`RedisCluster::kill`]
    /// of a master with a replica, that replica's promotion).
    pub async fn wait_for_failover(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.every_slot_on_a_live_master().await && self.live_nodes_report_ok().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no failover within {SETTLE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts node `index` again on the same ports, from its folder (AOF
    /// and `nodes.conf`), and waits until it answers and reports
    /// `cluster_state:ok`. A former master that was failed over comes
    /// back as a replica of its replacement.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].kill();
        self.nodes[index].spawn();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !self.node_reports_ok(index) {
            assert!(
                Instant::now() < deadline,
                "node {index} did not rejoin the cluster"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts every node that was killed, on its own ports and from its
    /// folder, and waits until every node reports `cluster_state:ok` (after
    /// the whole cluster went down, no node can reach that state alone).
    pub async fn restart_stopped(&mut self) {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.spawn();
            }
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !(0..self.nodes.len()).all(|index| self.node_reports_ok(index)) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not come back to cluster_state:ok"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every key on every live master, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for index in self.masters().await {
            if !self.nodes[index].is_running() {
                continue;
            }
            let mut conn = self.node_connection(index).await;
            let node_keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut conn)
                .await
                .expect("keys");
            keys.extend(node_keys);
        }
        keys.sort();
        keys
    }

    /// Waits until workers have registered every one of `kinds` (in the
    /// kinds registry, `jobgate:kinds:v2`).
    pub async fn wait_for_kinds(&self, kinds: &[&str]) {
        wait_for_kinds(&mut self.connection().await, kinds).await;
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port == port)
    }

    /// A connection to the first live node that answers.
    async fn any_live_connection(&self) -> MultiplexedConnection {
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            if let Ok(conn) = self
                .node_client(index)
                .get_multiplexed_async_connection()
                .await
            {
                return conn;
            }
        }
        panic!("no node of the cluster answers");
    }

    /// `CLUSTER SLOTS`, as some live node sees it.
    async fn slot_ranges(&self) -> Vec<SlotRange> {
        let mut conn = self.any_live_connection().await;
        let reply: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .expect("cluster slots");
        parse_slot_ranges(&reply)
    }

    async fn every_slot_on_a_live_master(&self) -> bool {
        let mut covered = 0u32;
        for range in self.slot_ranges().await {
            let live = self
                .index_of_port(range.master_port)
                .is_some_and(|index| self.nodes[index].is_running());
            if !live {
                return false;
            }
            covered += u32::from(range.last - range.first) + 1;
        }
        covered == 16384
    }

    async fn live_nodes_report_ok(&self) -> bool {
        for (index, node) in self.nodes.iter().enumerate() {
            if node.is_running() && !self.node_reports_ok(index) {
                return false;
            }
        }
        true
    }

    /// Whether node `index` answers `CLUSTER INFO` with `cluster_state:ok`.
    fn node_reports_ok(&self, index: usize) -> bool {
        cluster_info_field(&self.node_client(index), "cluster_state").as_deref() == Some("ok")
    }

    /// Masters by `CLUSTER SLOTS` of node 0, blocking (used before any
    /// async connection exists).
    fn masters_sync(&self) -> Vec<u16> {
        let Ok(mut conn) = self
            .node_client(0)
            .get_connection_with_timeout(Duration::from_millis(500))
        else {
            return Vec::new();
        };
        let Ok(reply) = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<redis::Value>(&mut conn)
        else {
            return Vec::new();
        };
        let mut ports: Vec<u16> = parse_slot_ranges(&reply)
            .iter()
            .map(|range| range.master_port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// How many nodes are replicas with their link to the master up.
    fn replicas_sync(&self) -> usize {
        (0..self.nodes.len())
            .filter(|&index| {
                let client = self.node_client(index);
                let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500))
                else {
                    return false;
                };
                let Ok(info) = redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut conn)
                else {
                    return false;
                };
                info_field(&info, "role") == Some("slave")
                    && info_field(&info, "master_link_status") == Some("up")
            })
            .count()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    /// Hash tags grouped by the master serving them, for tests that need
    /// keys on every master: `per_master` tags `<prefix>-<n>` for each.
    pub async fn tags_per_master(
        &self,
        prefix: &str,
        per_master: usize,
    ) -> HashMap<usize, Vec<String>> {
        let ranges = self.slot_ranges().await;
        let mut tags: HashMap<usize, Vec<String>> = self
            .masters()
            .await
            .into_iter()
            .map(|index| (index, Vec::new()))
            .collect();
        let mut conn = self.any_live_connection().await;
        let mut counter = 0usize;
        while tags.values().any(|found| found.len() < per_master) {
            let tag = format!("{prefix}-{counter}");
            counter += 1;
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&tag)
                .query_async(&mut conn)
                .await
                .expect("cluster keyslot");
            let owner = ranges
                .iter()
                .find(|range| range.first <= slot && slot <= range.last)
                .and_then(|range| self.index_of_port(range.master_port));
            if let Some(found) = owner.and_then(|index| tags.get_mut(&index))
                && found.len() < per_master
            {
                found.push(tag);
            }
        }
        tags
    }
}

fn redis_cli_binary() -> String {
    std::env::var("JOBGATE_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}
