//! The gateway on a real Redis Cluster (three masters, each a real
//! `redis-server`): every operation it makes through the store, over its
//! real HTTP API, with jobs, queues and owners spread over every master so
//! that a command, script call or pipeline crossing slots cannot hide — it
//! would fail with `CROSSSLOT` or land on the wrong node.
//!
//! Worker-side operations (`start`, `complete`, `bury` of a dead letter)
//! are made by [`JobDriver`] over a cluster connection: the same
//! `jobgate.lua` and `dead_letters.lua` calls the Python worker makes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jobgate_gateway::Config;
use jobgate_gateway::auth::mint_hs256_with_scope;
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{
    GatewayProcess, JobDriver, RedisCluster, SseClient, TestGateway, TlsFiles, get_json,
};
use serde_json::{Value, json};

const SECRET: &str = "a-cluster-test-secret-long-enough-for-hs256";
const WAIT: Duration = Duration::from_secs(20);
/// The `jobgate` binary built for these tests.
const JOBGATE: &str = env!("CARGO_BIN_EXE_jobgate");

fn token(owner: &str) -> String {
    mint_hs256_with_scope(SECRET, owner, 3600, None, None, None).expect("token")
}

fn admin_token() -> String {
    mint_hs256_with_scope(SECRET, "ops", 3600, None, None, Some("jobgate:admin")).expect("token")
}

/// A cluster, a gateway on it (JWT auth) and a hand-driven worker, with
/// kinds routed to queues on different masters.
struct Harness {
    cluster: RedisCluster,
    gateway: TestGateway,
    driver: JobDriver,
    http: reqwest::Client,
    /// kind → queue; every queue on another master.
    queues: HashMap<&'static str, String>,
    /// Owners on different masters.
    owners: Vec<String>,
}

/// The kinds the harness registers, one queue (and master) each.
const KINDS: [&str; 3] = ["echo", "render", "mail"];

impl Harness {
    async fn start(cluster: RedisCluster) -> Self {
        Self::start_with(cluster, |_| {}).await
    }

    async fn start_with(cluster: RedisCluster, adjust: impl FnOnce(&mut Config)) -> Self {
        let queue_tags = cluster.tags_per_master("queue", 1).await;
        let owner_tags = cluster.tags_per_master("owner", 1).await;
        let mut masters: Vec<usize> = queue_tags.keys().copied().collect();
        masters.sort_unstable();
        assert_eq!(masters.len(), 3, "three masters");
        let mut driver = JobDriver::connect(&cluster.url())
            .await
            .expect("driver connects to the cluster");
        let mut queues = HashMap::new();
        for (kind, master) in KINDS.into_iter().zip(&masters) {
            let queue = queue_tags[master][0].clone();
            driver.register_kind(kind, &queue).await.expect("register");
            queues.insert(kind, queue);
        }
        let owners = masters
            .iter()
            .map(|master| owner_tags[master][0].clone())
            .collect();
        let mut config = Config::for_redis(cluster.url());
        config.auth = Some(AuthMode::Jwt);
        config.jwt_secret = Some(SECRET.into());
        adjust(&mut config);
        let gateway = TestGateway::start_with(config).await;
        Self {
            cluster,
            gateway,
            driver,
            http: reqwest::Client::new(),
            queues,
            owners,
        }
    }

    /// `POST /v1/jobs` as `owner`: status and body.
    async fn submit_as(&self, owner: &str, job: Value) -> (u16, Value) {
        self.request("POST", "/v1/jobs", &token(owner), Some(job))
            .await
    }

