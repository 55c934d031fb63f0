//! `jobgate trace` against log files written here: the layouts Fluentd
//! writes (per-day files, a directory per tag, gzip, its tab-separated
//! format), every kind of writer, lines out of order, lines that are not log
//! lines, and other traces' and jobs' lines that must stay out.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use flate2::Compression;
use flate2::write::GzEncoder;
use jobgate_trace::{Query, Role, Target, Trace, TraceArgs, TraceError, collect, run};
use serde_json::{Value, json};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const JOB: &str = "0190c5a8-7b1e-7cc3-9f2a-3f9a1c2d0e11";
const OTHER_TRACE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER_JOB: &str = "0190c5a8-0000-7000-8000-000000000042";
/// The worker process's own trace (lines logged outside any job).
const PROCESS_TRACE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const LEGACY_TRACE: &str = "cccccccccccccccccccccccccccccccc";

fn at(time: &str) -> String {
    format!("2026-11-27T21:04:{time}Z")
}

fn line(time: &str, service: &str, message: &str, trace_id: &str, extra: Value) -> String {
    let mut fields = json!({
        "timestamp": at(time),
        "level": "info",
        "message": message,
        "service": service,
        "trace_id": trace_id,
        "span_id": "00f067aa0ba902b7",
    });
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    fields.to_string()
}

fn write_file(path: &Path, lines: &[String]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create the fixture directory");
    }
    fs::write(path, lines.join("\n") + "\n").expect("write a fixture file");
}

/// Each line its own gzip member, as an appending writer makes them.
fn write_gzip(path: &Path, lines: &[String]) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("create the fixture directory");
    let mut bytes = Vec::new();
    for line in lines {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        writeln!(encoder, "{line}").expect("compress");
        bytes.extend(encoder.finish().expect("finish the gzip member"));
    }
    fs::write(path, bytes).expect("write the gzip fixture");
}

/// A logs directory with one pricing job's lines spread over five files.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let logs = dir.path();
    write_gzip(
        &logs.join("client/ios-app.20261127.log.gz"),
        &[
            line("05.100", "ios-app", "submit tapped", TRACE, json!({})),
            line(
                "07.500",
                "ios-app",
                "result shown",
                TRACE,
                json!({"job_id": JOB}),
            ),
        ],
    );
    write_file(
        &logs.join("jobgate.20261127.log"),
        &[
            line(
                "05.112",
                "jobgate",
                "request",
                TRACE,
                json!({"method": "POST", "path": "/v1/jobs", "target": "jobgate_gateway::http"}),
            ),
            line(
                "05.118",
                "jobgate",
                "job submitted",
                TRACE,
                json!({"job_id": JOB, "kind": "mc_option_price", "queue": "default"}),
            ),
            line(
                "05.119",
                "jobgate",
                "job submitted",
                OTHER_TRACE,
                json!({"job_id": OTHER_JOB, "kind": "mc_option_price"}),
            ),
            "thread 'main' panicked at src/main.rs".to_owned(),
            format!(
                r#"{{"level":"info","message":"no timestamp","service":"jobgate","trace_id":"{TRACE}"}}"#
            ),
            line(
                "07.480",
                "jobgate",
                "event pushed",
                TRACE,
                json!({"job_id": JOB, "event": "completed"}),
            ),
        ],
    );
    write_file(
        &logs.join("README.txt"),
        &[line(
            "05.000",
            "jobgate",
            "not a log file",
            TRACE,
            json!({}),
        )],
    );
    write_file(
        &logs.join("tagged/jobgate.worker.log"),
        &[format!(
            "2026-11-27T21:04:06+00:00\tjobgate.worker\t{}",
            line(
                "06.000",
                "jobgate-worker",
                "pricing submitted",
                TRACE,
                json!({"job_id": JOB, "chunks": 2})
            )
        )],
    );
    write_file(
        &logs.join("worker/jobgate-worker.20261127.jsonl"),
        &[
            line(
                "04.000",
                "jobgate-worker",
                "worker started",
                PROCESS_TRACE,
                json!({}),
            ),
            line(
                "05.300",
                "jobgate-worker",
                "job started",
                TRACE,
                json!({"job_id": JOB, "attempt": 1, "kind": "mc_option_price"}),
            ),
            line(
                "05.250",
                "jobgate-worker",
                "job claimed",
                TRACE,
                json!({"job_id": JOB, "entry_id": "1764277445250-0"}),
            ),
            line(
                "05.600",
                "jobgate-worker",
                "chunk priced",
                TRACE,
                json!({"job_id": JOB, "attempt": 1, "task_key": "price-chunk-0"}),
            ),
            line(
                "05.600",
                "jobgate-worker",
                "chunk priced",
                TRACE,
                json!({"job_id": JOB, "attempt": 1, "task_key": "price-chunk-1"}),
            ),
            line(
                "05.700",
                "jobgate-worker",
                "cancel requested",
                PROCESS_TRACE,
                json!({"job_id": OTHER_JOB}),
            ),
            line(
                "06.500",
                "jobgate-worker",
                "lease renewed",
                PROCESS_TRACE,
                json!({"job_id": JOB}),
            ),
            line(
                "07.400",
                "jobgate-worker",
                "job completed",
                TRACE,
                json!({"job_id": JOB, "attempt": 1, "outcome": "completed", "duration_ms": 2100}),
            ),
        ],
    );
    dir
}

