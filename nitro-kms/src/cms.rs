//! `CiphertextForRecipient`: CMS `EnvelopedData` (RFC 5652) as AWS KMS produces it, parsed,
//! opened and written.
//!
//! # The shape KMS produces
//!
//! ```text
//! ContentInfo SEQUENCE (indefinite)
//!   contentType  OID envelopedData (1.2.840.113549.1.7.3)
//!   [0] EXPLICIT (indefinite)
//!     EnvelopedData SEQUENCE (indefinite)
//!       version INTEGER 2
//!       recipientInfos SET (definite) { exactly one
//!         KeyTransRecipientInfo SEQUENCE
//!           version INTEGER 2
//!           rid [0] IMPLICIT SubjectKeyIdentifier = SHA-256(DER SubjectPublicKeyInfo), 32 bytes
//!           keyEncryptionAlgorithm rsaesOaep { [0] sha256, [1] mgf1(sha256) }   (empty label)
//!           encryptedKey OCTET STRING (256 bytes for RSA-2048)
//!       }
//!       EncryptedContentInfo SEQUENCE (indefinite)
//!         contentType OID id-data
//!         contentEncryptionAlgorithm aes-256-cbc, parameters = IV OCTET STRING (16 bytes)
//!         encryptedContent [0] IMPLICIT OCTET STRING:
//!           constructed (indefinite) with OCTET STRING chunks of up to 1000 bytes, or primitive
//! ```
//!
//! [`Envelope::parse`] accepts exactly this, plus what `openssl cms -encrypt` produces for the
//! same algorithms (EnvelopedData and KeyTransRecipientInfo version 0 with `rid` =
//! issuerAndSerialNumber, or version 2 with the certificate's subject key identifier when called
//! with `-keyid`, definite lengths). [`Envelope::open`] checks the recipient identifier against
//! the key, decrypts the content key with RSAES-OAEP-SHA-256 (MGF1-SHA-256), then the content
//! with AES-256-CBC, and validates the PKCS#7 padding. [`seal`] writes the KMS shape (the local KMS
//! uses it).
//!
//! The envelope is **not authenticated**: anyone holding the recipient's public key can produce
//! one. Only trust an envelope that arrived over TLS from KMS (this crate's client ends TLS
//! inside the enclave).

use std::fmt;

use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use zeroize::Zeroizing;

use crate::ber::{
    self, CLASS_CONTEXT, CLASS_UNIVERSAL, Reader, TAG_INTEGER, TAG_NULL, TAG_OCTET_STRING, TAG_OID,
    TAG_SEQUENCE, TAG_SET, Tag, Writer,
};
use crate::error::{CmsError, Error};
use crate::secret::Plaintext;

/// Largest envelope [`Envelope::parse`] accepts (KMS caps `CiphertextForRecipient` at 6 KiB;
/// envelopes from other tools may be larger).
pub const MAX_ENVELOPE_LEN: usize = 4 * 1024 * 1024;

/// Chunk size of the constructed `encryptedContent` in envelopes written by [`seal`] (what AWS KMS
/// uses).
pub const KMS_CHUNK_SIZE: usize = 1000;

// Object identifiers (DER content octets).
const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_P_SPECIFIED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

const SEQUENCE: Tag = Tag::universal(TAG_SEQUENCE, true);
const SET: Tag = Tag::universal(TAG_SET, true);
const INTEGER: Tag = Tag::universal(TAG_INTEGER, false);
const OID: Tag = Tag::universal(TAG_OID, false);
const NULL: Tag = Tag::universal(TAG_NULL, false);
const OCTET_STRING: Tag = Tag::universal(TAG_OCTET_STRING, false);

/// How an envelope names its recipient (`RecipientIdentifier`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecipientId {
    /// `[0] SubjectKeyIdentifier` (KeyTransRecipientInfo version 2). AWS KMS puts
    /// SHA-256(DER SubjectPublicKeyInfo) here; `openssl cms -keyid` the certificate's
    /// subjectKeyIdentifier extension.
    SubjectKeyIdentifier(Vec<u8>),
    /// `issuerAndSerialNumber` (KeyTransRecipientInfo version 0), as `openssl cms -encrypt`
    /// writes by default.
    IssuerAndSerialNumber {
        /// DER encoding of the issuer `Name` (a SEQUENCE).
        issuer: Vec<u8>,
        /// Content octets of the serial number INTEGER.
        serial_number: Vec<u8>,
    },
}

