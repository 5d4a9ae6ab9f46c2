//! The asymmetric operations on stored key material (pure: bytes in, bytes out).

use aws_lc_rs::agreement::{self, UnparsedPublicKey as PeerKey};
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaEncoding, RsaKeyPair};

use super::store::{KeyEntry, KeyKind};
use crate::error::ServiceError;
use crate::secret::Plaintext;

fn internal(what: &str) -> ServiceError {
    ServiceError::new(500, "KMSInternalException", what)
}

fn usage_error(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "InvalidKeyUsageException", message)
}

fn validation(message: impl Into<String>) -> ServiceError {
    ServiceError::new(400, "ValidationException", message)
}

/// ECDH between a key-agreement key and a peer public key (DER SPKI).
pub(crate) fn ecdh(key: &KeyEntry, peer_spki: &[u8]) -> Result<Plaintext, ServiceError> {
    let alg = key
        .kind
        .agreement()
        .ok_or_else(|| usage_error("the key is not a KEY_AGREEMENT key"))?;
    let private = agreement::PrivateKey::from_private_key_der(alg, &key.material)
        .map_err(|_| internal("stored ECC key unreadable"))?;
    let invalid = validation("PublicKey is not a DER SubjectPublicKeyInfo on the key's curve");
    agreement::agree(&private, PeerKey::new(alg, peer_spki), invalid, |secret| {
        Ok(Plaintext::new(secret.to_vec()))
    })
}

/// The public key (DER SubjectPublicKeyInfo) of an asymmetric key.
pub(crate) fn public_key(key: &KeyEntry) -> Result<Vec<u8>, ServiceError> {
    let fail = |_| internal("public key encoding failed");
    let der: PublicKeyX509Der<'static> = if let Some(alg) = key.kind.agreement() {
        agreement::PrivateKey::from_private_key_der(alg, &key.material)
            .map_err(|_| internal("stored ECC key unreadable"))?
            .compute_public_key()
            .map_err(fail)?
            .as_der()
            .map_err(fail)?
    } else if let Some(alg) = key.kind.ecdsa() {
        EcdsaKeyPair::from_pkcs8(alg, &key.material)
            .map_err(|_| internal("stored ECC key unreadable"))?
            .public_key()
            .as_der()
            .map_err(fail)?
    } else if key.kind.rsa_size().is_some() {
        RsaKeyPair::from_pkcs8(&key.material)
            .map_err(|_| internal("stored RSA key unreadable"))?
            .public_key()
            .as_der()
            .map_err(fail)?
    } else {
        return Err(ServiceError::new(
            400,
            "UnsupportedOperationException",
            format!("{} is a symmetric key: it has no public key", key.id),
        ));
    };
    Ok(der.as_ref().to_vec())
}

/// `MessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageType {
    Raw,
    Digest,
}

impl MessageType {
    pub(crate) fn parse(s: Option<&str>) -> Result<Self, ServiceError> {
        match s {
            None | Some("RAW") => Ok(Self::Raw),
            Some("DIGEST") => Ok(Self::Digest),
            Some(other) => Err(validation(format!(
                "1 validation error detected: Value '{other}' at 'messageType' failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST]"
            ))),
        }
    }
}

/// A signing algorithm: digest, and RSA padding (`None` for ECDSA).
struct Scheme {
    digest: &'static digest::Algorithm,
    rsa: Option<(&'static dyn RsaEncoding, &'static signature::RsaParameters)>,
}

