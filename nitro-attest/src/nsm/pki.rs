//! The simulator's certificate authority: keys (seeded or random), the persistable
//! [`SimulatorPki`], and the helpers that issue certificates with rcgen.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::Path;

use aws_lc_rs::digest::{SHA384, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::prelude::FromDer as _;

use crate::anchors::{TrustAnchors, pem_block, pem_blocks, sha256};
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// Largest PKI file [`SimulatorPki::from_pem`] and [`SimulatorPki::load_or_create`] read (a
/// real one is about 1.6 KB).
pub const MAX_PKI_FILE: usize = 64 * 1024;

/// The CA levels whose keys a PKI holds, in file order.
const LEVELS: [&str; 4] = ["root", "regional", "zonal", "instance"];

/// First line of a PKI file (explanatory text; PEM readers skip it).
const PKI_HEADER: &str = "nitro-attest simulator PKI, format 1";

/// Deterministic (seeded) or random key material.
pub(crate) struct KeySource {
    seed: Option<u64>,
}

impl KeySource {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        KeySource { seed }
    }

    /// `n` bytes (n ≤ 48) for `label`: SHA-384(domain ‖ seed ‖ label) when seeded, random
    /// otherwise.
    pub(crate) fn bytes(&mut self, label: &str, n: usize) -> Result<Vec<u8>> {
        match self.seed {
            Some(seed) => {
                let mut input = b"nitro-attest simulator v1\0".to_vec();
                input.extend_from_slice(&seed.to_be_bytes());
                input.extend_from_slice(label.as_bytes());
                Ok(digest(&SHA384, &input).as_ref()[..n.min(48)].to_vec())
            }
            None => {
                let mut out = vec![0u8; n];
                SystemRandom::new()
                    .fill(&mut out)
                    .map_err(|_| Error::InvalidArgument("system RNG failed".to_owned()))?;
                Ok(out)
            }
        }
    }

    /// A P-384 key pair for `label`, as an aws-lc-rs signer and an rcgen key.
    pub(crate) fn key(&mut self, label: &str) -> Result<(EcdsaKeyPair, KeyPair)> {
        let pair = match self.seed {
            None => EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
                .map_err(|_| key_failed("generate"))?,
            Some(_) => {
                // Rejection sampling: a 48-byte candidate is a valid scalar unless it is zero or
                // ≥ the group order (probability about 2^-190).
                let mut counter = 0u32;
                loop {
                    let scalar = self.bytes(&format!("key/{label}/{counter}"), 48)?;
                    if let Ok(p) = scalar_to_pair(&scalar) {
                        break p;
                    }
                    counter += 1;
                    if counter > 16 {
                        return Err(key_failed("no valid scalar"));
                    }
                }
            }
        };
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| key_failed("PKCS#8"))?;
        let rc = rcgen_key(pkcs8.as_ref())?;
        Ok((pair, rc))
    }

    /// A positive 16-byte serial number.
    pub(crate) fn serial(&mut self, label: &str) -> Result<SerialNumber> {
        let mut b = self.bytes(&format!("serial/{label}"), 16)?;
        b[0] = (b[0] & 0x7f) | 0x01;
        Ok(SerialNumber::from_slice(&b))
    }
}

fn key_failed(what: &str) -> Error {
    Error::InvalidArgument(format!("simulator key generation: {what}"))
}

fn scalar_to_pair(scalar: &[u8]) -> std::result::Result<EcdsaKeyPair, ()> {
    let private = aws_lc_rs::agreement::PrivateKey::from_private_key(
        &aws_lc_rs::agreement::ECDH_P384,
        scalar,
    )
    .map_err(drop)?;
    let public = private.compute_public_key().map_err(drop)?;
    EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P384_SHA384_FIXED_SIGNING,
        scalar,
        public.as_ref(),
    )
    .map_err(drop)
}

/// An rcgen signing key from PKCS#8 DER (P-384 ECDSA).
fn rcgen_key(pkcs8: &[u8]) -> Result<KeyPair> {
    KeyPair::try_from(pkcs8).map_err(|e| key_failed(&e.to_string()))
}

pub(crate) fn to_odt(t: Timestamp) -> Result<time::OffsetDateTime> {
    let secs = i64::try_from(t.unix_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| Error::InvalidArgument(format!("simulator clock out of range: {e}")))
}

