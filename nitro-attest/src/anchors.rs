//! Trust anchors: the pinned AWS Nitro Enclaves Root-G1, and other roots by explicit opt-in.

use std::sync::Arc;

use crate::chain::{self, CertInfo};
use crate::error::{Error, Result};

/// The AWS Nitro Enclaves Root-G1 certificate (`CN=aws.nitro-enclaves, OU=AWS, O=Amazon, C=US`,
/// P-384, valid 2019-10-28 → 2049-10-28), as published by AWS
/// (<https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>).
pub const AWS_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// SHA-256 of the DER encoding of the AWS Nitro Enclaves Root-G1 certificate
/// (`641a0321…8f79bb5b`). The embedded certificate is checked against this fingerprint when
/// [`TrustAnchors::aws`] loads it.
///
/// Note: the value `8cf60e2b…` quoted in AWS's documentation is the SHA-256 of the ZIP archive
/// the certificate is distributed in, not of the certificate.
pub const AWS_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31,
    0x7e, 0xd7, 0xcd, 0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// One trusted root certificate.
#[derive(Debug)]
pub(crate) struct Anchor {
    pub(crate) der: Vec<u8>,
    pub(crate) sha256: [u8; 32],
    pub(crate) info: Arc<CertInfo>,
}

/// The set of root certificates a [`Verifier`](crate::Verifier) accepts.
///
/// [`TrustAnchors::aws`] (also the [`Default`]) holds only the embedded AWS Nitro Enclaves
/// Root-G1, pinned by [`AWS_ROOT_G1_SHA256`]. Any other root, such as a
/// [`SimulatedNsm`](crate::SimulatedNsm)'s, must be added through a method whose name says
/// `non_aws_root`, so that accepting documents from outside AWS is always a visible decision.
///
/// A document's `cabundle[0]` must be byte-identical to one of the anchors; the anchor is never
/// taken from the document.
///
/// ```
/// use nitro_attest::{AWS_ROOT_G1_SHA256, TrustAnchors};
/// let aws = TrustAnchors::aws();
/// assert_eq!(aws.fingerprints(), vec![AWS_ROOT_G1_SHA256]);
/// assert!(aws.contains_aws_root());
/// ```
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    pub(crate) anchors: Vec<Arc<Anchor>>,
}

impl TrustAnchors {
    /// Only the embedded AWS Nitro Enclaves Root-G1.
    pub fn aws() -> Self {
        TrustAnchors {
            anchors: aws_anchor().into_iter().collect(),
        }
    }

    /// Only the given non-AWS root (DER). Use this for a [`SimulatedNsm`](crate::SimulatedNsm)
    /// or another test PKI; documents signed under AWS's root are then **rejected**.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless `der` is a self-signed X.509 v3 P-384 CA certificate
    /// signed with ecdsa-with-SHA384.
    pub fn non_aws_root_der(der: &[u8]) -> Result<Self> {
        Ok(TrustAnchors {
            anchors: vec![Arc::new(load(der)?)],
        })
    }

    /// Only the given non-AWS root (PEM). See [`TrustAnchors::non_aws_root_der`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the PEM holds no certificate or the certificate is not
    /// an acceptable root.
    pub fn non_aws_root_pem(pem: &str) -> Result<Self> {
        Self::non_aws_root_der(&pem_to_der(pem)?)
    }

    /// Adds a non-AWS root (DER) to this set, e.g. to accept both AWS and simulated documents.
    ///
    /// # Errors
    ///
    /// As [`TrustAnchors::non_aws_root_der`].
    pub fn with_non_aws_root_der(mut self, der: &[u8]) -> Result<Self> {
        let a = load(der)?;
        if !self.anchors.iter().any(|x| x.der == a.der) {
            self.anchors.push(Arc::new(a));
        }
        Ok(self)
    }

    /// Adds a non-AWS root (PEM) to this set.
    ///
    /// # Errors
    ///
    /// As [`TrustAnchors::non_aws_root_pem`].
    pub fn with_non_aws_root_pem(self, pem: &str) -> Result<Self> {
        self.with_non_aws_root_der(&pem_to_der(pem)?)
    }

