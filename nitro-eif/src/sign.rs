//! Signing (the signature section and PCR8) and signature verification.
//!
//! The signature section is CBOR, written exactly as nitro-cli writes it: an array with one map
//! `{"signing_certificate": [uint8...], "signature": [uint8...]}` whose values are *arrays of
//! small unsigned integers* (not byte strings). `signing_certificate` holds the PEM text of the
//! certificate; `signature` holds an untagged COSE_Sign1 with protected header `{1: alg}`, an
//! empty unprotected header, and as payload the CBOR map
//! `{"register_index": 0, "register_value": [48 uint8 of PCR0]}`.
//!
//! Verification follows the "reconstruct, then verify" rule: from the certificate and the raw
//! signature value found in the file, and the PCR0 this crate measured, the whole section is
//! rebuilt and must be byte-identical to the section in the file; then the ECDSA signature is
//! checked with the certificate's key over the rebuilt COSE `Sig_structure`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use ciborium::Value;
use coset::{
    CborSerializable as _, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _,
    iana,
};
use serde::Serialize;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::error::{Error, Result, SignatureError};
use crate::measure::{PCR_LEN, Pcr};

/// The largest signature section this crate reads (the format's documented limit).
pub const MAX_SIGNATURE_SECTION: u64 = 32 * 1024;

/// The ECDSA algorithms nitro-cli accepts for EIF signing (by key curve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256 (COSE -7).
    Es256,
    /// ECDSA P-384 with SHA-384 (COSE -35); what AWS documents for EIF signing.
    Es384,
    /// ECDSA P-521 with SHA-512 (COSE -36).
    Es512,
}

impl SigningAlgorithm {
    /// Length of the fixed-width `r || s` signature value.
    pub fn signature_len(self) -> usize {
        match self {
            SigningAlgorithm::Es256 => 64,
            SigningAlgorithm::Es384 => 96,
            SigningAlgorithm::Es512 => 132,
        }
    }

    /// The digest the algorithm signs with (SHA-256, SHA-384 or SHA-512).
    pub(crate) fn digest(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            SigningAlgorithm::Es256 => &aws_lc_rs::digest::SHA256,
            SigningAlgorithm::Es384 => &aws_lc_rs::digest::SHA384,
            SigningAlgorithm::Es512 => &aws_lc_rs::digest::SHA512,
        }
    }

    /// Converts a DER `ECDSA-Sig-Value` (`SEQUENCE { r INTEGER, s INTEGER }`, what OpenSSL,
    /// AWS KMS and most HSM tools return) into the fixed-width `r || s` value COSE uses
    /// ([`signature_len`](Self::signature_len) bytes, each half left-padded with zeros).
    ///
    /// ```
    /// use nitro_eif::SigningAlgorithm;
    /// // r = 1, s = 0x80 (DER needs a leading zero for the sign bit).
    /// let der = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80];
    /// let raw = SigningAlgorithm::Es384.signature_from_der(&der).unwrap();
    /// assert_eq!(raw.len(), 96);
    /// assert_eq!((raw[47], raw[95]), (1, 0x80));
    /// assert!(SigningAlgorithm::Es384.signature_from_der(&der[..8]).is_err());
    /// ```
    pub fn signature_from_der(self, der: &[u8]) -> Result<Vec<u8>> {
        let bad = |why: &str| Error::SigningKey(format!("DER ECDSA signature: {why}"));
        fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
            let (&t, rest) = b.split_first()?;
            if t != tag {
                return None;
            }
            let (&l, rest) = rest.split_first()?;
            let (len, rest) = match l {
                0..=0x7f => (usize::from(l), rest),
                0x81 => {
                    let (&n, rest) = rest.split_first()?;
                    if n < 0x80 {
                        return None; // not minimal
                    }
                    (usize::from(n), rest)
                }
                _ => return None, // no ECDSA signature needs more than 255 bytes
            };
            if rest.len() < len {
                return None;
            }
            Some(rest.split_at(len))
        }
        let (seq, trailing) = tlv(der, 0x30).ok_or_else(|| bad("not a DER SEQUENCE"))?;
        if !trailing.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let half = self.signature_len() / 2;
        let mut out = vec![0u8; 2 * half];
        let mut rest = seq;
        for i in 0..2 {
            let (int, r) = tlv(rest, 0x02).ok_or_else(|| bad("expected an INTEGER"))?;
            rest = r;
            match int {
                [] => return Err(bad("empty INTEGER")),
                [first, ..] if first & 0x80 != 0 => return Err(bad("negative INTEGER")),
                [0, second, ..] if second & 0x80 == 0 => return Err(bad("non-minimal INTEGER")),
                _ => {}
            }
            let digits = match int {
                [0, tail @ ..] => tail,
                all => all,
            };
            if digits.len() > half {
                return Err(bad("INTEGER too large for the curve"));
            }
            out[i * half + half - digits.len()..(i + 1) * half].copy_from_slice(digits);
        }
        if !rest.is_empty() {
            return Err(bad("more than two INTEGERs"));
        }
        Ok(out)
    }

    fn cose(self) -> iana::Algorithm {
        match self {
            SigningAlgorithm::Es256 => iana::Algorithm::ES256,
            SigningAlgorithm::Es384 => iana::Algorithm::ES384,
            SigningAlgorithm::Es512 => iana::Algorithm::ES512,
        }
    }

    fn from_cose(alg: &coset::Algorithm) -> Option<Self> {
        match alg {
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256) => {
                Some(SigningAlgorithm::Es256)
            }
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384) => {
                Some(SigningAlgorithm::Es384)
            }
            coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES512) => {
                Some(SigningAlgorithm::Es512)
            }
            _ => None,
        }
    }

    fn signing(self) -> &'static sig::EcdsaSigningAlgorithm {
        match self {
            SigningAlgorithm::Es256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            SigningAlgorithm::Es384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            SigningAlgorithm::Es512 => &sig::ECDSA_P521_SHA512_FIXED_SIGNING,
        }
    }

    fn verification(self) -> &'static sig::EcdsaVerificationAlgorithm {
        match self {
            SigningAlgorithm::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
            SigningAlgorithm::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
            SigningAlgorithm::Es512 => &sig::ECDSA_P521_SHA512_FIXED,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::Es384 => "ES384",
            SigningAlgorithm::Es512 => "ES512",
        })
    }
}

