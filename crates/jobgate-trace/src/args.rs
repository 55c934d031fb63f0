//! The command line of `jobgate trace`, as a `clap::Args` struct the binary
//! flattens into its subcommand.

use std::path::PathBuf;

use crate::timestamp::{Timestamp, parse_time_bound};

/// `jobgate trace <TRACE_ID|JOB_ID> [--logs DIR|FILE...] [--json] [--since T] [--until T]`
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// A trace id (32 hex digits, or a whole traceparent), a job id (UUID),
    /// or an old client's free-form trace id.
    #[arg(value_name = "TRACE_ID|JOB_ID")]
    pub id: String,

    /// Log files or directories to read; directories are searched
    /// recursively for *.log, *.jsonl, *.ndjson, *.json and *.gz files.
    #[arg(
        long,
        value_name = "DIR|FILE",
        num_args = 1..,
        env = "JOBGATE_TRACE_LOGS",
        default_value = "./logs"
    )]
    pub logs: Vec<PathBuf>,

    /// Print the selected log lines as JSON lines, with `offset_ms` and
    /// `delta_ms` added, instead of the narrative.
    #[arg(long)]
    pub json: bool,

    /// Ignore lines before this time: RFC 3339, a date (midnight UTC), or an
    /// age such as 15m, 2h, 1d.
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub since: Option<Timestamp>,

    /// Ignore lines after this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub until: Option<Timestamp>,
}
