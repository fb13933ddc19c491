use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<1, 1>,
    #[likelihood(upper = 0.5)]
    noise: Gaussian<Learned<2.0>>,
}

fn main() {}
