//! Keys of the local KMS, in memory and optionally in a JSON state file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, ECDH_P521, UnparsedPublicKey};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256K1_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, ServiceError};
use crate::secret::Plaintext;

/// What a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyKind {
    /// AES-256 (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`).
    Symmetric,
    /// P-256 key agreement.
    EccP256,
    /// P-384 key agreement.
    EccP384,
    /// P-521 key agreement.
    EccP521,
}

impl KeyKind {
    pub(crate) fn from_spec(spec: &str, usage: &str) -> Result<Self, ServiceError> {
        let unsupported = || {
            ServiceError::new(
                400,
                "UnsupportedOperationException",
                format!(
                    "the local KMS supports SYMMETRIC_DEFAULT/ENCRYPT_DECRYPT and ECC_NIST_P256|P384|P521/KEY_AGREEMENT keys, not {spec}/{usage}"
                ),
            )
        };
        match (spec, usage) {
            ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT") => Ok(Self::Symmetric),
            ("ECC_NIST_P256", "KEY_AGREEMENT") => Ok(Self::EccP256),
            ("ECC_NIST_P384", "KEY_AGREEMENT") => Ok(Self::EccP384),
            ("ECC_NIST_P521", "KEY_AGREEMENT") => Ok(Self::EccP521),
            _ => Err(unsupported()),
        }
    }

    pub(crate) fn spec(self) -> &'static str {
        match self {
            Self::Symmetric => "SYMMETRIC_DEFAULT",
            Self::EccP256 => "ECC_NIST_P256",
            Self::EccP384 => "ECC_NIST_P384",
            Self::EccP521 => "ECC_NIST_P521",
        }
    }

    fn agreement(self) -> Option<&'static agreement::Algorithm> {
        match self {
            Self::Symmetric => None,
            Self::EccP256 => Some(&ECDH_P256),
            Self::EccP384 => Some(&ECDH_P384),
            Self::EccP521 => Some(&ECDH_P521),
        }
    }
}

/// One key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub(crate) id: String,
    pub(crate) kind: KeyKind,
    /// AES key bytes, or the PKCS#8 DER of an ECC private key.
    #[serde(with = "secret_b64")]
    pub(crate) material: Zeroizing<Vec<u8>>,
    pub(crate) policy: String,
    pub(crate) description: String,
    /// Seconds since the Unix epoch.
    pub(crate) created: f64,
    pub(crate) enabled: bool,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

mod secret_b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        v: &Zeroizing<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(STANDARD.encode(v.as_slice())))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        let mut out = Zeroizing::new(Vec::new());
        STANDARD
            .decode_vec(s.as_bytes(), &mut out)
            .map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

fn internal(e: impl fmt::Display) -> ServiceError {
    ServiceError::new(500, "KMSInternalException", e.to_string())
}

impl KeyEntry {
    pub(crate) fn generate(
        kind: KeyKind,
        policy: String,
        description: String,
        created: f64,
    ) -> Result<Self, ServiceError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; 16];
        rng.fill(&mut id).map_err(|_| internal("no randomness"))?;
        id[6] = (id[6] & 0x0f) | 0x40; // UUID version 4
        id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
        let h = hex::encode(id);
        let id = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let material = match kind.agreement() {
            None => {
                let mut k = Zeroizing::new(vec![0u8; 32]);
                rng.fill(&mut k).map_err(|_| internal("no randomness"))?;
                k
            }
            Some(alg) => {
                let key = agreement::PrivateKey::generate(alg)
                    .map_err(|_| internal("ECC key generation failed"))?;
                let der: Pkcs8V1Der<'static> = key
                    .as_der()
                    .map_err(|_| internal("ECC key encoding failed"))?;
                Zeroizing::new(der.as_ref().to_vec())
            }
        };
        Ok(Self {
            id,
            kind,
            material,
            policy,
            description,
            created,
            enabled: true,
        })
    }
}

/// ECDH between a KMS key-agreement key and a peer public key (DER SPKI).
pub(crate) fn ecdh(key: &KeyEntry, peer_spki: &[u8]) -> Result<Plaintext, ServiceError> {
    let alg = key.kind.agreement().ok_or_else(|| {
        ServiceError::new(
            400,
            "InvalidKeyUsageException",
            "the key is not a KEY_AGREEMENT key",
        )
    })?;
    let private = agreement::PrivateKey::from_private_key_der(alg, &key.material)
        .map_err(|_| internal("stored ECC key unreadable"))?;
    let invalid = ServiceError::new(
        400,
        "ValidationException",
        "PublicKey is not a DER SubjectPublicKeyInfo on the key's curve",
    );
    agreement::agree(
        &private,
        UnparsedPublicKey::new(alg, peer_spki),
        invalid,
        |secret| Ok(Plaintext::new(secret.to_vec())),
    )
}

