//! PNG plots for inference tests: SBC rank histograms and reliability diagrams.
//!
//! The plots are drawn with `plotters`' bitmap backend and contain no text (so they need no
//! fonts): the axes are implied, as described in each function.
//!
//! ```no_run
//! use weightspace::metrics::reliability_diagram;
//! use weightspace::testing::plot::write_reliability_diagram_png;
//!
//! let bins = reliability_diagram(&[0.9, 0.1, 0.3, 0.7], 2, &[0, 1], 10)?;
//! write_reliability_diagram_png(&bins, "target/reliability.png")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use thiserror::Error;

use crate::predict::metrics::ReliabilityBin;

/// Why a plot could not be written.
///
/// ```
/// use weightspace::testing::plot::{write_reliability_diagram_png, PlotError};
///
/// let err = write_reliability_diagram_png(&[], "unused.png").unwrap_err();
/// assert!(matches!(err, PlotError::Empty { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlotError {
    /// Nothing to draw.
    #[error("nothing to plot: {what} is empty")]
    Empty {
        /// What was empty.
        what: &'static str,
    },
    /// The backend failed (unwritable path, encoder error, ...).
    #[error("could not draw {path}: {message}")]
    Drawing {
        /// The output path.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
}

impl From<PlotError> for crate::Error {
    fn from(e: PlotError) -> Self {
        crate::Error::Testing(crate::error::TestingError::new(e))
    }
}

fn drawing<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Drawing { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes a rank histogram per parameter of an SBC run (Talts et al. 2018, Fig. 1 style).
///
/// Panels are laid out in a grid, one per parameter, left to right and top to bottom. In each,
/// blue bars are the bin counts, the black line is the expected count under uniformity, and the
/// grey band is its 99% binomial interval: a calibrated sampler's bars stay mostly inside it.
/// The image is 320×240 pixels per panel.
///
/// `histograms[p][b]` are the counts of parameter `p`'s ranks (in `0..=n_draws`) in bin `b`, over
/// `replicates` replicates. Users call it through
/// [`SbcReport::write_rank_histogram_png`](super::sbc::SbcReport::write_rank_histogram_png).
pub(crate) fn write_rank_histogram_png(histograms: &[Vec<usize>], n_draws: usize, replicates: usize, path: &Path) -> Result<(), PlotError> {
    let n_params = histograms.len();
    if n_params == 0 || replicates == 0 {
        return Err(PlotError::Empty { what: "the SBC report" });
    }
    let cols = (n_params as f64).sqrt().ceil() as usize;
    let rows = n_params.div_ceil(cols);
    let root = BitMapBackend::new(path, (320 * cols as u32, 240 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let panels = root.split_evenly((rows, cols));
    let values = (n_draws + 1) as f64;
    let total = replicates as f64;
    for (p, hist) in histograms.iter().enumerate() {
        let n_bins = hist.len();
        // expected count and 99% band per bin (bins may differ in width)
        let mut width = vec![0usize; n_bins];
        for r in 0..=n_draws {
            width[r * n_bins / (n_draws + 1)] += 1;
        }
        let expect: Vec<(f64, f64)> = width
            .iter()
            .map(|&w| {
                let q = w as f64 / values;
                (total * q, 2.576 * (total * q * (1.0 - q)).sqrt())
            })
            .collect();
        let ymax = hist.iter().map(|&h| h as f64).chain(expect.iter().map(|(e, s)| e + s)).fold(1.0, f64::max) * 1.1;
        let mut chart =
            ChartBuilder::on(&panels[p]).margin(8).build_cartesian_2d(0f64..n_bins as f64, 0f64..ymax).map_err(drawing(path))?;
        let grey = RGBColor(210, 210, 210);
        chart
            .draw_series(
                expect
                    .iter()
                    .enumerate()
                    .map(|(b, (e, s))| Rectangle::new([(b as f64, (e - s).max(0.0)), (b as f64 + 1.0, e + s)], grey.filled())),
            )
            .map_err(drawing(path))?;
        chart
            .draw_series(
                hist.iter()
                    .enumerate()
                    .map(|(b, &h)| Rectangle::new([(b as f64 + 0.1, 0.0), (b as f64 + 0.9, h as f64)], BLUE.mix(0.7).filled())),
            )
            .map_err(drawing(path))?;
        chart
            .draw_series(
                expect
                    .iter()
                    .enumerate()
                    .map(|(b, (e, _))| PathElement::new(vec![(b as f64, *e), (b as f64 + 1.0, *e)], BLACK.stroke_width(2))),
            )
            .map_err(drawing(path))?;
        // frame
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (n_bins as f64, ymax)], BLACK.stroke_width(1))))
            .map_err(drawing(path))?;
    }
    root.present().map_err(drawing(path))?;
    Ok(())
}

/// Writes a reliability diagram: accuracy against confidence on the unit square.
///
/// Each non-empty bin is a blue bar spanning its confidence range with height equal to its
/// accuracy; a red tick marks its mean confidence (where a calibrated bar would end); the black
/// diagonal is perfect calibration. Bars below the diagonal mean over-confidence. 480×480 pixels.
///
/// ```
/// use weightspace::metrics::reliability_diagram;
/// use weightspace::testing::plot::write_reliability_diagram_png;
///
/// let bins = reliability_diagram(&[0.9, 0.1, 0.3, 0.7, 0.6, 0.4], 2, &[0, 1, 1], 5)?;
/// let path = std::env::temp_dir().join("weightspace_doc_reliability.png");
/// write_reliability_diagram_png(&bins, &path)?;
/// assert!(std::fs::metadata(&path)?.len() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_reliability_diagram_png(bins: &[ReliabilityBin], path: impl AsRef<Path>) -> Result<(), PlotError> {
    let path = path.as_ref();
    if bins.is_empty() {
        return Err(PlotError::Empty { what: "bins" });
    }
    let root = BitMapBackend::new(path, (480, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing(path))?;
    let mut chart = ChartBuilder::on(&root).margin(12).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(drawing(path))?;
    chart
        .draw_series(bins.iter().filter_map(|b| Some(Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy?)], BLUE.mix(0.6).filled()))))
        .map_err(drawing(path))?;
    chart
        .draw_series(bins.iter().filter_map(|b| {
            let c = b.mean_confidence?;
            Some(PathElement::new(vec![(b.lower, c), (b.upper, c)], RED.stroke_width(3)))
        }))
        .map_err(drawing(path))?;
    chart.draw_series(std::iter::once(PathElement::new(vec![(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(2)))).map_err(drawing(path))?;
    chart.draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(1)))).map_err(drawing(path))?;
    root.present().map_err(drawing(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sbc::SbcReport;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n")).unwrap_or(false)
    }

    #[test]
    fn writes_pngs() {
        let dir = std::env::temp_dir().join(format!("weightspace_plot_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ranks = vec![(0..200).map(|r| r % 100).collect(), (0..200).map(|r| r % 7).collect()];
        let report = SbcReport::from_ranks(ranks, 99, 10).unwrap();
        let p = dir.join("ranks.png");
        report.write_rank_histogram_png(&p).unwrap();
        assert!(is_png(&p));
        let bins = crate::predict::metrics::reliability_diagram(&[0.8, 0.2, 0.55, 0.45], 2, &[0, 1], 10).unwrap();
        let p = dir.join("rel.png");
        write_reliability_diagram_png(&bins, &p).unwrap();
        assert!(is_png(&p));
        let e = write_reliability_diagram_png(&bins, dir.join("missing/dir/x.png")).unwrap_err();
        assert!(matches!(e, PlotError::Drawing { .. }), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
