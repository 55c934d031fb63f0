//! criterion micro-benchmarks of the gateway's per-event and per-submit
//! work, through the crates' public APIs:
//!
//! - `event_header`: [`EventHeader::parse`], run once per live event (the
//!   hub's message shares the header among every watcher);
//! - `job_id_parse`: the job id of each such event, parsed the same way;
//! - `client_message`: [`ClientMessage::parse`] of WebSocket frames;
//! - `server_message`: the `accepted` reply of each WebSocket submit;
//! - `keys`: the key and channel names of one submission;
//! - `job_record`: a job hash (`HGETALL`) read into its snapshot, and the
//!   snapshot's JSON (`GET /v1/jobs/{id}`, `GET /status/{id}`);
//! - `hub_fanout`: one event published to Redis and received by N
//!   subscriptions of the [`EventHub`], each reading its header as a feed
//!   does — the whole fan-out path, Redis included. It needs `redis-server` on PATH (skipped without one).
//! - `hub_leave`: N subscriptions of one channel end, one after the other,
//!   as the watchers of a finished job go (the time for all N; also needs
//!   `redis-server`).
//!
//! - `job_telemetry`: one WebSocket submission's spans and log line through
//!   the gateway's own subscriber (the level filter, spans' ids only or the
//!   span pipeline without an exporter, JSON lines to a sink): its
//!   `ws submit` span continuing the client's trace, the job's producer span
//!   and trace context, the polls that enter them, `job submitted`, and
//!   both ending.
//!
//! Run with `cargo bench -p jobgate-micro`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jobgate_gateway::trace;
use jobgate_proto::ws::{ClientMessage, ServerMessage};
use jobgate_proto::{EventHeader, JobId, SubmitRequest};
use jobgate_store::{EventHub, HubMessage, HubSettings, JobRecord, Subscription, keys};
use jobgate_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

const JOB_ID: &str = "01a21ee8-bbce-72e1-80f0-787c4453cbec";

fn completed_event(result: &str) -> String {
    format!(
        r#"{{"type":"event","job_id":"{JOB_ID}","seq":3,"event":"completed","data":{{"result":{result}}},"ts":1796000000123,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}}"#
    )
}

/// A result of about `bytes` bytes of JSON.
fn result_of(bytes: usize) -> String {
    let values: Vec<String> = (0..bytes / 8)
        .map(|i| format!("{:.3}", i as f64 * 0.5))
        .collect();
    format!(r#"{{"paths":[{}]}}"#, values.join(","))
}

fn event_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_header");
    for size in [16usize, 1024, 16 * 1024] {
        let json = completed_event(&result_of(size));
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(json.len()), &json, |b, json| {
            b.iter(|| EventHeader::parse(black_box(json.as_bytes())).expect("valid"));
        });
    }
    group.finish();
}

fn job_id_parse(c: &mut Criterion) {
    c.bench_function("job_id_parse", |b| {
        b.iter(|| black_box(JOB_ID).parse::<JobId>().expect("valid"));
    });
}

fn client_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_message");
    let frames = [
        (
            "submit",
            r#"{"type":"submit","request_id":"r-1842","job":{"kind":"echo","params":{"spot":100,"strike":105,"rate":0.01,"volatility":0.2,"maturity":1}}}"#,
        ),
        (
            "subscribe",
            r#"{"type":"subscribe","job_id":"01a21ee8-bbce-72e1-80f0-787c4453cbec","after":3}"#,
        ),
        ("ping", r#"{"type":"ping"}"#),
    ];
    for (name, text) in frames {
        group.bench_function(name, |b| {
            b.iter(|| ClientMessage::parse(black_box(text)).expect("valid"));
        });
    }
    group.finish();
}

