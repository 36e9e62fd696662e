//! CPU time and resident memory of the processes of a run, from /proc.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One process's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub node: String,
    /// CPU seconds (user + system) spent during the run.
    pub cpu_s: f64,
    /// Resident memory when the run started.
    pub rss_start_mib: f64,
    /// Highest resident memory seen during the run.
    pub rss_peak_mib: f64,
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// user + system CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// CPU seconds of `root` (with its waited-for children) and of every live
/// process whose parent it is: a PostgreSQL server and its backends.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let fields = |pid: u32| -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        // From the state field: ppid is 1, utime..cstime are 11..14.
        let f: Vec<&str> = rest.split_whitespace().collect();
        [1usize, 11, 12, 13, 14]
            .iter()
            .map(|i| f.get(*i).and_then(|v| v.parse().ok()))
            .collect()
    };
    let mut ticks = fields(root).map_or(0, |f| f[1] + f[2] + f[3] + f[4]);
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(f) = fields(pid)
                && f[0] == u64::from(root)
            {
                ticks += f[1] + f[2];
            }
        }
    }
    ticks as f64 / ticks_per_second()
}

/// A `/proc/{pid}/status` field given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// The highest resident memory of `pid` since its start or since the last
/// [`reset_peak`], in bytes: the kernel's own high-water mark, which sees a
/// spike between two samples too.
pub fn peak_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

/// Sets the kernel's high-water mark of `pid` to its memory now (Linux 4.0 and
/// later: `5` in `clear_refs`, which clears nothing else). False where it cannot
/// (not our process, or an older kernel).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// The peak resident memory of some processes over a stretch of a run: the
/// kernel's high-water mark, reset when the stretch starts, and where it could
/// not be reset, samples every 20 ms (which can miss a spike between two).
pub struct Sampler {
    procs: Vec<(String, u32, f64, u64, bool)>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Sampler {
    /// Samplers of one process must not overlap: each start resets its mark.
    pub fn start(procs: &[(String, u32)]) -> Self {
        let procs: Vec<(String, u32, f64, u64, bool)> = procs
            .iter()
            .map(|(n, pid)| {
                let reset = reset_peak(*pid);
                (
                    n.clone(),
                    *pid,
                    cpu_seconds(*pid).unwrap_or(0.0),
                    rss_bytes(*pid).unwrap_or(0),
                    reset,
                )
            })
            .collect();
        let pids: Vec<u32> = procs.iter().map(|p| p.1).collect();
        let mut peaks: Vec<u64> = procs.iter().map(|p| p.3).collect();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_bytes(*pid).unwrap_or(0));
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return peaks,
                }
            }
        });
        Self { procs, stop, task }
    }

    /// [`finish`](Self::finish) for one process: its peak, in bytes.
    pub async fn finish_peak_bytes(self) -> f64 {
        self.finish()
            .await
            .first()
            .map_or(0.0, |u| u.rss_peak_mib * MIB)
    }

    pub async fn finish(self) -> Vec<Usage> {
        let _ = self.stop.send(true);
        let peaks = self.task.await.unwrap_or_default();
        self.procs
            .into_iter()
            .enumerate()
            .map(|(k, (node, pid, cpu0, rss0, reset))| {
                let now = rss_bytes(pid).unwrap_or(0);
                let hwm = if reset { peak_bytes(pid) } else { None };
                let peak = peaks.get(k).copied().unwrap_or(0).max(now);
                Usage {
                    node,
                    cpu_s: cpu_seconds(pid).map(|c| c - cpu0).unwrap_or(0.0),
                    rss_start_mib: rss0 as f64 / MIB,
                    rss_peak_mib: peak.max(hwm.unwrap_or(0)) as f64 / MIB,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both tests sample this process, and a sampler's start resets its mark:
    /// one at a time where tests share a process (`cargo test`).
    static ME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn this_process_has_cpu_time_and_memory() {
        let _me = ME.lock().await;
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let s = Sampler::start(&[("me".into(), me)]);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let u = s.finish().await;
        assert_eq!(u[0].node, "me");
        assert!(u[0].cpu_s > 0.0, "{u:?}");
        assert!(u[0].rss_peak_mib >= u[0].rss_start_mib * 0.5, "{u:?}");
    }

    /// A spike of memory freed before any sample is still the peak, and a
    /// reset forgets a spike before it.
    #[tokio::test]
    async fn a_spike_between_samples_is_the_peak_and_a_reset_forgets_an_earlier_one() {
        const SPIKE: usize = 96 << 20;
        let _me = ME.lock().await;
        let me = std::process::id();
        let spike = || {
            // Touched, so resident; large, so given back to the kernel when freed.
            let v = vec![1u8; SPIKE];
            std::hint::black_box(&v);
        };
        spike();
        let s = Sampler::start(&[("me".into(), me)]);
        let before = rss_bytes(me).unwrap() as f64 / MIB;
        spike();
        let u = s.finish().await;
        assert!(
            u[0].rss_peak_mib >= before + 80.0,
            "the spike: {u:?}, {before:.1} MiB before"
        );
        let s = Sampler::start(&[("me".into(), me)]);
        let u = s.finish().await;
        assert!(
            u[0].rss_peak_mib < before + 48.0,
            "the spike before the reset is forgotten: {u:?}, {before:.1} MiB before"
        );
    }
}
