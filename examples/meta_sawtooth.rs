//! Meta-learn a BNN prior on sawtooth functions with BNNP, then use it on held-out tasks with very
//! little data.
//!
//! 1. Meta-training: every step draws 4 fresh sawtooth tasks (40–99 points on [−2, 2]), splits each
//!    at random into context and targets, and takes an Adam step on the PP-AVI objective for the
//!    learned prior, the inference networks and the noise. The tasks are the paper's family (the
//!    teeth at the same place in every task); `--shift` draws a random shift per task instead.
//!    The prior is diagonal and its hidden layers start narrow around one network
//!    ([`PriorInit::Network`], spread 0.01): every weight sample then shares the hidden features,
//!    and the prior's means learn the teeth. `--spread 0` starts the prior centred at zero instead,
//!    where the hidden features stay random and the learned prior only draws lines;
//!    `--family unit` learns a full-rank prior per unit.
//! 2. Held-out tasks with 1, 2, 4 and 8 context points: the mean per-point log predictive density of
//!    100 target points under
//!    - BNNP with the learned prior (amortised: one forward pass per task),
//!    - mean-field VI with the standard `N(0, 1/(fan_in+1))` prior (fitted per task),
//!    - mean-field VI with the learned prior (prior transfer, fitted per task).
//!
//!    All three use the meta-learned noise. Beside them, the `oracle` column is the Bayes-optimal
//!    predictor of the same targets (it knows the generator: [`OracleLpd`]), the best any prior
//!    can do.
//! 3. PNGs in `target/weightspace/`: function samples of the initial and the learned prior, and
//!    posterior predictives on one held-out task with 4 context points.
//!
//! ```text
//! cargo run --release --example meta_sawtooth              # 20000 steps, about 4 minutes
//! cargo run --release --example meta_sawtooth -- --quick   # smoke run
//! cargo run --release --example meta_sawtooth -- --steps 40000
//! cargo run --release --example meta_sawtooth -- --spread 0 --steps 3000   # a prior centred at zero
//! cargo run --release --example meta_sawtooth -- --shift   # the harder family: a random shift per task
//! cargo run --release --example meta_sawtooth -- --paper --minutes 30   # one resumable segment of the paper's run
//! ```
//!
//! `--paper` runs the paper's settings ([64, 64] ReLU, S = 32, 5 tasks per step, lr 3e-3 → 1e-4
//! over 50k steps, σ_y initialised at 0.05 with upper bound 0.3; our diagonal prior started at
//! spread 0.01) in segments: each call resumes from `target/weightspace/meta_sawtooth_paper.safetensors`
//! (the whole training state, written every 250 steps, so a killed run loses at most 250 steps),
//! trains until `--steps` or `--minutes` run out, scores the held-out tasks and adds a row to the
//! learning curve (`meta_sawtooth_paper_curve.{csv,png}`). `--fresh` starts over.
//!
//! Over MPI, the meta-training is data-parallel (each rank evaluates its share of a step's tasks;
//! the gradients are summed over ranks) and rank 0 evaluates and plots. The line
//! `meta_training ranks=R steps=… seconds=… compute_seconds=… allreduce_seconds=…` splits the
//! training time:
//!
//! ```text
//! cargo build --release --features mpi --example meta_sawtooth
//! mpirun -n 2 target/release/examples/meta_sawtooth --steps 3000
//! ```

mod common;

use rand::SeedableRng;
use weightspace::bnnp::*;
use weightspace::comm::Communicator;
use weightspace::prelude::*;
use weightspace::{band_plot, line_plot, BandPlot, LinePlot};

use common::sawtooth::{checkpoint_path, held_out_tasks, meta_config, mfvi, prior_config, PaperNet, SawNet, DEFAULT_SPREAD};
use weightspace::metrics::mean_and_se;

/// Samples, mean and a central 95 % band of `(S, N)` function values.
fn band(f: &[f32], n: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let s = f.len() / n;
    let samples: Vec<Vec<f64>> = f.chunks(n).map(|c| c.iter().map(|&v| v as f64).collect()).collect();
    let (mut mean, mut lo, mut hi) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let mut col: Vec<f64> = samples.iter().map(|r| r[i]).collect();
        col.sort_by(f64::total_cmp);
        mean[i] = col.iter().sum::<f64>() / s as f64;
        lo[i] = col[(0.025 * (s - 1) as f64) as usize];
        hi[i] = col[(0.975 * (s - 1) as f64) as usize];
    }
    (samples, mean, lo, hi)
}

