//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::format::{Arch, SectionKind};

/// Everything that can go wrong while building, reading or verifying an EIF.
///
/// Errors caused by a malformed or hostile EIF are [`Error::Format`]; errors caused by the
/// inputs of a build (files, container images, keys) have their own variants; mistakes in how
/// the API was called are [`Error::InvalidArgument`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed; `context` says what was being done (and on which file), the
    /// source is the I/O error.
    #[error("{context}")]
    Io {
        /// What was being done, e.g. `reading kernel /boot/vmlinuz`.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The EIF is malformed, truncated or inconsistent.
    #[error("invalid EIF: {0}")]
    Format(FormatError),

    /// The CRC32 stored in the EIF header does not match its contents.
    #[error("EIF CRC mismatch: header has {expected:#010x}, contents give {computed:#010x}")]
    CrcMismatch {
        /// The CRC stored in the header.
        expected: u32,
        /// The CRC computed over the file.
        computed: u32,
    },

    /// The EIF signature section is malformed or does not verify.
    #[error("EIF signature: {0}")]
    Signature(SignatureError),

    /// A signing key or certificate given to the builder is unusable.
    #[error("signing key: {0}")]
    SigningKey(String),

    /// A [`Signer`](crate::Signer) implementation failed.
    #[error("the signer failed")]
    Signer(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A container image (OCI layout or `docker save` archive) could not be used.
    #[error("container image: {0}")]
    Image(String),

    /// No image of a container image layout or archive matches the selection: none is named
    /// `reference` ([`ImageOptions::reference`](crate::ImageOptions::reference)), none is for
    /// `linux/<arch>` (the kernel's architecture or
    /// [`ImageOptions::arch`](crate::ImageOptions::arch)), or the archive holds no image.
    #[error("container image: no image{}{}", reference.as_ref().map(|r| format!(" named {r:?}")).unwrap_or_default(), arch.map(|a| format!(" for linux/{}", a.oci_name())).unwrap_or_default())]
    ImageNotFound {
        /// The reference asked for, if any.
        reference: Option<String>,
        /// The platform looked for, when the selection was by platform.
        arch: Option<Arch>,
    },

    /// A container image layout or archive holds several images matching the selection: pick
    /// one of `candidates` with [`ImageOptions::reference`](crate::ImageOptions::reference).
    #[error("container image: {} images match ({}); select one by reference", candidates.len(), candidates.join(", "))]
    AmbiguousImage {
        /// The names (tags, reference annotations) of the matching images.
        candidates: Vec<String>,
    },

    /// A container image unpacks to more than the configured cap
    /// ([`ImageOptions::max_unpacked`](crate::ImageOptions::max_unpacked())): the running total
    /// of its files' logical sizes, or one of its decompressed streams.
    #[error("container image: {what} exceeds the unpacked size limit of {limit} bytes")]
    ImageTooLarge {
        /// What went over the limit (a member, a layer stream, the outer archive).
        what: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// Pulling a container image from a registry failed
    /// ([`CustomerRamdisk::from_registry`](crate::CustomerRamdisk::from_registry),
    /// [`pull_image`](crate::pull_image)): `failure` says what went wrong, `source` carries the
    /// registry client's or the I/O error when there is one.
    #[cfg(feature = "registry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
    #[error("registry image {reference}: {failure}")]
    Registry {
        /// The image reference as given.
        reference: String,
        /// What went wrong.
        failure: RegistryFailure,
        /// The underlying error, if any.
        #[source]
        source: Option<crate::BoxError>,
    },

    /// A build input produced a different number of bytes than announced (e.g. a file changed
    /// while the image was being built).
    #[error("{what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which input.
        what: String,
        /// The size announced before streaming (file metadata, declared length).
        expected: u64,
        /// The number of bytes actually produced (a lower bound if the input grew).
        actual: u64,
    },

    /// The kernel's architecture could not be detected and none was given.
    #[error(
        "cannot detect the kernel architecture (neither an x86 bzImage nor an arm64 Image); set it with EifBuilder::arch"
    )]
    UnknownArch,

    /// Two inputs disagree about the architecture.
    #[error("architecture mismatch: {what} is {found}, the image is built for {expected}")]
    ArchMismatch {
        /// Which input disagrees.
        what: String,
        /// The architecture of that input.
        found: Arch,
        /// The architecture of the EIF (from the kernel or [`EifBuilder::arch`](crate::EifBuilder::arch)).
        expected: Arch,
    },

    /// A file or directory cannot be put into a cpio archive.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The API was called with arguments that cannot produce a valid EIF (a bad archive path,
    /// a duplicate module, an unsigned image where a signed one is needed, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl From<SignatureError> for Error {
    fn from(e: SignatureError) -> Self {
        Error::Signature(e)
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// What went wrong while pulling an image from a registry ([`Error::Registry`]).
#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryFailure {
    /// The reference cannot be parsed (`host[:port]/repo[:tag][@alg:hex]`).
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// The Docker config file cannot be read or parsed.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The registry refused the credentials (or asked for some and none were configured).
    #[error("unauthorized")]
    Unauthorized,
    /// The registry has no such repository, tag, manifest or blob.
    #[error("not found")]
    NotFound,
    /// A manifest or blob does not match the digest that names it.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: String,
        /// The digest of what the registry sent.
        actual: String,
    },
    /// A manifest or index is larger than [`MAX_MANIFEST`](crate::MAX_MANIFEST).
    #[error("manifest of {size} bytes exceeds the limit of {limit} bytes")]
    ManifestTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest lists more than [`MAX_LAYERS`](crate::MAX_LAYERS) layers.
    #[error("{count} layers exceed the limit of {limit}")]
    TooManyLayers {
        /// How many the manifest lists.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The image index has no `linux/<arch>` image.
    #[error("no image for linux/{}", arch.oci_name())]
    NoPlatform {
        /// The architecture looked for.
        arch: Arch,
    },
    /// A manifest, config or blob is not what the OCI image specification describes.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A well-formed image this importer does not handle (a media type, a nested index).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The connection or the HTTP exchange failed (see the source).
    #[error("transport error")]
    Transport,
}

