//! Fault injection: workers killed with `kill -9`, Redis killed and
//! restarted from its AOF, gateways killed, clients that stop reading.
//! Every test checks that no accepted job is lost and that no client sees an
//! event twice or misses one (by `seq`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_testkit::{
    GatewayProcess, JobDriver, PythonWorker, RedisServer, SseClient, TestGateway, WsClient,
    info_number,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn fault_app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A fault-app worker with a short lease, so lost attempts are reclaimed fast.
fn worker(redis: &RedisServer, name: &str) -> PythonWorker {
    PythonWorker::start_app(
        &redis.url(),
        "fault_app:worker",
        Some(&fault_app_dir()),
        name,
        &["--lease-ms", "1000", "--concurrency", "4"],
    )
}

/// Asserts the events of one job, as one client saw them: seq 1, 2, 3 …
/// with no gap and no duplicate, exactly one terminal event, last.
fn assert_complete_history(events: &[Value]) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "gapless and without duplicates: {events:?}");
    let terminal = events
        .iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .count();
    assert_eq!(terminal, 1, "exactly one terminal event: {events:?}");
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().expect("type"))
        .collect()
}

#[tokio::test]
async fn a_killed_worker_s_job_is_finished_by_another() {
    let redis = RedisServer::start();
    let mut workers = [worker(&redis, "worker-a"), worker(&redis, "worker-b")];
    redis.wait_for_kinds(&["sleep"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let accepted = ws
        .submit("r", json!({"kind": "sleep", "params": {"s": 2}}))
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();

    let mut events = Vec::new();
    let running_on = loop {
        let event = ws.next(LONG).await.expect("event");
        events.push(event.clone());
        if event["event"] == "started" {
            break event["data"]["worker"].as_str().expect("worker").to_owned();
        }
    };
    let victim = workers
        .iter()
        .position(|w| w.consumer == running_on)
        .expect("known worker");
    workers[victim].kill();

    events.extend(
        ws.events_until_terminal(&job_id, LONG)
            .await
            .expect("events"),
    );
    assert_complete_history(&events);
    let kinds = types(&events);
    let retrying = kinds
        .iter()
        .position(|t| *t == "retrying")
        .expect("a retrying event");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    assert!(kinds[retrying + 1..].contains(&"started"), "{kinds:?}");
    assert_eq!(events.last().expect("last")["data"]["result"]["attempt"], 2);
}

#[tokio::test]
async fn a_job_that_always_crashes_its_worker_ends_in_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let mut current = worker(&redis, "crash-0");
    redis.wait_for_kinds(&["crash"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let job_id = gateway
        .submit(json!({"kind": "crash", "params": {}, "max_attempts": 2}))
        .await;
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");

    // A supervisor: whenever the job has killed the worker, start another.
    let mut events = Vec::new();
    let mut restarts = 0;
    while !events.iter().any(|e: &Value| e["event"] == "failed") {
        match sse.next(Duration::from_millis(200)).await {
            Ok(Some(event)) => events.push(event.json()),
            Ok(None) => break,
            Err(_) => {}
        }
        if !current.is_running() {
            restarts += 1;
            assert!(restarts < 10, "the job never failed: {events:?}");
            current = worker(&redis, &format!("crash-{restarts}"));
        }
    }
    assert_complete_history(&events);
    let last = events.last().expect("terminal");
    assert_eq!(last["event"], "failed");
    assert_eq!(
        last["data"]["error"]["code"], "max_attempts_exceeded",
        "{last}"
    );

    // The worker that saw the attempts run out moves the entry to the
    // dead-letter stream right after failing the job.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let mut dead: Vec<(String, HashMap<String, String>)> = Vec::new();
    for _ in 0..100 {
        dead = redis::cmd("XRANGE")
            .arg("jobgate:dead:{default}")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dead.iter()
            .any(|(_, fields)| fields.get("job_id") == Some(&job_id)),
        "the job is in the dead-letter stream: {dead:?}"
    );
    assert_eq!(dead.len(), 1, "dead-lettered once: {dead:?}");
    let indexed: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("jobgate:dead:{default}:jobs")
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert_eq!(
        indexed,
        HashMap::from([(job_id.clone(), dead[0].0.clone())]),
        "the job's one dead letter is indexed by its id"
    );
    let pending: u64 = redis::cmd("XLEN")
        .arg("jobgate:queue:{default}:normal")
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(pending, 0, "the entry left the queue");
}

#[tokio::test]
async fn a_redis_restart_loses_no_job_and_no_event() {
    let mut redis = RedisServer::start();
    let _workers = [worker(&redis, "w1"), worker(&redis, "w2")];
    redis.wait_for_kinds(&["sleep"]).await;
    let gateway = TestGateway::start(&redis.url()).await;

    const SESSIONS: usize = 4;
    const JOBS_PER_SESSION: usize = 25;
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
        for j in 0..JOBS_PER_SESSION {
            ws.send(json!({"type": "submit", "request_id": format!("{s}-{j}"),
                           "job": {"kind": "sleep", "params": {"s": 0.2}}}))
                .await
                .expect("submit");
        }
        sessions.push(ws);
    }
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watchers: Vec<_> = sessions
        .into_iter()
        .map(|mut ws| {
            let accepted = std::sync::Arc::clone(&accepted);
            tokio::spawn(async move {
                let mut jobs = Vec::new();
                let mut by_job: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                let mut finished = 0;
                while finished < JOBS_PER_SESSION {
                    let frame = ws
                        .next(Duration::from_secs(90))
                        .await
                        .expect("the session stays open");
                    match frame["type"].as_str() {
                        Some("accepted") => {
                            jobs.push(frame["job_id"].as_str().expect("id").to_owned());
                            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Some("event") => {
                            let job = frame["job_id"].as_str().expect("id").to_owned();
                            if matches!(
                                frame["event"].as_str(),
                                Some("completed" | "failed" | "cancelled")
                            ) {
                                finished += 1;
                            }
                            by_job.entry(job).or_default().push(frame);
                        }
                        _ => panic!("unexpected frame {frame}"),
                    }
                }
                (jobs, by_job)
            })
        })
        .collect();
    // Once every job is accepted and some have run, kill Redis in the
    // middle of the rest and bring it back from its AOF.
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < SESSIONS * JOBS_PER_SESSION {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();

    for watcher in watchers {
        let (jobs, by_job) = watcher.await.expect("watcher");
        assert_eq!(jobs.len(), JOBS_PER_SESSION, "every submit was accepted");
        assert_eq!(by_job.len(), jobs.len());
        for job in &jobs {
            let events = &by_job[job];
            assert_complete_history(events);
            assert_eq!(
                events.last().expect("last")["event"],
                "completed",
                "{events:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_first_submission_after_a_redis_restart_is_accepted() {
    let mut redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    gateway.submit(json!({"kind": "echo", "params": {}})).await;

    redis.restart();
    // Nothing is asked of the gateway meanwhile: it must notice the new
    // server on its own, not by failing the next client's request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answer = reqwest::Client::new()
        .post(gateway.url("/v1/jobs"))
        .json(&json!({"kind": "echo", "params": {}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_client_resumes_across_a_gateway_restart_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let first = TestGateway::start(&redis.url()).await;
    let mut ws = WsClient::connect(&first.ws_url()).await.expect("connect");
    let accepted = ws
        .submit("r", json!({"kind": "echo", "params": {}}))
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();
    driver.start(&job_id).await.expect("start");
    driver.progress(&job_id, 1, 1, 4).await.expect("progress");
    let mut seen = vec![
        ws.next(LONG).await.expect("queued"),
        ws.next(LONG).await.expect("started"),
    ];

    first.kill();
    // Events keep happening while no gateway is up.
    driver.progress(&job_id, 1, 2, 4).await.expect("progress");
    driver.progress(&job_id, 1, 3, 4).await.expect("progress");
    let second = TestGateway::start(&redis.url()).await;
    let after = seen.last().expect("seen")["seq"].as_u64().expect("seq");
    let mut ws = WsClient::connect(&second.ws_url())
        .await
        .expect("reconnect");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": after}))
        .await
        .expect("subscribe");
    let first_resumed = ws.next(LONG).await.expect("event");
    driver.complete(&job_id, 1, "{}").await.expect("complete");
    seen.push(first_resumed);
    seen.extend(ws.events_until_terminal(&job_id, LONG).await.expect("rest"));
    assert_complete_history(&seen);
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_off_while_others_keep_up() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let mut config = Config::for_redis(redis.url());
    config.outbound_queue = 64;
    let gateway = TestGateway::start_with(config).await;
    let flooded = gateway.submit(json!({"kind": "echo", "params": {}})).await;
    let other = gateway.submit(json!({"kind": "echo", "params": {}})).await;
    driver.start(&flooded).await.expect("start");
    driver.start(&other).await.expect("start");

    let mut slow = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    slow.send(json!({"type": "subscribe", "job_id": flooded, "after": 2}))
        .await
        .expect("subscribe");
    let mut healthy = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    healthy
        .send(json!({"type": "subscribe", "job_id": other, "after": 2}))
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 4,000 events of 4 KiB for a client that reads none of them: far more
    // than its socket buffers and its queue hold.
    let message = "x".repeat(4096);
    for done in 1..=4000u32 {
        let data = json!({"done": done, "total": 4000, "message": message}).to_string();
        driver
            .op(&flooded, &["progress", "1", &data])
            .await
            .expect("progress");
        if done % 500 == 0 {
            // Meanwhile the healthy client on the same gateway gets its events.
            driver
                .progress(&other, 1, done, 4000)
                .await
                .expect("progress");
            let event = healthy
                .next(Duration::from_secs(5))
                .await
                .expect("healthy client keeps up");
            assert_eq!(event["data"]["done"], done);
        }
    }
    let close = slow
        .closed(Duration::from_secs(30))
        .await
        .expect("a close frame");
    let code: u16 = close.expect("close frame").code.into();
    assert_eq!(code, jobgate_gateway::CLOSE_SLOW_CONSUMER);
    // The healthy session is still open and served.
    healthy.send(json!({"type": "ping"})).await.expect("send");
    assert_eq!(
        healthy.next(Duration::from_secs(5)).await.expect("pong")["type"],
        "pong"
    );
}

#[tokio::test]
async fn cancel_of_a_queued_job_and_of_a_running_one() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["sleep"]).await;
    let gateway = TestGateway::start(&redis.url()).await;

    // Queued (no worker yet): cancelled at once over HTTP, never runs.
    let queued = gateway
        .submit(json!({"kind": "sleep", "params": {"s": 0.1}}))
        .await;
    let answer: Value = reqwest::Client::new()
        .post(gateway.url(&format!("/v1/jobs/{queued}/cancel")))
        .send()
        .await
        .expect("cancel")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["status"], "cancelled", "{answer}");

    // Running: cancelled over the WebSocket; the handler stops.
    let _worker = worker(&redis, "canceller");
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let accepted = ws
        .submit("r", json!({"kind": "sleep", "params": {"s": 30}}))
        .await
        .expect("accepted");
    let running = accepted["job_id"].as_str().expect("id").to_owned();
    let mut events = ws
        .frames_until_event("started", LONG)
        .await
        .expect("started");
    ws.send(json!({"type": "cancel", "job_id": running}))
        .await
        .expect("cancel");
    events.extend(
        ws.events_until_terminal(&running, LONG)
            .await
            .expect("events"),
    );
    assert_complete_history(&events);
    assert_eq!(events.last().expect("last")["event"], "cancelled");

    // The queued job was skipped by the worker, not run.
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{queued}/events")), None)
        .await
        .expect("sse");
    let history: Vec<String> = sse
        .collect(LONG)
        .await
        .expect("history")
        .iter()
        .map(|e| e.event.clone())
        .collect();
    assert_eq!(history, ["queued", "cancelled"]);
}

#[tokio::test]
async fn idempotent_resubmission_creates_nothing_and_conflicts_on_a_different_body() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let http = reqwest::Client::new();
    let post = |body: Value, key: &'static str| {
        http.post(gateway.url("/v1/jobs"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = post(
        json!({"kind": "echo", "params": {"a": 1, "b": 2}}),
        "order-7",
    )
    .await
    .expect("post");
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    let again = post(
        json!({"params": {"b": 2, "a": 1}, "kind": "echo"}),
        "order-7",
    )
    .await
    .expect("post");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["job_id"], first["job_id"]);
    assert_eq!(again["trace_id"], first["trace_id"]);
    let conflict = post(json!({"kind": "echo", "params": {"a": 2}}), "order-7")
        .await
        .expect("post");
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        conflict.json::<Value>().await.expect("json")["code"],
        "idempotency_conflict"
    );

    // Over the WebSocket: the same job, followed from its first event.
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let accepted = ws
        .send(
            json!({"type": "submit", "request_id": "w1", "idempotency_key": "order-7",
                     "job": {"kind": "echo", "params": {"a": 1, "b": 2}}}),
        )
        .await;
    accepted.expect("send");
    let reply = ws.next(LONG).await.expect("accepted");
    assert_eq!(reply["type"], "accepted");
    assert_eq!(reply["job_id"], first["job_id"]);
    assert_eq!(ws.next(LONG).await.expect("history")["seq"], 1);

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg("jobgate:job:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(jobs.len(), 1, "one job for one key: {jobs:?}");
    let queued: u64 = redis::cmd("XLEN")
        .arg("jobgate:queue:{default}:normal")
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(queued, 1);
}

#[tokio::test]
async fn a_client_on_one_gateway_sees_every_event_of_a_job_submitted_through_another() {
    let redis = RedisServer::start();
    let _worker = worker(&redis, "shared");
    redis.wait_for_kinds(&["sleep"]).await;
    let gateway_a = TestGateway::start(&redis.url()).await;
    let gateway_b = TestGateway::start(&redis.url()).await;
    let job_id = gateway_a
        .submit(json!({"kind": "sleep", "params": {"s": 0.5}}))
        .await;
    let mut ws = WsClient::connect(&gateway_b.ws_url())
        .await
        .expect("connect");
    ws.send(json!({"type": "subscribe", "job_id": job_id}))
        .await
        .expect("subscribe");
    let events = ws
        .events_until_terminal(&job_id, LONG)
        .await
        .expect("events");
    assert_complete_history(&events);
    assert_eq!(events.last().expect("last")["event"], "completed");

    // Only gateway B, whose client watches the job, subscribed to it.
    let job_b = gateway_b
        .submit(json!({"kind": "sleep", "params": {"s": 5}}))
        .await;
    let mut watcher = WsClient::connect(&gateway_b.ws_url())
        .await
        .expect("connect");
    watcher
        .send(json!({"type": "subscribe", "job_id": job_b}))
        .await
        .expect("subscribe");
    watcher.next(LONG).await.expect("queued");
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(format!("jobgate:live:job:{{{job_b}}}"))
        .query_async(&mut conn)
        .await
        .expect("numsub");
    assert_eq!(subscribers, 1, "one gateway's link, not both");
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_ends_streams() {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let job_id = gateway.submit(json!({"kind": "echo", "params": {}})).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    ws.send(json!({"type": "subscribe", "job_id": job_id}))
        .await
        .expect("subscribe");
    ws.next(LONG).await.expect("queued");
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");
    sse.next(LONG).await.expect("event").expect("queued");

    let shutdown = tokio::spawn(gateway.shutdown());
    let close = ws.closed(LONG).await.expect("close").expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(sse.next(LONG).await.expect("stream end"), None);
    shutdown.await.expect("shutdown");
}

/// Submissions a session already made when the gateway stops are answered
/// before the close 1001: their jobs are created, and a client must learn
/// their ids. Redis holds the writes back (`CLIENT PAUSE`) so that the
/// submissions are still waiting when the shutdown comes.
#[tokio::test]
async fn shutdown_answers_the_submissions_in_flight_before_1001() {
    const SUBMITS: usize = 3;
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let blocked_before = info_number(&mut conn, "clients", "blocked_clients").await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("pause");
    for index in 0..SUBMITS {
        ws.send(json!({"type": "submit", "request_id": format!("r{index}"),
                       "job": {"kind": "echo", "params": {"n": index}}}))
            .await
            .expect("submit");
    }
    // Redis holds the first submission's call; the session reads the three
    // frames one after the other, so all are read well within the margin.
    let mut waited = Duration::ZERO;
    while info_number(&mut conn, "clients", "blocked_clients").await == blocked_before {
        assert!(waited < LONG, "the submissions never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let shutdown = tokio::spawn(gateway.shutdown());
    let (frames, close) = ws.frames_until_close(LONG).await.expect("close");
    let accepted: Vec<&Value> = frames.iter().filter(|f| f["type"] == "accepted").collect();
    let request_ids: Vec<&str> = accepted
        .iter()
        .filter_map(|f| f["request_id"].as_str())
        .collect();
    assert_eq!(request_ids, ["r0", "r1", "r2"], "frames: {frames:?}");
    assert_eq!(u16::from(close.expect("a close frame").code), 1001);
    shutdown.await.expect("shutdown");
    for frame in accepted {
        let job_id = frame["job_id"].as_str().expect("job id");
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("jobgate:job:{{{job_id}}}"))
            .arg("status")
            .query_async(&mut conn)
            .await
            .expect("hget");
        assert!(
            status.is_some(),
            "job {job_id} was answered but not created"
        );
    }
}

/// The binary, stopped by SIGTERM with many sessions open: every session
/// gets its close 1001 before the process exits (a session's close frame
/// is written by its own task, which the process must wait for).
#[tokio::test]
async fn sigterm_closes_every_session_of_the_binary_with_1001() {
    const SESSIONS: usize = 150;
    let redis = RedisServer::start();
    let mut gateway = GatewayProcess::start(env!("CARGO_BIN_EXE_jobgate"), &redis.url(), None);
    assert_eq!(gateway.readyz(true).await.0, 200);
    let mut sessions = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        sessions.push(WsClient::connect(&gateway.ws_url()).await.expect("connect"));
    }
    // Each session answers a message: all are served before the signal.
    for ws in &mut sessions {
        ws.send(json!({"type": "subscribe", "job_id": "no-such-job"}))
            .await
            .expect("send");
        ws.next(LONG).await.expect("an answer");
    }

    let status = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
    let mut codes = BTreeMap::new();
    for ws in &mut sessions {
        let code = match ws.closed(LONG).await {
            Ok(Some(close)) => u16::from(close.code).to_string(),
            Ok(None) => "no close frame".to_owned(),
            Err(error) => format!("error: {error}"),
        };
        *codes.entry(code).or_insert(0usize) += 1;
    }
    assert_eq!(codes, BTreeMap::from([("1001".to_owned(), SESSIONS)]));
}