fn scheme(kind: KeyKind, algorithm: &str) -> Result<Scheme, ServiceError> {
    let known = [
        "ECDSA_SHA_256",
        "ECDSA_SHA_384",
        "ECDSA_SHA_512",
        "RSASSA_PSS_SHA_256",
        "RSASSA_PSS_SHA_384",
        "RSASSA_PSS_SHA_512",
        "RSASSA_PKCS1_V1_5_SHA_256",
        "RSASSA_PKCS1_V1_5_SHA_384",
        "RSASSA_PKCS1_V1_5_SHA_512",
    ];
    if !known.contains(&algorithm) && algorithm != "SM2DSA" && !algorithm.starts_with("ML_DSA") {
        return Err(validation(format!(
            "1 validation error detected: Value '{algorithm}' at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set"
        )));
    }
    if !kind.signing_algorithms().contains(&algorithm) {
        return Err(usage_error(format!(
            "{algorithm} is not a valid signing algorithm for a {} key",
            kind.spec()
        )));
    }
    let s = match algorithm {
        "ECDSA_SHA_256" => Scheme {
            digest: &digest::SHA256,
            rsa: None,
        },
        "ECDSA_SHA_384" => Scheme {
            digest: &digest::SHA384,
            rsa: None,
        },
        "ECDSA_SHA_512" => Scheme {
            digest: &digest::SHA512,
            rsa: None,
        },
        "RSASSA_PSS_SHA_256" => Scheme {
            digest: &digest::SHA256,
            rsa: Some((
                &signature::RSA_PSS_SHA256,
                &signature::RSA_PSS_2048_8192_SHA256,
            )),
        },
        "RSASSA_PSS_SHA_384" => Scheme {
            digest: &digest::SHA384,
            rsa: Some((
                &signature::RSA_PSS_SHA384,
                &signature::RSA_PSS_2048_8192_SHA384,
            )),
        },
        "RSASSA_PSS_SHA_512" => Scheme {
            digest: &digest::SHA512,
            rsa: Some((
                &signature::RSA_PSS_SHA512,
                &signature::RSA_PSS_2048_8192_SHA512,
            )),
        },
        "RSASSA_PKCS1_V1_5_SHA_256" => Scheme {
            digest: &digest::SHA256,
            rsa: Some((
                &signature::RSA_PKCS1_SHA256,
                &signature::RSA_PKCS1_2048_8192_SHA256,
            )),
        },
        "RSASSA_PKCS1_V1_5_SHA_384" => Scheme {
            digest: &digest::SHA384,
            rsa: Some((
                &signature::RSA_PKCS1_SHA384,
                &signature::RSA_PKCS1_2048_8192_SHA384,
            )),
        },
        "RSASSA_PKCS1_V1_5_SHA_512" => Scheme {
            digest: &digest::SHA512,
            rsa: Some((
                &signature::RSA_PKCS1_SHA512,
                &signature::RSA_PKCS1_2048_8192_SHA512,
            )),
        },
        _ => return Err(usage_error(format!("{algorithm} is not supported"))),
    };
    Ok(s)
}

/// The digest to sign: the message hashed (`RAW`) or the message itself (`DIGEST`, whose
/// length must be the algorithm's digest length).
fn message_digest(
    scheme: &Scheme,
    message: &[u8],
    message_type: MessageType,
) -> Result<Digest, ServiceError> {
    match message_type {
        MessageType::Raw => Ok(digest::digest(scheme.digest, message)),
        MessageType::Digest => Digest::import_less_safe(message, scheme.digest).map_err(|_| {
            validation(format!(
                "Digest is invalid length for algorithm: a DIGEST message must be {} bytes",
                scheme.digest.output_len()
            ))
        }),
    }
}

fn not_signing(key: &KeyEntry) -> ServiceError {
    usage_error(format!(
        "{} key usage is {}, not SIGN_VERIFY",
        key.id,
        key.kind.usage().name()
    ))
}

/// Checks that `key` signs with `algorithm` (`InvalidKeyUsageException` otherwise).
pub(crate) fn check_signing(key: &KeyEntry, algorithm: &str) -> Result<(), ServiceError> {
    if key.kind.signing_algorithms().is_empty() {
        return Err(not_signing(key));
    }
    scheme(key.kind, algorithm).map(|_| ())
}

/// Signs `message` (DER ECDSA signatures, as KMS returns them).
pub(crate) fn sign(
    key: &KeyEntry,
    algorithm: &str,
    message: &[u8],
    message_type: MessageType,
) -> Result<Vec<u8>, ServiceError> {
    if key.kind.signing_algorithms().is_empty() {
        return Err(not_signing(key));
    }
    let scheme = scheme(key.kind, algorithm)?;
    let digest = message_digest(&scheme, message, message_type)?;
    let fail = |_| internal("signing failed");
    if let Some(alg) = key.kind.ecdsa() {
        let kp = EcdsaKeyPair::from_pkcs8(alg, &key.material)
            .map_err(|_| internal("stored ECC key unreadable"))?;
        return Ok(kp.sign_digest(&digest).map_err(fail)?.as_ref().to_vec());
    }
    let (padding, _) = scheme.rsa.ok_or_else(|| internal("RSA scheme missing"))?;
    let kp =
        RsaKeyPair::from_pkcs8(&key.material).map_err(|_| internal("stored RSA key unreadable"))?;
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign_digest(padding, &digest, &mut sig).map_err(fail)?;
    Ok(sig)
}

