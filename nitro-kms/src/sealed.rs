//! Sealed secrets: encrypted under a KMS key outside the enclave ([`seal`]), opened inside it
//! with an attested `Decrypt` ([`unseal`]), so that only an enclave whose measurements satisfy
//! the key policy ever sees the plaintext.
//!
//! # Format (version 1)
//!
//! A sealed secret is a UTF-8 JSON document:
//!
//! ```json
//! {
//!   "format": "nitro-kms-sealed-secret",
//!   "version": 1,
//!   "key_id": "arn:aws:kms:eu-west-1:111122223333:key/…",
//!   "encryption_context": {"app": "payments"},
//!   "mode": "kms",
//!   "ciphertext": "<base64>"
//! }
//! ```
//!
//! - `key_id`: the KMS key (ARN as returned by KMS), sent as `KeyId` when unsealing so that
//!   the blob cannot be redirected to another key.
//! - `encryption_context`: string pairs passed to KMS when sealing and unsealing (authenticated
//!   by KMS, visible in CloudTrail, usable in key policy conditions). Bind each secret to its
//!   purpose here.
//! - `mode` = `"kms"` (secrets up to 4096 bytes): `ciphertext` is the KMS `CiphertextBlob` of
//!   the secret (`Encrypt`).
//! - `mode` = `"envelope"` (larger secrets, or on request): `encrypted_data_key` is the
//!   `CiphertextBlob` of a 32-byte data key (`GenerateDataKey`, `AES_256`); `nonce` (12 bytes)
//!   and `ciphertext` are AES-256-GCM of the secret (tag appended) under that data key, with
//!   additional authenticated data `"nitro-kms sealed secret v1\0" ‖ key_id ‖ 0x00 ‖
//!   (len(k) ‖ k ‖ len(v) ‖ v for each context pair in key order, lengths as 4-byte big-endian)
//!   ‖ encrypted_data_key`.
//!
//! Binary fields are standard base64. Unknown fields are rejected; the whole document is
//! limited to [`MAX_SEALED_LEN`].
//!
//! Unsealing always uses `Recipient` (the client must have one): KMS never returns the secret
//! (or the data key) in plaintext on the wire.
//!
//! # The encryption context is mandatory
//!
//! [`seal`] refuses an empty encryption context, and [`unseal`] refuses to run without the
//! context the caller expects ([`UnsealOptions::expect_context`]), which must equal the one
//! recorded in the document exactly. Without a context, every ciphertext under the key is
//! interchangeable: whoever may call `Encrypt` or `GenerateDataKey` with the key (the
//! operator, another application) can substitute the wrapped data key or the KMS ciphertext of
//! one secret by another one (*wrapped-key substitution*), and the enclave would accept it as
//! its own. KMS authenticates the context with the ciphertext, so a substituted blob must have
//! been made with the same context; naming the secret's purpose in it (`{"app": "payments",
//! "secret": "db-password"}`) confines substitution to blobs made for that purpose.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use crate::client::KmsClient;
use crate::error::{Error, SealedErrorKind};
use crate::model::{
    DataKeySpec, DecryptRequest, EncryptRequest, EncryptionContext, GenerateDataKeyRequest,
};
use crate::secret::Plaintext;

/// Largest sealed document accepted.
pub const MAX_SEALED_LEN: usize = 64 * 1024 * 1024;

/// Largest secret sealed directly with KMS `Encrypt`; larger ones use envelope encryption.
pub const MAX_DIRECT_LEN: usize = 4096;

const FORMAT: &str = "nitro-kms-sealed-secret";

/// How a secret is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// KMS `Encrypt` of the secret itself (at most 4096 bytes).
    Kms,
    /// A KMS data key plus AES-256-GCM.
    Envelope,
}

