//! Reading lines of bounded length: `BufRead::read_until` would hold a whole
//! file in memory if it had no newline, so a line longer than the bound is
//! skipped (and counted) while it streams past.

use std::io::{self, BufRead};

/// Longer lines are not log lines anyone could read; they are skipped.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line, now in the buffer without its `\n` or `\r\n`.
    Complete,
    /// A line longer than the bound; the buffer is empty.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads the next line of `reader` into `buffer`, at most `max_bytes` of it.
pub(crate) fn read_line(
    reader: &mut dyn BufRead,
    buffer: &mut Vec<u8>,
    max_bytes: usize,
) -> io::Result<Line> {
    buffer.clear();
    let (mut read_any, mut too_long) = (false, false);
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => Line::End,
                (true, false) => finish(buffer),
                (true, true) => Line::TooLong,
            });
        }
        read_any = true;
        let newline = memchr::memchr(b'\n', available);
        let piece = &available[..newline.unwrap_or(available.len())];
        if !too_long && buffer.len() + piece.len() > max_bytes {
            too_long = true;
            buffer.clear();
        }
        if !too_long {
            buffer.extend_from_slice(piece);
        }
        let used = piece.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                finish(buffer)
            });
        }
    }
}

fn finish(buffer: &mut Vec<u8>) -> Line {
    if buffer.last() == Some(&b'\r') {
        buffer.pop();
    }
    Line::Complete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max_bytes: usize) -> Vec<(Line, String)> {
        // A tiny capacity makes lines span several fills of the buffer.
        let mut reader = io::BufReader::with_capacity(3, input);
        let mut buffer = Vec::new();
        let mut found = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buffer, max_bytes).unwrap_or(Line::End);
            if line == Line::End {
                return found;
            }
            found.push((line, String::from_utf8_lossy(&buffer).into_owned()));
        }
    }

    #[test]
    fn splits_lines_and_bounds_their_length() {
        let found = lines(b"one\r\ntwo\n\nmuch too long\nlast", 8);
        let expected = [
            (Line::Complete, "one"),
            (Line::Complete, "two"),
            (Line::Complete, ""),
            (Line::TooLong, ""),
            (Line::Complete, "last"),
        ];
        let expected: Vec<(Line, String)> = expected
            .into_iter()
            .map(|(line, text)| (line, text.to_owned()))
            .collect();
        assert_eq!(found, expected);
    }
}
