//! Keys of the local KMS, in memory and optionally in a JSON state file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, ECDH_P521};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256K1_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, ServiceError};
use crate::secret::Plaintext;

/// What a key is. The first four variant names are those of state file version 1.
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
    /// P-256 ECDSA (`SIGN_VERIFY`).
    SignP256,
    /// P-384 ECDSA.
    SignP384,
    /// P-521 ECDSA.
    SignP521,
    /// secp256k1 ECDSA.
    SignSecp256k1,
    /// RSA-2048 signatures (PSS and PKCS#1 v1.5).
    SignRsa2048,
    /// RSA-3072 signatures.
    SignRsa3072,
    /// RSA-4096 signatures.
    SignRsa4096,
    /// RSA-2048 OAEP encryption.
    EncryptRsa2048,
    /// RSA-3072 OAEP encryption.
    EncryptRsa3072,
    /// RSA-4096 OAEP encryption.
    EncryptRsa4096,
}

/// What a key is used for (`KeyUsage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    EncryptDecrypt,
    SignVerify,
    KeyAgreement,
}

impl Usage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::EncryptDecrypt => "ENCRYPT_DECRYPT",
            Self::SignVerify => "SIGN_VERIFY",
            Self::KeyAgreement => "KEY_AGREEMENT",
        }
    }
}

const ECDSA_256: &[&str] = &["ECDSA_SHA_256"];
const ECDSA_384: &[&str] = &["ECDSA_SHA_384"];
const ECDSA_512: &[&str] = &["ECDSA_SHA_512"];
const RSA_SIGNING: &[&str] = &[
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
];
const RSA_ENCRYPTION: &[&str] = &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"];

impl KeyKind {
    /// The kind for a `KeySpec` and `KeyUsage` (`None`: `ENCRYPT_DECRYPT`, as AWS defaults).
    pub(crate) fn from_spec(spec: &str, usage: Option<&str>) -> Result<Self, ServiceError> {
        let known_spec = matches!(
            spec,
            "SYMMETRIC_DEFAULT"
                | "ECC_NIST_P256"
                | "ECC_NIST_P384"
                | "ECC_NIST_P521"
                | "ECC_SECG_P256K1"
                | "RSA_2048"
                | "RSA_3072"
                | "RSA_4096"
        );
        if !known_spec {
            let code = if matches!(
                spec,
                "HMAC_224" | "HMAC_256" | "HMAC_384" | "HMAC_512" | "SM2"
            ) || spec.starts_with("ML_DSA")
            {
                "UnsupportedOperationException"
            } else {
                "ValidationException"
            };
            return Err(ServiceError::new(
                400,
                code,
                format!("KeySpec {spec} is not supported by the local KMS"),
            ));
        }
        // AWS's default KeyUsage is ENCRYPT_DECRYPT whatever the KeySpec.
        let usage = usage.unwrap_or("ENCRYPT_DECRYPT");
        let kind = match (spec, usage) {
            ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT") => Self::Symmetric,
            ("ECC_NIST_P256", "KEY_AGREEMENT") => Self::EccP256,
            ("ECC_NIST_P384", "KEY_AGREEMENT") => Self::EccP384,
            ("ECC_NIST_P521", "KEY_AGREEMENT") => Self::EccP521,
            ("ECC_NIST_P256", "SIGN_VERIFY") => Self::SignP256,
            ("ECC_NIST_P384", "SIGN_VERIFY") => Self::SignP384,
            ("ECC_NIST_P521", "SIGN_VERIFY") => Self::SignP521,
            ("ECC_SECG_P256K1", "SIGN_VERIFY") => Self::SignSecp256k1,
            ("RSA_2048", "SIGN_VERIFY") => Self::SignRsa2048,
            ("RSA_3072", "SIGN_VERIFY") => Self::SignRsa3072,
            ("RSA_4096", "SIGN_VERIFY") => Self::SignRsa4096,
            ("RSA_2048", "ENCRYPT_DECRYPT") => Self::EncryptRsa2048,
            ("RSA_3072", "ENCRYPT_DECRYPT") => Self::EncryptRsa3072,
            ("RSA_4096", "ENCRYPT_DECRYPT") => Self::EncryptRsa4096,
            _ => {
                return Err(ServiceError::new(
                    400,
                    "ValidationException",
                    format!("KeyUsage {usage} is not compatible with KeySpec {spec}"),
                ));
            }
        };
        Ok(kind)
    }

