//! Redis trouble is an answer, not an accident: a Redis restart under an
//! idle gateway sacrifices no request, and Redis at `maxmemory` answers
//! submissions `503 redis_out_of_memory` with nothing written, while
//! running jobs still end with their terminal event once memory is freed.

use std::path::PathBuf;
use std::time::Duration;

use jobgate_testkit::{JobDriver, PythonWorker, RedisServer, TestGateway, WsClient};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
/// How many restarts the restart test goes through.
const RESTARTS: usize = 8;

#[tokio::test]
async fn the_first_request_after_a_redis_restart_is_served() {
    let mut redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let http = reqwest::Client::new();
    let job_id = gateway.submit(json!({"kind": "echo", "params": {}})).await;

    for restart in 0..RESTARTS {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = gateway.readyz().await;
        assert_eq!(status, 503, "not ready while Redis is down");
        assert_eq!(body["code"], "redis_unavailable", "{body}");
        // Long enough for every reconnect attempt made so far to give up.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.restart();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // One request, alternately a snapshot and a submission.
        let response = if restart % 2 == 0 {
            http.get(gateway.url(&format!("/v1/jobs/{job_id}")))
                .send()
                .await
        } else {
            http.post(gateway.url("/v1/jobs"))
                .json(&json!({"kind": "echo", "params": {"restart": restart}}))
                .send()
                .await
        }
        .expect("an answer");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "restart {restart}: the first request answered {status}: {body}"
        );
        let (status, _) = gateway.readyz().await;
        assert_eq!(status, 200, "ready again after restart {restart}");
    }
}

#[tokio::test]
async fn submissions_at_maxmemory_are_refused_and_write_nothing() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo", "mc_option_price"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let http = reqwest::Client::new();
    // A first job, so the queue and its group exist as they would.
    gateway.submit(json!({"kind": "echo", "params": {}})).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");

    redis.fill_memory().await;
    let keys_before = redis.keys().await;

    for (path, body) in [
        ("/v1/jobs", json!({"kind": "echo", "params": {"n": 1}})),
        ("/submit", json!({"computation_params": {"kind": "echo"}})),
    ] {
        let response = http
            .post(gateway.url(path))
            .json(&body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 503, "{path}");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(retry_after.is_some_and(|s| s >= 1), "{path}: Retry-After");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["code"], "redis_out_of_memory", "{path}: {body}");
    }
    ws.send(json!({"type": "submit", "request_id": "r1",
                   "job": {"kind": "echo", "params": {}}}))
        .await
        .expect("send");
    let reply = ws.next(Duration::from_secs(10)).await.expect("reply");
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["request_id"], "r1", "{reply}");
    assert_eq!(reply["code"], "redis_out_of_memory", "{reply}");

    assert_eq!(redis.keys().await, keys_before, "nothing was written");

    let (status, body) = gateway.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "redis_out_of_memory", "{body}");
    assert_eq!(body["redis_out_of_memory"], true, "{body}");
    let metrics = http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let refusals: u64 = metric(&metrics, "jobgate_redis_oom_refusals_total");
    assert!(refusals >= 3, "{metrics}");
    let used: u64 = metric(&metrics, "jobgate_redis_used_memory_bytes");
    let max: u64 = metric(&metrics, "jobgate_redis_maxmemory_bytes");
    assert!(max > 0 && used > max, "{metrics}");

    redis.free_memory().await;
    let response = http
        .post(gateway.url("/v1/jobs"))
        .json(&json!({"kind": "echo", "params": {}}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 202, "accepted once memory is freed");
}

#[tokio::test]
async fn a_completion_refused_at_maxmemory_is_reported_once_memory_is_freed() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start_app(
        &redis.url(),
        "fault_app:worker",
        Some(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")),
        "oom-worker",
        &["--lease-ms", "1000"],
    );
    redis.wait_for_kinds(&["sleep"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let accepted = ws
        .submit("r", json!({"kind": "sleep", "params": {"s": 1}}))
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();
    let mut events = ws
        .frames_until_event("started", LONG)
        .await
        .expect("started");

    redis.fill_memory().await;
    // The handler ends meanwhile; its completion is refused, again and
    // again, for longer than a lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let status: String = redis::cmd("HGET")
        .arg(format!("jobgate:job:{{{job_id}}}"))
        .arg("status")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(status, "running", "the completion waits for memory");

    redis.free_memory().await;
    events.extend(
        ws.events_until_terminal(&job_id, LONG)
            .await
            .expect("events"),
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    let last = events.last().expect("terminal");
    assert_eq!(last["event"], "completed", "{events:?}");
    assert_eq!(
        last["data"]["result"]["attempt"], 1,
        "the first attempt's result, not a re-run: {events:?}"
    );
    assert!(
        events.iter().all(|e| e["event"] != "retrying"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_record_whose_enqueue_was_refused_is_failed_even_at_maxmemory() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let job_id = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";
    let created = driver
        .op(
            job_id,
            &[
                "create", job_id, "alice", "echo", "default", "{}", "5", "3", "0", "60", "100", "",
                "", "",
            ],
        )
        .await
        .expect("create");
    assert_eq!(created, "ok");
    // As after `create` got through and the queue entry was refused.
    redis.fill_memory().await;
    let plain = driver
        .op(job_id, &["fail", "*", "enqueue_failed", "refused"])
        .await;
    assert!(
        plain.is_err(),
        "without allow-oom the repair is refused: {plain:?}"
    );

    let (manager, _) = jobgate_store::open(&redis.url()).expect("open");
    let store = jobgate_store::JobStore::new(manager, jobgate_store::StoreSettings::default());
    store
        .fail_unenqueued(&job_id.parse().expect("id"))
        .await
        .expect("the repair runs at maxmemory");
    let record = store
        .record(&job_id.parse().expect("id"))
        .await
        .expect("read")
        .expect("a record");
    let snapshot = record.snapshot;
    assert_eq!(snapshot.status, jobgate_proto::JobStatus::Failed);
    let error = serde_json::to_value(&snapshot.error).expect("json");
    assert_eq!(error["code"], "enqueue_failed", "{error}");
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
