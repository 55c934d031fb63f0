//! Authentication and ownership: only a job's owner can see or touch it.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::mint_hs256;
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{JobDriver, RedisServer, SseClient, TestGateway, WsClient};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const WAIT: Duration = Duration::from_secs(10);

struct Secured {
    redis: RedisServer,
    gateway: TestGateway,
    driver: JobDriver,
    http: reqwest::Client,
}

fn token(owner: &str) -> String {
    mint_hs256(SECRET, owner, 3600, Some("jobgate"), Some("tests")).expect("token")
}

impl Secured {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
        let mut config = Config::for_redis(redis.url());
        config.auth = Some(AuthMode::Jwt);
        config.jwt_secret = Some(SECRET.into());
        config.jwt_audience = Some("jobgate".into());
        config.jwt_issuer = Some("tests".into());
        config.jwt_leeway_s = 0;
        let gateway = TestGateway::start_with(config).await;
        Self {
            redis,
            gateway,
            driver,
            http: reqwest::Client::new(),
        }
    }

    async fn submit(&self, bearer: &str) -> reqwest::Response {
        self.http
            .post(self.gateway.url("/v1/jobs"))
            .bearer_auth(bearer)
            .json(&json!({"kind": "echo", "params": {}}))
            .send()
            .await
            .expect("post")
    }

    async fn job_keys(&self) -> usize {
        let mut conn = self
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("jobgate:job:*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.len()
    }
}