pub(crate) fn rc_err(e: rcgen::Error) -> Error {
    Error::InvalidArgument(format!("simulator certificate generation: {e}"))
}

/// The subject/issuer name of simulator certificates.
pub(crate) fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "nitro-attest");
    dn.push(DnType::OrganizationalUnitName, "simulator");
    dn.push(DnType::CommonName, cn);
    dn
}

/// The certificate authority of a [`SimulatedNsm`](crate::SimulatedNsm): the P-384 keys of the
/// root, regional, zonal and instance CAs, and the self-signed root certificate.
///
/// Every simulator has one: generated when it is built, unless one is passed to
/// [`SimulatedNsmBuilder::pki`](crate::SimulatedNsmBuilder::pki). Sharing one PKI is how
/// several simulators — in one process or in several — produce documents that verify against
/// **one** root certificate: the root is the only certificate a verifier pins, and its bytes
/// can only be shared by storing it, because ECDSA signatures (the root's self-signature
/// included) are randomised and differ on every generation, even from the same seed. The
/// intermediate certificates are issued by each simulator from the shared keys, at its own
/// clock's time.
///
/// The PEM form ([`SimulatorPki::to_pem`], [`SimulatorPki::from_pem`]) is the file format of
/// `attest sim --pki FILE` and `kms --sim-pki FILE`:
///
/// ```text
/// nitro-attest simulator PKI, format 1            (explanatory text, ignored)
/// -----BEGIN CERTIFICATE-----                      the root certificate
/// -----BEGIN PRIVATE KEY-----  × 4                 PKCS#8 P-384 keys: root, regional, zonal, instance
/// ```
///
/// The only certificate in the file is the root, so the same file also serves wherever a root
/// PEM is expected (`attest verify --root FILE`, `kms emulator --root-simulator FILE`,
/// [`TrustAnchors::non_aws_root_pem`]): PEM readers skip the keys. **The keys sign documents
/// that every verifier trusting this root accepts**: keep the file private (it is written with
/// mode 0600) and never trust a simulator root in production.
///
/// ```
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, Policy, SimulatedNsm, SimulatorPki, Timestamp, Verifier};
///
/// let pki = SimulatorPki::from_seed(7)?;
/// let pem = pki.to_pem(); // store it: e.g. SimulatorPki::load_or_create(path, Some(7))
///
/// // Two simulators (think: two processes) built from the stored PKI...
/// let a = SimulatedNsm::builder().pki(SimulatorPki::from_pem(&pem)?).build()?;
/// let b = SimulatedNsm::builder().pki(SimulatorPki::from_pem(&pem)?).build()?;
/// // ...share one root: one verifier accepts both.
/// let verifier = Verifier::new(pki.trust_anchors()?);
/// for nsm in [&a, &b] {
///     let doc = nsm.attestation(None, Some(b"n"), None)?;
///     verifier.verify(&doc, Timestamp::now(), &Policy::new())?;
/// }
/// // A new PKI from the same seed has the same keys but a different root certificate.
/// assert_ne!(SimulatorPki::from_seed(7)?.root_certificate_der(), pki.root_certificate_der());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SimulatorPki {
    root_der: Vec<u8>,
    /// PKCS#8 DER of the P-384 keys, in [`LEVELS`] order.
    keys: [Vec<u8>; 4],
}

impl fmt::Debug for SimulatorPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorPki")
            .field("root_sha256", &hex::encode(sha256(&self.root_der)))
            .finish_non_exhaustive()
    }
}

impl SimulatorPki {
    /// A PKI with random keys.
    ///
    /// # Errors
    ///
    /// Only if key generation fails.
    pub fn generate() -> Result<Self> {
        Self::with_keys(&mut KeySource::new(None))
    }

    /// A PKI whose keys and root serial number are derived from `seed`. The root
    /// certificate's contents (its TBSCertificate) are then reproducible too, its signature is
    /// not (see the type documentation): store the PKI to share it.
    ///
    /// # Errors
    ///
    /// Only if key generation fails.
    pub fn from_seed(seed: u64) -> Result<Self> {
        Self::with_keys(&mut KeySource::new(Some(seed)))
    }

