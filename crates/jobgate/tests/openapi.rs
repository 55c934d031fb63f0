//! The OpenAPI document (`proto-schemas/openapi.json`) held against the real
//! gateway: every answer a real request provokes must have a status the
//! document lists for that operation, the documented content type, the
//! documented headers, and a JSON body valid against the documented schema
//! (compiled with the document's own components, offline). Every documented
//! status of every operation must be provoked here, except the few listed in
//! [`UNPROVOKED`] with the reason.

use std::collections::BTreeSet;
use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_gateway::auth::{mint_hs256, mint_hs256_with_scope};
use jobgate_gateway::config::AuthMode;
use jobgate_testkit::{JobDriver, RedisServer, TestGateway, repo_root};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "openapi/dead_letters.rs"]
mod dead_letters;

const SECRET: &str = "an-openapi-test-secret-long-enough-for-hs256";
/// A job id no job has (a random UUID: no creation time in it).
const UNKNOWN_JOB: &str = "3b2e8c1a-5f0d-4e7b-9a6c-2d1f0e9b8a7c";
/// A time-ordered job id from long before any retention period.
const EXPIRED_JOB: &str = "01936f3e-8a7c-7b21-9f4e-2d5c8a1b3e90";

/// Documented answers no test here provokes, and why.
const UNPROVOKED: &[(&str, &str, &str, &str)] = &[(
    "get",
    "/v1/ws",
    "405",
    "an HTTP/2 request that is not an extended CONNECT; the test clients speak HTTP/1.1",
)];

/// The schemas embedded under `components/schemas`, by their file stem in
/// `proto-schemas/schemas/`.
const EMBEDDED: &[&str] = &[
    "common",
    "error_body",
    "submit_request",
    "submit_response",
    "submit_batch_request",
    "submit_batch_response",
    "job_snapshot",
    "job_list",
    "kinds",
    "event",
    "history_truncated",
    "legacy_submit_request",
    "legacy_submit_response",
    "legacy_status_response",
    "ws_client_message",
    "ws_server_message",
    "client_logs",
];

fn document() -> Value {
    let text = std::fs::read_to_string(repo_root().join("proto-schemas/openapi.json"))
        .expect("proto-schemas/openapi.json exists");
    serde_json::from_str(&text).expect("the OpenAPI document is JSON")
}

fn token(owner: &str) -> String {
    mint_hs256(SECRET, owner, 3600, None, None).expect("token")
}

fn admin_token() -> String {
    mint_hs256_with_scope(SECRET, "ops", 3600, None, None, Some("jobgate:admin")).expect("token")
}

/// The queue admin routes: (method, documented path, real path).
const QUEUE_ADMIN: &[(&str, &str, &str)] = &[
    ("get", "/v1/admin/queues", "/v1/admin/queues"),
    ("get", "/v1/admin/workers", "/v1/admin/workers"),
    (
        "post",
        "/v1/admin/queues/{queue}/pause",
        "/v1/admin/queues/default/pause",
    ),
    (
        "post",
        "/v1/admin/queues/{queue}/resume",
        "/v1/admin/queues/default/resume",
    ),
];

/// A real answer, with the body read unless it is an event stream.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let streaming = media_type(&headers).as_deref() == Some("text/event-stream");
        let body = if streaming {
            Vec::new()
        } else {
            response.bytes().await.expect("body").to_vec()
        };
        Self {
            status,
            headers,
            body,
        }
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("content-type")?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default();
    Some(essence.trim().to_ascii_lowercase())
}

/// The document, and which `(method, path, status)` the tests have seen.
struct Contract {
    doc: Value,
    seen: BTreeSet<(String, String, String)>,
}

impl Contract {
    fn new() -> Self {
        Self {
            doc: document(),
            seen: BTreeSet::new(),
        }
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("a local reference");
                self.resolve(self.doc.pointer(pointer).expect("the reference resolves"))
            }
            None => node,
        }
    }

    /// Panics unless `answer` is what the document says `method path` may answer.
    fn check(&mut self, method: &str, path: &str, answer: &Answer) -> Value {
        let operation = &self.doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let status = answer.status.to_string();
        let documented = &operation["responses"][&status];
        let body = String::from_utf8_lossy(&answer.body);
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {body}"
        );
        let response = self.resolve(documented).clone();
        check_headers(method, path, &response, answer);
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                answer.body.is_empty(),
                "{method} {path} {status} is documented without a body: {body}"
            );
            self.seen.insert((method.into(), path.into(), status));
            return Value::Null;
        };
        let media = media_type(&answer.headers).unwrap_or_default();
        let Some(media_doc) = content.get(&media) else {
            panic!("{method} {path} {status} answered {media:?}, documented: {content:?}");
        };
        let value = if media == "application/json" {
            let value: Value = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {body}"));
            self.validate(
                &media_doc["schema"],
                &value,
                &format!("{method} {path} {status}"),
            );
            value
        } else {
            assert!(
                std::str::from_utf8(&answer.body).is_ok(),
                "{method} {path} {status}: a {media} body that is not UTF-8"
            );
            Value::Null
        };
        self.seen.insert((method.into(), path.into(), status));
        value
    }

    /// Validates `instance` against `schema`, resolving `#/components/...`
    /// in this document and nowhere else.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let mut root = json!({"allOf": [schema]});
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .offline()
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the documented schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: {instance} disagrees with the document: {}",
            errors.join("; ")
        );
    }

    /// Every documented answer was provoked, but for [`UNPROVOKED`].
    fn assert_all_provoked(&self) {
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for status in responses.keys() {
                    let key = (method.clone(), path.clone(), status.clone());
                    let excused = UNPROVOKED.iter().any(|(m, p, s, _)| {
                        (*m, *p, *s) == (method.as_str(), path.as_str(), status.as_str())
                    });
                    if !self.seen.contains(&key) && !excused {
                        missing.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented but never provoked: {missing:?}"
        );
    }
}

