//! ng command counters and latency histogram, for `statistics` and the
//! Prometheus exposition (`ucmrc_ng_*`). Atomics: commands run on many
//! tasks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::commands::KINDS;

/// Results of a command.
pub const RESULTS: [&str; 2] = ["ok", "error"];

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// Counters of handled commands.
#[derive(Debug, Default)]
pub struct NgStats {
    counts: [[AtomicU64; RESULTS.len()]; KINDS],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    total: AtomicU64,
    /// Offers refused (the call was not set up).
    pub rejected_offers: AtomicU64,
    /// Calls deleted by a command.
    pub deleted_calls: AtomicU64,
    /// `direction` names that matched no interface (the default one was used).
    pub unknown_directions: AtomicU64,
    /// Keys and flags no option of the table knows (without effect).
    pub unknown_options: AtomicU64,
}

/// A copy of [`NgStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NgStatsSnapshot {
    /// `counts[kind][result]`: kinds as [`super::commands::kind`] counts
    /// them, results like [`RESULTS`].
    pub counts: [[u64; RESULTS.len()]; KINDS],
    /// Cumulative bucket counts, like [`BUCKETS`].
    pub buckets: [u64; BUCKETS.len()],
    /// Sum of latencies, seconds.
    pub sum_seconds: f64,
    /// Commands handled.
    pub total: u64,
    /// Offers refused.
    pub rejected_offers: u64,
    /// Calls deleted by a command.
    pub deleted_calls: u64,
    /// `direction` names that matched no interface.
    pub unknown_directions: u64,
    /// Keys and flags no option knows.
    pub unknown_options: u64,
}

impl NgStats {
    /// Records one handled command.
    pub fn record(&self, command: usize, ok: bool, elapsed: Duration) {
        let command = command.min(KINDS - 1);
        self.counts[command][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(elapsed.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> NgStatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NgStatsSnapshot {
            counts: std::array::from_fn(|c| std::array::from_fn(|r| load(&self.counts[c][r]))),
            buckets: std::array::from_fn(|i| load(&self.buckets[i])),
            sum_seconds: load(&self.sum_micros) as f64 / 1e6,
            total: load(&self.total),
            rejected_offers: load(&self.rejected_offers),
            deleted_calls: load(&self.deleted_calls),
            unknown_directions: load(&self.unknown_directions),
            unknown_options: load(&self.unknown_options),
        }
    }
}

impl NgStatsSnapshot {
    /// Commands of counted kind `kind`, any result.
    pub fn count(&self, kind: usize) -> u64 {
        self.counts.get(kind).map_or(0, |r| r.iter().sum())
    }

    /// Commands that ended in an error.
    pub fn errors(&self) -> u64 {
        self.counts.iter().map(|r| r[1]).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::commands::kind;
    use super::*;

    #[test]
    fn records_by_command_result_and_latency() {
        let s = NgStats::default();
        s.record(kind("offer"), true, Duration::from_micros(200));
        s.record(kind("offer"), false, Duration::from_millis(3));
        s.record(kind("no such command"), true, Duration::from_secs(5));
        let snap = s.snapshot();
        assert_eq!(snap.counts[1], [1, 1]);
        assert_eq!(snap.count(kind("no such command")), 1);
        assert_eq!((snap.total, snap.errors()), (3, 1));
        assert_eq!(snap.buckets[1], 1, "200 µs is within 250 µs");
        assert_eq!(snap.buckets[5], 2, "3 ms is within 5 ms");
        assert_eq!(snap.buckets[9], 2, "5 s is above every bucket");
    }
}
