//! Latency histograms (HdrHistogram, microsecond resolution, 3 significant
//! digits) and the few numbers a report takes from them.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// Latencies in microseconds, from 1 µs to one hour.
pub struct Lat(Histogram<u64>);

impl Default for Lat {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Lat {
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record((ns / 1000).max(1));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub fn q_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.max() as f64 / 1000.0 }
    }

    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.mean() / 1000.0 }
    }

    pub fn add(&mut self, other: &Lat) {
        self.0.add(&other.0).expect("same bounds");
    }

    /// `{prefix}p50_ms`, `p90`, `p99`, `p999`, `max`, `mean` into `out`.
    pub fn put(&self, out: &mut Map<String, Value>, prefix: &str) {
        out.insert(format!("{prefix}p50_ms"), json!(round3(self.q_ms(0.50))));
        out.insert(format!("{prefix}p90_ms"), json!(round3(self.q_ms(0.90))));
        out.insert(format!("{prefix}p99_ms"), json!(round3(self.q_ms(0.99))));
        out.insert(format!("{prefix}p999_ms"), json!(round3(self.q_ms(0.999))));
        out.insert(format!("{prefix}max_ms"), json!(round3(self.max_ms())));
        out.insert(format!("{prefix}mean_ms"), json!(round3(self.mean_ms())));
    }
}

/// Round to 3 decimals so reports stay readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_out_in_milliseconds() {
        let mut l = Lat::default();
        for i in 1..=100u64 {
            l.record_ns(i * 1_000_000);
        }
        assert_eq!(l.count(), 100);
        assert!((l.q_ms(0.5) - 50.0).abs() < 0.1);
        assert!((l.q_ms(0.99) - 99.0).abs() < 0.1);
        assert!((l.max_ms() - 100.0).abs() < 0.1);
        let mut m = Map::new();
        l.put(&mut m, "ack_");
        assert!(m.contains_key("ack_p99_ms"));
        assert_eq!(Lat::default().q_ms(0.5), 0.0);
    }
}
