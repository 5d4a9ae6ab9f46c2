#![no_main]
// Parser + verifier over arbitrary bytes: COSE_Sign1/payload parsing, AWS chain verification at
// the document's timestamp, and the unsigned (QEMU) policy path. Must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nitro_attest::internal::fuzz_document(data);
});