    /// SHA-256 fingerprints (of the DER) of the anchors, in the order they were added.
    pub fn fingerprints(&self) -> Vec<[u8; 32]> {
        self.anchors.iter().map(|a| a.sha256).collect()
    }

    /// `true` if the AWS Nitro Enclaves Root-G1 is one of the anchors.
    pub fn contains_aws_root(&self) -> bool {
        self.anchors.iter().any(|a| a.sha256 == AWS_ROOT_G1_SHA256)
    }

    /// The anchor whose DER equals `der`, with its index.
    pub(crate) fn find(&self, der: &[u8]) -> Option<(usize, &Arc<Anchor>)> {
        self.anchors.iter().enumerate().find(|(_, a)| a.der == der)
    }
}

impl Default for TrustAnchors {
    fn default() -> Self {
        Self::aws()
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The embedded AWS root, loaded once. `None` only if the embedded constant were corrupt (a unit
/// test proves it is not); the AWS trust set is then empty and rejects everything.
fn aws_anchor() -> Option<Arc<Anchor>> {
    static AWS: std::sync::OnceLock<Option<Arc<Anchor>>> = std::sync::OnceLock::new();
    AWS.get_or_init(|| {
        let der = pem_to_der(AWS_ROOT_G1_PEM).ok()?;
        if sha256(&der) != AWS_ROOT_G1_SHA256 {
            return None;
        }
        load(&der).ok().map(Arc::new)
    })
    .clone()
}

fn load(der: &[u8]) -> Result<Anchor> {
    let bad = |what: String| Error::InvalidArgument(format!("trust anchor: {what}"));
    let p = chain::parse(der).map_err(|e| bad(e.to_string()))?;
    chain::check_self_signed(&p).map_err(|e| bad(format!("not self-signed: {e}")))?;
    p.info
        .check_ca(0)
        .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
    Ok(Anchor {
        der: der.to_vec(),
        sha256: sha256(der),
        info: Arc::new(p.info),
    })
}

// PEM goes through the `pem` crate only (decoding and encoding, here and in the simulator).

/// The blocks of a PEM text, in order; text outside the blocks is ignored.
pub(crate) fn pem_blocks(text: &str) -> std::result::Result<Vec<pem::Pem>, pem::PemError> {
    pem::parse_many(text)
}

/// Decodes the first `CERTIFICATE` block of a PEM string.
pub(crate) fn pem_to_der(text: &str) -> Result<Vec<u8>> {
    pem_blocks(text)
        .map_err(|e| Error::InvalidArgument(format!("PEM: {e}")))?
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .ok_or_else(|| Error::InvalidArgument("PEM: no CERTIFICATE block found".to_owned()))
}

/// Encodes DER as a PEM block with `label` (64-character lines ending in `\n`, RFC 7468).
#[cfg_attr(not(feature = "simulator"), allow(dead_code))]
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), lf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_root_matches_pinned_fingerprint() {
        let der = pem_to_der(AWS_ROOT_G1_PEM).unwrap();
        assert_eq!(sha256(&der), AWS_ROOT_G1_SHA256);
        assert_eq!(
            hex::encode(AWS_ROOT_G1_SHA256),
            "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
        );
        let a = TrustAnchors::aws();
        assert_eq!(a.anchors[0].der, der);
        assert!(a.contains_aws_root());
        // The AWS root has no pathLenConstraint and is a critical-BasicConstraints CA.
        assert_eq!(
            a.anchors[0].info.basic_constraints,
            Some((true, true, None))
        );
    }

    #[test]
    fn pem_round_trip() {
        let der = pem_to_der(AWS_ROOT_G1_PEM).unwrap();
        assert_eq!(pem_block("CERTIFICATE", &der), AWS_ROOT_G1_PEM);
        assert!(pem_to_der("nothing here").is_err());
    }

    #[test]
    fn rejects_non_ca_and_garbage() {
        assert!(matches!(
            TrustAnchors::non_aws_root_der(b"garbage"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
