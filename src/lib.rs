//! Test-support code shared by the examples, benches and integration tests.

pub mod emulator;
