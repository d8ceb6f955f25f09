//! Conventional `process_*` metrics from /proc/self.

use prometheus_client::metrics::counter::Counter;

use super::families::Scrape;

/// USER_HZ on Linux: /proc's CPU times are in these ticks.
const TICKS: f64 = 100.0;

/// Registers CPU time, start time, memory and file descriptors.
pub fn register(s: &mut Scrape) {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) start at ") ".
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime = field 14, stime = 15, starttime = 22 (1-based, from the pid).
            let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            cpu.inc_by((num(11) + num(12)) / TICKS);
            s.registry.register("process_cpu_seconds", "User and system CPU time spent, seconds", cpu);
            if let Some(boot) = boot_time() {
                s.gauge_f64(
                    "process_start_time_seconds",
                    "Start time since the Unix epoch, seconds",
                    boot + num(19) / TICKS,
                );
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| {
            status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        };
        if let Some(rss) = kib("VmRSS:") {
            s.gauge("process_resident_memory_bytes", "Resident memory, bytes", rss * 1024);
        }
        if let Some(vsz) = kib("VmSize:") {
            s.gauge("process_virtual_memory_bytes", "Virtual memory, bytes", vsz * 1024);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        s.gauge("process_open_fds", "Open file descriptors", fds.count() as i64);
    }
    if let Some(max) = max_fds() {
        s.gauge("process_max_fds", "Maximum number of open file descriptors (soft limit)", max);
    }
}

/// The system's boot time, seconds since the Unix epoch.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find(|l| l.starts_with("btime "))?.split(' ').nth(1)?.parse().ok()
}

/// The soft limit of open file descriptors.
fn max_fds() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
