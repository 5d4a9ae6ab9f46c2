//! The streaming EIF writer.
//!
//! # How sizes and the header are handled
//!
//! The 548-byte header comes first in the file but holds what is known last: the section
//! offsets and sizes, the signature section's size (the signature covers PCR0, so it exists only
//! after every measured byte went by) and the CRC32 of everything that follows it. So:
//!
//! * every input reports its size before streaming starts: file metadata for files, the exact
//!   size computed from the entry list for cpio archives ([`CpioArchive::len`]), the declared
//!   length for readers. Section headers are written inline with those sizes, and an input that
//!   yields a different number of bytes fails the build ([`Error::SizeMismatch`]);
//! * the output must be [`Write`] + [`Seek`]: a 548-byte placeholder is written first, the
//!   sections are streamed once (read once, written once, hashed on two threads, CRC'd), the
//!   signature section is appended, and the header is written last at offset 0. The CRC of the
//!   header is combined with the CRC of the body computed on the way (`crc32fast` combine), so
//!   nothing is read back.
//!
//! Memory stays at a few 1 MiB chunks whatever the image size.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cpio::CpioArchive;
use crate::error::{Error, Result};
use crate::format::{
    self, Arch, DEFAULT_CPUS, DEFAULT_MEM, EifHeader, HEADER_SIZE, MAX_SECTIONS,
    SECTION_HEADER_SIZE, SectionKind, VERSION,
};
use crate::measure::Measurements;
use crate::metadata::{self, Metadata, UNKNOWN};
use crate::ramdisk::{BootstrapRamdisk, CustomerRamdisk};
use crate::reader::{Describe, SectionInfo};
use crate::sign::{CertificateInfo, CertificateKey, Signer};
use crate::stream::{Chain, with_feeder};

/// How much of the kernel is looked at to detect its architecture and release.
const KERNEL_HEAD: usize = 64 * 1024;

/// An input of the builder: the kernel or a ramdisk.
pub struct Source(SourceInner);

enum SourceInner {
    File(PathBuf),
    Bytes(Vec<u8>),
    Reader {
        reader: Box<dyn Read + Send>,
        len: u64,
    },
    Cpio(Box<CpioArchive>),
    Bootstrap(Box<BootstrapRamdisk>),
    Customer(Box<CustomerRamdisk>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SourceInner::File(p) => write!(f, "Source::file({})", p.display()),
            SourceInner::Bytes(b) => write!(f, "Source::bytes({} bytes)", b.len()),
            SourceInner::Reader { len, .. } => write!(f, "Source::reader({len} bytes)"),
            SourceInner::Cpio(a) => write!(f, "Source::cpio({a:?})"),
            SourceInner::Bootstrap(b) => write!(f, "{b:?}"),
            SourceInner::Customer(c) => write!(f, "{c:?}"),
        }
    }
}

impl Source {
    /// A file, read once while the EIF is written (its size is taken when the build starts).
    pub fn file(path: impl AsRef<Path>) -> Self {
        Source(SourceInner::File(path.as_ref().to_owned()))
    }

    /// In-memory bytes.
    pub fn bytes(data: impl Into<Vec<u8>>) -> Self {
        Source(SourceInner::Bytes(data.into()))
    }

    /// Any reader that yields exactly `len` bytes.
    pub fn reader(reader: impl Read + Send + 'static, len: u64) -> Self {
        Source(SourceInner::Reader {
            reader: Box::new(reader),
            len,
        })
    }
}

impl From<CpioArchive> for Source {
    fn from(a: CpioArchive) -> Self {
        Source(SourceInner::Cpio(Box::new(a)))
    }
}

impl From<BootstrapRamdisk> for Source {
    fn from(b: BootstrapRamdisk) -> Self {
        Source(SourceInner::Bootstrap(Box::new(b)))
    }
}

impl From<CustomerRamdisk> for Source {
    fn from(c: CustomerRamdisk) -> Self {
        Source(SourceInner::Customer(Box::new(c)))
    }
}

impl From<Vec<u8>> for Source {
    fn from(b: Vec<u8>) -> Self {
        Source::bytes(b)
    }
}

impl From<PathBuf> for Source {
    fn from(p: PathBuf) -> Self {
        Source::file(p)
    }
}

impl From<&Path> for Source {
    fn from(p: &Path) -> Self {
        Source::file(p)
    }
}

