//! Batch submission over real sockets: `submit_batch` over WebSocket and
//! `POST /v1/jobs/batch`, on a real Redis (and a real Redis Cluster), with
//! per-job answers, per-job errors that refuse only their job, idempotency
//! within and across batches, and no accepted job lost when Redis restarts
//! in the middle of batches.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jobgate_testkit::{EchoStack, JobDriver, RedisCluster, RedisServer, TestGateway, WsClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/jobs/batch` with `body`: status and JSON body.
async fn post_batch(gateway: &TestGateway, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(gateway.url("/v1/jobs/batch"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("json body"))
}

fn echo(n: u64) -> Value {
    json!({"job": {"kind": "echo", "params": {"n": n}}})
}

/// Every frame until `count` answers (`accepted` or `error`) of `request_id`,
/// by index; events are returned apart.
async fn answers(
    ws: &mut WsClient,
    request_id: &str,
    count: usize,
) -> (HashMap<u64, Value>, Vec<Value>) {
    let mut by_index = HashMap::new();
    let mut events = Vec::new();
    while by_index.len() < count {
        let frame = ws.next(WAIT).await.expect("a frame");
        match frame["type"].as_str() {
            Some("accepted" | "error") => {
                assert_eq!(frame["request_id"], request_id, "{frame}");
                let index = frame["index"].as_u64().expect("an index");
                assert!(
                    by_index.insert(index, frame).is_none(),
                    "one answer per job"
                );
            }
            Some("event") => events.push(frame),
            _ => panic!("unexpected frame {frame}"),
        }
    }
    (by_index, events)
}

#[tokio::test]
async fn a_websocket_batch_answers_each_job_and_a_bad_one_refuses_only_itself() {
    let mut h = EchoStack::start().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    ws.send(
        json!({"type": "submit_batch", "request_id": "b-1", "jobs": [
            echo(0),
            {"job": {"kind": "echo", "params": 3}},
            echo(2),
            "not a job",
        ]}),
    )
    .await
    .expect("send");
    let (answers, mut events) = answers(&mut ws, "b-1", 4).await;
    for index in [0, 2] {
        let accepted = &answers[&index];
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        h.schemas.assert_valid("ws_server_message", accepted);
    }
    for index in [1, 3] {
        let error = &answers[&index];
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "invalid_request", "{error}");
        h.schemas.assert_valid("ws_server_message", error);
    }
    // Each accepted job is watched: its events arrive after its accepted.
    let job_id = answers[&2]["job_id"].as_str().expect("id").to_owned();
    assert_eq!(h.driver.start(&job_id).await.expect("start"), "ok");
    assert_eq!(
        h.driver.complete(&job_id, 1, "{}").await.expect("complete"),
        "ok"
    );
    events.extend(
        ws.events_until_terminal(&job_id, WAIT)
            .await
            .expect("events"),
    );
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["job_id"] == job_id.as_str())
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    // A single submit's answer carries no index, as before.
    let single = ws
        .submit("s-1", json!({"kind": "echo", "params": {}}))
        .await
        .expect("accepted");
    assert!(single.get("index").is_none(), "{single}");
}

#[tokio::test]
async fn a_batch_of_no_jobs_or_too_many_is_refused_whole_and_changes_nothing() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let mut config = jobgate_gateway::Config::for_redis(redis.url());
    config.max_batch_jobs = 3;
    let gateway = TestGateway::start_with(config).await;
    let keys_before = redis.keys().await.len();

    let (status, body) = post_batch(&gateway, json!({"jobs": []})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request"))
    );
    let four: Vec<Value> = (0..4).map(echo).collect();
    let (status, body) = post_batch(&gateway, json!({"jobs": four})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request"))
    );
    let (status, body) = post_batch(&gateway, json!({"jobs": [echo(1)], "more": 1})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );

    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    ws.send(json!({"type": "submit_batch", "request_id": "big", "jobs": four}))
        .await
        .expect("send");
    let error = ws.next(WAIT).await.expect("error");
    assert_eq!(error["type"], "error");
    assert_eq!(error["request_id"], "big");
    assert!(error.get("index").is_none(), "the whole batch: {error}");
    assert_eq!(redis.keys().await.len(), keys_before, "nothing was written");
}