fn check_headers(method: &str, path: &str, response: &Value, answer: &Answer) {
    let Some(headers) = response.get("headers").and_then(Value::as_object) else {
        return;
    };
    for (name, header) in headers {
        let value = answer
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok());
        let required = header["required"].as_bool().unwrap_or(false);
        match value {
            None => assert!(
                !required,
                "{method} {path} {}: the required header {name} is missing",
                answer.status
            ),
            Some(value) => {
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .offline()
                    .build(&header["schema"])
                    .expect("header schema");
                assert!(
                    validator.is_valid(&json!(value)),
                    "{method} {path} {}: header {name}: {value:?} disagrees with {}",
                    answer.status,
                    header["schema"]
                );
            }
        }
    }
}

/// A gateway with auth on, an `echo` kind registered by hand, and a client.
struct Api {
    redis: RedisServer,
    gateway: TestGateway,
    driver: JobDriver,
    http: reqwest::Client,
    bearer: String,
}

fn secured(redis_url: &str) -> Config {
    let mut config = Config::for_redis(redis_url);
    config.auth = Some(AuthMode::Jwt);
    config.jwt_secret = Some(SECRET.into());
    config.jwt_leeway_s = 0;
    config
}

impl Api {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let mut driver = JobDriver::connect(&redis.url()).await.expect("driver");
        driver.register_kind("echo", "default").await.expect("kind");
        let gateway = TestGateway::start_with(secured(&redis.url())).await;
        Self {
            redis,
            gateway,
            driver,
            http: reqwest::Client::new(),
            bearer: token("alice"),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.gateway.url(path))
            .bearer_auth(&self.bearer)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.gateway.url(path))
            .bearer_auth(&self.bearer)
    }

    async fn submit(&self, contract: &mut Contract) -> String {
        let answer = send(
            self.post("/v1/jobs")
                .json(&json!({"kind": "echo", "params": {}})),
        )
        .await;
        let body = contract.check("post", "/v1/jobs", &answer);
        assert_eq!(answer.status, 202, "{body}");
        body["job_id"].as_str().expect("job_id").to_owned()
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    Answer::read(request.send().await.expect("request")).await
}

/// A raw HTTP/1.1 GET, for WebSocket upgrade requests a client library would
/// take over: the status line, the headers and a `Content-Length` body.
async fn raw_get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(read > 0, "the connection closed before the headers");
        received.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let mut map = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            map.append(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
                value.trim().parse().expect("value"),
            );
        }
    }
    let length: usize = map
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let mut body = received[head_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut buffer).await.expect("read body");
        assert!(read > 0, "the body ended early");
        body.extend_from_slice(&buffer[..read]);
    }
    Answer {
        status,
        headers: map,
        body,
    }
}

const UPGRADE: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn the_document_is_openapi_3_1_and_self_contained() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut references = Vec::new();
    collect_references(&doc, &mut references);
    for reference in &references {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} points outside the document"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} resolves to nothing"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["access_token"]["type"], "apiKey");
    assert_eq!(schemes["access_token"]["in"], "query");
}

fn collect_references(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_references(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_references(item, out)),
        _ => {}
    }
}

/// The embedded schemas are `proto-schemas/schemas/*.json` with `$id` and
/// `$schema` dropped, references rewritten into the document and boolean
/// property schemas spelled as objects: the wire contract has one source,
/// and this catches the copy drifting from it.
#[test]
fn the_embedded_schemas_are_the_protocol_schemas() {
    let doc = document();
    for stem in EMBEDDED {
        let path = repo_root().join(format!("proto-schemas/schemas/{stem}.json"));
        let source: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("schema")).expect("JSON");
        let mut expected = embed(&source, stem);
        let object = expected.as_object_mut().expect("a schema object");
        object.remove("$id");
        object.remove("$schema");
        assert_eq!(
            doc["components"]["schemas"][*stem],
            expected,
            "components/schemas/{stem} differs from {}; copy it again with $id and $schema \
             removed and each \"x.json#/p\" reference written \"#/components/schemas/x/p\"",
            path.display()
        );
    }
}

