//! A software NSM for development and tests (see [`SimulatedNsm`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest::{SHA384, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::anchors::TrustAnchors;
use crate::cbor;
use crate::document::{
    AttestationDocument, Digest, DocumentKind, MAX_PCRS, PCR_LEN, PROTECTED_ES384, encode_sign1,
};
use crate::error::{Error, NsmErrorCode, Result};
use crate::nsm::pki::{KeySource, SimulatorPki, dn, rc_err, to_odt};
use crate::nsm::{NSM_REQUEST_MAX_SIZE, Nsm, NsmDescription, PcrDescription};
use crate::time::Timestamp;

/// Lifetimes of the simulated certificates (as observed on AWS).
const REGIONAL_LIFETIME: Duration = Duration::from_secs(20 * 24 * 3600);
const ZONAL_LIFETIME: Duration = Duration::from_secs(6 * 24 * 3600);
const INSTANCE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(3 * 3600);

/// Number of PCRs of the NitroTPM's SHA-384 bank (a TPM 2.0 has 24).
const NITROTPM_PCRS: u16 = 24;

/// A clock for the simulator.
type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Builder for [`SimulatedNsm`].
///
/// ```
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, SimulatedNsm, Timestamp};
/// let nsm = SimulatedNsm::builder()
///     .seed(42)
///     .module_id("i-0123456789abcdef0-enc0123456789abcdef")
///     .pcr(0, [0xaa; 48])
///     .fixed_time(Timestamp::from_unix_millis(1_750_000_000_000))
///     .build()?;
/// assert_eq!(nsm.describe_pcr(0)?.value, vec![0xaa; 48]);
/// assert_eq!(nsm.module_id(), "i-0123456789abcdef0-enc0123456789abcdef");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct SimulatedNsmBuilder {
    seed: Option<u64>,
    module_id: Option<String>,
    pcrs: BTreeMap<u16, Vec<u8>>,
    debug_mode: bool,
    kind: Option<DocumentKind>,
    clock: Option<Clock>,
    indefinite: bool,
    pki: Option<SimulatorPki>,
}

impl std::fmt::Debug for SimulatedNsmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedNsmBuilder")
            .field("seed", &self.seed)
            .field("module_id", &self.module_id)
            .field("pcrs", &self.pcrs.keys().collect::<Vec<_>>())
            .field("debug_mode", &self.debug_mode)
            .field("kind", &self.kind)
            .field("clock", &self.clock.as_ref().map(|_| "custom"))
            .field("indefinite", &self.indefinite)
            .field("pki", &self.pki)
            .finish()
    }
}

impl SimulatedNsmBuilder {
    /// Derives the default module id, the default PCRs, every private key (the PKI's, unless
    /// one is given with [`pki`](Self::pki), and each leaf's) and every serial number from
    /// `seed` instead of the system RNG.
    ///
    /// What is then reproducible, given the same clock readings: the module id, the PCRs, all
    /// keys, and the contents of every certificate (subject, serial, validity, extensions,
    /// public key: the whole TBSCertificate) and of every document payload. What is not: the
    /// ECDSA signatures on certificates and documents. aws-lc-rs signs with a fresh random
    /// nonce (it implements no deterministic RFC 6979 signing, and a caller cannot supply the
    /// nonce), so the certificates' DER — the root's fingerprint included — and the documents'
    /// signature bytes differ on every run; [`Nsm::get_random`] returns real random bytes.
    ///
    /// A verifier pins the root certificate's exact bytes, so a seed alone does **not** give
    /// two processes a common root: store a [`SimulatorPki`] once
    /// ([`SimulatorPki::load_or_create`]) and build every simulator with
    /// [`pki`](Self::pki).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the module id (default: `i-<17 hex>-enc<16 hex>`, derived from the seed or random).
    pub fn module_id(mut self, module_id: impl Into<String>) -> Self {
        self.module_id = Some(module_id.into());
        self
    }

    /// Sets the initial value of PCR `index` (0..32, 48 bytes). PCRs 0–15 are locked from the
    /// start, as on a real enclave; 16–31 stay extendable. Defaults: PCR0, PCR1 and PCR2 are
    /// derived from the seed (non-zero, so documents are not in debug mode), PCR4 is the
    /// extension of zero with the instance id part of the module id (as the NSM measures the
    /// parent instance id), all others zero.
    pub fn pcr(mut self, index: u16, value: impl AsRef<[u8]>) -> Self {
        self.pcrs.insert(index, value.as_ref().to_vec());
        self
    }

