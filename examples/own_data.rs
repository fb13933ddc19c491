//! Your own data: mean-field VI on a regression CSV file, evaluated with the UCI protocol.
//!
//! It reads the file with `DataTable::from_csv` (features: every column but the target, or those of
//! `--features`), takes the published random 90/10 splits (`UciSplits`: NumPy's `seed(1)` stream,
//! so a UCI dataset gets the splits of the papers), standardises each split with its training
//! statistics (`Standardiser`), fits mean-field VI (one hidden layer of 50 ReLU units, Adam,
//! minibatches of 32, 8 weight samples with local reparameterisation) and reports test RMSE and
//! test log-likelihood in the file's own units, mean ± standard error over the splits.
//!
//! Without `--csv` it first writes a synthetic file, `target/weightspace/own_data_synthetic.csv`
//! (400 rows, features `x1..x3`, target `y` around 50 with noise sd 2), and uses that.
//!
//! ```text
//! cargo run --release --example own_data -- --csv data.csv --target price
//! cargo run --release --example own_data -- --csv data.txt --no-header --delimiter ' ' --target 8 --splits 20
//! cargo run --release --example own_data                # the synthetic file
//! cargo run --release --example own_data -- --quick     # smoke run: 120 rows, 2 splits, 3 epochs
//! ```
//!
//! Options: `--target <name|index>` (default: the last column), `--features a,b,...`,
//! `--no-header` (then columns are indices), `--delimiter <char>`, `--splits N` (default 3),
//! `--epochs N` (default 40). The widths of a `#[bnn]` network are compile-time constants, so the
//! network here takes up to 16 features and the unused inputs are zero (their weights see no data
//! and stay at the prior). A bad file stops it with exit status 1 and a message naming the file,
//! row and column.
//!
//! The predictive draws of the first split's test points (original units, ArviZ's `(chain, draw,
//! point, output)` order) are written to `target/weightspace/own_data_predictive.npz`.
//!
//! The last line is `own_data csv=<path> target=<name> rows=… features=… splits=… rmse=… rmse_se=… ll=… ll_se=…`.

mod common;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use weightspace::export::PredictiveDraws;
use weightspace::metrics::{mean_and_se, rmse};
use weightspace::prelude::*;
use weightspace::{Column, TableTargets};

/// The widest input the example's network takes.
const MAX_FEATURES: usize = 16;

#[bnn]
struct OwnNet {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<16, 50, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<50, 1>,
    #[likelihood]
    noise: Gaussian<Learned<0.5>>,
}

type E = f32;
const BATCH: usize = 32;

/// Writes the synthetic CSV: `y = 50 + 8 sin(x1) + 3 x2 − 2 x1 x3 + N(0, 2²)`.
fn write_synthetic(path: &Path, rows: usize) -> std::io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut text = String::from("x1,x2,x3,y\n");
    for _ in 0..rows {
        let (x1, x2, x3): (f64, f64, f64) = (rng.gen_range(-3.0..3.0), rng.gen_range(0.0..10.0), rng.gen_range(-1.0..1.0));
        let y = 50.0 + 8.0 * x1.sin() + 3.0 * x2 - 2.0 * x1 * x3 + 2.0 * rng.sample::<f64, _>(rand_distr::StandardNormal);
        text.push_str(&format!("{x1:.4},{x2:.4},{x3:.4},{y:.4}\n"));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

/// A column named on the command line: an index when the file has no header, else a name.
fn column(text: &str, has_header: bool) -> Column {
    match text.parse::<usize>() {
        Ok(i) if !has_header => Column::Index(i),
        _ => Column::Name(text.to_string()),
    }
}

/// `(n, d)` row-major features widened to `MAX_FEATURES` columns with zeros.
fn pad(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, MAX_FEATURES - d))).collect()
}

struct Outcome {
    rmse: f64,
    ll: f64,
}

/// Fits one split; returns test RMSE and mean test log-likelihood in original units.
fn fit_split(train: &DataTable, test: &DataTable, epochs: usize, k: usize, seed: u64, npz: Option<&Path>) -> weightspace::Result<Outcome> {
    let dev = Cpu::default();
    let s = Standardiser::fit(train)?;
    let (ztr, zte) = (s.apply(train)?, s.apply(test)?);
    let (TableTargets::Real { y: ytr, .. }, TableTargets::Real { y: yte, .. }) = (&ztr.targets, &zte.targets) else {
        unreachable!("own_data reads one real target")
    };
    let d = ztr.d_in;
    let tr = Dataset::<E, _>::regression(&dev, &pad(&ztr.x, d), MAX_FEATURES, ytr, 1)?;
    let te = Dataset::<E, _>::regression(&dev, &pad(&zte.x, d), MAX_FEATURES, yte, 1)?;
    let mut model = OwnNet::<E, Cpu>::new(&dev);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed })?;
    let per_epoch = tr.len().div_ceil(BATCH);
    let cfg = FitConfig {
        steps: epochs * per_epoch,
        batch_size: Some(BATCH),
        lr: 1e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples: 8, local_reparam: true, ..Default::default() },
        seed,
        progress: false,
        ..Default::default()
    };
    fit(&mut model, &mut guide, &tr, &cfg)?;
    let m = Predictive { seed: seed + 1, ..Predictive::new(k) }.evaluate(&model, &guide, &te)?;
    // the predictive in the file's units
    let mean = s.mean_to_original(&m.summary.mean)?;
    if let Some(path) = npz {
        // K predictive draws at the test inputs, in the file's units: f (the network) and y (f
        // plus noise), shape (chain = 1, draw, point, output)
        let draws = Predictive { seed: seed + 2, ..Predictive::new(k) }.draws(&model, &guide, &te.x)?;
        let [c, d, n, o] = draws.shape();
        let y = draws.y.as_deref().map(|y| s.mean_to_original(y)).transpose()?;
        PredictiveDraws::new(c, d, n, o, s.mean_to_original(&draws.f)?, y)?.write_npz(path)?;
    }
    let TableTargets::Real { y: y_orig, .. } = &test.targets else { unreachable!("own_data reads one real target") };
    Ok(Outcome { rmse: rmse(&mean, y_orig)?, ll: m.mean_lpd + s.log_likelihood_shift() })
}