/// Something that can sign an EIF: holds (or reaches) an ECDSA private key and knows the
/// certificate of its public key.
///
/// Implement it to sign with a key held in a KMS or an HSM; [`PemSigner`] covers local PEM
/// files. The builder verifies every signature it gets back against the certificate before
/// writing it, so a misbehaving implementation cannot produce an image that does not verify.
pub trait Signer: Send + Sync {
    /// The signing certificate as PEM text. It is stored verbatim in the image; the DER of its
    /// first `CERTIFICATE` block is measured into PCR8.
    fn certificate_pem(&self) -> &[u8];

    /// The algorithm [`sign`](Signer::sign) produces (must match the certificate's curve).
    fn algorithm(&self) -> SigningAlgorithm;

    /// Signs `message` (the COSE `Sig_structure`, to be hashed with the algorithm's digest) and
    /// returns the fixed-width `r || s` value ([`SigningAlgorithm::signature_len`] bytes).
    /// A KMS returns DER signatures: convert them to `r || s` before returning.
    fn sign(
        &self,
        message: &[u8],
    ) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A [`Signer`] over a local ECDSA private key (PEM: PKCS#8 `PRIVATE KEY` or SEC1
/// `EC PRIVATE KEY`) and its PEM certificate, as `nitro-cli build-enclave --private-key
/// --signing-certificate` takes them.
pub struct PemSigner {
    key: EcdsaKeyPair,
    algorithm: SigningAlgorithm,
    certificate_pem: Vec<u8>,
}

impl fmt::Debug for PemSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemSigner")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PemSigner {
    /// Builds a signer from PEM text. The key's curve selects the algorithm; the certificate
    /// must carry the key's public half.
    pub fn new(key_pem: &[u8], certificate_pem: &[u8]) -> Result<Self> {
        let der =
            pem_block(key_pem, &["PRIVATE KEY", "EC PRIVATE KEY"]).map_err(Error::SigningKey)?;
        let mut found = None;
        for alg in [
            SigningAlgorithm::Es384,
            SigningAlgorithm::Es256,
            SigningAlgorithm::Es512,
        ] {
            if let Ok(k) = EcdsaKeyPair::from_private_key_der(alg.signing(), &der) {
                found = Some((k, alg));
                break;
            }
        }
        let (key, algorithm) = found.ok_or_else(|| {
            Error::SigningKey("not an ECDSA P-256, P-384 or P-521 private key".into())
        })?;
        let cert = CertificateKey::from_pem(certificate_pem)?;
        if cert.algorithm != algorithm || cert.public_key != key.public_key().as_ref() {
            return Err(Error::SigningKey(
                "the certificate does not carry the public key of the private key".into(),
            ));
        }
        Ok(PemSigner {
            key,
            algorithm,
            certificate_pem: certificate_pem.to_vec(),
        })
    }

    /// Reads the key and the certificate from PEM files.
    pub fn from_files(key: impl AsRef<Path>, certificate: impl AsRef<Path>) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        PemSigner::new(&read(key.as_ref())?, &read(certificate.as_ref())?)
    }
}

