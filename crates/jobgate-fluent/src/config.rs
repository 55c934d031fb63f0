//! Where and how to forward: the Fluentd address (`JOBGATE_FLUENTD_ADDR`,
//! `host:port`), the tag, buffer and batch sizes, timeouts and backoff.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::FluentError;

/// The environment variable the gateway and worker read the address from.
pub const FLUENTD_ADDR_ENV: &str = "JOBGATE_FLUENTD_ADDR";

/// A Fluentd `in_forward` endpoint, `host:port`. The host is resolved again
/// at every connection attempt, so a Fluentd that comes back under a new IP
/// address (a restarted container) is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluentdAddress {
    host: String,
    port: u16,
}

impl FluentdAddress {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for FluentdAddress {
    type Err = FluentError;

    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || FluentError::InvalidAddress {
            address: text.to_owned(),
        };
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(invalid)?;
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if host.is_empty() || host.contains(char::is_whitespace) || port == 0 {
            return Err(invalid());
        }
        Ok(Self::new(host, port))
    }
}

impl fmt::Display for FluentdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How batches are laid out on the wire (Forward protocol v1 "event modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `[tag, [[time, record], ...], option]`.
    #[default]
    Forward,
    /// `[tag, bin(<[time, record]><[time, record]>...), option]`: the entries
    /// as one msgpack binary holding a stream of entries, as `out_forward`
    /// sends them.
    PackedForward,
}

/// Everything the [`crate::Forwarder`] needs. Build it with
/// [`ForwarderConfig::new`] and change the public fields if the defaults do
/// not fit.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Where Fluentd listens.
    pub address: FluentdAddress,
    /// The Fluentd tag of every record. Default: `jobgate.<service>`.
    pub tag: String,
    /// Wire layout of a batch. Default: [`Mode::Forward`].
    pub mode: Mode,
    /// Records kept while Fluentd is slow or down; past it the oldest are
    /// dropped (and counted). Default: 10,000.
    pub buffer_capacity: usize,
    /// Most records in one batch (one chunk). Default: 500.
    pub batch_max_records: usize,
    /// How long a batch waits for more records before it is sent.
    /// Default: 100 ms.
    pub batch_linger: Duration,
    /// How long to wait for `{"ack": chunk}` before the batch is re-sent on
    /// a new connection. Default: 5 s.
    pub ack_timeout: Duration,
    /// How long one TCP connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// First delay after a failed attempt; it doubles up to
    /// `backoff_max`, with jitter. Default: 100 ms.
    pub backoff_initial: Duration,
    /// Longest delay between attempts. Default: 5 s.
    pub backoff_max: Duration,
}

impl ForwarderConfig {
    /// Defaults for `service` (e.g. `gateway`, giving tag `jobgate.gateway`).
    pub fn new(address: FluentdAddress, service: &str) -> Self {
        Self {
            address,
            tag: format!("jobgate.{service}"),
            mode: Mode::Forward,
            buffer_capacity: 10_000,
            batch_max_records: 500,
            batch_linger: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port() {
        let address: FluentdAddress = "fluentd:24224".parse().expect("valid");
        assert_eq!((address.host(), address.port()), ("fluentd", 24224));
        let address: FluentdAddress = "127.0.0.1:1".parse().expect("valid");
        assert_eq!(address.to_string(), "127.0.0.1:1");
        let address: FluentdAddress = "[::1]:24224".parse().expect("valid");
        assert_eq!((address.host(), address.port()), ("::1", 24224));
        assert_eq!(address.to_string(), "[::1]:24224");
    }

    #[test]
    fn rejects_what_is_not_host_port() {
        for text in [
            "",
            "fluentd",
            ":24224",
            "fluentd:",
            "fluentd:0",
            "fluentd:70000",
            "a b:1",
        ] {
            assert!(text.parse::<FluentdAddress>().is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn tag_is_jobgate_dot_service() {
        let config = ForwarderConfig::new(FluentdAddress::new("localhost", 24224), "gateway");
        assert_eq!(config.tag, "jobgate.gateway");
        assert_eq!(config.buffer_capacity, 10_000);
    }
}
