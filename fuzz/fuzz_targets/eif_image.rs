#![no_main]
//! Container images on arbitrary bytes: the input is written to a file and loaded as an OCI
//! image layout tar or a `docker save` archive (index and manifest JSON, image config, tar
//! layers plain, gzip or zstd, whiteouts, links), then turned into a customer ramdisk.
//! Nothing may panic, hang or allocate from an unchecked length. The unpacked size is capped
//! (`ImageOptions::max_unpacked`) at a few MiB beyond the input's size, so sparse members,
//! decompression bombs and data after a tar's end run into the limits instead of the disk.
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
    let cap = 4 * 1024 * 1024 + data.len() as u64;
    let options = nitro_eif::ImageOptions::default().max_unpacked(cap);
    match nitro_eif::CustomerRamdisk::from_image_with(path, &options) {
        Ok(ramdisk) => {
            let _ = ramdisk.image_config();
            // Whatever was spooled is within the cap.
            if let Ok(archive) = ramdisk.into_archive() {
                let _ = archive.len();
            }
        }
        Err(nitro_eif::Error::ImageTooLarge { limit, .. }) => assert_eq!(limit, cap),
        Err(_) => {}
    }
});