impl RecipientId {
    /// The identifiers a certificate can be named by: its issuer and serial number, and its
    /// subject key identifier extension when it has one.
    ///
    /// Use it to open envelopes `openssl cms -encrypt -recip CERT` produced:
    /// [`RecipientKey::accept`] each returned identifier.
    pub fn from_certificate(der: &[u8]) -> Result<Vec<RecipientId>, Error> {
        use x509_parser::extensions::ParsedExtension;
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::InvalidArgument(format!("cannot parse certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::InvalidArgument(
                "trailing bytes after the certificate".into(),
            ));
        }
        let mut ids = vec![RecipientId::IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.as_raw().to_vec(),
            serial_number: cert.tbs_certificate.raw_serial().to_vec(),
        }];
        for ext in cert.tbs_certificate.iter_extensions() {
            if let ParsedExtension::SubjectKeyIdentifier(ski) = ext.parsed_extension() {
                ids.push(RecipientId::SubjectKeyIdentifier(ski.0.to_vec()));
            }
        }
        Ok(ids)
    }
}

impl fmt::Debug for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SubjectKeyIdentifier(ski) => {
                write!(f, "SubjectKeyIdentifier({})", hex::encode(ski))
            }
            Self::IssuerAndSerialNumber {
                issuer,
                serial_number,
            } => f
                .debug_struct("IssuerAndSerialNumber")
                .field("issuer", &hex::encode(issuer))
                .field("serial_number", &hex::encode(serial_number))
                .finish(),
        }
    }
}

/// A parsed `CiphertextForRecipient` (CMS `EnvelopedData` with one RSA-OAEP recipient and
/// AES-256-CBC content).
///
/// ```
/// use nitro_kms::internal::cms::{self, Envelope};
/// use nitro_kms::RecipientKey;
///
/// # fn main() -> Result<(), nitro_kms::Error> {
/// let key = RecipientKey::generate()?;
/// let ber = cms::seal(key.public_key_der(), b"a data key")?;
/// let envelope = Envelope::parse(&ber)?;
/// assert_eq!(envelope.open(&key)?.as_bytes(), b"a data key");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Envelope {
    recipient_id: RecipientId,
    encrypted_key: Vec<u8>,
    iv: [u8; 16],
    encrypted_content: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("recipient_id", &self.recipient_id)
            .field("encrypted_key_len", &self.encrypted_key.len())
            .field("iv", &hex::encode(self.iv))
            .field("encrypted_content_len", &self.encrypted_content.len())
            .finish()
    }
}

