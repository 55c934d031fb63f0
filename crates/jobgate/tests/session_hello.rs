//! Session negotiation on `GET /v1/ws`: a client that offers the subprotocol
//! `jobgate.v1` gets `hello` first and `auth_ok` after each accepted `auth`;
//! a client that offers none gets, byte for byte, what it always got.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::mint_hs256;
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{EchoStack, RedisServer, Schemas, TestGateway, WsClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token(owner: &str, ttl_s: u64) -> String {
    mint_hs256(SECRET, owner, ttl_s, Some("jobgate"), Some("tests")).expect("token")
}

async fn jwt_gateway(redis: &RedisServer) -> TestGateway {
    let mut config = Config::for_redis(redis.url());
    config.auth = Some(AuthMode::Jwt);
    config.jwt_secret = Some(SECRET.into());
    config.jwt_audience = Some("jobgate".into());
    config.jwt_issuer = Some("tests".into());
    TestGateway::start_with(config).await
}

#[tokio::test]
async fn a_jobgate_v1_session_opens_with_hello() {
    let s = EchoStack::start().await;
    let mut ws = WsClient::connect_offering(&s.gateway.ws_url(), &["jobgate.v1"])
        .await
        .expect("connect");
    assert_eq!(ws.protocol.as_deref(), Some("jobgate.v1"));
    let hello = ws.next(WAIT).await.expect("hello");
    s.schemas.assert_valid("ws_server_message", &hello);
    let config = &s.gateway.state.config;
    let interval_ms = config.ws_ping_interval().as_millis() as u64;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], "jobgate.v1");
    assert_eq!(hello["ping_interval_ms"], interval_ms);
    assert_eq!(hello["ping_timeout_ms"], 2 * interval_ms);
    assert_eq!(hello["token_expires_in_ms"], Value::Null, "auth is off");
    assert_eq!(
        hello["limits"],
        json!({
            "max_subscriptions": config.max_subscriptions_per_session,
            "messages_per_s": config.ws_messages_per_s,
            "max_message_bytes": config.max_body_bytes,
            "outbound_queue": config.outbound_queue,
        })
    );
    let session_id = hello["session_id"].as_str().expect("session_id");
    let groups: Vec<usize> = session_id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "a UUID: {session_id}");

    // Each session has its own id.
    let mut other = WsClient::connect_offering(&s.gateway.ws_url(), &["jobgate.v1"])
        .await
        .expect("connect");
    let other_hello = other.next(WAIT).await.expect("hello");
    assert_ne!(other_hello["session_id"], hello["session_id"]);

    // The session goes on as any other: ping, submit, events.
    ws.send(json!({"type": "ping"})).await.expect("ping");
    assert_eq!(ws.next(WAIT).await.expect("pong"), json!({"type": "pong"}));
    // With auth off, any token is taken and answered.
    ws.send(json!({"type": "auth", "token": "anything", "request_id": "a1"}))
        .await
        .expect("auth");
    let auth_ok = ws.next(WAIT).await.expect("auth_ok");
    s.schemas.assert_valid("ws_server_message", &auth_ok);
    assert_eq!(
        auth_ok,
        json!({"type": "auth_ok", "request_id": "a1", "token_expires_in_ms": null})
    );
    let accepted = ws
        .submit("r1", json!({"kind": "echo", "params": {"n": 1}}))
        .await
        .expect("accepted");
    assert_eq!(accepted["request_id"], "r1");
}

