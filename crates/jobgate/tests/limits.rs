//! Hostile input: oversize and deep bodies, floods, too many connections,
//! cross-site WebSocket upgrades — each gets its documented code, changes
//! nothing, and leaves the gateway serving everyone else.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_testkit::{JobDriver, RedisServer, TestGateway, WsClient};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

async fn gateway_with(configure: impl FnOnce(&mut Config)) -> (RedisServer, TestGateway) {
    let redis = RedisServer::start();
    let _driver = JobDriver::with_kinds(&redis.url(), &["echo", "secret_kind"]).await;
    let mut config = Config::for_redis(redis.url());
    configure(&mut config);
    let gateway = TestGateway::start_with(config).await;
    (redis, gateway)
}

async fn post(gateway: &TestGateway, body: String) -> (u16, Value, Option<String>) {
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

async fn still_serves(gateway: &TestGateway) {
    let (status, body, _) = post(gateway, json!({"kind": "echo", "params": {}}).to_string()).await;
    assert_eq!(status, 202, "the gateway still serves others: {body}");
}

#[tokio::test]
async fn oversize_and_deep_params_and_kinds_off_the_list_are_refused() {
    let (_redis, gateway) = gateway_with(|c| {
        c.max_params_bytes = 1024;
        c.max_json_depth = 8;
        c.allowed_kinds = vec!["echo".into()];
    })
    .await;
    let big = json!({"kind": "echo", "params": {"blob": "x".repeat(2000)}}).to_string();
    let (status, body, _) = post(&gateway, big).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let deep = format!(
        r#"{{"kind":"echo","params":{{"a":{}1{}}}}}"#,
        "[".repeat(20),
        "]".repeat(20)
    );
    let (status, body, _) = post(&gateway, deep).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
    let hostile = format!(
        r#"{{"kind":"echo","params":{{"a":{}}}}}"#,
        "[".repeat(100_000)
    );
    let (status, body, _) = post(&gateway, hostile).await;
    assert!(status == 400 || status == 422, "{status} {body}");
    let (status, body, _) = post(
        &gateway,
        json!({"kind": "secret_kind", "params": {}}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("unknown_kind")),
        "{body}"
    );
    still_serves(&gateway).await;
}

#[tokio::test]
async fn submissions_over_the_owner_rate_get_429_with_retry_after() {
    let (_redis, gateway) = gateway_with(|c| c.submits_per_minute = 5).await;
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(post(&gateway, json!({"kind": "echo", "params": {}}).to_string()).await);
    }
    let accepted = answers.iter().filter(|(status, ..)| *status == 202).count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 429)
        .collect();
    // A minute boundary may fall inside the loop: then two windows share the eight.
    assert!(
        accepted >= 5 && !limited.is_empty() || accepted == 8,
        "{answers:?}"
    );
    for (_, body, retry_after) in limited {
        assert_eq!(body["code"], "rate_limited");
        let seconds: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&seconds));
    }
}

#[tokio::test]
async fn websocket_floods_and_oversize_frames_are_contained() {
    let (_redis, gateway) = gateway_with(|c| {
        c.ws_messages_per_s = 20;
        c.max_body_bytes = 4096;
    })
    .await;
    let mut flooder = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    for _ in 0..200 {
        flooder.send(json!({"type": "ping"})).await.expect("send");
    }
    let mut pongs = 0;
    let mut limited = 0;
    while pongs + limited < 200 {
        let reply = flooder.next(WAIT).await.expect("reply");
        match reply["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if reply["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    assert!(limited > 100, "pongs {pongs}, rate_limited {limited}");

    let mut other = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    let mut oversize = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    oversize
        .send_text(&"x".repeat(64 * 1024))
        .await
        .expect("send");
    assert!(
        oversize.closed(WAIT).await.is_ok(),
        "an oversize frame ends the session"
    );
    other.send(json!({"type": "ping"})).await.expect("send");
    assert_eq!(other.next(WAIT).await.expect("pong")["type"], "pong");
    still_serves(&gateway).await;
}

#[tokio::test]
async fn connections_past_the_per_owner_cap_get_503() {
    let (_redis, gateway) = gateway_with(|c| c.max_connections_per_owner = 2).await;
    let _first = WsClient::connect(&gateway.ws_url()).await.expect("first");
    let _second = WsClient::connect(&gateway.ws_url()).await.expect("second");
    let third = WsClient::connect(&gateway.ws_url()).await;
    assert!(third.is_err(), "a third session is refused");
    let sse = reqwest::Client::new()
        .get(gateway.url("/v1/events"))
        .send()
        .await
        .expect("get");
    assert_eq!(sse.status(), 503);
    assert_eq!(
        sse.json::<Value>().await.expect("json")["code"],
        "too_many_connections"
    );
    drop(_first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        WsClient::connect(&gateway.ws_url()).await.is_ok(),
        "a freed place can be taken"
    );
}

#[tokio::test]
async fn cross_site_websocket_upgrades_are_refused() {
    let (_redis, gateway) =
        gateway_with(|c| c.allowed_origins = vec!["https://dashboard.example".into()]).await;
    let connect = |origin: Option<String>| {
        let mut request = gateway.ws_url().into_client_request().expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(request)
    };
    let refused = connect(Some("https://evil.example".into())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        connect(Some("https://dashboard.example".into()))
            .await
            .is_ok()
    );
    assert!(
        connect(Some(format!("http://{}", gateway.addr)))
            .await
            .is_ok(),
        "same origin"
    );
    assert!(
        connect(None).await.is_ok(),
        "non-browser clients send no Origin"
    );

    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gateway.url("/v1/jobs"))
        .header("origin", "https://dashboard.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dashboard.example"
    );
    let foreign = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gateway.url("/v1/jobs"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
