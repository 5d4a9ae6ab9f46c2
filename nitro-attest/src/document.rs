//! The attestation document: COSE_Sign1 envelope and typed payload. The wire format, and where
//! genuine documents deviate from the written specification, are described in the crate
//! documentation (README).

use std::collections::BTreeMap;

use crate::cbor::{self, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_TEXT, Reader};
use crate::error::{Error, Field, Result};
use crate::time::Timestamp;

/// Documents larger than this are rejected before any parsing.
///
/// The NSM response buffer is 12 KiB (`NSM_RESPONSE_MAX_SIZE = 0x3000`) including the response
/// wrapper; AWS's C SDK reserves 16 KiB for a document. Real documents are 4.4–4.7 KB.
pub const MAX_DOCUMENT_SIZE: usize = 16 * 1024;

/// Maximum size of `public_key`, `user_data` and `nonce` (the specification's CDDL limit).
pub const MAX_OPTIONAL_FIELD: usize = 1024;

/// Maximum size of one DER certificate in `certificate` or `cabundle` (the specification's
/// limit; real certificates are about 0.65 KB).
pub const MAX_CERTIFICATE_SIZE: usize = 1024;

/// Maximum number of certificates in `cabundle` (real documents have 4). Each certificate costs
/// one signature verification, so the bound also bounds verification work.
pub const MAX_CABUNDLE: usize = 8;

/// Number of PCRs of the NSM (`max_pcrs`); valid indices are `0..MAX_PCRS`.
pub const MAX_PCRS: u16 = 32;

/// Length of a SHA-384 PCR value.
pub const PCR_LEN: usize = 48;

/// COSE algorithm identifier of ES384 (ECDSA P-384 with SHA-384).
pub const COSE_ALG_ES384: i64 = -35;

/// CBOR tag of a tagged COSE_Sign1 message.
const COSE_SIGN1_TAG: u64 = 18;

/// The PCR bank digest named in the payload's `digest` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Digest {
    /// `"SHA384"`, the only digest the NSM uses and the specification allows.
    Sha384,
}

impl Digest {
    /// The payload's text form (`"SHA384"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::Sha384 => "SHA384",
        }
    }
}

/// What produced an attestation document, told apart by the name of its PCR map.
///
/// Both kinds share the AWS Nitro Attestation PKI (the same Root-G1), the COSE_Sign1 envelope
/// (ES384) and the payload fields, except the PCRs:
///
/// | | [`Enclave`](DocumentKind::Enclave) | [`NitroTpm`](DocumentKind::NitroTpm) |
/// |---|---|---|
/// | producer | the NSM of a Nitro Enclave (`/dev/nsm`) | the NitroTPM of an EC2 instance (`nitro-tpm-attest`, 2025) |
/// | PCR map key | `pcrs` | `nitrotpm_pcrs` |
/// | PCRs | 0–15 + locked user PCRs: EIF, kernel, application, parent role and instance, signing certificate | the TPM's SHA-384 bank: firmware (0, 1: constant), boot manager (4), Secure Boot policy (7), kernel command line (12), ... |
/// | `module_id` | `i-<instance>-enc<enclave>` | `i-<instance>-tpm<16 hex>` |
/// | debug mode | PCR0/1/2 all zero | no such notion |
/// | KMS condition keys | `kms:RecipientAttestation:PCR<n>`, `:ImageSha384` | `kms:RecipientAttestation:NitroTPMPCR<n>` |
///
/// A document with both maps is refused ([`Error::AmbiguousKind`]); with neither,
/// [`Error::MissingField`] names [`Field::Pcrs`]. A [`Policy`](crate::Policy) accepts only
/// enclave documents unless told otherwise ([`Policy::accept_kinds`](crate::Policy::accept_kinds)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DocumentKind {
    /// A Nitro Enclaves document (`pcrs`), produced by the enclave's NSM.
    Enclave,
    /// A NitroTPM document (`nitrotpm_pcrs`), produced by an EC2 instance's NitroTPM.
    NitroTpm,
}