impl Envelope {
    /// Parses a BER (or DER) `ContentInfo` holding `EnvelopedData`. Never panics; every
    /// malformed, truncated or unsupported input is a [`CmsError`].
    pub fn parse(ber: &[u8]) -> Result<Self, CmsError> {
        if ber.len() > MAX_ENVELOPE_LEN {
            return Err(CmsError::TooLarge);
        }
        let mut top = Reader::new(ber);
        let content_info = top.expect(SEQUENCE, "ContentInfo")?;
        top.finish("ContentInfo")?;

        let mut ci = content_info.children()?;
        expect_oid(&mut ci, OID_ENVELOPED_DATA, "ContentInfo.contentType")?;
        let explicit = ci.expect(Tag::context(0, true), "ContentInfo.content")?;
        ci.finish("ContentInfo")?;
        let mut explicit = explicit.children()?;
        let enveloped = explicit.expect(SEQUENCE, "EnvelopedData")?;
        explicit.finish("ContentInfo.content")?;

        let mut ed = enveloped.children()?;
        let version = ed.expect(INTEGER, "EnvelopedData.version")?.small_uint()?;
        if version != 0 && version != 2 {
            return Err(CmsError::UnsupportedVersion {
                field: "EnvelopedData",
                version,
            });
        }
        if ed.peek_tag() == Some(Tag::context(0, true)) {
            return Err(CmsError::UnsupportedField("originatorInfo"));
        }
        let recipient_infos = ed.expect(SET, "recipientInfos")?;
        let encrypted_content_info = ed.expect(SEQUENCE, "EncryptedContentInfo")?;
        if !ed.is_empty() {
            return Err(CmsError::UnsupportedField("unprotectedAttrs"));
        }

        let mut recipients = recipient_infos.children()?;
        let ktri = recipients
            .next()?
            .ok_or(CmsError::UnsupportedRecipient("no recipient"))?;
        if !recipients.is_empty() {
            return Err(CmsError::UnsupportedRecipient("more than one recipient"));
        }
        if ktri.tag != SEQUENCE {
            return Err(CmsError::UnsupportedRecipient(
                "not a KeyTransRecipientInfo (key agreement, KEK, password and other recipients are not supported)",
            ));
        }
        let (recipient_id, encrypted_key) = parse_ktri(ktri)?;
        let (iv, encrypted_content) = parse_encrypted_content_info(encrypted_content_info)?;
        Ok(Self {
            recipient_id,
            encrypted_key,
            iv,
            encrypted_content,
        })
    }

    /// The recipient the envelope is addressed to.
    pub fn recipient_id(&self) -> &RecipientId {
        &self.recipient_id
    }

    /// The RSA-OAEP-encrypted content-encryption key.
    pub fn encrypted_key(&self) -> &[u8] {
        &self.encrypted_key
    }

    /// The AES-256-CBC initialisation vector.
    pub fn iv(&self) -> &[u8; 16] {
        &self.iv
    }

    /// The AES-256-CBC ciphertext (chunks concatenated).
    pub fn encrypted_content(&self) -> &[u8] {
        &self.encrypted_content
    }

    /// Opens the envelope with `key`: checks that it is addressed to `key`
    /// ([`RecipientKey::matches`]), decrypts the content key (RSAES-OAEP-SHA-256), then the
    /// content (AES-256-CBC), and validates the padding.
    pub fn open(&self, key: &RecipientKey) -> Result<Plaintext, CmsError> {
        if !key.matches(&self.recipient_id) {
            return Err(CmsError::RecipientMismatch);
        }
        let private = OaepPrivateDecryptingKey::new(key.private.clone())
            .map_err(|_| CmsError::KeyDecryption)?;
        let mut cek = Zeroizing::new(vec![0u8; private.min_output_size()]);
        let cek_len = private
            .decrypt(&OAEP_SHA256_MGF1SHA256, &self.encrypted_key, &mut cek, None)
            .map_err(|_| CmsError::KeyDecryption)?
            .len();
        if cek_len != 32 {
            return Err(CmsError::BadContentKey(cek_len));
        }
        let cek = cek.get(..32).ok_or(CmsError::BadContentKey(cek_len))?;
        self.open_with_content_key(cek)
    }

    /// Decrypts the content with an already recovered content-encryption key.
    pub(crate) fn open_with_content_key(&self, cek: &[u8]) -> Result<Plaintext, CmsError> {
        decrypt_cbc(cek, &self.iv, &self.encrypted_content)
    }
}

/// Parses and opens an envelope in one step.
pub fn open(ber: &[u8], key: &RecipientKey) -> Result<Plaintext, CmsError> {
    Envelope::parse(ber)?.open(key)
}

