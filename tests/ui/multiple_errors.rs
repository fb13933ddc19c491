// Three unrelated mistakes, all reported by one compile.
use weightspace::prelude::*;

#[bnn]
struct Net {
    #[layer(prior = Normal(0.0, 0.0))]
    hidden: Dense<1, 50, Tahn>,
    #[layer(prior = Normal(0.0, 1.0), pre = unit)]
    out: Dense<50, 1>,
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
