//! The event hub on sharded pub/sub, against real Redis servers: a
//! standalone one (one node owning every slot) and real 3-master clusters,
//! through the gateway's WebSocket and SSE streams, with job events made by
//! the job script ([`JobDriver`], the calls a worker makes).
//!
//! Each test ends by comparing what every watcher received with the job's
//! whole history, read from Redis: the same `(epoch, seq)`, in order, each
//! once — whatever happened to the masters in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jobgate_testkit::{
    JobDriver, RedisCluster, RedisServer, SseClient, TestGateway, WsClient, event_position,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// An event as `(epoch, seq)`.
type Position = (u64, u64);

fn is_terminal(event: &Value) -> bool {
    matches!(
        event["event"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// One WebSocket session watching many jobs, keeping what it received.
struct Watcher {
    ws: WsClient,
    seen: HashMap<String, Vec<Position>>,
}

impl Watcher {
    /// Subscribes to every job and waits for each one's first event, so
    /// every subscription is in place when it returns.
    async fn watch(gateway: &TestGateway, jobs: &[String]) -> Self {
        let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
        for job_id in jobs {
            ws.send(json!({"type": "subscribe", "job_id": job_id}))
                .await
                .expect("subscribe");
        }
        let mut watcher = Self {
            ws,
            seen: HashMap::new(),
        };
        watcher
            .read_until(|seen| jobs.iter().all(|job| seen.contains_key(job)))
            .await;
        watcher
    }

    /// Reads events until every job of `jobs` has had its terminal event.
    async fn until_terminal(&mut self, jobs: &[String]) {
        let mut ended: Vec<String> = Vec::new();
        let deadline = Instant::now() + WAIT;
        while !jobs.iter().all(|job| ended.contains(job)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.ws.next(left).await.unwrap_or_else(|error| {
                panic!("{error}; ended so far: {ended:?}; seen: {:?}", self.seen)
            });
            if let Some(job_id) = self.record(&frame)
                && is_terminal(&frame)
            {
                ended.push(job_id);
            }
        }
    }

    async fn read_until(&mut self, done: impl Fn(&HashMap<String, Vec<Position>>) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.ws.next(left).await.expect("a frame");
            self.record(&frame);
        }
    }

    /// Keeps an event frame; returns its job.
    fn record(&mut self, frame: &Value) -> Option<String> {
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] != "event" {
            return None;
        }
        let job_id = frame["job_id"].as_str().expect("job id").to_owned();
        self.seen
            .entry(job_id.clone())
            .or_default()
            .push(event_position(frame));
        Some(job_id)
    }
}

/// Asserts that the watcher got each job's whole history, in order, once.
async fn assert_got_every_event(watcher: &Watcher, driver: &mut JobDriver, jobs: &[String]) {
    for job_id in jobs {
        let expected = driver.history(job_id).await;
        assert_eq!(expected.len(), 5, "{job_id}: {expected:?}");
        assert_eq!(
            watcher.seen.get(job_id),
            Some(&expected),
            "{job_id}: the session's events against the history"
        );
    }
}

fn job_key(job_id: &str) -> String {
    format!("jobgate:job:{{{job_id}}}")
}

fn job_channel(job_id: &str) -> String {
    format!("jobgate:live:job:{{{job_id}}}")
}

/// Submits jobs until each master of `cluster` serves at least
/// `per_master` of them; returns them by master.
async fn jobs_on_every_master(
    gateway: &TestGateway,
    cluster: &RedisCluster,
    per_master: usize,
) -> HashMap<usize, Vec<String>> {
    let masters = cluster.masters().await;
    let mut jobs: HashMap<usize, Vec<String>> =
        masters.iter().map(|master| (*master, Vec::new())).collect();
    for _ in 0..500 {
        if jobs.values().all(|found| found.len() >= per_master) {
            return jobs;
        }
        let job_id = gateway.submit_echo().await;
        let master = cluster.master_for_key(&job_key(&job_id)).await;
        jobs.entry(master).or_default().push(job_id);
    }
    panic!("submitted jobs never covered every master: {jobs:?}");
}

/// The shard channels node `index` has subscribers for.
async fn shard_channels(cluster: &RedisCluster, index: usize) -> Vec<String> {
    let mut conn = cluster
        .node_client(index)
        .get_multiplexed_async_connection()
        .await
        .expect("node connection");
    redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut conn)
        .await
        .expect("pubsub shardchannels")
}