/// Verifies a signature made by [`sign`] (or by anyone holding the private key).
pub(crate) fn verify(
    key: &KeyEntry,
    algorithm: &str,
    message: &[u8],
    message_type: MessageType,
    sig: &[u8],
) -> Result<bool, ServiceError> {
    if key.kind.signing_algorithms().is_empty() {
        return Err(not_signing(key));
    }
    let scheme = scheme(key.kind, algorithm)?;
    let digest = message_digest(&scheme, message, message_type)?;
    let ok = if let Some(alg) = key.kind.ecdsa() {
        let kp = EcdsaKeyPair::from_pkcs8(alg, &key.material)
            .map_err(|_| internal("stored ECC key unreadable"))?;
        let verify_alg: &'static signature::EcdsaVerificationAlgorithm = match key.kind {
            KeyKind::SignP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyKind::SignP384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyKind::SignP521 => &signature::ECDSA_P521_SHA512_ASN1,
            _ => &signature::ECDSA_P256K1_SHA256_ASN1,
        };
        signature::UnparsedPublicKey::new(verify_alg, kp.public_key().as_ref())
            .verify_digest(&digest, sig)
            .is_ok()
    } else {
        let (_, params) = scheme.rsa.ok_or_else(|| internal("RSA scheme missing"))?;
        let kp = RsaKeyPair::from_pkcs8(&key.material)
            .map_err(|_| internal("stored RSA key unreadable"))?;
        signature::UnparsedPublicKey::new(params, kp.public_key().as_ref())
            .verify_digest(&digest, sig)
            .is_ok()
    };
    Ok(ok)
}

fn oaep(key: &KeyEntry, algorithm: &str) -> Result<&'static OaepAlgorithm, ServiceError> {
    if !key.kind.encryption_algorithms().contains(&algorithm) {
        return Err(usage_error(format!(
            "{algorithm} is not a valid encryption algorithm for a {} {} key",
            key.kind.spec(),
            key.kind.usage().name()
        )));
    }
    match algorithm {
        "RSAES_OAEP_SHA_1" => Ok(&OAEP_SHA1_MGF1SHA1),
        "RSAES_OAEP_SHA_256" => Ok(&OAEP_SHA256_MGF1SHA256),
        _ => Err(usage_error(format!("{algorithm} is not an RSA algorithm"))),
    }
}