fn plot(path: &str, title: &str, grid: &[f64], f: &[f32], points: Option<(&[f64], &[f64])>) -> Result<(), weightspace::Error> {
    let (samples, mean, lo, hi) = band(f, grid.len());
    let shown: Vec<Vec<f64>> = samples.into_iter().take(12).collect();
    band_plot(path, &BandPlot { title, x: grid, mean: &mean, lower: &lo, upper: &hi, samples: &shown, points })
}

/// The machine-readable line of a meta-training run: its time, split into computation and
/// collectives.
fn print_training(comm: &dyn Communicator, report: &MetaReport) {
    println!(
        "meta_training ranks={} steps={} seconds={:.3} compute_seconds={:.3} allreduce_seconds={:.3}",
        comm.size(),
        report.steps,
        report.seconds,
        report.seconds - report.communication_seconds,
        report.communication_seconds
    );
}

const PAPER_CHECKPOINT: &str = "target/weightspace/meta_sawtooth_paper.safetensors";
const PAPER_CURVE: &str = "target/weightspace/meta_sawtooth_paper_curve.csv";
const PAPER_CURVE_PNG: &str = "target/weightspace/meta_sawtooth_paper_curve.png";

/// `--paper`: the paper's settings, in resumable segments. Each call continues from the
/// checkpoint (if any), trains until `--steps` or `--minutes` run out, then scores the held-out
/// tasks and adds a row to the learning curve.
fn paper(comm: &dyn Communicator, args: &common::Args) -> Result<(), Box<dyn std::error::Error>> {
    let quick = args.quick();
    let steps = args.get("--steps", if quick { 4 } else { 50_000 });
    let minutes = args.get("--minutes", 0.0f64);
    if !(minutes.is_finite() && minutes >= 0.0) {
        args.fail(&format!("--minutes {minutes}: expected a finite number >= 0 (0: no limit)"));
    }
    if args.flag("--shift") {
        args.fail("--paper runs the paper's family (no shift)");
    }
    let sawtooth = Sawtooth::default();
    std::fs::create_dir_all("target/weightspace")?;
    let dev = Cpu::default();
    let prior = prior_config(DEFAULT_SPREAD, PriorFamily::WeightDiagonal, None);
    let mut guide = PaperNet::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig { prior, ..Default::default() })?;
    let cfg = MetaConfig {
        steps,
        tasks_per_step: 5,
        samples: 32,
        adam: AdamSettings { lr: 3e-3, ..Default::default() },
        lr_end: Some(1e-4),
        checkpoint: Some(Checkpointing { path: PAPER_CHECKPOINT.into(), every: 250 }),
        progress: !quick,
        record_every: 1000,
        time_limit: (minutes > 0.0).then(|| std::time::Duration::from_secs_f64(60.0 * minutes)),
        ..Default::default()
    };
    let mut meta = MetaLearner::new(cfg)?;
    if args.flag("--fresh") {
        for f in [PAPER_CHECKPOINT, PAPER_CURVE] {
            if std::path::Path::new(f).exists() {
                std::fs::remove_file(f)?;
            }
        }
    }
    if std::path::Path::new(PAPER_CHECKPOINT).exists() {
        meta.resume(&mut guide, PAPER_CHECKPOINT).map_err(|e| format!("{e} (pass --fresh to start over)"))?;
        println!("resumed from {PAPER_CHECKPOINT} at step {}", meta.steps_taken());
    }
    println!(
        "--paper: [64, 64] ReLU, S = 32, 5 tasks per step, lr 3e-3 -> 1e-4 over {steps} steps, σ_y from 0.05 (at most 0.3); prior {:?}",
        prior.init
    );
    let report = meta.run_on(comm, &mut guide, &mut Generated(sawtooth))?;
    print_training(comm, &report);
    if !comm.is_root() {
        return Ok(());
    }
    let step = meta.steps_taken();
    println!(
        "at step {step} of {steps}: {:.1} ms per step in this segment ({} steps skipped for a non-finite loss); learned noise sd {:.4}",
        1e3 * report.seconds / report.steps.max(1) as f64,
        report.skipped_steps,
        guide.noise_scale()
    );

    // score the held-out tasks, and add the row to the curve (replacing one of the same step)
    let tasks = held_out_tasks(sawtooth, if quick { 3 } else { 20 })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut row = vec![step as f64];
    let mut oracle = Vec::new();
    for nc in [1usize, 2, 4, 8] {
        let (mut b, mut o) = (Vec::new(), Vec::new());
        for (x, y) in &tasks {
            let ctx = Dataset::<f32, _>::regression(&dev, &x[..nc], 1, &y[..nc], 1)?;
            let tgt = Dataset::<f32, _>::regression(&dev, &x[8..], 1, &y[8..], 1)?;
            b.push(guide.log_predictive(Some(&ctx), &tgt, 500, &mut rng)?);
            o.push(sawtooth.oracle_lpd((&x[..nc], &y[..nc]), (&x[8..], &y[8..]))?);
        }
        row.push(mean_and_se(&b)?.0);
        oracle.push(mean_and_se(&o)?.0);
    }
    row.extend(&oracle);
    row.push(guide.noise_scale());
    let mut rows: Vec<Vec<f64>> = match std::fs::read_to_string(PAPER_CURVE) {
        Ok(text) => text.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap_or(f64::NAN)).collect()).collect(),
        Err(_) => Vec::new(),
    };
    rows.retain(|r| r.len() == row.len() && r[0] != row[0]);
    rows.push(row.clone());
    rows.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut csv = String::from("step,nc1_bnnp,nc2_bnnp,nc4_bnnp,nc8_bnnp,nc1_oracle,nc2_oracle,nc4_oracle,nc8_oracle,noise\n");
    for r in &rows {
        csv.push_str(&r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","));
        csv.push('\n');
    }
    std::fs::write(PAPER_CURVE, csv)?;
    println!("\nlearning curve ({PAPER_CURVE}): held-out LPD of BNNP, learned prior (oracle in brackets)");
    println!("{:>7} | {:>17} | {:>17} | {:>17} | {:>17} | {:>6}", "step", "1 context point", "2", "4", "8", "σ_y");
    for r in &rows {
        println!(
            "{:>7} | {:>7.3} ({:>6.3}) | {:>7.3} ({:>6.3}) | {:>7.3} ({:>6.3}) | {:>7.3} ({:>6.3}) | {:>6.3}",
            r[0], r[1], r[5], r[2], r[6], r[3], r[7], r[4], r[8], r[9]
        );
    }
    let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let (x, b4, b8, o4, o8) = (col(0), col(3), col(4), col(7), col(8));
    line_plot(
        PAPER_CURVE_PNG,
        &LinePlot {
            title: "--paper: held-out log predictive density",
            x_label: "meta-training step",
            y_label: "nats per target point",
            x: &x,
            series: &[("BNNP, 4 context points", &b4), ("BNNP, 8", &b8), ("optimum, 4", &o4), ("optimum, 8", &o8)],
        },
    )?;
    let grid: Vec<f64> = (0..300).map(|i| -2.0 + 4.0 * i as f64 / 299.0).collect();
    let xg = dev.tensor_from_vec(grid.iter().map(|&v| v as f32).collect(), (grid.len(), 1usize));
    plot(
        "target/weightspace/meta_sawtooth_paper_prior_learned.png",
        &format!("--paper, step {step}: meta-learned prior, function samples"),
        &grid,
        &guide.predict(None, &xg, 200, &mut rng)?.as_vec(),
        None,
    )?;
    println!("wrote {PAPER_CURVE_PNG} and target/weightspace/meta_sawtooth_paper_prior_learned.png");
    println!(
        "meta_sawtooth_paper step={step} nc4_bnnp={:.3} nc4_oracle={:.3} nc8_bnnp={:.3} nc8_oracle={:.3} noise={:.4}",
        row[3], row[7], row[4], row[8], row[9]
    );
    Ok(())
}