/// Build progress, reported after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes written so far.
    pub done: u64,
    /// Bytes the EIF will have (without the signature section).
    pub total: u64,
}

/// What a build produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOutput {
    /// PCR0, PCR1, PCR2 and (signed images) PCR8.
    pub measurements: Measurements,
    /// The metadata section written.
    pub metadata: Metadata,
    /// The file header written.
    pub header: EifHeader,
    /// The sections, in file order.
    pub sections: Vec<SectionInfo>,
    /// Size of the EIF in bytes.
    pub size: u64,
    /// The architecture.
    pub arch: Arch,
    signing_certificate: Option<CertificateInfo>,
}

impl BuildOutput {
    /// The `nitro-cli describe-eif` view of the image just built (CRC and signature are good
    /// by construction).
    pub fn describe(&self) -> Describe {
        Describe::new(
            self.header.version,
            self.measurements,
            self.signing_certificate.clone(),
            true,
            self.measurements.pcr8.map(|_| true),
            Some(&self.metadata),
        )
    }

    /// The CRC32 stored in the header.
    pub fn crc32(&self) -> u32 {
        self.header.crc32
    }
}

/// Builds an EIF. See the crate documentation for a complete example.
///
/// Ramdisks go into the image in the order they are added: by convention the first is the
/// bootstrap ramdisk (measured into PCR1) and the others are the customer ramdisks (PCR2).
pub struct EifBuilder {
    kernel: Source,
    cmdline: String,
    ramdisks: Vec<Source>,
    signer: Option<Box<dyn Signer>>,
    arch: Option<Arch>,
    name: Option<String>,
    version: Option<String>,
    build_time: Option<SystemTime>,
    custom: serde_json::Value,
    docker_info: Option<serde_json::Value>,
    metadata: Option<Metadata>,
    default_mem: u64,
    default_cpus: u64,
    progress: Option<Box<dyn FnMut(Progress) + Send>>,
}

impl fmt::Debug for EifBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EifBuilder")
            .field("kernel", &self.kernel)
            .field("cmdline", &self.cmdline)
            .field("ramdisks", &self.ramdisks)
            .field("signed", &self.signer.is_some())
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

struct Prepared {
    what: String,
    len: u64,
    input: Input,
}

enum Input {
    Stream(Box<dyn Read + Send>),
    Cpio(CpioArchive),
}

impl EifBuilder {
    /// A builder for the kernel file at `kernel` with command line `cmdline`.
    pub fn new(kernel: impl AsRef<Path>, cmdline: impl Into<String>) -> Self {
        Self::with_kernel(Source::file(kernel), cmdline)
    }

    /// A builder for a kernel from any [`Source`].
    pub fn with_kernel(kernel: Source, cmdline: impl Into<String>) -> Self {
        EifBuilder {
            kernel,
            cmdline: cmdline.into(),
            ramdisks: Vec::new(),
            signer: None,
            arch: None,
            name: None,
            version: None,
            build_time: None,
            custom: serde_json::Value::Null,
            docker_info: None,
            metadata: None,
            default_mem: DEFAULT_MEM,
            default_cpus: DEFAULT_CPUS,
            progress: None,
        }
    }

    /// Appends a ramdisk: a [`BootstrapRamdisk`], a [`CustomerRamdisk`], a [`CpioArchive`], or a
    /// ready-made ramdisk file via [`Source::file`].
    pub fn ramdisk(mut self, ramdisk: impl Into<Source>) -> Self {
        self.ramdisks.push(ramdisk.into());
        self
    }

    /// Appends a ready-made ramdisk file.
    pub fn ramdisk_file(self, path: impl AsRef<Path>) -> Self {
        self.ramdisk(Source::file(path))
    }

    /// Signs the image (signature section and PCR8).
    pub fn signer(mut self, signer: impl Signer + 'static) -> Self {
        self.signer = Some(Box::new(signer));
        self
    }

