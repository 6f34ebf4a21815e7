//! The run report: the JSON file (`--json`), the final table, and `merge` of shard reports.
//! Histograms travel inside the JSON as base64 of HdrHistogram's V2 encoding, so merged
//! percentiles are exact, not averages of percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::checker::Verdict;

/// Bumped when a field changes meaning, so `merge` refuses reports it cannot add up.
pub const REPORT_VERSION: u32 = 1;

/// Latencies in µs from 1 µs to 10 minutes at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).expect("V2 serialization into a Vec cannot fail");
    STANDARD.encode(buf)
}

pub fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(text).context("histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram does not decode: {e:?}"))?;
    Ok(h)
}

/// Percentiles of one histogram, in µs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A latency distribution: its summary plus the histogram itself for exact merging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    #[serde(flatten)]
    pub summary: Summary,
    /// Base64 of the HdrHistogram V2 encoding (µs).
    pub hist: String,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self { summary: Summary::of(h), hist: encode_histogram(h) }
    }

    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        decode_histogram(&self.hist)
    }
}

/// The connect phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by cause: `refused`, `timeout`, `http_503`, `no_source_port`, ...
    pub failures: BTreeMap<String, u64>,
    /// From the TCP connect to the welcome (or Socket.IO join ack).
    pub latency_us: Latency,
}

/// The load client's own CPU (from /proc/self/stat), next to its wall time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
    pub total_s: f64,
}

/// How connections came back after a close (`--reconnect` runs only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconnects {
    /// Attempts to come back, successful or not.
    pub attempts: u64,
    /// Attempts that got a welcome.
    pub back: u64,
    /// Failed attempts by cause (`refused`, `http_503`, `timeout`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Connections that used up `--reconnect-attempts`.
    pub gave_up: u64,
    /// Time to re-home: from the close (or break) to the next welcome, back-off included.
    pub rehome_us: Latency,
    /// From the dial of the attempt that got in to its welcome.
    pub connect_us: Latency,
}

impl Default for Latency {
    fn default() -> Self {
        Self::of(&new_histogram())
    }
}

/// One run (or several merged shards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub dialect: String,
    pub url: String,
    /// `K/N` of every shard this report holds; `["0/1"]` for a whole run.
    pub shards: Vec<String>,
    /// Connections this report planned (its shards' part of `--conns`).
    pub conns: u64,
    pub rooms: u64,
    pub dist: String,
    pub rate: f64,
    pub senders: u32,
    pub size: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connect: Connect,
    /// Connections still open when the run ended, before the client closed them.
    pub held: u64,
    /// Connections the server closed or that broke during the run, by cause (`close_1008`, ...).
    pub disconnects: BTreeMap<String, u64>,
    /// `error` frames received, by code.
    pub server_errors: BTreeMap<String, u64>,
    pub published: u64,
    pub acked: u64,
    /// Messages received, warmup and drain included.
    pub delivered: u64,
    /// Messages received that were sent inside the measured window (after warmup).
    pub delivered_measured: u64,
    pub measured_s: f64,
    /// `delivered_measured / measured_s`; merged reports add shards' rates (they run at once).
    pub deliveries_per_s: f64,
    /// End-to-end latency of measured deliveries: receive time minus the body's send stamp.
    pub latency_us: Latency,
    pub check: Verdict,
    /// Present with `--reconnect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<Reconnects>,
    pub cpu: Cpu,
    pub wall_s: f64,
    /// No loss, duplicate, reorder or unacked publish.
    pub ok: bool,
}

impl Reconnects {
    fn merged(mut self, o: &Reconnects) -> anyhow::Result<Self> {
        self.attempts += o.attempts;
        self.back += o.back;
        add_maps(&mut self.failures, &o.failures);
        self.gave_up += o.gave_up;
        for (mine, theirs) in
            [(&mut self.rehome_us, &o.rehome_us), (&mut self.connect_us, &o.connect_us)]
        {
            let mut h = mine.histogram()?;
            h.add(theirs.histogram()?).context("merging reconnect latency")?;
            *mine = Latency::of(&h);
        }
        Ok(self)
    }
}

