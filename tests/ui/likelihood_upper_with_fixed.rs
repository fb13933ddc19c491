use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<1, 1>,
    #[likelihood(upper = 1.0)]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
