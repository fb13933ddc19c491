use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    #[layer(per = unit)]
    out: Dense<1, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
