//! A custom meta-learner built from BNNP's pieces instead of `MetaLearner`:
//!
//! - its own **task sampler**: a fixed meta-dataset of heaviside tasks (an in-memory
//!   `TaskCollection`) mixed with freshly generated GP tasks, 3 : 1;
//! - its own **objective schedule**: PP-AVI whose `β` is annealed from 0.1 to 1 (step-like tasks
//!   favour a small `β` early), with a context fraction that shrinks over training (a curriculum);
//! - within-task **chunking** of long contexts, Adam with linear learning-rate decay, seeds,
//!   a progress bar, and a checkpoint that is saved and loaded back;
//! - at the end, an **online** last-layer update on a held-out task.
//!
//! ```text
//! cargo run --release --example meta_custom
//! cargo run --release --example meta_custom -- --quick
//! ```

mod common;

use rand::{Rng, SeedableRng};
use weightspace::bnnp::*;
use weightspace::prelude::*;
use weightspace::Progress;

#[bnn]
struct StepNet {
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h1: Dense<1, 24, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    h2: Dense<24, 24, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<24, 1>,
    #[likelihood(upper = 0.5)]
    noise: Gaussian<Learned<0.1>>,
}

/// The custom task sampler: 3 in 4 tasks from a fixed heaviside meta-dataset, the rest fresh GPs.
struct Mixture {
    fixed: TaskCollection<f32, Cpu>,
    fresh: GpTasks,
}

impl TaskSource<f32, Cpu> for Mixture {
    fn next_task(&mut self, dev: &Cpu, rng: &mut rand::rngs::StdRng) -> weightspace::Result<Dataset<f32, Cpu>> {
        if rng.gen_bool(0.75) {
            self.fixed.next_task(dev, rng)
        } else {
            self.fresh.dataset(dev, rng)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = common::Args::parse("[--quick]", &[], &[], 0).quick();
    let steps = if quick { 40 } else { 1500 };
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let heaviside = Heaviside { x_range: (-3.0, 3.0), ..Default::default() };
    let mut source = Mixture {
        fixed: TaskCollection::generate(&heaviside, if quick { 20 } else { 500 }, &dev, &mut rng)?,
        fresh: GpTasks { x_range: (-3.0, 3.0), lengthscale: 1.0, ..Default::default() },
    };

    let mut guide =
        StepNet::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig { inference_widths: Some(vec![32, 32]), ..Default::default() })?;
    let mut adam = Adam::new(AdamSettings { lr: 3e-3, ..Default::default() });
    let bar = Progress::new(steps, !quick, "custom");
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let progress = step as f64 / steps as f64;
        adam.settings.lr = linear_lr(3e-3, Some(3e-4), step, steps);
        let beta = 0.1 + 0.9 * progress;
        let objective = TaskObjective::PpAvi { beta };
        // curriculum: contexts shrink from 30–70 % to 10–50 % of each task
        let lo = 0.3 - 0.2 * progress;
        let opts = ForwardOptions { samples: 4, chunk: Some(24), ..Default::default() };
        let mut total: Option<weightspace::Taped<(), f32, Cpu>> = None;
        let mut value = 0.0;
        for _ in 0..4 {
            let task = source.next_task(&dev, &mut rng)?;
            let (ctx, tgt) = split_task(&task, (lo, lo + 0.4), &mut rng)?;
            let terms = task_terms(&guide, &ctx, tgt.as_ref(), &objective, &opts, &mut rng)?;
            value += terms.objective / 4.0;
            let loss = terms.loss * 0.25;
            total = Some(match total {
                None => loss,
                Some(t) => t + loss,
            });
        }
        let mut grads = total.expect("four tasks").backward();
        adam.step(guide.store_mut(), &mut grads)?;
        if step % 100 == 0 {
            bar.println(format!("step {step:5}: objective {value:9.2}  β {beta:.2}  σ_y {:.3}", guide.noise_scale()));
        }
        bar.inc();
    }
    bar.finish();
    println!("custom meta-learning: {steps} steps in {:.1} s", t0.elapsed().as_secs_f64());

    // checkpoint: save, load into a fresh guide, check it predicts identically
    std::fs::create_dir_all("target/weightspace")?;
    let path = "target/weightspace/meta_custom.safetensors";
    guide.save(path)?;
    let mut restored =
        StepNet::<f32, Cpu>::new(&dev).amortised_guide(GuideConfig { inference_widths: Some(vec![32, 32]), ..Default::default() })?;
    restored.load(path)?;

    // held-out heaviside task: amortised posterior from 5 points, then 5 more folded in online
    let (x, y) = heaviside.generate(&mut rng)?;
    let first = Dataset::<f32, _>::regression(&dev, &x[..5], 1, &y[..5], 1)?;
    let more = Dataset::<f32, _>::regression(&dev, &x[5..10], 1, &y[5..10], 1)?;
    let targets = Dataset::<f32, _>::regression(&dev, &x[10..], 1, &y[10..], 1)?;
    let a = guide.log_predictive(Some(&first), &targets, 200, &mut rand::rngs::StdRng::seed_from_u64(1))?;
    let b = restored.log_predictive(Some(&first), &targets, 200, &mut rand::rngs::StdRng::seed_from_u64(1))?;
    println!("held-out log predictive with 5 context points: {a:.3} (restored checkpoint: {b:.3})");
    let mut online = guide.online(&first, 200, &mut rng)?;
    online.update(&guide, &more, &mut rng)?;
    let f = online.predict(&targets.x)?.as_vec();
    let n = targets.len();
    let mse = (0..n).map(|i| (f.chunks(n).map(|c| c[i] as f64).sum::<f64>() / 200.0 - targets.y_host()[i]).powi(2)).sum::<f64>() / n as f64;
    println!("after an online last-layer update with 5 more points ({} seen): target MSE of the mean {mse:.3}", online.points_seen());
    println!("meta_custom objective_restored_equal={}", (a - b).abs() < 1e-9);
    Ok(())
}
