//! PNG pictures of predictive distributions (bands, function samples and data), class
//! probability maps, and line plots of curves.
//!
//! Drawing uses plotters' bitmap backend with the system's TrueType fonts; failures (no font, an
//! unwritable path) are returned as [`Error::Plot`], never panics.

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

/// A 1-D predictive picture: a central band, a mean line, optional function samples and data.
///
/// ```no_run
/// use weightspace::{band_plot, BandPlot};
/// let x = [0.0, 1.0, 2.0];
/// band_plot("band.png", &BandPlot {
///     title: "posterior predictive",
///     x: &x, mean: &[0.0, 1.0, 0.5], lower: &[-1.0, 0.0, -0.5], upper: &[1.0, 2.0, 1.5],
///     samples: &[], points: Some((&[0.5], &[0.7])),
/// })?;
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BandPlot<'a> {
    /// Caption.
    pub title: &'a str,
    /// Inputs, increasing.
    pub x: &'a [f64],
    /// Mean at each input.
    pub mean: &'a [f64],
    /// Lower edge of the band.
    pub lower: &'a [f64],
    /// Upper edge of the band.
    pub upper: &'a [f64],
    /// Function samples to draw thinly (each as long as `x`).
    pub samples: &'a [Vec<f64>],
    /// Observed `(x, y)` points.
    pub points: Option<(&'a [f64], &'a [f64])>,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot { path: path.display().to_string(), reason: e.to_string() }
}

fn finite_range<'a>(vals: impl Iterator<Item = &'a f64>) -> Option<(f64, f64)> {
    let (lo, hi) = vals.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    (lo <= hi).then_some(if lo == hi { (lo - 1.0, hi + 1.0) } else { (lo, hi) })
}

/// The chart that [`band_plot`] and [`line_plot`] draw on.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

/// A 900×600 PNG at `path`: a captioned chart over the ranges `x` and `y` (`y` padded by 5 %), with
/// a mesh and axis `labels`; `draw` adds the series, then the legend is drawn and the file written.
fn xy_chart(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    x: (f64, f64),
    y: (f64, f64),
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<()> {
    let pad = 0.05 * (y.1 - y.0);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x.0..x.1, (y.0 - pad)..(y.1 + pad))
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().x_desc(labels.0).y_desc(labels.1).draw().map_err(|e| plot_err(path, e))?;
    draw(&mut chart)?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Writes a band plot to `path` (PNG, 900×600).
///
/// ```
/// use weightspace::{band_plot, BandPlot, Error};
/// let x = [0.0, 1.0, 2.0];
/// let mut p = BandPlot {
///     title: "posterior predictive",
///     x: &x, mean: &[0.0, 1.0, 0.5], lower: &[-1.0, 0.0, -0.5], upper: &[1.0, 2.0, 1.5],
///     samples: &[], points: Some((&[0.5], &[0.7])),
/// };
/// let path = std::env::temp_dir().join("weightspace_band_plot_doc.png");
/// match band_plot(&path, &p) {
///     Ok(()) => assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG")),
///     Err(e) => assert!(matches!(e, Error::Plot { .. })), // e.g. no system font
/// }
/// // inconsistent lengths are an error, not a panic
/// p.mean = &[0.0, 1.0];
/// assert!(matches!(band_plot(&path, &p), Err(Error::Plot { .. })));
/// ```
pub fn band_plot(path: impl AsRef<Path>, p: &BandPlot<'_>) -> Result<()> {
    let path = path.as_ref();
    let n = p.x.len();
    if n < 2 || p.mean.len() != n || p.lower.len() != n || p.upper.len() != n || p.samples.iter().any(|s| s.len() != n) {
        return Err(plot_err(path, format!("x, mean, lower, upper and samples must all have the same length >= 2 (x has {n})")));
    }
    let (x0, x1) = finite_range(p.x.iter().chain(p.points.map_or(&[][..], |q| q.0))).ok_or_else(|| plot_err(path, "no finite x"))?;
    let ys = p.lower.iter().chain(p.upper).chain(p.mean).chain(p.points.map_or(&[][..], |q| q.1)).chain(p.samples.iter().flatten());
    let (y0, y1) = finite_range(ys).ok_or_else(|| plot_err(path, "no finite y"))?;
    xy_chart(path, p.title, ("x", "y"), (x0, x1), (y0, y1), |chart| {
        let band: Vec<(f64, f64)> =
            p.x.iter().zip(p.upper).map(|(&a, &b)| (a, b)).chain(p.x.iter().zip(p.lower).rev().map(|(&a, &b)| (a, b))).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.18))))
            .map_err(|e| plot_err(path, e))?
            .label("central band")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLUE.mix(0.18).filled()));
        for s in p.samples {
            chart.draw_series(LineSeries::new(p.x.iter().zip(s).map(|(&a, &b)| (a, b)), BLUE.mix(0.25))).map_err(|e| plot_err(path, e))?;
        }
        chart
            .draw_series(LineSeries::new(p.x.iter().zip(p.mean).map(|(&a, &b)| (a, b)), BLUE.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label("predictive mean")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        if let Some((px, py)) = p.points {
            chart
                .draw_series(px.iter().zip(py).map(|(&a, &b)| Circle::new((a, b), 3, BLACK.filled())))
                .map_err(|e| plot_err(path, e))?
                .label("data")
                .legend(|(x, y)| Circle::new((x + 8, y), 3, BLACK.filled()));
        }
        Ok(())
    })
}

