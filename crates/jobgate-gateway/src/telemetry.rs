//! Logs: one JSON object per line on stderr, in the schema every jobgate
//! component shares (`proto-schemas/schemas/log_line.json`): `timestamp`,
//! `level`, `message`, `service`, then the event's structured fields
//! (`trace_id`, `span_id`, `job_id` where known) at the top level.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;

use jobgate_fluent::{Forwarder, ForwarderConfig, TeeMakeWriter};

use crate::config::Config;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `service` of the gateway's log lines.
pub const SERVICE: &str = "jobgate";

/// What telemetry runs in the background: log forwarding to Fluentd.
#[derive(Debug, Default)]
pub struct Telemetry {
    forwarder: Option<Forwarder>,
}

impl Telemetry {
    /// Counters of log forwarding, when it is on.
    pub fn forwarding_stats(&self) -> Option<std::sync::Arc<jobgate_fluent::ForwarderStats>> {
        self.forwarder.as_ref().map(Forwarder::stats)
    }

    /// Sends what is still buffered, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(forwarder) = &self.forwarder
            && let Err(error) = forwarder.shutdown(timeout).await
        {
            eprintln!("jobgate: log forwarding stopped with records undelivered: {error}");
        }
    }
}

/// Installs the JSON log subscriber (stderr, and Fluentd when
/// `config.fluentd_addr` is set). Must run inside the tokio runtime.
pub fn init(config: &Config) -> Result<Telemetry, jobgate_fluent::FluentError> {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let forwarder = match &config.fluentd_addr {
        Some(address) => Some(Forwarder::start(ForwarderConfig::new(
            address.clone(),
            "gateway",
        ))?),
        None => None,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(TeeMakeWriter::new(std::io::stderr, forwarder.clone()))
        .event_format(JsonLines)
        .try_init();
    Ok(Telemetry { forwarder })
}

/// Formats each event as one line of the shared log schema.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(rfc3339_now()));
        line.insert(
            "level".into(),
            Value::String(level_name(*event.metadata().level()).into()),
        );
        line.insert("message".into(), Value::String(String::new()));
        line.insert("service".into(), Value::String(SERVICE.into()));
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().into()),
        );
        event.record(&mut FieldsVisitor(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

struct FieldsVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T21:04:05.123Z`.
pub fn rfc3339_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch.as_millis() as i64)
}

/// `unix_ms` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix_ms: i64) -> String {
    let (days, ms_of_day) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_814_645_007), "2026-11-27T21:24:05.007Z");
    }
}