fn server_message(c: &mut Criterion) {
    let accepted = ServerMessage::Accepted {
        index: None,
        request_id: "r-1842".into(),
        job_id: JOB_ID.parse().expect("valid"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    c.bench_function("server_message/accepted", |b| {
        b.iter(|| black_box(&accepted).to_json());
    });
}

fn key_names(c: &mut Criterion) {
    let job_id: JobId = JOB_ID.parse().expect("valid");
    c.bench_function("keys/submission", |b| {
        b.iter(|| {
            let id = black_box(&job_id);
            (
                keys::job(id),
                keys::events(id),
                keys::job_channel(id),
                keys::queue("default", keys::Band::Normal),
                keys::owner_jobs("local"),
            )
        });
    });
}

fn job_fields() -> HashMap<String, String> {
    [
        ("job_id", JOB_ID),
        ("owner", "local"),
        ("kind", "mc_option_price"),
        ("queue", "default"),
        ("params", r#"{"spot":100,"strike":105}"#),
        ("priority", "5"),
        ("max_attempts", "3"),
        ("timeout_s", "0"),
        ("retention_s", "86400"),
        ("history_max", "10000"),
        ("status", "completed"),
        ("attempt", "1"),
        ("seq", "12"),
        ("progress", r#"{"done":8,"total":8}"#),
        (
            "result",
            r#"{"price":8.0214,"std_error":0.0291,"paths":200000}"#,
        ),
        ("worker", "bench-1"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", ""),
        ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("created_at", "1796000000001"),
        ("started_at", "1796000000003"),
        ("finished_at", "1796000000123"),
        ("updated_at", "1796000000123"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn job_record(c: &mut Criterion) {
    let fields = job_fields();
    let mut group = c.benchmark_group("job_record");
    group.bench_function("from_fields", |b| {
        b.iter_batched(
            || fields.clone(),
            |fields| JobRecord::from_fields(fields).expect("valid"),
            criterion::BatchSize::SmallInput,
        );
    });
    let record = JobRecord::from_fields(fields)
        .expect("valid")
        .expect("present");
    group.bench_function("snapshot_json", |b| {
        b.iter(|| serde_json::to_string(black_box(&record.snapshot)).expect("serializes"));
    });
    group.finish();
}

/// An [`EventHub`] on its own `redis-server`, for the hub's benchmarks;
/// the hub stops when it is dropped.
struct HubBench {
    runtime: tokio::runtime::Runtime,
    redis: RedisServer,
    hub: EventHub,
    shutdown: CancellationToken,
}

impl HubBench {
    /// `None` (and a note) when `redis-server` is not on PATH.
    fn start(name: &str) -> Option<Self> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("{name}: skipped, redis-server is not on PATH");
            return None;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let redis = RedisServer::start();
        let shutdown = CancellationToken::new();
        let settings = HubSettings {
            // Measure the hub only: no link probe during the measurement.
            probe_interval: Duration::from_secs(3600),
            subscription_capacity: 4096,
            ..HubSettings::default()
        };
        let seeds = vec![redis.client().get_connection_info().clone()];
        let hub = runtime.block_on(async { EventHub::start(seeds, settings, shutdown.clone()) });
        Some(Self {
            runtime,
            redis,
            hub,
            shutdown,
        })
    }
}

impl Drop for HubBench {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `count` subscriptions of the hub, each watching `channel`.
async fn watching(hub: &EventHub, channel: &str, count: usize) -> Vec<Subscription> {
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        let mut subscription = hub.subscription();
        hub.watch(&mut subscription, channel).await.expect("watch");
        subscriptions.push(subscription);
    }
    subscriptions
}

/// One event through Redis pub/sub and the hub to every subscription.
fn hub_fanout(c: &mut Criterion) {
    let Some(bench) = HubBench::start("hub_fanout") else {
        return;
    };
    let (runtime, hub) = (&bench.runtime, &bench.hub);
    let mut publisher = runtime
        .block_on(bench.redis.client().get_multiplexed_async_connection())
        .expect("publisher connection");
    let channel = keys::job_channel(&JOB_ID.parse().expect("valid"));
    let event = completed_event(&result_of(256));

    let mut group = c.benchmark_group("hub_fanout");
    group.measurement_time(Duration::from_secs(4));
    for watchers in [1usize, 100, 1000] {
        let mut subscriptions = runtime.block_on(watching(hub, &channel, watchers));
        group.throughput(Throughput::Elements(watchers as u64));
        group.bench_function(BenchmarkId::from_parameter(watchers), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let _: i64 = redis::cmd("SPUBLISH")
                            .arg(&channel)
                            .arg(&event)
                            .query_async(&mut publisher)
                            .await
                            .expect("publish");
                        for subscription in &mut subscriptions {
                            loop {
                                match subscription.recv().await {
                                    Some(HubMessage::Event(published)) => {
                                        black_box(published.event_header());
                                        break;
                                    }
                                    Some(HubMessage::Resync) => continue,
                                    None => panic!("the hub stopped"),
                                }
                            }
                        }
                    }
                    started.elapsed()
                })
            });
        });
        drop(subscriptions);
    }
    group.finish();
}

/// N subscriptions of one channel end one after the other, as the
/// watchers of a finished job do: the hub's bookkeeping per leaving member.
fn hub_leave(c: &mut Criterion) {
    let Some(bench) = HubBench::start("hub_leave") else {
        return;
    };
    let (runtime, hub) = (&bench.runtime, &bench.hub);
    let channel = keys::job_channel(&JOB_ID.parse().expect("valid"));

    let mut group = c.benchmark_group("hub_leave");
    group.measurement_time(Duration::from_secs(4));
    for watchers in [1000usize, 10_000] {
        group.throughput(Throughput::Elements(watchers as u64));
        group.bench_function(BenchmarkId::from_parameter(watchers), |b| {
            b.iter_custom(|iterations| {
                let mut took = Duration::ZERO;
                for _ in 0..iterations {
                    let subscriptions = runtime.block_on(watching(hub, &channel, watchers));
                    let started = Instant::now();
                    drop(subscriptions);
                    took += started.elapsed();
                }
                took
            });
        });
    }
    group.finish();
}

/// One job's telemetry, as a WebSocket `submit` makes it: with spans'
/// W3C ids only (no exporter, the default) and through the OpenTelemetry
/// layer (as when spans are exported; the exporter's own work not counted).
fn job_telemetry(c: &mut Criterion) {
    let config = jobgate_gateway::Config::for_redis("redis://127.0.0.1:6379");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let request: SubmitRequest =
        serde_json::from_str(r#"{"kind":"echo","params":{"x":1}}"#).expect("a request");
    let job_id: JobId = JOB_ID.parse().expect("valid");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut group = c.benchmark_group("job_telemetry");
    for (name, exporting) in [("ids", None), ("spans", Some(&provider))] {
        let subscriber = jobgate_gateway::telemetry::subscriber(&config, exporting, std::io::sink);
        tracing::subscriber::with_default(subscriber, || {
            group.bench_function(name, |b| {
                b.iter(|| {
                    let request_span = trace::ws_submit_span("918", Some(traceparent), None);
                    let (producer, context) = request_span.in_scope(|| {
                        trace::producer_span(
                            "default",
                            &request,
                            &job_id,
                            None,
                            Some(traceparent),
                            None,
                        )
                    });
                    // The submission's future is polled a few times in each.
                    for _ in 0..3 {
                        let _request = request_span.enter();
                        let _producer = producer.enter();
                    }
                    producer.in_scope(|| {
                        tracing::info!(kind = %request.kind, queue = "default", "job submitted");
                    });
                    black_box(context);
                });
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    event_header,
    job_id_parse,
    client_message,
    server_message,
    key_names,
    job_record,
    hub_fanout,
    hub_leave,
    job_telemetry
);
criterion_main!(benches);
