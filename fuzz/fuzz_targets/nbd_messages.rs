#![no_main]
// NBD messages in both directions (option and transmission parsers, whole server and client
// sessions over an in-memory pipe) and sealed-device headers; see
// nitro_fs::internal::fuzzing::nbd_messages for the selector byte.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nitro_fs::internal::fuzzing::nbd_messages(data);
});
