//! Benchmark placeholder: replaced by the crate's criterion benchmark.

fn main() {}