/// Waits until node `index` delivers every one of `channels`.
async fn wait_for_shard_channels(cluster: &RedisCluster, index: usize, channels: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let subscribed = shard_channels(cluster, index).await;
        if channels.iter().all(|channel| subscribed.contains(channel)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {index} serves {subscribed:?}, not all of {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica of master `index` has all it wrote, so that
/// killing it loses nothing.
async fn wait_replicated(cluster: &RedisCluster, index: usize) {
    let mut conn = cluster
        .node_client(index)
        .get_multiplexed_async_connection()
        .await
        .expect("master connection");
    let deadline = Instant::now() + WAIT;
    loop {
        let role: Value = redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut conn)
            .await
            .map(value_json)
            .expect("role");
        let offset = role[1].as_i64().expect("master offset");
        let replicas = role[2].as_array().expect("replicas");
        let caught_up = !replicas.is_empty()
            && replicas.iter().all(|replica| {
                replica[2]
                    .as_str()
                    .and_then(|o| o.parse::<i64>().ok())
                    .is_some_and(|o| o >= offset)
            });
        if caught_up {
            return;
        }
        assert!(Instant::now() < deadline, "replicas behind: {role}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `ROLE` reply as JSON (bulk strings as strings, integers as numbers).
fn value_json(value: redis::Value) -> Value {
    match value {
        redis::Value::Int(number) => json!(number),
        redis::Value::BulkString(bytes) => json!(String::from_utf8_lossy(&bytes)),
        redis::Value::SimpleString(text) => json!(text),
        redis::Value::Array(items) => Value::Array(items.into_iter().map(value_json).collect()),
        other => json!(format!("{other:?}")),
    }
}

#[tokio::test]
async fn on_a_standalone_redis_watchers_get_every_event_over_ssubscribe() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(gateway.submit_echo().await);
    }
    let mut watcher = Watcher::watch(&gateway, &jobs).await;

    // Sharded subscriptions, one per job, and no plain channel.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let sharded: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut conn)
        .await
        .expect("shardchannels");
    for job_id in &jobs {
        assert!(sharded.contains(&job_channel(job_id)), "{sharded:?}");
    }
    let plain: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .expect("channels");
    assert!(plain.is_empty(), "plain channels: {plain:?}");

    for job_id in &jobs {
        driver.start_and_progress(job_id).await;
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    watcher.until_terminal(&jobs).await;
    assert_got_every_event(&watcher, &mut driver, &jobs).await;
}

#[tokio::test]
async fn on_a_cluster_watchers_of_jobs_on_every_master_get_every_event() {
    let cluster = RedisCluster::start(3);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    let by_master = jobs_on_every_master(&gateway, &cluster, 2).await;
    let jobs: Vec<String> = by_master.values().flatten().cloned().collect();
    let mut watcher = Watcher::watch(&gateway, &jobs).await;
    // Each job's channel is subscribed at the master of its slot.
    for (master, its_jobs) in &by_master {
        let channels: Vec<String> = its_jobs.iter().map(|job| job_channel(job)).collect();
        wait_for_shard_channels(&cluster, *master, &channels).await;
    }
    // One SSE stream per job too.
    let mut streams = Vec::new();
    for job_id in &jobs {
        let url = gateway.url(&format!("/v1/jobs/{job_id}/events"));
        streams.push((
            job_id.clone(),
            SseClient::connect(&url, None).await.expect("sse"),
        ));
    }

    for job_id in &jobs {
        driver.start_and_progress(job_id).await;
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    watcher.until_terminal(&jobs).await;
    assert_got_every_event(&watcher, &mut driver, &jobs).await;
    for (job_id, mut stream) in streams {
        let events = stream.collect(WAIT).await.expect("sse events");
        let got: Vec<Position> = events.iter().map(|e| event_position(&e.json())).collect();
        assert_eq!(got, driver.history(&job_id).await, "{job_id}");
    }
}

/// `/readyz` asked every 100 ms, from a task of its own, until stopped.
struct ReadinessLog {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(u16, Value)>>,
}

impl ReadinessLog {
    fn follow(url: String) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            loop {
                if let Ok(answer) = client.get(&url).send().await {
                    let status = answer.status().as_u16();
                    answers.push((status, answer.json().await.unwrap_or(Value::Null)));
                }
                tokio::select! {
                    _ = &mut stopped => return answers,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<(u16, Value)> {
        let _ = self.stop.send(());
        self.task.await.expect("readiness task")
    }
}

#[tokio::test]
async fn a_killed_master_fails_over_and_its_watchers_resync_missing_nothing() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    let by_master = jobs_on_every_master(&gateway, &cluster, 2).await;
    let jobs: Vec<String> = by_master.values().flatten().cloned().collect();
    let mut watcher = Watcher::watch(&gateway, &jobs).await;
    for job_id in &jobs {
        driver.start_and_progress(job_id).await;
    }
    let victim_job = jobs[0].clone();
    let victim = cluster.master_for_key(&job_key(&victim_job)).await;
    let victims: Vec<String> = by_master[&victim].clone();
    let mut stream =
        SseClient::connect(&gateway.url(&format!("/v1/jobs/{victim_job}/events")), None)
            .await
            .expect("sse");
    wait_replicated(&cluster, victim).await;

    let readiness = ReadinessLog::follow(gateway.url("/readyz"));
    cluster.kill(victim);
    cluster.wait_for_failover().await;
    let answers = readiness.stop().await;
    // One shard failing over leaves the gateway ready: it serves every
    // other shard meanwhile, and a load balancer must not drop it.
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "/readyz went unready during one shard's failover: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|(_, body)| body["cluster"]["pubsub_links"]
                .as_array()
                .is_some_and(|links| links.iter().any(|link| link["linked"] == false))),
        "the failover was seen (a master's link down) while /readyz was asked: {answers:?}"
    );
    for job_id in &jobs {
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    watcher.until_terminal(&jobs).await;
    assert_got_every_event(&watcher, &mut driver, &jobs).await;
    // The promoted replica has another replication id: the victim's jobs
    // went on in epoch 2; the others never changed epoch.
    for job_id in &jobs {
        let last = *watcher.seen[job_id].last().expect("events");
        let epoch = if victims.contains(job_id) { 2 } else { 1 };
        assert_eq!(last, (epoch, 5), "{job_id}");
    }
    let events = stream.collect(WAIT).await.expect("sse events");
    let ids: Vec<String> = events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["1", "2", "3", "2:4", "2:5"], "SSE ids name the epoch");
}

#[tokio::test]
async fn a_slot_moved_under_a_watched_job_is_followed_to_its_new_master() {
    let cluster = RedisCluster::start(3);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    let by_master = jobs_on_every_master(&gateway, &cluster, 1).await;
    let jobs: Vec<String> = by_master.values().flatten().cloned().collect();
    let mut watcher = Watcher::watch(&gateway, &jobs).await;
    for job_id in &jobs {
        driver.start_and_progress(job_id).await;
    }
    let moved = jobs[0].clone();
    let from = cluster.master_for_key(&job_key(&moved)).await;
    let to = *by_master
        .keys()
        .find(|m| **m != from)
        .expect("another master");
    let slot = cluster.slot_of(&job_key(&moved)).await;

    // The old master unsubscribes the gateway (`sunsubscribe`) as the slot
    // leaves; events written at once on the new master are read from the
    // history once the channel is subscribed there.
    cluster.migrate_slot(slot, to).await;
    for job_id in &jobs {
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    wait_for_shard_channels(&cluster, to, &[job_channel(&moved)]).await;
    assert!(
        !shard_channels(&cluster, from)
            .await
            .contains(&job_channel(&moved))
    );
    watcher.until_terminal(&jobs).await;
    assert_got_every_event(&watcher, &mut driver, &jobs).await;
}

#[tokio::test]
async fn a_restarted_master_gets_every_channel_subscribed_again_one_by_one() {
    let mut cluster = RedisCluster::start(3);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    // Many channels on every master, in many slots: a SSUBSCRIBE naming
    // several of them would be refused (CROSSSLOT).
    let by_master = jobs_on_every_master(&gateway, &cluster, 12).await;
    let jobs: Vec<String> = by_master.values().flatten().cloned().collect();
    let mut watcher = Watcher::watch(&gateway, &jobs).await;
    for job_id in &jobs {
        driver.start_and_progress(job_id).await;
    }
    let restarted = *by_master.keys().next().expect("a master");
    let its_channels: Vec<String> = by_master[&restarted]
        .iter()
        .map(|job| job_channel(job))
        .collect();

    cluster.restart(restarted).await;
    wait_for_shard_channels(&cluster, restarted, &its_channels).await;
    for job_id in &jobs {
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    watcher.until_terminal(&jobs).await;
    assert_got_every_event(&watcher, &mut driver, &jobs).await;
    let nodes = gateway.state.hub.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|node| node.linked), "{nodes:?}");
}

/// The owner stream (`GET /v1/events`, owner `local` without auth): each
/// job's events as it received them, until `done` says it has enough.
async fn owner_events_until(
    stream: &mut SseClient,
    seen: &mut HashMap<String, Vec<Position>>,
    done: impl Fn(&HashMap<String, Vec<Position>>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = stream
            .next(left)
            .await
            .unwrap_or_else(|error| panic!("{error}; seen: {seen:?}"))
            .expect("the owner stream does not end");
        let json = event.json();
        let job_id = json["job_id"].as_str().expect("job id").to_owned();
        seen.entry(job_id).or_default().push(event_position(&json));
    }
}

/// Whether each of `jobs` got its terminal event (seq 5).
fn all_ended(seen: &HashMap<String, Vec<Position>>, jobs: &[String]) -> bool {
    jobs.iter().all(|job| {
        seen.get(job)
            .is_some_and(|events| events.last().map(|p| p.1) == Some(5))
    })
}

#[tokio::test]
async fn the_owner_stream_follows_unfinished_jobs_and_new_ones_on_every_master() {
    let cluster = RedisCluster::start(3);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    let before = jobs_on_every_master(&gateway, &cluster, 2).await;
    let before: Vec<String> = before.values().flatten().cloned().collect();
    // Half of them end before the stream opens, the others are running.
    let (finished, running) = before.split_at(before.len() / 2);
    for job_id in finished {
        driver.start_and_progress(job_id).await;
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    for job_id in running {
        driver.start_and_progress(job_id).await;
    }

    let mut stream = SseClient::connect(&gateway.url("/v1/events"), None)
        .await
        .expect("sse");
    assert_eq!(stream.status, 200);
    let after = jobs_on_every_master(&gateway, &cluster, 2).await;
    let after: Vec<String> = after.values().flatten().cloned().collect();
    for job_id in running {
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    for job_id in &after {
        driver.start_and_progress(job_id).await;
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    let mut seen = HashMap::new();
    let expected: Vec<String> = running.iter().chain(&after).cloned().collect();
    owner_events_until(&mut stream, &mut seen, |seen| all_ended(seen, &expected)).await;
    // A short wait for anything that should not come.
    while let Ok(Some(event)) = stream.next(Duration::from_millis(300)).await {
        let json = event.json();
        let job_id = json["job_id"].as_str().expect("job id").to_owned();
        seen.entry(job_id).or_default().push(event_position(&json));
    }
    for job_id in running {
        assert_eq!(
            seen[job_id],
            [(1, 4), (1, 5)],
            "from where it was: {job_id}"
        );
    }
    for job_id in &after {
        let history = driver.history(job_id).await;
        assert_eq!(
            seen[job_id], history,
            "a new job from its first event: {job_id}"
        );
    }
    for job_id in finished {
        assert!(
            !seen.contains_key(job_id),
            "{job_id} ended before the stream opened"
        );
    }
}

#[tokio::test]
async fn the_owner_stream_survives_the_failover_of_the_owners_master() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let mut driver = JobDriver::with_kinds(&cluster.url(), &["echo"]).await;
    let gateway = TestGateway::start(&cluster.url()).await;
    let mut stream = SseClient::connect(&gateway.url("/v1/events"), None)
        .await
        .expect("sse");
    let first = gateway.submit_echo().await;
    driver.start_and_progress(&first).await;
    let mut seen = HashMap::new();
    owner_events_until(&mut stream, &mut seen, |seen| {
        seen.get(&first).is_some_and(|events| events.len() == 3)
    })
    .await;
    let owners_master = cluster.master_for_key("jobgate:owner:{local}:jobs").await;
    wait_replicated(&cluster, owners_master).await;

    cluster.kill(owners_master);
    cluster.wait_for_failover().await;
    // New jobs, on every master, named on the owner's channel at its new
    // master — perhaps before the gateway has subscribed there again: the
    // owner's index is read again then.
    let after = jobs_on_every_master(&gateway, &cluster, 2).await;
    let after: Vec<String> = after.values().flatten().cloned().collect();
    driver.progress_and_complete(&first, r#"{"ok":true}"#).await;
    for job_id in &after {
        driver.start_and_progress(job_id).await;
        driver.progress_and_complete(job_id, r#"{"ok":true}"#).await;
    }
    let mut expected = after.clone();
    expected.push(first.clone());
    owner_events_until(&mut stream, &mut seen, |seen| all_ended(seen, &expected)).await;
    for job_id in &expected {
        let history = driver.history(job_id).await;
        assert_eq!(seen[job_id], history, "{job_id}");
    }
}
