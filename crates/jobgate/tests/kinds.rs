//! Kinds that describe themselves: the real Python worker registers a JSON
//! Schema for each example kind's params; the gateway refuses params that
//! break it before anything is written (HTTP `422`, WebSocket `error`, code
//! `invalid_params`, naming the field) and serves the kinds with their
//! schemas at `GET /v1/kinds`. A kind registered without a schema is not
//! checked.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_testkit::{JobDriver, PythonWorker, RedisServer, Schemas, TestGateway, WsClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A Redis, the example worker (which registers its kinds with their
/// schemas) and a gateway.
struct Pricing {
    redis: RedisServer,
    gateway: TestGateway,
    schemas: Schemas,
    _worker: PythonWorker,
}

impl Pricing {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let worker = PythonWorker::start(&redis.url(), "kinds-worker", &[]);
        redis
            .wait_for_kinds(&["echo", "fail", "mc_option_price"])
            .await;
        let gateway = TestGateway::start(&redis.url()).await;
        Self {
            redis,
            gateway,
            schemas: Schemas::load(),
            _worker: worker,
        }
    }

    async fn post(&self, job: Value) -> (u16, Value) {
        let answer = reqwest::Client::new()
            .post(self.gateway.url("/v1/jobs"))
            .json(&job)
            .send()
            .await
            .expect("post");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("json"))
    }

    /// Every key and the length of every queue stream: what a request
    /// could have written.
    async fn written(&self) -> (Vec<String>, Vec<u64>) {
        let keys = self.redis.keys().await;
        let mut conn = self
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let mut lengths = Vec::new();
        for key in keys.iter().filter(|k| k.starts_with("jobgate:queue:")) {
            let length: u64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("xlen");
            lengths.push(length);
        }
        (keys, lengths)
    }
}

fn pricing(params: Value) -> Value {
    json!({"kind": "mc_option_price", "params": params})
}

fn market() -> serde_json::Map<String, Value> {
    let market = json!({"spot": 100, "strike": 105, "rate": 0.03, "volatility": 0.25, "maturity": 1.5,
                        "paths": 1000, "chunks": 1});
    market.as_object().expect("object").clone()
}

fn market_with(field: &str, value: Value) -> Value {
    let mut params = market();
    params.insert(field.into(), value);
    Value::Object(params)
}

#[tokio::test]
async fn params_that_break_the_kinds_schema_are_refused_and_nothing_is_written() {
    let p = Pricing::start().await;
    let before = p.written().await;
    assert!(
        !before.0.iter().any(|k| k.starts_with("jobgate:job:")),
        "{before:?}"
    );

    // HTTP: 422 invalid_params, the message and `field` naming the field.
    let cases = [
        (
            market_with("strike", json!(-1)),
            "/strike",
            "params.strike: ",
        ),
        (
            market_with("option", json!("straddle")),
            "/option",
            "params.option: ",
        ),
        (market_with("paths", json!(0.5)), "/paths", "params.paths: "),
        (
            market_with("barrier", json!(120)),
            "/barrier",
            "params.barrier: ",
        ),
        (
            {
                let mut params = market();
                params.remove("rate");
                Value::Object(params)
            },
            "/rate",
            "params.rate: ",
        ),
    ];
    for (params, field, prefix) in cases {
        let (status, body) = p.post(pricing(params.clone())).await;
        assert_eq!(status, 422, "{params}: {body}");
        p.schemas.assert_valid("error_body", &body);
        assert_eq!(body["code"], "invalid_params", "{body}");
        assert_eq!(body["field"], field, "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.starts_with(prefix), "{message}");
    }
    let (status, body) = p.post(pricing(market_with("strike", json!(-1)))).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        "params.strike: -1 is less than or equal to the minimum of 0"
    );
    // The same with an idempotency key: the key is not claimed either.
    let answer = reqwest::Client::new()
        .post(p.gateway.url("/v1/jobs"))
        .header("idempotency-key", "k-1")
        .json(&pricing(market_with("strike", json!(-1))))
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 422);

    // WebSocket: an `error` frame with the request id, code and field.
    let mut ws = WsClient::connect(&p.gateway.ws_url())
        .await
        .expect("connect");
    ws.send(json!({"type": "submit", "request_id": "r1",
                   "job": pricing(market_with("volatility", json!(-0.2)))}))
        .await
        .expect("submit");
    let error = ws.next(WAIT).await.expect("error");
    p.schemas.assert_valid("ws_server_message", &error);
    assert_eq!(error["type"], "error");
    assert_eq!(error["request_id"], "r1");
    assert_eq!(error["code"], "invalid_params");
    assert_eq!(error["field"], "/volatility");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("params.volatility: ")),
        "{error}"
    );

    assert_eq!(
        p.written().await,
        before,
        "a refused submit wrote something"
    );

    // Params that meet the schema go through and the job runs.
    let (status, body) = p.post(pricing(Value::Object(market()))).await;
    assert_eq!(status, 202, "{body}");
    let accepted = ws
        .submit(
            "r2",
            json!({"kind": "fail", "params": {"retryable": false}}),
        )
        .await
        .expect("accepted");
    let job_id = accepted["job_id"].as_str().expect("job id");
    let events = ws
        .events_until_terminal(job_id, WAIT)
        .await
        .expect("events");
    assert_eq!(events.last().expect("terminal")["event"], "failed");
}