fn parse_ktri(ktri: ber::Element<'_>) -> Result<(RecipientId, Vec<u8>), CmsError> {
    let mut r = ktri.children()?;
    let version = r
        .expect(INTEGER, "KeyTransRecipientInfo.version")?
        .small_uint()?;
    let rid = match version {
        2 => {
            let ski = r.expect_string(CLASS_CONTEXT, 0, "rid subjectKeyIdentifier")?;
            RecipientId::SubjectKeyIdentifier(ski.octets()?)
        }
        0 => {
            let ias = r.expect(SEQUENCE, "rid issuerAndSerialNumber")?;
            let mut ias = ias.children()?;
            let issuer = ias.expect(SEQUENCE, "issuer")?;
            let serial = ias.expect(INTEGER, "serialNumber")?;
            ias.finish("issuerAndSerialNumber")?;
            if serial.content.is_empty() {
                return Err(CmsError::Malformed("empty serial number"));
            }
            RecipientId::IssuerAndSerialNumber {
                issuer: ber::tlv(SEQUENCE, issuer.content),
                serial_number: serial.content.to_vec(),
            }
        }
        version => {
            return Err(CmsError::UnsupportedVersion {
                field: "KeyTransRecipientInfo",
                version,
            });
        }
    };
    let alg = r.expect(SEQUENCE, "keyEncryptionAlgorithm")?;
    check_oaep_params(alg)?;
    let encrypted_key = r
        .expect_string(CLASS_UNIVERSAL, TAG_OCTET_STRING, "encryptedKey")?
        .octets()?;
    r.finish("KeyTransRecipientInfo")?;
    Ok((rid, encrypted_key))
}

/// `keyEncryptionAlgorithm` must be RSAES-OAEP with SHA-256, MGF1-SHA-256 and an empty label.
fn check_oaep_params(alg: ber::Element<'_>) -> Result<(), CmsError> {
    let mut r = alg.children()?;
    let oid = r.expect(OID, "keyEncryptionAlgorithm.algorithm")?;
    if oid.content != OID_RSAES_OAEP {
        return Err(CmsError::UnexpectedOid {
            field: "keyEncryptionAlgorithm (expected rsaesOaep)",
            oid: dotted(oid.content),
        });
    }
    let params = r.next()?.ok_or(CmsError::UnsupportedKeyEncryption(
        "absent RSAES-OAEP parameters mean SHA-1",
    ))?;
    if params.tag != SEQUENCE {
        return Err(CmsError::UnexpectedTag {
            field: "RSAES-OAEP-params",
            found: params.tag.byte(),
        });
    }
    r.finish("keyEncryptionAlgorithm")?;

    let mut p = params.children()?;
    let (mut hash_ok, mut mgf_ok) = (false, false);
    while let Some(field) = p.next()? {
        if field.tag.class != CLASS_CONTEXT || !field.tag.constructed {
            return Err(CmsError::UnexpectedTag {
                field: "RSAES-OAEP-params",
                found: field.tag.byte(),
            });
        }
        let mut inner = field.children()?;
        let alg_id = inner.expect(SEQUENCE, "RSAES-OAEP-params field")?;
        inner.finish("RSAES-OAEP-params field")?;
        match field.tag.number {
            0 => {
                check_sha256(alg_id)?;
                hash_ok = true;
            }
            1 => {
                let mut m = alg_id.children()?;
                let oid = m.expect(OID, "maskGenAlgorithm")?;
                if oid.content != OID_MGF1 {
                    return Err(CmsError::UnsupportedKeyEncryption(
                        "mask generation is not MGF1",
                    ));
                }
                let hash = m.expect(SEQUENCE, "MGF1 hash")?;
                m.finish("maskGenAlgorithm")?;
                check_sha256(hash)?;
                mgf_ok = true;
            }
            2 => {
                let mut s = alg_id.children()?;
                let oid = s.expect(OID, "pSourceAlgorithm")?;
                if oid.content != OID_P_SPECIFIED {
                    return Err(CmsError::UnsupportedKeyEncryption(
                        "pSource is not pSpecified",
                    ));
                }
                let label = s.expect_string(CLASS_UNIVERSAL, TAG_OCTET_STRING, "label")?;
                s.finish("pSourceAlgorithm")?;
                if !label.octets()?.is_empty() {
                    return Err(CmsError::UnsupportedKeyEncryption("non-empty OAEP label"));
                }
            }
            _ => {
                return Err(CmsError::UnexpectedTag {
                    field: "RSAES-OAEP-params",
                    found: field.tag.byte(),
                });
            }
        }
    }
    if !hash_ok {
        return Err(CmsError::UnsupportedKeyEncryption(
            "OAEP hash defaults to SHA-1",
        ));
    }
    if !mgf_ok {
        return Err(CmsError::UnsupportedKeyEncryption(
            "MGF1 hash defaults to SHA-1",
        ));
    }
    Ok(())
}

