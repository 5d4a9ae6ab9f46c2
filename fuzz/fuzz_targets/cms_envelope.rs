#![no_main]
// Placeholder until the owning crate wires its parser in; see fuzz/README.md.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = data;
});