#[tokio::test]
async fn get_kinds_lists_every_kind_with_its_schema() {
    let p = Pricing::start().await;
    let mut driver = JobDriver::connect(&p.redis.url()).await.expect("driver");
    driver
        .register_kind("loose", "other")
        .await
        .expect("register");
    let kinds = jobgate_testkit::get_json(&p.gateway.url("/v1/kinds")).await;
    p.schemas.assert_valid("kinds", &kinds);
    let kinds = kinds["kinds"].as_array().expect("kinds");
    let names: Vec<&str> = kinds.iter().filter_map(|k| k["kind"].as_str()).collect();
    assert_eq!(names, ["echo", "fail", "loose", "mc_option_price"]);
    let by_name = |name: &str| {
        kinds
            .iter()
            .find(|k| k["kind"] == name)
            .expect("listed")
            .clone()
    };
    assert_eq!(
        by_name("loose"),
        json!({"kind": "loose", "queue": "other", "params_schema": null})
    );
    let pricing = by_name("mc_option_price");
    assert_eq!(pricing["queue"], "default");
    let schema = &pricing["params_schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(
        schema["required"],
        json!(["spot", "strike", "rate", "volatility", "maturity"])
    );
    assert_eq!(
        schema["properties"]["option"]["enum"],
        json!(["call", "put"])
    );
    assert_eq!(
        by_name("fail")["params_schema"]["properties"]["retryable"]["type"],
        "boolean"
    );

    // With an allow-list, only the kinds it names.
    let mut config = Config::for_redis(p.redis.url());
    config.allowed_kinds = vec!["echo".into(), "mc_option_price".into(), "absent".into()];
    let limited = TestGateway::start_with(config).await;
    let kinds = jobgate_testkit::get_json(&limited.url("/v1/kinds")).await;
    let names: Vec<&str> = kinds["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert_eq!(names, ["echo", "mc_option_price"]);
}

#[tokio::test]
async fn a_kind_without_a_usable_schema_is_not_checked() {
    let redis = RedisServer::start();
    let mut driver = JobDriver::connect(&redis.url()).await.expect("driver");
    driver
        .register_kind("loose", "default")
        .await
        .expect("register");
    // A schema that does not compile (a worker that did not check it) is
    // not enforced: the handler still sees the params.
    driver
        .register_kind_with_schema("odd", "default", json!({"type": "no-such-type"}))
        .await
        .expect("register");
    driver
        .register_kind_with_schema(
            "strict",
            "default",
            json!({"type": "object", "required": ["n"]}),
        )
        .await
        .expect("register");
    let gateway = TestGateway::start(&redis.url()).await;
    let http = reqwest::Client::new();
    for (kind, expected) in [("loose", 202), ("odd", 202), ("strict", 422)] {
        let answer = http
            .post(gateway.url("/v1/jobs"))
            .json(&json!({"kind": kind, "params": {"anything": [1, "x"]}}))
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status().as_u16(), expected, "{kind}");
    }
    let kinds = jobgate_testkit::get_json(&gateway.url("/v1/kinds")).await;
    assert_eq!(kinds["kinds"][0]["kind"], "loose");
    assert_eq!(
        kinds["kinds"][1]["params_schema"],
        json!({"type": "no-such-type"})
    );
}

/// A form lists a kind's fields in the order its worker declared them, so
/// `GET /v1/kinds` serves each schema as registered, not re-serialized
/// (which would sort its keys).
#[tokio::test]
async fn get_kinds_keeps_the_order_the_worker_gave_the_properties() {
    let p = Pricing::start().await;
    // As a worker writes it: properties out of alphabetical order, and
    // spacing of its own.
    let schema = r#"{"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "string"}, "mid": {"enum": ["b", "a"]}}, "required": ["zeta"]}"#;
    let registration =
        format!(r#"{{"queue":"default","worker":"test","seen_at":0,"params_schema":{schema}}}"#);
    let mut conn = p
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: i64 = redis::cmd("HSET")
        .arg("jobgate:kinds:v2")
        .arg("ordered")
        .arg(&registration)
        .query_async(&mut conn)
        .await
        .expect("register");

    let text = reqwest::get(p.gateway.url("/v1/kinds"))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    p.schemas.assert_valid("kinds", &body);
    let kinds: jobgate_proto::KindList = serde_json::from_str(&text).expect("a kind list");
    let schema_of = |name: &str| {
        kinds
            .kinds
            .iter()
            .find(|k| k.kind == name)
            .and_then(|k| k.params_schema.as_deref())
            .map(|raw| raw.get().to_owned())
            .unwrap_or_else(|| panic!("{name} has no schema: {text}"))
    };
    assert_eq!(schema_of("ordered"), schema);

    // The Python worker's own schema, in the order of its declaration.
    let pricing = schema_of("mc_option_price");
    let at = |field: &str| {
        pricing
            .find(&format!(r#""{field}":"#))
            .unwrap_or_else(|| panic!("no property {field}: {pricing}"))
    };
    let fields = [
        "spot",
        "strike",
        "rate",
        "volatility",
        "maturity",
        "option",
        "paths",
        "chunks",
        "seed",
    ];
    let positions: Vec<usize> = fields.iter().map(|field| at(field)).collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{fields:?} out of order in {pricing}"
    );

    // The schema still checks submissions.
    let (status, error) = p
        .post(json!({"kind": "ordered", "params": {"zeta": "x"}}))
        .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["field"], "/zeta");
}
