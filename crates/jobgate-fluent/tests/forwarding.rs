//! The forwarder against a real Forward-protocol receiver on port 0: what
//! arrives, that acked chunks arrive once, that an outage neither blocks
//! callers nor loses the newest logs, that an unacked chunk is re-sent, and
//! that shutdown flushes within its bound.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use jobgate_fluent::{FluentError, Forwarder, ForwarderConfig, Mode, TeeMakeWriter};
use jobgate_testkit::{ForwardMode, ForwardReceiver, ForwardRecord};
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn config(receiver: &ForwardReceiver) -> ForwarderConfig {
    let address = receiver.address().parse().expect("receiver address");
    let mut config = ForwarderConfig::new(address, "test");
    config.batch_linger = Duration::from_millis(20);
    config.ack_timeout = Duration::from_millis(500);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

fn record(n: u64) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "timestamp": "2026-11-27T21:04:05.123Z",
        "level": "info",
        "message": "step done",
        "service": "jobgate",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "job_id": format!("job-{n}"),
        "n": n,
        "ratio": 0.25,
        "tags": ["a", "b"],
    }) else {
        unreachable!("an object literal")
    };
    map
}

fn numbers(records: &[ForwardRecord]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|record| record.record["n"].as_u64())
        .collect()
}

async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn records_arrive_with_their_fields(mode: Mode, expected_mode: ForwardMode) {
    let receiver = ForwardReceiver::start().await;
    let mut config = config(&receiver);
    config.mode = mode;
    let forwarder = Forwarder::start(config).expect("start");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for n in 0..3 {
        forwarder.send(record(n));
    }
    let records = receiver.wait_for_records(3, WAIT).await;
    assert_eq!(records.len(), 3);
    for (n, received) in (0..).zip(&records) {
        assert_eq!(received.tag, "jobgate.test");
        assert_eq!(received.record, Value::Object(record(n)));
        assert!(received.time.event_time, "time is an EventTime");
        assert!(received.time.seconds >= before && received.time.seconds <= before + 60);
    }
    let messages = receiver.messages();
    assert!(messages.iter().all(|message| message.mode == expected_mode));
    assert!(messages.iter().all(|message| message.acked));
    assert!(
        messages
            .iter()
            .all(|message| message.size == Some(message.records as u64))
    );
    forwarder
        .shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    assert_eq!(forwarder.stats().forwarded(), 3);
}

#[tokio::test]
async fn records_arrive_with_their_fields_in_forward_mode() {
    records_arrive_with_their_fields(Mode::Forward, ForwardMode::Forward).await;
}

#[tokio::test]
async fn records_arrive_with_their_fields_in_packed_forward_mode() {
    records_arrive_with_their_fields(Mode::PackedForward, ForwardMode::PackedForward).await;
}