impl Signer for PemSigner {
    fn certificate_pem(&self) -> &[u8] {
        &self.certificate_pem
    }

    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    fn sign(
        &self,
        message: &[u8],
    ) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let s = self
            .key
            .sign(&SystemRandom::new(), message)
            .map_err(|_| "ECDSA signing failed")?;
        Ok(s.as_ref().to_vec())
    }
}

/// The public key and algorithm of a signing certificate.
pub(crate) struct CertificateKey {
    pub(crate) der: Vec<u8>,
    pub(crate) algorithm: SigningAlgorithm,
    pub(crate) public_key: Vec<u8>,
}

impl CertificateKey {
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self> {
        let der = pem_block(pem, &["CERTIFICATE"])
            .map_err(|e| Error::Signature(SignatureError::Certificate(e)))?;
        let (algorithm, public_key) = {
            let cert = parse_certificate(&der)?;
            let spki = &cert.tbs_certificate.subject_pki;
            if spki.algorithm.algorithm.to_id_string() != "1.2.840.10045.2.1" {
                return Err(SignatureError::Certificate(
                    "the certificate key is not an EC key".into(),
                )
                .into());
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let algorithm = match curve.as_str() {
                "1.2.840.10045.3.1.7" => SigningAlgorithm::Es256,
                "1.3.132.0.34" => SigningAlgorithm::Es384,
                "1.3.132.0.35" => SigningAlgorithm::Es512,
                other => {
                    return Err(SignatureError::Certificate(format!(
                        "unsupported EC curve {other:?} (P-256, P-384 or P-521 required)"
                    ))
                    .into());
                }
            };
            (algorithm, spki.subject_public_key.data.to_vec())
        };
        Ok(CertificateKey {
            der,
            algorithm,
            public_key,
        })
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(self.algorithm.verification(), &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// Parses a DER certificate, rejecting trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => {
            Err(SignatureError::Certificate("trailing bytes after the certificate".into()).into())
        }
        Err(e) => Err(SignatureError::Certificate(e.to_string()).into()),
    }
}

/// The COSE payload for PCR0: `{"register_index": 0, "register_value": [48 uint8]}`.
pub(crate) fn pcr_info(pcr0: &Pcr) -> Vec<u8> {
    let value = Value::Map(vec![
        (
            Value::Text("register_index".into()),
            Value::Integer(0.into()),
        ),
        (
            Value::Text("register_value".into()),
            Value::Array(pcr0.0.iter().map(|&b| Value::Integer(b.into())).collect()),
        ),
    ]);
    cbor(&value)
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and a Value always serializes.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

fn uint_array(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&b| Value::Integer(b.into())).collect())
}

/// The section bytes for one (certificate, COSE_Sign1) pair.
fn section_bytes(certificate_pem: &[u8], cose: &[u8]) -> Vec<u8> {
    cbor(&Value::Array(vec![Value::Map(vec![
        (
            Value::Text("signing_certificate".into()),
            uint_array(certificate_pem),
        ),
        (Value::Text("signature".into()), uint_array(cose)),
    ])]))
}

