//! The ways `jobgate trace` can fail. Unreadable lines and files are not
//! among them: they are counted and reported beside the narrative.

use std::io;
use std::path::PathBuf;

use crate::target::Target;
use crate::words::plural;

/// Why no narrative could be printed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The id argument was blank.
    #[error("give a trace id or a job id")]
    EmptyId,
    /// A `--logs` path could not be read at all.
    #[error("cannot read the logs at {path}: {source} (set --logs or JOBGATE_TRACE_LOGS)", path = .path.display())]
    LogPath {
        /// The path as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `--logs` paths hold no log file.
    #[error("no *.log, *.jsonl, *.ndjson, *.json or *.gz file under {}", display_paths(.searched))]
    NoLogFiles {
        /// The paths as given.
        searched: Vec<PathBuf>,
    },
    /// No line matches.
    #[error(
        "no log line{window} has {target} (read {} in {}; {skipped} skipped as not a JSON log line with a timestamp)",
        plural(*.lines, "line"),
        plural(*.files as u64, "file"),
        window = if *.windowed { " between --since and --until" } else { "" }
    )]
    NotFound {
        /// What was looked for.
        target: Target,
        /// How many files were read.
        files: usize,
        /// How many lines they held.
        lines: u64,
        /// How many of those were skipped as not JSON or without a timestamp.
        skipped: u64,
        /// Whether `--since`/`--until` narrowed the search.
        windowed: bool,
    },
    /// Writing the narrative failed (other than a closed pipe, which ends it quietly).
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

fn display_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    names.join(", ")
}
