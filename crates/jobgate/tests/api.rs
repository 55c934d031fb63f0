//! The HTTP API through `app()` with `oneshot` requests, on a real Redis:
//! answers, error codes, and that bad input changes nothing.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use jobgate_gateway::{AppState, Config};
use jobgate_testkit::{JobDriver, RedisServer, Schemas};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Harness {
    redis: RedisServer,
    state: AppState,
    schemas: Schemas,
}

impl Harness {
    async fn new() -> Self {
        let redis = RedisServer::start();
        let state =
            jobgate_gateway::build_state(Config::for_redis(redis.url()), CancellationToken::new())
                .expect("state");
        let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
        Self {
            redis,
            state,
            schemas: Schemas::load(),
        }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = jobgate_gateway::app(self.state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.call(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .expect("request"),
        )
        .await
    }

    /// A static file the gateway serves at `path`, checked for `200` and
    /// its content type.
    async fn static_file(&self, path: &str, content_type: &str) -> String {
        let response = jobgate_gateway::app(self.state.clone())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(content_type),
            "{path}"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    /// Every key in Redis but the kind registry: what requests wrote.
    async fn written_keys(&self) -> Vec<String> {
        let mut conn = self
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.retain(|k| k != "jobgate:kinds:v2");
        keys.sort();
        keys
    }

    /// Asserts an error answer: status, stable code, schema.
    fn assert_error(&self, (status, body): &(StatusCode, Value), expected: StatusCode, code: &str) {
        assert_eq!(*status, expected, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        self.schemas.assert_valid("error_body", body);
    }
}

#[tokio::test]
async fn submit_answers_202_with_links_and_a_trace() {
    let h = Harness::new().await;
    let (status, body) = h
        .post(
            "/v1/jobs",
            r#"{"kind":"echo","params":{"x":1},"priority":9,"max_attempts":2,"timeout_s":60}"#,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.schemas.assert_valid("submit_response", &body);
    let job_id = body["job_id"].as_str().expect("job id");
    assert_eq!(body["links"]["events"], format!("/v1/jobs/{job_id}/events"));

    let (status, snapshot) = h.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK);
    h.schemas.assert_valid("job_snapshot", &snapshot);
    assert_eq!(snapshot["status"], "queued");
    assert_eq!(snapshot["priority"], 9);
    assert_eq!(snapshot["max_attempts"], 2);
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["trace_id"], body["trace_id"]);

    // Priority 9 lands in the queue's high band, with its trace context.
    let mut conn = h
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("jobgate:queue:{default}:high")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    assert_eq!(entries.len(), 1);
    let entry = serde_json::to_value(&entries[0].1).expect("entry");
    h.schemas.assert_valid("queue_entry", &entry);
    assert_eq!(entry["job_id"], job_id);
    let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("jobgate:job:{{{job_id}}}"))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    h.schemas.assert_valid(
        "job_record",
        &serde_json::to_value(&record).expect("record"),
    );
    // Only the old API's jobs carry a legacy trace id.
    assert!(!record.contains_key("legacy_trace_id"), "{record:?}");
}

#[tokio::test]
async fn a_valid_traceparent_is_continued() {
    let h = Harness::new().await;
    let response = jobgate_gateway::app(h.state.clone())
        .oneshot(
            Request::post("/v1/jobs")
                .header("content-type", "application/json")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(Body::from(r#"{"kind":"echo","params":{}}"#))
                .expect("request"),
        )
        .await
        .expect("infallible");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn bad_submissions_get_stable_codes_and_enqueue_nothing() {
    let h = Harness::new().await;
    let cases = [
        ("{not json", StatusCode::BAD_REQUEST, "invalid_json"),
        (
            r#"{"params":{}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":[1,2]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"priority":"high"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"priority":12}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"max_attempts":0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"surprise":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"no_such_kind","params":{}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
        ),
        (
            r#"{"kind":"bad kind!","params":{}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            r#"{"kind":"echo","params":{},"delay_ms":-1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"delay_ms":2592000001}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"delay_ms":10,"run_at":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"kind":"echo","params":{},"run_at":-1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            // Year 2100: more than 30 days ahead.
            r#"{"kind":"echo","params":{},"run_at":4102444800000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let answer = h.post("/v1/jobs", body).await;
        h.assert_error(&answer, status, code);
    }
    let no_type = h
        .call(
            Request::post("/v1/jobs")
                .body(Body::from(r#"{"kind":"echo","params":{}}"#))
                .expect("request"),
        )
        .await;
    h.assert_error(
        &no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let huge = format!(
        r#"{{"kind":"echo","params":{{"blob":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    h.assert_error(
        &h.post("/v1/jobs", &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(
        h.written_keys().await,
        Vec::<String>::new(),
        "a rejected request wrote to Redis"
    );
}

#[tokio::test]
async fn unknown_and_malformed_job_ids() {
    let h = Harness::new().await;
    let unknown = jobgate_proto::JobId::new().to_string();
    let unknown = unknown.as_str();
    h.assert_error(
        &h.get(&format!("/v1/jobs/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.assert_error(
        &h.get("/v1/jobs/not-a-job").await,
        StatusCode::BAD_REQUEST,
        "invalid_job_id",
    );
    h.assert_error(
        &h.get("/v1/jobs/0193A0B4-7C1E-7D4E-9A2B-1C2D3E4F5A6B").await,
        StatusCode::BAD_REQUEST,
        "invalid_job_id",
    );
    h.assert_error(
        &h.post(&format!("/v1/jobs/{unknown}/cancel"), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.assert_error(
        &h.get(&format!("/v1/jobs/{unknown}/events")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.assert_error(
        &h.get(&format!("/status/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.assert_error(
        &h.get("/status/42").await,
        StatusCode::BAD_REQUEST,
        "invalid_job_id",
    );
    h.assert_error(
        &h.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.assert_error(
        &h.call(
            Request::delete("/v1/jobs")
                .body(Body::empty())
                .expect("request"),
        )
        .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let bad_after = h
        .get(&format!("/v1/jobs/{unknown}/events?after=minus-one"))
        .await;
    h.assert_error(
        &bad_after,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
}

#[tokio::test]
async fn cancel_of_a_queued_job_ends_it_and_a_second_cancel_conflicts() {
    let h = Harness::new().await;
    let (_, body) = h.post("/v1/jobs", r#"{"kind":"echo","params":{}}"#).await;
    let job_id = body["job_id"].as_str().expect("id").to_owned();
    let (status, snapshot) = h.post(&format!("/v1/jobs/{job_id}/cancel"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{snapshot}");
    h.schemas.assert_valid("job_snapshot", &snapshot);
    assert_eq!(snapshot["status"], "cancelled");
    assert_eq!(snapshot["seq"], 2);
    h.assert_error(
        &h.post(&format!("/v1/jobs/{job_id}/cancel"), "").await,
        StatusCode::CONFLICT,
        "not_cancellable",
    );
    // A worker that later reads the entry is told to skip it.
    let mut driver = JobDriver::connect(&h.redis.url()).await.expect("driver");
    assert_eq!(driver.start(&job_id).await.expect("start"), "skip");
}

#[tokio::test]
async fn the_old_api_answers_as_it_always_did() {
    let h = Harness::new().await;
    let mut driver = JobDriver::with_kinds(&h.redis.url(), &["mc_option_price"]).await;
    let request =
        json!({"computation_params": {"spot": 100, "strike": 95}, "trace_id": "ios-1234"});
    let (status, body) = h.post("/submit", &request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.schemas.assert_valid("legacy_submit_response", &body);
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only job_id: {body}"
    );
    let job_id = body["job_id"].as_str().expect("id").to_owned();

    let (_, status) = h.get(&format!("/status/{job_id}")).await;
    h.schemas.assert_valid("legacy_status_response", &status);
    assert_eq!(status, json!({"status": "pending", "result": null}));
    driver.start(&job_id).await.expect("start");
    assert_eq!(
        h.get(&format!("/status/{job_id}")).await.1["status"],
        "processing"
    );
    driver
        .complete(&job_id, 1, r#"{"price":10.45}"#)
        .await
        .expect("complete");
    assert_eq!(
        h.get(&format!("/status/{job_id}")).await.1,
        json!({"status": "complete", "result": {"price": 10.45}})
    );

    // The old trace id stays with the job; the params reach the worker as sent.
    let mut conn = h
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let (legacy, params): (String, String) = redis::cmd("HMGET")
        .arg(format!("jobgate:job:{{{job_id}}}"))
        .arg("legacy_trace_id")
        .arg("params")
        .query_async(&mut conn)
        .await
        .expect("hmget");
    assert_eq!(legacy, "ios-1234");
    assert_eq!(
        serde_json::from_str::<Value>(&params).expect("json"),
        json!({"spot": 100, "strike": 95})
    );

    h.assert_error(
        &h.post("/submit", r#"{"computation_params": 5}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    h.assert_error(
        &h.post("/submit", r#"{"computation_params": {"kind": "nope"}}"#)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_kind",
    );
}

#[tokio::test]
async fn with_redis_down_submissions_get_503_and_nothing_is_half_written() {
    let mut h = Harness::new().await;
    h.redis.kill();
    let answer = h.post("/v1/jobs", r#"{"kind":"echo","params":{}}"#).await;
    h.assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "redis_unavailable",
    );
    let (status, ready) = h.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(h.get("/healthz").await.0, StatusCode::OK);
    h.redis.restart();
    assert_eq!(
        h.written_keys().await,
        Vec::<String>::new(),
        "a failed submit left keys behind"
    );
    // And the gateway recovers on its own. A submission in the first
    // moments may still be refused at once (the gateway's last attempt to
    // reach Redis failed under 200 ms ago): refused as unavailable, never
    // half-done, and soon accepted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let answer = h.post("/v1/jobs", r#"{"kind":"echo","params":{}}"#).await;
        if answer.0 == StatusCode::ACCEPTED {
            break;
        }
        h.assert_error(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not recover: {}",
            answer.1
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root() {
    let h = Harness::new().await;
    let page = h.static_file("/", "text/html").await;
    assert!(
        page.contains(r#"<script type="module" src="/dashboard/app.js">"#),
        "the dashboard is the app module"
    );
    assert!(!page.contains("setInterval"), "the dashboard does not poll");
    let app = h.static_file("/dashboard/app.js", "text/javascript").await;
    assert!(
        app.contains("./jobgate-client.js"),
        "the dashboard follows jobs with @jobgate/client"
    );
    assert!(!app.contains("setInterval"), "the dashboard does not poll");
    let client = h
        .static_file("/dashboard/jobgate-client.js", "text/javascript")
        .await;
    assert!(
        client.contains("jobgate.v1"),
        "the bundle speaks jobgate.v1"
    );
    assert!(page.contains(r#"<script src="/dashboard/admin.js">"#));

    let script = h
        .static_file("/dashboard/admin.js", "text/javascript")
        .await;
    assert!(
        script.contains("/v1/admin/dead-letters?limit=1"),
        "the admin views ask whether the token is admin"
    );
    assert!(
        !script.contains("innerHTML") && !script.contains("setInterval"),
        "the admin views build text nodes and poll nothing on a fixed interval"
    );
}