    pub(crate) fn with_keys(source: &mut KeySource) -> Result<Self> {
        let mut keys: [Vec<u8>; 4] = Default::default();
        let mut root_key = None;
        for (slot, level) in keys.iter_mut().zip(LEVELS) {
            // The root key's label predates the other levels' (seeded roots keep their key).
            let label = if level == "root" {
                "root".to_owned()
            } else {
                format!("ca/{level}")
            };
            let (signer, rc) = source.key(&label)?;
            *slot = signer
                .to_pkcs8v1()
                .map_err(|_| key_failed("PKCS#8"))?
                .as_ref()
                .to_vec();
            if level == "root" {
                root_key = Some(rc);
            }
        }
        let root_key = root_key.ok_or_else(|| key_failed("root"))?;
        let mut params = root_params();
        params.serial_number = Some(source.serial("root")?);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let root_der = params
            .self_signed(&root_key)
            .map_err(rc_err)?
            .der()
            .to_vec();
        Ok(SimulatorPki { root_der, keys })
    }

    /// Reads the PEM form written by [`SimulatorPki::to_pem`]: one `CERTIFICATE` (the root)
    /// and four `PRIVATE KEY` blocks (PKCS#8 P-384 keys of the root, regional, zonal and
    /// instance CAs, in that order); text outside the blocks is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the input is larger than [`MAX_PKI_FILE`], has another
    /// number of blocks, a key is not a P-384 PKCS#8 key, the certificate is not an acceptable
    /// root ([`TrustAnchors::non_aws_root_der`]), or the first key is not the root's.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let bad = |why: String| Error::InvalidArgument(format!("simulator PKI: {why}"));
        if pem.len() > MAX_PKI_FILE {
            return Err(bad(format!("larger than {MAX_PKI_FILE} bytes")));
        }
        let mut certs = Vec::new();
        let mut keys = Vec::new();
        for item in pem_blocks(pem).map_err(|e| bad(format!("PEM: {e}")))? {
            match item.tag() {
                "CERTIFICATE" => certs.push(item.into_contents()),
                "PRIVATE KEY" => keys.push(item.into_contents()),
                other => return Err(bad(format!("unexpected PEM block {other:?}"))),
            }
        }
        let [root_der] = <[Vec<u8>; 1]>::try_from(certs)
            .map_err(|c| bad(format!("{} certificates, expected the root only", c.len())))?;
        let keys = <[Vec<u8>; 4]>::try_from(keys)
            .map_err(|k| bad(format!("{} private keys, expected 4", k.len())))?;
        let mut points = Vec::with_capacity(4);
        for (key, level) in keys.iter().zip(LEVELS) {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, key)
                .map_err(|e| bad(format!("the {level} key is not a P-384 PKCS#8 key: {e}")))?;
            points.push(pair.public_key().as_ref().to_vec());
        }
        TrustAnchors::non_aws_root_der(&root_der).map_err(|e| bad(e.to_string()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&root_der)
            .map_err(|e| bad(format!("root certificate: {e}")))?;
        let root_point = cert
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref();
        if points.first().map(Vec::as_slice) != Some(root_point) {
            return Err(bad(
                "the first key does not belong to the root certificate".into()
            ));
        }
        Ok(SimulatorPki { root_der, keys })
    }

    /// The PEM form (see [`SimulatorPki::from_pem`]). It contains the private keys.
    pub fn to_pem(&self) -> String {
        let mut out = format!(
            "{PKI_HEADER}: the root certificate, then the PKCS#8 keys of the root, regional,\n\
             zonal and instance CAs. PRIVATE: these keys sign attestation documents that every\n\
             verifier trusting this root accepts.\n"
        );
        out.push_str(&pem_block("CERTIFICATE", &self.root_der));
        for key in &self.keys {
            out.push_str(&pem_block("PRIVATE KEY", key));
        }
        out
    }

    /// Reads the PKI stored at `path`, or, when there is no file, generates one (from `seed`
    /// when given) and stores it there (mode 0600 on Unix).
    ///
    /// Creation is atomic: the PEM is written to a temporary file in the same directory and
    /// linked into place only if `path` still does not exist, so processes starting at the
    /// same time all end up with the same PKI (the first one stored). A `seed` is ignored
    /// when the file exists.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read or written, and the errors of
    /// [`SimulatorPki::from_pem`] for a file that is not a PKI.
    pub fn load_or_create(path: impl AsRef<Path>, seed: Option<u64>) -> Result<Self> {
        let path = path.as_ref();
        match read_pki_file(path) {
            Ok(text) => return Self::from_pem(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(path, e)),
        }
        let pki = match seed {
            Some(seed) => Self::from_seed(seed)?,
            None => Self::generate()?,
        };
        if create_exclusive(path, pki.to_pem().as_bytes()).map_err(|e| io_error(path, e))? {
            Ok(pki)
        } else {
            // Another process stored its PKI first: use that one.
            Self::from_pem(&read_pki_file(path).map_err(|e| io_error(path, e))?)
        }
    }

    /// The root certificate (DER): the trust anchor for documents of simulators using this PKI.
    pub fn root_certificate_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root certificate (PEM, without the keys).
    pub fn root_certificate_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.root_der)
    }

    /// Trust anchors holding only this root
    /// (`TrustAnchors::non_aws_root_der(self.root_certificate_der())`).
    ///
    /// # Errors
    ///
    /// Never for a generated or successfully read PKI.
    pub fn trust_anchors(&self) -> Result<TrustAnchors> {
        TrustAnchors::non_aws_root_der(&self.root_der)
    }

    /// The root as an rcgen issuer (its own certificate's names and key identifier).
    pub(crate) fn root_issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        Ok(Issuer::new(root_params(), self.ca_key(0)?))
    }

    /// The key of CA level `level` (0 root, 1 regional, 2 zonal, 3 instance).
    pub(crate) fn ca_key(&self, level: usize) -> Result<KeyPair> {
        rcgen_key(self.keys.get(level).ok_or_else(|| key_failed("CA level"))?)
    }
}