    pub(crate) fn spec(self) -> &'static str {
        match self {
            Self::Symmetric => "SYMMETRIC_DEFAULT",
            Self::EccP256 | Self::SignP256 => "ECC_NIST_P256",
            Self::EccP384 | Self::SignP384 => "ECC_NIST_P384",
            Self::EccP521 | Self::SignP521 => "ECC_NIST_P521",
            Self::SignSecp256k1 => "ECC_SECG_P256K1",
            Self::SignRsa2048 | Self::EncryptRsa2048 => "RSA_2048",
            Self::SignRsa3072 | Self::EncryptRsa3072 => "RSA_3072",
            Self::SignRsa4096 | Self::EncryptRsa4096 => "RSA_4096",
        }
    }

    pub(crate) fn usage(self) -> Usage {
        match self {
            Self::Symmetric
            | Self::EncryptRsa2048
            | Self::EncryptRsa3072
            | Self::EncryptRsa4096 => Usage::EncryptDecrypt,
            Self::EccP256 | Self::EccP384 | Self::EccP521 => Usage::KeyAgreement,
            _ => Usage::SignVerify,
        }
    }

    pub(crate) fn is_symmetric(self) -> bool {
        self == Self::Symmetric
    }

    pub(crate) fn encryption_algorithms(self) -> &'static [&'static str] {
        match self {
            Self::Symmetric => &["SYMMETRIC_DEFAULT"],
            Self::EncryptRsa2048 | Self::EncryptRsa3072 | Self::EncryptRsa4096 => RSA_ENCRYPTION,
            _ => &[],
        }
    }

    pub(crate) fn signing_algorithms(self) -> &'static [&'static str] {
        match self {
            Self::SignP256 | Self::SignSecp256k1 => ECDSA_256,
            Self::SignP384 => ECDSA_384,
            Self::SignP521 => ECDSA_512,
            Self::SignRsa2048 | Self::SignRsa3072 | Self::SignRsa4096 => RSA_SIGNING,
            _ => &[],
        }
    }

    pub(crate) fn key_agreement_algorithms(self) -> &'static [&'static str] {
        match self.usage() {
            Usage::KeyAgreement => &["ECDH"],
            _ => &[],
        }
    }

    pub(crate) fn agreement(self) -> Option<&'static agreement::Algorithm> {
        match self {
            Self::EccP256 => Some(&ECDH_P256),
            Self::EccP384 => Some(&ECDH_P384),
            Self::EccP521 => Some(&ECDH_P521),
            _ => None,
        }
    }

    pub(crate) fn ecdsa(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            Self::SignP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
            Self::SignP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
            Self::SignP521 => Some(&ECDSA_P521_SHA512_ASN1_SIGNING),
            Self::SignSecp256k1 => Some(&ECDSA_P256K1_SHA256_ASN1_SIGNING),
            _ => None,
        }
    }

    pub(crate) fn rsa_size(self) -> Option<KeySize> {
        match self {
            Self::SignRsa2048 | Self::EncryptRsa2048 => Some(KeySize::Rsa2048),
            Self::SignRsa3072 | Self::EncryptRsa3072 => Some(KeySize::Rsa3072),
            Self::SignRsa4096 | Self::EncryptRsa4096 => Some(KeySize::Rsa4096),
            _ => None,
        }
    }
}

/// Key material (AES key bytes, or the PKCS#8 DER of a private key), base64 in the state file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Material(#[serde(with = "secret_b64")] pub(crate) Zeroizing<Vec<u8>>);

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Material(..)")
    }
}

/// Automatic rotation of a symmetric key.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rotation {
    /// Days between rotations (90 to 2560).
    pub(crate) period_days: u32,
    /// When the next rotation is due (seconds since the Unix epoch).
    pub(crate) next: f64,
}

/// A scheduled deletion.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Deletion {
    /// When the key is deleted (seconds since the Unix epoch).
    pub(crate) date: f64,
    /// The waiting period asked for (7 to 30 days).
    pub(crate) window_days: u32,
}

/// The state of a key (`KeyState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
        }
    }
}

