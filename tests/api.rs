//! The public surface as a user writes it: one test per path that used to need a detour.

use rand::SeedableRng;
use weightspace::prelude::*;

#[bnn]
struct Line {
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<1, 1>,
    #[likelihood(upper = 2.0)]
    noise: Gaussian<Learned<0.5>>,
}

#[bnn]
struct Tiny {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 4, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<4, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn line_data(dev: &Cpu) -> Dataset<f64, Cpu> {
    let xs: Vec<f64> = (0..16).map(|i| i as f64 / 8.0 - 1.0).collect();
    let ys: Vec<f64> = xs.iter().map(|x| 0.5 * x + 0.1).collect();
    Dataset::regression(dev, &xs, 1, &ys, 1).unwrap()
}

/// The noise scale is read and written on the model, in the units the declaration uses.
#[test]
fn a_model_reads_and_sets_its_noise_scale() -> weightspace::Result<()> {
    let mut model = Line::<f64, Cpu>::new(&Cpu::default());
    assert!((model.noise_scale().unwrap() - 0.5).abs() < 1e-12);
    model.set_noise_scale(0.25)?;
    assert!((model.noise_scale().unwrap() - 0.25).abs() < 1e-12);
    // outside (0, upper): an error naming the setting, and the old value kept
    let e = model.set_noise_scale(2.5).unwrap_err();
    assert!(e.to_string().contains("noise scale"), "{e}");
    assert!((model.noise_scale().unwrap() - 0.25).abs() < 1e-12);
    Ok(())
}

/// Settings are plain data; a guide, a BALI posterior and the prior are run the same way.
#[test]
fn predictive_runs_take_any_weight_source() -> weightspace::Result<()> {
    let dev = Cpu::default();
    let data = line_data(&dev);
    let model = Line::<f64, Cpu>::new(&dev);
    let guide = model.mean_field();
    let pred = Predictive { seed: 3, chunk: 7, ..Predictive::new(20) };
    let a = pred.run(&model, &guide, &data.x)?;
    let b = pred.run(&model, &guide, &data.x)?;
    assert_eq!(a, b, "the same seed gives the same run");
    assert_eq!(a.samples, 20);
    let prior = pred.run_prior(&model, &data.x)?;
    assert_eq!(prior.mean.len(), 16);
    let (posterior, _) = weightspace::bali::fit_bali(
        &mut model.clone(),
        &data,
        &weightspace::bali::BaliConfig { epochs: 2, progress: false, ..Default::default() },
    )?;
    let m = pred.evaluate(&model, posterior.clone(), &data)?;
    assert!(m.mean_lpd.is_finite());
    let mut posterior = posterior;
    let m2 = pred.evaluate(&model, &mut posterior, &data)?;
    assert_eq!(m.mean_lpd, m2.mean_lpd);
    Ok(())
}

/// `dim` of a posterior is one method, not two to choose between.
#[test]
fn a_posterior_has_one_dim() -> weightspace::Result<()> {
    use weightspace::mcmc::{BnnPosterior, LogDensity, NoisePrior};
    let dev = Cpu::default();
    let data = line_data(&dev);
    let model = Line::<f64, Cpu>::new(&dev);
    let post = BnnPosterior::new(&model, &data, NoisePrior::Fixed)?;
    assert_eq!(post.dim(), 2);
    Ok(())
}

/// The test toolkit's errors convert into the library's, so `?` works in a function returning
/// `weightspace::Result`.
#[test]
fn testing_errors_convert_with_question_mark() {
    fn run(draws: &[f64]) -> weightspace::Result<f64> {
        let outcome = weightspace::testing::assert::check_mean(draws, 0.0, 0.01)?;
        let r = weightspace::diagnostics::rhat(&[draws.to_vec(), draws.to_vec()])?;
        Ok(outcome.p_value + r)
    }
    assert!(run(&[0.1, -0.2, 0.05, 0.3, -0.1, 0.0]).is_ok());
    let e = run(&[]).unwrap_err();
    let weightspace::Error::Testing(inner) = &e else { panic!("not a testing error: {e:?}") };
    // the toolkit's own error is kept, typed
    assert!(
        matches!(
            inner.downcast_ref::<weightspace::testing::assert::InferenceTestError>(),
            Some(weightspace::testing::assert::InferenceTestError::TooFew { .. })
        ),
        "{e:?}"
    );
}

/// A guide's log density of untaped weights, without reaching for dfdx's tape API.
#[test]
fn a_guide_gives_the_log_density_of_untaped_weights() -> weightspace::Result<()> {
    use weightspace::symmetry::GuideLogDensity;
    let dev = Cpu::default();
    let model = Tiny::<f64, Cpu>::new(&dev);
    let guide = model.mean_field();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let w = weightspace::sample_guide(Tiny::<f64, Cpu>::ARCH, &guide, 3, &mut rng)?;
    let lq = guide.log_density_untaped(Tiny::<f64, Cpu>::ARCH, &w)?;
    assert_eq!(lq.len(), 3);
    // the same value as the taped path
    let taped = Weights { layers: w.layers.iter().map(|t| t.retaped()).collect() };
    let want = guide.log_density(Tiny::<f64, Cpu>::ARCH, taped, false)?;
    use weightspace::dfdx::prelude::SplitTape;
    assert_eq!(lq, want.split_tape().0.as_vec());
    Ok(())
}

/// Prior draws, the forward pass and the log densities are methods of every model.
#[test]
fn a_model_draws_from_its_prior_and_evaluates_densities() -> weightspace::Result<()> {
    let dev = Cpu::default();
    let data = line_data(&dev);
    let model = Tiny::<f64, Cpu>::new(&dev);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let w = model.sample_prior(5, &mut rng)?;
    assert_eq!(*model.forward(w.clone(), &data.x)?.shape(), (5, 16, 1));
    assert_eq!(model.log_prior(&w)?.len(), 5);
    assert_eq!(model.log_likelihood(w, &data)?.len(), 5 * 16);
    Ok(())
}

/// Metrics live in one namespace and report their own error type, which converts too.
#[test]
fn metrics_errors_are_library_errors() {
    fn run() -> weightspace::Result<f64> {
        Ok(weightspace::metrics::rmse(&[1.0, 2.0], &[1.0])?)
    }
    let e = run().unwrap_err();
    assert!(matches!(e, weightspace::Error::Metric(weightspace::MetricError::LengthMismatch { .. })), "{e:?}");
}