    /// Simulates an enclave started with `--debug-mode`: PCR0, PCR1 and PCR2 are zero.
    /// Not available for NitroTPM documents ([`build`](Self::build) fails).
    pub fn debug_mode(mut self) -> Self {
        self.debug_mode = true;
        self
    }

    /// Simulates an EC2 instance's NitroTPM instead of an enclave's NSM: documents carry
    /// `nitrotpm_pcrs` ([`DocumentKind::NitroTpm`]) with all 24 PCRs of the SHA-384 bank, the
    /// module id is `i-<17 hex>-tpm<16 hex>`, every PCR can be extended and none locked
    /// ([`Nsm::lock_pcr`] and [`Nsm::lock_pcrs`] fail with `InvalidOperation`), and
    /// [`Nsm::describe_nsm`] reports 24 PCRs. Default PCRs: 0, 1 (firmware), 4 (boot manager),
    /// 7 (Secure Boot policy) and 12 (kernel command line) derived from the seed, others zero.
    /// PKI, signature and envelope are those of enclave documents, as on AWS.
    ///
    /// ```
    /// # fn main() -> Result<(), nitro_attest::Error> {
    /// use nitro_attest::{DocumentKind, Nsm, Policy, SimulatedNsm, Timestamp, Verifier};
    /// let tpm = SimulatedNsm::builder().seed(9).nitrotpm().build()?;
    /// let doc = tpm.attestation(None, Some(b"n"), None)?;
    /// let verifier = Verifier::new(tpm.trust_anchors()?);
    /// // Refused by the default policy, accepted when NitroTPM documents are asked for.
    /// assert!(verifier.verify(&doc, Timestamp::now(), &Policy::new()).is_err());
    /// let policy = Policy::new().accept_kinds([DocumentKind::NitroTpm]);
    /// let verified = verifier.verify(&doc, Timestamp::now(), &policy)?;
    /// assert_eq!(verified.kind(), DocumentKind::NitroTpm);
    /// assert_eq!(verified.pcrs.len(), 24);
    /// # Ok(())
    /// # }
    /// ```
    pub fn nitrotpm(mut self) -> Self {
        self.kind = Some(DocumentKind::NitroTpm);
        self
    }

    /// Issues certificates from `pki` (its root, and the keys of its regional, zonal and
    /// instance CAs) instead of a PKI generated for this simulator. Simulators sharing a PKI,
    /// in one process or (through its PEM form) in several, produce documents that verify
    /// against the same root.
    pub fn pki(mut self, pki: SimulatorPki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Uses `clock` for document timestamps and certificate issuance (default: system clock).
    pub fn clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Uses a clock stuck at `t`.
    pub fn fixed_time(self, t: Timestamp) -> Self {
        self.clock(move || t)
    }

    /// Encodes the payload as an indefinite-length map, as AWS documents issued since late
    /// 2025 do (default: definite-length map, as older documents).
    pub fn indefinite_length_payload(mut self, indefinite: bool) -> Self {
        self.indefinite = indefinite;
        self
    }

    /// Generates the PKI and returns the simulator.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a PCR index ≥ 32 (≥ 24 for NitroTPM) or a PCR value
    /// that is not 48 bytes, or for debug mode with NitroTPM.
    pub fn build(self) -> Result<SimulatedNsm> {
        let kind = self.kind.unwrap_or(DocumentKind::Enclave);
        let tpm = kind == DocumentKind::NitroTpm;
        if tpm && self.debug_mode {
            return Err(Error::InvalidArgument(
                "NitroTPM documents have no debug mode".to_owned(),
            ));
        }
        let max_pcrs = if tpm { NITROTPM_PCRS } else { MAX_PCRS };
        let mut keys = KeySource::new(self.seed);
        let module_id = match self.module_id {
            Some(m) => m,
            None => {
                let b = keys.bytes("module-id", 16)?;
                format!(
                    "i-{}-{}{}",
                    &hex::encode(&b[..9])[..17],
                    if tpm { "tpm" } else { "enc" },
                    hex::encode(&b[8..16])
                )
            }
        };
        let mut pcrs = [[0u8; PCR_LEN]; MAX_PCRS as usize];
        let seeded: &[usize] = match (tpm, self.debug_mode) {
            (true, _) => &[0, 1, 4, 7, 12],
            (false, false) => &[0, 1, 2],
            (false, true) => &[],
        };
        for &i in seeded {
            let d = keys.bytes(&format!("pcr{i}"), PCR_LEN)?;
            pcrs[i].copy_from_slice(&d);
        }
        let instance_id = module_id
            .split(if tpm { "-tpm" } else { "-enc" })
            .next()
            .unwrap_or(&module_id);
        if !tpm {
            pcrs[4] = extend(&pcrs[4], instance_id.as_bytes());
        }
        for (&i, v) in &self.pcrs {
            let slot = pcrs
                .get_mut(usize::from(i))
                .filter(|_| i < max_pcrs)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("PCR index {i} is not in 0..{max_pcrs}"))
                })?;
            if v.len() != PCR_LEN {
                return Err(Error::InvalidArgument(format!(
                    "PCR{i} value is {} bytes, expected {PCR_LEN}",
                    v.len()
                )));
            }
            slot.copy_from_slice(v);
        }
        let mut locked = [false; MAX_PCRS as usize];
        if !tpm {
            for l in locked.iter_mut().take(16) {
                *l = true;
            }
        }

        let clock = self.clock.unwrap_or_else(|| Arc::new(Timestamp::now));
        let ca = match self.pki {
            Some(pki) => pki,
            None => SimulatorPki::with_keys(&mut keys)?,
        };
        let pki = Pki {
            region: "sim-region-1",
            instance_id: instance_id.to_owned(),
            module_id: module_id.clone(),
            keys,
            root: ca.root_issuer()?,
            ca: ca.clone(),
            levels: Vec::new(),
            leaf: None,
        };
        Ok(SimulatedNsm {
            kind,
            max_pcrs,
            module_id,
            clock,
            indefinite: self.indefinite,
            pki: ca,
            state: Mutex::new(State { pcrs, locked, pki }),
        })
    }
}