    /// Signs the image with a boxed signer.
    pub fn boxed_signer(mut self, signer: Box<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Sets the architecture. By default it is detected from the kernel (bzImage or arm64
    /// `Image`); setting it is needed only for kernels that are neither, and a detected
    /// architecture that disagrees is an error.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = Some(arch);
        self
    }

    /// Sets `ImageName` in the metadata (default `enclave`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets `ImageVersion` in the metadata (default `1.0`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets the metadata build time (default: `SOURCE_DATE_EPOCH`, else the Unix epoch; never
    /// the wall clock).
    pub fn build_time(mut self, t: SystemTime) -> Self {
        self.build_time = Some(t);
        self
    }

    /// Sets `CustomMetadata` (a JSON object).
    pub fn custom_metadata(mut self, value: serde_json::Value) -> Self {
        self.custom = value;
        self
    }

    /// Sets `DockerInfo` (default: the image config when a customer ramdisk comes from a
    /// container image, else `null`).
    pub fn docker_info(mut self, value: serde_json::Value) -> Self {
        self.docker_info = Some(value);
        self
    }

    /// Replaces the whole metadata section (overrides the other metadata settings).
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the informational `default_mem` (bytes) and `default_cpus` header fields.
    pub fn defaults(mut self, mem: u64, cpus: u64) -> Self {
        self.default_mem = mem;
        self.default_cpus = cpus;
        self
    }

    /// Calls `f` as the image is written (for progress bars).
    pub fn on_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Builds the EIF into `path` atomically (a temporary file in the same directory, renamed
    /// into place once complete, mode 0644).
    pub fn build_file(self, path: impl AsRef<Path>) -> Result<BuildOutput> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".eif-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
        let out = self.build(tmp.as_file_mut())?;
        let ctx = |e| Error::io(format!("writing {}", path.display()), e);
        tmp.as_file().sync_all().map_err(ctx)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(ctx)?;
        }
        tmp.persist(path).map_err(|e| ctx(e.error))?;
        Ok(out)
    }

    fn prepare(
        source: Source,
        what: String,
        arch: Option<Arch>,
    ) -> Result<(Prepared, Option<(Arch, String)>)> {
        let ctx = |p: &Path, e| Error::io(format!("reading {what} {}", p.display()), e);
        let (input, len, wants) = match source.0 {
            SourceInner::File(p) => {
                let f = File::open(&p).map_err(|e| ctx(&p, e))?;
                let m = f.metadata().map_err(|e| ctx(&p, e))?;
                if !m.is_file() {
                    return Err(Error::Unsupported {
                        path: p,
                        reason: format!("{what} is not a regular file"),
                    });
                }
                (Input::Stream(Box::new(f)), m.len(), None)
            }
            SourceInner::Bytes(b) => {
                let len = b.len() as u64;
                (Input::Stream(Box::new(io::Cursor::new(b))), len, None)
            }
            SourceInner::Reader { reader, len } => (Input::Stream(reader), len, None),
            SourceInner::Cpio(a) => {
                let w = a.arch.clone();
                (Input::Cpio(*a), 0, w)
            }
            SourceInner::Bootstrap(b) => {
                let a = b.into_archive()?;
                let w = a.arch.clone();
                (Input::Cpio(a), 0, w)
            }
            SourceInner::Customer(c) => {
                let a = c.into_archive()?;
                let w = a.arch.clone();
                (Input::Cpio(a), 0, w)
            }
        };
        let len = match &input {
            Input::Cpio(a) => a.len(),
            Input::Stream(_) => len,
        };
        if let (Some((found, label)), Some(expected)) = (&wants, arch)
            && *found != expected
        {
            return Err(Error::ArchMismatch {
                what: label.clone(),
                found: *found,
                expected,
            });
        }
        Ok((Prepared { what, len, input }, wants))
    }