/// The untagged COSE_Sign1 for `payload` with the given signature value.
fn cose_bytes(
    algorithm: SigningAlgorithm,
    payload: Vec<u8>,
    signature: Vec<u8>,
) -> Result<Vec<u8>> {
    let unsigned = cose_unsigned(algorithm, payload);
    CoseSign1 {
        signature,
        ..unsigned
    }
    .to_vec()
    .map_err(|e| SignatureError::Cose(e.to_string()).into())
}

fn cose_unsigned(algorithm: SigningAlgorithm, payload: Vec<u8>) -> CoseSign1 {
    CoseSign1Builder::new()
        .protected(HeaderBuilder::new().algorithm(algorithm.cose()).build())
        .payload(payload)
        .build()
}

/// The COSE payload and `Sig_structure` (the bytes a signer signs) for `pcr0`.
pub(crate) fn to_be_signed(algorithm: SigningAlgorithm, pcr0: &Pcr) -> (Vec<u8>, Vec<u8>) {
    let payload = pcr_info(pcr0);
    let tbs = cose_unsigned(algorithm, payload.clone()).tbs_data(b"");
    (payload, tbs)
}

/// The signature section for an already verified raw signature.
pub(crate) fn section_from_parts(
    certificate_pem: &[u8],
    algorithm: SigningAlgorithm,
    payload: &[u8],
    signature: Vec<u8>,
) -> Result<Vec<u8>> {
    let cose = cose_bytes(algorithm, payload.to_vec(), signature)?;
    let section = section_bytes(certificate_pem, &cose);
    if section.len() as u64 > MAX_SIGNATURE_SECTION {
        return Err(Error::SigningKey(format!(
            "the signature section would be {} bytes (limit {MAX_SIGNATURE_SECTION}); use a smaller certificate",
            section.len()
        )));
    }
    Ok(section)
}

/// Signs PCR0 with `signer` and returns the signature section. The signature is verified
/// against the certificate before it is returned.
pub(crate) fn signature_section(
    signer: &dyn Signer,
    cert: &CertificateKey,
    pcr0: &Pcr,
) -> Result<Vec<u8>> {
    let algorithm = signer.algorithm();
    if algorithm != cert.algorithm {
        return Err(Error::SigningKey(format!(
            "the signer produces {algorithm} but the certificate's key needs {}",
            cert.algorithm
        )));
    }
    let (payload, tbs) = to_be_signed(algorithm, pcr0);
    let signature = signer.sign(&tbs).map_err(Error::Signer)?;
    if signature.len() != algorithm.signature_len() || !cert.verify(&tbs, &signature) {
        return Err(Error::SigningKey(
            "the signer's signature does not verify with the certificate's public key".into(),
        ));
    }
    section_from_parts(signer.certificate_pem(), algorithm, &payload, signature)
}

/// The parsed signature section of an EIF.
#[derive(Clone)]
pub(crate) struct SignatureSection {
    pub(crate) certificate_pem: Vec<u8>,
    pub(crate) cose: Vec<u8>,
    pub(crate) pcr8: Pcr,
    cert: std::sync::Arc<CertificateKey>,
    raw: Vec<u8>,
}

impl fmt::Debug for SignatureSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureSection")
            .field("pcr8", &self.pcr8)
            .finish_non_exhaustive()
    }
}

fn uint8_array(v: &Value, what: &str) -> std::result::Result<Vec<u8>, SignatureError> {
    let Value::Array(items) = v else {
        return Err(SignatureError::Malformed(format!(
            "{what} is not an array of uint8"
        )));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Integer(n) => u8::try_from(*n).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| {
            SignatureError::Malformed(format!("{what} has an element that is not a uint8"))
        })
}

