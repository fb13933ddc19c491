use weightspace::prelude::*;

const HIDDEN: usize = 50;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, HIDDEN, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<50, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