/// A simulated Nitro Secure Module for development and tests.
///
/// The simulator has the state of a real NSM (32 SHA-384 PCRs, PCR0–15 locked at start, user
/// PCRs 16–31 extendable and lockable) and a P-384 PKI shaped like AWS's, generated for it or
/// shared with other simulators through a [`SimulatorPki`]:
///
/// ```text
/// root (CA, no pathLen, 2020-01-01 → 2099-12-31)
///  └ regional (CA, pathLen 2, 20 days)
///     └ zonal (CA, pathLen 1, 6 days)
///        └ instance (CA, pathLen 0, KeyUsage keyCertSign, 24 h)
///           └ leaf (not a CA, KeyUsage digitalSignature + nonRepudiation, non-critical, 3 h)
/// ```
///
/// Documents are produced exactly like real ones: untagged COSE_Sign1, protected header
/// `a1 01 38 22`, empty unprotected map, the nine payload keys in the NSM's order (optional
/// fields `null` when not given), the locked PCRs, `cabundle = [root, regional, zonal,
/// instance]`, and a 96-byte ES384 signature by the leaf key. Certificates are issued at the
/// simulator clock's time without backdating and re-issued when they would not cover the next
/// three hours, as the real NSM rotates its leaf.
///
/// Documents verify with a [`Verifier`](crate::Verifier) built from
/// [`SimulatedNsm::trust_anchors`] and are rejected ([`Error::UntrustedRoot`]) by the AWS root.
///
/// ```
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, Policy, SimulatedNsm, Timestamp, Verifier};
/// let nsm = SimulatedNsm::builder().seed(1).build()?;
/// nsm.extend_pcr(16, b"config v1")?;
/// nsm.lock_pcr(16)?;
/// let doc = nsm.attestation(Some(b"hello"), Some(b"nonce"), None)?;
/// let policy = Policy::new().expect_pcr(16, nsm.describe_pcr(16)?.value);
/// let verified = Verifier::new(nsm.trust_anchors()?).verify(&doc, Timestamp::now(), &policy)?;
/// assert_eq!(verified.user_data.as_deref(), Some(&b"hello"[..]));
/// # Ok(())
/// # }
/// ```
pub struct SimulatedNsm {
    kind: DocumentKind,
    max_pcrs: u16,
    module_id: String,
    clock: Clock,
    indefinite: bool,
    pki: SimulatorPki,
    state: Mutex<State>,
}

impl std::fmt::Debug for SimulatedNsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedNsm")
            .field("kind", &self.kind)
            .field("module_id", &self.module_id)
            .field("indefinite", &self.indefinite)
            .finish_non_exhaustive()
    }
}

struct State {
    pcrs: [[u8; PCR_LEN]; MAX_PCRS as usize],
    locked: [bool; MAX_PCRS as usize],
    pki: Pki,
}

impl SimulatedNsm {
    /// A simulator with random keys and default settings.
    ///
    /// # Errors
    ///
    /// Only if key generation fails.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder.
    pub fn builder() -> SimulatedNsmBuilder {
        SimulatedNsmBuilder::default()
    }

