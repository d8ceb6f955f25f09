//! One scrape's registry: typed families filled from snapshots, and a
//! histogram whose buckets were counted elsewhere (the ng engine's).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Labels of one series. Their values are names from the relay's fixed
/// lists (reasons, events, roles, the version), never request input: the
/// encoder writes them as they are.
pub type Labels = Vec<(&'static str, String)>;

/// The families of one scrape. Counter names are given without `_total`
/// and help texts without a final period: the encoder appends both
/// (OpenMetrics).
#[derive(Default)]
pub struct Scrape {
    /// Every family registered so far.
    pub registry: Registry,
}

impl Scrape {
    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A counter with one label.
    pub fn counters<L: ToString>(
        &mut self,
        name: &str,
        help: &str,
        key: &'static str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) {
        self.counters_labelled(name, help, values.into_iter().map(|(l, n)| (vec![(key, l.to_string())], n)));
    }

    /// A counter with any labels.
    pub fn counters_labelled(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, n) in values {
            family.get_or_create(&labels).inc_by(n);
        }
        self.registry.register(name, help, family);
    }

    /// An integer gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let g: Gauge = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    /// A gauge of a fraction (seconds).
    pub fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    /// An integer gauge with one label.
    pub fn gauges_by<L: ToString>(
        &mut self,
        name: &str,
        help: &str,
        key: &'static str,
        values: impl IntoIterator<Item = (L, u64)>,
    ) {
        self.gauges(name, help, values.into_iter().map(|(l, n)| (vec![(key, l.to_string())], n as i64)));
    }

    /// An integer gauge with any labels.
    pub fn gauges(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, i64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, n) in values {
            family.get_or_create(&labels).set(n);
        }
        self.registry.register(name, help, family);
    }

    /// The OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; the encoder fails only on a
        // writer's error.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A histogram counted by someone else: its buckets, count and sum as a
/// snapshot gave them.
#[derive(Debug)]
pub struct SnapshotHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone); the last bound is
    /// `f64::MAX` (+Inf).
    buckets: Vec<(f64, u64)>,
}

impl SnapshotHistogram {
    /// From cumulative bucket counts (`cumulative[i]` observations were at
    /// most `bounds[i]`), the total count and the sum.
    pub fn from_cumulative(bounds: &[f64], cumulative: &[u64], count: u64, sum: f64) -> Self {
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, n)| {
                let own = n.saturating_sub(below);
                below = below.max(*n);
                (*bound, own)
            })
            .collect();
        buckets.push((f64::MAX, count.saturating_sub(below)));
        Self { sum, count, buckets }
    }
}

impl EncodeMetric for SnapshotHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_histogram_encodes_its_cumulative_buckets_back() {
        let mut s = Scrape::default();
        s.registry.register(
            "h_seconds",
            "A histogram.",
            SnapshotHistogram::from_cumulative(&[0.1, 1.0], &[2, 5], 6, 3.5),
        );
        let text = s.encode();
        for line in [
            "# TYPE h_seconds histogram",
            "h_seconds_sum 3.5",
            "h_seconds_count 6",
            "h_seconds_bucket{le=\"0.1\"} 2",
            "h_seconds_bucket{le=\"1.0\"} 5",
            "h_seconds_bucket{le=\"+Inf\"} 6",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn counters_get_their_total_suffix_and_help_its_period() {
        let mut s = Scrape::default();
        s.counters("x_packets", "Packets", "reason", [("no_session", 7)]);
        let text = s.encode();
        assert!(text.contains("# HELP x_packets Packets.\n# TYPE x_packets counter\n"), "{text}");
        assert!(text.contains("x_packets_total{reason=\"no_session\"} 7\n"), "{text}");
    }
}
