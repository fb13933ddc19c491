//! Results out: every `.npz` file the library writes is read back (with `ndarray-npy`, the crate
//! that wrote it) and checked against the values in memory, names and ArviZ dimension orders
//! included; and a write that fails leaves the previous file and no temporary file behind.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use weightspace::diagnostics::SummaryTable;
use weightspace::export::Npz;
use weightspace::mcmc::{sym_mcmc, DrawSet, NoCanonicalisation, SymMcmcRun, SymMcmcSettings};
use weightspace::prelude::*;
use weightspace::ExportError;

#[bnn]
struct Lin {
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<1, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 2>,
    #[likelihood]
    noise: Gaussian<Fixed<0.5>>,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weightspace_export_{name}_{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every array of the file at `path`: name → (shape, values as f64).
fn read_all(path: &Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut r = NpzReader::new(fs::File::open(path).unwrap()).unwrap();
    let names = r.names().unwrap();
    names
        .into_iter()
        .map(|name| {
            let a: ArrayD<f64> = r.by_name(&name).unwrap();
            (name, a.shape().to_vec(), a.iter().copied().collect())
        })
        .collect()
}

fn lin_run() -> (Lin<f64, Cpu>, Dataset<f64, Cpu>, SymMcmcRun) {
    let dev = Cpu::default();
    let x: Vec<f64> = (0..12).map(|i| i as f64 / 6.0 - 1.0).collect();
    let y: Vec<f64> = x.iter().map(|v| 1.5 * v - 0.5 + 0.1 * (7.0 * v).sin()).collect();
    let data = Dataset::regression(&dev, &x, 1, &y, 1).unwrap();
    let model = Lin::<f64, Cpu>::new(&dev);
    let settings = SymMcmcSettings { chains: 3, warmup: 200, draws_per_chain: 10, seed: 7, ..Default::default() };
    let run = sym_mcmc(&model, &data, &settings, &NoCanonicalisation).unwrap();
    (model, data, run)
}

/// Raw and canonical draws come back as `w (chain, draw, weight)` and `log_sigma (chain, draw)`,
/// value for value; sample stats as `(chain, draw)`.
#[test]
fn mcmc_draws_round_trip_in_arviz_order() {
    let dir = scratch("draws");
    let (_, _, run) = lin_run();
    for (which, file, draws) in [(DrawSet::Raw, "raw.npz", &run.draws), (DrawSet::Canonical, "canonical.npz", &run.canonical)] {
        run.posterior_npz(which).unwrap().write(dir.join(file)).unwrap();
        let back = read_all(&dir.join(file));
        assert_eq!(back.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), vec!["w", "log_sigma"]);
        let (_, shape, w) = &back[0];
        assert_eq!(shape, &vec![3, 10, 2]);
        for c in 0..3 {
            for t in 0..10 {
                for j in 0..2 {
                    assert_eq!(w[(c * 10 + t) * 2 + j], draws[c][t][j], "w[{c}, {t}, {j}]");
                }
                assert_eq!(back[1].2[c * 10 + t], draws[c][t][2], "log_sigma[{c}, {t}]");
            }
        }
        assert_eq!(back[1].1, vec![3, 10]);
    }
    run.sample_stats_npz().unwrap().write(dir.join("stats.npz")).unwrap();
    let stats = read_all(&dir.join("stats.npz"));
    assert!(stats.iter().all(|(_, shape, _)| shape == &vec![3, 10]));
    fs::remove_dir_all(&dir).unwrap();
}

/// The summary table written and read back equals the table in memory, column by column, and
/// the weights' table rows are named as ArviZ names `w`'s elements.
#[test]
fn summary_tables_round_trip() {
    let dir = scratch("summary");
    let (model, data, run) = lin_run();
    let weights = run.weight_summary(DrawSet::Canonical).unwrap();
    let names: Vec<&str> = weights.rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["w[0]", "w[1]", "log_sigma"]);
    let function = run.predictive_draws(&model, &data.x, 0).unwrap().summary().unwrap();
    assert_eq!(function.rows.len(), 12);
    for (table, file) in [(&weights, "summary_weights.npz"), (&function, "summary_function.npz")] {
        Npz::from_summary(table).unwrap().write(dir.join(file)).unwrap();
        let back = read_all(&dir.join(file));
        let cols = table.column_names();
        assert_eq!(back.iter().map(|a| a.0.clone()).collect::<Vec<_>>(), cols.to_vec());
        for (j, (_, shape, values)) in back.iter().enumerate() {
            assert_eq!(shape, &vec![table.rows.len()]);
            let expected = table.column(j);
            for (g, e) in values.iter().zip(&expected) {
                assert!(g == e || (g.is_nan() && e.is_nan()), "{}: {g} vs {e}", cols[j]);
            }
        }
    }
    // the printed table has a header and one line per row
    let printed = weights.to_string();
    assert_eq!(printed.lines().count(), 1 + weights.rows.len());
    assert!(printed.lines().nth(1).unwrap().starts_with("w[0]"));
    fs::remove_dir_all(&dir).unwrap();
}