fn add_maps(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl Report {
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let report: Report = serde_json::from_str(text).context("not a loadtest report")?;
        if report.version != REPORT_VERSION {
            bail!("report version {} (this loadtest reads {REPORT_VERSION})", report.version);
        }
        Ok(report)
    }

    /// Combines shard reports of one scenario: counts add up, histograms merge exactly.
    pub fn merge(reports: &[Report]) -> anyhow::Result<Report> {
        let Some((first, rest)) = reports.split_first() else { bail!("nothing to merge") };
        let mut out = first.clone();
        let mut connect = first.connect.latency_us.histogram()?;
        let mut latency = first.latency_us.histogram()?;
        for r in rest {
            if (r.dialect.as_str(), r.rooms, r.dist.as_str())
                != (&*out.dialect, out.rooms, &*out.dist)
            {
                bail!(
                    "reports of different scenarios: {} {} rooms {} vs {} {} rooms {}",
                    out.dialect,
                    out.rooms,
                    out.dist,
                    r.dialect,
                    r.rooms,
                    r.dist
                );
            }
            out.shards.extend(r.shards.iter().cloned());
            out.conns += r.conns;
            out.connect.attempted += r.connect.attempted;
            out.connect.connected += r.connect.connected;
            out.connect.failed += r.connect.failed;
            add_maps(&mut out.connect.failures, &r.connect.failures);
            connect.add(r.connect.latency_us.histogram()?).context("merging connect latency")?;
            out.held += r.held;
            add_maps(&mut out.disconnects, &r.disconnects);
            add_maps(&mut out.server_errors, &r.server_errors);
            out.published += r.published;
            out.acked += r.acked;
            out.delivered += r.delivered;
            out.delivered_measured += r.delivered_measured;
            out.measured_s = out.measured_s.max(r.measured_s);
            out.deliveries_per_s += r.deliveries_per_s;
            latency.add(r.latency_us.histogram()?).context("merging latency")?;
            out.check.merge(&r.check);
            out.reconnect = match (out.reconnect.take(), &r.reconnect) {
                (Some(a), Some(b)) => Some(a.merged(b)?),
                (a, b) => a.or_else(|| b.clone()),
            };
            out.cpu.user_s += r.cpu.user_s;
            out.cpu.system_s += r.cpu.system_s;
            out.cpu.total_s += r.cpu.total_s;
            out.wall_s = out.wall_s.max(r.wall_s);
        }
        out.connect.latency_us = Latency::of(&connect);
        out.latency_us = Latency::of(&latency);
        out.ok = out.check.is_clean();
        Ok(out)
    }

    /// The human table printed at the end of a run or a merge.
    pub fn table(&self, room_name: impl Fn(u32) -> String) -> String {
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<22} {v}");
        };
        row("dialect / shards", format!("{} / {}", self.dialect, self.shards.join(",")));
        row("rooms / dist", format!("{} / {}", self.rooms, self.dist));
        row(
            "connected",
            format!("{} of {} (held at end {})", self.connect.connected, self.conns, self.held),
        );
        let causes: Vec<String> =
            self.connect.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("connect failures", format!("{} {}", self.connect.failed, causes.join(" ")));
        let c = &self.connect.latency_us.summary;
        row("connect latency", format!("p50 {} p99 {} max {}", ms(c.p50), ms(c.p99), ms(c.max)));
        if !self.disconnects.is_empty() {
            let d: Vec<String> = self.disconnects.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row("disconnects", d.join(" "));
        }
        if !self.server_errors.is_empty() {
            let d: Vec<String> =
                self.server_errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row("server errors", d.join(" "));
        }
        row("published / acked", format!("{} / {}", self.published, self.acked));
        row("delivered", format!("{} ({} measured)", self.delivered, self.delivered_measured));
        row("deliveries/s", format!("{:.0} over {:.1} s", self.deliveries_per_s, self.measured_s));
        let l = &self.latency_us.summary;
        row(
            "latency",
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {}",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            ),
        );
        let v = &self.check;
        if let (Some(r), Some(w)) = (&self.reconnect, &v.resumes) {
            let mut causes: Vec<String> =
                r.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if causes.is_empty() {
                causes.push("none".into());
            }
            row(
                "reconnects",
                format!(
                    "{} back of {} attempts (failed {}; gave up {}, not back {})",
                    r.back,
                    r.attempts,
                    causes.join(" "),
                    r.gave_up,
                    w.not_back
                ),
            );
            row(
                "resumed welcomes",
                format!(
                    "recovered {} / not recovered {} / without epoch {} (publishes cut {})",
                    w.recovered, w.not_recovered, w.fresh, w.cut
                ),
            );
            let h = &r.rehome_us.summary;
            row(
                "re-home close->welcome",
                format!("p50 {} p99 {} max {}", ms(h.p50), ms(h.p99), ms(h.max)),
            );
            let h = &r.connect_us.summary;
            row(
                "re-home dial->welcome",
                format!("p50 {} p99 {} max {}", ms(h.p50), ms(h.p99), ms(h.max)),
            );
        }
        row(
            "loss / dup / reorder",
            format!(
                "{} / {} / {} (unacked {}) over {} receivers",
                v.loss, v.duplicate, v.reorder, v.unacked, v.receivers
            ),
        );
        row(
            "client cpu",
            format!("{:.2} s user+sys over {:.1} s wall", self.cpu.total_s, self.wall_s),
        );
        for f in v.failures.iter().take(20) {
            let _ = writeln!(
                t,
                "  FAIL room {} {:?} x{}: {}",
                room_name(f.room),
                f.kind,
                f.count,
                f.example
            );
        }
        if v.failures.len() > 20 {
            let _ = writeln!(t, "  ... and {} more failing rooms/kinds", v.failures.len() - 20);
        }
        let _ = writeln!(t, "  result                 {}", if self.ok { "OK" } else { "FAILED" });
        t
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(shard: &str, values: &[u64]) -> Report {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        let mut c = new_histogram();
        c.record(1_000).unwrap();
        Report {
            version: REPORT_VERSION,
            dialect: "native".into(),
            url: "ws://127.0.0.1:1/ws".into(),
            shards: vec![shard.into()],
            conns: 10,
            rooms: 2,
            dist: "uniform".into(),
            rate: 1.0,
            senders: 1,
            size: 64,
            warmup_s: 0.0,
            duration_s: 1.0,
            connect: Connect {
                attempted: 10,
                connected: 9,
                failed: 1,
                failures: [("refused".to_string(), 1)].into(),
                latency_us: Latency::of(&c),
            },
            held: 9,
            disconnects: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            published: values.len() as u64,
            acked: values.len() as u64,
            delivered: values.len() as u64,
            delivered_measured: values.len() as u64,
            measured_s: 1.0,
            deliveries_per_s: values.len() as f64,
            latency_us: Latency::of(&h),
            check: Verdict { receivers: 9, ..Verdict::default() },
            reconnect: None,
            cpu: Cpu { user_s: 0.5, system_s: 0.25, total_s: 0.75 },
            wall_s: 2.0,
            ok: true,
        }
    }

    #[test]
    fn histograms_survive_the_json() {
        let r = sample("0/1", &[10, 20, 30_000]);
        let back = Report::from_json(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let h = back.latency_us.histogram().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), h.highest_equivalent(30_000));
    }

    #[test]
    fn merge_equals_the_combined_histogram() {
        let a_vals: Vec<u64> = (1..=1000).collect();
        let b_vals: Vec<u64> = (1..=500).map(|v| v * 100).collect();
        let a = sample("0/2", &a_vals);
        let b = sample("1/2", &b_vals);
        let m = Report::merge(&[a, b]).unwrap();
        let mut combined = new_histogram();
        for v in a_vals.iter().chain(&b_vals) {
            combined.record(*v).unwrap();
        }
        let merged = m.latency_us.histogram().unwrap();
        assert_eq!(merged.len(), combined.len());
        assert_eq!(merged, combined);
        assert_eq!(m.latency_us.summary, Summary::of(&combined));
        assert_eq!(m.connect.connected, 18);
        assert_eq!(m.connect.failures["refused"], 2);
        assert_eq!(m.connect.latency_us.summary.count, 2);
        assert_eq!(m.conns, 20);
        assert_eq!(m.shards, vec!["0/2", "1/2"]);
        assert!((m.cpu.total_s - 1.5).abs() < 1e-9);
        assert!(m.ok);
    }

    #[test]
    fn merge_keeps_failures() {
        let a = sample("0/2", &[1]);
        let mut b = sample("1/2", &[2]);
        b.check.loss = 3;
        b.ok = false;
        let m = Report::merge(&[a, b]).unwrap();
        assert_eq!(m.check.loss, 3);
        assert!(!m.ok);
        assert!(Report::merge(&[]).is_err());
    }
}