#[tokio::test]
async fn hello_tells_the_tokens_expiry_and_auth_ok_the_new_ones() {
    let redis = RedisServer::start();
    let gateway = jwt_gateway(&redis).await;
    let schemas = Schemas::load();
    let url = format!("{}?access_token={}", gateway.ws_url(), token("carol", 600));
    let mut ws = WsClient::connect_offering(&url, &["jobgate.v1"])
        .await
        .expect("connect");
    let hello = ws.next(WAIT).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    let expires_in = hello["token_expires_in_ms"].as_u64().expect("an expiry");
    assert!((598_000..=600_000).contains(&expires_in), "{expires_in}");

    // An accepted refresh: `auth_ok` with the new token's expiry.
    ws.send(json!({"type": "auth", "token": token("carol", 3600), "request_id": "a1"}))
        .await
        .expect("auth");
    let auth_ok = ws.next(WAIT).await.expect("auth_ok");
    schemas.assert_valid("ws_server_message", &auth_ok);
    assert_eq!(auth_ok["type"], "auth_ok");
    assert_eq!(auth_ok["request_id"], "a1");
    let expires_in = auth_ok["token_expires_in_ms"].as_u64().expect("an expiry");
    assert!(
        (3_598_000..=3_600_000).contains(&expires_in),
        "{expires_in}"
    );

    // Without a request id, none is echoed.
    ws.send(json!({"type": "auth", "token": token("carol", 3600)}))
        .await
        .expect("auth");
    let auth_ok = ws.next(WAIT).await.expect("auth_ok");
    assert_eq!(auth_ok["type"], "auth_ok");
    assert!(auth_ok.get("request_id").is_none(), "{auth_ok}");

    // A refused refresh: an `unauthorized` error echoing the request id,
    // and the session stays open.
    for (request_id, bad) in [
        ("a2", token("mallory", 3600)),
        ("a3", "not-a-token".to_owned()),
    ] {
        ws.send(json!({"type": "auth", "token": bad, "request_id": request_id}))
            .await
            .expect("auth");
        let error = ws.next(WAIT).await.expect("error");
        schemas.assert_valid("ws_server_message", &error);
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "unauthorized", "{error}");
        assert_eq!(error["request_id"], request_id, "{error}");
    }
    // An empty token is a bad frame; its request id comes back too.
    ws.send(json!({"type": "auth", "token": "", "request_id": "a4"}))
        .await
        .expect("auth");
    let error = ws.next(WAIT).await.expect("error");
    assert_eq!(
        (error["code"].as_str(), error["request_id"].as_str()),
        (Some("invalid_request"), Some("a4"))
    );
    ws.send(json!({"type": "ping"})).await.expect("ping");
    assert_eq!(ws.next(WAIT).await.expect("pong")["type"], "pong");
}

#[tokio::test]
async fn a_session_that_offers_no_subprotocol_gets_no_hello_and_no_auth_ok() {
    let redis = RedisServer::start();
    let gateway = jwt_gateway(&redis).await;
    let url = format!("{}?access_token={}", gateway.ws_url(), token("carol", 600));
    let mut ws = WsClient::connect(&url).await.expect("connect");
    assert_eq!(ws.protocol, None);
    ws.send(json!({"type": "auth", "token": token("carol", 3600), "request_id": "a1"}))
        .await
        .expect("auth");
    ws.send(json!({"type": "ping"})).await.expect("ping");
    // The first frame the session sends is the answer to the ping.
    assert_eq!(ws.next(WAIT).await.expect("pong"), json!({"type": "pong"}));
}

