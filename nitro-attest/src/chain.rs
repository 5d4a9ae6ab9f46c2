//! X.509 certificate checks for the attestation chain, and the verified-certificate cache. The
//! rules are listed on [`Verifier`](crate::Verifier).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, ParsedPublicKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKIX_AUTHORITY_INFO_ACCESS,
    OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_CERTIFICATE_POLICIES,
    OID_X509_EXT_CRL_DISTRIBUTION_POINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

use crate::error::CertificateError;
use crate::time::{Timestamp, duration_ms};

/// Everything the chain walk needs from one certificate, extracted once (and cached).
#[derive(Debug)]
pub(crate) struct CertInfo {
    /// Raw DER of the subject name.
    pub(crate) subject: Vec<u8>,
    /// The subject's P-384 key, parsed once, for ecdsa-with-SHA384 (DER-encoded) signatures:
    /// of certificates this one issued, and of the COSE signature (converted from `r ‖ s`).
    pub(crate) key: ParsedPublicKey,
    /// Validity period, in seconds since the epoch.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// BasicConstraints: `(critical, cA, pathLenConstraint)`.
    pub(crate) basic_constraints: Option<(bool, bool, Option<u32>)>,
    /// KeyUsage bits (x509-parser's `flags`), if the extension is present.
    pub(crate) key_usage: Option<u16>,
}

const KU_DIGITAL_SIGNATURE: u16 = 1;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;

fn malformed(e: impl std::fmt::Display) -> CertificateError {
    CertificateError::Malformed(e.to_string())
}

/// A parsed certificate together with the parts needed to check its signature.
pub(crate) struct Parsed {
    pub(crate) info: CertInfo,
    pub(crate) issuer: Vec<u8>,
    tbs: Vec<u8>,
    signature: Vec<u8>,
}

/// Parses a DER certificate and runs every check that depends only on its bytes.
pub(crate) fn parse(der: &[u8]) -> Result<Parsed, CertificateError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the certificate"));
    }
    check_static(&cert)?;
    let point = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    let unsupported =
        |e: aws_lc_rs::error::KeyRejected| CertificateError::UnsupportedKey(e.to_string());
    let key = ParsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, point).map_err(unsupported)?;

    let mut basic_constraints = None;
    let mut key_usage = None;
    for ext in cert.tbs_certificate.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                basic_constraints = Some((ext.critical, bc.ca, bc.path_len_constraint));
            }
            ParsedExtension::KeyUsage(ku) => key_usage = Some(ku.flags),
            _ => {}
        }
    }
    let validity = cert.validity();
    Ok(Parsed {
        info: CertInfo {
            subject: cert.subject().as_raw().to_vec(),
            key,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            basic_constraints,
            key_usage,
        },
        issuer: cert.issuer().as_raw().to_vec(),
        tbs: cert.tbs_certificate.as_ref().to_vec(),
        signature: cert.signature_value.data.to_vec(),
    })
}

fn check_static(cert: &X509Certificate<'_>) -> Result<(), CertificateError> {
    if cert.version().0 != 2 {
        return Err(CertificateError::NotVersion3);
    }
    let sig_alg = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if sig_alg.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || inner.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || sig_alg.parameters.is_some()
        || inner.parameters.is_some()
    {
        return Err(CertificateError::UnsupportedSignatureAlgorithm(
            sig_alg.algorithm.to_id_string(),
        ));
    }
    let spki = &cert.tbs_certificate.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CertificateError::UnsupportedKey(format!(
            "key algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_NIST_EC_P384) {
        return Err(CertificateError::UnsupportedKey(
            "curve is not secp384r1".to_owned(),
        ));
    }
    let mut seen = Vec::new();
    for ext in cert.tbs_certificate.extensions() {
        if seen.contains(&&ext.oid) {
            return Err(CertificateError::InvalidExtension(format!(
                "{} appears twice",
                ext.oid.to_id_string()
            )));
        }
        seen.push(&ext.oid);
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            return Err(CertificateError::InvalidExtension(format!(
                "{}: {error}",
                ext.oid.to_id_string()
            )));
        }
        let known = [
            &OID_X509_EXT_BASIC_CONSTRAINTS,
            &OID_X509_EXT_KEY_USAGE,
            &OID_X509_EXT_EXTENDED_KEY_USAGE,
            &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
            &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
            &OID_X509_EXT_CRL_DISTRIBUTION_POINTS,
            &OID_X509_EXT_SUBJECT_ALT_NAME,
            &OID_X509_EXT_CERTIFICATE_POLICIES,
            &OID_PKIX_AUTHORITY_INFO_ACCESS,
        ];
        if ext.critical && !known.contains(&&ext.oid) {
            return Err(CertificateError::UnknownCriticalExtension(
                ext.oid.to_id_string(),
            ));
        }
    }
    Ok(())
}