impl DocumentKind {
    /// `"enclave"` or `"nitrotpm"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Enclave => "enclave",
            DocumentKind::NitroTpm => "nitrotpm",
        }
    }

    /// The payload field holding the PCRs: [`Field::Pcrs`] or [`Field::NitroTpmPcrs`].
    pub fn pcrs_field(self) -> Field {
        match self {
            DocumentKind::Enclave => Field::Pcrs,
            DocumentKind::NitroTpm => Field::NitroTpmPcrs,
        }
    }
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DocumentKind {
    type Err = Error;

    /// Parses `"enclave"` or `"nitrotpm"`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "enclave" => Ok(DocumentKind::Enclave),
            "nitrotpm" => Ok(DocumentKind::NitroTpm),
            _ => Err(Error::InvalidArgument(format!(
                "unknown document kind {s:?} (expected \"enclave\" or \"nitrotpm\")"
            ))),
        }
    }
}

/// The typed payload of an attestation document (all nine fields).
///
/// Obtained from [`UnverifiedDocument::payload`] (not yet verified), from a
/// [`VerifiedDocument`](crate::VerifiedDocument) (verified), or from
/// [`dangerous::check_policy_without_signature`](crate::dangerous::check_policy_without_signature).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttestationDocument {
    /// Identifier of the enclave's NSM, e.g. `i-0918f6c55e3b61d89-enc018aa8b8e2285d13`.
    pub module_id: String,
    /// PCR bank digest (always SHA-384).
    pub digest: Digest,
    /// When the NSM produced the document (milliseconds since the Unix epoch).
    pub timestamp: Timestamp,
    /// Enclave or NitroTPM document (which of `pcrs` and `nitrotpm_pcrs` the payload has).
    pub kind: DocumentKind,
    /// PCR index → value (48 bytes each), from `pcrs` or `nitrotpm_pcrs` (see
    /// [`kind`](Self::kind)). Real enclave documents carry the locked PCRs: 0–15 plus any user
    /// PCR that was extended and locked; NitroTPM documents the TPM's SHA-384 bank.
    pub pcrs: BTreeMap<u16, Vec<u8>>,
    /// The leaf certificate (DER) whose key signed the document.
    pub certificate: Vec<u8>,
    /// Issuing CA certificates (DER), root first.
    pub cabundle: Vec<Vec<u8>>,
    /// `public_key` as requested by the enclave (`None` when null/absent). Not necessarily DER.
    pub public_key: Option<Vec<u8>>,
    /// `user_data` as requested by the enclave (`None` when null/absent).
    pub user_data: Option<Vec<u8>>,
    /// `nonce` as requested by the enclave (`None` when null/absent).
    pub nonce: Option<Vec<u8>>,
}

impl AttestationDocument {
    /// The value of PCR `index`, if present.
    pub fn pcr(&self, index: u16) -> Option<&[u8]> {
        self.pcrs.get(&index).map(Vec::as_slice)
    }

    /// `true` for an enclave document whose PCR0, PCR1 and PCR2 are all zero (or absent): the
    /// enclave runs in debug mode, where the NSM reports zero measurements for the image.
    /// Always `false` for NitroTPM documents, which have no debug mode (their PCR0 and PCR1
    /// measure AWS's firmware).
    pub fn is_debug_mode(&self) -> bool {
        self.kind == DocumentKind::Enclave
            && (0..3).all(|i| self.pcr(i).is_none_or(|v| v.iter().all(|&b| b == 0)))
    }

    /// Parses a CBOR payload map. `bytes` must contain exactly one map.
    pub(crate) fn from_payload(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let doc = parse_payload(&mut r)?;
        if !r.is_empty() {
            return Err(r.err("trailing bytes after the payload map"));
        }
        Ok(doc)
    }

    /// Encodes this payload the way the NSM does: the nine keys in the NSM's order, optional
    /// fields as `null` when absent, as a definite map (or indefinite when `indefinite`).
    #[cfg_attr(not(feature = "simulator"), allow(dead_code))]
    pub(crate) fn to_payload(&self, indefinite: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 * 1024);
        if indefinite {
            cbor::write_indefinite_map(&mut out);
        } else {
            cbor::write_head(&mut out, MAJOR_MAP, 9);
        }
        cbor::write_text(&mut out, "module_id");
        cbor::write_text(&mut out, &self.module_id);
        cbor::write_text(&mut out, "digest");
        cbor::write_text(&mut out, self.digest.as_str());
        cbor::write_text(&mut out, "timestamp");
        cbor::write_head(&mut out, cbor::MAJOR_UINT, self.timestamp.unix_millis());
        cbor::write_text(&mut out, self.kind.pcrs_field().name());
        cbor::write_head(&mut out, MAJOR_MAP, self.pcrs.len() as u64);
        for (i, v) in &self.pcrs {
            cbor::write_head(&mut out, cbor::MAJOR_UINT, u64::from(*i));
            cbor::write_bytes(&mut out, v);
        }
        cbor::write_text(&mut out, "certificate");
        cbor::write_bytes(&mut out, &self.certificate);
        cbor::write_text(&mut out, "cabundle");
        cbor::write_head(&mut out, MAJOR_ARRAY, self.cabundle.len() as u64);
        for c in &self.cabundle {
            cbor::write_bytes(&mut out, c);
        }
        for (name, v) in [
            ("public_key", &self.public_key),
            ("user_data", &self.user_data),
            ("nonce", &self.nonce),
        ] {
            cbor::write_text(&mut out, name);
            match v {
                Some(b) => cbor::write_bytes(&mut out, b),
                None => cbor::write_null(&mut out),
            }
        }
        if indefinite {
            cbor::write_break(&mut out);
        }
        out
    }
}

