//! The queue admin routes with a real Redis and the real Python worker:
//! the listing, pause and resume, and 403 without the admin scope.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::mint_hs256_with_scope;
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{JobDriver, PythonWorker, RedisServer, TestGateway};
use serde_json::{Value, json};

const SECRET: &str = "queue-admin-test-secret-of-enough-length";

async fn status(gateway: &TestGateway, job_id: &str) -> String {
    let record: Value = reqwest::get(gateway.url(&format!("/v1/jobs/{job_id}")))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    record["status"].as_str().unwrap_or_default().to_owned()
}

async fn queues(gateway: &TestGateway) -> Value {
    let answer = reqwest::get(gateway.url("/v1/admin/queues"))
        .await
        .expect("list");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("json")
}

#[tokio::test]
async fn a_paused_queue_takes_jobs_but_runs_them_only_after_resume() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "queues-worker", &[]);
    redis.wait_for_kinds(&["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let http = reqwest::Client::new();

    let paused = http
        .post(gateway.url("/v1/admin/queues/default/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    assert_eq!(
        paused.json::<Value>().await.expect("json"),
        json!({"queue": "default", "paused": true})
    );
    // A read already blocked when the flag was set may still take one
    // entry: workers see the pause within one read (~1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job_id = gateway
        .submit(json!({"kind": "echo", "params": {"x": 1}, "priority": 8}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(&gateway, &job_id).await,
        "queued",
        "not started while paused"
    );
    let listing = queues(&gateway).await;
    let default = listing["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == "default")
        .expect("the default queue")
        .clone();
    assert_eq!(default["paused"], true, "{default}");
    assert_eq!(default["bands"], json!({"high": 1, "normal": 0, "low": 0}));
    assert_eq!(default["running"], 0, "{default}");
    assert!(default["oldest_age_ms"].as_u64().is_some(), "{default}");

    let resumed = http
        .post(gateway.url("/v1/admin/queues/default/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status(&gateway, &job_id).await != "completed" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never ran after resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let default = &queues(&gateway).await["queues"][0];
    assert_eq!(default["paused"], false, "{default}");
}

#[tokio::test]
async fn pausing_an_unknown_queue_is_not_found_and_writes_nothing() {
    let redis = RedisServer::start();
    let gateway = TestGateway::start(&redis.url()).await;
    let answer = reqwest::Client::new()
        .post(gateway.url("/v1/admin/queues/nowhere/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(answer.status(), 404);
    assert_eq!(
        answer.json::<Value>().await.expect("json")["code"],
        "not_found"
    );
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn queue_admin_routes_answer_403_without_the_admin_scope_and_change_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let mut config = Config::for_redis(redis.url());
    config.auth = Some(AuthMode::Jwt);
    config.jwt_secret = Some(SECRET.into());
    let gateway = TestGateway::start_with(config).await;
    let user = mint_hs256_with_scope(SECRET, "alice", 3600, None, None, None).expect("token");
    let admin = mint_hs256_with_scope(SECRET, "ops", 3600, None, None, Some("jobgate:admin"))
        .expect("token");
    let keys_before: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/v1/admin/queues"),
        ("POST", "/v1/admin/queues/default/pause"),
        ("POST", "/v1/admin/queues/default/resume"),
    ] {
        let request = http.request(method.parse().expect("method"), gateway.url(path));
        let answer = request.bearer_auth(&user).send().await.expect("send");
        assert_eq!(answer.status(), 403, "{method} {path}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["code"], "forbidden", "{method} {path}");
    }
    let keys_after: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys_before, keys_after);
    let answer = http
        .post(gateway.url("/v1/admin/queues/default/pause"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 200, "the admin scope may pause");
    let paused: bool = redis::cmd("EXISTS")
        .arg("jobgate:paused:{default}")
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(paused);
}

fn cli(redis_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jobgate"))
        .arg("queues")
        .args(args)
        .env("JOBGATE_REDIS_URL", redis_url)
        .output()
        .expect("run jobgate queues")
}

#[tokio::test]
async fn the_cli_lists_pauses_and_resumes_queues() {
    let redis = RedisServer::start();
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let _: String = redis::cmd("XADD")
        .arg("jobgate:queue:{default}:low")
        .arg("*")
        .arg("job_id")
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("xadd");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let heartbeat = json!({
        "consumer": "w1", "host": "box", "pid": 7, "kinds": ["echo"], "concurrency": 4,
        "in_hand": [], "started_at": now_ms, "seen_at": now_ms, "interval_ms": 60_000
    });
    let _: () = redis::cmd("HSET")
        .arg("jobgate:workers:{default}")
        .arg("w1")
        .arg(heartbeat.to_string())
        .query_async(&mut conn)
        .await
        .expect("heartbeat");

    let unknown = cli(&redis.url(), &["pause", "nowhere"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nowhere"));
    let paused_keys: Vec<String> = redis::cmd("KEYS")
        .arg("jobgate:paused:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(paused_keys.is_empty(), "{paused_keys:?}");

    let paused = cli(&redis.url(), &["pause", "default"]);
    assert!(paused.status.success(), "{paused:?}");
    assert_eq!(String::from_utf8_lossy(&paused.stdout), "default: paused\n");
    let listing = cli(&redis.url(), &["--json"]);
    assert!(listing.status.success(), "{listing:?}");
    let listing: Value = serde_json::from_slice(&listing.stdout).expect("json");
    let default = &listing["queues"][0];
    assert_eq!(default["queue"], "default");
    assert_eq!(default["paused"], true);
    assert_eq!(default["bands"], json!({"high": 0, "normal": 0, "low": 1}));
    let table = cli(&redis.url(), &[]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("QUEUE"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("default") && row.contains("yes")),
        "{table}"
    );

    let resumed = cli(&redis.url(), &["resume", "default", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&resumed.stdout).expect("json"),
        json!({"queue": "default", "paused": false})
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("jobgate:paused:{default}")
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(!exists);
}

fn fault_app_worker(redis_url: &str, consumer: &str) -> PythonWorker {
    let apps = jobgate_testkit::repo_root().join("crates/jobgate/tests/apps");
    PythonWorker::start_app_with_env(
        redis_url,
        "fault_app:worker",
        Some(&apps),
        consumer,
        &[],
        &[
            ("JOBGATE_CONCURRENCY", "2"),
            ("JOBGATE_HEARTBEAT_S", "0.2"),
            ("JOBGATE_LEASE_MS", "1500"),
        ],
    )
}

/// Polls `GET /v1/admin/workers` until `done` holds for the list.
async fn workers_until(
    gateway: &TestGateway,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = reqwest::get(gateway.url("/v1/admin/workers"))
            .await
            .expect("workers")
            .json()
            .await
            .expect("json");
        let workers = answer["workers"].as_array().expect("workers").clone();
        if done(&workers) {
            return workers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_worker_is_gone_until_its_job_is_reclaimed() {
    let redis = RedisServer::start();
    let mut first = fault_app_worker(&redis.url(), "first");
    redis.wait_for_kinds(&["sleep"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let job_id = gateway
        .submit(json!({"kind": "sleep", "params": {"s": 4}}))
        .await;
    let holding = |workers: &[Value]| {
        workers.iter().any(|w| {
            w["consumer"] == "first"
                && w["in_hand"]
                    .as_array()
                    .is_some_and(|h| h.contains(&json!(job_id)))
        })
    };
    let workers = workers_until(&gateway, "the worker holds the job", holding).await;
    let worker = &workers[0];
    assert_eq!(worker["state"], "live", "{worker}");
    assert_eq!(worker["queue"], "default", "{worker}");
    assert_eq!(worker["concurrency"], 2, "{worker}");
    assert_eq!(worker["pid"], first.pid().expect("pid"), "{worker}");
    assert!(
        worker["kinds"]
            .as_array()
            .expect("kinds")
            .contains(&json!("sleep")),
        "{worker}"
    );
    let default = queues(&gateway).await["queues"][0].clone();
    assert_eq!(default["running"], 1, "{default}");
    assert_eq!(default["workers"][0]["consumer"], "first", "{default}");

    first.kill();
    let gone = |workers: &[Value]| {
        workers
            .iter()
            .any(|w| w["consumer"] == "first" && w["state"] == "gone")
    };
    let workers = workers_until(&gateway, "the killed worker is gone", gone).await;
    assert_eq!(workers[0]["pending"], 1, "{workers:?}");
    assert_eq!(workers[0]["in_hand"], json!([job_id]), "{workers:?}");

    let _second = fault_app_worker(&redis.url(), "second");
    let reclaimed = |workers: &[Value]| {
        workers.iter().all(|w| w["consumer"] != "first")
            && workers.iter().any(|w| w["consumer"] == "second")
    };
    workers_until(
        &gateway,
        "the gone worker disappears after the reclaim",
        reclaimed,
    )
    .await;
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let left: bool = redis::cmd("HEXISTS")
        .arg("jobgate:workers:{default}")
        .arg("first")
        .query_async(&mut conn)
        .await
        .expect("hexists");
    assert!(!left, "the gone worker's heartbeat is removed");
}
