//! The old API as the old SwiftUI client speaks it: `computation_params` is a
//! string (a `[String: String]` dictionary encoded to JSON text, so every
//! value is a string), with the gateway, a real Redis and the real Python
//! pricing worker.

use std::time::Duration;

use jobgate_gateway::Config;
use jobgate_testkit::{PythonWorker, RedisServer, Schemas, TestGateway};
use serde_json::{Value, json};

/// The body the old client's `JSONEncoder` writes for
/// `{computation_params: String, trace_id: String}`.
fn old_client_body(computation_params: &str) -> String {
    json!({
        "computation_params": computation_params,
        "trace_id": "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    })
    .to_string()
}

/// Posts `body` to `/submit` as the old client does, then polls `/status`
/// until it ends; returns the final status body.
async fn submit_and_poll(gateway: &TestGateway, schemas: &Schemas, body: String) -> Value {
    let http = reqwest::Client::new();
    let answer = http
        .post(gateway.url("/submit"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("submit");
    assert_eq!(answer.status(), 200);
    let submitted: Value = answer.json().await.expect("json");
    schemas.assert_valid("legacy_submit_response", &submitted);
    let job_id = submitted["job_id"].as_str().expect("job_id").to_owned();
    for _ in 0..600 {
        let status: Value = http
            .get(gateway.url(&format!("/status/{job_id}")))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        schemas.assert_valid("legacy_status_response", &status);
        if status["status"] == "complete" || status["status"] == "failed" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job_id} did not end");
}

#[tokio::test]
async fn the_old_swiftui_clients_string_params_are_priced_or_refused_with_a_reason() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "legacy-worker", &[]);
    redis.wait_for_kinds(&["echo", "mc_option_price"]).await;
    let gateway = TestGateway::start(&redis.url()).await;
    let schemas = Schemas::load();

    // Every value a string, as the `[String: String]` dictionary had them.
    let full = json!({
        "spot": "100", "strike": "105", "rate": "0.03", "volatility": "0.25",
        "maturity": "1.5", "option": "call", "paths": "20000", "chunks": "2",
    })
    .to_string();
    let status = submit_and_poll(&gateway, &schemas, old_client_body(&full)).await;
    assert_eq!(status["status"], "complete", "{status}");
    assert!(status["result"]["price"].as_f64().expect("price") > 0.0);
    assert_eq!(status["result"]["paths"], 20000);

    // Only spot and strike: the handler names what is missing.
    let partial = r#"{"spot":"100","strike":"105"}"#;
    let status = submit_and_poll(&gateway, &schemas, old_client_body(partial)).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["result"]["code"], "invalid_params", "{status}");
    assert_eq!(status["result"]["message"], "rate is required");

    // Not a JSON object's text: passed as it is, refused by the handler.
    let text = "spot=100&strike=105";
    let status = submit_and_poll(&gateway, &schemas, old_client_body(text)).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["result"]["code"], "invalid_params", "{status}");
    let message = status["result"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("computation_params must be a JSON object") && message.contains(text),
        "{message}"
    );
}

#[tokio::test]
async fn a_non_object_string_goes_to_the_configured_legacy_kind_as_it_came() {
    let redis = RedisServer::start();
    let _worker = PythonWorker::start(&redis.url(), "legacy-echo", &[]);
    redis.wait_for_kinds(&["echo"]).await;
    let mut config = Config::for_redis(redis.url());
    config.legacy_kind = "echo".into();
    let gateway = TestGateway::start_with(config).await;
    let schemas = Schemas::load();

    let status = submit_and_poll(&gateway, &schemas, old_client_body("spot=100")).await;
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["result"], json!({"computation_params": "spot=100"}));
    // A JSON object's text without a kind also goes to the configured kind.
    let status = submit_and_poll(&gateway, &schemas, old_client_body(r#"{"a":"1"}"#)).await;
    assert_eq!(status["result"], json!({"a": "1"}), "{status}");
}
