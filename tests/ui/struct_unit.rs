use weightspace::prelude::*;

#[bnn]
struct Net;

fn main() {}