#[tokio::test]
async fn an_http_batch_answers_207_with_each_job_and_is_idempotent_per_job() {
    let h = EchoStack::start().await;
    let (status, body) = post_batch(
        &h.gateway,
        json!({"jobs": [
            {"job": {"kind": "echo", "params": {"n": 1}}, "idempotency_key": "k-1"},
            {"job": {"kind": "echo", "params": {"n": 2}}},
            {"job": {"kind": "nobody-runs-this", "params": {}}},
            {"job": {"kind": "echo", "params": {"n": 1}}, "idempotency_key": "k-1"},
            {"job": {"kind": "echo", "params": {"n": 9}}, "idempotency_key": "k-1"},
        ]}),
    )
    .await;
    assert_eq!(status, 207, "{body}");
    h.schemas.assert_valid("submit_batch_response", &body);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i, "{result}");
    }
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["status"], 202);
    assert_eq!(results[2]["status"], 422);
    assert_eq!(results[2]["error"]["code"], "unknown_kind");
    // Within the batch: the first job with a key creates, a later one with
    // the same request answers it, one with another request conflicts.
    let first = results[0]["job"]["job_id"].as_str().expect("id");
    assert!(results[0].get("replayed").is_none(), "{}", results[0]);
    assert_eq!(results[3]["status"], 202);
    assert_eq!(results[3]["replayed"], true);
    assert_eq!(results[3]["job"]["job_id"], first);
    assert_eq!(results[4]["status"], 409);
    assert_eq!(results[4]["error"]["code"], "idempotency_conflict");

    // Across batches, and with a single submit: the same job.
    let (status, again) = post_batch(
        &h.gateway,
        json!({"jobs": [{"job": {"kind": "echo", "params": {"n": 1}}, "idempotency_key": "k-1"}]}),
    )
    .await;
    assert_eq!(status, 207);
    assert_eq!(again["results"][0]["job"]["job_id"], first);
    assert_eq!(again["results"][0]["replayed"], true);
    let single = reqwest::Client::new()
        .post(h.gateway.url("/v1/jobs"))
        .header("idempotency-key", "k-1")
        .json(&json!({"kind": "echo", "params": {"n": 1}}))
        .send()
        .await
        .expect("submit");
    let single: Value = single.json().await.expect("json");
    assert_eq!(single["job_id"], first);

    // Exactly two jobs were created and enqueued.
    let mut conn = h
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let entries: u64 = redis::cmd("XLEN")
        .arg("jobgate:queue:{default}:normal")
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(entries, 2);
}

#[tokio::test]
async fn a_batch_on_a_cluster_creates_jobs_spread_over_every_master() {
    let cluster = RedisCluster::start(3);
    let mut driver = JobDriver::connect(&cluster.url()).await.expect("driver");
    driver
        .register_kind("echo", "default")
        .await
        .expect("register");
    let gateway = TestGateway::start(&cluster.url()).await;
    let jobs: Vec<Value> = (0..60).map(echo).collect();
    let (status, body) = post_batch(&gateway, json!({"jobs": jobs})).await;
    assert_eq!(status, 207, "{body}");
    let ids: Vec<String> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert_eq!(r["status"], 202, "{r}");
            r["job"]["job_id"].as_str().expect("id").to_owned()
        })
        .collect();
    let mut conn = cluster.connection().await;
    let mut slots = HashSet::new();
    for id in &ids {
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("jobgate:job:{{{id}}}"))
            .arg("status")
            .query_async(&mut conn)
            .await
            .expect("hget");
        assert_eq!(status.as_deref(), Some("queued"), "{id}");
        slots.insert(redis::cluster_routing::Slot::for_key(format!("{{{id}}}")));
    }
    assert!(slots.len() > 10, "the jobs are spread over many slots");
    let entries: u64 = redis::cmd("XLEN")
        .arg("jobgate:queue:{default}:normal")
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(entries, 60);
    // Each job runs as any other.
    assert_eq!(driver.start(&ids[7]).await.expect("start"), "ok");
}

#[tokio::test]
async fn a_redis_restart_during_batches_loses_no_accepted_job() {
    let mut redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");

    const BATCHES: usize = 20;
    const JOBS: usize = 25;
    let sender = tokio::spawn({
        let url = gateway.url("/v1/jobs/batch");
        async move {
            let mut http_accepted = Vec::new();
            for b in 0..BATCHES {
                let jobs: Vec<Value> = (0..JOBS as u64).map(echo).collect();
                if let Ok(answer) = reqwest::Client::new()
                    .post(&url)
                    .json(&json!({"jobs": jobs}))
                    .send()
                    .await
                    && answer.status() == 207
                {
                    let body: Value = answer.json().await.expect("json");
                    for result in body["results"].as_array().expect("results") {
                        if result["status"] == 202 {
                            http_accepted
                                .push(result["job"]["job_id"].as_str().expect("id").to_owned());
                        } else {
                            assert_eq!(result["error"]["code"], "redis_unavailable", "{result}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50 + (b as u64 % 3) * 20)).await;
            }
            http_accepted
        }
    });
    let mut ws_accepted = Vec::new();
    for b in 0..BATCHES {
        let jobs: Vec<Value> = (0..JOBS as u64).map(echo).collect();
        let request_id = format!("b-{b}");
        ws.send(json!({"type": "submit_batch", "request_id": request_id, "jobs": jobs}))
            .await
            .expect("send");
        if b == BATCHES / 3 {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            redis.restart();
        }
        let (answers, _) = answers(&mut ws, &request_id, JOBS).await;
        for answer in answers.values() {
            if answer["type"] == "accepted" {
                ws_accepted.push(answer["job_id"].as_str().expect("id").to_owned());
            } else {
                let code = answer["code"].as_str().expect("code");
                assert!(matches!(code, "redis_unavailable" | "internal"), "{answer}");
            }
        }
    }
    let mut accepted = sender.await.expect("sender");
    accepted.extend(ws_accepted);
    assert!(
        accepted.len() >= JOBS * BATCHES,
        "most batches went through"
    );

    // Every accepted job is queued, with its queue entry: none was lost.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("jobgate:queue:{default}:normal")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let enqueued: HashSet<&str> = entries
        .iter()
        .filter_map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "job_id")?;
            fields.get(at + 1).map(String::as_str)
        })
        .collect();
    for id in &accepted {
        assert!(
            enqueued.contains(id.as_str()),
            "accepted job {id} has its queue entry"
        );
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("jobgate:job:{{{id}}}"))
            .arg("status")
            .query_async(&mut conn)
            .await
            .expect("hget");
        assert_eq!(status.as_deref(), Some("queued"), "{id}");
    }
}

