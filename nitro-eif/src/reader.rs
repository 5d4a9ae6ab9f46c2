//! The bounds-checked EIF reader.
//!
//! Sections are located through the header's section table (as the hypervisor and QEMU load
//! them), never by walking the file. Before any section data is used, the reader checks: magic,
//! version (1 to 4), flags, section count, that unused table slots are zero, that every section
//! lies inside the file after the header and after the previous section, that its section
//! header agrees with the table (type defined, flags zero, same size), that there is exactly one
//! kernel and one command line, at least one ramdisk, at most one signature and one metadata
//! section, that the kernel, the command line and the ramdisks appear in that order (so that
//! every tool measures the same bytes in the same order), that nothing follows the last section,
//! and that the small sections stay within limits. Nothing is allocated from a length read from
//! the file before it has been checked against the file size and those limits.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::error::{Error, FormatError, Result, SignatureError};
use crate::format::{self, Arch, EifHeader, HEADER_SIZE, SECTION_HEADER_SIZE, SectionKind};
use crate::measure::Measurements;
use crate::metadata::Metadata;
use crate::sign::{CertificateInfo, MAX_SIGNATURE_SECTION, SignatureSection};
use crate::stream::{Chain, with_feeder};

/// Largest command line section accepted.
pub const MAX_CMDLINE: u64 = 1 << 20;
/// Largest metadata section accepted.
pub const MAX_METADATA: u64 = 1 << 20;

/// Where a section is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SectionInfo {
    /// Index in the header's section table.
    pub index: usize,
    /// Section type.
    pub kind: SectionKind,
    /// Offset of the 12-byte section header.
    pub offset: u64,
    /// Size of the data.
    pub size: u64,
}

impl SectionInfo {
    /// Offset of the first data byte.
    pub fn data_offset(&self) -> u64 {
        self.offset + SECTION_HEADER_SIZE as u64
    }
}

/// The result of streaming an EIF: its measurements and integrity checks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// PCR0/1/2 recomputed from the sections; PCR8 from the signing certificate.
    pub measurements: Measurements,
    /// The CRC stored in the header.
    pub crc_expected: u32,
    /// The CRC computed over the header and the sections.
    pub crc_computed: u32,
    /// For signed images: whether the signature section reconstructs for the recomputed PCR0
    /// and its signature verifies with the certificate's key.
    pub signature: Option<std::result::Result<(), SignatureError>>,
}

impl Report {
    /// Whether the CRC matches.
    pub fn crc_ok(&self) -> bool {
        self.crc_expected == self.crc_computed
    }

    /// `Ok` if the CRC matches and, for a signed image, the signature verifies.
    pub fn check(&self) -> Result<()> {
        if !self.crc_ok() {
            return Err(Error::CrcMismatch {
                expected: self.crc_expected,
                computed: self.crc_computed,
            });
        }
        if let Some(Err(e)) = &self.signature {
            return Err(Error::Signature(e.clone()));
        }
        Ok(())
    }
}

/// The `Metadata` object of `nitro-cli describe-eif`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetadataDescribe {
    /// Build time.
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    /// Build tool.
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    /// Build tool version.
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    /// Operating system.
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    /// Kernel version.
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
    /// Docker information.
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    /// Custom metadata, flattened into this object as nitro-cli does.
    #[serde(flatten)]
    pub custom: serde_json::Map<String, serde_json::Value>,
}

/// The output of `nitro-cli describe-eif`, with the same keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Describe {
    /// EIF version.
    #[serde(rename = "EifVersion")]
    pub eif_version: u16,
    /// The PCRs.
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
    /// Whether the image has a signature section.
    #[serde(rename = "IsSigned")]
    pub is_signed: bool,
    /// The signing certificate (signed images).
    #[serde(rename = "SigningCertificate", skip_serializing_if = "Option::is_none")]
    pub signing_certificate: Option<CertificateInfo>,
    /// Whether the CRC matches.
    #[serde(rename = "CheckCRC")]
    pub check_crc: bool,
    /// Whether the signature verifies (signed images).
    #[serde(rename = "SignatureCheck", skip_serializing_if = "Option::is_none")]
    pub signature_check: Option<bool>,
    /// Image name from the metadata.
    #[serde(rename = "ImageName", skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Image version from the metadata.
    #[serde(rename = "ImageVersion", skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Build metadata.
    #[serde(rename = "Metadata", skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataDescribe>,
}

