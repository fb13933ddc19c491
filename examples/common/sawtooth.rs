//! The sawtooth set-up shared by `meta_sawtooth`, `prior_transfer` and `bnnp_bench`: the networks,
//! the held-out tasks, the BNNP guide settings the main job meta-trains, and a mean-field VI fit on
//! one context set.

use rand::SeedableRng;
use weightspace::bnnp::*;
use weightspace::prelude::*;
use weightspace::NormalParams;

/// The network: two ReLU layers of 32 units; the noise is learned (at most 0.5).
#[bnn]
pub struct SawNet {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub h1: Dense<1, 32, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub h2: Dense<32, 32, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub out: Dense<32, 1>,
    #[likelihood(upper = 0.5)]
    pub noise: Gaussian<Learned<0.1>>,
}

/// The paper's 1-D network ([64, 64] ReLU; σ_y starts at 0.05, at most 0.3), for
/// `meta_sawtooth --paper` and `bnnp_bench`.
#[bnn]
pub struct PaperNet {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub h1: Dense<1, 64, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub h2: Dense<64, 64, Relu>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    pub out: Dense<64, 1>,
    #[likelihood(upper = 0.3)]
    pub noise: Gaussian<Learned<0.05>>,
}

/// One task's inputs and outputs.
pub type Task = (Vec<f64>, Vec<f64>);

/// The held-out tasks every run is scored on: 108 points each, the first 8 the largest context and
/// the last 100 the targets.
pub fn held_out_tasks(sawtooth: Sawtooth, n: usize) -> Result<Vec<Task>, weightspace::Error> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    (0..n).map(|_| Sawtooth { n_range: (108, 109), ..sawtooth }.generate(&mut rng)).collect()
}

/// The BNNP guide of [`SawNet`].
pub type G = AmortisedGuide<f32, Cpu>;
/// A fitted mean-field model and its guide.
pub type Fitted = (SawNet<f32, Cpu>, SawNetGuide<f32, Cpu>);

/// Where a full `meta_sawtooth` run with the default prior writes its meta-learned guide, for the
/// paper's family or (`shift`) the random-shift family.
pub fn checkpoint_path(shift: bool) -> &'static str {
    if shift {
        "target/weightspace/meta_sawtooth_shift.safetensors"
    } else {
        "target/weightspace/meta_sawtooth.safetensors"
    }
}

/// The main job's prior: `family` and the output layer's family, started narrow around one network
/// with `spread` (`0` starts it centred at zero).
pub fn prior_config(spread: f64, family: PriorFamily, output_family: Option<PriorFamily>) -> PriorConfig {
    let init = if spread > 0.0 { PriorInit::Network { spread, seed: 0 } } else { PriorInit::Centred };
    PriorConfig { family, output_family, init, ..Default::default() }
}

/// The main job's default prior: diagonal, started at spread 0.01.
pub const DEFAULT_SPREAD: f64 = 0.01;

/// The main job's meta-training settings: `steps` Adam steps of 4 tasks, S = 4, lr 3e-3 → 3e-4;
/// `checkpoint` writes the guide there every 500 steps.
pub fn meta_config(steps: usize, checkpoint: Option<&str>, progress: bool) -> MetaConfig {
    MetaConfig {
        steps,
        tasks_per_step: 4,
        samples: 4,
        adam: AdamSettings { lr: 3e-3, ..Default::default() },
        lr_end: Some(3e-4),
        checkpoint: checkpoint.map(|path| Checkpointing { path: path.into(), every: 500 }),
        progress,
        record_every: (steps / 10).max(1),
        ..Default::default()
    }
}

/// Mean-field VI on one context set, with the noise fixed at `noise_raw` (the guide's raw
/// parameter) and either the model's standard prior or the meta-learned prior of `learned`.
pub fn mfvi(ctx: &Dataset<f32, Cpu>, noise_raw: f32, learned: Option<&G>, steps: usize, seed: u64) -> Result<Fitted, weightspace::Error> {
    let dev = Cpu::default();
    let mut model = SawNet::<f32, Cpu>::new(&dev);
    model.noise.raw = dev.tensor([noise_raw]);
    let mut guide = model.mean_field_with(MeanFieldInit { jitter: 1.0, scale: 0.05, seed })?;
    let cfg = FitConfig {
        steps,
        lr: 1e-2,
        lr_end: Some(1e-3),
        elbo: ElboConfig { samples: 4, learn_hyperparameters: false, ..Default::default() },
        seed,
        progress: false,
        ..Default::default()
    };
    match learned {
        None => {
            fit(&mut model, &mut guide, ctx, &cfg)?;
        }
        Some(g) => {
            // start at the learned prior itself (its means and marginal sds): a random start far
            // from a narrow prior's means costs more KL than 600 steps can win back
            let marginals = g.prior().marginals(g.store());
            start_at(&mut guide.h1, &marginals[0]);
            start_at(&mut guide.h2, &marginals[1]);
            start_at(&mut guide.out, &marginals[2]);
            let mut objective = LearnedPriorElbo::new(g, 4)?;
            fit_objective(&mut model, &mut guide, ctx, &cfg, &mut objective)?;
        }
    }
    Ok((model, guide))
}

/// Sets one layer of a mean-field guide to `(means, sds)`, in `[W | b]` row order.
fn start_at<const N: usize>(q: &mut NormalParams<N, f32, Cpu>, (mean, sd): &(Vec<f64>, Vec<f64>)) {
    q.loc.copy_from(&mean.iter().map(|&v| v as f32).collect::<Vec<_>>());
    q.log_scale.copy_from(&sd.iter().map(|&v| v.ln() as f32).collect::<Vec<_>>());
}
