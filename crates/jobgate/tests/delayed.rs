//! Delayed jobs (`delay_ms`, `run_at`): queued with their due time, started
//! by the real Python worker once due — also across a Redis restart —,
//! cancelled before their time without ever running, and moved into their
//! queue exactly once by gateways moving at the same time.

use std::time::Duration;

use jobgate_testkit::{JobDriver, PythonWorker, RedisServer, Schemas, TestGateway, WsClient};
use serde_json::{Value, json};

/// The delay of these tests, and how late a start may be.
const DELAY_MS: u64 = 3_000;
const LATE_BY_AT_MOST_MS: u64 = 500;

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// A job's event history, read from Redis.
async fn history(redis: &RedisServer, job_id: &str) -> Vec<Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("jobgate:events:{{{job_id}}}"))
        .arg("-")
        .arg("+")
        .query_async(&mut connection(redis).await)
        .await
        .expect("xrange");
    entries
        .into_iter()
        .map(|(_, fields)| serde_json::from_str(&fields[0].1).expect("event json"))
        .collect()
}

/// `GET /v1/jobs/{id}` until the job is terminal; answers while Redis is
/// away are skipped.
async fn wait_terminal(gateway: &TestGateway, job_id: &str) -> Value {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(answer) = http
            .get(gateway.url(&format!("/v1/jobs/{job_id}")))
            .send()
            .await
            && answer.status() == 200
        {
            let snapshot: Value = answer.json().await.expect("json");
            if matches!(
                snapshot["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return snapshot;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job_id} did not end");
}

/// The `ts` of the job's first event named `event`.
fn ts_of(events: &[Value], event: &str) -> u64 {
    events
        .iter()
        .find(|e| e["event"] == event)
        .and_then(|e| e["ts"].as_u64())
        .unwrap_or_else(|| panic!("no {event} event in {events:?}"))
}

async fn submit_delayed(gateway: &TestGateway, job: Value) -> String {
    let answer = reqwest::Client::new()
        .post(gateway.url("/v1/jobs"))
        .json(&job)
        .send()
        .await
        .expect("submit");
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("json");
    body["job_id"].as_str().expect("job_id").to_owned()
}

/// Checks a delayed job's queued snapshot and its run time against its
/// history: due `DELAY_MS` after its `queued` event, started no earlier and
/// at most `LATE_BY_AT_MOST_MS` later.
fn assert_started_on_time(events: &[Value], schemas: &Schemas) {
    for event in events {
        schemas.assert_valid("event", event);
    }
    let queued = ts_of(events, "queued");
    assert_eq!(events[0]["data"]["run_at"], queued + DELAY_MS, "{events:?}");
    let started = ts_of(events, "started");
    assert!(
        started >= queued + DELAY_MS && started <= queued + DELAY_MS + LATE_BY_AT_MOST_MS,
        "started {} ms after it was queued",
        started - queued
    );
    assert_eq!(events.last().expect("events")["event"], "completed");
}

#[tokio::test]
async fn a_delayed_job_starts_when_due_and_its_snapshot_shows_when() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "delayed-worker", &[]);
    redis.wait_for_kinds(&["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let schemas = Schemas::load();

    // Over WebSocket: `delay_ms` beside `kind` in the submit's job.
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    let accepted = ws
        .submit(
            "later",
            json!({"kind": "echo", "params": {"x": 1}, "delay_ms": DELAY_MS}),
        )
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("job_id").to_owned();
    let snapshot: Value = reqwest::get(gateway.url(&format!("/v1/jobs/{job_id}")))
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("json");
    schemas.assert_valid("job_snapshot", &snapshot);
    assert_eq!(snapshot["status"], "queued");
    assert_eq!(
        snapshot["run_at"].as_u64(),
        Some(snapshot["created_at"].as_u64().expect("created_at") + DELAY_MS),
        "{snapshot}"
    );
    let events = ws
        .events_until_terminal(&job_id, Duration::from_secs(30))
        .await
        .expect("events");
    assert_started_on_time(&events, &schemas);
    assert_eq!(history(&redis, &job_id).await, events);

    // `run_at` in the past: an ordinary job, runnable at once.
    let now_job =
        submit_delayed(&gateway, json!({"kind": "echo", "params": {}, "run_at": 1})).await;
    let snapshot = wait_terminal(&gateway, &now_job).await;
    assert_eq!(snapshot["status"], "completed");
    assert!(snapshot.get("run_at").is_none(), "{snapshot}");
}

#[tokio::test]
async fn a_delayed_job_survives_a_redis_restart_and_starts_on_time() {
    let mut redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "delayed-restart", &[]);
    redis.wait_for_kinds(&["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let schemas = Schemas::load();

    let job_id = submit_delayed(
        &gateway,
        json!({"kind": "echo", "params": {"x": 2}, "delay_ms": DELAY_MS}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    redis.restart();

    let snapshot = wait_terminal(&gateway, &job_id).await;
    assert_eq!(snapshot["status"], "completed", "{snapshot}");
    assert_started_on_time(&history(&redis, &job_id).await, &schemas);
}

#[tokio::test]
async fn a_delayed_job_cancelled_before_its_time_never_runs() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "delayed-cancel", &[]);
    redis.wait_for_kinds(&["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;

    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    let accepted = ws
        .submit(
            "later",
            json!({"kind": "echo", "params": {}, "delay_ms": DELAY_MS}),
        )
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("job_id").to_owned();
    let queued = ws.next(Duration::from_secs(5)).await.expect("queued");
    assert_eq!(queued["event"], "queued", "{queued}");
    ws.send(json!({"type": "cancel", "job_id": job_id}))
        .await
        .expect("cancel");
    // The cancelled event comes at once: well before the job is due.
    let cancelled = ws
        .next(Duration::from_millis(DELAY_MS / 2))
        .await
        .expect("cancelled");
    assert_eq!(cancelled["event"], "cancelled", "{cancelled}");

    // Once due, the job is moved to its queue and the worker skips it
    // (acknowledges and deletes the entry) without starting it.
    let mut conn = connection(&redis).await;
    for _ in 0..200 {
        let (delayed, waiting): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg("jobgate:delayed:{default}")
            .cmd("XLEN")
            .arg("jobgate:queue:{default}:normal")
            .query_async(&mut conn)
            .await
            .expect("lengths");
        if delayed == 0 && waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = history(&redis, &job_id).await;
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["queued", "cancelled"], "{events:?}");
    assert!(
        ws.next(Duration::from_millis(200)).await.is_err(),
        "no event after cancelled"
    );
}

#[tokio::test]
async fn gateways_moving_at_once_enqueue_each_due_job_exactly_once() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateways = [
        TestGateway::start(&redis.url()).await,
        TestGateway::start(&redis.url()).await,
        TestGateway::start(&redis.url()).await,
    ];
    const JOBS: usize = 60;
    let mut submitted = Vec::new();
    for n in 0..JOBS {
        let gateway = &gateways[n % gateways.len()];
        let job = json!({"kind": "echo", "params": {"n": n}, "delay_ms": 300 + (n as u64 % 5) * 50, "priority": n % 10});
        submitted.push(submit_delayed(gateway, job).await);
    }
    let mut conn = connection(&redis).await;
    let mut delayed: u64 = 1;
    for _ in 0..200 {
        delayed = redis::cmd("ZCARD")
            .arg("jobgate:delayed:{default}")
            .query_async(&mut conn)
            .await
            .expect("zcard");
        if delayed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delayed, 0, "every delayed job was moved");
    let mut enqueued = Vec::new();
    for band in ["high", "normal", "low"] {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("jobgate:queue:{{default}}:{band}"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        for (_, fields) in entries {
            let job_id = fields
                .iter()
                .find(|(name, _)| name == "job_id")
                .map(|(_, value)| value.clone())
                .expect("job_id field");
            assert!(
                fields.iter().any(|(name, _)| name == "enqueued_at"),
                "{fields:?}"
            );
            enqueued.push(job_id);
        }
    }
    enqueued.sort();
    submitted.sort();
    assert_eq!(enqueued, submitted, "each job enqueued exactly once");
}