fn query(logs: &Path, id: &str) -> Query {
    Query {
        target: Target::parse(id).expect("an id"),
        logs: vec![logs.to_path_buf()],
        since: None,
        until: None,
    }
}

fn messages(trace: &Trace) -> Vec<&str> {
    trace
        .records
        .iter()
        .map(|record| record.text("message").unwrap_or(""))
        .collect()
}

fn render(args: &[&str]) -> Result<String, TraceError> {
    let cli = Cli::try_parse_from(["jobgate-trace"].iter().chain(args))
        .unwrap_or_else(|error| panic!("{error}"));
    let mut out = Vec::new();
    run(&cli.args, &mut out)?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

/// How the binary embeds the arguments.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TraceArgs,
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_trace_id_selects_its_lines_in_time_order_across_files() {
    let logs = fixture();
    let trace = collect(&query(logs.path(), TRACE)).expect("the trace");
    assert_eq!(
        messages(&trace),
        [
            "submit tapped",
            "request",
            "job submitted",
            "job claimed",
            "job started",
            "chunk priced",
            "chunk priced",
            "pricing submitted",
            "job completed",
            "event pushed",
            "result shown",
        ]
    );
    // Equal timestamps keep their file order.
    let task_keys: Vec<&str> = trace.records[5..7]
        .iter()
        .filter_map(|record| record.text("task_key"))
        .collect();
    assert_eq!(task_keys, ["price-chunk-0", "price-chunk-1"]);
    let roles: Vec<Role> = trace.records.iter().map(|record| record.role).collect();
    assert_eq!(roles[0], Role::Client);
    assert_eq!(roles[1], Role::Gateway);
    assert_eq!(roles[4], Role::Worker);
    assert_eq!(roles[5], Role::DaskTask);
    // Five log files (README.txt is not one); the panic line and the line
    // without a timestamp are skipped and counted.
    assert_eq!(trace.stats.files, 4);
    assert_eq!(trace.stats.skipped, 2);
    assert!(trace.stats.unreadable.is_empty());
}

#[test]
fn the_narrative_shows_offsets_steps_writers_and_fields() {
    let logs = fixture();
    let text = render(&[TRACE, "--logs", &path_arg(logs.path())]).expect("the narrative");
    let expected = "\
trace     4bf92f3577b34da6a3ce929d0e0e4736
job       0190c5a8-7b1e-7cc3-9f2a-3f9a1c2d0e11
first     2026-11-27T21:04:05.100Z
last      2026-11-27T21:04:07.500Z
duration  2.400s
services  ios-app (client) 2 · jobgate (gateway) 3 · jobgate-worker (worker) 4 · jobgate-worker (dask task) 2

 offset     step  service    level  message
+0.000s           ios-app    info   submit tapped
+0.012s  +0.012s  gateway    info   request            method=POST path=/v1/jobs
+0.018s  +0.006s  gateway    info   job submitted      job=…1c2d0e11 kind=mc_option_price queue=default
+0.150s  +0.132s  worker     info   job claimed        job=…1c2d0e11 entry_id=1764277445250-0
+0.200s  +0.050s  worker     info   job started        job=…1c2d0e11 attempt=1 kind=mc_option_price
+0.500s  +0.300s  dask task  info   chunk priced       job=…1c2d0e11 attempt=1 task_key=price-chunk-0
+0.500s  +0.000s  dask task  info   chunk priced       job=…1c2d0e11 attempt=1 task_key=price-chunk-1
+0.900s  +0.400s  worker     info   pricing submitted  job=…1c2d0e11 chunks=2
+2.300s  +1.400s  worker     info   job completed      job=…1c2d0e11 attempt=1 outcome=completed duration_ms=2100
+2.380s  +0.080s  gateway    info   event pushed       job=…1c2d0e11 event=completed
+2.400s  +0.020s  ios-app    info   result shown       job=…1c2d0e11

11 lines from 4 of 4 files; 17 lines read, 2 skipped (not a JSON log line with a timestamp)
";
    assert_eq!(text, expected);
}

#[test]
fn a_job_id_pulls_in_its_traces_lines_without_a_job_id() {
    let logs = fixture();
    let trace = collect(&query(logs.path(), JOB)).expect("the job");
    let found = messages(&trace);
    // The request and the tap carry the trace but no job id yet.
    assert_eq!(&found[..3], ["submit tapped", "request", "job submitted"]);
    // The worker process's trace is linked through the job's `lease renewed`
    // line, but it holds another job's line too: only this job's line of it
    // comes along, not the process's `worker started`.
    assert!(found.contains(&"lease renewed"));
    assert!(!found.contains(&"worker started") && !found.contains(&"cancel requested"));
    assert_eq!(trace.shared_traces, [PROCESS_TRACE]);
    assert_eq!(found.len(), 12);

    let text = render(&[JOB, "--logs", &path_arg(logs.path())]).expect("the narrative");
    assert!(text.starts_with(&format!(
        "traces    {TRACE}, {PROCESS_TRACE} (shared with other jobs: only this job's lines)\n\
         job       {JOB}\n"
    )));
    // With two traces, each step says which.
    assert!(
        text.contains(
            "+1.400s  +0.500s  worker     info   lease renewed      trace=…bbbbbbbb job=…1c2d0e11\n"
        ),
        "{text}"
    );
}

#[test]
fn an_old_clients_id_pulls_in_the_trace_the_gateway_started() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_file(
        &dir.path().join("all.log"),
        &[
            line("05.000", "ios-app", "submit tapped", "ios-1234", json!({})),
            line("05.010", "jobgate", "request", LEGACY_TRACE, json!({})),
            line(
                "05.020",
                "jobgate",
                "job submitted",
                LEGACY_TRACE,
                json!({"job_id": JOB, "legacy_trace_id": "ios-1234"}),
            ),
            line(
                "05.500",
                "jobgate-worker",
                "job completed",
                LEGACY_TRACE,
                json!({"job_id": JOB}),
            ),
            line("05.600", "ios-app", "something else", "ios-9999", json!({})),
        ],
    );
    let expected = ["submit tapped", "request", "job submitted", "job completed"];
    for id in ["ios-1234", LEGACY_TRACE, JOB] {
        let trace = collect(&query(dir.path(), id)).expect("the trace");
        assert_eq!(messages(&trace), expected, "looking up {id}");
    }
}