/// The parameters of the root certificate that children depend on: its name, key usages and
/// key identifier method.
fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("sim.nitro-enclaves");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("simulator PKI {}", path.display()), e)
}

/// Reads at most [`MAX_PKI_FILE`] bytes of UTF-8 text.
fn read_pki_file(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PKI_FILE as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Creates `path` with `contents` unless it exists (then `Ok(false)`), atomically: a private
/// temporary file, hard-linked into place.
fn create_exclusive(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = private_file(&tmp, contents);
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_validation() {
        let pki = SimulatorPki::from_seed(5).unwrap();
        let pem = pki.to_pem();
        let back = SimulatorPki::from_pem(&pem).unwrap();
        assert_eq!(back.root_der, pki.root_der);
        assert_eq!(back.keys, pki.keys);
        // The PKI file is also a root PEM.
        let anchors = TrustAnchors::non_aws_root_pem(&pem).unwrap();
        assert_eq!(anchors.fingerprints(), vec![sha256(&pki.root_der)]);
        // Seeded: same keys, different root signature.
        let again = SimulatorPki::from_seed(5).unwrap();
        assert_eq!(again.keys, pki.keys);
        assert_ne!(again.root_der, pki.root_der);

        let without_last_key = pem
            .rfind("-----BEGIN PRIVATE KEY-----")
            .map(|i| &pem[..i])
            .unwrap();
        let other = SimulatorPki::from_seed(6).unwrap().to_pem();
        let other_root = &other[..other.find("-----BEGIN PRIVATE KEY-----").unwrap()];
        let keys = &pem[pem.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
        for (what, bad) in [
            ("empty", String::new()),
            ("three keys", without_last_key.to_owned()),
            ("someone else's root", format!("{other_root}{keys}")),
            (
                "two certificates",
                format!("{}{pem}", pki.root_certificate_pem()),
            ),
            (
                "garbage",
                "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n".into(),
            ),
            ("huge", "x".repeat(MAX_PKI_FILE + 1)),
        ] {
            let e = SimulatorPki::from_pem(&bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{what}: {e}");
        }
        assert!(!format!("{pki:?}").contains("PRIVATE"));
    }

    #[test]
    fn load_or_create_keeps_the_first_pki() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki.pem");
        let a = SimulatorPki::load_or_create(&path, None).unwrap();
        let b = SimulatorPki::load_or_create(&path, Some(1)).unwrap();
        assert_eq!(a.root_der, b.root_der);
        assert_eq!(a.keys, b.keys);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // Only the PKI is left in the directory (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "not a PKI").unwrap();
        assert!(matches!(
            SimulatorPki::load_or_create(&path, None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            SimulatorPki::load_or_create(dir.path().join("missing/pki.pem"), None),
            Err(Error::Io { .. })
        ));
    }
}