fn main() {
    // over MPI (`--features mpi`, launched by mpirun/srun) the meta-training is data-parallel and
    // rank 0 evaluates; a rank that fails ends the whole job
    #[cfg(feature = "mpi")]
    weightspace::comm::Mpi::run(|comm| {
        if let Err(e) = job(comm) {
            comm.abort(1, &format!("meta_sawtooth: rank {} of {} failed: {e}; aborting all ranks", comm.rank(), comm.size()));
        }
        Ok(())
    });
    #[cfg(not(feature = "mpi"))]
    if let Err(e) = job(&weightspace::comm::SingleProcess) {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn job(comm: &dyn Communicator) -> Result<(), Box<dyn std::error::Error>> {
    let args = common::Args::parse(
        "[--quick] [--shift] [--bnnp-only] [--steps N] [--spread F] [--family diagonal|unit|diagonal-unit-output] | --paper [--fresh] [--steps N] [--minutes M]",
        &["--shift", "--bnnp-only", "--paper", "--fresh"],
        &["--steps", "--spread", "--family", "--minutes"],
        0,
    );
    if args.flag("--paper") {
        return paper(comm, &args);
    }
    let quick = args.quick();
    let steps = args.get("--steps", if quick { 60 } else { 20_000 });
    let (held_out, mf_steps) = if quick { (3, 100) } else { (20, 600) };
    std::fs::create_dir_all("target/weightspace")?;
    let dev = Cpu::default();
    let model = SawNet::<f32, Cpu>::new(&dev);
    // the prior starts narrow around one network, so that the hidden layers learn features
    // (`--spread 0` starts centred at zero: then only the output layer learns, see `PriorInit`)
    let spread = args.get("--spread", DEFAULT_SPREAD);
    let (family, output_family) = match args.value("--family").unwrap_or("diagonal") {
        "diagonal" => (PriorFamily::WeightDiagonal, None),
        "unit" => (PriorFamily::UnitFullRank, None),
        "diagonal-unit-output" => (PriorFamily::WeightDiagonal, Some(PriorFamily::UnitFullRank)),
        other => args.fail(&format!("--family {other}: expected diagonal, unit or diagonal-unit-output")),
    };
    let prior = prior_config(spread, family, output_family);
    let init = prior.init;
    let mut guide = model.amortised_guide(GuideConfig { prior, ..Default::default() })?;
    // `--bnnp-only` skips the mean-field VI columns (for ablations)
    let with_mfvi = !args.flag("--bnnp-only");
    let initial = guide.clone();
    let sawtooth = Sawtooth { random_shift: args.flag("--shift"), ..Default::default() };
    println!(
        "task family: sawtooth, {}; prior {:?} (output layer {:?}), {:?}",
        if sawtooth.random_shift { "random shift s ~ U[0, p) (--shift)" } else { "no shift (the paper's)" },
        family,
        output_family.unwrap_or(family),
        init
    );

    // 1. meta-training
    // a full run with the default prior leaves its guide for `prior_transfer`
    let default_prior = spread == DEFAULT_SPREAD && family == PriorFamily::WeightDiagonal && output_family.is_none();
    let cfg = meta_config(steps, (!quick && default_prior).then(|| checkpoint_path(sawtooth.random_shift)), !quick);
    let report = MetaLearner::new(cfg)?.run_on(comm, &mut guide, &mut Generated(sawtooth))?;
    print_training(comm, &report);
    if !comm.is_root() {
        return Ok(()); // rank 0 evaluates and plots
    }
    println!(
        "meta-training: {} steps ({} skipped for a non-finite loss) in {:.1} s ({:.1} ms/step); learned noise sd {:.3} (true {})",
        report.steps,
        report.skipped_steps,
        report.seconds,
        1e3 * report.seconds / report.steps as f64,
        guide.noise_scale(),
        sawtooth.noise
    );
    for r in &report.history {
        println!(
            "  step {:5}  objective {:9.2}  ctx ell {:8.2}  tgt lpp {:8.2}  KL {:8.2}  σ_y {:.3}",
            r.step, r.objective, r.ctx_ell, r.tgt_lpp, r.kl, r.noise
        );
    }
    let noise_raw = guide.store().values(guide.noise_param())[0] as f32;

    // 2. held-out tasks
    let tasks = held_out_tasks(sawtooth, held_out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    println!("\nheld-out tasks: {held_out}, 100 targets each; mean per-point log predictive density (higher is better)");
    println!("{:>9} | {:>16} | {:>16} | {:>16} | {:>16}", "context", "BNNP learned", "MFVI standard", "MFVI learned", "oracle");
    let mut summary = String::from("meta_sawtooth");
    for nc in [1usize, 2, 4, 8] {
        let (mut b, mut ms, mut ml, mut or) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (ti, (x, y)) in tasks.iter().enumerate() {
            let ctx = Dataset::<f32, _>::regression(&dev, &x[..nc], 1, &y[..nc], 1)?;
            let tgt = Dataset::<f32, _>::regression(&dev, &x[8..], 1, &y[8..], 1)?;
            b.push(guide.log_predictive(Some(&ctx), &tgt, 500, &mut rng)?);
            if with_mfvi {
                let (m, q) = mfvi(&ctx, noise_raw, None, mf_steps, ti as u64)?;
                ms.push(Predictive::new(500).evaluate(&m, &q, &tgt)?.mean_lpd);
                let (m, q) = mfvi(&ctx, noise_raw, Some(&guide), mf_steps, ti as u64)?;
                ml.push(Predictive::new(500).evaluate(&m, &q, &tgt)?.mean_lpd);
            }
            or.push(sawtooth.oracle_lpd((&x[..nc], &y[..nc]), (&x[8..], &y[8..]))?);
        }
        let ((bm, bs), (om, os)) = (mean_and_se(&b)?, mean_and_se(&or)?);
        if with_mfvi {
            let ((sm, ss), (lm, ls)) = (mean_and_se(&ms)?, mean_and_se(&ml)?);
            println!("{nc:>9} | {bm:>8.3} ± {bs:<5.3} | {sm:>8.3} ± {ss:<5.3} | {lm:>8.3} ± {ls:<5.3} | {om:>8.3} ± {os:<5.3}");
            summary.push_str(&format!(" nc{nc}_bnnp={bm:.3} nc{nc}_mfvi={sm:.3} nc{nc}_mfvi_learned={lm:.3} nc{nc}_oracle={om:.3}"));
        } else {
            println!("{nc:>9} | {bm:>8.3} ± {bs:<5.3} | {:>16} | {:>16} | {om:>8.3} ± {os:<5.3}", "-", "-");
            summary.push_str(&format!(" nc{nc}_bnnp={bm:.3} nc{nc}_oracle={om:.3}"));
        }
    }

    // 3. pictures
    let grid: Vec<f64> = (0..300).map(|i| -2.0 + 4.0 * i as f64 / 299.0).collect();
    let xg = dev.tensor_from_vec(grid.iter().map(|&v| v as f32).collect(), (grid.len(), 1usize));
    plot(
        "target/weightspace/meta_sawtooth_prior_initial.png",
        "initial prior: function samples",
        &grid,
        &initial.predict(None, &xg, 200, &mut rng)?.as_vec(),
        None,
    )?;
    plot(
        "target/weightspace/meta_sawtooth_prior_learned.png",
        "meta-learned prior: function samples",
        &grid,
        &guide.predict(None, &xg, 200, &mut rng)?.as_vec(),
        None,
    )?;
    let (x, y) = &tasks[0];
    let ctx = Dataset::<f32, _>::regression(&dev, &x[..4], 1, &y[..4], 1)?;
    let pts = (&x[..4], &y[..4]);
    plot(
        "target/weightspace/meta_sawtooth_posterior_bnnp.png",
        "BNNP, learned prior: posterior given 4 points",
        &grid,
        &guide.predict(Some(&ctx), &xg, 200, &mut rng)?.as_vec(),
        Some(pts),
    )?;
    let (m, q) = mfvi(&ctx, noise_raw, None, mf_steps, 0)?;
    let draws = weightspace::sample_guide(SawNet::<f32, Cpu>::ARCH, &q, 200, &mut rng)?;
    plot(
        "target/weightspace/meta_sawtooth_posterior_mfvi.png",
        "mean-field VI, standard prior: posterior given 4 points",
        &grid,
        &m.forward(draws, &xg)?.as_vec(),
        Some(pts),
    )?;
    println!("\nwrote target/weightspace/meta_sawtooth_{{prior_initial,prior_learned,posterior_bnnp,posterior_mfvi}}.png");
    println!("{summary} noise={:.4}", guide.noise_scale());
    Ok(())
}