impl Describe {
    pub(crate) fn new(
        eif_version: u16,
        measurements: Measurements,
        signing_certificate: Option<CertificateInfo>,
        check_crc: bool,
        signature_check: Option<bool>,
        metadata: Option<&Metadata>,
    ) -> Self {
        Describe {
            eif_version,
            measurements,
            is_signed: measurements.pcr8.is_some(),
            signing_certificate,
            check_crc,
            signature_check,
            image_name: metadata.map(|m| m.image_name.clone()),
            image_version: metadata.map(|m| m.image_version.clone()),
            metadata: metadata.map(|m| MetadataDescribe {
                build_time: m.build.build_time.clone(),
                build_tool: m.build.build_tool.clone(),
                build_tool_version: m.build.build_tool_version.clone(),
                operating_system: m.build.operating_system.clone(),
                kernel_version: m.build.kernel_version.clone(),
                docker_info: m.docker_info.clone(),
                custom: match &m.custom {
                    serde_json::Value::Object(o) => o.clone(),
                    serde_json::Value::Null => serde_json::Map::new(),
                    other => {
                        let mut o = serde_json::Map::new();
                        o.insert("CustomMetadata".into(), other.clone());
                        o
                    }
                },
            }),
        }
    }

    /// Pretty JSON, as nitro-cli prints it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A parsed EIF over any `Read + Seek` (a file, or a `Cursor` over bytes).
///
/// ```no_run
/// # fn main() -> Result<(), nitro_eif::Error> {
/// let mut eif = nitro_eif::EifReader::open("app.eif")?;
/// let report = eif.measure()?;          // streams the sections once
/// report.check()?;                      // CRC and (if signed) signature
/// println!("PCR0 {}", report.measurements.pcr0);
/// println!("{}", eif.describe()?.to_json_pretty());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EifReader<R> {
    inner: R,
    header: EifHeader,
    header_bytes: [u8; HEADER_SIZE],
    sections: Vec<SectionInfo>,
    cmdline: Vec<u8>,
    metadata_raw: Option<Vec<u8>>,
    metadata: Option<Metadata>,
    signature_raw: Option<Vec<u8>>,
    signature: Option<SignatureSection>,
}

impl EifReader<File> {
    /// Opens and parses the EIF at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        EifReader::new(f)
    }
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<()> {
    r.seek(SeekFrom::Start(offset))
        .and_then(|_| r.read_exact(buf))
        .map_err(|e| Error::io("reading the EIF", e))
}

impl<R: Read + Seek> EifReader<R> {
    /// Parses the header, the section table, every section header and the small sections
    /// (command line, metadata, signature). See the module documentation for the checks.
    pub fn new(mut inner: R) -> Result<Self> {
        let len = inner
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("reading the EIF", e))?;
        let truncated = |what: &str, start: u64, end: u64| FormatError::Truncated {
            what: what.to_owned(),
            start,
            end,
            len,
        };
        if len < HEADER_SIZE as u64 {
            return Err(truncated("header", 0, HEADER_SIZE as u64).into());
        }
        let mut header_bytes = [0u8; HEADER_SIZE];
        read_at(&mut inner, 0, &mut header_bytes)?;
        let header = EifHeader::parse(&header_bytes)?;

        let mut sections = Vec::with_capacity(usize::from(header.num_sections));
        let mut prev_end = HEADER_SIZE as u64;
        for index in 0..usize::from(header.num_sections) {
            let offset = header.section_offsets[index];
            let size = header.section_sizes[index];
            if offset < prev_end {
                return Err(FormatError::Overlap {
                    index,
                    offset,
                    previous_end: prev_end,
                }
                .into());
            }
            let what = format!("section {index}");
            let end = offset
                .checked_add(SECTION_HEADER_SIZE as u64)
                .and_then(|x| x.checked_add(size))
                .ok_or_else(|| truncated(&what, offset, u64::MAX))?;
            if end > len {
                return Err(truncated(&what, offset, end).into());
            }
            let mut sh = [0u8; SECTION_HEADER_SIZE];
            read_at(&mut inner, offset, &mut sh)?;
            let (ty, flags, in_section) = format::parse_section_header(&sh);
            let kind = SectionKind::from_u16(ty)
                .ok_or(FormatError::InvalidSectionType { index, value: ty })?;
            if flags != 0 {
                return Err(FormatError::SectionFlags { index, flags }.into());
            }
            if in_section != size {
                return Err(FormatError::SizeDisagreement {
                    index,
                    in_header: size,
                    in_section,
                }
                .into());
            }
            sections.push(SectionInfo {
                index,
                kind,
                offset,
                size,
            });
            prev_end = end;
        }
        if prev_end != len {
            return Err(FormatError::Truncated {
                what: format!(
                    "{} bytes after the last section (trailing data)",
                    len - prev_end
                ),
                start: prev_end,
                end: prev_end,
                len,
            }
            .into());
        }

