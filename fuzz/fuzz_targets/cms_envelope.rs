#![no_main]
// BER CMS EnvelopedData (`CiphertextForRecipient`): parse, then decrypt the content with a fixed
// key; plus the sealed-secret and key-policy parsers on the same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nitro_kms::internal::fuzz_cms_envelope(data);
    nitro_kms::internal::fuzz_documents(data);
});
