//! The SYM-MCMC paper's central claim, measured: at the same number of gradient evaluations, do
//! many short chains from random starts find more of the posterior than one long chain, or a
//! handful of chains?
//!
//! ```text
//! cargo run --release --example chain_budget -- [--dataset regression2d|sinusoidal] [--chains 256] \
//!     [--handful 8] [--warmup 1024] [--seeds 3] [--threads 0]
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
//! match only approximately: each row prints its own count. For each it reports the test LPPD
//! (± s.e. over test points), and the number of distinct modes among the canonicalised draws
//! (exact canonicalisation; `spectral_modes` with the eigengap rule, on at most 1000 draws taken
//! evenly), and finally, from the many-chain run, the KL divergence between the posterior
//! predictive of its first `k` chains and of all of them as `k` grows (moment-matched Gaussians
//! per test point, averaged over test points).
//!
//! The last line, `chain_budget dataset=… lppd_many=… lppd_handful=… lppd_one=… modes_many=…
//! modes_one=… diff_many_one=… diff_se=…`, gives the means over seeds and the standard error of
//! the many − one difference over seeds, then `lppd_many_sd= lppd_one_sd=`, the standard
//! deviations over seeds of the many-chain and the one-chain LPPD.

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

/// Mean over test points of KL(N(m, v) ‖ N(m_k, v_k)) between the predictive of all chains and of
/// the first `k`.
fn predictive_kl<M: Bnn<f32, Cpu>>(model: &M, test: &Dataset<f32, Cpu>, run: &SymMcmcRun, k: usize) -> weightspace::Result<f64> {
    let all = run.predictive(model, test)?;
    let mut first = run.clone();
    first.draws.truncate(k);
    first.canonical.truncate(k);
    let part = first.predictive(model, test)?;
    let n = all.mean.len();
    let kl: f64 = (0..n)
        .map(|i| {
            let (v, vk) = (all.std[i].powi(2), part.std[i].powi(2));
            0.5 * ((vk / v).ln() + (v + (all.mean[i] - part.mean[i]).powi(2)) / vk - 1.0)
        })
        .sum();
    Ok(kl / n as f64)
}

fn experiment<M: Bnn<f32, Cpu>>(model: &M, table: &Table, dataset: &str, args: &Args) -> weightspace::Result<()> {
    let chains: usize = args.get("--chains", if args.quick() { 16 } else { 256 });
    let handful: usize = args.get("--handful", if args.quick() { 4 } else { 8 });
    let warmup: usize = args.get("--warmup", if args.quick() { 60 } else { 1024 });
    let seeds: u64 = args.get("--seeds", if args.quick() { 2 } else { 3 });
    let threads: usize = args.get("--threads", 0);
    if chains < 2 || handful < 1 || handful >= chains || seeds == 0 {
        args.fail("need --chains >= 2, 1 <= --handful < --chains and --seeds >= 1");
    }
    let dev = Cpu::default();
    let (std_table, _) = table.standardise();
    let (train, test) = std_table.split(0.8, 0)?;
    let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
    println!(
        "{dataset}, f1, NUTS in every chain: {chains} chains × {warmup} warm-up × 1 draw against {handful} chains and 1 chain at the same gradient budget, {seeds} seed(s)"
    );
    println!("seed  run       chains  draws/chain  gradient evals   test LPPD (s.e.)   modes  seconds");
    let mut sums = [0.0f64; 3];
    let mut modes = [0.0f64; 3];
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
        let (_, few_row) = score(model, &train, &test, &few)?;
        let one = SymMcmcSettings {
            chains: 1,
            draws_per_chain: draws_for(1),
            sampler: ChainSampler::Nuts(NutsSettings { seed: seed + 2000, ..Default::default() }),
            seed: seed + 2000,
            ..base.clone()
        };
        let (_, one_row) = score(model, &train, &test, &one)?;
        for (i, (name, c, d, row)) in
            [("many", chains, 1, &many), ("handful", handful, few.draws_per_chain, &few_row), ("one", 1, one.draws_per_chain, &one_row)]
                .into_iter()
                .enumerate()
        {
            println!(
                "{seed:>4}  {name:<8} {c:>7}  {d:>11}  {:>14}   {:>7.3} ({:.3})    {:>5}  {:>7.1}",
                row.evaluations, row.lppd.mean, row.lppd.se, row.modes, row.seconds
            );
            sums[i] += row.lppd.mean;
            modes[i] += row.modes as f64;
        }
        lppd_many.push(many.lppd.mean);
        lppd_one.push(one_row.lppd.mean);
        let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 4)).take_while(|&k| k < chains).collect();
        ks.push(chains);
        kl_rows
            .push(ks.into_iter().map(|k| predictive_kl(model, &test, &many_run, k).map(|kl| (k, kl))).collect::<weightspace::Result<_>>()?);
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
    println!(
        "chain_budget dataset={dataset} chains={chains} handful={handful} seeds={seeds} lppd_many={:.4} lppd_handful={:.4} lppd_one={:.4} modes_many={:.1} modes_handful={:.1} modes_one={:.1} diff_many_one={mean_diff:.4} diff_se={se:.4} lppd_many_sd={sd_many:.4} lppd_one_sd={sd_one:.4}",
        sums[0] / s,
        sums[1] / s,
        sums[2] / s,
        modes[0] / s,
        modes[1] / s,
        modes[2] / s
    );
    Ok(())
}

fn main() -> Result<(), weightspace::Error> {
    let args = Args::parse(
        "[--quick] [--dataset regression2d|sinusoidal] [--chains 256] [--handful 8] [--warmup 1024] [--seeds 3] [--threads 0]",
        &[],
        &["--dataset", "--chains", "--handful", "--warmup", "--seeds", "--threads"],
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