/// One key. Fields after `enabled` were added in state file version 2 and default when absent.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub(crate) id: String,
    pub(crate) kind: KeyKind,
    /// The current key material.
    #[serde(with = "secret_b64")]
    pub(crate) material: Zeroizing<Vec<u8>>,
    pub(crate) policy: String,
    pub(crate) description: String,
    /// Seconds since the Unix epoch.
    pub(crate) created: f64,
    pub(crate) enabled: bool,
    /// Material replaced by rotations, oldest first: ciphertexts name the material by its index
    /// here (the current material's index is `previous.len()`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) previous: Vec<Material>,
    /// Dates of the rotations (seconds since the Unix epoch), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rotated_at: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rotation: Option<Rotation>,
    /// `RotateKeyOnDemand` calls so far (AWS allows 10 per key).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) on_demand_rotations: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deletion: Option<Deletion>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) tags: BTreeMap<String, String>,
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

/// Fresh material for a key of `kind`.
pub(crate) fn generate_material(kind: KeyKind) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    let fail = |_| internal("key generation failed");
    if kind.is_symmetric() {
        let mut k = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| internal("no randomness"))?;
        return Ok(k);
    }
    if let Some(alg) = kind.agreement() {
        let key = agreement::PrivateKey::generate(alg).map_err(fail)?;
        let der: Pkcs8V1Der<'static> = key.as_der().map_err(fail)?;
        return Ok(Zeroizing::new(der.as_ref().to_vec()));
    }
    if let Some(alg) = kind.ecdsa() {
        let kp = EcdsaKeyPair::generate(alg).map_err(fail)?;
        let der = kp.to_pkcs8v1().map_err(fail)?;
        return Ok(Zeroizing::new(der.as_ref().to_vec()));
    }
    let size = kind
        .rsa_size()
        .ok_or_else(|| internal("unknown key kind"))?;
    let kp = aws_lc_rs::rsa::KeyPair::generate(size).map_err(fail)?;
    let der: Pkcs8V1Der<'static> = kp.as_der().map_err(fail)?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

/// A random version 4 UUID.
fn uuid() -> Result<String, ServiceError> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| internal("no randomness"))?;
    id[6] = (id[6] & 0x0f) | 0x40; // UUID version 4
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex::encode(id);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Seconds in a day.
pub(crate) const DAY: f64 = 86_400.0;

impl KeyEntry {
    pub(crate) fn generate(
        kind: KeyKind,
        policy: String,
        description: String,
        created: f64,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            id: uuid()?,
            kind,
            material: generate_material(kind)?,
            policy,
            description,
            created,
            enabled: true,
            previous: Vec::new(),
            rotated_at: Vec::new(),
            rotation: None,
            on_demand_rotations: 0,
            deletion: None,
            tags: BTreeMap::new(),
        })
    }

    pub(crate) fn state(&self) -> KeyState {
        if self.deletion.is_some() {
            KeyState::PendingDeletion
        } else if self.enabled {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        }
    }

    /// Index of the current material (what new ciphertexts name).
    pub(crate) fn current_version(&self) -> u32 {
        u32::try_from(self.previous.len()).unwrap_or(u32::MAX)
    }

    /// Material by index (`None` for an index no rotation produced).
    pub(crate) fn material_version(&self, version: u32) -> Option<&[u8]> {
        let v = usize::try_from(version).ok()?;
        match v.cmp(&self.previous.len()) {
            std::cmp::Ordering::Less => self.previous.get(v).map(|m| m.0.as_slice()),
            std::cmp::Ordering::Equal => Some(self.material.as_slice()),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Replaces the material by fresh material, keeping the old one for decryption.
    pub(crate) fn rotate(&mut self, now: f64) -> Result<(), ServiceError> {
        let fresh = generate_material(self.kind)?;
        let old = std::mem::replace(&mut self.material, fresh);
        self.previous.push(Material(old));
        self.rotated_at.push(now);
        Ok(())
    }
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

/// An alias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct AliasEntry {
    /// `alias/...`.
    pub(crate) name: String,
    /// Key id.
    pub(crate) target: String,
    pub(crate) created: f64,
    pub(crate) updated: f64,
}

/// All keys and aliases.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) keys: BTreeMap<String, KeyEntry>,
    /// By alias name.
    pub(crate) aliases: BTreeMap<String, AliasEntry>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    keys: Vec<KeyEntry>,
    /// Since version 2.
    #[serde(default)]
    aliases: Vec<AliasEntry>,
}