/// An `AlgorithmIdentifier` for SHA-256 (parameters absent or NULL).
fn check_sha256(alg_id: ber::Element<'_>) -> Result<(), CmsError> {
    let mut r = alg_id.children()?;
    let oid = r.expect(OID, "hash algorithm")?;
    if oid.content != OID_SHA256 {
        return Err(CmsError::UnsupportedKeyEncryption("hash is not SHA-256"));
    }
    if let Some(param) = r.next()?
        && (param.tag != NULL || !param.content.is_empty())
    {
        return Err(CmsError::Malformed(
            "SHA-256 parameters must be absent or NULL",
        ));
    }
    r.finish("hash algorithm")
}

fn parse_encrypted_content_info(eci: ber::Element<'_>) -> Result<([u8; 16], Vec<u8>), CmsError> {
    let mut r = eci.children()?;
    expect_oid(&mut r, OID_DATA, "EncryptedContentInfo.contentType")?;
    let alg = r.expect(SEQUENCE, "contentEncryptionAlgorithm")?;
    let content = r.next()?.ok_or(CmsError::Missing(
        "encryptedContent (detached content is not supported)",
    ))?;
    r.finish("EncryptedContentInfo")?;

    let mut a = alg.children()?;
    expect_oid(&mut a, OID_AES256_CBC, "contentEncryptionAlgorithm")?;
    let iv = a
        .expect_string(CLASS_UNIVERSAL, TAG_OCTET_STRING, "AES-256-CBC IV")?
        .octets()?;
    a.finish("contentEncryptionAlgorithm")?;
    let iv: [u8; 16] = iv
        .as_slice()
        .try_into()
        .map_err(|_| CmsError::BadIv(iv.len()))?;

    if content.tag.class != CLASS_CONTEXT || content.tag.number != 0 {
        return Err(CmsError::UnexpectedTag {
            field: "encryptedContent",
            found: content.tag.byte(),
        });
    }
    Ok((iv, content.octets()?))
}

fn expect_oid(r: &mut Reader<'_>, want: &[u8], field: &'static str) -> Result<(), CmsError> {
    let oid = r.expect(OID, field)?;
    if oid.content == want {
        Ok(())
    } else {
        Err(CmsError::UnexpectedOid {
            field,
            oid: dotted(oid.content),
        })
    }
}

/// Dotted form of an OID's content octets, for error messages (bounded).
fn dotted(content: &[u8]) -> String {
    if content.is_empty() || content.len() > 64 {
        return format!("<{} bytes>", content.len());
    }
    let mut arcs: Vec<u128> = Vec::new();
    let mut v: u128 = 0;
    for b in content {
        v = (v << 7) | u128::from(b & 0x7F);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        } else if v > u128::from(u64::MAX) {
            return format!("<{}>", hex::encode(content));
        }
    }
    let mut out = String::new();
    if let Some(first) = arcs.first() {
        let (a, b) = if *first < 40 {
            (0, *first)
        } else if *first < 80 {
            (1, first - 40)
        } else {
            (2, first - 80)
        };
        out.push_str(&format!("{a}.{b}"));
    }
    for arc in arcs.iter().skip(1) {
        out.push_str(&format!(".{arc}"));
    }
    out
}

fn decrypt_cbc(cek: &[u8], iv: &[u8; 16], ciphertext: &[u8]) -> Result<Plaintext, CmsError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(CmsError::BadContentLength(ciphertext.len()));
    }
    let key =
        UnboundCipherKey::new(&AES_256, cek).map_err(|_| CmsError::BadContentKey(cek.len()))?;
    let key = DecryptingKey::cbc(key).map_err(|_| CmsError::BadContentKey(cek.len()))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    key.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| CmsError::BadContentLength(ciphertext.len()))?;
    let len = unpad_pkcs7(&buf)?;
    buf.truncate(len);
    Ok(Plaintext::from(buf))
}