    /// The simulator's root certificate (DER), to configure verifiers or a local KMS.
    pub fn root_certificate_der(&self) -> &[u8] {
        self.pki.root_certificate_der()
    }

    /// The simulator's root certificate (PEM).
    pub fn root_certificate_pem(&self) -> String {
        self.pki.root_certificate_pem()
    }

    /// Trust anchors holding only the simulator's root
    /// (`TrustAnchors::non_aws_root_der(self.root_certificate_der())`).
    ///
    /// # Errors
    ///
    /// Never in practice (the root is generated valid).
    pub fn trust_anchors(&self) -> Result<TrustAnchors> {
        self.pki.trust_anchors()
    }

    /// The PKI this simulator issues certificates from (store it with
    /// [`SimulatorPki::to_pem`] to build simulators with the same root elsewhere).
    pub fn pki(&self) -> &SimulatorPki {
        &self.pki
    }

    /// The module id that appears in documents.
    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    /// The kind of documents this simulator produces (see [`SimulatedNsmBuilder::nitrotpm`]).
    pub fn kind(&self) -> DocumentKind {
        self.kind
    }

    fn index(&self, i: u16) -> Result<usize> {
        if i < self.max_pcrs {
            Ok(usize::from(i))
        } else {
            Err(nsm_err(NsmErrorCode::InvalidIndex))
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn nsm_err(code: NsmErrorCode) -> Error {
    Error::Nsm(code)
}

fn extend(old: &[u8; PCR_LEN], data: &[u8]) -> [u8; PCR_LEN] {
    let mut buf = Vec::with_capacity(PCR_LEN + data.len());
    buf.extend_from_slice(old);
    buf.extend_from_slice(data);
    let mut out = [0u8; PCR_LEN];
    out.copy_from_slice(digest(&SHA384, &buf).as_ref());
    out
}

/// Size of the CBOR request `{"Attestation": {"user_data": …, "nonce": …, "public_key": …}}`.
fn attestation_request_size(fields: [Option<&[u8]>; 3]) -> usize {
    let mut out = Vec::new();
    cbor::write_head(&mut out, cbor::MAJOR_MAP, 1);
    cbor::write_text(&mut out, "Attestation");
    cbor::write_head(&mut out, cbor::MAJOR_MAP, 3);
    let mut total = out.len();
    for (name, v) in ["user_data", "nonce", "public_key"].iter().zip(fields) {
        out.clear();
        cbor::write_text(&mut out, name);
        match v {
            Some(b) => cbor::write_head(&mut out, cbor::MAJOR_BYTES, b.len() as u64),
            None => cbor::write_null(&mut out),
        }
        total += out.len() + v.map_or(0, <[u8]>::len);
    }
    total
}

impl Nsm for SimulatedNsm {
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        if attestation_request_size([user_data, nonce, public_key]) > NSM_REQUEST_MAX_SIZE {
            return Err(nsm_err(NsmErrorCode::InputTooLarge));
        }
        let now = (self.clock)();
        let mut st = self.state();
        let (leaf_key, certificate, cabundle) = st.pki.chain_at(now)?;
        // An NSM reports its locked PCRs, a NitroTPM its whole bank.
        let tpm = self.kind == DocumentKind::NitroTpm;
        let pcrs = st
            .locked
            .iter()
            .zip(st.pcrs.iter())
            .take(usize::from(self.max_pcrs))
            .enumerate()
            .filter(|(_, (locked, _))| tpm || **locked)
            .map(|(i, (_, v))| (i as u16, v.to_vec()))
            .collect();
        drop(st);
        let doc = AttestationDocument {
            module_id: self.module_id.clone(),
            digest: Digest::Sha384,
            timestamp: now,
            kind: self.kind,
            pcrs,
            certificate,
            cabundle,
            public_key: public_key.map(<[u8]>::to_vec),
            user_data: user_data.map(<[u8]>::to_vec),
            nonce: nonce.map(<[u8]>::to_vec),
        };
        let payload = doc.to_payload(self.indefinite);
        // Sig_structure = ["Signature1", protected, h'', payload]
        let mut tbs = Vec::with_capacity(payload.len() + 32);
        cbor::write_head(&mut tbs, cbor::MAJOR_ARRAY, 4);
        cbor::write_text(&mut tbs, "Signature1");
        cbor::write_bytes(&mut tbs, &PROTECTED_ES384);
        cbor::write_bytes(&mut tbs, &[]);
        cbor::write_bytes(&mut tbs, &payload);
        let sig = leaf_key
            .sign(&SystemRandom::new(), &tbs)
            .map_err(|_| nsm_err(NsmErrorCode::InternalError))?;
        Ok(encode_sign1(&PROTECTED_ES384, &payload, sig.as_ref()))
    }

    fn describe_pcr(&self, i: u16) -> Result<PcrDescription> {
        let i = self.index(i)?;
        let st = self.state();
        Ok(PcrDescription::new(st.locked[i], st.pcrs[i].to_vec()))
    }

    fn extend_pcr(&self, i: u16, data: &[u8]) -> Result<Vec<u8>> {
        // {"ExtendPCR": {"index": i, "data": bstr}} must fit the request limit.
        if data.len() + 32 > NSM_REQUEST_MAX_SIZE {
            return Err(nsm_err(NsmErrorCode::InputTooLarge));
        }
        let i = self.index(i)?;
        let mut st = self.state();
        if st.locked[i] {
            return Err(nsm_err(NsmErrorCode::ReadOnlyIndex));
        }
        st.pcrs[i] = extend(&st.pcrs[i], data);
        Ok(st.pcrs[i].to_vec())
    }

    fn lock_pcr(&self, i: u16) -> Result<()> {
        let i = self.index(i)?;
        if self.kind == DocumentKind::NitroTpm {
            return Err(nsm_err(NsmErrorCode::InvalidOperation));
        }
        self.state().locked[i] = true;
        Ok(())
    }

    fn lock_pcrs(&self, range: u16) -> Result<()> {
        if range > self.max_pcrs {
            return Err(nsm_err(NsmErrorCode::InvalidIndex));
        }
        if self.kind == DocumentKind::NitroTpm {
            return Err(nsm_err(NsmErrorCode::InvalidOperation));
        }
        let mut st = self.state();
        for l in st.locked.iter_mut().take(usize::from(range)) {
            *l = true;
        }
        Ok(())
    }

    fn describe_nsm(&self) -> Result<NsmDescription> {
        let st = self.state();
        let locked: BTreeSet<u16> = (0..self.max_pcrs)
            .filter(|&i| st.locked[usize::from(i)])
            .collect();
        Ok(NsmDescription::new(
            (1, 0, 0),
            self.module_id.clone(),
            self.max_pcrs,
            locked,
            Digest::Sha384,
        ))
    }

    fn get_random(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; 256];
        SystemRandom::new()
            .fill(&mut out)
            .map_err(|_| nsm_err(NsmErrorCode::InternalError))?;
        Ok(out)
    }
}

// ---- the PKI -----------------------------------------------------------------------------------

/// A CA certificate the simulator issued, with what its children need.
struct IssuedCa {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
}

struct IssuedLeaf {
    key: Arc<EcdsaKeyPair>,
    der: Vec<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
}

/// Leaf signing key, leaf certificate (DER), cabundle (DER, root first).
type Chain = (Arc<EcdsaKeyPair>, Vec<u8>, Vec<Vec<u8>>);

struct Pki {
    region: &'static str,
    instance_id: String,
    module_id: String,
    keys: KeySource,
    /// The root certificate and the CA keys.
    ca: SimulatorPki,
    root: Issuer<'static, KeyPair>,
    /// regional, zonal, instance (once issued).
    levels: Vec<IssuedCa>,
    leaf: Option<IssuedLeaf>,
}

impl Pki {
    /// Returns (leaf signing key, leaf DER, cabundle) valid at `now`, issuing what is needed.
    fn chain_at(&mut self, now: Timestamp) -> Result<Chain> {
        // Re-issue a certificate when it does not cover [now, now + leaf lifetime]: the real NSM
        // likewise renews its leaf shortly before expiry.
        let horizon = now.saturating_add(LEAF_LIFETIME);
        let covers = |nb: Timestamp, na: Timestamp| nb <= now && horizon <= na;
        let specs: [(&str, u8, Duration); 3] = [
            ("regional", 2, REGIONAL_LIFETIME),
            ("zonal", 1, ZONAL_LIFETIME),
            ("instance", 0, INSTANCE_LIFETIME),
        ];
        for (level, (name, path_len, lifetime)) in specs.into_iter().enumerate() {
            let ok = self
                .levels
                .get(level)
                .is_some_and(|c| covers(c.not_before, c.not_after));
            if !ok {
                let cn = match name {
                    "regional" => format!(
                        "{}.{}.sim.nitro-enclaves",
                        self.short_id(level)?,
                        self.region
                    ),
                    "zonal" => format!(
                        "{}.zonal.{}.sim.nitro-enclaves",
                        self.short_id(level)?,
                        self.region
                    ),
                    _ => format!("{}.{}.sim.nitro-enclaves", self.instance_id, self.region),
                };
                let ca = self.issue_ca(level, &cn, path_len, now, lifetime)?;
                if level < self.levels.len() {
                    self.levels[level] = ca;
                } else {
                    self.levels.push(ca);
                }
            }
        }
        let leaf_ok = self
            .leaf
            .as_ref()
            .is_some_and(|l| covers(l.not_before, l.not_after));
        if !leaf_ok {
            self.leaf = Some(self.issue_leaf(now)?);
        }
        let leaf = self
            .leaf
            .as_ref()
            .ok_or(Error::Nsm(NsmErrorCode::InternalError))?;
        let mut bundle = vec![self.ca.root_certificate_der().to_vec()];
        bundle.extend(self.levels.iter().map(|c| c.der.clone()));
        Ok((leaf.key.clone(), leaf.der.clone(), bundle))
    }

