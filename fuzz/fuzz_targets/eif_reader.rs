#![no_main]
//! The EIF reader on arbitrary bytes: parse, measure, verify, describe and copy every section.
//! Nothing may panic, hang or allocate from an unchecked length.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut eif) = nitro_eif::EifReader::new(std::io::Cursor::new(data)) else {
        return;
    };
    let _ = eif.describe();
    let _ = eif.verify();
    let _ = eif.check_certificate_validity(std::time::UNIX_EPOCH);
    for i in 0..eif.sections().len() {
        let _ = eif.copy_section(i, &mut std::io::sink());
    }
    let _ = nitro_eif::Pcr::of_certificate_pem(data);
});
