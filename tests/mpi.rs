//! The MPI checks, run under `mpirun` (the `mpi` feature; `.ci/run` launches them):
//!
//! ```text
//! cargo test --release --features mpi --test mpi --no-run
//! mpirun -n 2 --oversubscribe target/release/deps/mpi-<hash>             # equality checks
//! mpirun -n 2 --oversubscribe target/release/deps/mpi-<hash> --fail err  # must end, not hang
//! ```
//!
//! Equality: on every rank count, rank 0 also runs each algorithm alone (`SingleProcess`) with the
//! same seed and asserts that the sharded run's draws are the same bits, and that data-parallel
//! meta-training steps and data-parallel VI steps give the one-process parameters within a float
//! tolerance, also when a meta-training run checkpointed on R ranks is resumed on one, and that
//! draws written to per-rank shards merge into the one-process draws. Faults: with `--fail err`
//! or `--fail panic`, the log density of rank 1 fails part-way through sampling while rank 0 waits
//! in a collective; the job must end with a non-zero exit code and a message naming rank 1.

use weightspace::bnnp::{Amortised, Generated, GuideConfig, MetaConfig, MetaLearner, Sawtooth};
use weightspace::comm::{Communicator, Mpi, SingleProcess};
use weightspace::mcmc::*;
use weightspace::prelude::*;

/// A correlated 2-D Gaussian; fails (error or panic) at its `fail_at`-th batched call.
struct Gauss {
    calls: usize,
    fail_at: Option<(usize, bool)>,
}

impl LogDensity for Gauss {
    fn dim(&self) -> usize {
        2
    }
    fn logp(&mut self, x: &[f64], g: &mut [f64]) -> weightspace::Result<f64> {
        // precision [[2, -1.5], [-1.5, 2]] (scaled), mean (1, -1)
        let (a, b) = (x[0] - 1.0, x[1] + 1.0);
        g[0] = -(2.0 * a - 1.5 * b);
        g[1] = -(2.0 * b - 1.5 * a);
        Ok(-0.5 * (2.0 * a * a - 3.0 * a * b + 2.0 * b * b))
    }
}

impl BatchLogDensity for Gauss {
    fn logp_batch(&mut self, x: &[f64], lp: &mut [f64], g: &mut [f64]) -> weightspace::Result<()> {
        self.calls += 1;
        if let Some((at, panic)) = self.fail_at {
            if self.calls == at {
                if panic {
                    panic!("the log density panics on purpose at call {at}");
                }
                return Err(weightspace::Error::NonFinite { what: format!("the log density, on purpose at call {at}"), index: 0 });
            }
        }
        for (c, l) in lp.iter_mut().enumerate() {
            *l = self.logp(&x[2 * c..2 * c + 2], &mut g[2 * c..2 * c + 2])?;
        }
        Ok(())
    }
}

#[bnn]
struct F1 {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 3, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<3, 1>,
    #[likelihood]
    noise: Gaussian<Learned<1.0>>,
}

fn init(c: usize) -> Vec<Vec<f64>> {
    (0..c).map(|i| vec![(i as f64 * 0.37).sin() * 2.0, (i as f64 * 0.91).cos() * 2.0]).collect()
}

/// The sharded many-chain sampler gives rank 0 the same bits as one process.
fn many_chain_equal(comm: &Mpi, name: &str, settings: &ManyChainSettings, chains: usize) -> weightspace::Result<()> {
    let sharded = sample_many_chains_on(comm, &mut Gauss { calls: 0, fail_at: None }, init(chains), settings)?;
    if let Some(run) = sharded {
        let alone = sample_many_chains(&mut Gauss { calls: 0, fail_at: None }, init(chains), settings)?;
        assert_eq!(run.ranks, comm.size());
        assert_eq!(run.draws, alone.draws, "{name}: draws differ between {} ranks and 1", comm.size());
        assert_eq!(run.logp, alone.logp, "{name}: log densities differ");
        assert_eq!(run.step_sizes, alone.step_sizes, "{name}: step sizes differ");
        assert_eq!(run.inverse_mass, alone.inverse_mass, "{name}: mass matrices differ");
        assert_eq!(run.iterations, alone.iterations, "{name}: per-iteration statistics differ");
        assert_eq!((run.divergences.clone(), run.gradient_evaluations), (alone.divergences.clone(), alone.gradient_evaluations));
        let mean: f64 = run.pooled().iter().map(|p| p[0]).sum::<f64>() / run.pooled().len() as f64;
        println!(
            "mpi {name}: ranks={} chains={chains} draws bit-identical to 1 rank; mean x0 {mean:.3} (exact 1); seconds={:.3} allreduce_seconds={:.3}",
            comm.size(),
            run.seconds,
            run.communication_seconds
        );
    }
    Ok(())
}

