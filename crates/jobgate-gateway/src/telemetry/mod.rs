//! Telemetry set-up: JSON log lines on stderr (and to Fluentd), and
//! OpenTelemetry spans that give every job and log line its trace.
//!
//! - [`json_lines`]: the log line format every jobgate component shares;
//! - [`context`]: W3C trace context on spans (a client's `traceparent` as a
//!   span's parent, a span's ids recorded as log fields);
//! - [`ids`]: spans' W3C ids when no span exporter is configured.

pub mod context;
mod ids;
mod json_lines;

use jobgate_fluent::{Forwarder, ForwarderConfig, TeeMakeWriter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use json_lines::{JsonLines, SpanFields, Unformatted};
pub use json_lines::{rfc3339, rfc3339_now};

/// The `service` of the gateway's log lines and spans.
pub const SERVICE: &str = "jobgate";

/// What telemetry runs in the background: the span pipeline (when spans
/// are exported) and log forwarding to Fluentd.
#[derive(Debug)]
pub struct Telemetry {
    forwarder: Option<Forwarder>,
    client_forwarder: Option<Forwarder>,
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Where client apps' log lines go (`jobgate.client`), when Fluentd is configured.
    pub fn client_logs(&self) -> Option<Forwarder> {
        self.client_forwarder.clone()
    }

    /// Counters of log forwarding, when it is on.
    pub fn forwarding_stats(&self) -> Option<std::sync::Arc<jobgate_fluent::ForwarderStats>> {
        self.forwarder.as_ref().map(Forwarder::stats)
    }

    /// Flushes spans and sends the logs still buffered, waiting at most
    /// `timeout` for Fluentd.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(provider) = self.tracer_provider.clone() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
        for forwarder in self.forwarder.iter().chain(&self.client_forwarder) {
            if let Err(error) = forwarder.shutdown(timeout).await {
                eprintln!("jobgate: log forwarding stopped with records undelivered: {error}");
            }
        }
    }
}

/// Installs logging and tracing: JSON log lines on stderr (and to Fluentd
/// when `config.fluentd_addr` is set), and OpenTelemetry spans, exported over
/// OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without an endpoint
/// spans still give every job and log line real trace and span ids (see
/// [`ids`]), and nothing is exported. Must run inside the tokio runtime.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return install(config, None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    install(
        config,
        Some(
            tracer_provider_builder()
                .with_batch_exporter(exporter)
                .build(),
        ),
    )
}

/// As [`init`], with spans going to `exporter` as they end (tests use an
/// in-memory exporter).
pub fn init_with_exporter<E>(config: &Config, exporter: E) -> Result<Telemetry, TelemetryError>
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    install(
        config,
        Some(
            tracer_provider_builder()
                .with_simple_exporter(exporter)
                .build(),
        ),
    )
}

fn tracer_provider_builder() -> opentelemetry_sdk::trace::TracerProviderBuilder {
    SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(SERVICE)
            .build(),
    )
}

fn install(
    config: &Config,
    tracer_provider: Option<SdkTracerProvider>,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;

    let forwarder_for = |service: &str, address: &jobgate_fluent::FluentdAddress| {
        let mut settings = ForwarderConfig::new(address.clone(), service);
        settings.buffer_capacity = config.fluentd_buffer.max(1);
        Forwarder::start(settings)
    };
    let (forwarder, client_forwarder) = match &config.fluentd_addr {
        Some(address) => (
            Some(forwarder_for("gateway", address)?),
            Some(forwarder_for("client", address)?),
        ),
        None => (None, None),
    };
    let _ = subscriber(
        config,
        tracer_provider.as_ref(),
        TeeMakeWriter::new(std::io::stderr, forwarder.clone()),
    )
    .try_init();
    Ok(Telemetry {
        forwarder,
        client_forwarder,
        tracer_provider,
    })
}

/// The gateway's subscriber: `config.log`'s level filter, spans through
/// `tracer_provider` when they are exported (else only their W3C ids, see
/// [`ids`]), and JSON log lines to `writer`.
pub fn subscriber<W>(
    config: &Config,
    tracer_provider: Option<&SdkTracerProvider>,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;

    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans are entered on every poll of an instrumented future: neither
    // timing each entry (busy/idle attributes) nor attaching an
    // OpenTelemetry context (nothing here reads `Context::current`) is worth
    // its cost on that path. Parents still come from the tracing span tree.
    let spans = tracer_provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE))
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
    });
    let ids = tracer_provider.is_none().then(ids::W3cIds::default);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .fmt_fields(Unformatted)
        .event_format(JsonLines);
    tracing_subscriber::registry()
        .with(filter)
        .with(spans)
        .with(ids)
        .with(SpanFields)
        .with(logs)
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log forwarding: {0}")]
    Fluent(#[from] jobgate_fluent::FluentError),
    #[error("OTLP span exporter: {0}")]
    Otlp(String),
}

/// Log lines written in memory, for tests of what the layers write.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct CapturedLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl CapturedLines {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

#[cfg(test)]
impl std::io::Write for CapturedLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