impl SignatureSection {
    /// Parses the section: CBOR shape, certificate (PEM → DER → X.509 with an EC key). The
    /// signature itself is checked by [`SignatureSection::check`].
    pub(crate) fn parse(raw: &[u8]) -> Result<Self> {
        let mut rest = raw;
        let value: Value = ciborium::from_reader(&mut rest)
            .map_err(|e| SignatureError::Malformed(format!("not CBOR: {e}")))?;
        if !rest.is_empty() {
            return Err(SignatureError::Malformed(format!("{} trailing bytes", rest.len())).into());
        }
        let Value::Array(items) = value else {
            return Err(SignatureError::Malformed("not a CBOR array".into()).into());
        };
        let Some(Value::Map(pairs)) = items.first() else {
            return Err(SignatureError::Malformed("first element is not a map".into()).into());
        };
        let mut certificate_pem = None;
        let mut cose = None;
        for (k, v) in pairs {
            match k {
                Value::Text(t) if t == "signing_certificate" && certificate_pem.is_none() => {
                    certificate_pem = Some(uint8_array(v, "signing_certificate")?);
                }
                Value::Text(t) if t == "signature" && cose.is_none() => {
                    cose = Some(uint8_array(v, "signature")?);
                }
                _ => {
                    return Err(SignatureError::Malformed(
                        "unexpected key in the PCR signature map".into(),
                    )
                    .into());
                }
            }
        }
        let (Some(certificate_pem), Some(cose)) = (certificate_pem, cose) else {
            return Err(SignatureError::Malformed(
                "missing signing_certificate or signature".into(),
            )
            .into());
        };
        let cert = CertificateKey::from_pem(&certificate_pem)?;
        let pcr8 = Pcr::of_bytes(&cert.der);
        Ok(SignatureSection {
            certificate_pem,
            cose,
            pcr8,
            cert: std::sync::Arc::new(cert),
            raw: raw.to_vec(),
        })
    }

    /// Reconstructs the section for `pcr0` and verifies it: see the module documentation.
    pub(crate) fn check(&self, pcr0: &Pcr) -> std::result::Result<(), SignatureError> {
        let parsed = if self.cose.first() == Some(&0xd2) {
            CoseSign1::from_tagged_slice(&self.cose)
        } else {
            CoseSign1::from_slice(&self.cose)
        }
        .map_err(|e| SignatureError::Cose(e.to_string()))?;
        let algorithm = parsed
            .protected
            .header
            .alg
            .as_ref()
            .and_then(SigningAlgorithm::from_cose)
            .ok_or_else(|| SignatureError::Cose("missing or unsupported algorithm".into()))?;
        if algorithm != self.cert.algorithm {
            return Err(SignatureError::Cose(format!(
                "algorithm {algorithm} does not match the certificate's key"
            )));
        }
        let expected_payload = pcr_info(pcr0);
        if parsed.payload.as_deref() != Some(&expected_payload[..]) {
            return Err(SignatureError::PayloadMismatch);
        }
        let cose = cose_bytes(
            algorithm,
            expected_payload.clone(),
            parsed.signature.clone(),
        )
        .map_err(|e| SignatureError::Cose(e.to_string()))?;
        if section_bytes(&self.certificate_pem, &cose) != self.raw {
            return Err(SignatureError::Malformed(
                "the section is not the canonical encoding of (certificate, COSE_Sign1 over PCR0)"
                    .into(),
            ));
        }
        let tbs = cose_unsigned(algorithm, expected_payload).tbs_data(b"");
        if parsed.signature.len() != algorithm.signature_len()
            || !self.cert.verify(&tbs, &parsed.signature)
        {
            return Err(SignatureError::BadSignature);
        }
        Ok(())
    }

    /// Checks that the certificate is valid at `at`.
    pub(crate) fn check_validity(&self, at: SystemTime) -> std::result::Result<(), SignatureError> {
        let cert = parse_certificate(&self.cert.der)
            .map_err(|e| SignatureError::Certificate(e.to_string()))?;
        let v = cert.validity();
        let t = match at.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        if t < v.not_before.timestamp() || t > v.not_after.timestamp() {
            return Err(SignatureError::Expired {
                at: t,
                not_before: v.not_before.timestamp(),
                not_after: v.not_after.timestamp(),
            });
        }
        Ok(())
    }

    /// The `SigningCertificate` object of `nitro-cli describe-eif`.
    pub(crate) fn certificate_info(&self) -> CertificateInfo {
        CertificateInfo::from_der(&self.cert.der)
    }

    /// The DER of the signing certificate.
    pub(crate) fn certificate_der(&self) -> &[u8] {
        &self.cert.der
    }
}

