// The declaration has one mistake; code using the model still type-checks against the stubs that
// are emitted beside the error, so the mistake gives exactly one message.
use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 8, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<8, 1, Sigmoidd>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {
    let dev = Cpu::default();
    let model = Net::<f32, Cpu>::new(&dev);
    let _guide: NetGuide<f32, Cpu> = model.mean_field();
    let _layers = model.prior_params().len() + Net::<f32, Cpu>::ARCH.layers.len();
    let _hidden = &model.hidden.weight;
    let _noise = &model.noise.raw;
    let w = Weights::<f32, Cpu> { layers: Vec::new() };
    let _typed: Result<NetWeights<f32, Cpu>> = NetWeights::from_weights(w);
}
