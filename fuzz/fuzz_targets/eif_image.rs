#![no_main]
//! Container images on arbitrary bytes: the input is written to a file and loaded as an OCI
//! image layout tar or a `docker save` archive (index and manifest JSON, image config, tar
//! layers plain, gzip or zstd, whiteouts, links), then turned into a customer ramdisk.
//! Nothing may panic, hang or allocate from an unchecked length.
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("nitro-fuzz-eif-image-{}.tar", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    if let Ok(ramdisk) = nitro_eif::CustomerRamdisk::from_image(path) {
        let _ = ramdisk.image_config();
    }
});
