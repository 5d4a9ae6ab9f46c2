//! The nitro-examples package: the quickstart and the example CLIs of the nitro-* crates (run
//! them with `cargo run --release --example NAME -- ARGS`, see `examples/README.md`), their
//! criterion benchmarks and their end-to-end tests. This library is empty: the package exists
//! for its examples, and is not published.
