//! The result of one scenario (a table row and a JSON object), targets,
//! and `--mode report`: one table for many scenarios.

use std::fmt::Write as _;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::cli::Cli;
use crate::procstat::Usage;
use crate::stats::Recorder;

/// One scenario's figures. Latencies are in ms; absent values are `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) mode: String,
    /// Jobs completed (fanout: events delivered to watchers).
    pub(crate) jobs: u64,
    pub(crate) errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) duration_s: f64,
    pub(crate) jobs_per_s: Option<f64>,
    /// Latency samples in the percentiles.
    pub(crate) samples: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) p999_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    pub(crate) mean_ms: Option<f64>,
    /// HTTP requests or WebSocket frames sent to the gateway.
    pub(crate) requests: u64,
    pub(crate) requests_per_job: Option<f64>,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) sessions: Option<usize>,
    pub(crate) sse_streams: Option<usize>,
    pub(crate) gateway_cpu_s: Option<f64>,
    pub(crate) gateway_peak_rss_kb: Option<u64>,
    pub(crate) gateway_rss_start_kb: Option<u64>,
    pub(crate) gateway_rss_end_kb: Option<u64>,
    pub(crate) rss_per_session_kb: Option<f64>,
    pub(crate) redis_cpu_s: Option<f64>,
    pub(crate) worker_cpu_s: Option<f64>,
    pub(crate) loadgen_cpu_s: Option<f64>,
    /// CPU time used meanwhile by processes outside the benchmark.
    pub(crate) other_cpu_s: Option<f64>,
    /// 1-minute load average at the start of the scenario.
    pub(crate) load_average: Option<f64>,
    /// The targets checked, as given (`p99_ms<=3, …`).
    pub(crate) target: Option<String>,
    pub(crate) target_met: Option<bool>,
    /// Another scenario this one is compared with (`--mode report`).
    pub(crate) compare_with: Option<String>,
    /// This scenario's mean latency over the other's.
    pub(crate) latency_ratio: Option<f64>,
    /// This scenario's requests per job over the other's.
    pub(crate) requests_ratio: Option<f64>,
    pub(crate) error_samples: Vec<String>,
    pub(crate) note: Option<String>,
    /// Figures only some modes have.
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

impl Report {
    /// Builds the report of a finished scenario.
    pub(crate) fn new(cli: &Cli, recorder: &Recorder, usage: Usage) -> Self {
        let histogram = &recorder.latency;
        let samples = histogram.len();
        let quantile = |q: f64| (samples > 0).then(|| ms(histogram.value_at_quantile(q)));
        let window = recorder.window().map(|w| w.as_secs_f64());
        let jobs_per_s = window
            .filter(|w| *w > 0.0)
            .map(|w| round(recorder.completed as f64 / w, 1));
        Self {
            scenario: cli.scenario_name(),
            mode: cli.mode.name().to_owned(),
            jobs: recorder.completed,
            errors: recorder.errors,
            timeouts: recorder.timeouts,
            duration_s: round(window.unwrap_or(0.0), 3),
            jobs_per_s,
            samples,
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: (samples > 0).then(|| ms(histogram.max())),
            mean_ms: (samples > 0).then(|| round(histogram.mean() / 1000.0, 3)),
            requests: recorder.requests,
            requests_per_job: (recorder.completed > 0)
                .then(|| round(recorder.requests as f64 / recorder.completed as f64, 2)),
            concurrency: cli.concurrency,
            rate: cli.rate,
            sessions: None,
            sse_streams: None,
            gateway_cpu_s: usage.gateway_cpu_s.map(|s| round(s, 2)),
            gateway_peak_rss_kb: usage.gateway_peak_rss_kb,
            gateway_rss_start_kb: usage.gateway_rss_start_kb,
            gateway_rss_end_kb: usage.gateway_rss_end_kb,
            rss_per_session_kb: None,
            redis_cpu_s: usage.redis_cpu_s.map(|s| round(s, 2)),
            worker_cpu_s: usage.worker_cpu_s.map(|s| round(s, 2)),
            loadgen_cpu_s: usage.loadgen_cpu_s.map(|s| round(s, 2)),
            other_cpu_s: usage.other_cpu_s.map(|s| round(s, 2)),
            load_average: usage.load_average,
            target: None,
            target_met: None,
            compare_with: cli.compare_with.clone(),
            latency_ratio: None,
            requests_ratio: None,
            error_samples: recorder.error_samples.clone(),
            note: cli.note.clone(),
            extra: serde_json::Map::new(),
        }
    }

    /// Checks `--target`s against the figures.
    pub(crate) fn check_targets(&mut self, targets: &[String]) -> anyhow::Result<()> {
        if targets.is_empty() {
            return Ok(());
        }
        let figures = serde_json::to_value(&*self)?;
        let mut met = true;
        for text in targets {
            met &= Target::parse(text)?.holds(&figures);
        }
        self.target = Some(targets.join(", "));
        self.target_met = Some(met);
        Ok(())
    }
}

/// `<field><=<value>` or `<field>>=<value>` over a report's JSON fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    field: String,
    at_most: bool,
    value: f64,
}