/// Named curves over a common x axis (learning curves, say), each drawn as a line with markers.
///
/// ```no_run
/// use weightspace::{line_plot, LinePlot};
/// let steps = [1000.0, 2000.0, 3000.0];
/// let lpd = [0.2, 0.5, 0.6];
/// let optimum = [1.3, 1.3, 1.3];
/// line_plot("curve.png", &LinePlot {
///     title: "held-out LPD", x_label: "step", y_label: "nats per point",
///     x: &steps, series: &[("BNNP", &lpd), ("optimum", &optimum)],
/// })?;
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LinePlot<'a> {
    /// Caption.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// The common x values.
    pub x: &'a [f64],
    /// `(legend, y values)` per curve, each as long as `x`; non-finite values are left out.
    pub series: &'a [(&'a str, &'a [f64])],
}

/// Writes a line plot to `path` (PNG, 900×600).
///
/// ```
/// use weightspace::{line_plot, Error, LinePlot};
/// let x = [1.0, 2.0, 3.0];
/// let mut p = LinePlot { title: "curves", x_label: "step", y_label: "value", x: &x, series: &[("a", &[0.0, 1.0, 0.5])] };
/// let path = std::env::temp_dir().join("weightspace_line_plot_doc.png");
/// match line_plot(&path, &p) {
///     Ok(()) => assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG")),
///     Err(e) => assert!(matches!(e, Error::Plot { .. })), // e.g. no system font
/// }
/// // a curve of the wrong length is an error, not a panic
/// p.series = &[("a", &[0.0, 1.0])];
/// assert!(matches!(line_plot(&path, &p), Err(Error::Plot { .. })));
/// ```
pub fn line_plot(path: impl AsRef<Path>, p: &LinePlot<'_>) -> Result<()> {
    let path = path.as_ref();
    let n = p.x.len();
    if n == 0 || p.series.is_empty() || p.series.iter().any(|(_, y)| y.len() != n) {
        return Err(plot_err(path, format!("needs at least one point and one curve, each curve as long as x ({n})")));
    }
    let (mut x0, mut x1) = finite_range(p.x.iter()).ok_or_else(|| plot_err(path, "no finite x"))?;
    if x0 == x1 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (y0, y1) = finite_range(p.series.iter().flat_map(|(_, y)| y.iter())).ok_or_else(|| plot_err(path, "no finite y"))?;
    xy_chart(path, p.title, (p.x_label, p.y_label), (x0, x1), (y0, y1), |chart| {
        for (i, (name, y)) in p.series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> =
                p.x.iter().zip(y.iter()).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(&a, &b)| (a, b)).collect();
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, colour.filled()))).map_err(|e| plot_err(path, e))?;
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        Ok(())
    })
}

/// Writes a scatter plot of labelled 2-D points with a background of predicted class-1
/// probabilities on a grid (`grid_x`, `grid_y`, row-major `probs` of size `gy·gx`).
///
/// ```
/// use weightspace::{probability_map, Error};
/// let grid: Vec<f64> = (0..11).map(|i| i as f64 / 5.0 - 1.0).collect();
/// // P(class 1) = sigmoid(4 x): the left half is class 0, the right half class 1
/// let probs: Vec<f64> = grid.iter().flat_map(|_y| grid.iter().map(|x| 1.0 / (1.0 + (-4.0 * x).exp()))).collect();
/// let (points, labels) = ([[-0.5, 0.0], [0.5, 0.2]], [0, 1]);
/// let path = std::env::temp_dir().join("weightspace_probability_map_doc.png");
/// match probability_map(&path, "classifier", &grid, &grid, &probs, &points, &labels) {
///     Ok(()) => assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG")),
///     Err(e) => assert!(matches!(e, Error::Plot { .. })), // e.g. no system font
/// }
/// // a probability grid of the wrong size is an error
/// assert!(probability_map(&path, "bad", &grid, &grid, &probs[1..], &points, &labels).is_err());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn probability_map(
    path: impl AsRef<Path>,
    title: &str,
    grid_x: &[f64],
    grid_y: &[f64],
    probs: &[f64],
    points: &[[f64; 2]],
    labels: &[usize],
) -> Result<()> {
    let path = path.as_ref();
    if grid_x.len() < 2 || grid_y.len() < 2 || probs.len() != grid_x.len() * grid_y.len() || points.len() != labels.len() {
        return Err(plot_err(path, "grid, probabilities and points have inconsistent lengths"));
    }
    let (x0, x1) = (grid_x[0], grid_x[grid_x.len() - 1]);
    let (y0, y1) = (grid_y[0], grid_y[grid_y.len() - 1]);
    let root = BitMapBackend::new(path, (700, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(40)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    chart.configure_mesh().disable_mesh().draw().map_err(|e| plot_err(path, e))?;
    let dx = (x1 - x0) / (grid_x.len() - 1) as f64;
    let dy = (y1 - y0) / (grid_y.len() - 1) as f64;
    chart
        .draw_series(grid_y.iter().enumerate().flat_map(|(r, &gy)| {
            grid_x.iter().enumerate().map(move |(c, &gx)| {
                let p = probs[r * grid_x.len() + c].clamp(0.0, 1.0);
                let col = RGBColor((255.0 * p) as u8, 90, (255.0 * (1.0 - p)) as u8).mix(0.35);
                Rectangle::new([(gx - dx / 2.0, gy - dy / 2.0), (gx + dx / 2.0, gy + dy / 2.0)], col.filled())
            })
        }))
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(
            points.iter().zip(labels).map(|(p, &l)| Circle::new((p[0], p[1]), 3, if l == 1 { RED.filled() } else { BLUE.filled() })),
        )
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