/// A parsed sealed secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SealedSecret {
    /// Always `nitro-kms-sealed-secret`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The KMS key.
    pub key_id: String,
    /// Encryption context.
    #[serde(default)]
    pub encryption_context: EncryptionContext,
    /// How the secret is sealed.
    pub mode: Mode,
    /// Envelope mode: the encrypted data key.
    #[serde(
        default,
        with = "crate::model::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub encrypted_data_key: Option<Vec<u8>>,
    /// Envelope mode: the AES-GCM nonce.
    #[serde(
        default,
        with = "crate::model::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub nonce: Option<Vec<u8>>,
    /// The KMS ciphertext (mode `kms`) or the AES-GCM ciphertext with tag (mode `envelope`).
    #[serde(with = "crate::model::b64")]
    pub ciphertext: Vec<u8>,
}

fn damaged(why: impl Into<String>) -> Error {
    Error::sealed(SealedErrorKind::Malformed, why)
}

impl SealedSecret {
    /// Parses and checks a sealed document (structure only: authenticity is established when
    /// unsealing).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_SEALED_LEN {
            return Err(damaged("larger than the maximum sealed size"));
        }
        let s: SealedSecret = serde_json::from_slice(bytes)
            .map_err(|e| damaged(format!("not a sealed secret document: {e}")))?;
        if s.format != FORMAT {
            return Err(damaged(format!("unknown format {:?}", s.format)));
        }
        if s.version != 1 {
            return Err(damaged(format!("unsupported version {}", s.version)));
        }
        if s.key_id.is_empty() || s.ciphertext.is_empty() {
            return Err(damaged("empty key_id or ciphertext"));
        }
        match s.mode {
            Mode::Kms if s.encrypted_data_key.is_some() || s.nonce.is_some() => {
                Err(damaged("mode kms with envelope fields"))
            }
            Mode::Envelope
                if s.encrypted_data_key.as_ref().is_none_or(Vec::is_empty)
                    || s.nonce.as_ref().map(Vec::len) != Some(NONCE_LEN)
                    || s.ciphertext.len() < 16 =>
            {
                Err(damaged(
                    "envelope mode needs encrypted_data_key, a 12-byte nonce and a ciphertext with its tag",
                ))
            }
            _ => Ok(s),
        }
    }

    /// Serialises to the JSON document.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec_pretty(self).map_err(|e| damaged(format!("cannot encode: {e}")))
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = b"nitro-kms sealed secret v1\0".to_vec();
        aad.extend_from_slice(self.key_id.as_bytes());
        aad.push(0);
        for (k, v) in &self.encryption_context {
            aad.extend_from_slice(&(k.len() as u32).to_be_bytes());
            aad.extend_from_slice(k.as_bytes());
            aad.extend_from_slice(&(v.len() as u32).to_be_bytes());
            aad.extend_from_slice(v.as_bytes());
        }
        aad.extend_from_slice(self.encrypted_data_key.as_deref().unwrap_or_default());
        aad
    }
}

/// Options of [`seal`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SealOptions {
    /// Encryption context.
    pub encryption_context: EncryptionContext,
    /// Always use envelope encryption, even for small secrets.
    pub force_envelope: bool,
}

impl SealOptions {
    /// No context, automatic mode.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a context pair.
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.encryption_context.insert(key.into(), value.into());
        self
    }

    /// Forces envelope mode.
    #[must_use]
    pub fn force_envelope(mut self, force: bool) -> Self {
        self.force_envelope = force;
        self
    }
}

