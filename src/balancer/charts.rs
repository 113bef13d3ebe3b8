//! The `/lb` page's live charts, drawn on the server as inline SVG (no
//! script, no external resource): requests per second and p99 latency per
//! backend over the last 10 minutes, one point per 10 s slice from the
//! charts' ring ([`crate::stats::history`]) plus the running slice.
//!
//! The SVG holds only the lines and the grid and stretches to the width
//! it is given (`preserveAspectRatio="none"`, strokes that do not scale);
//! axis labels and the legend are HTML around it, so text stays readable
//! from a 360 px phone to a 1920 px screen.

use std::fmt::Write;
use std::time::Instant;

use crate::stats::history::{POINTS, Point};
use crate::stats::latency::{SLICE_SECS, epoch};

/// Line colours, by the backend's place in the (name-sorted) set.
const PALETTE: [&str; 10] = [
    "#1570ef", "#079455", "#dc6803", "#d92d20", "#7a5af8", "#0e9384", "#c11574", "#4e5ba6",
    "#b54708", "#667085",
];

/// The plot area's size in SVG units (stretched to fit).
const W: f64 = 600.0;
const H: f64 = 160.0;
/// The span the charts cover.
const SPAN_SECS: f64 = (POINTS as u64 * SLICE_SECS) as f64;

/// What a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Rps,
    P99,
}

/// One backend's line in a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub backend: String,
    pub colour: &'static str,
    /// The latest value, as the legend shows it.
    pub last: String,
}

/// A chart ready for the template.
#[derive(Debug, Clone)]
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub svg: String,
    /// Y-axis labels, top to bottom.
    pub y_labels: [String; 3],
    pub series: Vec<Series>,
    /// Points with a value (0 means: no traffic yet).
    pub points: usize,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_value(metric: Metric, v: f64) -> String {
    match metric {
        Metric::Rps if v >= 100.0 => format!("{v:.0}/s"),
        Metric::Rps => format!("{v:.1}/s"),
        Metric::P99 if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Metric::P99 if v >= 10.0 => format!("{v:.0} ms"),
        Metric::P99 => format!("{v:.1} ms"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Draws `metric` for `names` (the current backends, in order) from `points`.
pub fn draw(metric: Metric, names: &[String], points: &[Point], now: Instant) -> Chart {
    let start = now.saturating_duration_since(epoch()).as_secs_f64() - SPAN_SECS;
    // (x, value) per backend; x from the slice's end (the live point: now).
    let mut lines: Vec<Vec<Option<(f64, f64)>>> = vec![Vec::new(); names.len()];
    for p in points {
        let end = if p.partial {
            now.saturating_duration_since(epoch()).as_secs_f64()
        } else {
            ((p.slice + 1) * SLICE_SECS) as f64
        };
        let x = ((end - start) / SPAN_SECS * W).clamp(0.0, W);
        for (i, name) in names.iter().enumerate() {
            let v = p
                .samples
                .iter()
                .find(|s| s.backend == *name)
                .and_then(|s| match metric {
                    Metric::Rps => Some(s.rps),
                    Metric::P99 => s.p99_ms,
                });
            lines[i].push(v.map(|v| (x, v)));
        }
    }
    let max = lines
        .iter()
        .flatten()
        .flatten()
        .map(|&(_, v)| v)
        .fold(0.0, f64::max);
    let top = nice_max(max);
    let y = |v: f64| H - (v / top * H).clamp(0.0, H);
    let mut svg = String::new();
    let label = match metric {
        Metric::Rps => "Requests per second per backend, last 10 minutes",
        Metric::P99 => "p99 latency per backend, last 10 minutes",
    };
    let _ = write!(
        svg,
        r#"<svg class="plot" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{label}">"#
    );
    for frac in [0.0, 0.5, 1.0] {
        let gy = H * frac;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="0" y1="{gy}" x2="{W}" y2="{gy}" vector-effect="non-scaling-stroke"/>"#
        );
    }
    let mut series = Vec::new();
    let mut drawn = 0;
    for (i, name) in names.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut segment: Vec<String> = Vec::new();
        let flush = |segment: &mut Vec<String>, svg: &mut String| {
            if segment.len() > 1 {
                let _ = write!(
                    svg,
                    r#"<polyline data-backend="{}" points="{}" stroke="{colour}" vector-effect="non-scaling-stroke"/>"#,
                    escape(name),
                    segment.join(" ")
                );
            }
            segment.clear();
        };
        for v in &lines[i] {
            match v {
                Some((x, v)) => {
                    segment.push(format!("{x:.1},{:.1}", y(*v)));
                    drawn += usize::from(*v > 0.0);
                }
                None => flush(&mut segment, &mut svg),
            }
        }
        flush(&mut segment, &mut svg);
        let last = lines[i].iter().rev().flatten().next();
        if let Some(&(x, v)) = last {
            // The latest value as a dot (a zero-length line with round caps:
            // round whatever the stretch).
            let _ = write!(
                svg,
                r#"<polyline class="dot" data-backend="{}" data-value="{v:.3}" points="{x:.1},{yy:.1} {x:.1},{yy:.1}" stroke="{colour}" vector-effect="non-scaling-stroke"/>"#,
                escape(name),
                yy = y(v)
            );
        }
        series.push(Series {
            backend: name.clone(),
            colour,
            last: last.map_or_else(|| "–".to_owned(), |&(_, v)| fmt_value(metric, v)),
        });
    }
    svg.push_str("</svg>");
    let (id, title) = match metric {
        Metric::Rps => ("chart-rps", "Requests per second"),
        Metric::P99 => ("chart-p99", "p99 latency"),
    };
    Chart {
        id,
        title,
        svg,
        y_labels: [
            fmt_value(metric, top),
            fmt_value(metric, top / 2.0),
            fmt_value(metric, 0.0),
        ],
        series,
        points: drawn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::history::Sample;

    #[test]
    fn a_chart_has_a_line_per_backend_and_a_readable_scale() {
        let now = epoch() + std::time::Duration::from_secs(10_000);
        let slice = 10_000 / SLICE_SECS;
        let point = |slice: u64, rps: f64, partial: bool| Point {
            slice,
            partial,
            samples: vec![Sample {
                backend: "a:1".into(),
                rps,
                p99_ms: Some(12.0),
            }],
        };
        let points = [
            point(slice - 2, 40.0, false),
            point(slice - 1, 80.0, false),
            point(slice, 60.0, true),
        ];
        let names = vec!["a:1".to_owned(), "b:2".to_owned()];
        let c = draw(Metric::Rps, &names, &points, now);
        assert_eq!(c.y_labels[0], "100/s");
        assert!(
            c.svg.contains(r#"<polyline data-backend="a:1""#),
            "{}",
            c.svg
        );
        assert!(!c.svg.contains(r#"data-backend="b:2""#));
        assert_eq!(c.series[0].last, "60.0/s");
        assert_eq!(c.series[1].last, "–");
        assert_eq!(c.points, 3);
        let c = draw(Metric::P99, &names, &points, now);
        assert_eq!(c.series[0].last, "12 ms");
    }
}
