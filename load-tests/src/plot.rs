//! SVG latency plots: the percentile spectrum of each latency histogram of a run, in the
//! HdrHistogram style (x is the percentile on a log scale of 1/(1-q), so the tail gets room).
//!
//! Only plotters' SVG backend is used, so no font or image library is needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::stats::Hist;

/// Points per decade of the percentile axis.
const STEPS_PER_DECADE: u32 = 40;
/// The deepest percentile plotted: 99.999%.
const DECADES: u32 = 5;

/// Writes the percentile spectrum of each `(label, histogram)` to `path`.
pub(crate) fn latency_svg(path: &Path, title: &str, series: &[(&str, &Hist)]) -> Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| h.len() > 0)
        .map(|(label, h)| (*label, spectrum(h)))
        .collect();
    let y_max_ms = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(0.01)
        * 1.1;
    let x_max = 10f64.powi(DECADES as i32);

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max_ms)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, pts)) in curves.into_iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// `(1/(1-q), latency ms)` points from q = 0 to 99.999%, stopping at the histogram's count.
fn spectrum(h: &Hist) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    (0..=DECADES * STEPS_PER_DECADE)
        .map(|k| 10f64.powf(k as f64 / STEPS_PER_DECADE as f64))
        // Beyond 1/(1-q) = n, the percentile is just the maximum.
        .take_while(|x| *x <= n.max(1.0) * 1.0001)
        .map(|x| {
            let q = 1.0 - 1.0 / x;
            (x, h.0.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

fn percentile_label(x: f64) -> String {
    let q = (1.0 - 1.0 / x) * 100.0;
    if q < 1.0 {
        "0%".into()
    } else {
        let s = format!("{q:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
    }
}
