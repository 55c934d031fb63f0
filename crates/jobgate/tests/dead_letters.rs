//! Dead letters end to end: the example worker's `fail` kind runs out of
//! attempts, `jobgate dlq` (the real binary) lists, shows, re-runs and
//! purges it, a client that subscribes again with `after` sees the new
//! attempt to its end; and the admin API refuses, and changes nothing, for
//! a token without the `jobgate:admin` scope.

use std::collections::BTreeMap;
use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::{ADMIN_SCOPE, mint_hs256_with_scope};
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{PythonWorker, RedisServer, Schemas, SseClient, TestGateway, WsClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Runs `jobgate dlq <args> --json` against `redis_url`; its exit success
/// and its stdout as JSON (`null` when it printed none).
async fn dlq(redis_url: &str, args: &[&str]) -> (bool, Value) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_jobgate"));
    command
        .arg("dlq")
        .args(args)
        .arg("--json")
        .env("JOBGATE_REDIS_URL", redis_url);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run jobgate dlq");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (output.status.success(), value)
}

/// `jobgate dlq list`'s job ids, once `job_id` is among them (the worker
/// buries the job right after its `failed` event).
async fn listed_until(redis_url: &str, job_id: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ok, page) = dlq(redis_url, &["list"]).await;
        assert!(ok, "dlq list failed");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|d| d["job_id"] == job_id) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{job_id} never listed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event"].as_str()).collect()
}

#[tokio::test]
async fn a_job_out_of_attempts_is_listed_re_run_by_the_cli_and_watched_to_its_end() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "dlq-worker", &[]);
    redis.wait_for_kinds(&["fail"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let schemas = Schemas::load();
    let url = redis.url();

    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("ws");
    let job = json!({"kind": "fail", "params": {"retryable": true}, "max_attempts": 2});
    let accepted = ws.submit("f-1", job).await.expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();
    let first = ws
        .events_until_terminal(&job_id, WAIT)
        .await
        .expect("events");
    assert_eq!(
        types(&first),
        ["queued", "started", "retrying", "started", "failed"]
    );
    assert_eq!(first[4]["data"]["error"]["code"], "max_attempts_exceeded");
    let last_seq = first[4]["seq"].as_u64().expect("seq");

    let listed = listed_until(&url, &job_id).await;
    assert_eq!(listed.len(), 1, "one dead letter per job: {listed:?}");
    assert_eq!(listed[0]["kind"], "fail");
    assert_eq!(listed[0]["queue"], "default");
    assert_eq!(listed[0]["owner"], "local");
    assert_eq!(listed[0]["attempts"], 2);
    assert_eq!(listed[0]["error"]["code"], "max_attempts_exceeded");
    let (ok, shown) = dlq(&url, &["show", &job_id]).await;
    assert!(ok, "dlq show");
    assert_eq!(shown["dead_letter"]["job_id"], job_id.as_str());
    assert_eq!(shown["job"]["status"], "failed");

    // The re-run; then the client, whose subscription ended with `failed`,
    // subscribes again after the last seq it saw.
    let (ok, retried) = dlq(&url, &["retry", &job_id, "--by", "ops-alice"]).await;
    assert!(ok, "dlq retry: {retried}");
    assert_eq!(retried["results"][0]["outcome"], "requeued");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": last_seq}))
        .await
        .expect("subscribe");
    let events = gateway.url(&format!("/v1/jobs/{job_id}/events?after={last_seq}"));
    let mut sse = SseClient::connect(&events, None).await.expect("sse");
    let second = ws
        .events_until_terminal(&job_id, WAIT)
        .await
        .expect("events");
    assert_eq!(
        types(&second),
        ["retrying", "started", "retrying", "started", "failed"],
        "a fresh budget of max_attempts (2): {second:?}"
    );
    let seqs: Vec<u64> = second.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (last_seq + 1..=last_seq + 5).collect::<Vec<_>>());
    assert_eq!(second[0]["data"]["requested_by"], "ops-alice");
    assert_eq!(second[0]["data"]["error"]["code"], "dead_letter_retry");
    assert_eq!(second[1]["data"]["attempt"], 3);
    for event in &second {
        schemas.assert_valid("event", event);
    }
    let streamed: Vec<Value> = sse
        .collect(WAIT)
        .await
        .expect("the SSE stream ends at the terminal event")
        .iter()
        .map(|e| e.json())
        .collect();
    assert_eq!(streamed, second, "SSE with after sees the same re-run");

    // Dead-lettered again, once; re-running something that is not a dead
    // letter fails; purging one, then all, empties the list.
    let listed = listed_until(&url, &job_id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["attempts"], 4);
    let other = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";
    let (ok, _) = dlq(&url, &["retry", other]).await;
    assert!(!ok, "no dead letter: the CLI fails");
    let (ok, purged) = dlq(&url, &["purge", &job_id]).await;
    assert!(ok && purged["purged"] == 1, "{purged}");
    let (ok, page) = dlq(&url, &["list"]).await;
    assert!(ok && page["items"] == json!([]), "{page}");
    let (ok, purged) = dlq(&url, &["purge", "--all"]).await;
    assert!(ok && purged["purged"] == 0, "{purged}");
    let snapshot: Value = reqwest::get(gateway.url(&format!("/v1/jobs/{job_id}")))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(snapshot["status"], "failed", "purging keeps the job");
}

