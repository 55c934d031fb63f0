//! How counts read in messages and summaries ("1 line", "3 files").

/// `1 file`, `2 files`.
pub(crate) fn plural(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        count => format!("{count} {noun}s"),
    }
}