/// Parses `der`, checks that `issuer` issued it (name and signature) and returns its info.
pub(crate) fn link(issuer: &CertInfo, der: &[u8]) -> Result<CertInfo, CertificateError> {
    let p = parse(der)?;
    if p.issuer != issuer.subject {
        return Err(CertificateError::IssuerMismatch);
    }
    issuer
        .key
        .verify_sig(&p.tbs, &p.signature)
        .map_err(|_| CertificateError::BadSignature)?;
    Ok(p.info)
}

/// Checks that a self-signed certificate's signature verifies with its own key (for anchors).
pub(crate) fn check_self_signed(p: &Parsed) -> Result<(), CertificateError> {
    if p.issuer != p.info.subject {
        return Err(CertificateError::IssuerMismatch);
    }
    p.info
        .key
        .verify_sig(&p.tbs, &p.signature)
        .map_err(|_| CertificateError::BadSignature)
}

impl CertInfo {
    /// Validity at `at` with `leeway` on both ends.
    pub(crate) fn check_validity(
        &self,
        at: Timestamp,
        leeway: Duration,
    ) -> Result<(), CertificateError> {
        let at_ms = i128::from(at.unix_millis());
        let leeway_ms = i128::from(duration_ms(leeway));
        let nb = i128::from(self.not_before) * 1000;
        let na = i128::from(self.not_after) * 1000;
        let ts = |s: i64| Timestamp::from_unix_secs(u64::try_from(s).unwrap_or(0));
        if at_ms + leeway_ms < nb {
            return Err(CertificateError::NotYetValid {
                not_before: ts(self.not_before),
                at,
            });
        }
        if at_ms - leeway_ms > na {
            return Err(CertificateError::Expired {
                not_after: ts(self.not_after),
                at,
            });
        }
        Ok(())
    }

    /// Checks that this certificate may act as a CA with `below` CA certificates under it.
    pub(crate) fn check_ca(&self, below: usize) -> Result<(), CertificateError> {
        match self.basic_constraints {
            Some((_, false, _)) | None => return Err(CertificateError::NotCa),
            Some((false, true, _)) => return Err(CertificateError::BasicConstraintsNotCritical),
            Some((true, true, Some(path_len))) if (path_len as usize) < below => {
                return Err(CertificateError::PathLenExceeded { path_len, below });
            }
            Some((true, true, _)) => {}
        }
        match self.key_usage {
            Some(ku) if ku & KU_KEY_CERT_SIGN != 0 => Ok(()),
            _ => Err(CertificateError::KeyUsage("keyCertSign")),
        }
    }

    /// Checks that this certificate may sign the document (end entity, digitalSignature).
    pub(crate) fn check_leaf(&self) -> Result<(), CertificateError> {
        if let Some((_, true, _)) = self.basic_constraints {
            return Err(CertificateError::LeafIsCa);
        }
        match self.key_usage {
            Some(ku) if ku & KU_DIGITAL_SIGNATURE != 0 => Ok(()),
            _ => Err(CertificateError::KeyUsage("digitalSignature")),
        }
    }
}