#[tokio::test]
async fn acked_chunks_arrive_once() {
    let receiver = ForwardReceiver::start().await;
    let mut config = config(&receiver);
    config.batch_max_records = 100;
    let forwarder = Forwarder::start(config).expect("start");
    for n in 0..2_000 {
        forwarder.send(record(n));
        if n % 300 == 0 {
            tokio::task::yield_now().await;
        }
    }
    receiver.wait_for_records(2_000, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let records = receiver.records();
    assert_eq!(records.len(), 2_000, "no record twice");
    assert_eq!(
        numbers(&records),
        (0..2_000).collect::<Vec<_>>(),
        "in order"
    );
    let messages = receiver.messages();
    let chunks: HashSet<_> = messages.iter().map(|m| m.chunk.clone()).collect();
    assert_eq!(chunks.len(), messages.len(), "every chunk id is new");
    assert!(
        messages
            .iter()
            .all(|m| m.chunk.is_some() && m.records <= 100)
    );
    let stats = forwarder.stats().snapshot();
    assert_eq!(stats.forwarded, 2_000);
    assert_eq!(
        (stats.dropped, stats.buffered, stats.resent_batches),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn an_outage_drops_the_oldest_without_blocking_and_forwarding_resumes() {
    let mut receiver = ForwardReceiver::start().await;
    let mut config = config(&receiver);
    config.buffer_capacity = 1_000;
    config.batch_max_records = 100;
    let forwarder = Forwarder::start(config).expect("start");
    forwarder.send(record(0));
    receiver.wait_for_records(1, WAIT).await;

    receiver.stop().await;
    // Built beforehand so that only `send` is timed.
    let records: Vec<_> = (1..=10_000).map(record).collect();
    let started = Instant::now();
    for record in records {
        forwarder.send(record);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "10,000 sends took {elapsed:?}"
    );
    let stats = forwarder.stats();
    // At most one batch is out of the buffer, waiting for its ack.
    assert!(
        stats.dropped() >= 10_000 - 1_000 - 100,
        "dropped {}",
        stats.dropped()
    );
    assert!(stats.buffered() <= 1_000 + 100);

    receiver.restart().await;
    forwarder.send(record(20_000));
    let records = receiver
        .wait_until(WAIT, |records| {
            numbers(records).contains(&20_000) && numbers(records).contains(&10_000)
        })
        .await;
    // The newest records of the outage survived it: the buffer kept the
    // last 1,000 sends (the record sent after the restart pushed one out).
    let received: HashSet<u64> = numbers(&records).into_iter().collect();
    assert!((9_002..=10_000).all(|n| received.contains(&n)));
    assert!(stats.reconnects() >= 1);
    forwarder
        .shutdown(Duration::from_secs(2))
        .await
        .expect("shutdown");
    assert_eq!(stats.buffered(), 0);
    assert_eq!(stats.forwarded() + stats.dropped(), 10_002);
}

#[tokio::test]
async fn a_chunk_whose_ack_does_not_come_is_resent() {
    let receiver = ForwardReceiver::start().await;
    receiver.withhold_next_ack();
    let forwarder = Forwarder::start(config(&receiver)).expect("start");
    for n in 0..5 {
        forwarder.send(record(n));
    }
    let records = receiver.wait_for_records(10, WAIT).await;
    // The receiver kept the first copy (as Fluentd would) and the re-sent one.
    assert_eq!(numbers(&records), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    let messages = receiver.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].chunk, messages[1].chunk,
        "same chunk id on re-send"
    );
    assert!(!messages[0].acked && messages[1].acked);
    // The receiver stores records before it writes the ack.
    wait_until(|| forwarder.stats().forwarded() == 5).await;
    assert_eq!(forwarder.stats().resent_batches(), 1);
}

#[tokio::test]
async fn a_silent_server_makes_the_ack_time_out_and_the_chunk_is_resent() {
    // A listener that accepts and never answers: the ack times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let mut config = ForwarderConfig::new(address.to_string().parse().expect("address"), "test");
    config.ack_timeout = Duration::from_millis(100);
    config.backoff_initial = Duration::from_millis(10);
    config.batch_linger = Duration::from_millis(1);
    let forwarder = Forwarder::start(config).expect("start");
    forwarder.send(record(1));
    wait_until(|| forwarder.stats().resent_batches() >= 2).await;
    assert_eq!(forwarder.stats().forwarded(), 0);
    assert_eq!(forwarder.stats().buffered(), 1);
    held.abort();
}

#[tokio::test]
async fn shutdown_flushes_without_waiting_for_the_linger() {
    let receiver = ForwardReceiver::start().await;
    let mut config = config(&receiver);
    config.batch_linger = Duration::from_secs(30);
    let forwarder = Forwarder::start(config).expect("start");
    for n in 0..10 {
        forwarder.send(record(n));
    }
    let started = Instant::now();
    forwarder
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(numbers(&receiver.records()), (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_gives_up_within_its_bound_when_fluentd_is_down() {
    let mut receiver = ForwardReceiver::start().await;
    receiver.stop().await;
    let forwarder = Forwarder::start(config(&receiver)).expect("start");
    for n in 0..10 {
        forwarder.send(record(n));
    }
    let started = Instant::now();
    let result = forwarder.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    match result {
        Err(FluentError::ShutdownTimedOut { undelivered, .. }) => assert_eq!(undelivered, 10),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn the_tee_writer_forwards_each_log_line() {
    let receiver = ForwardReceiver::start().await;
    let forwarder = Forwarder::start(config(&receiver)).expect("start");
    let writer = TeeMakeWriter::new(std::io::sink, Some(forwarder.clone()));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(job_id = "job-7", attempt = 2, "job reclaimed");
    });
    // A line split over two writes, then a line that is not JSON.
    {
        use std::io::Write;
        use tracing_subscriber::fmt::MakeWriter;
        let mut line = writer.make_writer();
        line.write_all(br#"{"message":"split "#).expect("write");
        line.write_all(b"line\"}\nnot json\n").expect("write");
    }
    let records = receiver.wait_for_records(3, WAIT).await;
    let first = &records[0].record;
    assert_eq!(first["message"], "job reclaimed");
    assert_eq!(first["job_id"], "job-7");
    assert_eq!(first["attempt"], 2);
    assert_eq!(first["level"], "INFO");
    assert_eq!(records[1].record, json!({"message": "split line"}));
    assert_eq!(records[2].record, json!({"message": "not json"}));
}

#[tokio::test]
async fn start_needs_a_runtime_but_not_a_reachable_fluentd() {
    let address = "127.0.0.1:9".parse().expect("address");
    let config = ForwarderConfig::new(address, "test");
    let outside = std::thread::spawn({
        let config = config.clone();
        move || Forwarder::start(config).map(|_| ())
    })
    .join()
    .expect("thread");
    assert!(matches!(outside, Err(FluentError::NoRuntime)));
    assert!(Forwarder::start(config).is_ok());
}
