//! Log lines: one JSON object per line, in the schema every jobgate
//! component shares (`proto-schemas/schemas/log_line.json`): `timestamp`,
//! `level`, `message`, `service`, then the event's structured fields
//! (`trace_id`, `span_id`, `job_id` where known) at the top level.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::SERVICE;

/// The structured fields of every span, kept so that log lines inside a
/// span carry them (`trace_id`, `span_id`, `job_id`, …), innermost first.
pub(super) struct SpanFields;

/// Fields by name, in the order first recorded; a name recorded again
/// keeps its place and takes the new value. A span or an event has a
/// handful, so a list beats a map.
#[derive(Default)]
struct RecordedFields(Vec<(&'static str, Value)>);

impl RecordedFields {
    fn set(&mut self, name: &'static str, value: Value) {
        set_field(&mut self.0, name, value);
    }
}

/// Gives `name` its `value` in `fields`: in its place if it is there, else last.
fn set_field<'a, V>(fields: &mut Vec<(&'a str, V)>, name: &'a str, value: V) {
    match fields.iter_mut().find(|(known, _)| *known == name) {
        Some(slot) => slot.1 = value,
        None => fields.push((name, value)),
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = RecordedFields::default();
        attrs.record(&mut FieldsVisitor::logged(&mut fields));
        span.extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<RecordedFields>() {
            values.record(&mut FieldsVisitor::logged(fields));
        }
    }
}

/// The fmt layer's own rendering of span fields, which [`JsonLines`] never
/// prints (it takes them from [`SpanFields`]): rendering nothing saves
/// formatting every span's fields as text on every request.
pub(super) struct Unformatted;

impl<'writer> FormatFields<'writer> for Unformatted {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }
}

/// Formats each event as one line of the shared log schema, serialised
/// from the fields where they are: borrowed from the spans, not copied
/// into a map first (a log line is written for every job).
#[derive(Debug, Clone, Copy)]
pub(super) struct JsonLines;

/// One value of a log line.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl Serialize for Entry<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Entry::Text(text) => serializer.serialize_str(text),
            Entry::Json(value) => value.serialize(serializer),
        }
    }
}

/// A log line's fields, in order, serialised as one JSON object.
struct Line<'a>(Vec<(&'a str, Entry<'a>)>);

impl Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, entry)| (name, entry)))
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let timestamp = rfc3339_now();
        let mut own = RecordedFields::default();
        event.record(&mut FieldsVisitor::all(&mut own));
        let spans: Vec<_> = ctx
            .event_scope()
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let mut line = vec![
            ("timestamp", Entry::Text(&timestamp)),
            ("level", Entry::Text(level_name(*event.metadata().level()))),
            ("message", Entry::Text("")),
            ("service", Entry::Text(SERVICE)),
            ("target", Entry::Text(event.metadata().target())),
        ];
        // Fields of the enclosing spans, innermost winning, then the event's own.
        let recorded = extensions
            .iter()
            .filter_map(|extensions| extensions.get::<RecordedFields>())
            .chain(std::iter::once(&own));
        for fields in recorded {
            for (name, value) in &fields.0 {
                set_field(&mut line, name, Entry::Json(value));
            }
        }
        let text = serde_json::to_string(&Line(line)).map_err(|_| fmt::Error)?;
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

/// Records fields into a list of a line's fields.
struct FieldsVisitor<'a> {
    fields: &'a mut RecordedFields,
    /// Skip dotted names (`otel.name`, `messaging.*`, …): on spans they are
    /// attributes for the tracer only, which log lines never carry, so they
    /// are not even formatted.
    skip_dotted: bool,
}

impl<'a> FieldsVisitor<'a> {
    /// Every field (an event's own).
    fn all(fields: &'a mut RecordedFields) -> Self {
        Self {
            fields,
            skip_dotted: false,
        }
    }

    /// The fields of a span that log lines carry.
    fn logged(fields: &'a mut RecordedFields) -> Self {
        Self {
            fields,
            skip_dotted: true,
        }
    }

    fn put(&mut self, field: &Field, value: impl FnOnce() -> Value) {
        if !(self.skip_dotted && field.name().contains('.')) {
            self.fields.set(field.name(), value());
        }
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, || Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, || Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, || value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, || value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, || value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, || value.into());
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

#[cfg(test)]
mod span_field_tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::CapturedLines;

    /// What `log` writes through the gateway's log layers.
    fn logged(log: impl FnOnce()) -> String {
        let captured = CapturedLines::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(SpanFields).with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(Unformatted)
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, log);
        captured.text()
    }

    #[test]
    fn lines_inside_a_span_carry_its_fields() {
        let text = logged(|| {
            let span = tracing::info_span!(
                "outer",
                otel.name = "publish default",
                messaging.system = "redis",
                job_id = "j-1",
                trace_id = tracing::field::Empty,
            );
            span.record("trace_id", "abc");
            span.in_scope(|| tracing::info!(kind = "echo", "job submitted"));
        });
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["job_id"], "j-1", "{line}");
        assert_eq!(line["trace_id"], "abc", "{line}");
        assert_eq!(line["kind"], "echo");
        assert_eq!(line["message"], "job submitted");
        // Dotted span fields are attributes for the tracer, not log fields.
        assert!(line.get("otel.name").is_none(), "{line}");
        assert!(line.get("messaging.system").is_none(), "{line}");
    }

    #[test]
    fn a_line_is_json_whatever_its_text_and_the_innermost_field_wins() {
        let awkward = "quote \" backslash \\ newline \n tab \t bell \u{7} nul \0 é 🎉";
        let text = logged(|| {
            let outer = tracing::info_span!("outer", job_id = "outer", queue = "q", attempt = 1);
            let inner = tracing::info_span!(parent: &outer, "inner", job_id = "inner");
            inner.in_scope(|| {
                tracing::warn!(
                    attempt = 2,
                    ratio = 0.5,
                    retried = true,
                    error = %awkward,
                    "{awkward}"
                )
            });
        });
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        let line: Value = serde_json::from_str(text.trim_end()).expect("one JSON object");
        assert_eq!(line["message"], awkward);
        assert_eq!(line["error"], awkward);
        assert_eq!(line["level"], "warn");
        assert_eq!(line["service"], SERVICE);
        assert_eq!(line["job_id"], "inner", "the innermost span wins: {line}");
        assert_eq!(line["queue"], "q");
        assert_eq!(line["attempt"], 2, "the event's own field wins: {line}");
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["retried"], true);
        let keys = text.matches("\"job_id\":").count();
        assert_eq!(keys, 1, "each name once: {text}");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
}
