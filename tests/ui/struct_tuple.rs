use weightspace::prelude::*;

#[bnn]
struct Net(Dense<1, 1>, Gaussian<Fixed<0.1>>);

fn main() {}
