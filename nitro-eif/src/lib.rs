#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The documentation links the importer's items; it is checked with `--all-features` (CI,
// docs.rs), and a build without `image` would only report those links as unresolved.
#![cfg_attr(not(feature = "image"), allow(rustdoc::broken_intra_doc_links))]
#![forbid(unsafe_code)]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

#[cfg(not(unix))]
compile_error!(
    "nitro-eif builds cpio archives with Unix file metadata: it supports Unix hosts only"
);

mod builder;
mod cpio;
mod detached;
mod error;
mod format;
#[cfg(feature = "image")]
mod image;
mod measure;
mod metadata;
mod ramdisk;
mod reader;
mod sign;
mod stream;

pub use builder::{BuildOutput, EifBuilder, Progress, Source};
pub use cpio::{CpioArchive, CpioReader};
pub use detached::{
    AsyncSigner, Blocking, BoxError, EifSignature, SignRequest, sign_eif, sign_eif_async,
};
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use error::RegistryFailure;
pub use error::{Error, FormatError, Result, SignatureError};
pub use format::{
    Arch, DEFAULT_CPUS, DEFAULT_MEM, EifHeader, FLAG_ARM64, HEADER_SIZE, MAGIC, MAX_SECTIONS,
    SectionKind, VERSION,
};
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use image::registry::{
    MAX_INDEX_ENTRIES, MAX_LAYERS, MAX_MANIFEST, PulledImage, RegistryOptions, pull as pull_image,
    pull_blocking as pull_image_blocking,
};
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub use image::{DEFAULT_MAX_UNPACKED, ImageConfig, ImageOptions};
pub use measure::{Measurements, PCR_LEN, Pcr};
pub use metadata::{BuildInfo, Metadata, build_time_from_env, format_build_time};
pub use ramdisk::{BootstrapRamdisk, CustomerRamdisk};
pub use reader::{
    Describe, EifReader, MAX_CMDLINE, MAX_METADATA, MetadataDescribe, Report, SectionInfo,
};
pub use sign::{CertificateInfo, MAX_SIGNATURE_SECTION, PemSigner, Signer, SigningAlgorithm};

/// Wire-level layout constants and entry points for fuzzing and tests. Not part of the stable
/// API.
#[doc(hidden)]
pub mod internal {
    pub use crate::format::{CRC_OFFSET, SECTION_HEADER_SIZE};

    /// Runs every reader path over `data` as an EIF: parse, describe, verify, check the
    /// certificate validity, copy every section; and `data` as a PEM certificate for PCR8.
    pub fn fuzz_reader(data: &[u8]) {
        if let Ok(mut eif) = crate::EifReader::new(std::io::Cursor::new(data)) {
            let _ = eif.describe();
            let _ = eif.verify();
            let _ = eif.check_certificate_validity(std::time::UNIX_EPOCH);
            for i in 0..eif.sections().len() {
                let _ = eif.copy_section(i, &mut std::io::sink());
            }
        }
        let _ = crate::Pcr::of_certificate_pem(data);
    }
}