/// The exact bytes a client written before `jobgate.v1` sends (tungstenite's
/// handshake, masked text frames), and the exact bytes it gets back.
#[tokio::test]
async fn an_old_clients_bytes_get_the_same_bytes_as_before() {
    let redis = RedisServer::start();
    let gateway = jwt_gateway(&redis).await;
    let mut tcp = TcpStream::connect(gateway.addr).await.expect("tcp");
    let handshake = format!(
        "GET /v1/ws?access_token={} HTTP/1.1\r\n\
         Host: {}\r\n\
         Connection: Upgrade\r\n\
         Upgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token("carol", 600),
        gateway.addr
    );
    tcp.write_all(handshake.as_bytes())
        .await
        .expect("handshake");
    let head = read_head(&mut tcp).await;
    let lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert_eq!(lines[0], "http/1.1 101 switching protocols", "{head}");
    assert!(
        lines
            .iter()
            .any(|l| l == "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("sec-websocket-protocol")),
        "{head}"
    );
    // A refresh (accepted: no answer), then a ping.
    let auth = json!({"type": "auth", "token": token("carol", 3600)}).to_string();
    tcp.write_all(&masked_text(&auth)).await.expect("auth");
    tcp.write_all(&masked_text(r#"{"type":"ping"}"#))
        .await
        .expect("ping");
    let mut pong = [0u8; 17];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut pong))
        .await
        .expect("in time")
        .expect("pong");
    assert_eq!(&pong, b"\x81\x0f{\"type\":\"pong\"}");
}

/// The response head, up to the blank line.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .expect("in time")
            .expect("head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("text")
}

/// One client text frame, masked as RFC 6455 requires.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A `jobgate.v1` session answers each `subscribe` with `subscribed` (the
/// job's status and last position) before the events it replays, so a
/// client knows that a finished job it has read to the end sends nothing
/// more. Other sessions get no such frame.
#[tokio::test]
async fn a_jobgate_v1_subscribe_is_answered_with_the_jobs_status_and_position() {
    let mut s = EchoStack::start().await;
    let mut submitter = WsClient::connect(&s.gateway.ws_url())
        .await
        .expect("connect");
    let accepted = submitter
        .submit("r1", json!({"kind": "echo", "params": {}}))
        .await
        .expect("accepted");
    let done = accepted["job_id"].as_str().expect("job id").to_owned();
    s.driver.start_and_progress(&done).await;
    s.driver
        .progress_and_complete(&done, r#"{"ok":true}"#)
        .await;
    let events = submitter
        .events_until_terminal(&done, WAIT)
        .await
        .expect("events");
    assert_eq!(events.last().expect("terminal")["seq"], 5);
    let queued = submitter
        .submit("r2", json!({"kind": "echo", "params": {}}))
        .await
        .expect("accepted")["job_id"]
        .as_str()
        .expect("job id")
        .to_owned();

    let mut ws = WsClient::connect_offering(&s.gateway.ws_url(), &["jobgate.v1"])
        .await
        .expect("connect");
    assert_eq!(ws.next(WAIT).await.expect("hello")["type"], "hello");
    let subscribed = |job_id: &str, status: &str, seq: u64| json!({"type": "subscribed", "job_id": job_id, "status": status, "epoch": 1, "seq": seq});

    // A finished job subscribed after its last event: `subscribed` with
    // its terminal status and last position, then nothing.
    ws.send(json!({"type": "subscribe", "job_id": done, "after": 5}))
        .await
        .expect("subscribe");
    let answer = ws.next(WAIT).await.expect("subscribed");
    s.schemas.assert_valid("ws_server_message", &answer);
    assert_eq!(answer, subscribed(&done, "completed", 5));
    ws.send(json!({"type": "ping"})).await.expect("ping");
    assert_eq!(ws.next(WAIT).await.expect("pong"), json!({"type": "pong"}));

    // Earlier in its history: `subscribed`, then the events after `after`.
    ws.send(json!({"type": "subscribe", "job_id": done, "after": 2}))
        .await
        .expect("subscribe");
    assert_eq!(
        ws.next(WAIT).await.expect("subscribed"),
        subscribed(&done, "completed", 5)
    );
    let replayed = ws.events_until_terminal(&done, WAIT).await.expect("events");
    let seqs: Vec<&Value> = replayed.iter().map(|e| &e["seq"]).collect();
    assert_eq!(seqs, [3, 4, 5]);

    // A job still going: its status now, then its events.
    ws.send(json!({"type": "subscribe", "job_id": queued}))
        .await
        .expect("subscribe");
    assert_eq!(
        ws.next(WAIT).await.expect("subscribed"),
        subscribed(&queued, "queued", 1)
    );
    let first = ws.next(WAIT).await.expect("event");
    assert_eq!(
        (&first["type"], &first["seq"]),
        (&json!("event"), &json!(1))
    );

    // A session without the subprotocol: no `subscribed`, as before.
    let mut old = WsClient::connect(&s.gateway.ws_url())
        .await
        .expect("connect");
    old.send(json!({"type": "subscribe", "job_id": done, "after": 5}))
        .await
        .expect("subscribe");
    old.send(json!({"type": "ping"})).await.expect("ping");
    assert_eq!(old.next(WAIT).await.expect("pong"), json!({"type": "pong"}));
    old.send(json!({"type": "subscribe", "job_id": done, "after": 4}))
        .await
        .expect("subscribe");
    let next = old.next(WAIT).await.expect("event");
    assert_eq!((&next["type"], &next["seq"]), (&json!("event"), &json!(5)));
}