    fn short_id(&mut self, level: usize) -> Result<String> {
        Ok(hex::encode(self.keys.bytes(&format!("id/{level}"), 8)?))
    }

    fn issuer_of(&self, level: usize) -> Result<&Issuer<'static, KeyPair>> {
        if level == 0 {
            return Ok(&self.root);
        }
        self.levels
            .get(level - 1)
            .map(|ca| &ca.issuer)
            .ok_or(Error::Nsm(NsmErrorCode::InternalError))
    }

    fn issue_ca(
        &mut self,
        level: usize,
        cn: &str,
        path_len: u8,
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<IssuedCa> {
        let label = format!("ca{level}@{}", now.unix_secs());
        let key = self.ca.ca_key(level + 1)?;
        let not_before = Timestamp::from_unix_secs(now.unix_secs());
        let not_after = not_before.saturating_add(lifetime);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.serial_number = Some(self.keys.serial(&label)?);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = if path_len == 0 {
            vec![KeyUsagePurpose::KeyCertSign]
        } else {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_odt(not_before)?;
        params.not_after = to_odt(not_after)?;
        let cert = params
            .signed_by(&key, self.issuer_of(level)?)
            .map_err(rc_err)?;
        Ok(IssuedCa {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            not_before,
            not_after,
        })
    }

    fn issue_leaf(&mut self, now: Timestamp) -> Result<IssuedLeaf> {
        let label = format!("leaf@{}", now.unix_secs());
        let (signer, key) = self.keys.key(&label)?;
        let not_before = Timestamp::from_unix_secs(now.unix_secs());
        let not_after = not_before.saturating_add(LEAF_LIFETIME);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{}.{}.sim", self.module_id, self.region));
        params.serial_number = Some(self.keys.serial(&label)?);
        params.is_ca = IsCa::ExplicitNoCa;
        // KeyUsage digitalSignature + nonRepudiation, NON-critical, as in real leaf certificates
        // (rcgen would mark it critical).
        let mut ku =
            CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x06, 0xc0]);
        ku.set_criticality(false);
        params.custom_extensions = vec![ku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_odt(not_before)?;
        params.not_after = to_odt(not_after)?;
        let issuer_level = self.levels.len();
        let cert = params
            .signed_by(&key, self.issuer_of(issuer_level)?)
            .map_err(rc_err)?;
        // Sanity: the aws-lc signer and the certified key are the same key.
        if signer.public_key().as_ref() != key.public_key_raw() {
            return Err(Error::Nsm(NsmErrorCode::InternalError));
        }
        Ok(IssuedLeaf {
            key: Arc::new(signer),
            der: cert.der().to_vec(),
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Policy, UnverifiedDocument, Verifier};

    const T0: Timestamp = Timestamp::from_unix_millis(1_750_000_000_123);

    fn sim(seed: u64) -> SimulatedNsm {
        SimulatedNsm::builder()
            .seed(seed)
            .fixed_time(T0)
            .build()
            .unwrap()
    }

    #[test]
    fn pcr_extend_and_lock_semantics() {
        let nsm = sim(1);
        let zero = [0u8; 48];
        assert_eq!(
            nsm.describe_pcr(16).unwrap(),
            PcrDescription::new(false, zero.to_vec())
        );
        let v = nsm.extend_pcr(16, b"hello").unwrap();
        // Value observed on QEMU's NSM for ExtendPCR(16, "hello") from zero.
        assert!(
            hex::encode(&v).starts_with("30e84b2d"),
            "{}",
            hex::encode(&v)
        );
        assert_eq!(v, extend(&zero, b"hello").to_vec());
        nsm.lock_pcr(16).unwrap();
        assert!(matches!(
            nsm.extend_pcr(16, b"x"),
            Err(Error::Nsm(NsmErrorCode::ReadOnlyIndex))
        ));
        assert!(matches!(
            nsm.extend_pcr(0, b"x"),
            Err(Error::Nsm(NsmErrorCode::ReadOnlyIndex))
        ));
        assert!(matches!(
            nsm.extend_pcr(32, b"x"),
            Err(Error::Nsm(NsmErrorCode::InvalidIndex))
        ));
        assert!(matches!(
            nsm.lock_pcrs(33),
            Err(Error::Nsm(NsmErrorCode::InvalidIndex))
        ));
        nsm.lock_pcrs(20).unwrap();
        let d = nsm.describe_nsm().unwrap();
        assert_eq!(d.locked_pcrs, (0..20).collect());
        assert_eq!(d.max_pcrs, 32);
        // Locked PCRs appear in documents, unlocked ones do not.
        let doc = UnverifiedDocument::parse(&nsm.attestation(None, None, None).unwrap()).unwrap();
        assert_eq!(doc.payload().pcrs.len(), 20);
        assert_eq!(doc.payload().pcr(16), Some(&v[..]));
        assert_eq!(nsm.get_random().unwrap().len(), 256);
    }

    #[test]
    fn request_size_limit() {
        let nsm = sim(2);
        assert!(
            nsm.attestation(Some(&[0; 1024]), Some(&[0; 1024]), Some(&[0; 1024]))
                .is_ok()
        );
        assert!(matches!(
            nsm.attestation(Some(&[0; 4096]), None, None),
            Err(Error::Nsm(NsmErrorCode::InputTooLarge))
        ));
        assert!(matches!(
            nsm.extend_pcr(20, &[0; 4096]),
            Err(Error::Nsm(NsmErrorCode::InputTooLarge))
        ));
    }

    #[test]
    fn seeded_is_deterministic_except_signatures() {
        let a = sim(9);
        let b = sim(9);
        let c = sim(10);
        assert_eq!(a.module_id(), b.module_id());
        assert_ne!(a.module_id(), c.module_id());
        let tbs = |der: &[u8]| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
            cert.tbs_certificate.as_ref().to_vec()
        };
        assert_eq!(tbs(a.root_certificate_der()), tbs(b.root_certificate_der()));
        assert_ne!(tbs(a.root_certificate_der()), tbs(c.root_certificate_der()));
        // ...but not the signatures (randomised ECDSA): the roots' bytes differ.
        assert_ne!(a.root_certificate_der(), b.root_certificate_der());
        let da =
            UnverifiedDocument::parse(&a.attestation(None, Some(b"n"), None).unwrap()).unwrap();
        let db =
            UnverifiedDocument::parse(&b.attestation(None, Some(b"n"), None).unwrap()).unwrap();
        assert_eq!(
            tbs(&da.payload().certificate),
            tbs(&db.payload().certificate)
        );
        assert_eq!(da.payload().pcrs, db.payload().pcrs);
        assert_eq!(da.payload().timestamp, T0);
    }

    #[test]
    fn documents_look_like_real_ones_and_verify() {
        let nsm = sim(3);
        let bytes = nsm.attestation(Some(b"u"), None, Some(b"")).unwrap();
        assert_eq!(&bytes[..6], &[0x84, 0x44, 0xa1, 0x01, 0x38, 0x22]);
        let doc = UnverifiedDocument::parse(&bytes).unwrap();
        assert_eq!(doc.signature().len(), 96);
        assert_eq!(doc.payload_bytes()[0], 0xa9);
        assert_eq!(doc.payload().cabundle.len(), 4);
        assert_eq!(doc.payload().public_key.as_deref(), Some(&[][..]));
        assert_eq!(doc.payload().nonce, None);
        assert!(!doc.payload().is_debug_mode());
        let v = Verifier::new(nsm.trust_anchors().unwrap());
        v.verify(&bytes, T0, &Policy::new()).unwrap();

        let indef = SimulatedNsm::builder()
            .seed(3)
            .fixed_time(T0)
            .indefinite_length_payload(true)
            .debug_mode()
            .build()
            .unwrap();
        let bytes = indef.attestation(None, None, None).unwrap();
        let doc = UnverifiedDocument::parse(&bytes).unwrap();
        assert_eq!(doc.payload_bytes()[0], 0xbf);
        assert!(doc.payload().is_debug_mode());
        let v = Verifier::new(indef.trust_anchors().unwrap());
        assert!(matches!(
            v.verify(&bytes, T0, &Policy::new()),
            Err(Error::DebugMode)
        ));
        v.verify(&bytes, T0, &Policy::new().allow_debug(true))
            .unwrap();
    }

    #[test]
    fn certificates_rotate_with_the_clock() {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(T0.unix_millis()));
        let n2 = now.clone();
        let nsm = SimulatedNsm::builder()
            .seed(4)
            .clock(move || {
                Timestamp::from_unix_millis(n2.load(std::sync::atomic::Ordering::SeqCst))
            })
            .build()
            .unwrap();
        let v = Verifier::new(nsm.trust_anchors().unwrap());
        let d1 = nsm.attestation(None, None, None).unwrap();
        // 2.5 h later the 3 h leaf would not cover the next 3 h: a new one is issued.
        let later = T0.saturating_add(Duration::from_secs(9000));
        now.store(later.unix_millis(), std::sync::atomic::Ordering::SeqCst);
        let d2 = nsm.attestation(None, None, None).unwrap();
        let c1 = UnverifiedDocument::parse(&d1)
            .unwrap()
            .payload()
            .certificate
            .clone();
        let c2 = UnverifiedDocument::parse(&d2)
            .unwrap()
            .payload()
            .certificate
            .clone();
        assert_ne!(c1, c2);
        v.verify(&d1, T0, &Policy::new()).unwrap();
        v.verify(&d2, later, &Policy::new()).unwrap();
        // Each document fails four hours after its leaf was issued.
        let expired = v.verify(
            &d1,
            T0.saturating_add(Duration::from_secs(4 * 3600)),
            &Policy::new(),
        );
        assert!(
            matches!(
                expired,
                Err(Error::Certificate {
                    cert: crate::CertRef::Leaf,
                    reason: crate::CertificateError::Expired { .. }
                })
            ),
            "{expired:?}"
        );
    }

    #[test]
    fn simulators_sharing_a_pki_file_share_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki.pem");
        // Two simulators as two processes would build them: each loads the file (the first
        // creates it), with different seeds and clocks.
        let a = SimulatedNsm::builder()
            .seed(1)
            .fixed_time(T0)
            .pki(SimulatorPki::load_or_create(&path, Some(1)).unwrap())
            .build()
            .unwrap();
        let later = T0.saturating_add(Duration::from_secs(2 * 24 * 3600));
        let b = SimulatedNsm::builder()
            .seed(2)
            .fixed_time(later)
            .pki(SimulatorPki::load_or_create(&path, None).unwrap())
            .build()
            .unwrap();
        assert_eq!(a.root_certificate_der(), b.root_certificate_der());
        assert_ne!(a.module_id(), b.module_id());
        // One verifier, built from the file alone, accepts both.
        let pem = std::fs::read_to_string(&path).unwrap();
        let v = Verifier::new(TrustAnchors::non_aws_root_pem(&pem).unwrap());
        let da = a.attestation(None, Some(b"a"), None).unwrap();
        let db = b.attestation(None, Some(b"b"), None).unwrap();
        v.verify(&da, T0, &Policy::new().expect_nonce(b"a"))
            .unwrap();
        v.verify(&db, later, &Policy::new().expect_nonce(b"b"))
            .unwrap();
        // The intermediates were issued separately (other times) but with the shared keys.
        let spki = |der: &[u8]| {
            use x509_parser::prelude::FromDer;
            let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
            c.tbs_certificate.subject_pki.raw.to_vec()
        };
        let (pa, pb) = (
            UnverifiedDocument::parse(&da).unwrap().into_payload(),
            UnverifiedDocument::parse(&db).unwrap().into_payload(),
        );
        for level in 1..4 {
            assert_ne!(pa.cabundle[level], pb.cabundle[level]);
            assert_eq!(spki(&pa.cabundle[level]), spki(&pb.cabundle[level]));
        }
        // A simulator without the file has another root, which this verifier rejects.
        let c = sim(1);
        let dc = c.attestation(None, None, None).unwrap();
        assert!(matches!(
            v.verify(&dc, T0, &Policy::new()),
            Err(Error::UntrustedRoot { .. })
        ));
    }

    #[test]
    fn builder_validates_pcrs() {
        assert!(SimulatedNsm::builder().pcr(32, [0; 48]).build().is_err());
        assert!(SimulatedNsm::builder().pcr(1, [0; 47]).build().is_err());
    }
}
