use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<1, 50, Tanh>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<50, 1>,
}

fn main() {}
