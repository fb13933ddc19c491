use weightspace::prelude::*;

#[bnn]
struct Classifier {
    #[layer(prior = Normal(0.0, 1.0))]
    hidden: Dense<2, 8, Relu>,
    #[layer(prior = Normal(0.0, 1.0))]
    out: Dense<8, 2>,
    #[likelihood]
    y: Bernoulli,
}

fn main() {}
