//! The SYM-MCMC paper's central claim, measured: at the same number of gradient evaluations, do
//! many short chains from random starts find more of the posterior than one long chain, or a
//! handful of chains?
//!
//! ```text
//! cargo run --release --example chain_budget -- [--dataset regression2d|sinusoidal] [--chains 256] \
//!     [--handful 8] [--warmup 1024] [--seeds 3] [--threads 0] [--reference-chains 4×chains] \
//!     [--reference-warmup 2×warmup] [--reference-draws 16]
//! cargo run --release --example chain_budget -- --quick   # smoke run: 16 chains × 60 warm-up steps, 2 seeds
//! ```
//!
//! Every run is NUTS in every chain (the batched sampler, Stan's warm-up per chain), f1 = 1×3
//! tanh, N(0, 1) weights, σ ~ HalfNormal(1), chains from U(−2, 2), on the paper's protocol (whole
//! dataset standardised, one seeded 80/20 split). Per seed:
//! - **many**: `--chains` chains × `--warmup` warm-up steps × 1 draw; its gradient evaluations
//!   are the budget `B`;
//! - **handful**: `--handful` chains, the same warm-up, as many draws each as fill `B`;
//! - **one**: one chain, the same warm-up, as many draws as fill `B`.
//!
//! The draw counts come from the many-chain run's evaluations per transition, so the budgets
//! match only approximately: each row prints its own count. The best available answer is a
//! **reference** run, made once with its own seed: `--reference-chains` chains, a
//! `--reference-warmup` warm-up and `--reference-draws` draws each (by default 4× the chains, twice
//! the warm-up, 16 draws; the KL between its two halves of chains is printed as its own precision).
//! For each run it reports the test LPPD (± s.e. over test points), the number of distinct modes
//! among the canonicalised draws (exact canonicalisation; `spectral_modes` with the eigengap rule,
//! on at most 1000 draws taken evenly), and the KL divergence of its posterior predictive from the
//! reference's (`PosteriorPredictive::kl`: moment-matched Gaussians per test point, averaged over
//! test points); and finally, from the many-chain run, the KL divergence between the predictive of
//! its first `k` chains and of all of them as `k` grows.
//!
//! The last line, `chain_budget dataset=… lppd_many=… lppd_handful=… lppd_one=… modes_many=…
//! modes_one=… diff_many_one=… diff_se=…`, gives the means over seeds and the standard error of
//! the many − one difference over seeds, then `lppd_many_sd= lppd_one_sd=`, the standard
//! deviations over seeds of the many-chain and the one-chain LPPD, then `kl_many= kl_handful=
//! kl_one=`, the mean KLs from the reference, `kl_diff_one_many= kl_diff_se=`, the mean one − many
//! difference and its standard error over seeds, and `kl_reference_halves=`.

mod common;

use common::Args;
use weightspace::mcmc::data::Table;
use weightspace::mcmc::*;
use weightspace::prelude::*;
use weightspace::symmetry::{Canonicalisation, SpectralSettings};

#[bnn]
struct F1In1 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

#[bnn]
struct F1In2 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<2, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

/// The seed of the reference run, apart from every compared run's (seeds 0.., 1000.., 2000..).
const REFERENCE_SEED: u64 = 10_000;

/// One configuration's outcome.
struct Row {
    lppd: Lppd,
    evaluations: u64,
    modes: usize,
    seconds: f64,
}

/// Runs `chains` chains with `draws` draws each and scores them.
fn score<M: Bnn<f32, Cpu>>(
    model: &M,
    train: &Dataset<f32, Cpu>,
    test: &Dataset<f32, Cpu>,
    settings: &SymMcmcSettings,
) -> weightspace::Result<(SymMcmcRun, Row)> {
    let run = sym_mcmc(model, train, settings, &Canonicalisation::Exact)?;
    let lppd = run.lppd(model, test)?;
    let modes = run.modes(1000, &SpectralSettings { seed: settings.seed, ..Default::default() })?.count();
    let row = Row { lppd, evaluations: run.gradient_evaluations, modes, seconds: run.seconds };
    Ok((run, row))
}

/// The predictive of the chains `range` of `run`.
fn chains_predictive<M: Bnn<f32, Cpu>>(
    model: &M,
    test: &Dataset<f32, Cpu>,
    run: &SymMcmcRun,
    range: std::ops::Range<usize>,
) -> weightspace::Result<PosteriorPredictive> {
    let (draws, canonical) = (run.draws[range.clone()].to_vec(), run.canonical[range].to_vec());
    SymMcmcRun { draws, canonical, report: run.report.clone(), ..*run }.predictive(model, test)
}

