//! The on-disk layout: file header, section headers, section kinds, architecture.
//!
//! ```text
//! [header 548][kernel hdr|data][cmdline hdr|data][metadata hdr|JSON][ramdisk hdr|cpio]...[signature hdr|CBOR]
//! ```
//!
//! All integers are big-endian. The header's section table gives, for each section, the absolute
//! offset of its 12-byte section header and the size of its data.

use std::fmt;

use crate::error::FormatError;

/// `.eif`
pub const MAGIC: [u8; 4] = *b".eif";
/// The version this crate writes.
pub const VERSION: u16 = 4;
/// Size of the file header in bytes.
pub const HEADER_SIZE: usize = 548;
/// Size of a section header in bytes.
pub const SECTION_HEADER_SIZE: usize = 12;
/// Maximum number of sections in an EIF.
pub const MAX_SECTIONS: usize = 32;
/// Offset of the CRC32 field (the last 4 bytes of the header).
pub const CRC_OFFSET: usize = 544;
/// Header flag bit: the image is for aarch64.
pub const FLAG_ARM64: u16 = 0x1;
/// `default_mem` written by nitro-cli (informational; the launcher decides).
pub const DEFAULT_MEM: u64 = 1024 * 1024 * 1024;
/// `default_cpus` written by nitro-cli (informational).
pub const DEFAULT_CPUS: u64 = 2;

/// CPU architecture of an enclave image (header flag bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arch {
    /// x86_64: kernel is a bzImage.
    X86_64,
    /// aarch64: kernel is an arm64 `Image`.
    Aarch64,
}

impl Arch {
    /// The name OCI image configs use (`amd64`, `arm64`).
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Parses an OCI/Go architecture name (`amd64`, `arm64`; also `x86_64`, `aarch64`).
    pub fn from_oci_name(name: &str) -> Option<Arch> {
        match name {
            "amd64" | "x86_64" => Some(Arch::X86_64),
            "arm64" | "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The architecture of the machine this code runs on, if it is one EIFs exist for.
    pub fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// Detects the architecture of a kernel image from its first bytes: an x86 bzImage has
    /// `HdrS` at offset 0x202, an arm64 `Image` has `ARM\x64` at offset 0x38.
    pub fn detect_kernel(head: &[u8]) -> Option<Arch> {
        if head.get(0x202..0x206) == Some(b"HdrS") {
            Some(Arch::X86_64)
        } else if head.get(0x38..0x3c) == Some(b"ARM\x64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    pub(crate) fn flags(self) -> u16 {
        match self {
            Arch::X86_64 => 0,
            Arch::Aarch64 => FLAG_ARM64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Reads the kernel release from an x86 bzImage's setup header (`kernel_version` field at
/// 0x20e points, relative to 0x200, at a NUL-terminated string such as
/// `6.12.12-amd64 (debian-kernel@lists.debian.org) #1 SMP ...`). Returns the first word.
pub(crate) fn bzimage_release(head: &[u8]) -> Option<String> {
    if Arch::detect_kernel(head) != Some(Arch::X86_64) {
        return None;
    }
    let protocol = u16::from_le_bytes([*head.get(0x206)?, *head.get(0x207)?]);
    if protocol < 0x200 {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]);
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let rest = head.get(start..)?;
    let end = rest.iter().position(|&b| b == 0 || b == b' ')?;
    let word = std::str::from_utf8(rest.get(..end)?).ok()?;
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(word.to_owned())
}

/// The type of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SectionKind {
    /// The kernel image (type 1).
    Kernel,
    /// The kernel command line, without a trailing NUL (type 2).
    Cmdline,
    /// A ramdisk (newc cpio) (type 3).
    Ramdisk,
    /// The signature: CBOR array of (certificate, COSE_Sign1) (type 4).
    Signature,
    /// JSON metadata, not measured (type 5).
    Metadata,
}

impl SectionKind {
    /// The on-disk type number.
    pub fn to_u16(self) -> u16 {
        match self {
            SectionKind::Kernel => 1,
            SectionKind::Cmdline => 2,
            SectionKind::Ramdisk => 3,
            SectionKind::Signature => 4,
            SectionKind::Metadata => 5,
        }
    }

    /// Parses an on-disk type number (0 is "invalid" and rejected).
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(SectionKind::Kernel),
            2 => Some(SectionKind::Cmdline),
            3 => Some(SectionKind::Ramdisk),
            4 => Some(SectionKind::Signature),
            5 => Some(SectionKind::Metadata),
            _ => None,
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SectionKind::Kernel => "kernel",
            SectionKind::Cmdline => "cmdline",
            SectionKind::Ramdisk => "ramdisk",
            SectionKind::Signature => "signature",
            SectionKind::Metadata => "metadata",
        })
    }
}

/// The 548-byte file header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EifHeader {
    /// Format version (4 for current images).
    pub version: u16,
    /// Flags; bit 0 is the architecture.
    pub flags: u16,
    /// Informational default memory in bytes.
    pub default_mem: u64,
    /// Informational default vCPU count.
    pub default_cpus: u64,
    /// Reserved field (0).
    pub reserved: u16,
    /// Number of sections in use.
    pub num_sections: u16,
    /// Absolute offset of each section's header.
    pub section_offsets: [u64; MAX_SECTIONS],
    /// Size of each section's data.
    pub section_sizes: [u64; MAX_SECTIONS],
    /// Unused field (0).
    pub unused: u32,
    /// CRC32 of everything but this field.
    pub crc32: u32,
}