fn invalid(field: Field, reason: impl Into<String>) -> Error {
    Error::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Re-labels a CBOR error inside a field as an invalid-field error naming the field.
fn in_field<T>(field: Field, r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        Error::Cbor { offset, reason } => {
            invalid(field, format!("{reason} (payload byte {offset})"))
        }
        e => e,
    })
}

fn parse_payload(r: &mut Reader<'_>) -> Result<AttestationDocument> {
    let mut remaining = in_field(Field::Payload, r.container(MAJOR_MAP))?;
    let mut module_id = None;
    let mut digest = None;
    let mut timestamp = None;
    let mut pcrs: Option<(DocumentKind, BTreeMap<u16, Vec<u8>>)> = None;
    let mut certificate = None;
    let mut cabundle = None;
    let mut public_key = None;
    let mut user_data = None;
    let mut nonce = None;
    // Track duplicates of the optional fields separately, since `None` is a valid parsed value.
    let mut seen_optional = [false; 3];

    while r.has_next(&mut remaining) {
        let key = in_field(Field::Payload, r.string(MAJOR_TEXT))?;
        let field = match &*key {
            b"module_id" => Field::ModuleId,
            b"digest" => Field::Digest,
            b"timestamp" => Field::Timestamp,
            b"pcrs" => Field::Pcrs,
            b"nitrotpm_pcrs" => Field::NitroTpmPcrs,
            b"certificate" => Field::Certificate,
            b"cabundle" => Field::Cabundle,
            b"public_key" => Field::PublicKey,
            b"user_data" => Field::UserData,
            b"nonce" => Field::Nonce,
            _ => {
                // Unknown key: covered by the signature, ignored.
                in_field(Field::Payload, r.skip())?;
                continue;
            }
        };
        let dup = match field {
            Field::ModuleId => module_id.is_some(),
            Field::Digest => digest.is_some(),
            Field::Timestamp => timestamp.is_some(),
            Field::Pcrs | Field::NitroTpmPcrs => match &pcrs {
                Some((kind, _)) if kind.pcrs_field() == field => true,
                Some(_) => return Err(Error::AmbiguousKind),
                None => false,
            },
            Field::Certificate => certificate.is_some(),
            Field::Cabundle => cabundle.is_some(),
            Field::PublicKey => std::mem::replace(&mut seen_optional[0], true),
            Field::UserData => std::mem::replace(&mut seen_optional[1], true),
            _ => std::mem::replace(&mut seen_optional[2], true),
        };
        if dup {
            return Err(Error::DuplicateField(field));
        }
        if r.peek() == Some(0xf6) {
            match field {
                Field::PublicKey | Field::UserData | Field::Nonce => {
                    r.take_null();
                    continue;
                }
                _ => return Err(Error::MissingField(field)),
            }
        }
        match field {
            Field::ModuleId => {
                let s = in_field(field, r.text())?;
                if s.is_empty() {
                    return Err(invalid(field, "empty"));
                }
                module_id = Some(s);
            }
            Field::Digest => {
                let s = in_field(field, r.text())?;
                if s != "SHA384" {
                    return Err(invalid(
                        field,
                        format!("{s:?} (only \"SHA384\" is allowed)"),
                    ));
                }
                digest = Some(Digest::Sha384);
            }
            Field::Timestamp => {
                let t = in_field(field, r.uint())?;
                if t == 0 {
                    return Err(invalid(field, "zero"));
                }
                timestamp = Some(Timestamp::from_unix_millis(t));
            }
            Field::Pcrs => pcrs = Some((DocumentKind::Enclave, parse_pcrs(r, field)?)),
            Field::NitroTpmPcrs => pcrs = Some((DocumentKind::NitroTpm, parse_pcrs(r, field)?)),
            Field::Certificate => certificate = Some(parse_cert_bytes(r, field)?),
            Field::Cabundle => cabundle = Some(parse_cabundle(r)?),
            _ => {
                let b = in_field(field, r.bytes())?;
                if b.len() > MAX_OPTIONAL_FIELD {
                    return Err(invalid(
                        field,
                        format!(
                            "{} bytes, over the {MAX_OPTIONAL_FIELD}-byte limit",
                            b.len()
                        ),
                    ));
                }
                let v = Some(b.into_owned());
                match field {
                    Field::PublicKey => public_key = v,
                    Field::UserData => user_data = v,
                    _ => nonce = v,
                }
            }
        }
    }

    let (kind, pcrs) = pcrs.ok_or(Error::MissingField(Field::Pcrs))?;
    Ok(AttestationDocument {
        module_id: module_id.ok_or(Error::MissingField(Field::ModuleId))?,
        digest: digest.ok_or(Error::MissingField(Field::Digest))?,
        timestamp: timestamp.ok_or(Error::MissingField(Field::Timestamp))?,
        kind,
        pcrs,
        certificate: certificate.ok_or(Error::MissingField(Field::Certificate))?,
        cabundle: cabundle.ok_or(Error::MissingField(Field::Cabundle))?,
        public_key,
        user_data,
        nonce,
    })
}