    /// Builds the EIF into `out`, which must be empty: it is written from offset 0, and the
    /// header is written last (see the module documentation of the writer).
    pub fn build<W: Write + Seek>(self, out: &mut W) -> Result<BuildOutput> {
        let cmdline = self.cmdline.into_bytes();
        if cmdline.contains(&0) {
            return Err(Error::InvalidArgument(
                "the kernel command line contains a NUL byte".into(),
            ));
        }
        if self.ramdisks.is_empty() {
            return Err(Error::InvalidArgument(
                "an EIF needs at least one ramdisk".into(),
            ));
        }
        let signed = self.signer.is_some();
        let num_sections = 3 + self.ramdisks.len() + usize::from(signed);
        if num_sections > MAX_SECTIONS {
            return Err(Error::InvalidArgument(format!(
                "{} ramdisks: an EIF has at most {MAX_SECTIONS} sections",
                self.ramdisks.len()
            )));
        }

        // Kernel: look at its head (then stream it, head included, without reading it twice).
        let (kernel, _) = Self::prepare(self.kernel, "kernel".into(), None)?;
        let Input::Stream(mut kernel_reader) = kernel.input else {
            return Err(Error::InvalidArgument(
                "the kernel cannot be a cpio archive".into(),
            ));
        };
        let mut head = Vec::with_capacity(KERNEL_HEAD);
        (&mut kernel_reader)
            .take(KERNEL_HEAD as u64)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("reading the kernel", e))?;
        let detected = Arch::detect_kernel(&head);
        let arch = match (self.arch, detected) {
            (Some(a), Some(d)) if a != d => {
                return Err(Error::ArchMismatch {
                    what: "the kernel".into(),
                    found: d,
                    expected: a,
                });
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) if head.starts_with(&[0x1f, 0x8b]) || head.get(4..8) == Some(b"zimg") => {
                return Err(Error::InvalidArgument(
                    "the kernel is compressed (gzip or EFI zboot): Nitro Enclaves boot an x86 bzImage or an uncompressed arm64 Image; decompress it (e.g. gunzip) first".into(),
                ));
            }
            (None, None) => return Err(Error::UnknownArch),
        };
        let kernel = Prepared {
            what: kernel.what,
            len: kernel.len,
            input: Input::Stream(Box::new(io::Cursor::new(head.clone()).chain(kernel_reader))),
        };

        let mut ramdisks = Vec::new();
        let mut image_config = None;
        for (i, r) in self.ramdisks.into_iter().enumerate() {
            if let SourceInner::Customer(c) = &r.0
                && let Some(info) = c.docker_info()
            {
                image_config.get_or_insert_with(|| info.clone());
            }
            let (p, _) = Self::prepare(r, format!("ramdisk {i}"), Some(arch))?;
            ramdisks.push(p);
        }

        // Metadata.
        let metadata = match self.metadata {
            Some(m) => m,
            None => {
                metadata::check_custom(&self.custom)?;
                let mut m = Metadata::new(
                    self.name.unwrap_or_else(|| "enclave".into()),
                    self.version.unwrap_or_else(|| "1.0".into()),
                );
                if let Some(t) = self.build_time {
                    m.build.build_time = metadata::format_build_time(t);
                }
                if let Some(release) = format::bzimage_release(&head) {
                    m.build.operating_system = "Linux".into();
                    m.build.kernel_version =
                        release.split('-').next().unwrap_or(UNKNOWN).to_owned();
                }
                m.docker_info = self
                    .docker_info
                    .or(image_config)
                    .unwrap_or(serde_json::Value::Null);
                m.custom = self.custom;
                m
            }
        };
        let metadata_json = metadata.to_json();

        // Signer: check the certificate before streaming anything.
        let cert = match &self.signer {
            Some(s) => Some(CertificateKey::from_pem(s.certificate_pem()).map_err(
                |e| match e {
                    Error::Signature(e) => Error::SigningKey(e.to_string()),
                    e => e,
                },
            )?),
            None => None,
        };

        // Layout.
        let mut header = EifHeader {
            version: VERSION,
            flags: arch.flags(),
            default_mem: self.default_mem,
            default_cpus: self.default_cpus,
            reserved: 0,
            num_sections: u16::try_from(num_sections).unwrap_or(u16::MAX),
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0,
        };
        let mut sections = Vec::with_capacity(num_sections);
        let mut offset = HEADER_SIZE as u64;
        let mut place = |kind: SectionKind, size: u64, sections: &mut Vec<SectionInfo>| {
            let index = sections.len();
            header.section_offsets[index] = offset;
            header.section_sizes[index] = size;
            sections.push(SectionInfo {
                index,
                kind,
                offset,
                size,
            });
            offset += SECTION_HEADER_SIZE as u64 + size;
        };
        place(SectionKind::Kernel, kernel.len, &mut sections);
        place(SectionKind::Cmdline, cmdline.len() as u64, &mut sections);
        place(
            SectionKind::Metadata,
            metadata_json.len() as u64,
            &mut sections,
        );
        for r in &ramdisks {
            place(SectionKind::Ramdisk, r.len, &mut sections);
        }
        let total = offset;
        let measured =
            kernel.len + cmdline.len() as u64 + ramdisks.iter().map(|r| r.len).sum::<u64>();

