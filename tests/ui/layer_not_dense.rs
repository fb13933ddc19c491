use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Conv2d<1, 50>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
