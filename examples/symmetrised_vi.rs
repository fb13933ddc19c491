//! Plain against symmetrised mean-field VI (SYM-VI) on one 1-D regression task, at hidden widths
//! 4, 16 and 64 (one hidden tanh layer), with the same steps, initialisations and seeds.
//!
//! The symmetrised guide is `q^G = (1/|G|) Σ_g q(g⁻¹·)`, trained with the `I_K` bound
//! (`K` elements, the identity included). Per width the example prints one line
//!
//! ```text
//! symmetrised_vi width=W elbo_plain=<f> elbo_sym=<f> lppd_plain=<f> lppd_sym=<f>
//! ```
//!
//! where `elbo_plain` is the plain ELBO of the plainly trained guide, `elbo_sym` the symmetrised
//! objective (plain ELBO + `I_K`) of the symmetrically trained guide, both estimated with many
//! Monte-Carlo samples after training, and the LPPDs are mean test log predictive densities (the
//! symmetrised one under `q^G`). Figures are means over the seeds; details go to stderr,
//! including, where `|G|` is small enough to enumerate (width 4: `|G| = 4!·2⁴ = 384`), the exact
//! information term and a third fit trained with it.
//!
//! What to expect: `I_K ≤ ln K`, and once the guide's symmetric copies are well separated (any
//! non-degenerate guide at width ≥ 16) `I_K` sits at `ln K` with almost no gradient, so the
//! symmetrised objective is the plain ELBO plus about `ln K`. The exact gain `I` can reach
//! `ln |G|` (6, 42 and 250 nats here) but only the `I_K` bound is tractable beyond tiny widths.
//!
//! ```text
//! cargo run --release --example symmetrised_vi            # 3 seeds, 4000 steps, K = 64
//! cargo run --release --example symmetrised_vi -- 500 16  # steps, K (a quick run)
//! cargo run --release --example symmetrised_vi -- --quick   # smoke run: 1 seed, 30 steps, K = 4, small data and evaluations
//! ```

mod common;

use rand::{Rng, SeedableRng};
use weightspace::prelude::*;
use weightspace::symmetry::{information, symmetrised_elbo};

macro_rules! net {
    ($name:ident, $w:literal) => {
        /// One hidden tanh layer; i.i.d. zero-mean priors, so the posterior is invariant under the
        /// group of the hidden layer (|G| = W!·2^W).
        #[bnn]
        struct $name {
            #[layer(prior = Normal(0.0, 1.0))]
            hidden: Dense<1, $w, Tanh>,
            #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
            out: Dense<$w, 1>,
            #[likelihood]
            noise: Gaussian<Fixed<0.3>>,
        }
    };
}

net!(Net4, 4);
net!(Net16, 16);
net!(Net64, 64);

/// Sizes of one run besides the steps and `K`.
#[derive(Clone, Copy)]
struct Budget {
    seeds: &'static [u64],
    n_train: usize,
    n_test: usize,
    /// Repetitions of the end-of-training estimates.
    reps: usize,
    /// Monte-Carlo samples per end-of-training estimate (ELBO and information term).
    eval_samples: usize,
    /// Samples of the test predictive.
    predictive: usize,
}

const FULL: Budget = Budget { seeds: &[0, 1, 2], n_train: 150, n_test: 500, reps: 50, eval_samples: 64, predictive: 1000 };
const QUICK: Budget = Budget { seeds: &[0], n_train: 40, n_test: 50, reps: 2, eval_samples: 8, predictive: 50 };

/// The sinusoidal task of docs/methods.md §4: x ~ U(0, 8), y = sin x + N(0, 0.3²); inputs are
/// standardised with the training mean and sd.
fn task(n_train: usize, n_test: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut draw = |n: usize| {
        let x: Vec<f64> = (0..n).map(|_| rng.gen_range(0.0..8.0)).collect();
        let y: Vec<f64> = x.iter().map(|x: &f64| x.sin() + 0.3 * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
        (x, y)
    };
    let (x, y) = draw(n_train);
    let (xt, yt) = draw(n_test);
    let mean = x.iter().sum::<f64>() / n_train as f64;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n_train as f64).sqrt();
    let z = |v: Vec<f64>| v.into_iter().map(|v| (v - mean) / sd).collect::<Vec<f64>>();
    (z(x), y, z(xt), yt)
}

