//! Moving a slot between masters, with the steps `redis-cli --cluster
//! reshard` takes.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::slots::parse_slot_ranges;
use super::{RedisCluster, SETTLE_TIMEOUT};

/// Keys moved per `MIGRATE` by [`RedisCluster::migrate_slot`].
const MIGRATE_BATCH: usize = 100;

impl RedisCluster {
    /// Moves `slot`, with its keys, to node `to` (a master): `SETSLOT
    /// IMPORTING` on the target, `SETSLOT MIGRATING` on the source,
    /// `MIGRATE` of its keys in batches, then `SETSLOT NODE` on both and on
    /// every other master. Returns once every live master maps the slot to
    /// `to`.
    pub async fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.master_for_slot(slot).await;
        if from == to {
            return;
        }
        let mut source = self.node_connection(from).await;
        let mut target = self.node_connection(to).await;
        let source_id = node_id(&mut source).await;
        let target_id = node_id(&mut target).await;
        set_slot(&mut target, slot, "IMPORTING", &source_id).await;
        set_slot(&mut source, slot, "MIGRATING", &target_id).await;
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query_async(&mut source)
                .await
                .expect("cluster getkeysinslot");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .expect("migrate");
        }
        set_slot(&mut target, slot, "NODE", &target_id).await;
        set_slot(&mut source, slot, "NODE", &target_id).await;
        for index in self.masters().await {
            if index != from && index != to && self.nodes[index].is_running() {
                let mut conn = self.node_connection(index).await;
                set_slot(&mut conn, slot, "NODE", &target_id).await;
            }
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !self.every_live_node_maps(slot, self.nodes[to].port).await {
            assert!(
                Instant::now() < deadline,
                "the nodes did not learn that slot {slot} moved"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn every_live_node_maps(&self, slot: u16, port: u16) -> bool {
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let Ok(mut conn) = self
                .node_client(index)
                .get_multiplexed_async_connection()
                .await
            else {
                return false;
            };
            let Ok(reply) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<redis::Value>(&mut conn)
                .await
            else {
                return false;
            };
            let maps = parse_slot_ranges(&reply).iter().any(|range| {
                range.first <= slot && slot <= range.last && range.master_port == port
            });
            if !maps {
                return false;
            }
        }
        true
    }
}

async fn node_id(conn: &mut MultiplexedConnection) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(conn)
        .await
        .expect("cluster myid")
}

async fn set_slot(conn: &mut MultiplexedConnection, slot: u16, state: &str, node_id: &str) {
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(node_id)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("cluster setslot {slot} {state}: {error}"));
}
