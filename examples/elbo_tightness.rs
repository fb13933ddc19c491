//! How tight is BNNP's ELBO? The paper's setting (Rochussen & Fortuin, ICLR 2026, §ELBO):
//!
//! - 10 points, `x ~ U[−4, 4]`, from a [20, 20] ReLU BNN drawn from its prior (weights
//!   `N(0, 1/(fan_in + 1))`), noise sd 0.05;
//! - the model is fitted at `σ_y = 0.1` with the prior fixed at the true prior;
//! - BNNP's amortised guide (output-layer pseudo-precisions from the likelihood) and mean-field VI
//!   are each fitted to that one dataset, and their ELBOs are compared with a naive Monte-Carlo
//!   estimate of `ln Z` over prior samples.
//!
//! The paper reports `ln Z` 13.93, BNNP 13.48 and mean-field VI −25.86.
//!
//! ```text
//! cargo run --release --example elbo_tightness            # full budget
//! cargo run --release --example elbo_tightness -- --quick # CI budget
//! ```
//!
//! The last line is `elbo_tightness log_z=<f> bnnp_elbo=<f> mfvi_elbo=<f>`.

mod common;

use rand::{Rng, SeedableRng};
use weightspace::bnnp::*;
use weightspace::prelude::*;

#[bnn]
struct Truth {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h1: Dense<1, 20, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h2: Dense<20, 20, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<20, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

/// Budgets of one run.
struct Budget {
    log_z_samples: usize,
    bnnp_steps: usize,
    mfvi_steps: usize,
    eval_samples: usize,
}

fn log_mean_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + (v.iter().map(|x| (x - m).exp()).sum::<f64>() / v.len() as f64).ln()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = common::Args::parse("[--quick]", &[], &[], 0).quick();
    let budget = if quick {
        Budget { log_z_samples: 100_000, bnnp_steps: 2_000, mfvi_steps: 3_000, eval_samples: 4_000 }
    } else {
        Budget { log_z_samples: 1_000_000, bnnp_steps: 5_000, mfvi_steps: 10_000, eval_samples: 20_000 }
    };
    let dev = Cpu::default();
    let model = Truth::<f32, Cpu>::new(&dev);
    let mut rng = rand::rngs::StdRng::seed_from_u64(69);

    // the dataset: one function from the prior, 10 noisy points
    let x: Vec<f64> = (0..10).map(|_| rng.gen_range(-4.0..4.0)).collect();
    let w_true = model.sample_prior(1, &mut rng)?;
    let xt = dev.tensor_from_vec(x.iter().map(|&v| v as f32).collect(), (10usize, 1usize));
    let f = model.forward(w_true, &xt)?.as_vec();
    let y: Vec<f64> = f.iter().map(|&f| f as f64 + 0.05 * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
    let data = Dataset::<f32, _>::regression(&dev, &x, 1, &y, 1)?;

    // naive Monte Carlo: ln Z = ln mean_s p(y | w_s), w_s ~ prior
    let t = std::time::Instant::now();
    let mut per_sample = Vec::with_capacity(budget.log_z_samples);
    let chunk = 10_000;
    let mut done = 0;
    while done < budget.log_z_samples {
        let s = chunk.min(budget.log_z_samples - done);
        let w = model.sample_prior(s, &mut rng)?;
        let ll = model.log_likelihood(w, &data)?;
        per_sample.extend(ll.chunks(10).map(|r| r.iter().sum::<f64>()));
        done += s;
    }
    let log_z = log_mean_exp(&per_sample);
    println!("log Z (naive MC, {} prior samples): {log_z:.3}  [{:.1} s]", budget.log_z_samples, t.elapsed().as_secs_f64());

    // BNNP fitted to this one dataset, prior fixed at the truth
    let t = std::time::Instant::now();
    let cfg = GuideConfig {
        output_precision: OutputPrecision::Likelihood,
        jitter: 0.0,
        prior: PriorConfig { training: PriorTraining::Frozen, ..Default::default() },
        ..Default::default()
    };
    let mut guide = model.amortised_guide(cfg)?;
    let mut adam = Adam::new(AdamSettings { lr: 5e-3, ..Default::default() });
    let objective = TaskObjective::Avi { beta: 1.0 };
    let opts = ForwardOptions { samples: 8, ..Default::default() };
    for step in 0..budget.bnnp_steps {
        adam.settings.lr = linear_lr(5e-3, Some(1e-3), step, budget.bnnp_steps);
        let terms = task_terms(&guide, &data, None, &objective, &opts, &mut rng)?;
        let mut grads = terms.loss.backward();
        adam.step(guide.store_mut(), &mut grads)?;
        if step % 500 == 0 {
            println!("  bnnp step {step:5}: ELBO {:.3} (E[ln p] {:.3}, KL {:.3})", terms.objective, terms.ctx_ell, terms.kl);
        }
    }
    let eval = ForwardOptions { samples: 1000, trace: false, ..Default::default() };
    let evals: Vec<f64> = (0..budget.eval_samples / 1000)
        .map(|_| task_terms(&guide, &data, None, &objective, &eval, &mut rng).map(|t| t.objective))
        .collect::<Result<_, _>>()?;
    let bnnp_elbo = evals.iter().sum::<f64>() / evals.len() as f64;
    println!("BNNP ELBO: {bnnp_elbo:.3}  [{:.1} s]", t.elapsed().as_secs_f64());

    // mean-field VI with the same prior and noise
    let t = std::time::Instant::now();
    let mut m = model.clone();
    let mut mf = m.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed: 1 })?;
    let fit_cfg = FitConfig {
        steps: budget.mfvi_steps,
        lr: 1e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples: 8, local_reparam: true, ..Default::default() },
        seed: 3,
        progress: false,
        ..Default::default()
    };
    fit(&mut m, &mut mf, &data, &fit_cfg)?;
    let mut mf_evals = Vec::new();
    for _ in 0..budget.eval_samples / 1000 {
        mf_evals.push(elbo(&m, &mf, &data, data.len(), &ElboConfig { samples: 1000, ..Default::default() }, &mut rng)?.elbo);
    }
    let mfvi_elbo = mf_evals.iter().sum::<f64>() / mf_evals.len() as f64;
    println!("mean-field VI ELBO: {mfvi_elbo:.3}  [{:.1} s]", t.elapsed().as_secs_f64());
    println!("paper: log Z 13.93, BNNP 13.48, mean-field VI -25.86");
    println!("elbo_tightness log_z={log_z:.4} bnnp_elbo={bnnp_elbo:.4} mfvi_elbo={mfvi_elbo:.4}");
    Ok(())
}