fn embed(node: &Value, stem: &str) -> Value {
    match node {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("$ref", Value::String(reference)) => {
                            json!(local_reference(reference, stem))
                        }
                        ("properties", Value::Object(properties)) => Value::Object(
                            properties
                                .iter()
                                .map(|(name, schema)| (name.clone(), embed_subschema(schema, stem)))
                                .collect(),
                        ),
                        _ => embed(value, stem),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|item| embed(item, stem)).collect()),
        other => other.clone(),
    }
}

/// A property's schema; the boolean schemas `true` and `false` are written
/// `{}` and `{"not": {}}` (the same meaning), which schemathesis can read.
fn embed_subschema(schema: &Value, stem: &str) -> Value {
    match schema {
        Value::Bool(true) => json!({}),
        Value::Bool(false) => json!({"not": {}}),
        other => embed(other, stem),
    }
}

/// `"x.json#/p"` → `"#/components/schemas/x/p"`; `"#/p"` → the same within `stem`.
fn local_reference(reference: &str, stem: &str) -> String {
    let (file, fragment) = reference.split_once('#').unwrap_or((reference, ""));
    let target = if file.is_empty() {
        stem
    } else {
        file.trim_end_matches(".json")
    };
    format!("#/components/schemas/{target}{fragment}")
}

#[tokio::test]
async fn every_real_answer_agrees_with_the_document() {
    let mut contract = Contract::new();
    let mut api = Api::start().await;
    public_routes(&api, &mut contract).await;
    submissions(&api, &mut contract).await;
    kinds(&api, &mut contract).await;
    batch_submissions(&api, &mut contract).await;
    idempotency(&api, &mut contract).await;
    snapshots_and_cancel(&api, &mut contract).await;
    job_listing(&api, &mut contract).await;
    event_streams(&mut api, &mut contract).await;
    websocket_upgrade(&api, &mut contract).await;
    client_logs(&api, &mut contract).await;
    legacy(&mut api, &mut contract).await;
    crowded(&api, &mut contract).await;
    rate_limited(&api, &mut contract).await;
    queue_admin(&api, &mut contract).await;
    internal_errors(&api, &mut contract).await;
    dead_letters::dead_letters(&mut api, &mut contract).await;
    redis_down(&mut api, &mut contract).await;
    dead_letters::dead_letters_redis_down(&api, &mut contract).await;
    contract.assert_all_provoked();
    let paths: Vec<&String> = contract.doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .collect();
    for path in paths {
        assert!(
            contract.seen.iter().any(|(_, p, _)| p == path),
            "no test case for {path}"
        );
    }
}

async fn public_routes(api: &Api, contract: &mut Contract) {
    let anonymous = &api.http;
    let answer = send(anonymous.get(api.gateway.url("/openapi.json"))).await;
    contract.check("get", "/openapi.json", &answer);
    let served: Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(
        served, contract.doc,
        "/openapi.json serves the document verbatim"
    );
    for path in [
        "/",
        "/dashboard/admin.js",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let answer = send(anonymous.get(api.gateway.url(path))).await;
        assert_eq!(answer.status, 200, "{path}");
        contract.check("get", path, &answer);
    }
}

/// Sends each request, checks it against `method path`, and asserts its
/// status (and `code`, when one is given).
async fn expect_all(
    contract: &mut Contract,
    method: &str,
    path: &str,
    cases: Vec<(reqwest::RequestBuilder, u16, Option<&str>)>,
) {
    for (request, status, code) in cases {
        let answer = send(request).await;
        let body = contract.check(method, path, &answer);
        assert_eq!(answer.status, status, "{method} {path}: {body}");
        if let Some(code) = code {
            assert_eq!(body["code"], code, "{method} {path}");
        }
    }
}

