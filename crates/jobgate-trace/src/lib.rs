//! `jobgate trace <trace_id|job_id>`: one job's narrative across services —
//! client apps, the gateway, the worker and its Dask tasks — read from the
//! JSON-lines log files Fluentd writes (`proto-schemas/schemas/log_line.json`
//! is the shape of every line), in time order, with the time between steps.
//!
//! - [`TraceArgs`] and [`run`]: what the binary's `trace` subcommand calls;
//! - [`collect`] → [`Trace`], then [`write_text`] or [`write_json`]: the
//!   same in steps, for tests and other callers.
//!
//! Modules: `files` finds and opens the logs (gzip too), `lines` reads
//! bounded lines, `scan` streams through them, `select` picks the narrative's
//! lines, `render` and `json` print it; `target` and `timestamp` parse the
//! arguments.
//!
//! **This crate reads files only.** It knows nothing of HTTP, Redis or
//! Fluentd's protocol, and never holds more than the selected lines in
//! memory.

mod args;
mod error;
mod files;
mod json;
mod lines;
mod record;
mod render;
mod scan;
mod select;
mod target;
mod timestamp;
mod words;

use std::io::{self, BufWriter, Write};

pub use args::TraceArgs;
pub use error::TraceError;
pub use files::Unreadable;
pub use json::write_json;
pub use record::{Record, Role};
pub use render::write_text;
pub use scan::ScanStats;
pub use select::{Query, Trace, collect};
pub use target::Target;
pub use timestamp::{Timestamp, parse_time_bound};

/// Prints the narrative `args` asks for to `out`: text, or JSON lines with
/// `--json` (then what was skipped goes to stderr, keeping `out` machine-only).
/// A closed pipe (`jobgate trace … | head`) ends the output without error.
pub fn run(args: &TraceArgs, out: &mut impl Write) -> Result<(), TraceError> {
    let query = Query::from_args(args)?;
    let trace = collect(&query)?;
    let mut out = BufWriter::new(out);
    let written = if args.json {
        let note = (trace.stats.skipped > 0 || !trace.stats.unreadable.is_empty())
            .then(|| json::summary(&trace));
        if let Some(note) = note {
            let _ = writeln!(io::stderr().lock(), "{note}");
        }
        write_json(&trace, &mut out)
    } else {
        write_text(&trace, &mut out)
    };
    match written.and_then(|()| out.flush()) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(TraceError::Output(error)),
        _ => Ok(()),
    }
}

impl Query {
    /// The query of a command line.
    pub fn from_args(args: &TraceArgs) -> Result<Self, TraceError> {
        Ok(Self {
            target: Target::parse(&args.id).ok_or(TraceError::EmptyId)?,
            logs: args.logs.clone(),
            since: args.since,
            until: args.until,
        })
    }
}
