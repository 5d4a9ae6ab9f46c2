#![no_main]
//! The EIF reader on arbitrary bytes: parse, measure, verify, describe and copy every section
//! (`nitro_eif::internal::fuzz_reader`). Nothing may panic, hang or allocate from an unchecked
//! length.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nitro_eif::internal::fuzz_reader(data));
