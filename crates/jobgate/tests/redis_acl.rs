//! The least-privilege Redis ACL of `deploy/redis/users.acl` is enough: a
//! gateway logged in as `jobgate-gateway` and a worker as `jobgate-worker`
//! run jobs end to end (submit, events, cancel, retries, metrics,
//! idempotency), while anonymous access is refused.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_testkit::{
    PythonWorker, RedisServer, SseClient, TestGateway, WsClient, get_json, repo_root,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The deployment's ACL file with test passwords, plus an admin for the harness.
fn acl_file(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/redis/users.acl")).expect("users.acl");
    let text = text
        .replace(">CHANGE-ME-gateway", ">gateway-test-password")
        .replace(">CHANGE-ME-worker", ">worker-test-password");
    let path = dir.join("users.acl");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(
        &path,
        format!("{text}\nuser harness on >harness-password ~* &* +@all\n"),
    )
    .expect("write");
    path
}

#[tokio::test]
async fn the_deployed_acl_users_can_run_jobs_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("jobgate-acl-{}", std::process::id()));
    let acl = acl_file(&dir);
    let mut redis = RedisServer::start_with(&["--aclfile", acl.to_str().expect("utf-8")]);
    redis.use_admin("harness", "harness-password");

    // Anonymous clients get nothing.
    let anonymous = redis::Client::open(redis.url()).expect("url");
    let mut conn = anonymous
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let refused: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
    assert!(refused.is_err(), "the default user is off");

    let worker_url = redis.url_as("jobgate-worker", "worker-test-password");
    let apps = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps");
    let _worker = PythonWorker::start_app(
        &worker_url,
        "fault_app:worker",
        Some(&apps),
        "acl-worker",
        &["--lease-ms", "1000"],
    );
    redis.wait_for_kinds(&["echo", "sleep"]).await;
    let gateway = TestGateway::start_with(Config::for_redis(
        redis.url_as("jobgate-gateway", "gateway-test-password"),
    ))
    .await;
    let http = reqwest::Client::new();

    // Submit over HTTP (with an idempotency key), follow over SSE.
    let submit = || {
        http.post(gateway.url("/v1/jobs"))
            .header("idempotency-key", "acl-1")
            .json(&json!({"kind": "echo", "params": {"x": 1}}))
            .send()
    };
    let first: Value = submit().await.expect("submit").json().await.expect("json");
    let again: Value = submit().await.expect("submit").json().await.expect("json");
    assert_eq!(first["job_id"], again["job_id"], "{first} {again}");
    let job_id = first["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id: {first}"));
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");
    let events = sse.collect(WAIT).await.expect("events");
    assert_eq!(events.last().expect("events").event, "completed");

    // A delayed job: the gateway's user moves it into its queue when due.
    let delayed: Value = http
        .post(gateway.url("/v1/jobs"))
        .json(&json!({"kind": "echo", "params": {}, "delay_ms": 200}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let delayed_id = delayed["job_id"].as_str().expect("id");
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{delayed_id}/events")), None)
        .await
        .expect("sse");
    let events = sse.collect(WAIT).await.expect("events");
    assert_eq!(events.last().expect("events").event, "completed");

    // A running job cancelled over the WebSocket.
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    let accepted = ws
        .submit("r", json!({"kind": "sleep", "params": {"s": 20}}))
        .await
        .expect("accepted");
    let running = accepted["job_id"].as_str().expect("id").to_owned();
    loop {
        if ws.next(WAIT).await.expect("event")["event"] == "started" {
            break;
        }
    }
    ws.send(json!({"type": "cancel", "job_id": running}))
        .await
        .expect("cancel");
    let events = ws
        .events_until_terminal(&running, WAIT)
        .await
        .expect("events");
    assert_eq!(events.last().expect("last")["event"], "cancelled");

    // The listing reads the owner's index and records; an expired job
    // leaves the index.
    let list = || async {
        let page = get_json(&gateway.url("/v1/jobs")).await;
        let ids: Vec<String> = page["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .filter_map(|job| job["job_id"].as_str().map(str::to_owned))
            .collect();
        ids
    };
    assert_eq!(
        list().await,
        [running.clone(), delayed_id.to_owned(), job_id.to_owned()]
    );
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin");
    let _: i64 = redis::cmd("DEL")
        .arg(format!("jobgate:job:{{{job_id}}}"))
        .query_async(&mut admin)
        .await
        .expect("expire a record");
    assert_eq!(list().await, [running.as_str(), delayed_id]);
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg("jobgate:owner:{local}:jobs")
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .expect("index");
    assert_eq!(indexed, [delayed_id, running.as_str()]);

    // Metrics read the queues; readiness holds.
    let metrics = http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"jobgate_queue_length{queue="default"}"#),
        "{metrics}"
    );
    assert_eq!(
        http.get(gateway.url("/readyz"))
            .send()
            .await
            .expect("ready")
            .status(),
        200
    );

    // The gateway's user cannot reach beyond jobgate's keys, nor read queues
    // as a consumer.
    let gateway_client =
        redis::Client::open(redis.url_as("jobgate-gateway", "gateway-test-password")).expect("url");
    let mut conn = gateway_client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let foreign: Result<Option<String>, _> = redis::cmd("GET")
        .arg("other-app:secret")
        .query_async(&mut conn)
        .await;
    assert!(foreign.is_err(), "keys outside jobgate:* are off limits");
    let flush: Result<String, _> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
    assert!(flush.is_err(), "no dangerous commands");
    let _ = std::fs::remove_dir_all(&dir);
}