/// `2024-01-02T03:04:05Z` (the number itself if out of range).
pub(crate) fn format_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

/// OpenSSL's `ASN1_TIME_print` format, e.g. `Jan  2 03:04:05 2024 GMT`.
fn openssl_time(t: &x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .get(usize::from(u8::from(d.month())).saturating_sub(1))
        .copied()
        .unwrap_or("???");
    format!(
        "{month} {:>2} {:02}:{:02}:{:02} {} GMT",
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.year()
    )
}

/// OpenSSL long names of common attribute and algorithm OIDs (used in describe output).
fn openssl_long_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "commonName",
        "2.5.4.4" => "surname",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "countryName",
        "2.5.4.7" => "localityName",
        "2.5.4.8" => "stateOrProvinceName",
        "2.5.4.9" => "streetAddress",
        "2.5.4.10" => "organizationName",
        "2.5.4.11" => "organizationalUnitName",
        "2.5.4.12" => "title",
        "2.5.4.17" => "postalCode",
        "2.5.4.42" => "givenName",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "domainComponent",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        _ => return None,
    })
}

/// The `SigningCertificate` object of `nitro-cli describe-eif`, with the same keys and value
/// formats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// Issuer attributes by OpenSSL long name (`commonName`, `organizationName`, ...).
    #[serde(rename = "IssuerName")]
    pub issuer_name: BTreeMap<String, String>,
    /// Signature algorithm of the certificate (e.g. `ecdsa-with-SHA384`).
    #[serde(rename = "Algorithm")]
    pub algorithm: String,
    /// Start of validity, e.g. `Jan  2 03:04:05 2024 GMT`.
    #[serde(rename = "NotBefore")]
    pub not_before: String,
    /// End of validity.
    #[serde(rename = "NotAfter")]
    pub not_after: String,
    /// The certificate's signature as `AB:CD:...`.
    #[serde(rename = "Signature")]
    pub signature: String,
}

impl CertificateInfo {
    fn from_der(der: &[u8]) -> CertificateInfo {
        let Ok(cert) = parse_certificate(der) else {
            return CertificateInfo {
                issuer_name: BTreeMap::new(),
                algorithm: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                signature: String::new(),
            };
        };
        let mut issuer_name = BTreeMap::new();
        for attr in cert.issuer().iter_attributes() {
            let oid = attr.attr_type().to_id_string();
            let key = openssl_long_name(&oid).map(str::to_owned).unwrap_or(oid);
            let value = match attr.as_str() {
                Ok(s) => format!("{s:?}").replace('"', ""),
                Err(_) => "error".to_owned(),
            };
            issuer_name.insert(key, value);
        }
        let alg = cert.signature_algorithm.algorithm.to_id_string();
        let algorithm = openssl_long_name(&alg).map(str::to_owned).unwrap_or(alg);
        let v = cert.validity();
        CertificateInfo {
            issuer_name,
            algorithm,
            not_before: openssl_time(&v.not_before),
            not_after: openssl_time(&v.not_after),
            signature: cert
                .signature_value
                .data
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
        }
    }
}

/// Checks that a signature section is well formed for `PCR_LEN`-byte PCRs (compile-time sanity).
const _: () = assert!(PCR_LEN == 48);

/// Largest PEM input decoded (certificates and keys are a few KiB).
const MAX_PEM: usize = 1 << 20;

