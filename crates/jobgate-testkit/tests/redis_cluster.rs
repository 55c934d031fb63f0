//! The cluster harness itself: it starts, serves keys on every master,
//! fails over, takes a node back and moves a slot with its keys.

use std::time::{Duration, Instant};

use jobgate_testkit::RedisCluster;

async fn set(cluster: &RedisCluster, key: &str, value: &str) {
    let mut conn = cluster.connection().await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("set");
}

async fn get(cluster: &RedisCluster, key: &str) -> Option<String> {
    let mut conn = cluster.connection().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("get")
}

#[tokio::test]
async fn three_masters_serve_every_slot_and_a_slot_moves_with_its_keys() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.url().split(',').count(), 3);
    assert_eq!(cluster.masters().await, vec![0, 1, 2]);

    let tags = cluster.tags_per_master("t", 2).await;
    assert_eq!(tags.len(), 3);
    for (master, found) in &tags {
        for tag in found {
            let key = format!("k:{{{tag}}}");
            assert_eq!(cluster.master_for_key(&key).await, *master);
            set(&cluster, &key, tag).await;
        }
    }
    assert_eq!(cluster.keys().await.len(), 6);

    let key = format!("k:{{{}}}", tags[&0][0]);
    let slot = cluster.slot_of(&key).await;
    cluster.migrate_slot(slot, 1).await;
    assert_eq!(cluster.master_for_key(&key).await, 1);
    assert_eq!(
        get(&cluster, &key).await.as_deref(),
        Some(tags[&0][0].as_str())
    );
}

#[tokio::test]
async fn a_killed_master_is_replaced_by_its_replica_and_comes_back_as_a_replica() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    assert_eq!(cluster.len(), 6);
    let key = "failover:{a}";
    set(&cluster, key, "before").await;

    let killed = cluster.kill_master_of(key).await;
    let started = Instant::now();
    cluster.wait_for_failover().await;
    let promoted = cluster.master_for_key(key).await;
    assert_ne!(promoted, killed);
    assert!(started.elapsed() < Duration::from_secs(15));
    // WAIT-less replication may drop the last write; the replica answers.
    let _ = get(&cluster, key).await;
    set(&cluster, key, "after").await;

    cluster.restart(killed).await;
    assert_eq!(cluster.master_for_key(key).await, promoted);
    assert_eq!(get(&cluster, key).await.as_deref(), Some("after"));
}