fn run(args: &common::Args) -> Result<String, Box<dyn std::error::Error>> {
    let quick = args.quick();
    let has_header = !args.flag("--no-header");
    let path: PathBuf = match args.value("--csv") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = PathBuf::from("target/weightspace/own_data_synthetic.csv");
            write_synthetic(&p, if quick { 120 } else { 400 })?;
            println!("no --csv given: wrote a synthetic file, {}", p.display());
            p
        }
    };
    let delimiter = match args.value("--delimiter") {
        None => b',',
        Some("\\t" | "tab") => b'\t',
        Some(d) if d.len() == 1 => d.as_bytes()[0],
        Some(d) => args.fail(&format!("--delimiter: one character expected, got `{d}`")),
    };
    let opts = CsvOptions {
        has_header,
        delimiter,
        targets: vec![args.value("--target").map_or(Column::Last, |t| column(t, has_header))],
        features: args.value("--features").map(|f| f.split(',').map(|c| column(c.trim(), has_header)).collect()),
        ..Default::default()
    };
    let table = DataTable::from_csv(&path, &opts)?;
    if table.d_in > MAX_FEATURES {
        return Err(format!(
            "{}: {} feature columns; this example's network takes at most {MAX_FEATURES} (choose some with --features)",
            path.display(),
            table.d_in
        )
        .into());
    }
    let (splits, epochs, k) = if quick { (2, 3, 20) } else { (3, 40, 200) };
    let (splits, epochs): (usize, usize) = (args.get("--splits", splits), args.get("--epochs", epochs));
    if splits < 2 {
        args.fail("--splits: at least 2 (the ± is a standard error over splits)");
    }
    let target = table.target_names[0].clone();
    println!(
        "{}: {} rows; target `{target}`; features {:?}; {splits} UCI split(s) (90/10, NumPy seed 1), {epochs} epochs, K = {k}",
        path.display(),
        table.len(),
        table.feature_names
    );
    let mut out = Vec::new();
    for (i, split) in UciSplits::new(table.len(), splits, 0.1)?.iter().enumerate() {
        let (train, test) = split.tables(&table)?;
        // the first split's predictive draws go to a .npz file (ArviZ's posterior_predictive)
        let npz = (i == 0).then(|| PathBuf::from("target/weightspace/own_data_predictive.npz"));
        if let Some(dir) = npz.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(dir)?;
        }
        let o = fit_split(&train, &test, epochs, k, i as u64, npz.as_deref())?;
        if let Some(p) = &npz {
            println!("wrote {} (f, y: chain, draw, point, output)", p.display());
        }
        println!(
            "split {i:>2}: test RMSE {:.4}, test LL {:.4} (original units; {} train / {} test)",
            o.rmse,
            o.ll,
            train.len(),
            test.len()
        );
        out.push(o);
    }
    let r = mean_and_se(&out.iter().map(|o| o.rmse).collect::<Vec<_>>())?;
    let l = mean_and_se(&out.iter().map(|o| o.ll).collect::<Vec<_>>())?;
    println!("mean-field VI, test RMSE {:.4} ± {:.4}, test LL {:.4} ± {:.4} (original units, mean ± s.e. over splits)", r.0, r.1, l.0, l.1);
    if args.value("--csv").is_none() {
        // the synthetic file's noise is N(0, 2²): the Bayes-optimal predictor (the true function
        // with that noise) has expected RMSE 2 and expected test LL −½ ln(2π·4) − ½
        let ll_opt = -0.5 * (2.0 * std::f64::consts::PI * 4.0).ln() - 0.5;
        println!(
            "Bayes-optimal on the synthetic file: RMSE 2.0000, test LL {ll_opt:.4}; gap RMSE {:+.4}, LL {:+.4}",
            r.0 - 2.0,
            l.0 - ll_opt
        );
    }
    Ok(format!(
        "own_data csv={} target={target} rows={} features={} splits={splits} rmse={:.4} rmse_se={:.4} ll={:.4} ll_se={:.4}",
        path.display(),
        table.len(),
        table.d_in,
        r.0,
        r.1,
        l.0,
        l.1
    ))
}

fn main() {
    let args = common::Args::parse(
        "[--quick] [--csv FILE] [--target NAME|INDEX] [--features A,B,...] [--no-header] [--delimiter C] [--splits N] [--epochs N]",
        &["--no-header"],
        &["--csv", "--target", "--features", "--delimiter", "--splits", "--epochs"],
        0,
    );
    match run(&args) {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("own_data: {e}");
            std::process::exit(1);
        }
    }
}
