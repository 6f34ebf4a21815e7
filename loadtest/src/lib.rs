//! roomfleet's load generator: many connections in many rooms through a router or a node,
//! every delivery checked (loss, duplicates, order), latency in HDR histograms, and reports
//! that shards of one scenario merge exactly. `main.rs` only parses flags and prints.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod checker;
pub mod cli;
pub mod counters;
pub mod cpu;
pub mod dialect;
pub mod direct;
pub mod plot;
pub mod progress;
pub mod pusher;
pub mod reconnect;
pub mod report;
pub mod run;
pub mod scenario;
pub mod target;
pub mod token;

pub use report::Report;
pub use run::{RunConfig, run};

use std::path::Path;

use anyhow::Context;

/// Writes a report (a run's, or `loadtest api`'s) as pretty JSON.
pub fn write_json<T: serde::Serialize>(report: &T, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Writes the latency plot of a report (end-to-end, and connect latency).
pub fn write_plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let e2e = report.latency_us.histogram()?;
    let connect = report.connect.latency_us.histogram()?;
    let title = format!(
        "{} {} conns, {} rooms ({}), {}/s per sender",
        report.dialect, report.conns, report.rooms, report.dist, report.rate
    );
    let mut series = Vec::new();
    if !e2e.is_empty() {
        series.push(("end-to-end", &e2e));
    }
    series.push(("connect", &connect));
    plot::write_svg(path, &title, &series)
}
