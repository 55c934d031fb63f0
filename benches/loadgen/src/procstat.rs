//! CPU time and memory of the processes under test, read from `/proc`:
//! `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (`VmRSS`).
//! Peak RSS is sampled during the scenario (`VmHWM` would be the peak since
//! the process started, not during this scenario).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often RSS is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (or `self`), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of stat(5) is fields[0]; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy clock ticks of the whole machine (all CPUs): user, nice, system,
/// irq, softirq and steal from the first line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| ticks.get(i))
            .sum(),
    )
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `VmRSS` of `pid`, in KiB.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds used by a set of processes between two points.
#[derive(Debug, Clone)]
struct CpuMeter {
    pids: Vec<String>,
    start: Vec<Option<u64>>,
}

impl CpuMeter {
    fn new(pids: Vec<String>) -> Self {
        let start = pids.iter().map(|pid| cpu_ticks(pid)).collect();
        Self { pids, start }
    }

    /// Seconds since [`CpuMeter::new`]; `None` when no pid was readable.
    fn seconds(&self, ticks_per_second: f64) -> Option<f64> {
        let mut total = 0u64;
        let mut any = false;
        for (pid, start) in self.pids.iter().zip(&self.start) {
            if let (Some(start), Some(now)) = (start, cpu_ticks(pid)) {
                total += now.saturating_sub(*start);
                any = true;
            }
        }
        any.then(|| total as f64 / ticks_per_second)
    }
}

/// What one scenario cost the processes under test.
#[derive(Debug, Clone, Default)]
pub(crate) struct Usage {
    pub(crate) gateway_cpu_s: Option<f64>,
    pub(crate) gateway_peak_rss_kb: Option<u64>,
    pub(crate) gateway_rss_start_kb: Option<u64>,
    pub(crate) gateway_rss_end_kb: Option<u64>,
    pub(crate) redis_cpu_s: Option<f64>,
    pub(crate) worker_cpu_s: Option<f64>,
    pub(crate) loadgen_cpu_s: Option<f64>,
    /// CPU time of everything else on the machine meanwhile: other
    /// processes competing for the same cores make the figures worse.
    pub(crate) other_cpu_s: Option<f64>,
    /// The 1-minute load average when the scenario started.
    pub(crate) load_average: Option<f64>,
}

/// Started before a scenario, finished after it.
#[derive(Debug)]
pub(crate) struct Watch {
    ticks_per_second: f64,
    gateway_pid: Option<u32>,
    gateway: CpuMeter,
    redis: CpuMeter,
    workers: CpuMeter,
    loadgen: CpuMeter,
    machine_start: Option<u64>,
    load_average: Option<f64>,
    rss_start_kb: Option<u64>,
    peak_kb: Arc<AtomicU64>,
    sampler: Option<JoinHandle<()>>,
}

impl Watch {
    pub(crate) fn start(
        gateway_pid: Option<u32>,
        redis_pid: Option<u32>,
        worker_pids: &[u32],
    ) -> Self {
        let to_pids = |pids: &mut dyn Iterator<Item = u32>| pids.map(|p| p.to_string()).collect();
        let peak_kb = Arc::new(AtomicU64::new(0));
        let rss_start_kb = gateway_pid.and_then(rss_kb);
        let sampler = gateway_pid.map(|pid| {
            let peak_kb = Arc::clone(&peak_kb);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
                loop {
                    tick.tick().await;
                    match rss_kb(pid) {
                        Some(kb) => {
                            peak_kb.fetch_max(kb, Ordering::Relaxed);
                        }
                        None => return,
                    }
                }
            })
        });
        Self {
            ticks_per_second: clock_ticks_per_second(),
            gateway_pid,
            gateway: CpuMeter::new(to_pids(&mut gateway_pid.into_iter())),
            redis: CpuMeter::new(to_pids(&mut redis_pid.into_iter())),
            workers: CpuMeter::new(to_pids(&mut worker_pids.iter().copied())),
            loadgen: CpuMeter::new(vec!["self".to_owned()]),
            machine_start: machine_busy_ticks(),
            load_average: load_average(),
            rss_start_kb,
            peak_kb,
            sampler,
        }
    }

    /// The gateway's RSS now (KiB).
    pub(crate) fn gateway_rss_kb(&self) -> Option<u64> {
        self.gateway_pid.and_then(rss_kb)
    }

    pub(crate) fn finish(mut self) -> Usage {
        let end_kb = self.gateway_rss_kb();
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
        let sampled = self.peak_kb.load(Ordering::Relaxed);
        let peak = [self.rss_start_kb, end_kb, (sampled > 0).then_some(sampled)]
            .into_iter()
            .flatten()
            .max();
        let tps = self.ticks_per_second;
        let gateway_cpu_s = self.gateway.seconds(tps);
        let redis_cpu_s = self.redis.seconds(tps);
        let worker_cpu_s = self.workers.seconds(tps);
        let loadgen_cpu_s = self.loadgen.seconds(tps);
        let machine_cpu_s = match (self.machine_start, machine_busy_ticks()) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start) as f64 / tps),
            _ => None,
        };
        let ours: f64 = [gateway_cpu_s, redis_cpu_s, worker_cpu_s, loadgen_cpu_s]
            .into_iter()
            .flatten()
            .sum();
        Usage {
            gateway_cpu_s,
            gateway_peak_rss_kb: peak,
            gateway_rss_start_kb: self.rss_start_kb,
            gateway_rss_end_kb: end_kb,
            redis_cpu_s,
            worker_cpu_s,
            loadgen_cpu_s,
            other_cpu_s: machine_cpu_s.map(|machine| (machine - ours).max(0.0)),
            load_average: self.load_average,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_ticks("self").is_some());
        assert!(machine_busy_ticks().is_some());
        assert!(load_average().is_some());
        assert!(rss_kb(std::process::id()).is_some_and(|kb| kb > 0));
    }
}
