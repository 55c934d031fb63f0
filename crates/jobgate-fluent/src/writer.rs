//! A `tracing_subscriber` writer that tees: every byte goes to the inner
//! writer (stderr) as before, and every complete line, which the gateway's
//! formatter makes one JSON object, is also parsed and handed to the
//! [`Forwarder`]. The formatter and the line schema stay in one place.

use std::io;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use crate::forwarder::Forwarder;

/// Wraps a `MakeWriter` (e.g. `std::io::stderr`) so that its lines also
/// reach Fluentd. With `None` it is the inner writer alone, so the
/// subscriber's type does not depend on whether Fluentd is configured.
#[derive(Debug, Clone)]
pub struct TeeMakeWriter<M> {
    inner: M,
    forwarder: Option<Forwarder>,
}

impl<M> TeeMakeWriter<M> {
    pub fn new(inner: M, forwarder: Option<Forwarder>) -> Self {
        Self { inner, forwarder }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for TeeMakeWriter<M> {
    type Writer = TeeWriter<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter::new(self.inner.make_writer(), self.forwarder.as_ref())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        TeeWriter::new(self.inner.make_writer_for(meta), self.forwarder.as_ref())
    }
}

/// The writer for one event. The fmt layer writes each formatted event
/// with one `write_all`; a line split across writes is joined here, and a
/// last line without its newline is forwarded when the writer is dropped.
#[derive(Debug)]
pub struct TeeWriter<'a, W: io::Write> {
    inner: W,
    forwarder: Option<&'a Forwarder>,
    partial_line: Vec<u8>,
}

impl<'a, W: io::Write> TeeWriter<'a, W> {
    fn new(inner: W, forwarder: Option<&'a Forwarder>) -> Self {
        Self {
            inner,
            forwarder,
            partial_line: Vec::new(),
        }
    }

    fn forward(forwarder: &Forwarder, line: &[u8]) {
        forwarder.send_line(&String::from_utf8_lossy(line));
    }
}

impl<W: io::Write> io::Write for TeeWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        let Some(forwarder) = self.forwarder else {
            return Ok(written);
        };
        let mut rest = &bytes[..written];
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            if self.partial_line.is_empty() {
                Self::forward(forwarder, &rest[..end]);
            } else {
                self.partial_line.extend_from_slice(&rest[..end]);
                Self::forward(forwarder, &self.partial_line);
                self.partial_line.clear();
            }
            rest = &rest[end + 1..];
        }
        self.partial_line.extend_from_slice(rest);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: io::Write> Drop for TeeWriter<'_, W> {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder
            && !self.partial_line.is_empty()
        {
            Self::forward(forwarder, &self.partial_line);
        }
    }
}
