//! PCR values and how they are computed.
//!
//! All digests are SHA-384. Each image PCR is a TPM-style extend of a zeroed register with the
//! digest of the measured bytes:
//!
//! ```text
//! PCR0 = SHA384(0^48 || SHA384(kernel || cmdline || ramdisk_0 || ... || ramdisk_n))
//! PCR1 = SHA384(0^48 || SHA384(kernel || cmdline || ramdisk_0))
//! PCR2 = SHA384(0^48 || SHA384(ramdisk_1 || ... || ramdisk_n))
//! PCR8 = SHA384(0^48 || SHA384(DER of the signing certificate))
//! ```
//!
//! Section headers, the metadata section and the signature section are not measured.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::error::{Error, Result, SignatureError};

/// Length of a SHA-384 digest.
pub const PCR_LEN: usize = 48;

/// The value of one PCR (a SHA-384 digest). Displays as lowercase hex.
#[allow(clippy::exhaustive_structs)] // reason: a PCR is 48 bytes by definition; the field is the value
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pcr(pub [u8; PCR_LEN]);

impl Pcr {
    /// All zeros: the value of an unused register (e.g. PCR8 of an unsigned image).
    pub const ZERO: Pcr = Pcr([0; PCR_LEN]);

    /// `SHA384(0^48 || data)`: extends a zeroed register with `data`. With a digest this gives
    /// the image PCRs; with raw bytes it gives PCR3 (the parent's IAM role ARN) and PCR4 (the
    /// parent's instance id), which the platform extends with the bytes themselves.
    pub fn extend_zero(digest: &[u8]) -> Pcr {
        let mut ctx = digest::Context::new(&digest::SHA384);
        ctx.update(&[0u8; PCR_LEN]);
        ctx.update(digest);
        Pcr::from_digest(ctx.finish())
    }

    /// The PCR of arbitrary bytes as measured by `nitro-cli pcr --input`:
    /// `SHA384(0^48 || SHA384(data))`.
    pub fn of_bytes(data: &[u8]) -> Pcr {
        Pcr::extend_zero(digest::digest(&digest::SHA384, data).as_ref())
    }

    /// PCR8 of a signing certificate given in PEM, as `nitro-cli pcr --signing-certificate`
    /// computes it: `SHA384(0^48 || SHA384(DER))` of the first `CERTIFICATE` block.
    pub fn of_certificate_pem(pem: &[u8]) -> Result<Pcr> {
        let der = crate::sign::pem_block(pem, &["CERTIFICATE"])
            .map_err(|e| Error::Signature(SignatureError::Certificate(e)))?;
        crate::sign::parse_certificate(&der)?;
        Ok(Pcr::of_bytes(&der))
    }

    pub(crate) fn from_digest(d: digest::Digest) -> Pcr {
        let mut out = [0u8; PCR_LEN];
        out.copy_from_slice(d.as_ref());
        Pcr(out)
    }

    /// Lowercase hex, as nitro-cli prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; PCR_LEN] {
        &self.0
    }
}

impl fmt::Display for Pcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Pcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pcr({})", self.to_hex())
    }
}

impl FromStr for Pcr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Pcr> {
        let mut out = [0u8; PCR_LEN];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|e| Error::InvalidArgument(format!("PCR value {s:?}: {e}")))?;
        Ok(Pcr(out))
    }
}

impl Serialize for Pcr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The measurements of an EIF: PCR0, PCR1, PCR2 and, when signed, PCR8.
///
/// Serializes as nitro-cli's `Measurements` object:
/// `{"HashAlgorithm": "Sha512_48 { .. }", "PCR0": "...", "PCR1": "...", "PCR2": "...", "PCR8": "..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Measurements {
    /// The whole image (kernel, command line, all ramdisks).
    pub pcr0: Pcr,
    /// Kernel, command line and the first (bootstrap) ramdisk.
    pub pcr1: Pcr,
    /// The remaining (customer) ramdisks.
    pub pcr2: Pcr,
    /// The signing certificate, if the image is signed.
    pub pcr8: Option<Pcr>,
}

impl Measurements {
    /// The value nitro-cli prints for `HashAlgorithm`: the `Debug` output of its SHA-384 hasher.
    /// Builds of nitro-cli with `sha2` 0.10 (aws-nitro-enclaves-image-format 0.8.1) print
    /// `Sha512_48 { .. }`; older builds printed `Sha384 { ... }`. Both mean SHA-384.
    pub const HASH_ALGORITHM: &'static str = "Sha512_48 { .. }";

    /// Builds a measurement set from explicit values.
    pub fn new(pcr0: Pcr, pcr1: Pcr, pcr2: Pcr, pcr8: Option<Pcr>) -> Self {
        Measurements {
            pcr0,
            pcr1,
            pcr2,
            pcr8,
        }
    }
}

impl Serialize for Measurements {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("HashAlgorithm", Self::HASH_ALGORITHM)?;
        m.serialize_entry("PCR0", &self.pcr0)?;
        m.serialize_entry("PCR1", &self.pcr1)?;
        m.serialize_entry("PCR2", &self.pcr2)?;
        if let Some(p8) = &self.pcr8 {
            m.serialize_entry("PCR8", p8)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_matches_definition() {
        // SHA384 of the empty string, extended into a zero register: the PCR2 of an image with
        // a single ramdisk.
        let empty = Pcr::of_bytes(b"");
        let manual = {
            let inner = digest::digest(&digest::SHA384, b"");
            let mut buf = vec![0u8; 48];
            buf.extend_from_slice(inner.as_ref());
            Pcr::from_digest(digest::digest(&digest::SHA384, &buf))
        };
        assert_eq!(empty, manual);
        assert_eq!(empty.to_string().parse::<Pcr>().ok(), Some(empty));
        assert!("zz".parse::<Pcr>().is_err());
    }

    #[test]
    fn measurements_json_keys() {
        let m = Measurements::new(Pcr::ZERO, Pcr::ZERO, Pcr::ZERO, None);
        let v = serde_json::to_value(m).unwrap_or_default();
        let keys: Vec<_> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["HashAlgorithm", "PCR0", "PCR1", "PCR2"]);
    }
}