fn parse_pcrs(r: &mut Reader<'_>, f: Field) -> Result<BTreeMap<u16, Vec<u8>>> {
    let mut remaining = in_field(f, r.container(MAJOR_MAP))?;
    let mut pcrs = BTreeMap::new();
    while r.has_next(&mut remaining) {
        let index = in_field(f, r.uint())?;
        let index = u16::try_from(index)
            .ok()
            .filter(|i| *i < MAX_PCRS)
            .ok_or_else(|| invalid(f, format!("index {index} is not in 0..{MAX_PCRS}")))?;
        let value = in_field(f, r.bytes())?;
        if value.len() != PCR_LEN {
            return Err(invalid(
                f,
                format!(
                    "PCR{index} is {} bytes, SHA-384 PCRs are {PCR_LEN}",
                    value.len()
                ),
            ));
        }
        if pcrs.insert(index, value.into_owned()).is_some() {
            return Err(invalid(f, format!("PCR{index} appears twice")));
        }
    }
    if pcrs.is_empty() {
        return Err(invalid(f, "no PCRs"));
    }
    Ok(pcrs)
}

fn parse_cert_bytes(r: &mut Reader<'_>, field: Field) -> Result<Vec<u8>> {
    let b = in_field(field, r.bytes())?;
    if b.is_empty() || b.len() > MAX_CERTIFICATE_SIZE {
        return Err(invalid(
            field,
            format!(
                "certificate of {} bytes (allowed 1..={MAX_CERTIFICATE_SIZE})",
                b.len()
            ),
        ));
    }
    Ok(b.into_owned())
}