/// A job of the store's batch, with a known id.
fn new_job(job_id: jobgate_proto::JobId) -> jobgate_store::NewJob {
    jobgate_store::NewJob {
        job_id,
        owner: "alice".to_owned(),
        request: serde_json::from_str(r#"{"kind":"echo","params":{}}"#).expect("request"),
        queue: "default".to_owned(),
        trace: jobgate_store::TraceContext::default(),
        legacy_trace_id: None,
    }
}

#[tokio::test]
async fn a_create_call_that_fails_part_way_leaves_no_job_queued_without_its_entry() {
    let redis = RedisServer::start();
    let (connection, _) = jobgate_store::open(&redis.url()).expect("open");
    let store = jobgate_store::JobStore::new(connection, jobgate_store::StoreSettings::default());
    let ids: Vec<jobgate_proto::JobId> = (0..3).map(|_| jobgate_proto::JobId::new()).collect();
    // The second job's history key holds a string: its XADD fails inside
    // the one submit_many call of the three, after the first was created
    // (and enqueued: on a single server the entry is made in the same call).
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("SET")
        .arg(format!("jobgate:events:{{{}}}", ids[1]))
        .arg("in the way")
        .query_async(&mut conn)
        .await
        .expect("set");
    let jobs: Vec<_> = ids.iter().copied().map(new_job).collect();
    let outcomes = store.submit_many(&jobs, None).await;
    assert!(outcomes.iter().all(Result::is_err), "{outcomes:?}");
    let status = |id: jobgate_proto::JobId| {
        let mut conn = conn.clone();
        async move {
            let status: Option<String> = redis::cmd("HGET")
                .arg(format!("jobgate:job:{{{id}}}"))
                .arg("status")
                .query_async(&mut conn)
                .await
                .expect("hget");
            status
        }
    };
    assert_eq!(status(ids[0]).await.as_deref(), Some("failed"), "repaired");
    assert_eq!(status(ids[2]).await, None, "never created");
    // An entry may name the first job, which is failed: a worker reading it
    // skips it. None names a job still claiming to be queued.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("jobgate:queue:{default}:normal")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    for (_, fields) in &entries {
        assert_eq!(
            fields[0],
            ("job_id".to_owned(), ids[0].to_string()),
            "{entries:?}"
        );
    }
}

#[tokio::test]
async fn a_batch_over_its_owners_rate_creates_only_the_jobs_that_fit() {
    let redis = RedisServer::start();
    let (connection, _) = jobgate_store::open(&redis.url()).expect("open");
    let store = jobgate_store::JobStore::new(connection, jobgate_store::StoreSettings::default());
    let rate = jobgate_store::SubmitRate {
        limit: 5,
        window: Duration::from_secs(3600),
    };
    let hour = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            / 3600
    };
    let (outcomes, ids) = loop {
        let before = hour();
        let ids: Vec<jobgate_proto::JobId> = (0..8).map(|_| jobgate_proto::JobId::new()).collect();
        let jobs: Vec<_> = ids.iter().copied().map(new_job).collect();
        let outcomes = store.submit_many(&jobs, Some(rate)).await;
        // An hour boundary inside the call splits the count: try again.
        if hour() == before {
            break (outcomes, ids);
        }
        let _: () = redis::cmd("FLUSHALL")
            .query_async(
                &mut redis
                    .client()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("conn"),
            )
            .await
            .expect("flush");
    };
    for (n, outcome) in outcomes.iter().enumerate() {
        match outcome.as_ref().expect("answered") {
            jobgate_store::Submitted::Created => assert!(n < 5, "job {n} created"),
            jobgate_store::Submitted::RateLimited { retry_after_s } => {
                assert!(n >= 5, "job {n} refused");
                assert!((1..=3600).contains(retry_after_s));
            }
        }
    }
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    for (n, id) in ids.iter().enumerate() {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("jobgate:job:{{{id}}}"))
            .query_async(&mut conn)
            .await
            .expect("exists");
        assert_eq!(exists, n < 5, "job {n}: a refused job changes nothing");
    }
    let entries: u64 = redis::cmd("XLEN")
        .arg("jobgate:queue:{default}:normal")
        .query_async(&mut conn)
        .await
        .expect("xlen");
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg("jobgate:owner:{alice}:jobs")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(entries, 5);
    let expected: HashSet<String> = ids[..5].iter().map(ToString::to_string).collect();
    assert_eq!(indexed.into_iter().collect::<HashSet<_>>(), expected);
}
