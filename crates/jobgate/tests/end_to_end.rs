//! End to end: the gateway, a real Redis and the real Python worker
//! (`jobgate-worker examples.pricing:worker`) as a subprocess.

use std::time::Duration;

use jobgate_testkit::{PythonWorker, RedisServer, Schemas, SseClient, TestGateway, WsClient};
use serde_json::{Value, json};

struct System {
    _worker: PythonWorker,
    gateway: TestGateway,
    _redis: RedisServer,
    schemas: Schemas,
}

impl System {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let worker = PythonWorker::start(&redis.url(), "e2e-worker", &[]);
        redis.wait_for_kinds(&["echo", "mc_option_price"]).await;
        let gateway = TestGateway::start(&redis.url()).await;
        Self {
            _worker: worker,
            gateway,
            _redis: redis,
            schemas: Schemas::load(),
        }
    }
}

fn pricing_params() -> Value {
    json!({
        "spot": 100.0, "strike": 100.0, "rate": 0.05, "volatility": 0.2,
        "maturity": 1.0, "option": "call", "paths": 40000, "chunks": 4, "seed": 7
    })
}

#[tokio::test]
async fn a_pricing_job_submitted_over_websocket_is_pushed_to_completion() {
    let system = System::start().await;
    let mut ws = WsClient::connect(&system.gateway.ws_url())
        .await
        .expect("connect");
    let accepted = ws
        .submit(
            "price-1",
            json!({"kind": "mc_option_price", "params": pricing_params()}),
        )
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();
    let events = ws
        .events_until_terminal(&job_id, Duration::from_secs(60))
        .await
        .expect("events");

    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq 1, 2, 3 … without gaps"
    );
    assert_eq!(events[0]["event"], "queued");
    assert_eq!(events[1]["event"], "started");
    assert!(
        events.iter().any(|e| e["event"] == "progress"),
        "{events:?}"
    );
    let last = events.last().expect("terminal");
    assert_eq!(last["event"], "completed", "{last}");
    let result = &last["data"]["result"];
    assert_eq!(result["paths"], 40000);
    assert_eq!(result["seed"], 7);
    let price = result["price"].as_f64().expect("price");
    assert!(
        (8.0..13.0).contains(&price),
        "a plausible at-the-money call price: {price}"
    );
    for event in &events {
        system.schemas.assert_valid("event", event);
        assert_eq!(event["trace_id"], accepted["trace_id"]);
    }
}

#[tokio::test]
async fn http_submit_and_sse_follow_an_echo_job_and_a_failing_one() {
    let system = System::start().await;
    let http = reqwest::Client::new();
    let submit = |params: Value, kind: &str| {
        http.post(system.gateway.url("/v1/jobs"))
            .json(&json!({"kind": kind, "params": params}))
            .send()
    };
    let echo: Value = submit(json!({"a": [1, 2.5, "x"]}), "echo")
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let job_id = echo["job_id"].as_str().expect("id");
    let mut sse = SseClient::connect(
        &system.gateway.url(&format!("/v1/jobs/{job_id}/events")),
        None,
    )
    .await
    .expect("sse");
    let events = sse.collect(Duration::from_secs(30)).await.expect("events");
    let last = events.last().expect("events").json();
    assert_eq!(last["event"], "completed");
    assert_eq!(last["data"]["result"], json!({"a": [1, 2.5, "x"]}));

    // Params that break the kind's registered schema are refused at the door.
    let refused = submit(json!({"spot": -1}), "mc_option_price")
        .await
        .expect("submit");
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.expect("json");
    system.schemas.assert_valid("error_body", &refused);
    assert_eq!(refused["code"], "invalid_params", "{refused}");

    // A handler that raises: the job fails with the error, not silence.
    let bad: Value = submit(
        json!({"retryable": false, "message": "spot must be positive"}),
        "fail",
    )
    .await
    .expect("submit")
    .json()
    .await
    .expect("json");
    let bad_id = bad["job_id"].as_str().expect("id");
    let mut sse = SseClient::connect(
        &system.gateway.url(&format!("/v1/jobs/{bad_id}/events")),
        None,
    )
    .await
    .expect("sse");
    let events = sse.collect(Duration::from_secs(30)).await.expect("events");
    let last = events.last().expect("events").json();
    system.schemas.assert_valid("event", &last);
    assert_eq!(last["event"], "failed", "{last}");
    assert_eq!(last["data"]["error"]["code"], "handler_error");
    assert!(
        last["data"]["error"]["message"]
            .as_str()
            .expect("message")
            .contains("spot must be positive"),
        "{last}"
    );
    let snapshot: Value = http
        .get(system.gateway.url(&format!("/v1/jobs/{bad_id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    system.schemas.assert_valid("job_snapshot", &snapshot);
    assert_eq!(snapshot["status"], "failed");

    // Both outcomes are counted, with their latency, and the queue is empty.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http
            .get(system.gateway.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metrics.contains(r#"jobgate_job_outcomes_total{event="failed",kind="fail"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for line in [
        r#"jobgate_jobs_submitted_total{kind="echo"} 1"#,
        r#"jobgate_job_outcomes_total{event="completed",kind="echo"} 1"#,
        r#"jobgate_job_outcomes_total{event="failed",kind="fail"} 1"#,
        r#"jobgate_job_duration_seconds_count{kind="echo"} 1"#,
        r#"jobgate_queue_length{queue="default"} 0"#,
        "jobgate_sse_streams 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}

#[tokio::test]
async fn the_old_polling_client_works_unchanged() {
    let system = System::start().await;
    let http = reqwest::Client::new();
    let submitted: Value = http
        .post(system.gateway.url("/submit"))
        .json(&json!({"computation_params": pricing_params(), "trace_id": "legacy-42"}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let job_id = submitted["job_id"].as_str().expect("job_id");
    let mut status = Value::Null;
    for _ in 0..300 {
        status = http
            .get(system.gateway.url(&format!("/status/{job_id}")))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        system
            .schemas
            .assert_valid("legacy_status_response", &status);
        if status["status"] == "complete" || status["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");
    assert!(status["result"]["price"].as_f64().is_some(), "{status}");
}
