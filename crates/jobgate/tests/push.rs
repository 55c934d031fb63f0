//! Events pushed over real sockets: a server on port 0, real WebSocket and
//! SSE clients, a real Redis, and the job script driven step by step the
//! way a worker drives it.

use std::time::Duration;

use jobgate_testkit::{
    EchoStack, JobDriver, RedisServer, Schemas, SseClient, TestGateway, WsClient,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// started, two progress events, completed: seq 2..=5.
async fn run_job(driver: &mut JobDriver, job_id: &str) {
    assert_eq!(driver.start(job_id).await.expect("start"), "ok");
    driver.progress(job_id, 1, 1, 2).await.expect("progress");
    driver.progress(job_id, 1, 2, 2).await.expect("progress");
    assert_eq!(
        driver
            .complete(job_id, 1, r#"{"n":1}"#)
            .await
            .expect("complete"),
        "ok"
    );
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn a_websocket_submit_is_accepted_then_pushed_every_event() {
    let mut h = EchoStack::start().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    let accepted = ws
        .submit("r-1", json!({"kind": "echo", "params": {"n": 1}}))
        .await
        .expect("accepted");
    h.schemas.assert_valid("ws_server_message", &accepted);
    assert_eq!(accepted["request_id"], "r-1");
    let job_id = accepted["job_id"].as_str().expect("id").to_owned();
    run_job(&mut h.driver, &job_id).await;

    let events = ws
        .events_until_terminal(&job_id, WAIT)
        .await
        .expect("events");
    assert_eq!(seqs(&events), vec![1, 2, 3, 4, 5]);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        ["queued", "started", "progress", "progress", "completed"]
    );
    assert_eq!(events[4]["data"]["result"], json!({"n": 1}));
    for event in &events {
        h.schemas.assert_valid("ws_server_message", event);
        h.schemas.assert_valid("event", event);
        assert_eq!(event["trace_id"], accepted["trace_id"]);
    }
}

#[tokio::test]
async fn submits_sent_back_to_back_are_each_accepted_before_any_event_of_their_job() {
    let h = EchoStack::start().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    const JOBS: usize = 100;
    // All at once: the session runs them concurrently, and each job's
    // `queued` event is published while its submission is still finishing.
    for i in 0..JOBS {
        ws.send(json!({"type": "submit", "request_id": format!("r-{i}"),
                       "job": {"kind": "echo", "params": {"i": i}}}))
            .await
            .expect("submit");
    }
    let mut accepted = std::collections::HashMap::new();
    let mut queued = std::collections::HashSet::new();
    while accepted.len() < JOBS || queued.len() < JOBS {
        let frame = ws.next(WAIT).await.expect("a frame");
        match frame["type"].as_str() {
            Some("accepted") => {
                let job_id = frame["job_id"].as_str().expect("id").to_owned();
                let request_id = frame["request_id"].as_str().expect("request id").to_owned();
                assert!(
                    accepted.insert(job_id, request_id).is_none(),
                    "one accepted per job"
                );
            }
            Some("event") => {
                let job_id = frame["job_id"].as_str().expect("id");
                assert!(
                    accepted.contains_key(job_id),
                    "an event of {job_id} came before its accepted: {frame}"
                );
                assert_eq!(frame["event"], "queued");
                assert!(queued.insert(job_id.to_owned()), "one queued per job");
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let mut request_ids: Vec<String> = accepted.into_values().collect();
    request_ids.sort();
    let mut expected: Vec<String> = (0..JOBS).map(|i| format!("r-{i}")).collect();
    expected.sort();
    assert_eq!(request_ids, expected, "every submit answered once");
}

#[tokio::test]
async fn two_sessions_and_an_sse_stream_see_the_same_events_in_the_same_order() {
    let mut h = EchoStack::start().await;
    let job_id = h.gateway.submit_echo().await;
    let mut first = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    let mut second = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    first
        .send(json!({"type": "subscribe", "job_id": job_id}))
        .await
        .expect("send");
    second
        .send(json!({"type": "subscribe", "job_id": job_id, "after": 0}))
        .await
        .expect("send");
    let mut sse = SseClient::connect(&h.gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");
    assert_eq!(sse.status, 200);
    // Both sessions have the history (the queued event) once subscribed.
    assert_eq!(first.next(WAIT).await.expect("queued")["seq"], 1);
    assert_eq!(second.next(WAIT).await.expect("queued")["seq"], 1);
    run_job(&mut h.driver, &job_id).await;

    let mut from_first = vec![first.next(WAIT).await.expect("event")];
    from_first.extend(
        first
            .events_until_terminal(&job_id, WAIT)
            .await
            .expect("events"),
    );
    let mut from_second = vec![second.next(WAIT).await.expect("event")];
    from_second.extend(
        second
            .events_until_terminal(&job_id, WAIT)
            .await
            .expect("events"),
    );
    let from_sse = sse.collect(WAIT).await.expect("sse events");

    assert_eq!(seqs(&from_first), vec![2, 3, 4, 5]);
    assert_eq!(from_first, from_second);
    let sse_events: Vec<Value> = from_sse.iter().map(|e| e.json()).collect();
    assert_eq!(
        seqs(&sse_events),
        vec![1, 2, 3, 4, 5],
        "the SSE stream ends after completed"
    );
    assert_eq!(sse_events[1..], from_first[..]);
    for event in &from_sse {
        assert_eq!(
            event.id.as_deref(),
            Some(event.json()["seq"].to_string().as_str())
        );
        assert_eq!(event.event, event.json()["event"].as_str().expect("type"));
        h.schemas.assert_valid("event", &event.json());
    }
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_and_answers_204_past_the_end() {
    let mut h = EchoStack::start().await;
    let job_id = h.gateway.submit_echo().await;
    let url = h.gateway.url(&format!("/v1/jobs/{job_id}/events"));
    // A stream that sees the first events, then drops.
    let mut early = SseClient::connect(&url, None).await.expect("sse");
    assert_eq!(
        early
            .next(WAIT)
            .await
            .expect("event")
            .expect("queued")
            .id
            .as_deref(),
        Some("1")
    );
    drop(early);
    run_job(&mut h.driver, &job_id).await;

    for n in 0..5u64 {
        let mut resumed = SseClient::connect(&url, Some(&n.to_string()))
            .await
            .expect("sse");
        assert_eq!(resumed.status, 200);
        let ids: Vec<u64> = resumed
            .collect(WAIT)
            .await
            .expect("events")
            .iter()
            .map(|e| e.id.as_deref().expect("id").parse().expect("number"))
            .collect();
        assert_eq!(ids, ((n + 1)..=5).collect::<Vec<_>>(), "after {n}");
    }
    let mut query = SseClient::connect(&format!("{url}?after=3"), None)
        .await
        .expect("sse");
    assert_eq!(query.collect(WAIT).await.expect("events").len(), 2);
    let past_the_end = SseClient::connect(&url, Some("5")).await.expect("sse");
    assert_eq!(past_the_end.status, 204);
}

#[tokio::test]
async fn a_websocket_subscribe_with_after_gets_exactly_the_rest() {
    let mut h = EchoStack::start().await;
    let job_id = h.gateway.submit_echo().await;
    h.driver.start(&job_id).await.expect("start");
    h.driver.progress(&job_id, 1, 1, 2).await.expect("progress");
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": 2}))
        .await
        .expect("send");
    assert_eq!(ws.next(WAIT).await.expect("event")["seq"], 3);
    h.driver.complete(&job_id, 1, "{}").await.expect("complete");
    let rest = ws
        .events_until_terminal(&job_id, WAIT)
        .await
        .expect("events");
    assert_eq!(seqs(&rest), vec![4]);
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_session_stays_open() {
    let h = EchoStack::start().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    let unknown = jobgate_proto::JobId::new().to_string();
    let unknown = unknown.as_str();
    let cases = [
        ("{oops".to_owned(), "invalid_json"),
        (r#"{"type":"launch"}"#.to_owned(), "invalid_message"),
        (r#"{"job_id":"x"}"#.to_owned(), "invalid_message"),
        (
            r#"{"type":"submit","request_id":"r9","job":{"params":{}}}"#.to_owned(),
            "invalid_request",
        ),
        (
            r#"{"type":"submit","request_id":"r9","job":{"kind":"nope","params":{}}}"#.to_owned(),
            "unknown_kind",
        ),
        (
            r#"{"type":"subscribe","job_id":"nope"}"#.to_owned(),
            "invalid_job_id",
        ),
        (
            format!(r#"{{"type":"subscribe","job_id":"{unknown}"}}"#),
            "not_found",
        ),
        (
            format!(r#"{{"type":"unsubscribe","job_id":"{unknown}"}}"#),
            "not_subscribed",
        ),
        (
            format!(r#"{{"type":"cancel","job_id":"{unknown}","request_id":"c1"}}"#),
            "not_found",
        ),
    ];
    for (frame, code) in cases {
        ws.send_text(&frame).await.expect("send");
        let reply = ws.next(WAIT).await.expect("reply");
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        h.schemas.assert_valid("ws_server_message", &reply);
    }
    ws.send(json!({"type": "ping"})).await.expect("send");
    assert_eq!(ws.next(WAIT).await.expect("pong"), json!({"type": "pong"}));
    // Nothing was enqueued by any of that.
    let mut conn = h
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jobgate:queue:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn cancel_over_the_websocket_pushes_cancelled() {
    let h = EchoStack::start().await;
    let mut ws = WsClient::connect(&h.gateway.ws_url())
        .await
        .expect("connect");
    let accepted = ws
        .submit("r", json!({"kind": "echo", "params": {}}))
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("id");
    ws.send(json!({"type": "cancel", "job_id": job_id}))
        .await
        .expect("send");
    let events = ws
        .events_until_terminal(job_id, WAIT)
        .await
        .expect("events");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["queued", "cancelled"]);
}

#[tokio::test]
async fn the_owner_stream_carries_every_job_and_resumes_by_timestamp() {
    let mut h = EchoStack::start().await;
    let url = h.gateway.url("/v1/events");
    let mut all = SseClient::connect(&url, None).await.expect("sse");
    assert_eq!(all.status, 200);
    let first = h.gateway.submit_echo().await;
    let second = h.gateway.submit_echo().await;
    run_job(&mut h.driver, &first).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = all.next(WAIT).await.expect("event").expect("open");
        seen.push(event);
    }
    let pairs: Vec<(String, u64)> = seen
        .iter()
        .map(|e| {
            (
                e.json()["job_id"].as_str().expect("id").to_owned(),
                e.json()["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    assert!(pairs.contains(&(second.clone(), 1)), "{pairs:?}");
    assert!(pairs.contains(&(first.clone(), 5)), "{pairs:?}");
    let cursor = seen[2].id.clone().expect("id");
    drop(all);

    // Events that happened while the stream was away are replayed.
    h.driver.start(&second).await.expect("start");
    let mut resumed = SseClient::connect(&url, Some(&cursor)).await.expect("sse");
    let mut replayed = Vec::new();
    while let Ok(Some(event)) = resumed.next(Duration::from_secs(2)).await {
        replayed.push((
            event.json()["job_id"].as_str().expect("id").to_owned(),
            event.json()["seq"].as_u64().expect("seq"),
        ));
    }
    assert!(
        replayed.contains(&(second.clone(), 2)),
        "missed while away: {replayed:?}"
    );
    assert!(replayed.contains(&(first.clone(), 5)), "{replayed:?}");
}

#[tokio::test]
async fn a_cut_history_is_answered_with_history_truncated_and_the_rest() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let mut config = jobgate_gateway::Config::for_redis(redis.url());
    config.history_max = 16;
    let gateway = TestGateway::start_with(config).await;
    let schemas = Schemas::load();
    let job_id = gateway.submit(json!({"kind": "echo", "params": {}})).await;
    driver.start(&job_id).await.expect("start");
    for done in 1..=30 {
        driver
            .progress(&job_id, 1, done, 30)
            .await
            .expect("progress");
    }
    // 32 events, the history keeps the last 16: seq 17..=32.
    let mut sse = SseClient::connect(
        &gateway.url(&format!("/v1/jobs/{job_id}/events?after=1")),
        None,
    )
    .await
    .expect("sse");
    let first = sse.next(WAIT).await.expect("event").expect("open");
    assert_eq!(first.event, "history_truncated");
    let notice = first.json();
    schemas.assert_valid("history_truncated", &notice);
    assert_eq!(notice["first_seq"], 17);
    assert_eq!(notice["snapshot"]["seq"], 32);
    assert_eq!(
        sse.next(WAIT)
            .await
            .expect("event")
            .expect("open")
            .id
            .as_deref(),
        Some("17")
    );

    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": 3}))
        .await
        .expect("subscribe");
    let notice = ws.next(WAIT).await.expect("notice");
    schemas.assert_valid("ws_server_message", &notice);
    assert_eq!(notice["type"], "history_truncated");
    assert_eq!(notice["after"], 3);
    assert_eq!(ws.next(WAIT).await.expect("event")["seq"], 17);
}

#[tokio::test]
async fn a_job_past_its_retention_is_history_expired_not_silence() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
    let mut config = jobgate_gateway::Config::for_redis(redis.url());
    config.retention_s = 1;
    let gateway = TestGateway::start_with(config).await;
    let job_id = gateway.submit(json!({"kind": "echo", "params": {}})).await;
    driver.start(&job_id).await.expect("start");
    driver.complete(&job_id, 1, "{}").await.expect("complete");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let answer = reqwest::Client::new()
        .get(gateway.url(&format!("/v1/jobs/{job_id}/events?after=2")))
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 410);
    assert_eq!(
        answer.json::<Value>().await.expect("json")["code"],
        "history_expired"
    );
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    ws.send(json!({"type": "subscribe", "job_id": job_id, "after": 2}))
        .await
        .expect("subscribe");
    assert_eq!(
        ws.next(WAIT).await.expect("error")["code"],
        "history_expired"
    );
    // A job id that was never used is simply not found.
    let unknown = jobgate_proto::JobId::new().to_string();
    ws.send(json!({"type": "subscribe", "job_id": unknown}))
        .await
        .expect("subscribe");
    assert_eq!(ws.next(WAIT).await.expect("error")["code"], "not_found");
}

#[tokio::test]
async fn an_idle_pub_sub_link_answers_its_probes_and_stays_up() {
    use jobgate_store::{EventHub, HubMessage, HubSettings};
    let redis = RedisServer::start();
    let settings = HubSettings {
        probe_interval: Duration::from_millis(50),
        ..HubSettings::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let hub = EventHub::start(
        vec![redis.client().get_connection_info().clone()],
        settings,
        shutdown.clone(),
    );
    let mut subscription = hub.subscription();
    hub.watch(&mut subscription, "jobgate:live:job:probe-test")
        .await
        .expect("watch");
    // Twenty probes later the link is the same one: no resync was needed.
    let quiet = tokio::time::timeout(Duration::from_secs(1), subscription.recv()).await;
    assert!(quiet.is_err(), "the link was re-established: {quiet:?}");
    assert!(hub.is_connected());
    // And it still delivers.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: i64 = redis::cmd("SPUBLISH")
        .arg("jobgate:live:job:probe-test")
        .arg("hello")
        .query_async(&mut conn)
        .await
        .expect("publish");
    match subscription.recv().await {
        Some(HubMessage::Event(payload)) => assert_eq!(&payload[..], b"hello"),
        other => panic!("expected the message, got {other:?}"),
    }
    shutdown.cancel();
}

#[tokio::test]
async fn warm_job_ids_are_subscribed_ahead_and_refilled_once_taken() {
    use jobgate_store::{EventHub, HubMessage, HubSettings, WarmIds};
    let redis = RedisServer::start();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let hub = EventHub::start(
        vec![redis.client().get_connection_info().clone()],
        HubSettings::default(),
        shutdown.clone(),
    );
    let warm = WarmIds::start(hub.clone(), 4, shutdown.clone());
    let filled = |want: usize| {
        let warm = warm.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while warm.ready() < want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} ready",
                    warm.ready()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    filled(4).await;
    let job_id = warm.take().expect("a warm id");
    let channel = format!("jobgate:live:job:{{{job_id}}}");
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let subscribed: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut conn)
        .await
        .expect("shardchannels");
    assert!(subscribed.contains(&channel), "{subscribed:?}");
    assert_eq!(subscribed.len(), 4, "{subscribed:?}");

    // Whoever takes it watches it, then the pool lets go and makes another.
    let mut session = hub.subscription();
    hub.watch(&mut session, &channel).await.expect("watch");
    warm.release(job_id);
    filled(4).await;
    assert_ne!(warm.take(), Some(job_id), "an id is handed out once");
    // The released channel still reaches the session that watches it.
    let _: i64 = redis::cmd("SPUBLISH")
        .arg(&channel)
        .arg("an event")
        .query_async(&mut conn)
        .await
        .expect("publish");
    match tokio::time::timeout(WAIT, session.recv()).await {
        Ok(Some(HubMessage::Event(message))) => assert_eq!(&message.payload()[..], b"an event"),
        other => panic!("expected the event, got {other:?}"),
    }
    shutdown.cancel();
}

/// A job whose events 1 to 3 were written before anyone watched it, and
/// the JSON of its third event.
async fn job_with_three_events(redis: &RedisServer) -> (jobgate_proto::JobId, String) {
    let mut driver = JobDriver::connect(&redis.url()).await.expect("driver");
    let job_id = jobgate_proto::JobId::new();
    let id = job_id.to_string();
    let create = [
        "create", &id, "alice", "echo", "default", "{}", "5", "3", "0", "60", "100", "", "", "",
    ];
    assert_eq!(driver.op(&id, &create).await.expect("create"), "ok");
    assert_eq!(driver.start(&id).await.expect("start"), "ok");
    driver.progress(&id, 1, 1, 2).await.expect("progress");
    let third: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("jobgate:events:{{{id}}}"))
        .arg("3-0")
        .arg("3-0")
        .query_async(driver.connection())
        .await
        .expect("xrange");
    (job_id, third[0].1[0].1.clone())
}

/// A feed of its own hub and store, watching `job_id` as a submitter does:
/// from the first event on, without reading the history.
async fn feed_expecting(
    redis: &RedisServer,
    job_id: jobgate_proto::JobId,
    shutdown: &tokio_util::sync::CancellationToken,
) -> jobgate_store::Feed {
    use jobgate_store::{EventHub, Feed, HubSettings, JobStore, StoreSettings};
    let hub = EventHub::start(
        vec![redis.client().get_connection_info().clone()],
        HubSettings::default(),
        shutdown.clone(),
    );
    let (connection, _) = jobgate_store::open(&redis.url()).expect("open");
    let mut feed = Feed::new(JobStore::new(connection, StoreSettings::default()), hub);
    feed.expect(job_id).await.expect("subscribed");
    feed
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn")
}

async fn redis_do(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let _: redis::Value = redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(conn)
        .await
        .expect(args[0]);
}

#[tokio::test]
async fn a_feed_dropped_while_it_reads_a_gap_loses_no_event() {
    use jobgate_store::FeedItem;
    let redis = RedisServer::start();
    // Events 1 and 2 happen before the feed watches: it will have missed them.
    let (job_id, third) = job_with_three_events(&redis).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut feed = feed_expecting(&redis, job_id, &shutdown).await;
    let mut conn = connection(&redis).await;
    // Event 3 arrives live: the feed sees that 1 and 2 are missing.
    let channel = format!("jobgate:live:job:{{{job_id}}}");
    redis_do(&mut conn, &["SPUBLISH", &channel, &third]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Polled once and dropped while it reads the history, as a session's
    // `select!` drops it when another branch is ready first.
    assert!(
        tokio::time::timeout(Duration::ZERO, feed.next())
            .await
            .is_err(),
        "the history read takes a round trip"
    );
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        match tokio::time::timeout(WAIT, feed.next()).await {
            Ok(Some(FeedItem::Event(event))) => seqs.push(event.seq),
            other => panic!("after {seqs:?}: {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    shutdown.cancel();
}

#[tokio::test]
async fn a_feed_retries_a_failed_read_on_time_though_its_caller_keeps_dropping_it() {
    use jobgate_store::FeedItem;
    let redis = RedisServer::start();
    let (job_id, third) = job_with_three_events(&redis).await;
    let mut conn = connection(&redis).await;
    // The history cannot be read for now: a string stands in its place.
    let events_key = format!("jobgate:events:{{{job_id}}}");
    let aside = format!("jobgate:aside:{{{job_id}}}");
    redis_do(&mut conn, &["RENAME", &events_key, &aside]).await;
    redis_do(&mut conn, &["SET", &events_key, "in the way"]).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut feed = feed_expecting(&redis, job_id, &shutdown).await;
    let channel = format!("jobgate:live:job:{{{job_id}}}");
    redis_do(&mut conn, &["SPUBLISH", &channel, &third]).await;
    match tokio::time::timeout(WAIT, feed.next()).await {
        Ok(Some(FeedItem::Unavailable(_))) => {}
        other => panic!("the gap's read fails first: {other:?}"),
    }
    redis_do(&mut conn, &["RENAME", &aside, &events_key]).await;
    // A caller that drops the call every 100 ms (a session with other
    // work) still sees the read made again after the pause.
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seqs.len() < 3 && tokio::time::Instant::now() < deadline {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
            match item {
                Some(FeedItem::Event(event)) => seqs.push(event.seq),
                other => panic!("after {seqs:?}: {other:?}"),
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    shutdown.cancel();
}