struct Outcome {
    elbo_plain: f64,
    elbo_sym: f64,
    lppd_plain: f64,
    lppd_sym: f64,
}

fn run<M: Bnn<f32, Cpu>>(
    model0: &M,
    train: &Dataset<f32, Cpu>,
    test: &Dataset<f32, Cpu>,
    steps: usize,
    k: usize,
    seed: u64,
    budget: Budget,
) -> Result<Outcome> {
    let group = SymmetryGroup::of(M::ARCH);
    let elbo_cfg = ElboConfig { samples: 8, ..Default::default() };
    let cfg = FitConfig { steps, lr: 2e-2, lr_end: Some(1e-3), elbo: elbo_cfg, seed, progress: false, ..Default::default() };
    let init = MeanFieldInit { jitter: 1.0, scale: 0.05, seed };
    let n = train.len();

    // plain mean-field VI
    let mut m_plain = model0.clone();
    let mut q_plain = m_plain.mean_field_with(init)?;
    let t = std::time::Instant::now();
    fit(&mut m_plain, &mut q_plain, train, &cfg)?;
    let secs_plain = t.elapsed().as_secs_f64();

    // symmetrised: same steps, initialisation and seed
    let mut m_sym = model0.clone();
    let mut q_sym = m_sym.mean_field_with(init)?;
    let mut objective = SymmetrisedElbo { elbo: elbo_cfg, ..SymmetrisedElbo::new(group.clone(), InfoBound::Sampled { k }) };
    let t = std::time::Instant::now();
    fit_objective(&mut m_sym, &mut q_sym, train, &cfg, &mut objective)?;
    let secs_sym = t.elapsed().as_secs_f64();

    // precise end-of-training figures
    let eval = SymmetrisedElbo { elbo: ElboConfig { samples: budget.eval_samples, ..Default::default() }, ..objective };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1000);
    let reps = budget.reps;
    let (mut plain_of_plain, mut ik_of_plain, mut sym_of_sym, mut plain_of_sym) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..reps {
        plain_of_plain += weightspace::elbo(&m_plain, &q_plain, train, n, &eval.elbo, &mut rng)?.elbo / reps as f64;
        ik_of_plain += information(&group, &q_plain, eval.bound, budget.eval_samples, &mut rng)?.value / reps as f64;
        let s = symmetrised_elbo(&m_sym, &q_sym, train, n, &eval, &mut rng)?;
        sym_of_sym += s.estimate.elbo / reps as f64;
        plain_of_sym += s.plain_elbo / reps as f64;
    }
    let predictive = Predictive { seed, ..Predictive::new(budget.predictive) };
    let lppd_plain = predictive.evaluate(&m_plain, &q_plain, test)?.mean_lpd;
    let mut sym = SymmetrisedGuide::new(&group, &q_sym);
    let lppd_sym = predictive.evaluate(&m_sym, &mut sym, test)?.mean_lpd;
    // how many hidden units still do something: posterior-mean outgoing weight above 0.05 in size
    let active = |q: &M::Guide| -> usize {
        let out = q.layer_params()[1].loc.as_vec();
        out[..out.len() - 1].iter().filter(|v| v.abs() > 0.05).count()
    };
    eprintln!(
        "  width {:>2} seed {seed}: plain ELBO {plain_of_plain:9.3} (its I_{k} {ik_of_plain:.3}) | sym objective {sym_of_sym:9.3} = plain ELBO {plain_of_sym:9.3} + I_{k} {:.3} | lppd {lppd_plain:.4} vs {lppd_sym:.4} | active units {} vs {} | {secs_plain:.1}s vs {secs_sym:.1}s",
        M::ARCH.layers[0].d_out,
        sym_of_sym - plain_of_sym,
        active(&q_plain),
        active(&q_sym),
    );
    // small groups: the exact information term, and training with it
    if group.order().is_some_and(|o| o <= 4096) {
        let exact_of_plain = (0..10)
            .map(|_| information(&group, &q_plain, InfoBound::Exact, budget.eval_samples, &mut rng).map(|e| e.value))
            .sum::<Result<f64>>()?
            / 10.0;
        let mut m_ex = model0.clone();
        let mut q_ex = m_ex.mean_field_with(init)?;
        let mut exact = SymmetrisedElbo { elbo: elbo_cfg, ..SymmetrisedElbo::new(group.clone(), InfoBound::Exact) };
        fit_objective(&mut m_ex, &mut q_ex, train, &cfg, &mut exact)?;
        let eval_ex = SymmetrisedElbo { elbo: ElboConfig { samples: budget.eval_samples, ..Default::default() }, ..exact };
        let (mut sym_ex, mut info_ex) = (0.0, 0.0);
        for _ in 0..reps {
            let s = symmetrised_elbo(&m_ex, &q_ex, train, n, &eval_ex, &mut rng)?;
            sym_ex += s.estimate.elbo / reps as f64;
            info_ex += s.information / reps as f64;
        }
        let lppd_ex = predictive.evaluate(&m_ex, &q_ex, test)?.mean_lpd;
        eprintln!(
            "    exact I (|G| = {}): of the plain guide {exact_of_plain:.3}; trained with exact I: objective {sym_ex:.3} (I = {info_ex:.3}), lppd {lppd_ex:.4}, active units {}",
            group.order().unwrap_or(0),
            active(&q_ex)
        );
    }
    Ok(Outcome { elbo_plain: plain_of_plain, elbo_sym: sym_of_sym, lppd_plain, lppd_sym })
}