/// Validates PKCS#7 padding (1..=16 bytes, all equal to the pad length) without branching on
/// the padding bytes, and returns the unpadded length.
fn unpad_pkcs7(block_aligned: &[u8]) -> Result<usize, CmsError> {
    let n = block_aligned.len();
    let last_block = block_aligned
        .get(n.saturating_sub(16)..)
        .filter(|b| b.len() == 16)
        .ok_or(CmsError::BadPadding)?;
    let pad = last_block.get(15).copied().unwrap_or(0);
    let mut bad: u8 = u8::from(pad == 0) | u8::from(pad > 16);
    for (i, b) in last_block.iter().enumerate() {
        // Byte i (0..16) is padding when 16 - i <= pad.
        let in_pad = u8::from(16 - i <= usize::from(pad));
        bad |= in_pad & u8::from(*b != pad);
    }
    if bad != 0 {
        return Err(CmsError::BadPadding);
    }
    Ok(n - usize::from(pad))
}

/// An RSA private key that opens envelopes, with the public key (DER `SubjectPublicKeyInfo`)
/// KMS encrypts to.
///
/// Inside an enclave this is generated fresh ([`RecipientKey::generate`], RSA-2048, ~100 ms) and its
/// public key goes into the attestation document; [`crate::Recipient`] caches it. The private
/// key lives in AWS-LC, which clears it when freed; exports ([`RecipientKey::to_pkcs8_der`]) are
/// zeroized on drop.
#[derive(Clone)]
pub struct RecipientKey {
    private: PrivateDecryptingKey,
    spki: Vec<u8>,
    ski: [u8; 32],
    accepted: Vec<RecipientId>,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientKey")
            .field("subject_key_identifier", &hex::encode(self.ski))
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// Generates a fresh RSA-2048 key pair (the size KMS documents for `Recipient`).
    pub fn generate() -> Result<Self, Error> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Crypto("RSA key generation"))?;
        Self::from_private(key)
    }

    /// Loads an RSA private key from PKCS#8 DER (2048 to 8192 bits).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let key = PrivateDecryptingKey::from_pkcs8(der).map_err(|_| {
            Error::InvalidArgument("not an RSA PKCS#8 private key of 2048..8192 bits".into())
        })?;
        Self::from_private(key)
    }

    fn from_private(key: PrivateDecryptingKey) -> Result<Self, Error> {
        let public = key.public_key();
        let spki: PublicKeyX509Der<'static> = public
            .as_der()
            .map_err(|_| Error::Crypto("public key encoding"))?;
        let spki = spki.as_ref().to_vec();
        let ski = sha256(&spki);
        Ok(Self {
            private: key,
            spki,
            ski,
            accepted: Vec::new(),
        })
    }

    /// The public key as DER `SubjectPublicKeyInfo` (what goes into the attestation document's
    /// `public_key`).
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of [`RecipientKey::public_key_der`]: the subject key identifier KMS puts in the
    /// envelopes it addresses to this key.
    pub fn subject_key_identifier(&self) -> &[u8; 32] {
        &self.ski
    }

    /// Also accept envelopes addressed to `id` (for envelopes from other tools, e.g. with the
    /// identifiers of a certificate for this key: [`RecipientId::from_certificate`]).
    #[must_use]
    pub fn accept(mut self, id: RecipientId) -> Self {
        self.accepted.push(id);
        self
    }

    /// Whether an envelope addressed to `id` is for this key: the KMS identifier
    /// (SHA-256 of the SPKI) or one added with [`RecipientKey::accept`].
    pub fn matches(&self, id: &RecipientId) -> bool {
        match id {
            RecipientId::SubjectKeyIdentifier(ski) if ski.as_slice() == self.ski.as_slice() => true,
            other => self.accepted.iter().any(|a| a == other),
        }
    }

    /// The private key as PKCS#8 DER (zeroized on drop).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let der: Pkcs8V1Der<'static> = self
            .private
            .as_der()
            .map_err(|_| Error::Crypto("private key encoding"))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// How [`seal_with`] encodes the encrypted content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// Constructed `[0]` with indefinite length and OCTET STRING chunks of at most this many
    /// bytes (KMS uses 1000).
    Chunked(usize),
    /// Primitive `[0] IMPLICIT OCTET STRING` (seen in older KMS output).
    Primitive,
}