/// RSAES-OAEP encryption with an RSA `ENCRYPT_DECRYPT` key.
pub(crate) fn rsa_encrypt(
    key: &KeyEntry,
    algorithm: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, ServiceError> {
    let alg = oaep(key, algorithm)?;
    let private = PrivateDecryptingKey::from_pkcs8(&key.material)
        .map_err(|_| internal("stored RSA key unreadable"))?;
    let public = OaepPublicEncryptingKey::new(private.public_key())
        .map_err(|_| internal("stored RSA key unusable"))?;
    let max = public.max_plaintext_size(alg);
    if plaintext.len() > max {
        return Err(validation(format!(
            "Plaintext is too long: {algorithm} with a {} key encrypts at most {max} bytes",
            key.kind.spec()
        )));
    }
    let mut out = vec![0u8; public.ciphertext_size()];
    let len = public
        .encrypt(alg, plaintext, &mut out, None)
        .map_err(|_| internal("RSA encryption failed"))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// RSAES-OAEP decryption (`InvalidCiphertextException` when it fails).
pub(crate) fn rsa_decrypt(
    key: &KeyEntry,
    algorithm: &str,
    ciphertext: &[u8],
) -> Result<Plaintext, ServiceError> {
    let alg = oaep(key, algorithm)?;
    let private = OaepPrivateDecryptingKey::new(
        PrivateDecryptingKey::from_pkcs8(&key.material)
            .map_err(|_| internal("stored RSA key unreadable"))?,
    )
    .map_err(|_| internal("stored RSA key unusable"))?;
    let mut out = zeroize::Zeroizing::new(vec![0u8; private.min_output_size()]);
    let len = private
        .decrypt(alg, ciphertext, &mut out, None)
        .map_err(|_| ServiceError::new(400, "InvalidCiphertextException", ""))?
        .len();
    out.truncate(len);
    Ok(Plaintext::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::store::generate_material;

    fn key(kind: KeyKind) -> KeyEntry {
        let mut k = KeyEntry::generate(kind, String::new(), String::new(), 0.0).unwrap();
        k.material = generate_material(kind).unwrap();
        k
    }

    #[test]
    fn raw_and_digest_signatures_verify_both_ways() {
        for (kind, algs) in [
            (KeyKind::SignP256, &["ECDSA_SHA_256"][..]),
            (KeyKind::SignP384, &["ECDSA_SHA_384"]),
            (KeyKind::SignP521, &["ECDSA_SHA_512"]),
            (KeyKind::SignSecp256k1, &["ECDSA_SHA_256"]),
            (
                KeyKind::SignRsa2048,
                &["RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_512"],
            ),
        ] {
            let k = key(kind);
            for alg in algs {
                let s = scheme(kind, alg).unwrap();
                let msg = b"message";
                let digest = digest::digest(s.digest, msg);
                let raw = sign(&k, alg, msg, MessageType::Raw).unwrap();
                // A RAW signature verifies as a DIGEST signature of the message's hash, and
                // the other way round.
                assert!(verify(&k, alg, digest.as_ref(), MessageType::Digest, &raw).unwrap());
                let dig = sign(&k, alg, digest.as_ref(), MessageType::Digest).unwrap();
                assert!(verify(&k, alg, msg, MessageType::Raw, &dig).unwrap());
                assert!(!verify(&k, alg, b"other", MessageType::Raw, &dig).unwrap());
                let e = sign(&k, alg, &[0; 20], MessageType::Digest).unwrap_err();
                assert_eq!(e.code, "ValidationException");
                if kind.ecdsa().is_some() {
                    // DER: SEQUENCE of two INTEGERs.
                    assert_eq!(raw[0], 0x30, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn algorithms_and_usages_are_checked() {
        let p384 = key(KeyKind::SignP384);
        let e = sign(&p384, "ECDSA_SHA_256", b"m", MessageType::Raw).unwrap_err();
        assert_eq!(e.code, "InvalidKeyUsageException");
        let e = sign(&p384, "NOT_AN_ALGORITHM", b"m", MessageType::Raw).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        let agreement = key(KeyKind::EccP256);
        let e = sign(&agreement, "ECDSA_SHA_256", b"m", MessageType::Raw).unwrap_err();
        assert_eq!(e.code, "InvalidKeyUsageException");
        let e = rsa_encrypt(&p384, "RSAES_OAEP_SHA_256", b"m").unwrap_err();
        assert_eq!(e.code, "InvalidKeyUsageException");
        assert!(MessageType::parse(Some("EXTERNAL_MU")).is_err());
    }

    #[test]
    fn rsa_oaep_round_trips_and_bounds() {
        let k = key(KeyKind::EncryptRsa2048);
        for (alg, max) in [("RSAES_OAEP_SHA_1", 214), ("RSAES_OAEP_SHA_256", 190)] {
            let ct = rsa_encrypt(&k, alg, &vec![7; max]).unwrap();
            assert_eq!(ct.len(), 256);
            assert_eq!(rsa_decrypt(&k, alg, &ct).unwrap().as_bytes(), vec![7; max]);
            assert_eq!(
                rsa_encrypt(&k, alg, &vec![7; max + 1]).unwrap_err().code,
                "ValidationException"
            );
            let mut bad = ct.clone();
            bad[10] ^= 1;
            assert_eq!(
                rsa_decrypt(&k, alg, &bad).unwrap_err().code,
                "InvalidCiphertextException"
            );
        }
        let spki = public_key(&k).unwrap();
        assert!(aws_lc_rs::rsa::PublicEncryptingKey::from_der(&spki).is_ok());
    }
}