/// MCMC predictive draws at given inputs: `f` is each draw's network output, `y` adds the
/// draw's own σ; both `(chain, draw, point, output)`.
#[test]
fn mcmc_predictive_draws_round_trip() {
    let dir = scratch("mcmc_pred");
    let (model, data, run) = lin_run();
    let xs: Vec<f64> = (0..12).map(|i| i as f64 / 6.0 - 1.0).collect();
    let pred = run.predictive_draws(&model, &data.x, 3).unwrap();
    pred.write_npz(dir.join("predictive.npz")).unwrap();
    let back = read_all(&dir.join("predictive.npz"));
    assert_eq!(back.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), vec!["f", "y"]);
    assert_eq!(back[0].1, vec![3, 10, 12, 1]);
    for c in 0..3 {
        for t in 0..10 {
            let d = &run.canonical[c][t];
            for (i, x) in xs.iter().enumerate() {
                let f = back[0].2[(c * 10 + t) * 12 + i];
                assert!((f - (d[0] * x + d[1])).abs() < 1e-9, "f[{c}, {t}, {i}]");
            }
        }
    }
    // y − f is noise with each draw's σ: standardised, its variance is near 1 (360 values)
    let z: Vec<f64> = (0..360).map(|i| (back[1].2[i] - back[0].2[i]) / run.canonical[i / 120][(i / 12) % 10][2].exp()).collect();
    let var = z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64;
    assert!((var - 1.0).abs() < 0.25, "{var}");
    fs::remove_dir_all(&dir).unwrap();
}

/// VI: predictive draws of a guide at given inputs (one chain, several outputs) and the fit
/// history, read back.
#[test]
fn vi_predictive_draws_and_fit_history_round_trip() {
    let dir = scratch("vi");
    let dev = Cpu::default();
    let x: Vec<f64> = (0..16).map(|i| i as f64 / 8.0 - 1.0).collect();
    let y: Vec<f64> = x.iter().flat_map(|v| [v.sin(), v.cos()]).collect();
    let data = Dataset::regression(&dev, &x, 1, &y, 2).unwrap();
    let mut model = Net::<f64, Cpu>::new(&dev);
    let mut guide = model.mean_field();
    let report =
        fit(&mut model, &mut guide, &data, &FitConfig { steps: 40, record_every: 5, progress: false, ..Default::default() }).unwrap();
    report.to_npz().unwrap().write(dir.join("fit.npz")).unwrap();
    let mut r = NpzReader::new(fs::File::open(dir.join("fit.npz")).unwrap()).unwrap();
    let step: ArrayD<i64> = r.by_name("step").unwrap();
    let elbo: ArrayD<f64> = r.by_name("elbo").unwrap();
    assert_eq!(step.iter().map(|s| *s as usize).collect::<Vec<_>>(), report.history.iter().map(|h| h.step).collect::<Vec<_>>());
    assert_eq!(elbo.iter().copied().collect::<Vec<_>>(), report.history.iter().map(|h| h.elbo).collect::<Vec<_>>());

    let pred = Predictive { chunk: 7, seed: 5, ..Predictive::new(30) }.draws(&model, &guide, &data.x).unwrap();
    pred.write_npz(dir.join("predictive.npz")).unwrap();
    let back = read_all(&dir.join("predictive.npz"));
    assert_eq!(back[0].1, vec![1, 30, 16, 2]);
    assert_eq!(back[0].2, pred.f);
    // the same seed gives the same draws; the draws' mean is near the streamed predictive mean
    let again = Predictive { chunk: 7, seed: 5, ..Predictive::new(30) }.draws(&model, &guide, &data.x).unwrap();
    assert_eq!(again, pred);
    let summary = Predictive { chunk: 7, seed: 5, ..Predictive::new(30) }.run(&model, &guide, &data.x).unwrap();
    for j in 0..32 {
        let m = (0..30).map(|s| pred.f[s * 32 + j]).sum::<f64>() / 30.0;
        assert!((m - summary.mean[j]).abs() < 1e-9, "point/output {j}: {m} vs {}", summary.mean[j]);
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// Bad input loses nothing: a write into a missing directory, or onto a path that cannot be
/// replaced, fails with the path in its message, leaves the previous file byte-identical and no
/// temporary file behind.
#[test]
fn failed_writes_leave_previous_files_and_no_temporaries() {
    let dir = scratch("atomic");
    let (_, _, run) = lin_run();
    let path = dir.join("canonical.npz");
    run.posterior_npz(DrawSet::Canonical).unwrap().write(&path).unwrap();
    let before = fs::read(&path).unwrap();

    let missing = dir.join("missing").join("canonical.npz");
    let err = run.posterior_npz(DrawSet::Raw).unwrap().write(&missing).unwrap_err();
    assert!(matches!(&err, Error::Export { source: ExportError::Io { .. }, .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");

    // a directory where the file should go: the rename fails after the archive was written
    let blocked = dir.join("blocked.npz");
    fs::create_dir(&blocked).unwrap();
    assert!(run.posterior_npz(DrawSet::Raw).unwrap().write(&blocked).is_err());
    assert_eq!(listing(&dir), vec!["blocked.npz", "canonical.npz"], "a temporary file was left behind");
    assert_eq!(fs::read(&path).unwrap(), before);

    // a table of a single chain is fine (R-hat NaN, as az.summary); too few draws is an error
    let mut t = SummaryTable::new();
    assert!(t.push("x", &[vec![1.0, 2.0, 3.0]]).is_err());
    fs::remove_dir_all(&dir).unwrap();
}
