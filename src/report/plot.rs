//! Small self-contained SVG charts for the HTML report: horizontal bars and a scatter plot.

use std::fmt::Write;

/// One plotted item: its label, its family (the colour) and its value(s).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Shown next to the bar, or as the point's tooltip and number.
    pub label: String,
    /// Items of one family share a colour.
    pub family: String,
    /// Horizontal position (scatter only).
    pub x: f64,
    /// The value.
    pub y: f64,
}

const PALETTE: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939",
];

fn colour(families: &[String], family: &str) -> &'static str {
    let i = families.iter().position(|f| f == family).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn families(points: &[Point]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in points {
        if !out.contains(&p.family) {
            out.push(p.family.clone());
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The largest magnitude a chart places: beyond it (or not finite) a value is left out of the
/// chart (the report's tables still print it), so no coordinate overflows to infinity or NaN.
pub const PLOTTABLE: f64 = 1e12;

/// Whether `v` can be placed on a chart.
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= PLOTTABLE
}

/// Horizontal bars of `y` (from 0 to `max`), one row per point, with an optional labelled
/// vertical reference line.
pub fn bars(
    title: &str,
    unit: &str,
    points: &[Point],
    max: f64,
    line: Option<(&str, f64)>,
) -> String {
    let fams = families(points);
    // Room for the longest label (about 6 px a character at 11 px).
    let longest = points
        .iter()
        .map(|p| p.label.chars().count())
        .max()
        .unwrap_or(0);
    let (left, width, row) = ((longest as f64 * 6.2 + 16.0).max(120.0), 420.0, 18.0);
    let height = 40.0 + row * points.len() as f64 + 30.0;
    let max = if plottable(max) && max > 0.0 {
        max
    } else {
        1.0
    };
    let sx = |v: f64| {
        left + width
            * if plottable(v) {
                (v / max).clamp(0.0, 1.0)
            } else {
                0.0
            }
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="11"><text x="10" y="18" font-size="13" font-weight="bold">{t}</text>"#,
        w = left + width + 70.0,
        t = escape(title)
    );
    for tick in 0..=4 {
        let v = max * tick as f64 / 4.0;
        let x = sx(v);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="30" x2="{x}" y2="{y2}" stroke="#ddd"/><text x="{x}" y="{ty}" text-anchor="middle">{v:.2}{u}</text>"##,
            y2 = height - 25.0,
            ty = height - 12.0,
            u = escape(unit)
        );
    }
    for (i, p) in points.iter().enumerate() {
        let y = 34.0 + row * i as f64;
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{l}</text><rect x="{left}" y="{y}" width="{bw}" height="{bh}" fill="{c}"><title>{l}: {v:.4}</title></rect><text x="{vx}" y="{ty}">{v:.3}</text>"#,
            lx = left - 6.0,
            ty = y + 11.0,
            l = escape(&p.label),
            bw = sx(p.y) - left,
            bh = row - 4.0,
            c = colour(&fams, &p.family),
            vx = sx(p.y) + 4.0,
            v = p.y
        );
    }
    if let Some((label, v)) = line {
        let x = sx(v);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="28" x2="{x}" y2="{y2}" stroke="#000" stroke-dasharray="4 3"/><text x="{tx}" y="27">{l}</text>"##,
            y2 = height - 25.0,
            tx = x + 3.0,
            l = escape(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// A scatter plot of (x, y), points numbered in order (the report's table gives the numbers'
/// names), coloured by family, with a legend; `log_y` plots y on a log10 axis.
pub fn scatter(title: &str, x_label: &str, y_label: &str, points: &[Point], log_y: bool) -> String {
    let fams = families(points);
    let (left, top, width, height) = (60.0, 30.0, 520.0, 300.0);
    let fy = |v: f64| if log_y { v.max(1e-9).log10() } else { v };
    let finite: Vec<&Point> = points
        .iter()
        .filter(|p| plottable(p.x) && plottable(p.y))
        .collect();
    let (mut x0, mut x1) = finite
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.x), b.max(p.x)));
    let (mut y0, mut y1) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(fy(p.y)), b.max(fy(p.y)))
    });
    if finite.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = if b > a { (b - a) * 0.08 } else { 0.5 };
        (a - d, b + d)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let sx = |v: f64| left + width * (v - x0) / (x1 - x0);
    let sy = |v: f64| top + height * (1.0 - (fy(v) - y0) / (y1 - y0));
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="10" y="18" font-size="13" font-weight="bold">{t}</text><rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>"##,
        w = left + width + 220.0,
        h = top + height + 45.0,
        t = escape(title)
    );
    for tick in 0..=5 {
        let xv = x0 + (x1 - x0) * tick as f64 / 5.0;
        let yv = y0 + (y1 - y0) * tick as f64 / 5.0;
        let ylab = if log_y { 10f64.powf(yv) } else { yv };
        let (x, y) = (sx(xv), top + height * (1.0 - tick as f64 / 5.0));
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{b}" stroke="#eee"/><text x="{x}" y="{ty}" text-anchor="middle">{xv:.2}</text><line x1="{left}" y1="{y}" x2="{r}" y2="{y}" stroke="#eee"/><text x="{lx}" y="{y}" text-anchor="end">{ylab:.3}</text>"##,
            b = top + height,
            ty = top + height + 14.0,
            r = left + width,
            lx = left - 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{by}" text-anchor="middle">{xl}</text><text x="12" y="{cy}" transform="rotate(-90 12 {cy})" text-anchor="middle">{yl}</text>"#,
        cx = left + width / 2.0,
        by = top + height + 32.0,
        cy = top + height / 2.0,
        xl = escape(x_label),
        yl = escape(&format!("{y_label}{}", if log_y { " (log)" } else { "" }))
    );
    for (i, p) in points
        .iter()
        .enumerate()
        .filter(|(_, p)| plottable(p.x) && plottable(p.y))
    {
        let (x, y) = (sx(p.x), sy(p.y));
        let _ = write!(
            s,
            r#"<circle cx="{x}" cy="{y}" r="4" fill="{c}"><title>{l}: ({px:.3}, {py:.4})</title></circle><text x="{tx}" y="{ty}" font-size="9">{n}</text>"#,
            c = colour(&fams, &p.family),
            l = escape(&p.label),
            px = p.x,
            py = p.y,
            tx = x + 5.0,
            ty = y - 3.0,
            n = i + 1
        );
    }
    for (i, f) in fams.iter().enumerate() {
        let y = top + 10.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<circle cx="{x}" cy="{y}" r="4" fill="{c}"/><text x="{tx}" y="{ty}">{f}</text>"#,
            x = left + width + 15.0,
            c = colour(&fams, f),
            tx = left + width + 24.0,
            ty = y + 4.0,
            f = escape(f)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts() -> Vec<Point> {
        vec![
            Point {
                label: "a<b".into(),
                family: "f".into(),
                x: 1.0,
                y: 0.5,
            },
            Point {
                label: "c".into(),
                family: "g".into(),
                x: 2.0,
                y: 0.25,
            },
        ]
    }

    #[test]
    fn bars_scale_to_the_maximum_and_escape_labels() {
        let svg = bars("t", "", &pts(), 1.0, Some(("drop", 0.5)));
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        // Bar widths are 420 px times value / max.
        assert!(svg.contains(r#"width="210""#) && svg.contains(r#"width="105""#));
    }

    #[test]
    fn scatter_places_points_inside_the_frame() {
        let svg = scatter("t", "x", "y", &pts(), true);
        assert_eq!(svg.matches("<circle").count(), 2 + 2);
        for c in svg.split("<circle cx=\"").skip(1).take(2) {
            let x: f64 = c.split('"').next().unwrap().parse().unwrap();
            assert!((60.0..=580.0).contains(&x));
        }
    }
}
