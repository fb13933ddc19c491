use weightspace::prelude::*;

#[bnn]
enum Net {
    Small,
    Large,
}

fn main() {}