/// Seals `secret` under `key_id` (operator side; the client needs no `Recipient`). Returns the
/// JSON document.
pub async fn seal(
    kms: &KmsClient,
    key_id: &str,
    secret: &[u8],
    options: &SealOptions,
) -> Result<Vec<u8>, Error> {
    if secret.is_empty() {
        return Err(Error::InvalidArgument("cannot seal an empty secret".into()));
    }
    if options.encryption_context.is_empty() {
        return Err(Error::InvalidArgument(
            "sealing needs an encryption context (SealOptions::context): without one, sealed \
             blobs under the same key can be substituted for one another"
                .into(),
        ));
    }
    let context =
        (!options.encryption_context.is_empty()).then(|| options.encryption_context.clone());
    let kms = kms.with_recipient(None);
    let mut sealed = SealedSecret {
        format: FORMAT.into(),
        version: 1,
        key_id: key_id.into(),
        encryption_context: options.encryption_context.clone(),
        mode: Mode::Kms,
        encrypted_data_key: None,
        nonce: None,
        ciphertext: Vec::new(),
    };
    if secret.len() <= MAX_DIRECT_LEN && !options.force_envelope {
        let mut req = EncryptRequest::new(key_id, secret.to_vec());
        req.encryption_context = context;
        let resp = kms.encrypt(req).await?;
        if let Some(arn) = resp.key_id {
            sealed.key_id = arn;
        }
        sealed.ciphertext = resp.ciphertext_blob;
    } else {
        let mut req = GenerateDataKeyRequest::new(key_id).key_spec(DataKeySpec::Aes256);
        req.encryption_context = context;
        let resp = kms.generate_data_key(req).await?;
        let data_key = resp.plaintext;
        if let Some(arn) = resp.key_id {
            sealed.key_id = arn;
        }
        sealed.mode = Mode::Envelope;
        sealed.encrypted_data_key = Some(resp.ciphertext_blob);
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Crypto("random nonce"))?;
        sealed.nonce = Some(nonce.to_vec());
        let key = aead_key(&data_key)?;
        let mut buf = secret.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(sealed.aad()),
            &mut buf,
        )
        .map_err(|_| Error::Crypto("AES-256-GCM encryption"))?;
        sealed.ciphertext = buf;
    }
    sealed.to_bytes()
}

fn aead_key(data_key: &[u8]) -> Result<LessSafeKey, Error> {
    if data_key.len() != 32 {
        return Err(Error::InvalidResponse {
            operation: "GenerateDataKey",
            reason: format!("data key of {} bytes, expected 32", data_key.len()),
        });
    }
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| Error::Crypto("AES key"))?,
    ))
}

/// What [`unseal`] requires of a sealed secret beyond authenticity.
///
/// The expected encryption context is required: [`unseal`] fails without one.
///
/// ```
/// use nitro_kms::sealed::UnsealOptions;
///
/// let opts = UnsealOptions::new().expect_context_pair("app", "payments");
/// assert_eq!(opts.expected_context.unwrap()["app"], "payments");
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct UnsealOptions {
    /// The encryption context the secret must carry, exactly (required by [`unseal`]).
    pub expected_context: Option<EncryptionContext>,
    /// The key the secret must name (id or ARN suffix), when set.
    pub expected_key_id: Option<String>,
}

impl UnsealOptions {
    /// No expectations yet: add the context with [`expect_context`](Self::expect_context) or
    /// [`expect_context_pair`](Self::expect_context_pair) before unsealing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires exactly this context.
    #[must_use]
    pub fn expect_context(mut self, context: EncryptionContext) -> Self {
        self.expected_context = Some(context);
        self
    }

    /// Requires one context pair (adds to the expected context).
    #[must_use]
    pub fn expect_context_pair(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.expected_context
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Requires the secret to be sealed under this key (id, or the end of the ARN).
    #[must_use]
    pub fn expect_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.expected_key_id = Some(key_id.into());
        self
    }
}