/// A structural problem in an EIF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than its header says.
    #[error("truncated: {what} needs bytes {start}..{end} but the file has {len} bytes")]
    Truncated {
        /// What was being read.
        what: String,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// The file length.
        len: u64,
    },
    /// The file does not start with `.eif`.
    #[error("bad magic {0:02x?} (expected \".eif\")")]
    BadMagic([u8; 4]),
    /// The header version is not one this crate understands (1 to 4).
    #[error("unsupported EIF version {0}")]
    UnsupportedVersion(u16),
    /// The header flags have bits set that no version of the format defines.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// More sections than the header can describe.
    #[error("{0} sections (at most 32)")]
    TooManySections(u16),
    /// A section header carries an undefined type.
    #[error("section {index}: invalid section type {value}")]
    InvalidSectionType {
        /// Index in the header's section table.
        index: usize,
        /// The type value found.
        value: u16,
    },
    /// A section header has non-zero flags.
    #[error("section {index}: non-zero section flags {flags:#06x}")]
    SectionFlags {
        /// Index in the header's section table.
        index: usize,
        /// The flags found.
        flags: u16,
    },
    /// The size in the file header and the size in the section header differ.
    #[error(
        "section {index}: size {in_header} in the file header but {in_section} in the section header"
    )]
    SizeDisagreement {
        /// Index in the header's section table.
        index: usize,
        /// Size from the file header.
        in_header: u64,
        /// Size from the section header.
        in_section: u64,
    },
    /// A section starts inside the file header or the previous section, or sections are not in
    /// increasing file order.
    #[error(
        "section {index} at offset {offset} overlaps the header or the previous section (which ends at {previous_end})"
    )]
    Overlap {
        /// Index in the header's section table.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Where the previous section (or the header) ends.
        previous_end: u64,
    },
    /// A section exceeds the limit this crate accepts for its kind.
    #[error("{kind} section of {size} bytes exceeds the limit of {limit} bytes")]
    SectionTooLarge {
        /// The kind of section.
        kind: SectionKind,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A mandatory section is missing.
    #[error("no {0} section")]
    MissingSection(SectionKind),
    /// A section that may appear once appears twice.
    #[error("more than one {0} section")]
    DuplicateSection(SectionKind),
    /// Sections are in an order whose measurement would be ambiguous (the kernel, the command line
    /// and the ramdisks must appear in that order).
    #[error("{0}")]
    SectionOrder(String),
    /// The metadata section is not the JSON document the format defines.
    #[error("metadata section: {0}")]
    Metadata(String),
    /// The unused slots of the section table are not zero.
    #[error("section table slot {0} is unused but not zero")]
    UnusedSlot(usize),
}

/// A problem with the signature section or the signature it carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The section is not the CBOR structure nitro-cli writes.
    #[error("malformed signature section: {0}")]
    Malformed(String),
    /// The signing certificate cannot be parsed.
    #[error("signing certificate: {0}")]
    Certificate(String),
    /// The COSE_Sign1 structure cannot be parsed or uses an unsupported algorithm.
    #[error("COSE_Sign1: {0}")]
    Cose(String),
    /// The signed payload is not the PCR0 this image measures to.
    #[error("the signature covers a different PCR0 than the image measures to")]
    PayloadMismatch,
    /// The signature does not verify with the certificate's public key.
    #[error("the signature does not verify with the certificate's key")]
    BadSignature,
    /// The certificate is not valid at the given time (expired, or not yet valid). Times are
    /// seconds since the Unix epoch (negative before it).
    #[error(
        "the signing certificate is not valid at {} (valid from {} to {})",
        crate::sign::format_unix(*at),
        crate::sign::format_unix(*not_before),
        crate::sign::format_unix(*not_after)
    )]
    Expired {
        /// The time the certificate was checked at.
        at: i64,
        /// The start of its validity period (`notBefore`).
        not_before: i64,
        /// The end of its validity period (`notAfter`).
        not_after: i64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