/// The sharded SYM-MCMC workflow (both samplers) gives rank 0 the same draws and LPPD as one process.
fn workflow_equal(comm: &Mpi, sampler: ChainSampler, name: &str) -> weightspace::Result<()> {
    let dev = Cpu::default();
    let (train, test) = weightspace::mcmc::data::sinusoidal(40, 3).standardise().0.split(0.8, 3)?;
    let (train, test) = (train.to_dataset::<f32, _>(&dev)?, test.to_dataset::<f32, _>(&dev)?);
    let model = F1::<f32, Cpu>::new(&dev);
    let settings = SymMcmcSettings { chains: 21, warmup: 60, draws_per_chain: 2, sampler, seed: 5, ..Default::default() };
    let sharded = sym_mcmc_on(comm, &model, &train, &settings, &NoCanonicalisation)?;
    if let Some(run) = sharded {
        let alone = sym_mcmc_on(&SingleProcess, &model, &train, &settings, &NoCanonicalisation)?.expect("one process is rank 0");
        assert_eq!(run.draws, alone.draws, "{name}: draws differ between {} ranks and 1", comm.size());
        let (a, b) = (run.lppd(&model, &test)?, alone.lppd(&model, &test)?);
        assert_eq!(a.mean.to_bits(), b.mean.to_bits(), "{name}: LPPD differs");
        println!("mpi {name}: ranks={} lppd={:?} equal to 1 rank", comm.size(), a.mean);
    }
    Ok(())
}

#[bnn]
struct MetaNet {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h: Dense<1, 8, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<8, 1>,
    #[likelihood(upper = 0.3)]
    noise: Gaussian<Learned<0.1>>,
}

/// Data-parallel meta-training: 4 steps of 5 tasks (uneven over 2 ranks) give rank 0 the
/// one-process parameters, every one within 1e-9 (f64; the gradients differ only in the order of
/// their additions, ~1e-16 relative, and Adam's 4 steps of lr 1e-3 scale that down further).
fn meta_equal(comm: &Mpi) -> weightspace::Result<()> {
    let dev = Cpu::default();
    let cfg = MetaConfig { steps: 4, tasks_per_step: 5, samples: 4, progress: false, seed: 9, ..Default::default() };
    let fresh = || MetaNet::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default());
    let mut guide = fresh()?;
    let report = MetaLearner::new(cfg.clone())?.run_on(comm, &mut guide, &mut Generated(Sawtooth::default()))?;
    if comm.is_root() {
        let mut alone = fresh()?;
        let single = MetaLearner::new(cfg)?.run_on(&SingleProcess, &mut alone, &mut Generated(Sawtooth::default()))?;
        let mut max_diff = 0.0f64;
        let mut moved = 0.0f64;
        let (start, s) = (fresh()?, guide.store());
        for id in s.ids() {
            for ((a, b), z) in s.values(id).iter().zip(alone.store().values(id)).zip(start.store().values(id)) {
                max_diff = max_diff.max((a - b).abs());
                moved = moved.max((b - z).abs());
            }
        }
        assert!(moved > 1e-4, "the steps moved the parameters ({moved})");
        assert!(max_diff < 1e-9, "meta-training: parameters differ by {max_diff:e} between {} ranks and 1", comm.size());
        let (a, b) = (report.history.last().expect("recorded").objective, single.history.last().expect("recorded").objective);
        assert!((a - b).abs() < 1e-9 * b.abs().max(1.0), "objective {a} vs {b}");
        println!(
            "mpi meta: ranks={} 4 steps × 5 tasks, max parameter difference {max_diff:e} (moved up to {moved:.2e}); objective {a:.6}",
            comm.size()
        );
    }
    Ok(())
}