/// Writes an envelope for the RSA public key `spki_der` (DER `SubjectPublicKeyInfo`) in the shape
/// AWS KMS produces: BER with indefinite lengths, `rid` = SHA-256(SPKI), RSAES-OAEP-SHA-256,
/// AES-256-CBC with a random key and IV, content in 1000-byte chunks.
pub fn seal(spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    seal_with(
        spki_der,
        plaintext,
        ContentEncoding::Chunked(KMS_CHUNK_SIZE),
    )
}

/// [`seal`] with a choice of content encoding.
pub fn seal_with(
    spki_der: &[u8],
    plaintext: &[u8],
    encoding: ContentEncoding,
) -> Result<Vec<u8>, Error> {
    let public = PublicEncryptingKey::from_der(spki_der).map_err(|_| {
        Error::InvalidArgument("recipient public key is not an RSA SubjectPublicKeyInfo".into())
    })?;
    let public = OaepPublicEncryptingKey::new(public).map_err(|_| Error::Crypto("RSA-OAEP key"))?;
    let rng = SystemRandom::new();
    let mut cek = Zeroizing::new([0u8; 32]);
    rng.fill(cek.as_mut())
        .map_err(|_| Error::Crypto("random content key"))?;
    let mut iv = [0u8; 16];
    rng.fill(&mut iv).map_err(|_| Error::Crypto("random IV"))?;

    let mut encrypted_key = vec![0u8; public.ciphertext_size()];
    let encrypted_key_len = public
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            cek.as_ref(),
            &mut encrypted_key,
            None,
        )
        .map_err(|_| Error::Crypto("RSA-OAEP encryption"))?
        .len();
    encrypted_key.truncate(encrypted_key_len);

    // AES-256-CBC with PKCS#7 padding.
    let pad = 16 - plaintext.len() % 16;
    let mut content = Vec::with_capacity(plaintext.len() + pad);
    content.extend_from_slice(plaintext);
    content.extend(std::iter::repeat_n(pad as u8, pad));
    let key =
        UnboundCipherKey::new(&AES_256, cek.as_ref()).map_err(|_| Error::Crypto("AES key"))?;
    let key = EncryptingKey::cbc(key).map_err(|_| Error::Crypto("AES key"))?;
    key.less_safe_encrypt(
        &mut content,
        EncryptionContext::Iv128(FixedLength::from(iv)),
    )
    .map_err(|_| Error::Crypto("AES-256-CBC encryption"))?;

    Ok(write_envelope(
        &sha256(spki_der),
        &encrypted_key,
        &iv,
        &content,
        encoding,
    ))
}

