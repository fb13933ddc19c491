use weightspace::prelude::*;

#[bnn]
struct Net {
    #[likelihood]
    noise: Gaussian<Fixed<0.1>>,
}

fn main() {}