#[test]
fn json_output_keeps_each_line_and_adds_offset_and_delta() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let first = format!(
        r#"{{"timestamp":"{}","level":"info","message":"b","service":"jobgate","trace_id":"{TRACE}"}}"#,
        at("05.250")
    );
    write_file(
        &dir.path().join("a.jsonl"),
        &[
            first.clone(),
            line("05.000", "dashboard", "a", TRACE, json!({})),
        ],
    );
    write_file(
        &dir.path().join("b.json"),
        &[line("05.251500", "jobgate-worker", "c", TRACE, json!({}))],
    );
    let output = render(&[TRACE, "--json", "--logs", &path_arg(dir.path())]).expect("JSON lines");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 3);
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let pick = |key: &str| -> Vec<Value> { parsed.iter().map(|line| line[key].clone()).collect() };
    assert_eq!(pick("message"), [json!("a"), json!("b"), json!("c")]);
    assert_eq!(pick("offset_ms"), [json!(0), json!(250), json!(251.5)]);
    assert_eq!(pick("delta_ms"), [json!(0), json!(250), json!(1.5)]);
    // The line as written, key order included, then the two new fields.
    assert_eq!(
        lines[1],
        format!(
            "{},\"offset_ms\":250,\"delta_ms\":250}}",
            &first[..first.len() - 1]
        )
    );
}