/// Every key and its content, except the workers' kind registry (whose
/// `seen_at` moves on its own): a stream's entries (its consumer groups
/// record when workers last polled), any other key's `DUMP`.
async fn everything(redis: &RedisServer) -> BTreeMap<String, String> {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut all = BTreeMap::new();
    for name in names.into_iter().filter(|k| k != "jobgate:kinds:v2") {
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .expect("type");
        let content = if kind == "stream" {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&name)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("xrange");
            format!("{entries:?}")
        } else {
            let dump: Vec<u8> = redis::cmd("DUMP")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .expect("dump");
            format!("{kind} {dump:?}")
        };
        all.insert(name, content);
    }
    all
}

#[tokio::test]
async fn every_admin_endpoint_answers_403_without_the_scope_and_changes_nothing() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "dlq-403", &[]);
    redis.wait_for_kinds(&["fail"]).await;
    let mut config = Config::for_redis(redis.url());
    config.auth = Some(AuthMode::Jwt);
    config.jwt_secret = Some(SECRET.into());
    config.jwt_audience = Some("jobgate".into());
    config.jwt_issuer = Some("tests".into());
    let gateway = TestGateway::start_with(config).await;
    let mint = |scope| {
        mint_hs256_with_scope(SECRET, "bob", 3600, Some("jobgate"), Some("tests"), scope)
            .expect("token")
    };
    let (user, admin) = (mint(Some("jobs:read")), mint(Some(ADMIN_SCOPE)));
    let http = reqwest::Client::new();

    let submitted: Value = http
        .post(gateway.url("/v1/jobs"))
        .bearer_auth(&user)
        .json(&json!({"kind": "fail", "params": {"retryable": true}, "max_attempts": 1}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let job_id = submitted["job_id"].as_str().expect("id").to_owned();
    listed_until(&redis.url(), &job_id).await;

    let calls: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/v1/admin/dead-letters".into(), None),
        (
            reqwest::Method::GET,
            format!("/v1/admin/dead-letters/{job_id}"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/v1/admin/dead-letters/{job_id}/retry"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/retry".into(),
            Some(json!({})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/admin/dead-letters/{job_id}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/purge".into(),
            Some(json!({})),
        ),
    ];
    let send = |token: &str, (method, path, body): &(reqwest::Method, String, Option<Value>)| {
        let mut request = http
            .request(method.clone(), gateway.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send()
    };
    let before = everything(&redis).await;
    for call in &calls {
        let response = send(&user, call).await.expect("send");
        assert_eq!(response.status(), 403, "{} {}", call.0, call.1);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["code"], "forbidden", "{} {}", call.0, call.1);
    }
    assert_eq!(everything(&redis).await, before, "a refusal writes nothing");

    // Bad input with the scope: refused as such, and nothing written either.
    let bad: Vec<(reqwest::Method, &str, Value)> = vec![
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/retry",
            json!({"limit": 0}),
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/retry",
            json!({"queue": "a{b}"}),
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/purge",
            json!({"limit": 5}),
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/purge",
            json!({"queue": ""}),
        ),
        (
            reqwest::Method::POST,
            "/v1/admin/dead-letters/purge",
            json!({"colour": "red"}),
        ),
    ];
    for (method, path, body) in bad {
        let response = http
            .request(method, gateway.url(path))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 422, "{path} {body}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["code"], "invalid_request", "{path} {body}");
    }
    assert_eq!(everything(&redis).await, before, "bad input writes nothing");

    // With the scope the same calls are answered: removing the dead letter
    // first, so that the re-run after it finds none.
    for (index, status) in [(0, 200), (1, 200), (4, 204), (2, 404), (3, 200), (5, 200)] {
        let call = &calls[index];
        let response = send(&admin, call).await.expect("send");
        assert_eq!(response.status(), status, "{} {}", call.0, call.1);
    }
}