/// The public key (DER SPKI) of a key-agreement key.
pub(crate) fn public_key(key: &KeyEntry) -> Result<Vec<u8>, ServiceError> {
    let alg = key.kind.agreement().ok_or_else(|| {
        ServiceError::new(
            400,
            "UnsupportedOperationException",
            "symmetric keys have no public key",
        )
    })?;
    let private = agreement::PrivateKey::from_private_key_der(alg, &key.material)
        .map_err(|_| internal("stored ECC key unreadable"))?;
    let public = private
        .compute_public_key()
        .map_err(|_| internal("public key computation failed"))?;
    let der: PublicKeyX509Der<'static> = public
        .as_der()
        .map_err(|_| internal("public key encoding failed"))?;
    Ok(der.as_ref().to_vec())
}

/// A data key pair for `GenerateDataKeyPair`: (PKCS#8 private key, SPKI public key).
pub(crate) fn generate_key_pair(spec: &str) -> Result<(Plaintext, Vec<u8>), ServiceError> {
    let fail = |_| internal("key pair generation failed");
    let rsa = |size: KeySize| -> Result<(Plaintext, Vec<u8>), ServiceError> {
        let kp = aws_lc_rs::rsa::KeyPair::generate(size).map_err(fail)?;
        let private: Pkcs8V1Der<'static> = kp.as_der().map_err(fail)?;
        let public: PublicKeyX509Der<'static> = kp.public_key().as_der().map_err(fail)?;
        Ok((
            Plaintext::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    let ec = |alg| -> Result<(Plaintext, Vec<u8>), ServiceError> {
        let kp = EcdsaKeyPair::generate(alg).map_err(fail)?;
        let private = kp.to_pkcs8v1().map_err(fail)?;
        let public: PublicKeyX509Der<'static> = kp.public_key().as_der().map_err(fail)?;
        Ok((
            Plaintext::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    match spec {
        "RSA_2048" => rsa(KeySize::Rsa2048),
        "RSA_3072" => rsa(KeySize::Rsa3072),
        "RSA_4096" => rsa(KeySize::Rsa4096),
        "ECC_NIST_P256" => ec(&ECDSA_P256_SHA256_ASN1_SIGNING),
        "ECC_NIST_P384" => ec(&ECDSA_P384_SHA384_ASN1_SIGNING),
        "ECC_NIST_P521" => ec(&ECDSA_P521_SHA512_ASN1_SIGNING),
        "ECC_SECG_P256K1" => ec(&ECDSA_P256K1_SHA256_ASN1_SIGNING),
        other => Err(ServiceError::new(
            400,
            "ValidationException",
            format!("KeyPairSpec {other} is not supported"),
        )),
    }
}

/// All keys.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Store {
    #[serde(default)]
    pub(crate) keys: BTreeMap<String, KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    keys: Vec<KeyEntry>,
}

const STATE_FORMAT: &str = "nitro-kms-local-state";
/// Largest state file read.
const MAX_STATE: u64 = 256 * 1024 * 1024;

impl Store {
    /// Loads `path`, or an empty store when it does not exist.
    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        if len > MAX_STATE {
            return Err(Error::Config(format!("{} is too large", path.display())));
        }
        let text = Zeroizing::new(
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
        );
        let state: StateFile = serde_json::from_slice(&text).map_err(|e| {
            Error::Config(format!(
                "{} is not a local KMS state file: {e}",
                path.display()
            ))
        })?;
        if state.format != STATE_FORMAT || state.version != 1 {
            return Err(Error::Config(format!(
                "{}: unsupported state format {} v{}",
                path.display(),
                state.format,
                state.version
            )));
        }
        let mut store = Self::default();
        for k in state.keys {
            store.keys.insert(k.id.clone(), k);
        }
        Ok(store)
    }

    /// Writes the store to `path` atomically (temporary file, fsync, rename), mode 0600.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let state = StateFile {
            format: STATE_FORMAT.into(),
            version: 1,
            keys: self.keys.values().cloned().collect(),
        };
        let text =
            Zeroizing::new(serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