#[test]
fn since_and_until_narrow_the_window() {
    let logs = fixture();
    let trace = collect(&Query {
        since: jobgate_trace::Timestamp::parse_rfc3339(&at("05.200")),
        until: jobgate_trace::Timestamp::parse_rfc3339(&at("07.400")),
        ..query(logs.path(), TRACE)
    })
    .expect("the trace");
    let found = messages(&trace);
    assert_eq!(found.first(), Some(&"job claimed"));
    assert_eq!(found.last(), Some(&"job completed"));

    let text = render(&[
        TRACE,
        "--logs",
        &path_arg(logs.path()),
        "--since",
        "2026-11-27T21:04:07.450Z",
    ])
    .expect("the narrative");
    assert!(text.contains("duration  0.020s"), "{text}");
}

#[test]
fn unknown_ids_missing_paths_and_broken_files_are_reported() {
    let logs = fixture();
    let missing = collect(&query(logs.path(), OTHER_TRACE.replace('a', "d").as_str()));
    assert!(
        matches!(
            missing,
            Err(TraceError::NotFound {
                skipped: 2,
                files: 4,
                ..
            })
        ),
        "{missing:?}"
    );
    let nowhere: PathBuf = logs.path().join("nowhere");
    assert!(matches!(
        collect(&query(&nowhere, TRACE)),
        Err(TraceError::LogPath { .. })
    ));
    let empty = tempfile::tempdir().expect("a temp dir");
    assert!(matches!(
        collect(&query(empty.path(), TRACE)),
        Err(TraceError::NoLogFiles { .. })
    ));

    // A truncated gzip file: its complete lines count, the rest is a warning.
    let mut bytes = Vec::new();
    let mut encoder = GzEncoder::new(&mut bytes, Compression::default());
    writeln!(
        encoder,
        "{}",
        line("05.000", "dashboard", "clicked", TRACE, json!({}))
    )
    .expect("compress");
    encoder.finish().expect("finish");
    fs::write(logs.path().join("broken.log.gz"), &bytes[..bytes.len() - 6]).expect("write");
    let text = render(&[TRACE, "--logs", &path_arg(logs.path())]).expect("the narrative");
    assert!(
        text.contains("warning: ") && text.contains("broken.log.gz"),
        "{text}"
    );
}

#[test]
fn a_file_named_directly_is_read_whatever_its_name() {
    let logs = fixture();
    let readme = logs.path().join("README.txt");
    let trace = collect(&Query {
        logs: vec![readme.clone(), readme],
        ..query(logs.path(), TRACE)
    })
    .expect("the trace");
    assert_eq!(messages(&trace), ["not a log file"]);
    assert_eq!(trace.stats.files, 1);
}