const STATE_FORMAT: &str = "nitro-kms-local-state";
/// The state file version written; versions 1 (no aliases, symmetric and key-agreement keys
/// only) and 2 are read.
pub(crate) const STATE_VERSION: u32 = 2;
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
            return Err(Error::InvalidArgument(format!(
                "{} is too large",
                path.display()
            )));
        }
        let text = Zeroizing::new(
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
        );
        Self::from_json(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// Parses a state file.
    pub(crate) fn from_json(text: &[u8]) -> Result<Self, String> {
        let state: StateFile =
            serde_json::from_slice(text).map_err(|e| format!("not a local KMS state file: {e}"))?;
        if state.format != STATE_FORMAT || !(1..=STATE_VERSION).contains(&state.version) {
            return Err(format!(
                "unsupported state format {} v{}",
                state.format, state.version
            ));
        }
        let mut store = Self::default();
        for k in state.keys {
            if state.version == 1
                && !matches!(
                    k.kind,
                    KeyKind::Symmetric | KeyKind::EccP256 | KeyKind::EccP384 | KeyKind::EccP521
                )
            {
                return Err(format!("key kind {:?} in a version 1 state file", k.kind));
            }
            store.keys.insert(k.id.clone(), k);
        }
        for a in state.aliases {
            if !store.keys.contains_key(&a.target) {
                return Err(format!("alias {} names an unknown key", a.name));
            }
            store.aliases.insert(a.name.clone(), a);
        }
        Ok(store)
    }

    /// The state file text.
    pub(crate) fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
        let state = StateFile {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            keys: self.keys.values().cloned().collect(),
            aliases: self.aliases.values().cloned().collect(),
        };
        Ok(Zeroizing::new(serde_json::to_vec_pretty(&state)?))
    }

    /// Applies what time does: due rotations, and deletion of keys (and their aliases) whose
    /// waiting period is over. Returns whether anything changed.
    pub(crate) fn tick(&mut self, now: f64) -> Result<bool, ServiceError> {
        let mut changed = false;
        let expired: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.deletion.is_some_and(|d| d.date <= now))
            .map(|k| k.id.clone())
            .collect();
        for id in &expired {
            self.keys.remove(id);
            self.aliases.retain(|_, a| &a.target != id);
            changed = true;
        }
        for key in self.keys.values_mut() {
            if key.deletion.is_some() {
                continue;
            }
            if let Some(r) = key.rotation
                && r.next <= now
            {
                key.rotate(r.next)?;
                // One rotation per elapsed period is not needed for correctness; the next one
                // is a full period from now.
                key.rotation = Some(Rotation {
                    period_days: r.period_days,
                    next: now + f64::from(r.period_days) * DAY,
                });
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Writes the store to `path` atomically (temporary file, fsync, rename), mode 0600.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = self.to_json().map_err(std::io::Error::other)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{
      "format": "nitro-kms-local-state",
      "version": 1,
      "keys": [{
        "id": "0b6f7a4e-8d7a-4b40-9a62-0f2f4d1c9e11",
        "kind": "Symmetric",
        "material": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        "policy": "{}",
        "description": "from the previous release",
        "created": 1700000000.5,
        "enabled": false
      }]
    }"#;

    #[test]
    fn version_1_state_files_load() {
        let store = Store::from_json(V1.as_bytes()).unwrap();
        let k = &store.keys["0b6f7a4e-8d7a-4b40-9a62-0f2f4d1c9e11"];
        assert_eq!(k.kind, KeyKind::Symmetric);
        assert_eq!(k.state(), KeyState::Disabled);
        assert_eq!(k.material_version(0), Some(&[7u8; 32][..]));
        assert!(k.material_version(1).is_none());
        assert!(store.aliases.is_empty());
        // Written back as version 2, and read again identically.
        let text = store.to_json().unwrap();
        let again = Store::from_json(&text).unwrap();
        assert_eq!(again.keys.len(), 1);
        assert!(String::from_utf8_lossy(&text).contains("\"version\": 2"));
        // Kinds that version 1 never had are refused in a version 1 file.
        let odd = V1.replace("\"Symmetric\"", "\"SignP384\"");
        assert!(Store::from_json(odd.as_bytes()).is_err());
        assert!(
            Store::from_json(V1.replace("\"version\": 1", "\"version\": 3").as_bytes()).is_err()
        );
    }

    #[test]
    fn every_kind_round_trips_through_the_state_file() {
        let mut store = Store::default();
        for spec in [
            ("SYMMETRIC_DEFAULT", None),
            ("ECC_NIST_P256", Some("KEY_AGREEMENT")),
            ("ECC_NIST_P384", Some("SIGN_VERIFY")),
            ("ECC_SECG_P256K1", Some("SIGN_VERIFY")),
            ("RSA_2048", Some("SIGN_VERIFY")),
            ("RSA_2048", Some("ENCRYPT_DECRYPT")),
        ] {
            let kind = KeyKind::from_spec(spec.0, spec.1).unwrap();
            let mut k = KeyEntry::generate(kind, "{}".into(), String::new(), 1.0).unwrap();
            k.tags.insert("t".into(), "v".into());
            store.keys.insert(k.id.clone(), k);
        }
        let id = store.keys.keys().next().unwrap().clone();
        store.aliases.insert(
            "alias/a".into(),
            AliasEntry {
                name: "alias/a".into(),
                target: id,
                created: 1.0,
                updated: 2.0,
            },
        );
        let again = Store::from_json(&store.to_json().unwrap()).unwrap();
        assert_eq!(again.keys.len(), 6);
        for (id, k) in &store.keys {
            let r = &again.keys[id];
            assert_eq!((r.kind, &r.tags), (k.kind, &k.tags));
            assert_eq!(r.material.as_slice(), k.material.as_slice());
        }
        assert_eq!(again.aliases, store.aliases);
        // An alias naming a key the file lacks is refused.
        let mut orphan = Store::from_json(&store.to_json().unwrap()).unwrap();
        orphan.keys.clear();
        assert!(Store::from_json(&orphan.to_json().unwrap()).is_err());
    }

    #[test]
    fn specs_and_usages() {
        assert_eq!(
            KeyKind::from_spec("ECC_NIST_P384", Some("SIGN_VERIFY")).unwrap(),
            KeyKind::SignP384
        );
        // AWS's default usage is ENCRYPT_DECRYPT, which ECC keys do not have.
        assert_eq!(
            KeyKind::from_spec("ECC_NIST_P384", None).unwrap_err().code,
            "ValidationException"
        );
        assert_eq!(
            KeyKind::from_spec("HMAC_256", Some("GENERATE_VERIFY_MAC"))
                .unwrap_err()
                .code,
            "UnsupportedOperationException"
        );
        assert_eq!(
            KeyKind::from_spec("ECC_SECG_P256K1", Some("KEY_AGREEMENT"))
                .unwrap_err()
                .code,
            "ValidationException"
        );
        assert_eq!(KeyKind::SignRsa3072.signing_algorithms().len(), 6);
        assert_eq!(
            KeyKind::EncryptRsa4096.encryption_algorithms(),
            ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        );
    }

    #[test]
    fn time_rotates_and_deletes() {
        let mut store = Store::default();
        let mut k =
            KeyEntry::generate(KeyKind::Symmetric, "{}".into(), String::new(), 0.0).unwrap();
        k.rotation = Some(Rotation {
            period_days: 90,
            next: 100.0,
        });
        let first = k.material.to_vec();
        let id = k.id.clone();
        store.keys.insert(id.clone(), k);
        let mut doomed =
            KeyEntry::generate(KeyKind::Symmetric, "{}".into(), String::new(), 0.0).unwrap();
        doomed.deletion = Some(Deletion {
            date: 200.0,
            window_days: 7,
        });
        let doomed_id = doomed.id.clone();
        store.aliases.insert(
            "alias/d".into(),
            AliasEntry {
                name: "alias/d".into(),
                target: doomed_id.clone(),
                created: 0.0,
                updated: 0.0,
            },
        );
        store.keys.insert(doomed_id.clone(), doomed);

        assert!(!store.tick(99.0).unwrap());
        assert!(store.tick(150.0).unwrap());
        let k = &store.keys[&id];
        assert_eq!(k.current_version(), 1);
        assert_eq!(k.material_version(0), Some(first.as_slice()));
        assert_ne!(k.material_version(1), Some(first.as_slice()));
        assert_eq!(k.rotation.unwrap().next, 150.0 + 90.0 * DAY);
        assert!(store.keys.contains_key(&doomed_id));

        assert!(store.tick(200.0).unwrap());
        assert!(!store.keys.contains_key(&doomed_id));
        assert!(store.aliases.is_empty());
    }
}