/// A meta-training run stopped after 2 of 4 steps on R ranks resumes from its checkpoint on one
/// process and ends where a one-process run of all 4 steps ends (within 1e-9, as above).
fn meta_resume_across_rank_counts(comm: &Mpi) -> weightspace::Result<()> {
    let dev = Cpu::default();
    let cfg = MetaConfig { steps: 4, tasks_per_step: 5, samples: 4, progress: false, seed: 11, ..Default::default() };
    let fresh = || MetaNet::<f64, Cpu>::new(&dev).amortised_guide(GuideConfig::default());
    let mut guide = fresh()?;
    let mut meta = MetaLearner::new(cfg.clone())?;
    for _ in 0..2 {
        meta.step_on(comm, &mut guide, &mut Generated(Sawtooth::default()))?;
    }
    if comm.is_root() {
        let path = std::env::temp_dir().join(format!("ws_mpi_resume_{}.safetensors", std::process::id()));
        meta.save(&guide, &path)?;
        let mut resumed = fresh()?;
        let mut meta = MetaLearner::new(cfg.clone())?;
        meta.resume(&mut resumed, &path)?;
        std::fs::remove_file(&path).ok();
        let report = meta.run_on(&SingleProcess, &mut resumed, &mut Generated(Sawtooth::default()))?;
        assert_eq!((report.steps, meta.steps_taken()), (2, 4));
        let mut straight = fresh()?;
        MetaLearner::new(cfg)?.run_on(&SingleProcess, &mut straight, &mut Generated(Sawtooth::default()))?;
        let mut max_diff = 0.0f64;
        for id in straight.store().ids() {
            for (a, b) in resumed.store().values(id).iter().zip(straight.store().values(id)) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        assert!(max_diff < 1e-9, "resumed on 1 process after 2 steps on {} ranks: parameters differ by {max_diff:e}", comm.size());
        println!("mpi meta resume: 2 steps on {} ranks, 2 more on 1 after resuming; max parameter difference {max_diff:e}", comm.size());
    }
    Ok(())
}

/// Data-parallel mean-field VI: `fit_on` over the ranks (31 points in minibatches of 8, 8, 8 and
/// 7, each split unevenly) gives rank 0 the one-process ELBO terms at every recorded step and the
/// one-process parameters, within 1e-9 relative (f64; only the order of the additions differs).
fn svi_equal(comm: &Mpi) -> weightspace::Result<()> {
    let dev = Cpu::default();
    let x: Vec<f64> = (0..31).map(|i| -2.0 + 4.0 * i as f64 / 30.0).collect();
    let y: Vec<f64> = x.iter().map(|x| (1.5 * x).sin()).collect();
    let data = Dataset::<f64, _>::regression(&dev, &x, 1, &y, 1)?;
    let cfg = FitConfig { steps: 12, batch_size: Some(8), lr: 0.05, seed: 5, record_every: 1, progress: false, ..Default::default() };
    let fresh = || {
        let model = F1::<f64, Cpu>::new(&dev);
        let guide = model.mean_field();
        (model, guide)
    };
    let (mut model, mut guide) = fresh();
    let report = weightspace::fit_on(comm, &mut model, &mut guide, &data, &cfg)?;
    if comm.is_root() {
        let (mut m1, mut g1) = fresh();
        let alone = fit(&mut m1, &mut g1, &data, &cfg)?;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
        for (a, b) in report.history.iter().zip(&alone.history) {
            for (u, v) in [(a.elbo, b.elbo), (a.expected_log_lik, b.expected_log_lik), (a.kl, b.kl)] {
                assert!(close(u, v), "step {}: {} ranks give {u}, one process {v}", a.step, comm.size());
            }
        }
        let flat = |g: &<F1<f64, Cpu> as Bnn<f64, Cpu>>::Guide| -> Vec<f64> {
            g.layer_params().iter().flat_map(|p| [p.loc.as_vec(), p.log_scale.as_vec()].concat()).collect()
        };
        let (a, b) = (flat(&guide), flat(&g1));
        let max_diff = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
        assert!(max_diff < 1e-9, "VI: parameters differ by {max_diff:e} between {} ranks and 1", comm.size());
        let (na, nb) = (model.noise_scale().unwrap_or(f64::NAN), m1.noise_scale().unwrap_or(f64::NAN));
        assert!(close(na, nb), "learned noise {na} vs {nb}");
        println!(
            "mpi vi: ranks={} 12 steps of minibatch 8 of 31 points, max parameter difference {max_diff:e}; final elbo {:.6}",
            comm.size(),
            report.history.last().expect("recorded").elbo
        );
    }
    Ok(())
}

/// The SYM-MCMC workflow written to per-rank shards (`sym_mcmc_shard`) and merged on rank 0
/// (`sym_mcmc_merge`) gives the one-process run's draws and canonical draws, bit for bit.
fn shards_equal(comm: &Mpi) -> weightspace::Result<()> {
    // every rank writes into rank 0's directory: its process id, shared
    let mut pid = vec![0.0; comm.size()];
    comm.all_gather(&[f64::from(std::process::id())], &vec![1; comm.size()], &mut pid)?;
    let dir = std::env::temp_dir().join(format!("ws_mpi_shards_{}", pid[0]));
    let dev = Cpu::default();
    let train = weightspace::mcmc::data::sinusoidal(40, 1).standardise().0.to_dataset::<f64, _>(&dev)?;
    let model = F1::<f64, Cpu>::new(&dev);
    let settings = SymMcmcSettings { chains: 21, warmup: 100, draws_per_chain: 3, seed: 8, ..Default::default() };
    let canon = weightspace::symmetry::Canonicalisation::Exact;
    sym_mcmc_shard(comm, &model, &train, &settings, &dir)?;
    comm.all_max(0.0)?; // every shard is written
    if comm.is_root() {
        let merged = sym_mcmc_merge(&model, &train, &settings, &canon, &dir)?;
        std::fs::remove_dir_all(&dir).ok();
        let alone = sym_mcmc(&model, &train, &settings, &canon)?;
        assert_eq!(merged.ranks, comm.size());
        assert_eq!(merged.draws, alone.draws, "shards of {} ranks: draws differ from one process", comm.size());
        assert_eq!(merged.canonical, alone.canonical, "canonical draws differ");
        println!("mpi shards: ranks={} 21 chains written to per-rank shards and merged: bit-identical to 1 rank", comm.size());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fail = args.iter().position(|a| a == "--fail").and_then(|i| args.get(i + 1)).cloned();
    Mpi::run(|comm| {
        if let Some(how) = &fail {
            // rank 1's log density fails at its 30th call; rank 0 is then waiting in a collective
            let fail_at = (comm.rank() == 1).then_some((30, how == "panic"));
            let s = ManyChainSettings { warmup: 200, draws: 10, seed: 1, ..Default::default() };
            sample_many_chains_on(comm, &mut Gauss { calls: 0, fail_at }, init(32), &s)?;
            if comm.size() > 1 {
                eprintln!("mpi fault check: rank {} finished although rank 1 was to fail", comm.rank());
                std::process::exit(3);
            }
            return Ok(());
        }
        let base = ManyChainSettings { warmup: 150, draws: 20, seed: 7, ..Default::default() };
        many_chain_equal(comm, "chees-shared", &base, 37)?;
        let per = ManyChainSettings { step_size: StepSizeAdaptation::PerChain, diagonal_mass_matrix: true, ..base.clone() };
        many_chain_equal(comm, "chees-per-chain-diag", &per, 37)?;
        // fewer chains than ranks × blocks: some ranks may hold none
        many_chain_equal(comm, "chees-few-chains", &base, 5)?;
        workflow_equal(comm, ChainSampler::ManyChain(ManyChainSettings::default()), "sym_mcmc-chees")?;
        workflow_equal(comm, ChainSampler::Nuts(NutsSettings { seed: 2, ..Default::default() }), "sym_mcmc-nuts")?;
        meta_equal(comm)?;
        meta_resume_across_rank_counts(comm)?;
        svi_equal(comm)?;
        shards_equal(comm)?;
        if comm.is_root() {
            println!("mpi checks passed on {} ranks", comm.size());
        }
        Ok(())
    });
}