/// Unseals a secret inside the enclave. `kms` must have a [`Recipient`](crate::Recipient): the
/// secret (or data key) only travels inside `CiphertextForRecipient`.
///
/// `options` must name the expected encryption context (non-empty); a document recording
/// another context, or none, is refused before KMS is called.
pub async fn unseal(
    kms: &KmsClient,
    sealed: &[u8],
    options: &UnsealOptions,
) -> Result<Plaintext, Error> {
    if kms.recipient().is_none() {
        return Err(Error::InvalidArgument(
            "unseal needs a KmsClient with a Recipient (attested Decrypt)".into(),
        ));
    }
    let expected = match &options.expected_context {
        Some(c) if !c.is_empty() => c,
        _ => {
            return Err(Error::InvalidArgument(
                "unseal needs the expected encryption context (UnsealOptions::expect_context)"
                    .into(),
            ));
        }
    };
    let s = SealedSecret::parse(sealed)?;
    if s.encryption_context.is_empty() {
        return Err(Error::sealed(
            SealedErrorKind::ContextMismatch,
            "the document records no encryption context (refused: it could be a substituted blob)",
        ));
    }
    if expected != &s.encryption_context {
        return Err(Error::sealed(
            SealedErrorKind::ContextMismatch,
            "the encryption context differs from the expected one",
        ));
    }
    if let Some(expected) = &options.expected_key_id
        && s.key_id != *expected
        && !s.key_id.ends_with(&format!("/{expected}"))
    {
        return Err(Error::sealed(
            SealedErrorKind::KeyMismatch,
            format!("sealed under {}, expected {expected}", s.key_id),
        ));
    }
    let context = Some(s.encryption_context.clone());
    let blob = match s.mode {
        Mode::Kms => s.ciphertext.clone(),
        Mode::Envelope => s.encrypted_data_key.clone().unwrap_or_default(),
    };
    let mut req = DecryptRequest::new(blob).key_id(s.key_id.clone());
    req.encryption_context = context;
    let plaintext = kms.decrypt(req).await?.plaintext;
    match s.mode {
        Mode::Kms => Ok(plaintext),
        Mode::Envelope => {
            let key = aead_key(&plaintext)?;
            let nonce: [u8; NONCE_LEN] = s
                .nonce
                .as_deref()
                .and_then(|n| n.try_into().ok())
                .ok_or_else(|| damaged("bad nonce"))?;
            let mut buf = Zeroizing::new(s.ciphertext.clone());
            let len = key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(s.aad()), &mut buf)
                .map_err(|_| {
                    Error::sealed(
                        SealedErrorKind::Tampered,
                        "the ciphertext or its metadata was modified (AES-GCM authentication failed)",
                    )
                })?
                .len();
            buf.truncate(len);
            Ok(Plaintext::from(buf))
        }
    }
}

/// Reads a whole sealed document from `stream` as sent by [`serve_sealed`] after asking for
/// `name` (enclave side of the vsock file source).
///
/// Protocol: the enclave sends one frame with the UTF-8 name; the parent answers one frame whose
/// first byte is `0` (the rest is the document) or `1` (the rest is a UTF-8 error). Frames are a
/// 4-byte big-endian length and that many bytes, at most [`MAX_SEALED_LEN`] + 1.
pub async fn fetch_sealed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    name: &str,
) -> Result<Vec<u8>, Error> {
    write_frame(stream, &[name.as_bytes()]).await?;
    let frame = read_frame(stream, MAX_SEALED_LEN + 1)
        .await?
        .ok_or_else(|| {
            Error::sealed(
                SealedErrorKind::Unavailable,
                "the parent closed the connection without an answer",
            )
        })?;
    match frame.split_first() {
        Some((0, doc)) => Ok(doc.to_vec()),
        Some((1, err)) => Err(Error::sealed(
            SealedErrorKind::Unavailable,
            format!(
                "the parent could not provide {name:?}: {}",
                String::from_utf8_lossy(err.get(..512).unwrap_or(err))
            ),
        )),
        _ => Err(Error::InvalidResponse {
            operation: PROTOCOL,
            reason: "the answer is neither a document nor an error".into(),
        }),
    }
}