        // Stream.
        out.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("writing the EIF", e))?;
        out.write_all(&[0u8; HEADER_SIZE])
            .map_err(|e| Error::io("writing the EIF", e))?;
        let mut crc = crc32fast::Hasher::new();
        let mut progress = self.progress;
        let mut done = HEADER_SIZE as u64;
        let report = |n: u64, progress: &mut Option<Box<dyn FnMut(Progress) + Send>>| {
            if let Some(p) = progress {
                p(Progress { done: n, total });
            }
        };
        let (_, pcrs) = with_feeder(measured, |feeder| {
            let section_header =
                |kind: SectionKind, len: u64, out: &mut W, crc: &mut crc32fast::Hasher| {
                    let h = format::section_header(kind, len);
                    crc.update(&h);
                    out.write_all(&h)
                        .map_err(|e| Error::io("writing the EIF", e))
                };
            let mut stream = |p: Prepared,
                              kind: SectionKind,
                              chain: Chain,
                              out: &mut W,
                              crc: &mut crc32fast::Hasher,
                              done: &mut u64|
             -> Result<()> {
                section_header(kind, p.len, out, crc)?;
                *done += SECTION_HEADER_SIZE as u64;
                let base = *done;
                let mut cb = |n: u64| report(base + n, &mut progress);
                match p.input {
                    Input::Stream(mut r) => {
                        feeder.copy(&p.what, &mut r, p.len, true, chain, out, crc, &mut cb)?
                    }
                    Input::Cpio(a) => feeder.copy(
                        &p.what,
                        &mut a.reader(),
                        p.len,
                        true,
                        chain,
                        out,
                        crc,
                        &mut cb,
                    )?,
                }
                *done += p.len;
                Ok(())
            };
            stream(
                kernel,
                SectionKind::Kernel,
                Chain::Boot,
                out,
                &mut crc,
                &mut done,
            )?;
            let c = Prepared {
                what: "cmdline".into(),
                len: cmdline.len() as u64,
                input: Input::Stream(Box::new(io::Cursor::new(cmdline))),
            };
            stream(
                c,
                SectionKind::Cmdline,
                Chain::Boot,
                out,
                &mut crc,
                &mut done,
            )?;
            let m = Prepared {
                what: "metadata".into(),
                len: metadata_json.len() as u64,
                input: Input::Stream(Box::new(io::Cursor::new(metadata_json))),
            };
            stream(
                m,
                SectionKind::Metadata,
                Chain::None,
                out,
                &mut crc,
                &mut done,
            )?;
            for (i, r) in ramdisks.into_iter().enumerate() {
                let chain = if i == 0 { Chain::Boot } else { Chain::App };
                stream(r, SectionKind::Ramdisk, chain, out, &mut crc, &mut done)?;
            }
            Ok(())
        })?;

        // Signature.
        let mut pcr8 = None;
        let mut signing_certificate = None;
        if let (Some(signer), Some(cert)) = (&self.signer, &cert) {
            let section = crate::sign::signature_section(signer.as_ref(), cert, &pcrs.pcr0)?;
            let index = sections.len();
            header.section_offsets[index] = offset;
            header.section_sizes[index] = section.len() as u64;
            sections.push(SectionInfo {
                index,
                kind: SectionKind::Signature,
                offset,
                size: section.len() as u64,
            });
            let h = format::section_header(SectionKind::Signature, section.len() as u64);
            crc.update(&h);
            crc.update(&section);
            out.write_all(&h)
                .and_then(|()| out.write_all(&section))
                .map_err(|e| Error::io("writing the EIF", e))?;
            offset += SECTION_HEADER_SIZE as u64 + section.len() as u64;
            pcr8 = Some(crate::measure::Pcr::of_bytes(&cert.der));
            let parsed = crate::sign::SignatureSection::parse(&section)?;
            signing_certificate = Some(parsed.certificate_info());
        }

        // Header last.
        let mut bytes = header.to_bytes();
        let mut full = crc32fast::Hasher::new();
        full.update(&bytes[..format::CRC_OFFSET]);
        full.combine(&crc);
        header.crc32 = full.finalize();
        bytes[format::CRC_OFFSET..].copy_from_slice(&header.crc32.to_be_bytes());
        out.seek(SeekFrom::Start(0))
            .and_then(|_| out.write_all(&bytes))
            .and_then(|()| out.seek(SeekFrom::Start(offset)))
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("writing the EIF header", e))?;

        Ok(BuildOutput {
            measurements: Measurements::new(pcrs.pcr0, pcrs.pcr1, pcrs.pcr2, pcr8),
            metadata,
            header,
            sections,
            size: offset,
            arch,
            signing_certificate,
        })
    }
}
