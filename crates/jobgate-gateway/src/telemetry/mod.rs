//! Telemetry set-up: JSON log lines on stderr (and to Fluentd), and
//! OpenTelemetry spans that give every job and log line its trace.
//!
//! - [`json_lines`]: the log line format every jobgate component shares;
//! - [`context`]: W3C trace context on spans (a client's `traceparent` as a
//!   span's parent, a span's ids recorded as log fields).

pub mod context;
mod json_lines;

use jobgate_fluent::{Forwarder, ForwarderConfig, TeeMakeWriter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use json_lines::{JsonLines, SpanFields, Unformatted};
pub use json_lines::{rfc3339, rfc3339_now};

/// The `service` of the gateway's log lines and spans.
pub const SERVICE: &str = "jobgate";

/// What telemetry runs in the background: the span pipeline and log
/// forwarding to Fluentd.
#[derive(Debug)]
pub struct Telemetry {
    forwarder: Option<Forwarder>,
    client_forwarder: Option<Forwarder>,
    tracer_provider: SdkTracerProvider,
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
        let provider = self.tracer_provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
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
/// spans still give every job and log line real trace and span ids, and
/// nothing is exported. Must run inside the tokio runtime.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let mut provider = tracer_provider_builder();
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        provider = provider.with_batch_exporter(exporter);
    }
    install(config, provider.build())
}

/// As [`init`], with spans going to `exporter` as they end (tests use an
/// in-memory exporter).
pub fn init_with_exporter<E>(config: &Config, exporter: E) -> Result<Telemetry, TelemetryError>
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    install(
        config,
        tracer_provider_builder()
            .with_simple_exporter(exporter)
            .build(),
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
    tracer_provider: SdkTracerProvider,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
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
        &tracer_provider,
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
/// `tracer_provider`, and JSON log lines to `writer`.
pub fn subscriber<W>(
    config: &Config,
    tracer_provider: &SdkTracerProvider,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;

    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer = tracer_provider.tracer(SERVICE);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .fmt_fields(Unformatted)
        .event_format(JsonLines);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            // Spans are entered on every poll of an instrumented future:
            // neither timing each entry (busy/idle attributes) nor attaching
            // an OpenTelemetry context (nothing here reads
            // `Context::current`) is worth its cost on that path. Parents
            // still come from the tracing span tree.
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_threads(false),
        )
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