        let count = |k: SectionKind| sections.iter().filter(|s| s.kind == k).count();
        for k in [SectionKind::Kernel, SectionKind::Cmdline] {
            match count(k) {
                0 => return Err(FormatError::MissingSection(k).into()),
                1 => {}
                _ => return Err(FormatError::DuplicateSection(k).into()),
            }
        }
        if count(SectionKind::Ramdisk) == 0 {
            return Err(FormatError::MissingSection(SectionKind::Ramdisk).into());
        }
        for k in [SectionKind::Signature, SectionKind::Metadata] {
            if count(k) > 1 {
                return Err(FormatError::DuplicateSection(k).into());
            }
        }
        let pos = |k: SectionKind| sections.iter().position(|s| s.kind == k).unwrap_or(0);
        let (kernel_at, cmdline_at) = (pos(SectionKind::Kernel), pos(SectionKind::Cmdline));
        let first_ramdisk = pos(SectionKind::Ramdisk);
        if !(kernel_at < cmdline_at && cmdline_at < first_ramdisk) {
            return Err(FormatError::SectionOrder(
                "the kernel, the command line and the ramdisks must appear in that order".into(),
            )
            .into());
        }

        let mut small = |k: SectionKind, limit: u64| -> Result<Option<Vec<u8>>> {
            let Some(s) = sections.iter().find(|s| s.kind == k) else {
                return Ok(None);
            };
            if s.size > limit {
                return Err(FormatError::SectionTooLarge {
                    kind: k,
                    size: s.size,
                    limit,
                }
                .into());
            }
            let mut buf = vec![0u8; usize::try_from(s.size).unwrap_or(0)];
            read_at(&mut inner, s.data_offset(), &mut buf)?;
            Ok(Some(buf))
        };
        let cmdline = small(SectionKind::Cmdline, MAX_CMDLINE)?.unwrap_or_default();
        let metadata_raw = small(SectionKind::Metadata, MAX_METADATA)?;
        let signature_raw = small(SectionKind::Signature, MAX_SIGNATURE_SECTION)?;
        let metadata = metadata_raw
            .as_deref()
            .map(Metadata::from_json)
            .transpose()?;
        let signature = signature_raw
            .as_deref()
            .map(SignatureSection::parse)
            .transpose()?;
        Ok(EifReader {
            inner,
            header,
            header_bytes,
            sections,
            cmdline,
            metadata_raw,
            metadata,
            signature_raw,
            signature,
        })
    }

    /// The file header.
    pub fn header(&self) -> &EifHeader {
        &self.header
    }

    /// The architecture from the header flags.
    pub fn arch(&self) -> Arch {
        self.header.arch()
    }

    /// The sections, in table (and file) order.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline
    }

    /// The metadata section, if present.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// Whether the image has a signature section.
    pub fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// The signing certificate as stored (PEM text), for signed images.
    pub fn signing_certificate_pem(&self) -> Option<&[u8]> {
        self.signature
            .as_ref()
            .map(|s| s.certificate_pem.as_slice())
    }

    /// The DER of the signing certificate, for signed images.
    pub fn signing_certificate_der(&self) -> Option<&[u8]> {
        self.signature.as_ref().map(|s| s.certificate_der())
    }

    /// The raw COSE_Sign1 bytes of the PCR0 signature, for signed images.
    pub fn signature_cose(&self) -> Option<&[u8]> {
        self.signature.as_ref().map(|s| s.cose.as_slice())
    }

    /// Streams every section once: recomputes PCR0/1/2 (and PCR8), the CRC, and checks the
    /// signature against the recomputed PCR0. Problems with the CRC or the signature are
    /// reported in the [`Report`], not as errors; use [`Report::check`] or [`verify`](Self::verify).
    pub fn measure(&mut self) -> Result<Report> {
        let measured: u64 = self
            .sections
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    SectionKind::Kernel | SectionKind::Cmdline | SectionKind::Ramdisk
                )
            })
            .map(|s| s.size)
            .sum();
        let sections = self.sections.clone();
        let inner = &mut self.inner;
        let cmdline = &self.cmdline;
        let metadata = self.metadata_raw.as_deref().unwrap_or_default();
        let signature = self.signature_raw.as_deref().unwrap_or_default();
        let mut crc = crc32fast::Hasher::new();
        let ((), pcrs) = with_feeder(measured, |feeder| {
            let mut ramdisks = 0;
            for s in &sections {
                crc.update(&format::section_header(s.kind, s.size));
                let chain = match s.kind {
                    SectionKind::Kernel | SectionKind::Cmdline => Chain::Boot,
                    SectionKind::Ramdisk => {
                        ramdisks += 1;
                        if ramdisks == 1 {
                            Chain::Boot
                        } else {
                            Chain::App
                        }
                    }
                    SectionKind::Signature | SectionKind::Metadata => Chain::None,
                };
                let mut sink = io::sink();
                match s.kind {
                    SectionKind::Cmdline => {
                        feeder.copy_bytes(cmdline, chain, &mut sink, &mut crc)?
                    }
                    SectionKind::Metadata => {
                        feeder.copy_bytes(metadata, chain, &mut sink, &mut crc)?
                    }
                    SectionKind::Signature => {
                        feeder.copy_bytes(signature, chain, &mut sink, &mut crc)?
                    }
                    SectionKind::Kernel | SectionKind::Ramdisk => {
                        inner
                            .seek(SeekFrom::Start(s.data_offset()))
                            .map_err(|e| Error::io("reading the EIF", e))?;
                        let mut take = (&mut *inner).take(s.size);
                        feeder.copy(
                            &format!("{} section {}", s.kind, s.index),
                            &mut take,
                            s.size,
                            false,
                            chain,
                            &mut sink,
                            &mut crc,
                            &mut |_| {},
                        )?;
                    }
                }
            }
            Ok(())
        })?;
        let mut full = crc32fast::Hasher::new();
        full.update(&self.header_bytes[..format::CRC_OFFSET]);
        full.combine(&crc);
        let pcr8 = self.signature.as_ref().map(|s| s.pcr8);
        Ok(Report {
            measurements: Measurements::new(pcrs.pcr0, pcrs.pcr1, pcrs.pcr2, pcr8),
            crc_expected: self.header.crc32,
            crc_computed: full.finalize(),
            signature: self.signature.as_ref().map(|s| s.check(&pcrs.pcr0)),
        })
    }

    /// [`measure`](Self::measure), then fails unless the CRC matches and the signature (if any)
    /// verifies.
    pub fn verify(&mut self) -> Result<Measurements> {
        let r = self.measure()?;
        r.check()?;
        Ok(r.measurements)
    }

    /// Checks that the signing certificate is valid at `at` (as `nitro-cli`'s signature checker
    /// does with the current time). Fails for unsigned images.
    pub fn check_certificate_validity(&self, at: SystemTime) -> Result<()> {
        let s = self
            .signature
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the image is not signed".into()))?;
        s.check_validity(at).map_err(Error::Signature)
    }

    /// The `nitro-cli describe-eif` output (streams the image to measure it).
    pub fn describe(&mut self) -> Result<Describe> {
        let r = self.measure()?;
        Ok(Describe::new(
            self.header.version,
            r.measurements,
            self.signature
                .as_ref()
                .map(SignatureSection::certificate_info),
            r.crc_ok(),
            r.signature.as_ref().map(std::result::Result::is_ok),
            self.metadata.as_ref(),
        ))
    }

    /// Copies the data of section `index` to `out`; returns the number of bytes copied.
    pub fn copy_section(&mut self, index: usize, out: &mut dyn Write) -> Result<u64> {
        let s = *self
            .sections
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no section {index}")))?;
        self.inner
            .seek(SeekFrom::Start(s.data_offset()))
            .map_err(|e| Error::io("reading the EIF", e))?;
        let n = io::copy(&mut (&mut self.inner).take(s.size), out)
            .map_err(|e| Error::io("copying a section", e))?;
        if n != s.size {
            return Err(FormatError::Truncated {
                what: format!("section {index}"),
                start: s.data_offset(),
                end: s.data_offset() + s.size,
                len: s.data_offset() + n,
            }
            .into());
        }
        Ok(n)
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}