    /// Submits `job` as `owner`, expecting 202; the new job's id.
    async fn submitted(&self, owner: &str, job: Value) -> String {
        let (status, body) = self.submit_as(owner, job).await;
        assert_eq!(status, 202, "{body}");
        body["job_id"].as_str().expect("job_id").to_owned()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().expect("method"), self.gateway.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("request");
        let status = answer.status().as_u16();
        let text = answer.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET path` as `owner`: status and body.
    async fn get_as(&self, owner: &str, path: &str) -> (u16, Value) {
        self.request("GET", path, &token(owner), None).await
    }

    async fn snapshot(&self, owner: &str, job_id: &str) -> Value {
        let (status, body) = self.get_as(owner, &format!("/v1/jobs/{job_id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `POST /v1/jobs/{job_id}/cancel` as `owner`: status and body.
    async fn cancel_as(&self, owner: &str, job_id: &str) -> (u16, Value) {
        self.request(
            "POST",
            &format!("/v1/jobs/{job_id}/cancel"),
            &token(owner),
            None,
        )
        .await
    }

    /// Every item (under `items_key`) of a paged listing at `path` (which
    /// has a query already), read `limit` at a time with `token`, each
    /// page answered 200.
    async fn all_pages(&self, path: &str, limit: u32, token: &str, items_key: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(cursor) => format!("{path}?limit={limit}&cursor={cursor}"),
                None => format!("{path}?limit={limit}"),
            };
            let (status, page) = self.request("GET", &query, token, None).await;
            assert_eq!(status, 200, "{page}");
            items.extend(page[items_key].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, &admin_token(), body).await
    }

    /// The masters the keys of `job_ids` live on.
    async fn masters_of_jobs(&self, job_ids: &[String]) -> HashSet<usize> {
        let mut masters = HashSet::new();
        for job_id in job_ids {
            masters.insert(
                self.cluster
                    .master_for_key(&format!("jobgate:job:{{{job_id}}}"))
                    .await,
            );
        }
        masters
    }
}

#[tokio::test]
async fn submit_snapshot_cancel_history_and_listing_work_across_slots() {
    let started = Instant::now();
    let h = Harness::start(RedisCluster::start(3)).await;
    let owner = h.owners[0].clone();

    // Jobs of every kind (three queues, three masters), every band.
    let mut job_ids = Vec::new();
    for round in 0..4 {
        for (kind, priority) in KINDS.iter().zip([9, 5, 1]) {
            let job = json!({"kind": kind, "params": {"round": round}, "priority": priority});
            job_ids.push(h.submitted(&owner, job).await);
        }
    }
    assert!(
        h.masters_of_jobs(&job_ids).await.len() >= 2,
        "the jobs landed on several masters"
    );
    for job_id in &job_ids {
        let snapshot = h.snapshot(&owner, job_id).await;
        assert_eq!(snapshot["status"], "queued", "{snapshot}");
    }
    // Each queue entry is in its queue's band stream, on its own master.
    let mut conn = h.cluster.connection().await;
    for (kind, band) in KINDS.iter().zip(["high", "normal", "low"]) {
        let stream = format!("jobgate:queue:{{{}}}:{band}", h.queues[kind]);
        let length: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .expect("xlen");
        assert_eq!(length, 4, "{stream}");
    }

    // Another owner sees none of them.
    let other = h.owners[1].clone();
    let (status, _) = h.get_as(&other, &format!("/v1/jobs/{}", job_ids[0])).await;
    assert_eq!(status, 404);

    // Cancel a queued job, and a running one (its worker is asked).
    let (status, body) = h.cancel_as(&owner, &job_ids[0]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let mut driver = JobDriver::connect(&h.cluster.url()).await.expect("driver");
    assert_eq!(driver.start(&job_ids[1]).await.expect("start"), "ok");
    let (status, body) = h.cancel_as(&owner, &job_ids[1]).await;
    assert_eq!(status, 202, "{body}");
    let running = h.snapshot(&owner, &job_ids[1]).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["cancel_requested"], true, "{running}");

    // A job run to its end: its whole history over SSE.
    assert_eq!(driver.start(&job_ids[2]).await.expect("start"), "ok");
    assert_eq!(
        driver
            .progress(&job_ids[2], 1, 1, 2)
            .await
            .expect("progress"),
        "ok"
    );
    assert_eq!(
        driver
            .complete(&job_ids[2], 1, r#"{"done":true}"#)
            .await
            .expect("complete"),
        "ok"
    );
    let url = h.gateway.url(&format!(
        "/v1/jobs/{}/events?access_token={}",
        job_ids[2],
        token(&owner)
    ));
    let mut sse = SseClient::connect(&url, None).await.expect("sse");
    let events = sse.collect(WAIT).await.expect("events");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["queued", "started", "progress", "completed"]);

    // The owner's listing, a page at a time: every job, newest first.
    let listed: Vec<String> = h
        .all_pages("/v1/jobs", 5, &token(&owner), "jobs")
        .await
        .iter()
        .map(|job| job["job_id"].as_str().expect("id").to_owned())
        .collect();
    let mut newest_first = job_ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let (status, page) = h
        .get_as(&owner, "/v1/jobs?status=cancelled&kind=echo")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().expect("jobs").len(), 1, "{page}");
    eprintln!("took {:?}", started.elapsed());
}

/// A RESP3 cluster connection subscribed (SSUBSCRIBE) to `channels`, and
/// the messages it receives.
async fn sharded_subscriber(
    cluster: &RedisCluster,
    channels: &[String],
) -> (
    redis::cluster_async::ClusterConnection,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let seeds: Vec<String> = cluster.url().split(',').map(str::to_owned).collect();
    let client = redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(sender)
        .build()
        .expect("client");
    let mut conn = client.get_async_connection().await.expect("connection");
    for channel in channels {
        conn.ssubscribe(channel).await.expect("ssubscribe");
    }
    (conn, receiver)
}

/// The next `smessage` on `receiver`: (channel, payload).
async fn next_message(
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let push = tokio::time::timeout(left, receiver.recv())
            .await
            .expect("a message in time")
            .expect("the subscriber lives");
        if push.kind == redis::PushKind::SMessage {
            let text = |value: &redis::Value| -> String {
                redis::from_redis_value_ref(value).expect("text")
            };
            return (text(&push.data[0]), text(&push.data[1]));
        }
    }
}

#[tokio::test]
async fn submissions_and_re_runs_notify_the_owner_s_channel_on_its_slot() {
    let h = Harness::start(RedisCluster::start(3)).await;
    let channels: Vec<String> = h
        .owners
        .iter()
        .map(|owner| format!("jobgate:live:owner:{{{owner}}}"))
        .collect();
    let (_subscriber, mut messages) = sharded_subscriber(&h.cluster, &channels).await;
    for owner in &h.owners {
        for kind in KINDS {
            let job_id = h
                .submitted(owner, json!({"kind": kind, "params": {}}))
                .await;
            let (channel, payload) = next_message(&mut messages).await;
            assert_eq!(channel, format!("jobgate:live:owner:{{{owner}}}"));
            assert_eq!(payload, job_id);
        }
    }
    // A delayed job is announced when it is created, too.
    let owner = &h.owners[2];
    let job_id = h
        .submitted(
            owner,
            json!({"kind": "mail", "params": {}, "delay_ms": 60_000}),
        )
        .await;
    assert_eq!(next_message(&mut messages).await.1, job_id);
}

#[tokio::test]
async fn queue_admin_and_dead_letters_work_across_slots() {
    let mut h = Harness::start(RedisCluster::start(3)).await;
    // One job of each kind per owner: three queues, three owners, and job
    // keys wherever their ids fall.
    let mut jobs: Vec<(String, &str, String)> = Vec::new();
    for owner in h.owners.clone() {
        for kind in KINDS {
            let job = json!({"kind": kind, "params": {}, "priority": 5, "max_attempts": 1});
            let job_id = h.submitted(&owner, job).await;
            jobs.push((owner.clone(), kind, job_id));
        }
    }

    // The queues as an operator sees them.
    let (status, overview) = h.admin("GET", "/v1/admin/queues", None).await;
    assert_eq!(status, 200, "{overview}");
    let listed = overview["queues"].as_array().expect("queues");
    assert_eq!(listed.len(), 3, "{overview}");
    for queue in listed {
        assert_eq!(queue["bands"]["normal"], 3, "{queue}");
        assert_eq!(queue["paused"], false, "{queue}");
    }
    let render = h.queues["render"].clone();
    let (status, paused) = h
        .admin("POST", &format!("/v1/admin/queues/{render}/pause"), None)
        .await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)), "{paused}");
    let (_, overview) = h.admin("GET", "/v1/admin/queues", None).await;
    let paused_now: Vec<&str> = overview["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter(|q| q["paused"] == true)
        .map(|q| q["queue"].as_str().expect("name"))
        .collect();
    assert_eq!(paused_now, [render.as_str()]);
    let (status, _) = h
        .admin("POST", &format!("/v1/admin/queues/{render}/resume"), None)
        .await;
    assert_eq!(status, 200);

    // Every job runs out of its one attempt and is buried in its queue's
    // dead letters, as a worker does it.
    for kind in KINDS {
        let queue = h.queues[kind].clone();
        for _ in 0..3 {
            let (entry, job_id) = h
                .driver
                .take_entry(&queue, "normal")
                .await
                .expect("read")
                .expect("an entry");
            assert_eq!(h.driver.start(&job_id).await.expect("start"), "ok");
            let failed = h
                .driver
                .op(&job_id, &["retry", "1", "boom", "failed on purpose", "0"])
                .await
                .expect("retry");
            assert_eq!(failed, "failed");
            let buried = h
                .driver
                .bury(&queue, "normal", &job_id, &entry, kind)
                .await
                .expect("bury");
            assert_eq!(buried, "ok");
        }
    }
    let (_, overview) = h.admin("GET", "/v1/admin/queues", None).await;
    for queue in overview["queues"].as_array().expect("queues") {
        assert_eq!(queue["dead_letters"], 3, "{queue}");
        assert_eq!(queue["bands"]["normal"], 0, "{queue}");
    }

    // The command-line tools read the same through the cluster.
    let dlq = cli(&h.cluster.url(), &["dlq", "list", "--json"]);
    let queues = cli(&h.cluster.url(), &["queues", "--json"]);
    for (_, _, job_id) in &jobs {
        assert!(dlq.contains(job_id.as_str()), "{dlq}");
    }
    for queue in h.queues.values() {
        assert!(queues.contains(&format!("\"{queue}\"")), "{queues}");
    }

    // Listed a page at a time across the three queues, with each job's
    // owner and attempts read from its record.
    let mut seen = Vec::new();
    let items = h
        .all_pages("/v1/admin/dead-letters", 4, &admin_token(), "items")
        .await;
    for item in &items {
        let job_id = item["job_id"].as_str().expect("id").to_owned();
        let (owner, _, _) = jobs
            .iter()
            .find(|(_, _, id)| *id == job_id)
            .expect("a job of the test");
        assert_eq!(item["owner"], json!(owner), "{item}");
        assert_eq!(item["attempts"], 1, "{item}");
        seen.push(job_id);
    }
    seen.sort();
    let mut all: Vec<String> = jobs.iter().map(|(_, _, id)| id.clone()).collect();
    all.sort();
    assert_eq!(seen, all);

    // Shown, re-run (the owner's channel hears of it), removed, purged.
    let (owner, kind, job_id) = jobs[4].clone();
    let (status, shown) = h
        .admin("GET", &format!("/v1/admin/dead-letters/{job_id}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["job"]["status"], "failed", "{shown}");
    let channel = format!("jobgate:live:owner:{{{owner}}}");
    let (_subscriber, mut messages) = sharded_subscriber(&h.cluster, &[channel]).await;
    let (status, rerun) = h
        .admin(
            "POST",
            &format!("/v1/admin/dead-letters/{job_id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{rerun}");
    assert_eq!(rerun["status"], "queued", "{rerun}");
    assert_eq!(next_message(&mut messages).await.1, job_id);
    let queue = h.queues[kind].clone();
    let (_, again) = h
        .driver
        .take_entry(&queue, "normal")
        .await
        .expect("read")
        .expect("the re-run's entry");
    assert_eq!(again, job_id);

    let (status, many) = h
        .admin(
            "POST",
            "/v1/admin/dead-letters/retry",
            Some(json!({"queue": h.queues["echo"], "limit": 2})),
        )
        .await;
    assert_eq!(status, 200, "{many}");
    let results = many["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{many}");
    assert!(results.iter().all(|r| r["outcome"] == "requeued"), "{many}");

    let removed = jobs
        .iter()
        .find(|(_, kind, id)| *kind == "mail" && *id != job_id)
        .expect("a mail job")
        .2
        .clone();
    let (status, _) = h
        .admin("DELETE", &format!("/v1/admin/dead-letters/{removed}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, purged) = h
        .admin("POST", "/v1/admin/dead-letters/purge", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{purged}");
    // 9 buried, 1 re-run, 2 re-run together, 1 removed.
    assert_eq!(purged["purged"], 5, "{purged}");
    let (_, page) = h.admin("GET", "/v1/admin/dead-letters", None).await;
    assert_eq!(page["items"], json!([]), "{page}");
}

#[tokio::test]
async fn delayed_jobs_kinds_idempotency_rate_metrics_readiness_and_a_moved_slot() {
    let started = Instant::now();
    let h = Harness::start_with(RedisCluster::start(3), |config| {
        config.submits_per_minute = 40;
    })
    .await;
    let owner = h.owners[0].clone();

    // Readiness reports the cluster and its nodes.
    let (_, ready) = h.gateway.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["redis_mode"], "cluster", "{ready}");
    assert_eq!(ready["cluster"]["state"], "ok", "{ready}");
    let nodes = ready["cluster"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{ready}");
    assert!(
        nodes
            .iter()
            .all(|n| n["state"] == "ok" && n["role"] == "master")
    );
    let slots: u64 = nodes.iter().map(|n| n["slots"].as_u64().expect("n")).sum();
    assert_eq!(slots, 16384);
    assert_eq!(ready["cluster"]["failing_nodes"], json!([]), "{ready}");

    // Delayed jobs on every queue are moved into their band streams when
    // due, by the gateway's mover.
    let mut delayed = Vec::new();
    for kind in KINDS {
        let job = json!({"kind": kind, "params": {}, "delay_ms": 700, "priority": 9});
        delayed.push(h.submitted(&owner, job).await);
    }
    let mut conn = h.cluster.connection().await;
    let band_length = |queue: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("XLEN")
                .arg(format!("jobgate:queue:{{{queue}}}:high"))
                .query_async::<u64>(&mut conn)
                .await
                .expect("xlen")
        }
    };
    for kind in KINDS {
        assert_eq!(band_length(h.queues[kind].clone()).await, 0, "not yet due");
    }
    let deadline = Instant::now() + WAIT;
    for kind in KINDS {
        while band_length(h.queues[kind].clone()).await == 0 {
            assert!(
                Instant::now() < deadline,
                "{kind}'s delayed job was not moved"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for job_id in &delayed {
        assert_eq!(h.snapshot(&owner, job_id).await["status"], "queued");
    }

    // Kinds are routed from `jobgate:kinds:v2` only: a kind only a
    // protocol 1 worker registered is refused at the door.
    let _: i64 = redis::cmd("HSET")
        .arg("jobgate:kinds")
        .arg("old_kind")
        .arg(r#"{"queue":"default","worker":"v1","seen_at":0}"#)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let (status, body) = h
        .submit_as(&owner, json!({"kind": "old_kind", "params": {}}))
        .await;
    assert_eq!((status, &body["code"]), (422, &json!("unknown_kind")));

    // An idempotency key (on the owner's slot) names one job.
    let keyed = |body: Value| {
        h.http
            .post(h.gateway.url("/v1/jobs"))
            .bearer_auth(token(&owner))
            .header("idempotency-key", "cluster-1")
            .json(&body)
            .send()
    };
    let first: Value = keyed(json!({"kind": "render", "params": {"a": 1}}))
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let again = keyed(json!({"kind": "render", "params": {"a": 1}}))
        .await
        .expect("post");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["job_id"], first["job_id"]);
    let conflict = keyed(json!({"kind": "render", "params": {"a": 2}}))
        .await
        .expect("post");
    assert_eq!(conflict.status(), 409);

    // The owner's rate (a counter on the owner's slot) holds across queues;
    // another owner's is its own.
    let mut limited = 0;
    for round in 0..45 {
        let kind = KINDS[round % 3];
        let (status, body) = h
            .submit_as(&owner, json!({"kind": kind, "params": {}}))
            .await;
        match status {
            202 => {}
            429 => {
                assert_eq!(body["code"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(limited > 0, "over 40 a minute is refused");
    let (status, _) = h
        .submit_as(&h.owners[1], json!({"kind": "echo", "params": {}}))
        .await;
    assert_eq!(status, 202);

    // Cancelled queued jobs are counted by the gateway in its queue's
    // stats hash; what workers counted in theirs adds up too.
    let victim = h
        .submitted(&h.owners[2], json!({"kind": "mail", "params": {}}))
        .await;
    let (status, _) = h.cancel_as(&h.owners[2], &victim).await;
    assert_eq!(status, 202);
    // So is a job failed because its queue entry could not be written
    // (here: the band's key holds a string, so XADD is refused).
    let band = format!("jobgate:queue:{{{}}}:normal", h.queues["render"]);
    let _: () = redis::cmd("SET")
        .arg(&band)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .expect("set");
    let (status, body) = h
        .submit_as(&h.owners[1], json!({"kind": "render", "params": {}}))
        .await;
    assert_eq!(status, 500, "{body}");
    let _: i64 = redis::cmd("DEL")
        .arg(&band)
        .query_async(&mut conn)
        .await
        .expect("del");
    for (field, count) in [
        ("outcome|completed|echo", 2),
        ("latency|echo|3", 2),
        ("latency_count|echo", 2),
        ("latency_sum_ms|echo", 60),
    ] {
        let _: i64 = redis::cmd("HINCRBY")
            .arg(format!("jobgate:stats:{{{}}}", h.queues["echo"]))
            .arg(field)
            .arg(count)
            .query_async(&mut conn)
            .await
            .expect("hincrby");
    }
    let expected = [
        r#"jobgate_job_outcomes_total{event="cancelled",kind="mail"} 1"#,
        r#"jobgate_job_duration_seconds_count{kind="mail"} 1"#,
        r#"jobgate_job_outcomes_total{event="failed",kind="render"} 1"#,
        r#"jobgate_job_duration_seconds_count{kind="render"} 1"#,
        r#"jobgate_job_outcomes_total{event="completed",kind="echo"} 2"#,
        r#"jobgate_job_duration_seconds_bucket{kind="echo",le="0.05"} 2"#,
        r#"jobgate_job_duration_seconds_sum{kind="echo"} 0.06"#,
    ];
    let deadline = Instant::now() + WAIT;
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = h
            .http
            .get(h.gateway.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if expected.iter().all(|line| metrics.contains(line)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for line in expected {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    for queue in h.queues.values() {
        assert!(
            metrics.contains(&format!("jobgate_queue_length{{queue=\"{queue}\"}}")),
            "{metrics}"
        );
    }
    // Memory: the fullest master's figures.
    assert!(
        metrics.contains("jobgate_redis_used_memory_bytes "),
        "{metrics}"
    );

    // A queue's slot moves to another master: the store follows.
    let queue = h.queues["render"].clone();
    let slot = h.cluster.slot_of(&format!("{{{queue}}}")).await;
    let from = h.cluster.master_for_slot(slot).await;
    let to = (0..3).find(|&m| m != from).expect("another master");
    h.cluster.migrate_slot(slot, to).await;
    let (status, body) = h
        .submit_as(&h.owners[1], json!({"kind": "render", "params": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, overview) = h.admin("GET", "/v1/admin/queues", None).await;
    assert_eq!(status, 200, "{overview}");
    eprintln!("took {:?}", started.elapsed());
}

/// Runs `jobgate <args>` against `redis_url`; its stdout (it must succeed).
fn cli(redis_url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(JOBGATE)
        .args(args)
        .env("JOBGATE_REDIS_URL", redis_url)
        .output()
        .expect("run jobgate");
    assert!(
        output.status.success(),
        "jobgate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_master_killed_under_a_queued_job_fails_over_and_the_store_answers_again() {
    let mut h = Harness::start(RedisCluster::start_with_replicas(3, 1)).await;
    let owner = h.owners[0].clone();
    // A queued job on a master other than the first seed's (the first
    // seed also carries the pub/sub link, which is not under test here).
    let (job_id, master) = loop {
        let job_id = h
            .submitted(&owner, json!({"kind": "echo", "params": {}}))
            .await;
        let master = h
            .cluster
            .master_for_key(&format!("jobgate:job:{{{job_id}}}"))
            .await;
        if master != 0 {
            break (job_id, master);
        }
    };
    // Replication is asynchronous: let the replicas catch up first.
    let mut conn = h.cluster.connection().await;
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("wait");

    let killed = h
        .cluster
        .kill_master_of(&format!("jobgate:job:{{{job_id}}}"))
        .await;
    assert_eq!(killed, master);
    let killed_at = Instant::now();

    // The store answers for the job again once a replica took over, and
    // /readyz is answered (Redis reachable) meanwhile and after.
    let mut unready_answers = 0;
    let snapshot = loop {
        let (status, body) = h.get_as(&owner, &format!("/v1/jobs/{job_id}")).await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        if h.gateway.readyz().await.0 != 200 {
            unready_answers += 1;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no answer for the job 30 s after its master died: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered_in = killed_at.elapsed();
    assert_eq!(snapshot["status"], "queued", "{snapshot}");
    eprintln!(
        "the job's snapshot answered again {recovered_in:?} after its master died ({unready_answers} unready /readyz answers meanwhile)"
    );
    h.cluster.wait_for_failover().await;
    let promoted = h
        .cluster
        .master_for_key(&format!("jobgate:job:{{{job_id}}}"))
        .await;
    assert_ne!(promoted, killed);

    // New jobs of every queue are taken again.
    for kind in KINDS {
        let (status, body) = h
            .submit_as(&owner, json!({"kind": kind, "params": {}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, ready) = h.gateway.readyz().await;
    assert_eq!(status, 200, "{ready}");
    let killed_address = format!("127.0.0.1:{}", h.cluster.port(killed));
    assert!(
        ready["cluster"]["failing_nodes"]
            .as_array()
            .expect("failing nodes")
            .iter()
            .any(|node| *node == json!(killed_address)),
        "{ready}"
    );

    // The old master comes back as a replica; the job is still there.
    h.cluster.restart(killed).await;
    assert_eq!(h.snapshot(&owner, &job_id).await["status"], "queued");
    assert_eq!(h.driver.start(&job_id).await.expect("start"), "ok");
}

#[tokio::test]
async fn a_gateway_started_while_the_cluster_is_down_serves_once_it_is_up() {
    let mut cluster = RedisCluster::start(3);
    let mut driver = JobDriver::connect(&cluster.url()).await.expect("driver");
    driver.register_kind("echo", "default").await.expect("kind");
    drop(driver);
    for node in 0..cluster.len() {
        cluster.kill(node);
    }
    let mut config = Config::for_redis(cluster.url());
    config.auth = Some(AuthMode::Jwt);
    config.jwt_secret = Some(SECRET.into());
    let gateway = TestGateway::start_unready(config).await;
    let http = reqwest::Client::new();

    let (status, body) = gateway.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "redis_unavailable", "{body}");
    assert_eq!(body["redis_mode"], Value::Null, "{body}");
    let submit = || {
        http.post(gateway.url("/v1/jobs"))
            .bearer_auth(token("alice"))
            .json(&json!({"kind": "echo", "params": {}}))
            .send()
    };
    let refused = submit().await.expect("submit");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<Value>().await.expect("json")["code"],
        "redis_unavailable"
    );

    cluster.restart_stopped().await;
    gateway.wait_ready().await;
    let (_, body) = gateway.readyz().await;
    assert_eq!(body["redis_mode"], "cluster", "{body}");
    let accepted = submit().await.expect("submit");
    assert_eq!(accepted.status(), 202);

    // The whole cluster restarts under a running gateway: it is served
    // again once the nodes are back (from their append-only files).
    for node in 0..cluster.len() {
        cluster.kill(node);
    }
    assert_eq!(submit().await.expect("submit").status(), 503);
    cluster.restart_stopped().await;
    let back = Instant::now();
    loop {
        let status = submit().await.expect("submit").status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not served 20 s after the cluster came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "served again {:?} after the cluster came back",
        back.elapsed()
    );
}

#[tokio::test]
async fn the_gateway_reaches_a_tls_cluster_verifying_every_node_s_certificate() {
    let dir = std::env::temp_dir().join(format!("jobgate-cluster-tls-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir);
    let cluster = RedisCluster::start_tls(3, &tls);
    let queues = cluster.tags_per_master("queue", 1).await;
    let mut driver = JobDriver::connect(&cluster.url()).await.expect("driver");
    let mut kinds = Vec::new();
    for (index, found) in queues.values().enumerate() {
        let kind = format!("kind{index}");
        driver.register_kind(&kind, &found[0]).await.expect("kind");
        kinds.push(kind);
    }

    let gateway = GatewayProcess::start(JOBGATE, &cluster.tls_url(), Some(&tls.ca_file));
    let (status, ready) = gateway.readyz(true).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["redis_mode"], "cluster", "{ready}");
    let mut job_ids = Vec::new();
    for round in 0..3 {
        for kind in &kinds {
            let job = json!({"kind": kind, "params": {"round": round}});
            job_ids.push(gateway.submit(job).await);
        }
    }
    let page = get_json(&gateway.url("/v1/jobs?limit=100")).await;
    assert_eq!(page["jobs"].as_array().expect("jobs").len(), 9, "{page}");
    for job_id in &job_ids {
        let snapshot = get_json(&gateway.url(&format!("/v1/jobs/{job_id}"))).await;
        assert_eq!(snapshot["status"], "queued", "{snapshot}");
    }

    // A gateway that does not trust the CA refuses the nodes: after a few
    // of its watcher's tries it has still not made contact.
    let untrusting = GatewayProcess::start(JOBGATE, &cluster.tls_url(), None);
    untrusting.readyz(false).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = untrusting.readyz(false).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "redis_unavailable", "{body}");
    assert_eq!(body["redis_mode"], Value::Null, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