async fn submissions(api: &Api, contract: &mut Contract) {
    let post = |body: String| {
        api.post("/v1/jobs")
            .header("content-type", "application/json")
            .body(body)
    };
    let with_params_of = |bytes: usize| {
        post(format!(
            r#"{{"kind":"echo","params":{{"x":"{}"}}}}"#,
            "a".repeat(bytes)
        ))
    };
    api.submit(contract).await;
    let anonymous = api.http.post(api.gateway.url("/v1/jobs"));
    let cases = vec![
        (post("{nope".into()), 400, Some("invalid_json")),
        (
            post(r#"{"params":{}}"#.into()),
            422,
            Some("invalid_request"),
        ),
        (
            post(r#"{"kind":"echo","params":{},"priority":10}"#.into()),
            422,
            Some("invalid_request"),
        ),
        (
            post(r#"{"kind":"nobody-runs-this","params":{}}"#.into()),
            422,
            Some("unknown_kind"),
        ),
        (
            post(r#"{"kind":"echo","params":{}}"#.into()).header("idempotency-key", "has space"),
            422,
            Some("invalid_request"),
        ),
        (
            api.post("/v1/jobs")
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            Some("unsupported_media_type"),
        ),
        // Over the body limit, and over the params limit.
        (with_params_of(2 << 20), 413, Some("payload_too_large")),
        (with_params_of(300_000), 413, Some("payload_too_large")),
        (
            anonymous.json(&json!({"kind": "echo", "params": {}})),
            401,
            Some("unauthorized"),
        ),
    ];
    expect_all(contract, "post", "/v1/jobs", cases).await;
}

/// `GET /v1/kinds`, and a submission whose params break its kind's schema.
async fn kinds(api: &Api, contract: &mut Contract) {
    let registration = json!({
        "queue": "default", "worker": "openapi", "seen_at": 0,
        "params_schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
    });
    let _: i64 = redis::cmd("HSET")
        .arg("jobgate:kinds:v2")
        .arg("counted")
        .arg(registration.to_string())
        .query_async(&mut api.redis().await)
        .await
        .expect("register");
    let anonymous = api.http.get(api.gateway.url("/v1/kinds"));
    let cases = vec![
        (api.get("/v1/kinds"), 200, None),
        (anonymous, 401, Some("unauthorized")),
    ];
    expect_all(contract, "get", "/v1/kinds", cases).await;
    let answer = send(
        api.post("/v1/jobs")
            .json(&json!({"kind": "counted", "params": {"n": -1}})),
    )
    .await;
    let body = contract.check("post", "/v1/jobs", &answer);
    assert_eq!(answer.status, 422, "{body}");
    assert_eq!(
        body,
        json!({"code": "invalid_params", "message": "params.n: -1 is less than the minimum of 0", "field": "/n"})
    );
}

/// `POST /v1/jobs/batch`: per-job results, and every way a whole batch is
/// refused.
async fn batch_submissions(api: &Api, contract: &mut Contract) {
    let post = |body: String| {
        api.post("/v1/jobs/batch")
            .header("content-type", "application/json")
            .body(body)
    };
    let mixed = json!({"jobs": [
        {"job": {"kind": "echo", "params": {"n": 1}}, "idempotency_key": "batch-1"},
        {"job": {"kind": "echo", "params": 3}},
        {"job": {"kind": "nobody-runs-this", "params": {}}},
        {"job": {"kind": "echo", "params": {"n": 1}}, "idempotency_key": "batch-1"},
    ]});
    let answer = send(post(mixed.to_string())).await;
    let body = contract.check("post", "/v1/jobs/batch", &answer);
    assert_eq!(answer.status, 207, "{body}");
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [202, 422, 422, 202]);
    assert_eq!(body["results"][3]["replayed"], true);
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"job": {"kind": "echo", "params": {}}}))
        .collect();
    let cases = vec![
        (post("{nope".into()), 400, Some("invalid_json")),
        (post(r#"{"jobs":[]}"#.into()), 422, Some("invalid_request")),
        (post(r#"{"jobs":{}}"#.into()), 422, Some("invalid_request")),
        (
            post(json!({"jobs": too_many}).to_string()),
            422,
            Some("invalid_request"),
        ),
        (
            api.post("/v1/jobs/batch")
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            Some("unsupported_media_type"),
        ),
        (
            post(format!(
                r#"{{"jobs":[{{"job":{{"kind":"echo","params":{{"x":"{}"}}}}}}]}}"#,
                "a".repeat(2 << 20)
            )),
            413,
            Some("payload_too_large"),
        ),
        (
            api.http
                .post(api.gateway.url("/v1/jobs/batch"))
                .json(&json!({"jobs": [{"job": {"kind": "echo", "params": {}}}]})),
            401,
            Some("unauthorized"),
        ),
    ];
    expect_all(contract, "post", "/v1/jobs/batch", cases).await;
}

/// The first submit with a key, its replay, then the key for another request.
async fn idempotency(api: &Api, contract: &mut Contract) {
    let keyed = |n: u32| {
        api.post("/v1/jobs")
            .header("idempotency-key", "order-7")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&json!({"kind": "echo", "params": {"n": n}}))
    };
    for replayed in ["false", "true"] {
        let answer = send(keyed(1)).await;
        let body = contract.check("post", "/v1/jobs", &answer);
        assert_eq!(answer.status, 202, "{body}");
        assert_eq!(answer.headers["idempotent-replayed"], replayed);
        assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    expect_all(
        contract,
        "post",
        "/v1/jobs",
        vec![(keyed(2), 409, Some("idempotency_conflict"))],
    )
    .await;
}

async fn snapshots_and_cancel(api: &Api, contract: &mut Contract) {
    let job_id = api.submit(contract).await;
    let snapshot = format!("/v1/jobs/{job_id}");
    let cases = [
        (api.get(&snapshot), 200),
        (
            api.http.get(
                api.gateway
                    .url(&format!("{snapshot}?access_token={}", api.bearer)),
            ),
            200,
        ),
        (api.get("/v1/jobs/not-a-job"), 400),
        (api.get("/v1/jobs/%FF"), 422),
        (api.get(&format!("/v1/jobs/{UNKNOWN_JOB}")), 404),
        (api.get(&format!("/v1/jobs/{EXPIRED_JOB}")), 410),
        (api.http.get(api.gateway.url(&snapshot)), 401),
        (
            api.http
                .get(api.gateway.url(&snapshot))
                .bearer_auth(token("bob")),
            404,
        ),
    ];
    for (request, status) in cases {
        let answer = send(request).await;
        let body = contract.check("get", "/v1/jobs/{id}", &answer);
        assert_eq!(answer.status, status, "{body}");
    }
    let cancel = format!("{snapshot}/cancel");
    let cases = [
        (api.post(&cancel), 202),
        (api.post(&cancel), 409),
        (api.post("/v1/jobs/not-a-job/cancel"), 400),
        (api.post("/v1/jobs/%FF/cancel"), 422),
        (api.post(&format!("/v1/jobs/{UNKNOWN_JOB}/cancel")), 404),
        (api.post(&format!("/v1/jobs/{EXPIRED_JOB}/cancel")), 410),
        (api.http.post(api.gateway.url(&cancel)), 401),
    ];
    for (request, status) in cases {
        let answer = send(request).await;
        let body = contract.check("post", "/v1/jobs/{id}/cancel", &answer);
        assert_eq!(answer.status, status, "{body}");
        if status == 202 {
            assert_eq!(body["status"], "cancelled");
        }
    }
}

async fn job_listing(api: &Api, contract: &mut Contract) {
    let job_id = api.submit(contract).await;
    let answer = send(api.get("/v1/jobs?limit=1")).await;
    let page = contract.check("get", "/v1/jobs", &answer);
    assert_eq!(answer.status, 200, "{page}");
    assert_eq!(page["jobs"][0]["job_id"], job_id.as_str());
    let cursor = page["next_cursor"].as_str().expect("more jobs than one");
    let next = format!("/v1/jobs?limit=1&status=queued,cancelled&kind=echo&cursor={cursor}");
    let cases = vec![
        (api.get(&next), 200, None),
        (
            api.http.get(api.gateway.url("/v1/jobs")),
            401,
            Some("unauthorized"),
        ),
        (api.get("/v1/jobs?limit=201"), 422, Some("invalid_request")),
        (
            api.get("/v1/jobs?status=done"),
            422,
            Some("invalid_request"),
        ),
        (api.get("/v1/jobs?kind=a%20b"), 422, Some("invalid_request")),
        (
            api.get("/v1/jobs?cursor=bm90LWEtY3Vyc29y"),
            422,
            Some("invalid_request"),
        ),
    ];
    expect_all(contract, "get", "/v1/jobs", cases).await;
}

async fn event_streams(api: &mut Api, contract: &mut Contract) {
    let job_id = api.submit(contract).await;
    api.driver.start(&job_id).await.expect("start");
    api.driver
        .complete(&job_id, 1, r#"{"ok":true}"#)
        .await
        .expect("complete");
    let events = format!("/v1/jobs/{job_id}/events");
    let cases = [
        (api.get(&events), 200),
        (api.get(&format!("{events}?after=3")), 204),
        (api.get(&events).header("last-event-id", "3"), 204),
        (api.get(&format!("{events}?after=-1")), 422),
        (api.get(&format!("{events}?since=1")), 422),
        (api.get(&events).header("last-event-id", "three"), 422),
        (api.get("/v1/jobs/not-a-job/events"), 400),
        (api.get(&format!("/v1/jobs/{UNKNOWN_JOB}/events")), 404),
        (api.get(&format!("/v1/jobs/{EXPIRED_JOB}/events")), 410),
        (api.http.get(api.gateway.url(&events)), 401),
    ];
    for (request, status) in cases {
        let answer = send(request).await;
        contract.check("get", "/v1/jobs/{id}/events", &answer);
        assert_eq!(
            answer.status,
            status,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let cases = [
        (api.get("/v1/events"), 200),
        (
            api.http.get(
                api.gateway
                    .url(&format!("/v1/events?access_token={}", api.bearer)),
            ),
            200,
        ),
        (api.get("/v1/events").header("last-event-id", "1"), 200),
        (api.get("/v1/events?after=x"), 422),
        (api.http.get(api.gateway.url("/v1/events")), 401),
    ];
    for (request, status) in cases {
        let answer = send(request).await;
        contract.check("get", "/v1/events", &answer);
        assert_eq!(
            answer.status,
            status,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}

async fn websocket_upgrade(api: &Api, contract: &mut Contract) {
    let bearer = format!("Bearer {}", api.bearer);
    let authorized: Vec<(&str, &str)> = [("Authorization", bearer.as_str())]
        .into_iter()
        .chain(UPGRADE.iter().copied())
        .collect();
    let addr = api.gateway.addr;
    let answer = raw_get(addr, "/v1/ws", &authorized).await;
    assert_eq!(answer.status, 101);
    contract.check("get", "/v1/ws", &answer);
    let query = format!("/v1/ws?access_token={}", api.bearer);
    let answer = raw_get(addr, &query, UPGRADE).await;
    assert_eq!(
        answer.status, 101,
        "the access_token query parameter authenticates"
    );
    let foreign: Vec<(&str, &str)> = authorized
        .iter()
        .copied()
        .chain([("Origin", "https://elsewhere.example")])
        .collect();
    let answer = raw_get(addr, "/v1/ws", &foreign).await;
    assert_eq!(answer.status, 403);
    contract.check("get", "/v1/ws", &answer);
    let answer = raw_get(addr, "/v1/ws", UPGRADE).await;
    assert_eq!(answer.status, 401);
    contract.check("get", "/v1/ws", &answer);
    // Not an upgrade at all.
    let answer = send(api.get("/v1/ws")).await;
    assert_eq!(answer.status, 422);
    contract.check("get", "/v1/ws", &answer);
}

async fn client_logs(api: &Api, contract: &mut Contract) {
    let example = std::fs::read_to_string(
        repo_root().join("proto-schemas/examples/client_logs/ios_app.json"),
    )
    .expect("the client log example");
    let record = json!({"timestamp": "2026-11-27T21:04:05.100Z", "level": "info", "message": "m", "service": "ios-app"});
    let post = || api.post("/v1/client-logs");
    let json_body = |body: String| post().header("content-type", "application/json").body(body);
    let big = json!({"records": [{"timestamp": "2026-11-27T21:04:05.100Z", "level": "info", "message": "a".repeat(300_000), "service": "ios-app"}]});
    let cases = vec![
        (json_body(example), 202, None),
        (json_body("{nope".into()), 400, Some("invalid_json")),
        (
            post().json(&json!({"records": []})),
            422,
            Some("invalid_request"),
        ),
        (
            post().json(&json!({"records": [{"level": "loud"}]})),
            422,
            Some("invalid_request"),
        ),
        (
            post().json(&json!({"records": [record], "extra": 1})),
            422,
            Some("invalid_request"),
        ),
        (post().json(&big), 413, Some("payload_too_large")),
        (
            post().header("content-type", "text/plain").body("{}"),
            415,
            Some("unsupported_media_type"),
        ),
        (
            api.http
                .post(api.gateway.url("/v1/client-logs"))
                .json(&json!({"records": [record]})),
            401,
            Some("unauthorized"),
        ),
    ];
    expect_all(contract, "post", "/v1/client-logs", cases).await;
}

async fn legacy(api: &mut Api, contract: &mut Contract) {
    let post = |body: Value| api.post("/submit").json(&body);
    let answer = send(post(
        json!({"computation_params": {"kind": "echo", "x": 1}, "trace_id": "ios-1"}),
    ))
    .await;
    let body = contract.check("post", "/submit", &answer);
    assert_eq!(answer.status, 200, "{body}");
    let job_id = body["job_id"].as_str().expect("job_id").to_owned();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (post(json!({"computation_params": {"x": 1}})), 422), // mc_option_price: no worker here
        (post(json!({"computation_params": [1]})), 422),
        (post(json!({"computation_params": {"kind": 7}})), 422),
        (post(json!({"trace_id": "t"})), 422),
        (
            api.post("/submit")
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (api.post("/submit").body("{}"), 415),
        (
            api.post("/submit")
                .json(&json!({"computation_params": {"kind": "echo", "x": "a".repeat(2 << 20)}})),
            413,
        ),
        (
            api.http
                .post(api.gateway.url("/submit"))
                .json(&json!({"computation_params": {}})),
            401,
        ),
    ];
    for (request, status) in cases {
        let answer = send(request).await;
        let body = contract.check("post", "/submit", &answer);
        assert_eq!(answer.status, status, "{body}");
    }
    let status = format!("/status/{job_id}");
    let answer = send(api.get(&status)).await;
    assert_eq!(
        contract.check("get", "/status/{job_id}", &answer)["status"],
        "pending"
    );
    api.driver.start(&job_id).await.expect("start");
    api.driver
        .complete(&job_id, 1, r#"{"x":1}"#)
        .await
        .expect("complete");
    let cases = [
        (api.get(&status), 200),
        (api.get("/status/not-a-job"), 400),
        (api.get("/status/%FF"), 422),
        (api.get(&format!("/status/{UNKNOWN_JOB}")), 404),
        (api.get(&format!("/status/{EXPIRED_JOB}")), 410),
        (api.http.get(api.gateway.url(&status)), 401),
    ];
    for (request, code) in cases {
        let answer = send(request).await;
        let body = contract.check("get", "/status/{job_id}", &answer);
        assert_eq!(answer.status, code, "{body}");
        if code == 200 {
            assert_eq!(body, json!({"status": "complete", "result": {"x": 1}}));
        }
    }
}

/// Full queues and connection caps, on a gateway configured tight.
async fn crowded(api: &Api, contract: &mut Contract) {
    // The default queue already holds this test's jobs.
    let mut config = secured(&api.redis.url());
    config.max_queue_length = 1;
    config.max_connections = 1;
    let crowded = TestGateway::start_with(config).await;
    let get = |path: &str| api.http.get(crowded.url(path)).bearer_auth(&api.bearer);
    let post = |path: &str| api.http.post(crowded.url(path)).bearer_auth(&api.bearer);
    let job = json!({"kind": "echo", "params": {}});
    let legacy = json!({"computation_params": {"kind": "echo"}});
    let full = vec![(post("/v1/jobs").json(&job), 429, Some("queue_full"))];
    expect_all(contract, "post", "/v1/jobs", full).await;
    let full = vec![(post("/submit").json(&legacy), 429, Some("queue_full"))];
    expect_all(contract, "post", "/submit", full).await;
    // One stream holds the only connection.
    let held = get("/v1/events").send().await.expect("stream");
    assert_eq!(held.status(), 200);
    let busy = Some("too_many_connections");
    expect_all(
        contract,
        "get",
        "/v1/events",
        vec![(get("/v1/events"), 503, busy)],
    )
    .await;
    let job_id = api.submit(contract).await;
    let events = get(&format!("/v1/jobs/{job_id}/events"));
    expect_all(
        contract,
        "get",
        "/v1/jobs/{id}/events",
        vec![(events, 503, busy)],
    )
    .await;
    let bearer = format!("Bearer {}", api.bearer);
    let upgrade: Vec<(&str, &str)> = [("Authorization", bearer.as_str())]
        .into_iter()
        .chain(UPGRADE.iter().copied())
        .collect();
    let answer = raw_get(crowded.addr, "/v1/ws", &upgrade).await;
    assert_eq!(
        contract.check("get", "/v1/ws", &answer)["code"],
        "too_many_connections"
    );
    drop(held);
}

/// An owner over its submissions a minute.
async fn rate_limited(api: &Api, contract: &mut Contract) {
    let mut config = secured(&api.redis.url());
    config.submits_per_minute = 1;
    let strict = TestGateway::start_with(config).await;
    let carol = token("carol");
    let submit = || {
        api.http
            .post(strict.url("/v1/jobs"))
            .bearer_auth(&carol)
            .json(&json!({"kind": "echo", "params": {}}))
    };
    let cases = vec![(submit(), 202, None), (submit(), 429, Some("rate_limited"))];
    expect_all(contract, "post", "/v1/jobs", cases).await;
}

/// Records, registrations and indexes Redis holds in a shape the gateway
/// cannot read: a generic `500 internal`, with no internals in the body.
async fn queue_admin(api: &Api, contract: &mut Contract) {
    let admin = admin_token();
    for &(method, path, real) in QUEUE_ADMIN {
        let request = |bearer: Option<&str>| {
            let request = api.http.request(
                method.to_uppercase().parse().expect("method"),
                api.gateway.url(real),
            );
            match bearer {
                Some(bearer) => request.bearer_auth(bearer),
                None => request,
            }
        };
        let mut cases = vec![
            (request(Some(&admin)), 200, None),
            (request(None), 401, Some("unauthorized")),
            (request(Some(&api.bearer)), 403, Some("forbidden")),
        ];
        if method == "post" {
            let unknown = real.replace("default", "nowhere");
            let unknown = api.http.post(api.gateway.url(&unknown)).bearer_auth(&admin);
            cases.push((unknown, 404, Some("not_found")));
        }
        expect_all(contract, method, path, cases).await;
    }
    // A band stream of the wrong type: Redis refuses the read.
    let mut redis = api.redis().await;
    let band = "jobgate:queue:{default}:high";
    let saved: Option<Vec<u8>> = redis::cmd("DUMP")
        .arg(band)
        .query_async(&mut redis)
        .await
        .expect("dump");
    let _: () = redis::cmd("SET")
        .arg(band)
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .expect("corrupt");
    for &(method, path, real) in QUEUE_ADMIN {
        let request = api
            .http
            .request(
                method.to_uppercase().parse().expect("method"),
                api.gateway.url(real),
            )
            .bearer_auth(&admin);
        expect_all(
            contract,
            method,
            path,
            vec![(request, 500, Some("internal"))],
        )
        .await;
    }
    let _: () = redis::cmd("DEL")
        .arg(band)
        .query_async(&mut redis)
        .await
        .expect("del");
    if let Some(saved) = saved {
        let _: () = redis::cmd("RESTORE")
            .arg(band)
            .arg(0)
            .arg(saved)
            .query_async(&mut redis)
            .await
            .expect("restore");
    }
}

async fn internal_errors(api: &Api, contract: &mut Contract) {
    let job_id = api.submit(contract).await;
    let mut redis = api.redis().await;
    for command in [
        vec![
            "HSET".to_owned(),
            format!("jobgate:job:{{{job_id}}}"),
            "status".into(),
            "exploded".into(),
        ],
        vec![
            "HSET".into(),
            "jobgate:kinds:v2".into(),
            "garbled".into(),
            "not json".into(),
        ],
        vec![
            "SET".into(),
            "jobgate:owner:{mallory}:jobs".into(),
            "not a sorted set".into(),
        ],
    ] {
        let _: redis::Value = redis::cmd(&command[0])
            .arg(&command[1..])
            .query_async(&mut redis)
            .await
            .expect("corrupt a key");
    }
    let mallory = api
        .http
        .get(api.gateway.url("/v1/events"))
        .bearer_auth(token("mallory"));
    let garbled = json!({"kind": "garbled", "params": {}});
    let legacy = json!({"computation_params": {"kind": "garbled"}});
    let cases = [
        (
            "get",
            "/v1/jobs/{id}",
            api.get(&format!("/v1/jobs/{job_id}")),
        ),
        (
            "post",
            "/v1/jobs/{id}/cancel",
            api.post(&format!("/v1/jobs/{job_id}/cancel")),
        ),
        (
            "get",
            "/v1/jobs/{id}/events",
            api.get(&format!("/v1/jobs/{job_id}/events")),
        ),
        (
            "get",
            "/status/{job_id}",
            api.get(&format!("/status/{job_id}")),
        ),
        ("post", "/v1/jobs", api.post("/v1/jobs").json(&garbled)),
        ("post", "/submit", api.post("/submit").json(&legacy)),
        ("get", "/v1/events", mallory.header("last-event-id", "1")),
        (
            "get",
            "/v1/jobs",
            api.http
                .get(api.gateway.url("/v1/jobs"))
                .bearer_auth(token("mallory")),
        ),
    ];
    for (method, path, request) in cases {
        let answer = send(request).await;
        let body = contract.check(method, path, &answer);
        assert_eq!(answer.status, 500, "{method} {path}: {body}");
        assert_eq!(
            body,
            json!({"code": "internal", "message": "internal error"})
        );
    }
}

async fn redis_down(api: &mut Api, contract: &mut Contract) {
    let job_id = api.submit(contract).await;
    api.redis.kill();
    let cases = [
        (
            "post",
            "/v1/jobs",
            api.post("/v1/jobs")
                .json(&json!({"kind": "echo", "params": {}})),
        ),
        (
            "get",
            "/v1/jobs/{id}",
            api.get(&format!("/v1/jobs/{job_id}")),
        ),
        (
            "post",
            "/v1/jobs/{id}/cancel",
            api.post(&format!("/v1/jobs/{job_id}/cancel")),
        ),
        (
            "get",
            "/status/{job_id}",
            api.get(&format!("/status/{job_id}")),
        ),
        (
            "post",
            "/submit",
            api.post("/submit")
                .json(&json!({"computation_params": {"kind": "echo"}})),
        ),
        ("get", "/v1/jobs", api.get("/v1/jobs")),
        ("get", "/v1/kinds", api.get("/v1/kinds")),
        ("get", "/readyz", api.http.get(api.gateway.url("/readyz"))),
    ];
    let admin = admin_token();
    let cases = cases
        .into_iter()
        .chain(QUEUE_ADMIN.iter().map(|&(method, path, real)| {
            let request = api
                .http
                .request(
                    method.to_uppercase().parse().expect("method"),
                    api.gateway.url(real),
                )
                .bearer_auth(&admin);
            (method, path, request)
        }));
    for (method, path, request) in cases {
        let answer = send(request.timeout(Duration::from_secs(20))).await;
        let body = contract.check(method, path, &answer);
        assert_eq!(answer.status, 503, "{method} {path}: {body}");
        assert_eq!(body["code"], "redis_unavailable", "{method} {path}");
    }
}