/// Parent side of the file source: answers requests on `stream` with the documents `lookup`
/// returns, until the enclave closes the connection.
pub async fn serve_sealed<S, F>(mut stream: S, lookup: F) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&str) -> Result<Vec<u8>, String>,
{
    while let Some(name) = read_frame(&mut stream, 1024).await? {
        let answer = match std::str::from_utf8(&name) {
            Ok(name) => lookup(name),
            Err(_) => Err("the name is not UTF-8".into()),
        };
        match answer {
            Ok(doc) => write_frame(&mut stream, &[&[0], &doc]).await?,
            Err(e) => write_frame(&mut stream, &[&[1], e.as_bytes()]).await?,
        }
    }
    Ok(())
}

/// A `lookup` for [`serve_sealed`] reading `<dir>/<name>`; names are restricted to letters,
/// digits, `.`, `_` and `-` (no paths).
pub fn directory_lookup(
    dir: impl Into<std::path::PathBuf>,
) -> impl Fn(&str) -> Result<Vec<u8>, String> {
    let dir = dir.into();
    move |name: &str| {
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!("invalid name {name:?}"));
        }
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{name}: {e}"))?;
        if meta.len() > MAX_SEALED_LEN as u64 {
            return Err(format!("{name}: too large"));
        }
        std::fs::read(&path).map_err(|e| format!("{name}: {e}"))
    }
}

const PROTOCOL: &str = "sealed secret transfer";

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, parts: &[&[u8]]) -> Result<(), Error> {
    crate::frame::write_frame(stream, parts, MAX_SEALED_LEN + 1, PROTOCOL).await
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    crate::frame::read_frame(stream, max, PROTOCOL).await
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn doc(mode: &str, extra: &str) -> String {
        format!(
            r#"{{"format":"nitro-kms-sealed-secret","version":1,"key_id":"k","mode":"{mode}","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA=="{extra}}}"#
        )
    }

    #[test]
    fn parse_checks_structure() {
        assert!(SealedSecret::parse(doc("kms", "").as_bytes()).is_ok());
        let env = doc(
            "envelope",
            r#","encrypted_data_key":"AQ==","nonce":"AAAAAAAAAAAAAAAA""#,
        );
        assert!(SealedSecret::parse(env.as_bytes()).is_ok());
        for bad in [
            doc("kms", r#","nonce":"AAAAAAAAAAAAAAAA""#),
            doc("envelope", ""),
            doc("envelope", r#","encrypted_data_key":"AQ==","nonce":"AAAA""#),
            doc("other", ""),
            doc("kms", r#","surprise":1"#),
            doc("kms", "").replace("\"version\":1", "\"version\":2"),
            doc("kms", "").replace("nitro-kms-sealed-secret", "x"),
            "{}".into(),
            "".into(),
            "\u{0}".into(),
        ] {
            assert!(SealedSecret::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_source_protocol() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.sealed"), b"{sealed}").unwrap();
        let (mut enclave, parent) = tokio::io::duplex(16);
        let lookup = directory_lookup(dir.path().to_path_buf());
        let server = tokio::spawn(async move { serve_sealed(parent, lookup).await });
        assert_eq!(
            fetch_sealed(&mut enclave, "db.sealed").await.unwrap(),
            b"{sealed}"
        );
        for bad in ["../etc/passwd", "missing", ".hidden", ""] {
            let e = fetch_sealed(&mut enclave, bad).await.unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Sealed {
                        kind: SealedErrorKind::Unavailable,
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        drop(enclave);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn hostile_parent_frames() {
        // A huge announced length is refused without allocating it.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = read_frame(&mut b, 1024).await;
            let _ = b.write_all(&u32::MAX.to_be_bytes()).await;
        });
        assert!(fetch_sealed(&mut a, "x").await.is_err());
        // A truncated answer.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = read_frame(&mut b, 1024).await;
            let _ = b.write_all(&100u32.to_be_bytes()).await;
            let _ = b.write_all(&[0, 1, 2]).await;
        });
        assert!(fetch_sealed(&mut a, "x").await.is_err());
    }
}
