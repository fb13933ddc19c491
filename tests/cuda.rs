//! The CUDA path: fits a small model on the GPU and checks it against the CPU.
//!
//! Compiled with `--features cuda` (CI compile-checks it with dfdx's `ci-check`, which needs no CUDA
//! toolkit); it runs only on a machine with a GPU.
#![cfg(feature = "cuda")]

use weightspace::prelude::*;

#[bnn]
struct Small {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 16, Tanh>,
    #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
    out: Dense<16, 1>,
    #[likelihood]
    noise: Gaussian<Learned<0.3>>,
}

#[test]
fn fit_and_predict_on_cuda_match_cpu() {
    let xs: Vec<f64> = (0..64).map(|i| i as f64 / 16.0 - 2.0).collect();
    let ys: Vec<f64> = xs.iter().map(|x| x.sin()).collect();
    let cfg = FitConfig { steps: 300, progress: false, ..Default::default() };
    let run_cpu = {
        let dev = Cpu::default();
        let data = Dataset::<f64, _>::regression(&dev, &xs, 1, &ys, 1).unwrap();
        let mut model = Small::<f64, Cpu>::new(&dev);
        let mut guide = model.mean_field();
        let r = fit(&mut model, &mut guide, &data, &cfg).unwrap();
        (r.history.last().unwrap().elbo, Predictive::new(256).evaluate(&model, &guide, &data).unwrap().mean_lpd)
    };
    let run_gpu = {
        let dev = Cuda::default();
        let data = Dataset::<f64, _>::regression(&dev, &xs, 1, &ys, 1).unwrap();
        let mut model = Small::<f64, Cuda>::new(&dev);
        let mut guide = model.mean_field();
        let r = fit(&mut model, &mut guide, &data, &cfg).unwrap();
        (r.history.last().unwrap().elbo, Predictive::new(256).evaluate(&model, &guide, &data).unwrap().mean_lpd)
    };
    // same seeds and host-drawn noise: the two devices follow the same trajectory up to rounding
    assert!((run_cpu.0 - run_gpu.0).abs() < 1e-6 * (1.0 + run_cpu.0.abs()), "{run_cpu:?} vs {run_gpu:?}");
    assert!((run_cpu.1 - run_gpu.1).abs() < 1e-6 * (1.0 + run_cpu.1.abs()), "{run_cpu:?} vs {run_gpu:?}");
}