impl Target {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let (field, at_most, value) = if let Some((field, value)) = text.split_once("<=") {
            (field, true, value)
        } else if let Some((field, value)) = text.split_once(">=") {
            (field, false, value)
        } else {
            anyhow::bail!("target {text:?} is not <field><=<value> or <field>>=<value>");
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("target {text:?}: {value:?} is not a number"))?;
        Ok(Self {
            field: field.trim().to_owned(),
            at_most,
            value,
        })
    }

    /// Whether the figure holds; a missing figure does not.
    fn holds(&self, figures: &serde_json::Value) -> bool {
        let Some(actual) = figures.get(&self.field).and_then(serde_json::Value::as_f64) else {
            return false;
        };
        if self.at_most {
            actual <= self.value
        } else {
            actual >= self.value
        }
    }
}

fn cell<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn fixed(value: Option<f64>, places: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
}

/// The table of `reports`, one row each, then the comparisons.
pub(crate) fn table(reports: &[Report]) -> String {
    let header = [
        "scenario",
        "jobs",
        "jobs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "gw cpu s",
        "other cpu s",
        "gw peak MB",
        "KB/session",
        "target",
        "met",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.jobs.to_string(),
                fixed(r.jobs_per_s, 0),
                fixed(r.p50_ms, 2),
                fixed(r.p90_ms, 2),
                fixed(r.p99_ms, 2),
                fixed(r.p999_ms, 2),
                fixed(r.max_ms, 2),
                r.errors.to_string(),
                fixed(r.gateway_cpu_s, 2),
                fixed(r.other_cpu_s, 1),
                fixed(r.gateway_peak_rss_kb.map(|kb| kb as f64 / 1024.0), 1),
                fixed(r.rss_per_session_kb, 1),
                r.target.clone().unwrap_or_else(|| "-".to_owned()),
                match r.target_met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            // Names and targets left-aligned, figures right-aligned.
            if matches!(header[i], "scenario" | "target") {
                let _ = write!(text, "{cell}{} ", " ".repeat(pad));
            } else {
                let _ = write!(text, "{}{cell} ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &header.map(str::to_owned));
    line(
        &mut out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for row in &rows {
        line(&mut out, row);
    }
    for r in reports {
        if let (Some(other), Some(latency)) = (&r.compare_with, r.latency_ratio) {
            let _ = writeln!(
                out,
                "{} vs {}: mean latency {:.0}x, requests per job {}x",
                r.scenario,
                other,
                latency,
                cell(r.requests_ratio)
            );
        }
    }
    out
}

/// Fills `latency_ratio` and `requests_ratio` of scenarios that name
/// another with `compare_with`.
pub(crate) fn compare(reports: &mut [Report]) {
    let baselines: Vec<(String, Option<f64>, Option<f64>)> = reports
        .iter()
        .map(|r| (r.scenario.clone(), r.mean_ms, r.requests_per_job))
        .collect();
    for report in reports.iter_mut() {
        let Some(name) = &report.compare_with else {
            continue;
        };
        let Some((_, mean, requests)) = baselines.iter().find(|(n, _, _)| n == name) else {
            continue;
        };
        report.latency_ratio = match (report.mean_ms, mean) {
            (Some(this), Some(other)) if *other > 0.0 => Some(round(this / other, 1)),
            _ => None,
        };
        report.requests_ratio = match (report.requests_per_job, requests) {
            (Some(this), Some(other)) if *other > 0.0 => Some(round(this / other, 2)),
            _ => None,
        };
    }
}

/// `--mode report`: reads scenario objects (one per line), prints the table
/// and writes them as one JSON array to `--output`.
pub(crate) fn run(cli: &Cli) -> anyhow::Result<()> {
    let input = cli
        .input
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--mode report needs --input"))?;
    let file = std::fs::File::open(input)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
    let mut reports = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        reports.push(serde_json::from_str::<Report>(&line)?);
    }
    compare(&mut reports);
    print!("{}", table(&reports));
    if let Some(output) = &cli.output {
        if let Some(parent) = output.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(output, serde_json::to_string_pretty(&reports)? + "\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_targets() {
        let report = Report {
            p99_ms: Some(2.5),
            jobs_per_s: Some(900.0),
            ..Report::default()
        };
        let figures = serde_json::to_value(&report).expect("json");
        assert!(Target::parse("p99_ms<=3").expect("valid").holds(&figures));
        assert!(
            !Target::parse("jobs_per_s>=1000")
                .expect("valid")
                .holds(&figures)
        );
        assert!(!Target::parse("p50_ms<=1").expect("valid").holds(&figures));
        assert!(Target::parse("p99_ms=3").is_err());
    }

    #[test]
    fn compares_with_a_baseline() {
        let mut reports = vec![
            Report {
                scenario: "push".into(),
                mean_ms: Some(2.0),
                requests_per_job: Some(1.0),
                ..Report::default()
            },
            Report {
                scenario: "poll".into(),
                mean_ms: Some(2000.0),
                requests_per_job: Some(2.0),
                compare_with: Some("push".into()),
                ..Report::default()
            },
        ];
        compare(&mut reports);
        assert_eq!(reports[1].latency_ratio, Some(1000.0));
        assert_eq!(reports[1].requests_ratio, Some(2.0));
        assert!(table(&reports).contains("poll vs push"));
    }
}