fn parse_cabundle(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>> {
    let f = Field::Cabundle;
    let mut remaining = in_field(f, r.container(MAJOR_ARRAY))?;
    let mut out = Vec::new();
    while r.has_next(&mut remaining) {
        if out.len() == MAX_CABUNDLE {
            return Err(invalid(f, format!("more than {MAX_CABUNDLE} certificates")));
        }
        out.push(parse_cert_bytes(r, f)?);
    }
    if out.is_empty() {
        return Err(invalid(f, "empty"));
    }
    Ok(out)
}

/// A parsed attestation document whose signature and certificate chain have **not** been
/// verified.
///
/// Use it to inspect a document, or pass it to
/// [`Verifier::verify_parsed`](crate::Verifier::verify_parsed). Parsing checks the structure
/// (COSE_Sign1 with four elements, payload fields present with the right types and sizes) but
/// not the algorithm or signature length, so that unsigned documents (QEMU's emulated NSM) can
/// be inspected too.
///
/// ```
/// # #[cfg(feature = "simulator")]
/// # fn main() -> Result<(), nitro_attest::Error> {
/// let nsm = nitro_attest::SimulatedNsm::builder().seed(1).build()?;
/// # use nitro_attest::Nsm;
/// let bytes = nsm.attestation(Some(b"hello"), None, None)?;
/// let doc = nitro_attest::UnverifiedDocument::parse(&bytes)?;
/// assert_eq!(doc.payload().user_data.as_deref(), Some(&b"hello"[..]));
/// assert_eq!(doc.algorithm(), Some(-35));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "simulator"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone)]
pub struct UnverifiedDocument {
    tagged: bool,
    protected: Vec<u8>,
    algorithm: Option<i64>,
    critical_headers: bool,
    payload_bytes: Vec<u8>,
    signature: Vec<u8>,
    payload: AttestationDocument,
}

impl UnverifiedDocument {
    /// Parses raw COSE_Sign1 bytes (tagged or untagged). The input must be exactly one
    /// COSE_Sign1 item: trailing bytes are an error (see [`UnverifiedDocument::parse_prefix`]
    /// for documents stored inside a larger container).
    ///
    /// # Errors
    ///
    /// [`Error::DocumentTooLarge`] for input over [`MAX_DOCUMENT_SIZE`] (checked first),
    /// [`Error::Cbor`]/[`Error::Cose`] for a malformed envelope, [`Error::TrailingBytes`] when
    /// bytes follow it, [`Error::MissingField`], [`Error::DuplicateField`],
    /// [`Error::AmbiguousKind`] or [`Error::InvalidField`] for a malformed payload.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (doc, len) = Self::parse_prefix(bytes)?;
        if len != bytes.len() {
            return Err(Error::TrailingBytes {
                offset: len,
                len: bytes.len() - len,
            });
        }
        Ok(doc)
    }

    /// Parses the COSE_Sign1 item at the start of `bytes` and returns it with its length in
    /// bytes; what follows is ignored. For containers that append data after the document
    /// (e.g. dstack stores a SCALE-encoded trailer after it). The trailing bytes are not
    /// covered by the signature: [`Verifier::verify`](crate::Verifier::verify) refuses them
    /// unless the policy opts in with
    /// [`Policy::allow_trailing_bytes`](crate::Policy::allow_trailing_bytes).
    ///
    /// # Errors
    ///
    /// As [`UnverifiedDocument::parse`], except for trailing bytes.
    pub fn parse_prefix(bytes: &[u8]) -> Result<(Self, usize)> {
        if bytes.len() > MAX_DOCUMENT_SIZE {
            return Err(Error::DocumentTooLarge {
                size: bytes.len(),
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        let mut r = Reader::new(bytes);
        let mut tagged = false;
        if r.peek().is_some_and(|b| b >> 5 == cbor::MAJOR_TAG) {
            let h = r.head()?;
            if h.arg != Some(COSE_SIGN1_TAG) {
                return Err(Error::Cose("tagged with a tag other than 18 (COSE_Sign1)"));
            }
            tagged = true;
        }
        let mut remaining = match r.container(MAJOR_ARRAY) {
            Ok(n) => n,
            Err(_) => return Err(Error::Cose("not a CBOR array")),
        };
        let mut next = |r: &mut Reader<'_>, what: &'static str| {
            if r.has_next(&mut remaining) {
                Ok(())
            } else {
                Err(Error::Cose(what))
            }
        };
        next(&mut r, "array has fewer than 4 elements")?;
        let protected = r.bytes()?;
        next(&mut r, "array has fewer than 4 elements")?;
        if r.peek().is_none_or(|b| b >> 5 != MAJOR_MAP) {
            return Err(Error::Cose("unprotected header is not a map"));
        }
        // The unprotected header carries nothing the verifier uses (`{}` in real documents).
        r.skip()?;
        next(&mut r, "array has fewer than 4 elements")?;
        if r.peek() == Some(0xf6) {
            return Err(Error::Cose("detached payload (null) is not supported"));
        }
        let payload_bytes = r.bytes()?;
        next(&mut r, "array has fewer than 4 elements")?;
        let signature = r.bytes()?;
        if r.has_next(&mut remaining) {
            return Err(Error::Cose("array has more than 4 elements"));
        }
        let len = r.position();
        let (algorithm, critical_headers) = parse_protected(&protected)?;
        let payload = AttestationDocument::from_payload(&payload_bytes)?;
        let doc = UnverifiedDocument {
            tagged,
            protected: protected.into_owned(),
            algorithm,
            critical_headers,
            payload_bytes: payload_bytes.into_owned(),
            signature: signature.into_owned(),
            payload,
        };
        Ok((doc, len))
    }

    /// Enclave or NitroTPM document (shorthand for `payload().kind`).
    pub fn kind(&self) -> DocumentKind {
        self.payload.kind
    }

    /// The typed payload. **Not verified**: do not base decisions on it before verification.
    pub fn payload(&self) -> &AttestationDocument {
        &self.payload
    }

    /// Consumes the document and returns the (unverified) payload.
    pub fn into_payload(self) -> AttestationDocument {
        self.payload
    }

    /// `true` if the COSE_Sign1 was wrapped in CBOR tag 18 (real documents are untagged).
    pub fn is_tagged(&self) -> bool {
        self.tagged
    }

    /// The `alg` (label 1) of the protected header, if present and an integer: `-35` (ES384) in
    /// real documents, `-1` in QEMU's unsigned ones.
    pub fn algorithm(&self) -> Option<i64> {
        self.algorithm
    }

    /// The protected header bytes exactly as received (the content of the bstr).
    pub fn protected_header(&self) -> &[u8] {
        &self.protected
    }

    /// The payload bytes exactly as received (the content of the bstr), i.e. what the signature
    /// covers.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload_bytes
    }

    /// The signature bytes (96-byte `r ‖ s` for ES384).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// `true` if the protected header has a `crit` (label 2) parameter; the verifier rejects
    /// such documents as it understands no extension parameters.
    pub fn has_critical_headers(&self) -> bool {
        self.critical_headers
    }
}

/// Parses the protected header: returns (alg, has crit).
fn parse_protected(p: &[u8]) -> Result<(Option<i64>, bool)> {
    if p.is_empty() {
        // A zero-length bstr stands for an empty map (RFC 9052 §3).
        return Ok((None, false));
    }
    let bad = || Error::Cose("protected header is not a well-formed map");
    let mut r = Reader::new(p);
    let mut remaining = r.container(MAJOR_MAP).map_err(|_| bad())?;
    let mut alg = None;
    let mut seen_alg = false;
    let mut crit = false;
    while r.has_next(&mut remaining) {
        // Labels are integers or text.
        let label = if r.peek().is_some_and(|b| b >> 5 == MAJOR_TEXT) {
            r.skip().map_err(|_| bad())?;
            None
        } else {
            Some(r.int().map_err(|_| bad())?)
        };
        match label {
            Some(1) => {
                if std::mem::replace(&mut seen_alg, true) {
                    return Err(Error::Cose("duplicate alg in the protected header"));
                }
                // alg may be an int or text; only ints are meaningful here.
                if r.peek().is_some_and(|b| b >> 5 <= cbor::MAJOR_NINT) {
                    alg = Some(r.int().map_err(|_| bad())?);
                } else {
                    r.skip().map_err(|_| bad())?;
                }
            }
            Some(2) => {
                crit = true;
                r.skip().map_err(|_| bad())?;
            }
            _ => r.skip().map_err(|_| bad())?,
        }
    }
    if !r.is_empty() {
        return Err(bad());
    }
    Ok((alg, crit))
}

/// Encodes a COSE_Sign1 (untagged) from its parts.
#[cfg_attr(not(feature = "simulator"), allow(dead_code))]
pub(crate) fn encode_sign1(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + payload.len() + signature.len() + 16);
    cbor::write_head(&mut out, MAJOR_ARRAY, 4);
    cbor::write_bytes(&mut out, protected);
    cbor::write_head(&mut out, MAJOR_MAP, 0);
    cbor::write_bytes(&mut out, payload);
    cbor::write_bytes(&mut out, signature);
    out
}

/// The protected header of real documents: `{1: -35}`.
#[cfg_attr(not(feature = "simulator"), allow(dead_code))]
pub(crate) const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];

/// SHA-384 of the COSE `Sig_structure`
/// `["Signature1", protected, h'', payload]` built from the exact received bytes.
pub(crate) fn sig_structure_digest(protected: &[u8], payload: &[u8]) -> aws_lc_rs::digest::Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
    let mut head = Vec::with_capacity(32);
    cbor::write_head(&mut head, MAJOR_ARRAY, 4);
    cbor::write_text(&mut head, "Signature1");
    cbor::write_head(&mut head, MAJOR_BYTES, protected.len() as u64);
    ctx.update(&head);
    ctx.update(protected);
    head.clear();
    cbor::write_bytes(&mut head, &[]);
    cbor::write_head(&mut head, MAJOR_BYTES, payload.len() as u64);
    ctx.update(&head);
    ctx.update(payload);
    ctx.finish()
}