/// A cache of already verified certificate links, shared between verifications (and threads).
///
/// An entry records that `cert` parsed, passed every check that depends only on its bytes, and
/// carries a valid signature by `issuer`'s key. It is keyed by the **exact DER bytes** of issuer
/// and certificate, so a hit can only occur for byte-identical inputs, and it stores only
/// positive results. Checks that depend on the call (validity at the check time, the
/// certificate's role in the chain, path length) are repeated on every verification, so the
/// cache never changes a verdict: it only saves the four certificate signature verifications
/// and the X.509 parsing. Repeated documents from the same enclave then cost one ECDSA
/// verification (the document's own signature).
///
/// The cache holds at most `capacity` entries and evicts the oldest first.
///
/// ```
/// use std::sync::Arc;
/// use nitro_attest::{CertCache, Verifier};
/// let cache = Arc::new(CertCache::new(1024));
/// let verifier = Verifier::aws().with_cache(cache.clone());
/// assert!(cache.is_empty());
/// # let _ = verifier;
/// ```
#[derive(Debug)]
pub struct CertCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Box<[u8]>, Arc<CertInfo>>,
    order: VecDeque<Box<[u8]>>,
}

impl CertCache {
    /// A cache holding up to `capacity` verified certificates (each entry keeps the two DER
    /// certificates as its key, about 1.5 KB). A real enclave uses four entries (regional,
    /// zonal, instance, leaf), renewed as certificates rotate.
    pub fn new(capacity: usize) -> Self {
        CertCache {
            inner: Mutex::new(CacheInner::default()),
            capacity,
        }
    }

    /// Number of cached certificates.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// `true` if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.order.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters (entries are immutable), so recover from poisoning.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(issuer_der: &[u8], der: &[u8]) -> Box<[u8]> {
        let mut k = Vec::with_capacity(8 + issuer_der.len() + der.len());
        k.extend_from_slice(&(issuer_der.len() as u64).to_be_bytes());
        k.extend_from_slice(issuer_der);
        k.extend_from_slice(der);
        k.into_boxed_slice()
    }

    pub(crate) fn get(&self, issuer_der: &[u8], der: &[u8]) -> Option<Arc<CertInfo>> {
        let k = Self::key(issuer_der, der);
        self.lock().map.get(&k).cloned()
    }

    pub(crate) fn insert(&self, issuer_der: &[u8], der: &[u8], info: Arc<CertInfo>) {
        if self.capacity == 0 {
            return;
        }
        let k = Self::key(issuer_der, der);
        let mut g = self.lock();
        if g.map.contains_key(&k) {
            return;
        }
        while g.map.len() >= self.capacity {
            match g.order.pop_front() {
                Some(old) => {
                    g.map.remove(&old);
                }
                None => break,
            }
        }
        g.order.push_back(k.clone());
        g.map.insert(k, info);
    }
}

impl Default for CertCache {
    /// A cache of 256 entries.
    fn default() -> Self {
        CertCache::new(256)
    }
}

/// Converts a raw `r ‖ s` ECDSA signature (COSE) to the DER `Ecdsa-Sig-Value` encoding.
/// Returns `None` unless `sig` is 96 bytes.
pub(crate) fn fixed_to_der(sig: &[u8]) -> Option<Vec<u8>> {
    if sig.len() != 96 {
        return None;
    }
    let int = |out: &mut Vec<u8>, v: &[u8]| {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len() - 1);
        let v = &v[start..];
        let pad = v[0] & 0x80 != 0;
        out.push(0x02);
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    };
    let mut body = Vec::with_capacity(104);
    int(&mut body, &sig[..48]);
    int(&mut body, &sig[48..]);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_to_der_encodings() {
        assert_eq!(fixed_to_der(&[0; 95]), None);
        let mut sig = [0u8; 96];
        // r = 0 (minimal INTEGER 0), s = 0x80 00.. (needs a leading zero byte).
        sig[48] = 0x80;
        let der = fixed_to_der(&sig).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 2 + 49, 0x02, 0x01, 0x00]);
        assert_eq!(&der[5..8], &[0x02, 49, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 51);
        let sig = [0x11u8; 96];
        let der = fixed_to_der(&sig).unwrap();
        assert_eq!(der.len(), 2 + 2 * 50);
    }
}