/// The contents (DER) of the first PEM block of `input` whose label is one of `labels`. The
/// `pem` crate decodes; a malformed block anywhere in the input is an error.
pub(crate) fn pem_block(input: &[u8], labels: &[&str]) -> std::result::Result<Vec<u8>, String> {
    if input.len() > MAX_PEM {
        return Err(format!("PEM input of {} bytes is too large", input.len()));
    }
    pem::parse_many(input)
        .map_err(|e| format!("PEM: {e}"))?
        .into_iter()
        .find(|b| labels.contains(&b.tag()))
        .map(pem::Pem::into_contents)
        .ok_or_else(|| format!("no PEM block labelled {}", labels.join(" or ")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_blocks() {
        let block = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der));
        let der = b"hello world, this is not DER but it is bytes";
        let text = format!("junk\n{}", block("PRIVATE KEY", b"k")) + &block("CERTIFICATE", der);
        assert_eq!(
            pem_block(text.as_bytes(), &["CERTIFICATE"]).as_deref(),
            Ok(&der[..])
        );
        assert!(pem_block(b"-----BEGIN CERTIFICATE-----\nAAAA\n", &["CERTIFICATE"]).is_err());
        let bad = b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n";
        assert!(pem_block(bad, &["CERTIFICATE"]).is_err());
        assert!(pem_block(&[0xff, 0xfe], &["CERTIFICATE"]).is_err());
        assert!(pem_block(b"", &["CERTIFICATE"]).is_err());
        assert!(pem_block(&vec![b' '; MAX_PEM + 1], &["CERTIFICATE"]).is_err());
    }

    use super::*;

    #[test]
    fn pcr_info_matches_nitro_cli_bytes() {
        // Published byte vector for PcrInfo { register_index: 0, register_value: 0x00..=0x2f }.
        let mut v = [0u8; 48];
        for (i, b) in v.iter_mut().enumerate() {
            *b = i as u8;
        }
        let expected = "a26e72656769737465725f696e646578006e72656769737465725f76616c75659830000102030405060708090a0b0c0d0e0f101112131415161718181819181a181b181c181d181e181f1820182118221823182418251826182718281829182a182b182c182d182e182f";
        assert_eq!(hex::encode(pcr_info(&Pcr(v))), expected);
    }

    #[test]
    fn section_matches_nitro_cli_bytes() {
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cose = [0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x40, 0x40];
        let bytes = section_bytes(cert, &cose);
        assert_eq!(&bytes[..3], &[0x81, 0xa2, 0x73]);
        assert!(
            hex::encode(&bytes)
                .ends_with("697369676e61747572658a18d21884184418a1011838182218a018401840")
        );
    }

    #[test]
    fn der_signatures_convert_strictly() {
        let alg = SigningAlgorithm::Es384;
        // r and s of 48 bytes with the top bit set: 49-byte INTEGERs, total 0x66 (short form).
        let mut der = vec![0x30, 0x66, 0x02, 0x31, 0x00];
        der.extend_from_slice(&[0xff; 48]);
        der.extend_from_slice(&[0x02, 0x31, 0x00]);
        der.extend_from_slice(&[0x80; 48]);
        let raw = alg.signature_from_der(&der).unwrap_or_default();
        assert_eq!(raw.len(), 96);
        assert!(raw[..48].iter().all(|&b| b == 0xff) && raw[48..].iter().all(|&b| b == 0x80));
        // P-521: 66-byte halves need the long length form.
        let mut long = vec![0x30, 0x81, 0x88, 0x02, 0x42, 0x01];
        long.extend_from_slice(&[0x11; 65]);
        long.extend_from_slice(&[0x02, 0x42, 0x01]);
        long.extend_from_slice(&[0x22; 65]);
        let raw = SigningAlgorithm::Es512
            .signature_from_der(&long)
            .unwrap_or_default();
        assert_eq!((raw.len(), raw[0], raw[1], raw[66]), (132, 1, 0x11, 1));
        for bad in [
            &[][..],
            &[0x30, 0x00],                                           // no INTEGERs
            &[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01],       // negative r
            &[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01], // non-minimal r
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], // trailing byte
            &[
                0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01,
            ], // three
            &[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], // non-minimal length
        ] {
            assert!(alg.signature_from_der(bad).is_err(), "{bad:02x?}");
        }
        // An INTEGER wider than the curve.
        let mut wide = vec![0x30, 0x35, 0x02, 0x31];
        wide.extend_from_slice(&[0x01; 49]);
        wide.extend_from_slice(&[0x02, 0x01, 0x01]);
        assert!(alg.signature_from_der(&wide).is_err());
    }

    #[test]
    fn openssl_time_format() {
        let t = x509_parser::time::ASN1Time::from_timestamp(1_704_164_645)
            .unwrap_or_else(|_| x509_parser::time::ASN1Time::now());
        assert_eq!(openssl_time(&t), "Jan  2 03:04:05 2024 GMT");
    }
}