#[tokio::test]
async fn bad_credentials_get_401_and_enqueue_nothing() {
    let s = Secured::start().await;
    let expired = mint_hs256(SECRET, "alice", 0, Some("jobgate"), Some("tests")).expect("token");
    let other_audience =
        mint_hs256(SECRET, "alice", 3600, Some("someone-else"), Some("tests")).expect("token");
    let other_issuer =
        mint_hs256(SECRET, "alice", 3600, Some("jobgate"), Some("elsewhere")).expect("token");
    let bad_signature = mint_hs256(
        "another-secret-that-is-also-long-enough!!",
        "alice",
        3600,
        Some("jobgate"),
        Some("tests"),
    )
    .expect("token");
    tokio::time::sleep(Duration::from_millis(1100)).await; // `expired` is now past its exp
    let no_token = s
        .http
        .post(s.gateway.url("/v1/jobs"))
        .json(&json!({"kind": "echo", "params": {}}))
        .send()
        .await
        .expect("post");
    let mut answers = vec![no_token];
    for bad in [
        &expired,
        &other_audience,
        &other_issuer,
        &bad_signature,
        &"not.a.jwt".to_owned(),
    ] {
        answers.push(s.submit(bad).await);
    }
    for answer in answers {
        assert_eq!(answer.status(), 401);
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    assert_eq!(s.job_keys().await, 0, "nothing was enqueued");

    let ok = s.submit(&token("alice")).await;
    assert_eq!(ok.status(), 202);
    // Browsers may pass the token as a query parameter.
    let job: Value = ok.json().await.expect("json");
    let url = s.gateway.url(&format!(
        "/v1/jobs/{}?access_token={}",
        job["job_id"].as_str().expect("id"),
        token("alice")
    ));
    assert_eq!(s.http.get(url).send().await.expect("get").status(), 200);
}

#[tokio::test]
async fn another_owner_gets_404_on_every_route_and_sees_none_of_the_events() {
    let mut s = Secured::start().await;
    let (alice, bob) = (token("alice"), token("bob"));
    let mut bob_stream = SseClient::connect(
        &s.gateway.url(&format!("/v1/events?access_token={bob}")),
        None,
    )
    .await
    .expect("sse");
    assert_eq!(bob_stream.status, 200);
    let job: Value = s.submit(&alice).await.json().await.expect("json");
    let job_id = job["job_id"].as_str().expect("id").to_owned();

    for (method, path) in [
        ("GET", format!("/v1/jobs/{job_id}")),
        ("POST", format!("/v1/jobs/{job_id}/cancel")),
        ("GET", format!("/v1/jobs/{job_id}/events")),
        ("GET", format!("/status/{job_id}")),
    ] {
        let request = match method {
            "GET" => s.http.get(s.gateway.url(&path)),
            _ => s.http.post(s.gateway.url(&path)),
        };
        let answer = request.bearer_auth(&bob).send().await.expect("request");
        assert_eq!(answer.status(), 404, "{method} {path}");
        assert_eq!(
            answer.json::<Value>().await.expect("json")["code"],
            "not_found"
        );
    }
    let mut ws = WsClient::connect(&format!("{}?access_token={bob}", s.gateway.ws_url()))
        .await
        .expect("ws");
    for frame in [
        json!({"type": "subscribe", "job_id": job_id}),
        json!({"type": "cancel", "job_id": job_id}),
    ] {
        ws.send(frame).await.expect("send");
        let reply = ws.next(WAIT).await.expect("reply");
        assert_eq!(reply["code"], "not_found", "{reply}");
    }

    // Alice's job runs to completion; Bob's stream carries none of it, while
    // Alice's own stream does.
    let mut alice_stream = SseClient::connect(
        &s.gateway
            .url(&format!("/v1/jobs/{job_id}/events?access_token={alice}")),
        None,
    )
    .await
    .expect("sse");
    s.driver.start(&job_id).await.expect("start");
    s.driver.complete(&job_id, 1, "{}").await.expect("complete");
    assert_eq!(alice_stream.collect(WAIT).await.expect("events").len(), 3);
    let bob_job: Value = s.submit(&bob).await.json().await.expect("json");
    let first = bob_stream.next(WAIT).await.expect("event").expect("open");
    assert_eq!(
        first.json()["job_id"],
        bob_job["job_id"],
        "Bob sees only his own job's events"
    );
}

#[tokio::test]
async fn a_websocket_session_is_closed_when_its_token_expires_unless_refreshed() {
    let s = Secured::start().await;
    let short = mint_hs256(SECRET, "carol", 2, Some("jobgate"), Some("tests")).expect("token");
    let mut refreshed = WsClient::connect(&format!("{}?access_token={short}", s.gateway.ws_url()))
        .await
        .expect("ws");
    let mut lapsed = WsClient::connect(&format!("{}?access_token={short}", s.gateway.ws_url()))
        .await
        .expect("ws");
    refreshed
        .send(json!({"type": "auth", "token": token("carol")}))
        .await
        .expect("auth");
    // A token for someone else is refused and changes nothing.
    refreshed
        .send(json!({"type": "auth", "token": token("mallory")}))
        .await
        .expect("auth");
    assert_eq!(
        refreshed.next(WAIT).await.expect("error")["code"],
        "unauthorized"
    );

    let close = lapsed
        .closed(Duration::from_secs(10))
        .await
        .expect("closed")
        .expect("close frame");
    assert_eq!(u16::from(close.code), jobgate_gateway::CLOSE_TOKEN_EXPIRED);
    refreshed.send(json!({"type": "ping"})).await.expect("ping");
    assert_eq!(refreshed.next(WAIT).await.expect("pong")["type"], "pong");
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_auth_or_with_none_off_loopback() {
    let mut config = Config::for_redis("redis://127.0.0.1:1");
    config.auth = None;
    assert!(config.validate().is_err());
    config.auth = Some(AuthMode::None);
    config.listen = "0.0.0.0:8080".parse().expect("addr");
    assert!(config.validate().is_err());
    config.auth = Some(AuthMode::Jwt);
    assert!(config.validate().is_err(), "jwt without a key");
    config.jwt_secret = Some("short".into());
    assert!(config.validate().is_err(), "a weak secret");
    config.jwt_secret = Some(SECRET.into());
    assert!(config.validate().is_ok());
}
