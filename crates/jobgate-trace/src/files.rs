//! Finding the log files and opening them as streams of bytes.
//!
//! Fluentd's `file` output writes per-day files (`logs/jobgate.20261127.log`)
//! or files inside a directory per tag (`logs/jobgate/*.log`), gzipped when
//! `compress gzip` is set; other collectors write `*.jsonl`. So: every
//! `*.log`, `*.jsonl`, `*.ndjson`, `*.json` and `*.gz` file under the given
//! directories, recursively, in path order (per-day names sort by day); a
//! file named on the command line is read whatever its name. Gzip is
//! recognised by its magic bytes, not its name.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use walkdir::WalkDir;

use crate::error::TraceError;

const LOG_EXTENSIONS: [&str; 5] = ["log", "jsonl", "ndjson", "json", "gz"];
const READ_BUFFER_BYTES: usize = 256 * 1024;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A file or directory that could not be read, and why; reported, not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Where the problem is.
    pub path: PathBuf,
    /// What went wrong, as the operating system or the decoder put it.
    pub reason: String,
}

/// The log files under `paths`, without duplicates, plus what could not be
/// listed. A path that does not exist is an error: it was asked for.
pub(crate) fn discover(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Unreadable>), TraceError> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|source| TraceError::LogPath {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            walk(path, &mut files, &mut problems);
        } else {
            files.push(path.clone());
        }
    }
    let mut seen = HashSet::new();
    files.retain(|file| seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone())));
    if files.is_empty() {
        return Err(TraceError::NoLogFiles {
            searched: paths.to_vec(),
        });
    }
    Ok((files, problems))
}

fn walk(directory: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Unreadable>) {
    let entries = WalkDir::new(directory).sort_by_file_name().into_iter();
    for entry in entries {
        match entry {
            Ok(entry) if entry.file_type().is_file() && has_log_extension(entry.path()) => {
                files.push(entry.into_path());
            }
            Ok(_) => {}
            Err(error) => problems.push(Unreadable {
                path: error.path().unwrap_or(directory).to_path_buf(),
                reason: error.to_string(),
            }),
        }
    }
}

fn has_log_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            LOG_EXTENSIONS
                .iter()
                .any(|known| extension.eq_ignore_ascii_case(known))
        })
}

/// Opens `path` for reading line by line, decompressing gzip (including
/// files of several concatenated gzip members, as appending writers produce).
pub(crate) fn open(path: &Path) -> io::Result<Box<dyn BufRead>> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, File::open(path)?);
    if reader.fill_buf()?.starts_with(&GZIP_MAGIC) {
        let decoder = MultiGzDecoder::new(reader);
        Ok(Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            decoder,
        )))
    } else {
        Ok(Box::new(reader))
    }
}
