//! The SVG latency plot next to the JSON: latency by percentile on the classic HDR axis
//! (50%, 90%, 99%, 99.9%, ...), end-to-end and connect latency side by side.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// How far right the percentile axis goes: 5 nines (99.999%).
const NINES: f64 = 5.0;

/// (x = nines, i.e. -log10(1 - q), y = latency in ms) points of a histogram.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Bounded: 200 points along the percentile axis.
    (0..=200)
        .map(|i| {
            let x = NINES * f64::from(i) / 200.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

fn percent_label(x: &f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-*x));
    let text = format!("{q:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Writes the plot of `series` (name, histogram) to `path` as SVG.
pub fn write_svg(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, h)| (*name, percentile_curve(h))).collect();
    let top = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)).fold(1.0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..NINES, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_labels(6)
            .x_label_formatter(&percent_label)
            .draw()?;
        let colors = [BLUE, RED, GREEN, MAGENTA];
        for (i, (name, curve)) in curves.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(curve.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("plot {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;

    #[test]
    fn writes_an_svg_with_the_curve() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let curve = percentile_curve(&h);
        assert_eq!(curve.len(), 201);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1), "percentiles never fall");
        assert_eq!(percent_label(&2.0), "99%");
        assert_eq!(percent_label(&0.0), "0%");
        let dir = std::env::temp_dir().join(format!("loadtest-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        write_svg(&path, "test", &[("e2e", &h), ("connect", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("e2e"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