impl EifHeader {
    /// The architecture from the flags.
    pub fn arch(&self) -> Arch {
        if self.flags & FLAG_ARM64 != 0 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Serializes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_be_bytes());
        b[6..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..16].copy_from_slice(&self.default_mem.to_be_bytes());
        b[16..24].copy_from_slice(&self.default_cpus.to_be_bytes());
        b[24..26].copy_from_slice(&self.reserved.to_be_bytes());
        b[26..28].copy_from_slice(&self.num_sections.to_be_bytes());
        for (i, (off, size)) in self
            .section_offsets
            .iter()
            .zip(self.section_sizes.iter())
            .enumerate()
        {
            b[28 + 8 * i..36 + 8 * i].copy_from_slice(&off.to_be_bytes());
            b[284 + 8 * i..292 + 8 * i].copy_from_slice(&size.to_be_bytes());
        }
        b[540..544].copy_from_slice(&self.unused.to_be_bytes());
        b[544..548].copy_from_slice(&self.crc32.to_be_bytes());
        b
    }

    /// Parses a header, checking magic, version, flags and the section count.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Self, FormatError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&b[0..4]);
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(a)
        };
        let version = u16_at(4);
        if !(1..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let flags = u16_at(6);
        if flags & !FLAG_ARM64 != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        let num_sections = u16_at(26);
        if usize::from(num_sections) > MAX_SECTIONS {
            return Err(FormatError::TooManySections(num_sections));
        }
        let mut section_offsets = [0u64; MAX_SECTIONS];
        let mut section_sizes = [0u64; MAX_SECTIONS];
        for i in 0..MAX_SECTIONS {
            section_offsets[i] = u64_at(28 + 8 * i);
            section_sizes[i] = u64_at(284 + 8 * i);
            if i >= usize::from(num_sections) && (section_offsets[i] != 0 || section_sizes[i] != 0)
            {
                return Err(FormatError::UnusedSlot(i));
            }
        }
        Ok(EifHeader {
            version,
            flags,
            default_mem: u64_at(8),
            default_cpus: u64_at(16),
            reserved: u16_at(24),
            num_sections,
            section_offsets,
            section_sizes,
            unused: u32::from_be_bytes([b[540], b[541], b[542], b[543]]),
            crc32: u32::from_be_bytes([b[544], b[545], b[546], b[547]]),
        })
    }
}

/// Serializes a 12-byte section header.
pub(crate) fn section_header(kind: SectionKind, size: u64) -> [u8; SECTION_HEADER_SIZE] {
    let mut b = [0u8; SECTION_HEADER_SIZE];
    b[0..2].copy_from_slice(&kind.to_u16().to_be_bytes());
    b[4..12].copy_from_slice(&size.to_be_bytes());
    b
}

/// Parses a 12-byte section header into (type, flags, size) without validating them.
pub(crate) fn parse_section_header(b: &[u8; SECTION_HEADER_SIZE]) -> (u16, u16, u64) {
    let mut size = [0u8; 8];
    size.copy_from_slice(&b[4..12]);
    (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
        u64::from_be_bytes(size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut h = EifHeader {
            version: 4,
            flags: 1,
            default_mem: DEFAULT_MEM,
            default_cpus: 2,
            reserved: 0,
            num_sections: 2,
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0xdead_beef,
        };
        h.section_offsets[0] = 548;
        h.section_sizes[0] = 10;
        h.section_offsets[1] = 570;
        h.section_sizes[1] = 3;
        let b = h.to_bytes();
        assert_eq!(&b[..4], b".eif");
        assert_eq!(EifHeader::parse(&b), Ok(h.clone()));
        assert_eq!(h.arch(), Arch::Aarch64);
        let mut bad = b;
        bad[284 + 8 * 5 + 7] = 1; // a size in an unused slot
        assert_eq!(EifHeader::parse(&bad), Err(FormatError::UnusedSlot(5)));
    }

    #[test]
    fn kernel_detection() {
        let mut x86 = vec![0u8; 0x400];
        x86[0x202..0x206].copy_from_slice(b"HdrS");
        x86[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        x86[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        x86[0x300..0x319].copy_from_slice(b"6.12.12-amd64 (x@y) #1 SM");
        assert_eq!(Arch::detect_kernel(&x86), Some(Arch::X86_64));
        assert_eq!(bzimage_release(&x86).as_deref(), Some("6.12.12-amd64"));
        let mut arm = vec![0u8; 0x40];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(Arch::detect_kernel(&arm), Some(Arch::Aarch64));
        assert_eq!(Arch::detect_kernel(&[0u8; 10]), None);
        assert_eq!(bzimage_release(&x86[..0x305]), None);
    }
}
