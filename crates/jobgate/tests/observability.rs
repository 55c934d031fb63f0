//! One trace from the client to the Dask tasks: spans (the gateway's in an
//! in-memory exporter, the real Python worker's in its span file) and log
//! lines (every component's, through a Forward-protocol receiver) all carry
//! the client's trace id, correctly parented.
//!
//! One in-process test function: telemetry is process-wide, so this binary
//! installs it once. The `jobgate` binary, run as a child without a span
//! exporter (as it runs by default), is checked the same way through its
//! log lines.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jobgate_gateway::Config;
use jobgate_testkit::{
    ForwardReceiver, GatewayProcess, PythonWorker, RedisServer, SseClient, TestGateway, WsClient,
};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(60);

/// The `jobgate` binary built for these tests.
const JOBGATE: &str = env!("CARGO_BIN_EXE_jobgate");

/// A span of either language, reduced to what the checks need.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    name: String,
    kind: String,
}

fn gateway_span(span: &SpanData) -> Span {
    let parent = span.parent_span_id.to_string();
    Span {
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent: (parent != "0000000000000000").then_some(parent),
        name: span.name.to_string(),
        kind: match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Client => "client",
            SpanKind::Internal => "internal",
        }
        .into(),
    }
}

fn worker_spans(file: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|span| Span {
            trace_id: span["trace_id"].as_str().unwrap_or_default().into(),
            span_id: span["span_id"].as_str().unwrap_or_default().into(),
            parent: span["parent_span_id"].as_str().map(str::to_owned),
            name: span["name"].as_str().unwrap_or_default().into(),
            kind: span["kind"].as_str().unwrap_or_default().into(),
        })
        .collect()
}

fn pricing_job() -> Value {
    json!({"kind": "mc_option_price", "params": {
        "spot": 100, "strike": 100, "rate": 0.05, "volatility": 0.2, "maturity": 1,
        "option": "call", "paths": 20000, "chunks": 2, "seed": 3}})
}

/// `POST /v1/jobs` of `job` at `url`, with the client's `traceparent` when
/// given; the answer.
async fn submit(url: &str, traceparent: Option<&str>, job: &Value) -> Value {
    let mut request = reqwest::Client::new().post(url).json(job);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json")
}

