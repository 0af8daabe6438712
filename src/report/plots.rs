//! Inline SVG charts for `report.html` (plotters' SVG backend: text stays text, no fonts needed).

use anyhow::anyhow;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;

/// Tableau 10: distinguishable, print-friendly.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        return (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Lines with markers, one per series; `log_x` plots against log10(x) with ticks labelled in x.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<String> {
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| tx(p.0)))
        .filter(|x| x.is_finite());
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite());
    let (x0, x1) = padded(
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    );
    let (y0, y1) = padded(
        ys.clone().fold(f64::INFINITY, f64::min),
        ys.fold(f64::NEG_INFINITY, f64::max),
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let x_fmt = |v: &f64| short(if log_x { 10f64.powf(*v) } else { *v });
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&x_fmt)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|&(x, y)| (tx(x), y))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Grouped vertical bars: one group per `groups` entry, one bar per series within a group.
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> anyhow::Result<String> {
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .copied()
        .fold(0.0f64, f64::max);
    let bottom = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .copied()
        .fold(0.0f64, f64::min);
    let y1 = if top <= 0.0 { 1.0 } else { top * 1.1 };
    // Negative scores (ARI can be) hang below the axis.
    let y0 = bottom * 1.1;
    let n = groups.len().max(1) as f64;
    let width = 0.8 / series.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..n - 0.5, y0..y1)
            .map_err(err)?;
        let x_fmt = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                groups[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&x_fmt)
            .y_desc(y_label)
            .draw()
            .map_err(err)?;
        for (si, (name, values)) in series.iter().enumerate() {
            let c = color(si);
            let bars = values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                let x0 = g as f64 - 0.4 + si as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, v)],
                    c.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A row-normalised confusion-matrix heatmap (rows = true class, columns = predicted), counts
/// written in the cells when the matrix is small enough to read them.
pub fn heatmap(title: &str, matrix: &[Vec<f64>]) -> anyhow::Result<String> {
    let rows = matrix.len();
    let cols = matrix.iter().map(Vec::len).max().unwrap_or(0);
    if rows == 0 || cols == 0 {
        return Err(anyhow!("empty confusion matrix"));
    }
    let side = 460u32.min(120 + 28 * rows.max(cols) as u32).max(260);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (side + 80, side + 40)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart: ChartContext<SVGBackend, Cartesian2d<RangedCoordf64, RangedCoordf64>> =
            ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..cols as f64, 0.0..rows as f64)
                .map_err(err)?;
        let label_at = |v: &f64, n: usize, flip: bool| {
            let c = v - 0.5;
            let i = c.round();
            if (c - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                let i = i as usize;
                (if flip { n - 1 - i } else { i }).to_string()
            } else {
                String::new()
            }
        };
        let xf = |v: &f64| label_at(v, cols, false);
        let yf = |v: &f64| label_at(v, rows, true);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols * 2 + 1)
            .y_labels(rows * 2 + 1)
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .x_desc("predicted")
            .y_desc("true")
            .draw()
            .map_err(err)?;
        let show_counts = rows.max(cols) <= 20;
        for (i, row) in matrix.iter().enumerate() {
            let total: f64 = row.iter().sum();
            let y = (rows - 1 - i) as f64;
            for (j, &v) in row.iter().enumerate() {
                let frac = if total > 0.0 { v / total } else { 0.0 };
                let shade = (255.0 * (1.0 - frac)).round() as u8;
                let fill = RGBColor(shade, shade, 255);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                if show_counts && v > 0.0 {
                    let text_color = if frac > 0.6 { WHITE } else { BLACK };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            super::tables::format_number(v),
                            (j as f64 + 0.3, y + 0.65),
                            ("sans-serif", 11).into_font().color(&text_color),
                        )))
                        .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Two significant digits for tick labels: `20`, `0.0032`, `3.2e-4`.
pub fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let e = x.abs().log10().floor();
    if !(-4.0..5.0).contains(&e) {
        return format!("{x:.1e}");
    }
    let decimals = (1.0 - e).max(0.0) as usize;
    format!("{x:.decimals$}")
}

/// One chart in the HTML report's grid.
pub fn chart_div(svg: &str) -> String {
    format!("<div class=\"chart\">{svg}</div>\n")
}
