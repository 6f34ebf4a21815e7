//! Prometheus metrics without a registry: atomic counters, gauges and fixed-bucket
//! histograms that services keep in plain structs, and a writer for the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A monotonically rising count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Moves the value by `d` (negative goes down).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Latency buckets in seconds, from 100 µs to 10 s: upgrades, handshakes, probes.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// A histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// Builds one Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {}", c.get());
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: i64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {v}");
    }

    /// A gauge whose value has a fraction (seconds).
    pub fn gauge_f64(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {v}");
    }

    /// One metric with a label, one line per `(label value, value)`.
    pub fn labeled<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, kind, help);
        for (l, v) in values {
            let _ = writeln!(self.out, "{name}{{{label}=\"{}\"}} {v}", escape(l));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = h.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {count}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Reads one unlabeled sample from a text exposition: what tests and tools use to check a
/// metric without a Prometheus client.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let c = Counter::default();
        c.add(3);
        let h = Histogram::default();
        h.observe(std::time::Duration::from_millis(2));
        let mut e = Exposition::new();
        e.counter("x_total", "x", &c);
        e.gauge("g", "g", -2);
        e.gauge_f64("s", "s", 1.5);
        e.labeled("l_total", "counter", "l", "code", [("a\"b", 1)]);
        e.histogram("h_seconds", "h", &h);
        let t = e.finish();
        assert_eq!(sample(&t, "x_total"), Some(3.0));
        assert_eq!(sample(&t, "g"), Some(-2.0));
        assert_eq!(sample(&t, "s"), Some(1.5));
        assert_eq!(sample(&t, "h_seconds_count"), Some(1.0));
        assert!(t.contains("h_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(t.contains("l_total{code=\"a\\\"b\"} 1"));
    }
}