/// Checks the chain client → request span → producer → process → Dask tasks.
fn assert_one_trace(trace_id: &str, client_span: &str, request_name: &str, spans: &[Span]) {
    let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |name: &str, parent: Option<&str>| {
        ours.iter()
            .find(|s| s.name == name && (parent.is_none() || s.parent.as_deref() == parent))
            .copied()
            .unwrap_or_else(|| {
                panic!("no span {name:?} under {parent:?} in trace {trace_id}: {ours:#?}")
            })
    };
    let request = find(request_name, Some(client_span));
    assert_eq!(request.kind, "server");
    let producer = find("publish default", Some(&request.span_id));
    assert_eq!(producer.kind, "producer");
    let process = find("process default", Some(&producer.span_id));
    assert_eq!(process.kind, "consumer");
    let tasks: Vec<&&Span> = ours
        .iter()
        .filter(|s| {
            s.name.starts_with("dask.task") && s.parent.as_deref() == Some(process.span_id.as_str())
        })
        .collect();
    assert_eq!(
        tasks.len(),
        2,
        "one span per Dask task under the process span: {ours:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_to_the_dask_tasks_in_spans_and_logs() {
    let mut receiver = ForwardReceiver::start().await;
    let exporter = InMemorySpanExporter::default();
    let redis = RedisServer::start();
    let mut config = Config::for_redis(redis.url());
    config.fluentd_addr = Some(receiver.address().parse().expect("address"));
    config.fluentd_buffer = 50;
    let telemetry = jobgate_gateway::telemetry::init_with_exporter(&config, exporter.clone())
        .expect("telemetry");

    let span_file =
        std::env::temp_dir().join(format!("jobgate-spans-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&span_file);
    let span_path = span_file.to_str().expect("utf-8").to_owned();
    let fluentd = receiver.address();
    let _worker = PythonWorker::start_app_with_env(
        &redis.url(),
        "examples.pricing:worker",
        None,
        "observed",
        &[],
        &[
            ("JOBGATE_SPAN_FILE", span_path.as_str()),
            ("JOBGATE_FLUENTD_ADDR", fluentd.as_str()),
        ],
    );
    redis.wait_for_kinds(&["mc_option_price", "echo"]).await;
    let state = jobgate_gateway::build_state(config, CancellationToken::new()).expect("state");
    state
        .metrics
        .set_log_forwarding(telemetry.forwarding_stats());
    let gateway = TestGateway::serve(state).await;
    let http = reqwest::Client::new();

    // Over HTTP, with the client's traceparent.
    let (http_trace, http_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{http_trace}-{http_parent}-01");
    let submitted = submit(&gateway.url("/v1/jobs"), Some(&traceparent), &pricing_job()).await;
    assert_eq!(submitted["trace_id"], http_trace);
    let http_job = submitted["job_id"].as_str().expect("id").to_owned();
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{http_job}/events")), None)
        .await
        .expect("sse");
    let events = sse.collect(LONG).await.expect("events");
    assert_eq!(events.last().expect("events").event, "completed");

    // Over the WebSocket, with the traceparent in the submit message.
    let (ws_trace, ws_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut ws = WsClient::connect(&gateway.ws_url()).await.expect("connect");
    ws.send(
        json!({"type": "submit", "request_id": "r1", "job": pricing_job(),
                   "traceparent": format!("00-{ws_trace}-{ws_parent}-01")}),
    )
    .await
    .expect("send");
    let accepted = ws.next(LONG).await.expect("accepted");
    assert_eq!(accepted["trace_id"], ws_trace);
    let ws_job = accepted["job_id"].as_str().expect("id").to_owned();
    let events = ws
        .events_until_terminal(&ws_job, LONG)
        .await
        .expect("events");
    assert!(
        events.iter().all(|e| e["trace_id"] == ws_trace),
        "every pushed event carries the trace id"
    );

    // Spans: the gateway's are in memory; the worker's reach its file once
    // each attempt has ended.
    let deadline = Instant::now() + LONG;
    let spans = loop {
        let mut spans: Vec<Span> = exporter
            .get_finished_spans()
            .expect("spans")
            .iter()
            .map(gateway_span)
            .collect();
        spans.extend(worker_spans(&span_file));
        let processes = spans.iter().filter(|s| s.name == "process default").count();
        if processes >= 2 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_one_trace(http_trace, http_parent, "POST /v1/jobs", &spans);
    assert_one_trace(ws_trace, ws_parent, "WS submit", &spans);

    // Logs: every line about either job, from the gateway, the worker and
    // its Dask tasks, arrived at "Fluentd" with the job's trace id.
    let jobs = HashMap::from([(http_job.clone(), http_trace), (ws_job.clone(), ws_trace)]);
    let records = receiver
        .wait_until(LONG, |records| {
            let priced = records
                .iter()
                .filter(|r| {
                    r.record["message"] == "chunk priced" && r.record["job_id"] == ws_job.as_str()
                })
                .count();
            priced >= 2
        })
        .await;
    let mut services = std::collections::BTreeSet::new();
    for record in &records {
        let Some(job) = record.record["job_id"].as_str() else {
            continue;
        };
        if let Some(trace) = jobs.get(job) {
            assert_eq!(record.record["trace_id"], *trace, "{}", record.record);
            services.insert(
                record.record["service"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    let gateway_lines: Vec<&Value> = records
        .iter()
        .filter(|r| r.tag == "jobgate.gateway")
        .map(|r| &r.record)
        .collect();
    assert!(
        services.contains("jobgate") && services.contains("jobgate-worker"),
        "{services:?} {gateway_lines:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.record["task_key"].is_string() && r.record["job_id"] == http_job.as_str()),
        "Dask task lines carry the job"
    );

    // Fluentd away: requests go on at full speed, the gateway drops its
    // oldest lines and counts them; when Fluentd is back, lines flow again.
    receiver.stop().await;
    let started = Instant::now();
    // More lines than one in-flight batch (500) and the buffer (50) hold.
    for _ in 0..700 {
        let answer = http
            .post(gateway.url("/v1/jobs"))
            .json(&json!({"kind": "echo", "params": {}}))
            .send()
            .await
            .expect("submit");
        assert_eq!(answer.status(), 202);
    }
    let outage = started.elapsed();
    assert!(
        outage < Duration::from_secs(30),
        "submissions were held up: {outage:?}"
    );
    let metrics = http
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jobgate_log_records_dropped_total "))
        .and_then(|v| v.parse().ok())
        .expect("the dropped counter is exported");
    assert!(
        dropped > 0,
        "with a 50-line buffer, 700 submissions drop lines:\n{metrics}"
    );

    receiver.restart().await;
    let marker = submit(
        &gateway.url("/v1/jobs"),
        None,
        &json!({"kind": "echo", "params": {"marker": true}}),
    )
    .await;
    let marker = marker["job_id"].as_str().expect("id").to_owned();
    receiver
        .wait_until(LONG, |records| {
            records
                .iter()
                .any(|r| r.record["job_id"] == marker.as_str())
        })
        .await;
    telemetry.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(&span_file);
}

/// Without a span exporter the binary gives its spans W3C ids only: its log
/// lines carry the client's trace, the job's `traceparent` names the
/// producer span whose id the `job submitted` line carries, and the
/// worker's `process` span is that span's child in the same trace.
#[tokio::test]
async fn without_a_span_exporter_the_binary_keeps_one_trace_from_the_client_to_the_worker() {
    let dir = std::env::temp_dir().join(format!("jobgate-ids-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (gateway_log, span_file) = (dir.join("gateway.log"), dir.join("spans.jsonl"));
    let redis = RedisServer::start();
    let span_path = span_file.to_str().expect("utf-8").to_owned();
    let _worker = PythonWorker::start_app_with_env(
        &redis.url(),
        "examples.pricing:worker",
        None,
        "ids",
        &[],
        &[("JOBGATE_SPAN_FILE", span_path.as_str())],
    );
    redis.wait_for_kinds(&["echo"]).await;
    let gateway = GatewayProcess::start_logging(JOBGATE, &redis.url(), &gateway_log);
    assert_eq!(gateway.readyz(true).await.0, 200);

    let (client_trace, client_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let submitted = submit(
        &gateway.url("/v1/jobs"),
        Some(&traceparent),
        &json!({"kind": "echo", "params": {"traced": true}}),
    )
    .await;
    assert_eq!(submitted["trace_id"], client_trace, "{submitted}");
    let job_id = submitted["job_id"].as_str().expect("id").to_owned();
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");
    let events = sse.collect(LONG).await.expect("events");
    let last = events.last().expect("events").json();
    assert_eq!(last["event"], "completed", "{last}");
    assert!(events.iter().all(|e| e.json()["trace_id"] == client_trace));

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let traceparent: String = redis::cmd("HGET")
        .arg(format!("jobgate:job:{{{job_id}}}"))
        .arg("traceparent")
        .query_async(&mut conn)
        .await
        .expect("the job's traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts[1], parts[3]), (client_trace, "01"), "{traceparent}");
    let producer = parts[2];
    assert_ne!(producer, client_span);

    let text = std::fs::read_to_string(&gateway_log).expect("the gateway's log");
    let submitted_line: Value = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "job submitted" && line["job_id"] == job_id.as_str())
        .unwrap_or_else(|| panic!("no `job submitted` line for {job_id}:\n{text}"));
    assert_eq!(submitted_line["trace_id"], client_trace, "{submitted_line}");
    assert_eq!(submitted_line["span_id"], producer, "{submitted_line}");

    let deadline = Instant::now() + LONG;
    let process = loop {
        let spans = worker_spans(&span_file);
        if let Some(process) = spans
            .into_iter()
            .find(|s| s.name == "process default" && s.trace_id == client_trace)
        {
            break process;
        }
        assert!(
            Instant::now() < deadline,
            "the worker wrote no process span"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(process.parent.as_deref(), Some(producer), "{process:?}");
    assert_eq!(process.kind, "consumer");
    let _ = std::fs::remove_dir_all(&dir);
}
