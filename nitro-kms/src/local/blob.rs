//! The ciphertext blob of symmetric keys (pure).
//!
//! Version 2 (written): `0x02` ‖ key id length (1 byte) ‖ key id ‖ material version (4 bytes,
//! big endian: the index of the key material, which rotation increments) ‖ 12-byte nonce ‖
//! AES-256-GCM(plaintext) ‖ 16-byte tag. The AAD binds the format, the key id, the material
//! version and the encryption context (sorted, length-prefixed).
//!
//! Version 1 (read, from before rotation existed): `0x01` ‖ key id length ‖ key id ‖ nonce ‖
//! ciphertext ‖ tag, always material version 0.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::wire::Context;
use crate::error::ServiceError;
use crate::secret::Plaintext;

const V1: u8 = 1;
const V2: u8 = 2;
const TAG_LEN: usize = 16;

/// A parsed blob.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Blob<'a> {
    pub(crate) format: u8,
    pub(crate) key_id: &'a str,
    pub(crate) version: u32,
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) sealed: &'a [u8],
}

fn aad(format: u8, key_id: &str, version: u32, context: Option<&Context>) -> Vec<u8> {
    let mut aad = if format == V1 {
        b"nitro-kms local ciphertext v1\0".to_vec()
    } else {
        b"nitro-kms local ciphertext v2\0".to_vec()
    };
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    if format != V1 {
        aad.extend_from_slice(&version.to_be_bytes());
    }
    for (k, v) in context.into_iter().flatten() {
        aad.extend_from_slice(&(k.len() as u32).to_be_bytes());
        aad.extend_from_slice(k.as_bytes());
        aad.extend_from_slice(&(v.len() as u32).to_be_bytes());
        aad.extend_from_slice(v.as_bytes());
    }
    aad
}

fn internal(what: &str) -> ServiceError {
    ServiceError::new(500, "KMSInternalException", what)
}

fn invalid() -> ServiceError {
    ServiceError::new(400, "InvalidCiphertextException", "")
}

/// Encrypts under `material` (version `version` of key `key_id`).
pub(crate) fn seal(
    key_id: &str,
    version: u32,
    material: &[u8],
    plaintext: &[u8],
    context: Option<&Context>,
) -> Result<Vec<u8>, ServiceError> {
    let id_len = u8::try_from(key_id.len()).map_err(|_| internal("key id too long"))?;
    let aead = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, material).map_err(|_| internal("bad key material"))?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| internal("no randomness"))?;
    let mut buf = Zeroizing::new(plaintext.to_vec());
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(V2, key_id, version, context)),
        &mut *buf,
    )
    .map_err(|_| internal("encryption failed"))?;
    let mut blob = Vec::with_capacity(2 + key_id.len() + 4 + NONCE_LEN + buf.len());
    blob.extend_from_slice(&[V2, id_len]);
    blob.extend_from_slice(key_id.as_bytes());
    blob.extend_from_slice(&version.to_be_bytes());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&buf);
    Ok(blob)
}

/// Parses a blob (`None`: not a blob of this local KMS).
pub(crate) fn parse(blob: &[u8]) -> Option<Blob<'_>> {
    let (&format, rest) = blob.split_first()?;
    if format != V1 && format != V2 {
        return None;
    }
    let (&id_len, rest) = rest.split_first()?;
    let key_id = std::str::from_utf8(rest.get(..usize::from(id_len))?).ok()?;
    let rest = rest.get(usize::from(id_len)..)?;
    let (version, rest) = if format == V2 {
        let v: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        (u32::from_be_bytes(v), rest.get(4..)?)
    } else {
        (0, rest)
    };
    let nonce: [u8; NONCE_LEN] = rest.get(..NONCE_LEN)?.try_into().ok()?;
    let sealed = rest.get(NONCE_LEN..)?;
    if sealed.len() < TAG_LEN {
        return None;
    }
    Some(Blob {
        format,
        key_id,
        version,
        nonce,
        sealed,
    })
}

/// Opens a parsed blob with the material of its version.
pub(crate) fn open(
    blob: &Blob<'_>,
    material: &[u8],
    context: Option<&Context>,
) -> Result<Plaintext, ServiceError> {
    let aead = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, material).map_err(|_| internal("bad key material"))?,
    );
    let mut buf = Zeroizing::new(blob.sealed.to_vec());
    let len = aead
        .open_in_place(
            Nonce::assume_unique_for_key(blob.nonce),
            Aad::from(aad(blob.format, blob.key_id, blob.version, context)),
            &mut buf,
        )
        .map_err(|_| invalid())?
        .len();
    buf.truncate(len);
    Ok(Plaintext::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn ctx(v: &str) -> Context {
        [("app".to_owned(), v.to_owned())].into_iter().collect()
    }

    #[test]
    fn round_trip_binds_key_version_and_context() {
        let blob = seal("k1", 3, &KEY, b"secret", Some(&ctx("a"))).unwrap();
        let parsed = parse(&blob).unwrap();
        assert_eq!((parsed.key_id, parsed.version), ("k1", 3));
        assert_eq!(
            open(&parsed, &KEY, Some(&ctx("a"))).unwrap().as_bytes(),
            b"secret"
        );
        assert!(open(&parsed, &KEY, Some(&ctx("b"))).is_err());
        assert!(open(&parsed, &KEY, None).is_err());
        assert!(open(&parsed, &[8; 32], Some(&ctx("a"))).is_err());
        // Another version number in the header: the AAD no longer matches.
        let mut other = blob.clone();
        let at = 2 + 2 + 3;
        other[at] ^= 1;
        assert!(open(&parse(&other).unwrap(), &KEY, Some(&ctx("a"))).is_err());
    }

    #[test]
    fn version_1_blobs_still_open() {
        // A version 1 blob as the previous release wrote it.
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
        let nonce = [9u8; NONCE_LEN];
        let mut buf = b"old".to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(V1, "k1", 0, None)),
            &mut buf,
        )
        .unwrap();
        let mut blob = vec![V1, 2];
        blob.extend_from_slice(b"k1");
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&buf);
        let parsed = parse(&blob).unwrap();
        assert_eq!((parsed.format, parsed.version), (V1, 0));
        assert_eq!(open(&parsed, &KEY, None).unwrap().as_bytes(), b"old");
    }

    #[test]
    fn garbage_is_not_a_blob() {
        for b in [
            &[][..],
            &[2],
            &[2, 5, b'a'],
            &[3, 0, 0, 0, 0, 0],
            &[1, 0][..],
        ] {
            assert!(parse(b).is_none(), "{b:?}");
        }
        let blob = seal("k", 0, &KEY, b"x", None).unwrap();
        for cut in 0..blob.len() - TAG_LEN - 1 {
            let _ = parse(&blob[..cut]).map(|p| open(&p, &KEY, None));
        }
    }
}