fn width<M: Bnn<f32, Cpu>>(
    new: impl Fn(&Cpu) -> M,
    steps: usize,
    k: usize,
    data: &(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>),
    budget: Budget,
) -> Result<()> {
    let dev = Cpu::default();
    let train = Dataset::<f32, _>::regression(&dev, &data.0, 1, &data.1, 1)?;
    let test = Dataset::<f32, _>::regression(&dev, &data.2, 1, &data.3, 1)?;
    let model = new(&dev);
    let group = SymmetryGroup::of(M::ARCH);
    eprintln!("width {}: ln|G| = {:.1}, ln K = {:.2}", M::ARCH.layers[0].d_out, group.log_order(), (k as f64).ln());
    let outs = budget.seeds.iter().map(|&s| run(&model, &train, &test, steps, k, s, budget)).collect::<Result<Vec<_>>>()?;
    let mean = |f: fn(&Outcome) -> f64| outs.iter().map(f).sum::<f64>() / outs.len() as f64;
    println!(
        "symmetrised_vi width={} elbo_plain={:.3} elbo_sym={:.3} lppd_plain={:.4} lppd_sym={:.4}",
        M::ARCH.layers[0].d_out,
        mean(|o| o.elbo_plain),
        mean(|o| o.elbo_sym),
        mean(|o| o.lppd_plain),
        mean(|o| o.lppd_sym)
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = common::Args::parse("[--quick] [STEPS [K]]", &[], &[], 2);
    let budget = if args.quick() { QUICK } else { FULL };
    let steps: usize = args.positional(0, if args.quick() { 30 } else { 4000 });
    let k: usize = args.positional(1, if args.quick() { 4 } else { 64 });
    let data = task(budget.n_train, budget.n_test);
    eprintln!(
        "sinusoidal task: {} training points, {} test points; {steps} steps, K = {k}, seeds {:?}",
        budget.n_train, budget.n_test, budget.seeds
    );
    width(Net4::<f32, Cpu>::new, steps, k, &data, budget)?;
    width(Net16::<f32, Cpu>::new, steps, k, &data, budget)?;
    width(Net64::<f32, Cpu>::new, steps, k, &data, budget)?;
    Ok(())
}