fn experiment<M: Bnn<f32, Cpu>>(model: &M, table: &Table, dataset: &str, args: &Args) -> weightspace::Result<()> {
    let chains: usize = args.get("--chains", if args.quick() { 16 } else { 256 });
    let handful: usize = args.get("--handful", if args.quick() { 4 } else { 8 });
    let warmup: usize = args.get("--warmup", if args.quick() { 60 } else { 1024 });
    let seeds: u64 = args.get("--seeds", if args.quick() { 2 } else { 3 });
    let threads: usize = args.get("--threads", 0);
    let reference_chains: usize = args.get("--reference-chains", 4 * chains);
    let reference_draws: usize = args.get("--reference-draws", 16);
    let reference_warmup: usize = args.get("--reference-warmup", 2 * warmup);
    if chains < 2 || handful < 1 || handful >= chains || seeds == 0 || reference_chains < 2 || reference_draws == 0 {
        args.fail("need --chains >= 2, 1 <= --handful < --chains, --seeds >= 1 and a non-empty reference");
    }
    let dev = Cpu::default();
    let (std_table, _) = table.standardise();
    let (train, test) = std_table.split(0.8, 0)?;
    let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
    println!(
        "{dataset}, f1, NUTS in every chain: {chains} chains × {warmup} warm-up × 1 draw against {handful} chains and 1 chain at the same gradient budget, {seeds} seed(s)"
    );
    // The best available answer: a run with `reference_chains` chains, a longer warm-up and
    // `reference_draws` draws each, seeded apart from every compared run. Each run's predictive is
    // scored by its KL from it; the KL between the reference's two halves of chains is its precision.
    let reference = SymMcmcSettings {
        chains: reference_chains,
        warmup: reference_warmup,
        draws_per_chain: reference_draws,
        sampler: ChainSampler::Nuts(NutsSettings { seed: REFERENCE_SEED, ..Default::default() }),
        threads,
        seed: REFERENCE_SEED,
        progress: !args.quick(),
        ..Default::default()
    };
    let (reference_run, reference_row) = score(model, &train, &test, &reference)?;
    let reference_predictive = reference_run.predictive(model, &test)?;
    let half = reference_chains / 2;
    let floor = chains_predictive(model, &test, &reference_run, 0..half)?.kl(&chains_predictive(
        model,
        &test,
        &reference_run,
        half..reference_chains,
    )?)?;
    println!(
        "reference: {reference_chains} chains × {reference_warmup} warm-up × {reference_draws} draws, {} gradient evaluations, test LPPD {:.3} ({:.3}), {} modes, {:.1} s; KL between its halves {floor:.4}",
        reference_row.evaluations, reference_row.lppd.mean, reference_row.lppd.se, reference_row.modes, reference_row.seconds
    );
    println!("seed  run       chains  draws/chain  gradient evals   test LPPD (s.e.)   modes  KL(ref ‖ run)  seconds");
    let mut sums = [0.0f64; 3];
    let mut modes = [0.0f64; 3];
    let mut kls: [Vec<f64>; 3] = Default::default();
    let (mut lppd_many, mut lppd_one) = (Vec::new(), Vec::new());
    let mut kl_rows: Vec<Vec<(usize, f64)>> = Vec::new();
    for seed in 0..seeds {
        let base = SymMcmcSettings {
            chains,
            warmup,
            draws_per_chain: 1,
            sampler: ChainSampler::Nuts(NutsSettings { seed, ..Default::default() }),
            threads,
            seed,
            progress: !args.quick(),
            ..Default::default()
        };
        let (many_run, many) = score(model, &train, &test, &base)?;
        let per_transition = many.evaluations as f64 / (chains * (warmup + 1)) as f64;
        let draws_for = |c: usize| ((many.evaluations as f64 / (c as f64 * per_transition)).round() as usize).saturating_sub(warmup).max(1);
        let few = SymMcmcSettings {
            chains: handful,
            draws_per_chain: draws_for(handful),
            sampler: ChainSampler::Nuts(NutsSettings { seed: seed + 1000, ..Default::default() }),
            seed: seed + 1000,
            ..base.clone()
        };
        let (few_run, few_row) = score(model, &train, &test, &few)?;
        let one = SymMcmcSettings {
            chains: 1,
            draws_per_chain: draws_for(1),
            sampler: ChainSampler::Nuts(NutsSettings { seed: seed + 2000, ..Default::default() }),
            seed: seed + 2000,
            ..base.clone()
        };
        let (one_run, one_row) = score(model, &train, &test, &one)?;
        let runs = [
            ("many", chains, 1, &many, &many_run),
            ("handful", handful, few.draws_per_chain, &few_row, &few_run),
            ("one", 1, one.draws_per_chain, &one_row, &one_run),
        ];
        for (i, (name, c, d, row, run)) in runs.into_iter().enumerate() {
            let kl = reference_predictive.kl(&run.predictive(model, &test)?)?;
            println!(
                "{seed:>4}  {name:<8} {c:>7}  {d:>11}  {:>14}   {:>7.3} ({:.3})    {:>5}  {kl:>13.4}  {:>7.1}",
                row.evaluations, row.lppd.mean, row.lppd.se, row.modes, row.seconds
            );
            sums[i] += row.lppd.mean;
            modes[i] += row.modes as f64;
            kls[i].push(kl);
        }
        lppd_many.push(many.lppd.mean);
        lppd_one.push(one_row.lppd.mean);
        let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 4)).take_while(|&k| k < chains).collect();
        ks.push(chains);
        let all = many_run.predictive(model, &test)?;
        kl_rows.push(
            ks.into_iter()
                .map(|k| all.kl(&chains_predictive(model, &test, &many_run, 0..k)?).map(|kl| (k, kl)))
                .collect::<weightspace::Result<_>>()?,
        );
    }
    println!("KL(predictive of all {chains} chains ‖ predictive of the first k), mean over test points:");
    for (seed, row) in kl_rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|(k, kl)| format!("k={k}: {kl:.4}")).collect();
        println!("  seed {seed}: {}", cells.join(", "));
    }
    let s = seeds as f64;
    let diffs: Vec<f64> = lppd_many.iter().zip(&lppd_one).map(|(m, o)| m - o).collect();
    // mean ± s.e. of the paired differences, and each run's spread over seeds (NaN for one seed)
    let (mean_diff, se) = weightspace::metrics::mean_and_se(&diffs).unwrap_or((f64::NAN, f64::NAN));
    let sd = |v: &[f64]| weightspace::metrics::mean_and_se(v).map_or(f64::NAN, |(_, se)| se * (v.len() as f64).sqrt());
    let (sd_many, sd_one) = (sd(&lppd_many), sd(&lppd_one));
    let kl_diffs: Vec<f64> = kls[2].iter().zip(&kls[0]).map(|(o, m)| o - m).collect();
    let (kl_diff, kl_diff_se) = weightspace::metrics::mean_and_se(&kl_diffs).unwrap_or((f64::NAN, f64::NAN));
    let kl_mean = |v: &[f64]| v.iter().sum::<f64>() / s;
    println!(
        "chain_budget dataset={dataset} chains={chains} handful={handful} seeds={seeds} lppd_many={:.4} lppd_handful={:.4} lppd_one={:.4} modes_many={:.1} modes_handful={:.1} modes_one={:.1} diff_many_one={mean_diff:.4} diff_se={se:.4} lppd_many_sd={sd_many:.4} lppd_one_sd={sd_one:.4} kl_many={:.4} kl_handful={:.4} kl_one={:.4} kl_diff_one_many={kl_diff:.4} kl_diff_se={kl_diff_se:.4} kl_reference_halves={floor:.4}",
        sums[0] / s,
        sums[1] / s,
        sums[2] / s,
        modes[0] / s,
        modes[1] / s,
        modes[2] / s,
        kl_mean(&kls[0]),
        kl_mean(&kls[1]),
        kl_mean(&kls[2]),
    );
    Ok(())
}

fn main() -> Result<(), weightspace::Error> {
    let args = Args::parse(
        "[--quick] [--dataset regression2d|sinusoidal] [--chains 256] [--handful 8] [--warmup 1024] [--seeds 3] [--threads 0] [--reference-chains 4×chains] [--reference-warmup 2×warmup] [--reference-draws 16]",
        &[],
        &["--dataset", "--chains", "--handful", "--warmup", "--seeds", "--threads", "--reference-chains", "--reference-warmup", "--reference-draws"],
        0,
    );
    let dataset = args.value("--dataset").unwrap_or("regression2d");
    let n_quick = args.quick().then_some(60);
    match dataset {
        "regression2d" => {
            experiment(&F1In2::<f32, Cpu>::new(&Cpu::default()), &data::regression2d(n_quick.unwrap_or(256), 0), dataset, &args)
        }
        "sinusoidal" => experiment(&F1In1::<f32, Cpu>::new(&Cpu::default()), &data::sinusoidal(n_quick.unwrap_or(150), 0), dataset, &args),
        other => args.fail(&format!("--dataset {other}: use regression2d or sinusoidal")),
    }
}