fn write_envelope(
    ski: &[u8],
    encrypted_key: &[u8],
    iv: &[u8; 16],
    content: &[u8],
    encoding: ContentEncoding,
) -> Vec<u8> {
    let sha256_alg_id = {
        let mut v = ber::tlv(OID, OID_SHA256);
        v.extend_from_slice(&ber::tlv(NULL, &[]));
        ber::tlv(SEQUENCE, &v)
    };
    let oaep_params = {
        let mut mgf = ber::tlv(OID, OID_MGF1);
        mgf.extend_from_slice(&sha256_alg_id);
        let mut p = ber::tlv(Tag::context(0, true), &sha256_alg_id);
        p.extend_from_slice(&ber::tlv(Tag::context(1, true), &ber::tlv(SEQUENCE, &mgf)));
        ber::tlv(SEQUENCE, &p)
    };
    let key_enc_alg = {
        let mut v = ber::tlv(OID, OID_RSAES_OAEP);
        v.extend_from_slice(&oaep_params);
        ber::tlv(SEQUENCE, &v)
    };
    let ktri = {
        let mut v = ber::tlv(INTEGER, &[2]);
        v.extend_from_slice(&ber::tlv(Tag::context(0, false), ski));
        v.extend_from_slice(&key_enc_alg);
        v.extend_from_slice(&ber::tlv(OCTET_STRING, encrypted_key));
        ber::tlv(SEQUENCE, &v)
    };
    let content_alg = {
        let mut v = ber::tlv(OID, OID_AES256_CBC);
        v.extend_from_slice(&ber::tlv(OCTET_STRING, iv));
        ber::tlv(SEQUENCE, &v)
    };

    let mut w = Writer::default();
    w.open_indefinite(SEQUENCE); // ContentInfo
    w.definite(OID, OID_ENVELOPED_DATA);
    w.open_indefinite(Tag::context(0, true));
    w.open_indefinite(SEQUENCE); // EnvelopedData
    w.definite(INTEGER, &[2]);
    w.definite(SET, &ktri);
    w.open_indefinite(SEQUENCE); // EncryptedContentInfo
    w.definite(OID, OID_DATA);
    w.raw(&content_alg);
    match encoding {
        ContentEncoding::Chunked(size) => {
            w.open_indefinite(Tag::context(0, true));
            for chunk in content.chunks(size.max(1)) {
                w.definite(OCTET_STRING, chunk);
            }
            w.end();
        }
        ContentEncoding::Primitive => w.definite(Tag::context(0, false), content),
    }
    w.end(); // EncryptedContentInfo
    w.end(); // EnvelopedData
    w.end(); // [0]
    w.end(); // ContentInfo
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RecipientKey {
        RecipientKey::generate().unwrap()
    }

    #[test]
    fn roundtrip_all_encodings_and_sizes() {
        let k = key();
        for encoding in [
            ContentEncoding::Chunked(1000),
            ContentEncoding::Chunked(7),
            ContentEncoding::Primitive,
        ] {
            for len in [0usize, 1, 15, 16, 17, 999, 1000, 4096] {
                let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let env = seal_with(k.public_key_der(), &pt, encoding).unwrap();
                assert_eq!(open(&env, &k).unwrap().as_bytes(), pt.as_slice());
            }
        }
    }

    #[test]
    fn other_key_is_a_mismatch() {
        let (a, b) = (key(), key());
        let env = seal(a.public_key_der(), b"x").unwrap();
        assert_eq!(open(&env, &b), Err(CmsError::RecipientMismatch));
        // Accepting the other identifier explicitly gets past the check, then OAEP fails.
        let b = b.accept(RecipientId::SubjectKeyIdentifier(
            a.subject_key_identifier().to_vec(),
        ));
        assert_eq!(open(&env, &b), Err(CmsError::KeyDecryption));
    }

    #[test]
    fn padding() {
        let mut block = [3u8; 16];
        assert_eq!(unpad_pkcs7(&block), Ok(13));
        block[15] = 0;
        assert_eq!(unpad_pkcs7(&block), Err(CmsError::BadPadding));
        block[15] = 17;
        assert_eq!(unpad_pkcs7(&block), Err(CmsError::BadPadding));
        let mut block = [16u8; 16];
        assert_eq!(unpad_pkcs7(&block), Ok(0));
        block[0] = 15;
        assert_eq!(unpad_pkcs7(&block), Err(CmsError::BadPadding));
        assert_eq!(unpad_pkcs7(&[]), Err(CmsError::BadPadding));
    }

    #[test]
    fn dotted_oids() {
        assert_eq!(dotted(OID_ENVELOPED_DATA), "1.2.840.113549.1.7.3");
        assert_eq!(dotted(OID_AES256_CBC), "2.16.840.1.101.3.4.1.42");
    }

    #[test]
    fn pkcs8_roundtrip() {
        let k = key();
        let der = k.to_pkcs8_der().unwrap();
        let k2 = RecipientKey::from_pkcs8(&der).unwrap();
        assert_eq!(k.public_key_der(), k2.public_key_der());
    }
}
