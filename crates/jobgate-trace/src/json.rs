//! The narrative for machines (`--json`): the selected lines as JSON lines,
//! in time order, each exactly as it was written (key order kept) with two
//! fields appended: `offset_ms` since the first line and `delta_ms` since
//! the previous one (0 for the first).

use std::io::{self, Write};

use crate::select::Trace;
use crate::timestamp::millis_json;
use crate::words::plural;

/// Writes the records of `trace` as JSON lines.
pub fn write_json(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    let Some(first) = trace.records.first() else {
        return Ok(());
    };
    let mut previous = first.timestamp;
    for record in &trace.records {
        let offset = millis_json(record.timestamp.nanos_since(first.timestamp));
        let delta = millis_json(record.timestamp.nanos_since(previous));
        previous = record.timestamp;
        // The raw text is a JSON object that parsed, so it ends with `}`.
        let body = record.raw.trim_end().trim_end_matches('}');
        let separator = if body.trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        writeln!(
            out,
            "{body}{separator}\"offset_ms\":{offset},\"delta_ms\":{delta}}}"
        )?;
    }
    Ok(())
}

/// One line for stderr saying what was read and skipped, with warnings.
pub(crate) fn summary(trace: &Trace) -> String {
    let stats = &trace.stats;
    let mut text = format!(
        "jobgate trace: {} selected; {} read in {}, {} skipped (not a JSON log line with a timestamp)",
        plural(trace.records.len() as u64, "line"),
        plural(stats.lines, "line"),
        plural(stats.files as u64, "file"),
        stats.skipped
    );
    for problem in &stats.unreadable {
        text.push_str(&format!(
            "\nwarning: {}: {}",
            problem.path.display(),
            problem.reason
        ));
    }
    text
}
