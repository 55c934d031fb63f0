//! Choosing the lines of one narrative, in at most two streaming passes.
//!
//! 1. The *anchor* lines — those the target names (its `trace_id`, its
//!    `job_id`, or an old client's id) — give the *linked* ids: the
//!    `trace_id` and `legacy_trace_id` values on them.
//! 2. If that reaches beyond the target, a second pass keeps the anchor
//!    lines plus every line whose `trace_id` is linked: for a job, the
//!    gateway's request line (no `job_id` yet); for an old client's id, the
//!    W3C trace the gateway started; for a trace, the old client's own lines.
//!
//! **A job's narrative never pulls in another job's lines.** A worker line
//! logged outside any job (`cancel requested`) carries the worker process's
//! own trace; following it would pull in that process's whole life. So when
//! looking up a job, a linked trace that also holds lines of other jobs is
//! *shared*: only the job's own lines of it are kept, and the header says so.

use std::path::PathBuf;

use crate::error::TraceError;
use crate::files;
use crate::record::{Record, Role};
use crate::scan::{Candidate, ScanStats, Window, scan};
use crate::target::{Target, same_hex};
use crate::timestamp::Timestamp;

/// What to look for, and where.
#[derive(Debug, Clone)]
pub struct Query {
    /// The trace, job or old client's id.
    pub target: Target,
    /// Log files and directories.
    pub logs: Vec<PathBuf>,
    /// Lines before this are ignored.
    pub since: Option<Timestamp>,
    /// Lines after this are ignored.
    pub until: Option<Timestamp>,
}

/// One narrative: the selected lines in time order, and how they were found.
#[derive(Debug, Clone)]
pub struct Trace {
    /// What was looked for.
    pub target: Target,
    /// The lines, by timestamp; lines with the same timestamp in file order.
    pub records: Vec<Record>,
    /// The files read, in the order read ([`Record::file`] indexes this).
    pub files: Vec<PathBuf>,
    /// Lines read and skipped, files unreadable.
    pub stats: ScanStats,
    /// Traces of the job that also hold other jobs' lines: only the job's own
    /// lines of them are in `records` (see the module comment).
    pub shared_traces: Vec<String>,
}

/// Reads the logs and selects the narrative of `query`.
pub fn collect(query: &Query) -> Result<Trace, TraceError> {
    let (files, mut unreadable) = files::discover(&query.logs)?;
    let window = Window {
        since: query.since,
        until: query.until,
    };
    let target = &query.target;
    let (mut records, mut stats) = anchor_pass(&files, window, target);
    let linked = linked_ids(&records);
    let mut shared_traces = Vec::new();
    let reaches_further = match target {
        Target::Trace(trace_id) => linked.iter().any(|id| !id.eq_ignore_ascii_case(trace_id)),
        Target::Job(_) | Target::Legacy(_) => !linked.is_empty(),
    };
    if reaches_further {
        let found = linked_pass(&files, window, target, &linked);
        (records, stats, shared_traces) = (found.records, found.stats, found.shared);
    }
    if records.is_empty() {
        return Err(TraceError::NotFound {
            target: target.clone(),
            files: stats.files,
            lines: stats.lines,
            skipped: stats.skipped,
            windowed: window.is_set(),
        });
    }
    records.sort_by_key(|record| record.timestamp);
    unreadable.append(&mut stats.unreadable);
    stats.unreadable = unreadable;
    Ok(Trace {
        target: target.clone(),
        records,
        files,
        stats,
        shared_traces,
    })
}

fn anchor_pass(files: &[PathBuf], window: Window, target: &Target) -> (Vec<Record>, ScanStats) {
    let mut records = Vec::new();
    let stats = scan(files, window, |candidate| {
        if target.anchors(&candidate.ids) {
            records.extend(to_record(&candidate));
        }
    });
    (records, stats)
}

/// The `trace_id` and `legacy_trace_id` values of `records`, each once.
fn linked_ids(records: &[Record]) -> Vec<String> {
    let mut linked: Vec<String> = Vec::new();
    let ids = records
        .iter()
        .flat_map(|record| [record.trace_id(), record.text("legacy_trace_id")]);
    for id in ids.flatten() {
        if !linked.iter().any(|known| known.eq_ignore_ascii_case(id)) {
            linked.push(id.to_owned());
        }
    }
    linked
}

struct Linked {
    records: Vec<Record>,
    stats: ScanStats,
    shared: Vec<String>,
}

fn linked_pass(files: &[PathBuf], window: Window, target: &Target, linked: &[String]) -> Linked {
    let job_id = match target {
        Target::Job(job_id) => Some(job_id.as_str()),
        Target::Trace(_) | Target::Legacy(_) => None,
    };
    // Lines kept through a linked trace, with the index of that trace.
    let mut anchors = Vec::new();
    let mut through_trace: Vec<(usize, Record)> = Vec::new();
    let mut shared = vec![false; linked.len()];
    let stats = scan(files, window, |candidate| {
        if target.anchors(&candidate.ids) {
            anchors.extend(to_record(&candidate));
            return;
        }
        let Some(trace) = linked
            .iter()
            .position(|id| same_hex(candidate.ids.trace_id, id))
        else {
            return;
        };
        if job_id.is_some() && candidate.ids.job_id.is_some() {
            shared[trace] = true;
        }
        if !shared[trace] {
            through_trace.extend(to_record(&candidate).map(|record| (trace, record)));
        }
    });
    let mut records = anchors;
    records.extend(
        through_trace
            .into_iter()
            .filter(|(trace, _)| !shared[*trace])
            .map(|(_, record)| record),
    );
    records.sort_by_key(|record| (record.file, record.line));
    let shared = linked
        .iter()
        .zip(&shared)
        .filter(|(_, shared)| **shared)
        .map(|(id, _)| id.clone())
        .collect();
    Linked {
        records,
        stats,
        shared,
    }
}

/// Parses a candidate in full (the probe already found it to be an object).
fn to_record(candidate: &Candidate<'_>) -> Option<Record> {
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(candidate.json).ok()?;
    let raw = String::from_utf8_lossy(candidate.json).into_owned();
    Some(Record {
        timestamp: candidate.timestamp,
        role: Role::of(&fields),
        fields,
        raw,
        file: candidate.file,
        line: candidate.line,
    })
}
