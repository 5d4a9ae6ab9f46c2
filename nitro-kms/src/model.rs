//! Typed requests and responses of the KMS JSON 1.1 protocol, with the field names KMS uses.
//!
//! Binary fields are standard base64 on the wire and `Vec<u8>` (or [`Plaintext`] for secrets)
//! here. The same types serve the client and the local KMS. Requests are built with `new` plus
//! chained setters; responses have public fields.
//!
//! ```
//! use nitro_kms::model::{DataKeySpec, DecryptRequest, GenerateDataKeyRequest};
//!
//! let req = GenerateDataKeyRequest::new("alias/app").key_spec(DataKeySpec::Aes256).context("app", "db");
//! assert_eq!(serde_json::to_value(&req).unwrap()["KeySpec"], "AES_256");
//! let req = DecryptRequest::new(vec![1, 2, 3]);
//! assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"CiphertextBlob":"AQID"}"#);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Plaintext;

/// An encryption context: non-secret key/value pairs bound to a ciphertext (KMS
/// `EncryptionContext`).
pub type EncryptionContext = BTreeMap<String, String>;

/// The only `KeyEncryptionAlgorithm` KMS accepts in `Recipient`.
pub const RSAES_OAEP_SHA_256: &str = "RSAES_OAEP_SHA_256";

/// Serde helpers for base64 fields.
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }

    pub(crate) mod opt {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// `null`, absent and `""` are all `None`.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            let s: Option<std::borrow::Cow<'de, str>> = Deserialize::deserialize(d)?;
            match s {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => STANDARD
                    .decode(s.as_bytes())
                    .map(Some)
                    .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
            }
        }
    }

    /// Secret fields that are always present in the Rust type: absent, `null` and `""` on the
    /// wire are an empty [`Plaintext`], and an empty one is not serialised.
    pub(crate) mod secret_or_empty {
        use super::*;
        use crate::secret::Plaintext;

        pub(crate) fn serialize<S: Serializer>(v: &Plaintext, s: S) -> Result<S::Ok, S::Error> {
            secret::serialize(&Some(v.clone()), s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Plaintext, D::Error> {
            Ok(secret::deserialize(d)?.unwrap_or_default())
        }
    }

    /// Secret fields: decoded straight into a zeroizing buffer.
    pub(crate) mod secret {
        use super::*;
        use crate::secret::Plaintext;
        use zeroize::Zeroizing;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Plaintext>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => {
                    let encoded = Zeroizing::new(STANDARD.encode(v.as_bytes()));
                    s.serialize_str(&encoded)
                }
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Plaintext>, D::Error> {
            let s: Option<Zeroizing<String>> =
                Option::<String>::deserialize(d)?.map(Zeroizing::new);
            match s {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => {
                    let mut out = Zeroizing::new(Vec::new());
                    STANDARD
                        .decode_vec(s.as_bytes(), &mut out)
                        .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))?;
                    Ok(Some(Plaintext::from(out)))
                }
            }
        }
    }
}

/// Declares a KMS string enum: one variant per value the AWS SDK knows, plus `Unknown(String)`
/// for values added later (forward compatible: parsing never fails). On the wire (serde) each
/// variant is its KMS string.
macro_rules! kms_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $wire:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* #[doc = concat!("`", $wire, "`.")] $variant, )+
            /// A value this crate does not know yet (kept verbatim).
            Unknown(String),
        }

        impl $name {
            /// Every value this crate knows, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// The KMS wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )+
                    Self::Unknown(s) => s,
                }
            }

            /// The known variant named `s`, or `None` (where [`From<&str>`] would give
            /// `Unknown`).
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $( $wire => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// Whether this is a value this crate knows (not `Unknown`).
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Unknown(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::from_name(s).unwrap_or_else(|| Self::Unknown(s.to_owned()))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::from_name(&s).unwrap_or(Self::Unknown(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(s))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
                Ok(Self::from(s.as_ref()))
            }
        }
    };
}

kms_enum! {
    /// Spec of a data key (`GenerateDataKey` `KeySpec`; the SDK's `DataKeySpec`).
    ///
    /// ```
    /// use nitro_kms::model::DataKeySpec;
    ///
    /// assert_eq!(DataKeySpec::from("AES_128").key_len(), Some(16));
    /// assert_eq!(serde_json::to_string(&DataKeySpec::Aes256).unwrap(), r#""AES_256""#);
    /// let later: DataKeySpec = serde_json::from_str(r#""AES_512""#).unwrap();
    /// assert_eq!(later, DataKeySpec::Unknown("AES_512".into()));
    /// ```
    DataKeySpec {
        /// 32-byte key.
        Aes256 = "AES_256",
        /// 16-byte key.
        Aes128 = "AES_128",
    }
}

impl DataKeySpec {
    /// Key length in bytes (`None` for an unknown spec).
    pub fn key_len(&self) -> Option<usize> {
        match self {
            Self::Aes256 => Some(32),
            Self::Aes128 => Some(16),
            Self::Unknown(_) => None,
        }
    }
}

kms_enum! {
    /// Spec of a KMS key (`CreateKey` `KeySpec`, `KeyMetadata.KeySpec`).
    KeySpec {
        /// AES-256-GCM symmetric key.
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        /// RSA 2048.
        Rsa2048 = "RSA_2048",
        /// RSA 3072.
        Rsa3072 = "RSA_3072",
        /// RSA 4096.
        Rsa4096 = "RSA_4096",
        /// NIST P-256.
        EccNistP256 = "ECC_NIST_P256",
        /// NIST P-384.
        EccNistP384 = "ECC_NIST_P384",
        /// NIST P-521.
        EccNistP521 = "ECC_NIST_P521",
        /// secp256k1.
        EccSecgP256k1 = "ECC_SECG_P256K1",
        /// Ed25519.
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
        /// HMAC with SHA-224.
        Hmac224 = "HMAC_224",
        /// HMAC with SHA-256.
        Hmac256 = "HMAC_256",
        /// HMAC with SHA-384.
        Hmac384 = "HMAC_384",
        /// HMAC with SHA-512.
        Hmac512 = "HMAC_512",
        /// SM2 (China Regions).
        Sm2 = "SM2",
        /// ML-DSA-44.
        MlDsa44 = "ML_DSA_44",
        /// ML-DSA-65.
        MlDsa65 = "ML_DSA_65",
        /// ML-DSA-87.
        MlDsa87 = "ML_DSA_87",
    }
}

kms_enum! {
    /// What a KMS key is for (`KeyUsage`).
    KeyUsage {
        /// Encrypt and decrypt.
        EncryptDecrypt = "ENCRYPT_DECRYPT",
        /// Sign and verify.
        SignVerify = "SIGN_VERIFY",
        /// HMAC.
        GenerateVerifyMac = "GENERATE_VERIFY_MAC",
        /// ECDH (`DeriveSharedSecret`).
        KeyAgreement = "KEY_AGREEMENT",
    }
}

kms_enum! {
    /// Encryption algorithm (`EncryptionAlgorithm`).
    EncryptionAlgorithm {
        /// AES-256-GCM (symmetric keys).
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        /// RSA-OAEP with SHA-1.
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        /// RSA-OAEP with SHA-256.
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        /// SM2 public-key encryption.
        Sm2Pke = "SM2PKE",
    }
}

kms_enum! {
    /// Signing algorithm (`SigningAlgorithm`).
    SigningAlgorithm {
        /// RSASSA-PSS with SHA-256.
        RsassaPssSha256 = "RSASSA_PSS_SHA_256",
        /// RSASSA-PSS with SHA-384.
        RsassaPssSha384 = "RSASSA_PSS_SHA_384",
        /// RSASSA-PSS with SHA-512.
        RsassaPssSha512 = "RSASSA_PSS_SHA_512",
        /// RSASSA-PKCS1-v1_5 with SHA-256.
        RsassaPkcs1V15Sha256 = "RSASSA_PKCS1_V1_5_SHA_256",
        /// RSASSA-PKCS1-v1_5 with SHA-384.
        RsassaPkcs1V15Sha384 = "RSASSA_PKCS1_V1_5_SHA_384",
        /// RSASSA-PKCS1-v1_5 with SHA-512.
        RsassaPkcs1V15Sha512 = "RSASSA_PKCS1_V1_5_SHA_512",
        /// ECDSA with SHA-256.
        EcdsaSha256 = "ECDSA_SHA_256",
        /// ECDSA with SHA-384.
        EcdsaSha384 = "ECDSA_SHA_384",
        /// ECDSA with SHA-512.
        EcdsaSha512 = "ECDSA_SHA_512",
        /// SM2 signatures.
        Sm2Dsa = "SM2DSA",
        /// ML-DSA (external mu).
        MlDsaShake256 = "ML_DSA_SHAKE_256",
        /// Ed25519 (pure).
        Ed25519Sha512 = "ED25519_SHA_512",
        /// Ed25519ph.
        Ed25519PhSha512 = "ED25519_PH_SHA_512",
    }
}

kms_enum! {
    /// Key agreement algorithm (`KeyAgreementAlgorithm`).
    KeyAgreementAlgorithm {
        /// Elliptic-curve Diffie-Hellman.
        Ecdh = "ECDH",
    }
}

impl Default for KeyAgreementAlgorithm {
    /// `ECDH`, the only algorithm KMS offers.
    fn default() -> Self {
        Self::Ecdh
    }
}

kms_enum! {
    /// Spec of a data key pair (`GenerateDataKeyPair` `KeyPairSpec`).
    DataKeyPairSpec {
        /// RSA 2048.
        Rsa2048 = "RSA_2048",
        /// RSA 3072.
        Rsa3072 = "RSA_3072",
        /// RSA 4096.
        Rsa4096 = "RSA_4096",
        /// NIST P-256.
        EccNistP256 = "ECC_NIST_P256",
        /// NIST P-384.
        EccNistP384 = "ECC_NIST_P384",
        /// NIST P-521.
        EccNistP521 = "ECC_NIST_P521",
        /// secp256k1.
        EccSecgP256k1 = "ECC_SECG_P256K1",
        /// Ed25519.
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
        /// SM2 (China Regions).
        Sm2 = "SM2",
    }
}

kms_enum! {
    /// `Recipient.KeyEncryptionAlgorithm` (the SDK's `KeyEncryptionMechanism`).
    KeyEncryptionMechanism {
        /// RSA-OAEP with SHA-256 and MGF1-SHA-256: the only value KMS accepts.
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
    }
}

kms_enum! {
    /// MAC algorithm (`MacAlgorithm`).
    MacAlgorithm {
        /// HMAC-SHA-224.
        HmacSha224 = "HMAC_SHA_224",
        /// HMAC-SHA-256.
        HmacSha256 = "HMAC_SHA_256",
        /// HMAC-SHA-384.
        HmacSha384 = "HMAC_SHA_384",
        /// HMAC-SHA-512.
        HmacSha512 = "HMAC_SHA_512",
    }
}

/// `RecipientInfo`: the attestation document (with the enclave's RSA public key) that makes KMS
/// answer with `CiphertextForRecipient`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct RecipientInfo {
    /// Always [`KeyEncryptionMechanism::RsaesOaepSha256`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_encryption_algorithm: Option<KeyEncryptionMechanism>,
    /// The raw NSM attestation document (COSE_Sign1).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub attestation_document: Option<Vec<u8>>,
}

impl RecipientInfo {
    /// A `RecipientInfo` for `attestation_document` with `RSAES_OAEP_SHA_256`.
    pub fn new(attestation_document: Vec<u8>) -> Self {
        Self {
            key_encryption_algorithm: Some(KeyEncryptionMechanism::RsaesOaepSha256),
            attestation_document: Some(attestation_document),
        }
    }
}

macro_rules! setters {
    ($ty:ty { $( $(#[$doc:meta])* $kind:ident $name:ident : $arg:ty ),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, v: $arg) -> Self {
                    self.$name = setters!(@conv $kind v);
                    self
                }
            )*
        }
    };
    (@conv string $v:ident) => { Some($v.into()) };
    (@conv value $v:ident) => { Some($v) };
}

macro_rules! context_setter {
    ($ty:ty) => {
        impl $ty {
            /// Adds one encryption-context pair.
            #[must_use]
            pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
                self.encryption_context
                    .get_or_insert_with(Default::default)
                    .insert(key.into(), value.into());
                self
            }
        }
    };
}

/// `Decrypt` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DecryptRequest {
    /// The ciphertext to decrypt.
    #[serde(with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// The key that encrypted it (optional for symmetric keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The encryption context used at encryption time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// Grant tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_tokens: Option<Vec<String>>,
    /// `SYMMETRIC_DEFAULT` (default), `RSAES_OAEP_SHA_1`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// Checks permissions without decrypting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Set by [`KmsClient`](crate::KmsClient) when it has a [`Recipient`](crate::Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientInfo>,
}

impl DecryptRequest {
    /// Decrypts `ciphertext_blob`.
    pub fn new(ciphertext_blob: Vec<u8>) -> Self {
        Self {
            ciphertext_blob,
            ..Self::default()
        }
    }
}

setters!(DecryptRequest {
    /// Sets `KeyId`.
    string key_id: impl Into<String>,
    /// Sets the whole `EncryptionContext`.
    value encryption_context: EncryptionContext,
    /// Sets `EncryptionAlgorithm`.
    string encryption_algorithm: impl Into<EncryptionAlgorithm>,
    /// Sets `GrantTokens`.
    value grant_tokens: Vec<String>,
    /// Sets `DryRun`.
    value dry_run: bool,
});
context_setter!(DecryptRequest);

/// `Decrypt` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DecryptResponse {
    /// ARN of the key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The plaintext: from `Plaintext`, or, with a `Recipient`, recovered from
    /// `CiphertextForRecipient` by the client.
    #[serde(
        default,
        with = "b64::secret_or_empty",
        skip_serializing_if = "Plaintext::is_empty"
    )]
    pub plaintext: Plaintext,
    /// Algorithm used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// The CMS envelope for the recipient (only with a `Recipient`).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
    /// Identifier of the key material used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

/// `Encrypt` request (not attestation-gated: the plaintext comes from the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct EncryptRequest {
    /// The key to encrypt under.
    pub key_id: String,
    /// Up to 4096 bytes.
    #[serde(default, with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Plaintext>,
    /// Encryption context to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// Grant tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_tokens: Option<Vec<String>>,
    /// `SYMMETRIC_DEFAULT` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// Checks permissions without encrypting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

impl EncryptRequest {
    /// Encrypts `plaintext` under `key_id`.
    pub fn new(key_id: impl Into<String>, plaintext: impl Into<Plaintext>) -> Self {
        Self {
            key_id: key_id.into(),
            plaintext: Some(plaintext.into()),
            ..Self::default()
        }
    }
}

setters!(EncryptRequest {
    /// Sets the whole `EncryptionContext`.
    value encryption_context: EncryptionContext,
    /// Sets `EncryptionAlgorithm`.
    string encryption_algorithm: impl Into<EncryptionAlgorithm>,
    /// Sets `GrantTokens`.
    value grant_tokens: Vec<String>,
    /// Sets `DryRun`.
    value dry_run: bool,
});
context_setter!(EncryptRequest);

/// `Encrypt` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct EncryptResponse {
    /// The ciphertext.
    #[serde(default, with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// ARN of the key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Algorithm used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
}

/// `GenerateDataKey` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateDataKeyRequest {
    /// The key that encrypts the data key.
    pub key_id: String,
    /// `AES_256` or `AES_128` (or use `NumberOfBytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<DataKeySpec>,
    /// Data key length, 1..=1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    /// Encryption context to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// Grant tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_tokens: Option<Vec<String>>,
    /// Checks permissions without generating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Set by the client when it has a [`Recipient`](crate::Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientInfo>,
}

impl GenerateDataKeyRequest {
    /// A data key under `key_id` (set [`key_spec`](Self::key_spec) or
    /// [`number_of_bytes`](Self::number_of_bytes); the client defaults to `AES_256`).
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            ..Self::default()
        }
    }
}

setters!(GenerateDataKeyRequest {
    /// Sets `KeySpec`.
    value key_spec: DataKeySpec,
    /// Sets `NumberOfBytes`.
    value number_of_bytes: u32,
    /// Sets the whole `EncryptionContext`.
    value encryption_context: EncryptionContext,
    /// Sets `GrantTokens`.
    value grant_tokens: Vec<String>,
    /// Sets `DryRun`.
    value dry_run: bool,
});
context_setter!(GenerateDataKeyRequest);

/// `GenerateDataKey` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateDataKeyResponse {
    /// The data key encrypted under the KMS key (store this).
    #[serde(default, with = "b64")]
    pub ciphertext_blob: Vec<u8>,
    /// The data key in plaintext (from `Plaintext`, or recovered from `CiphertextForRecipient`).
    #[serde(
        default,
        with = "b64::secret_or_empty",
        skip_serializing_if = "Plaintext::is_empty"
    )]
    pub plaintext: Plaintext,
    /// ARN of the key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The CMS envelope for the recipient (only with a `Recipient`).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
    /// Identifier of the key material used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

/// `GenerateDataKeyPair` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateDataKeyPairRequest {
    /// The symmetric key that encrypts the private key.
    pub key_id: String,
    /// `RSA_2048`, `ECC_NIST_P256`, ...
    pub key_pair_spec: DataKeyPairSpec,
    /// Encryption context to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<EncryptionContext>,
    /// Grant tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_tokens: Option<Vec<String>>,
    /// Checks permissions without generating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Set by the client when it has a [`Recipient`](crate::Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientInfo>,
}

impl GenerateDataKeyPairRequest {
    /// A key pair of `key_pair_spec` whose private key is encrypted under `key_id`.
    pub fn new(key_id: impl Into<String>, key_pair_spec: impl Into<DataKeyPairSpec>) -> Self {
        Self {
            key_id: key_id.into(),
            key_pair_spec: key_pair_spec.into(),
            encryption_context: None,
            grant_tokens: None,
            dry_run: None,
            recipient: None,
        }
    }
}

setters!(GenerateDataKeyPairRequest {
    /// Sets the whole `EncryptionContext`.
    value encryption_context: EncryptionContext,
    /// Sets `GrantTokens`.
    value grant_tokens: Vec<String>,
    /// Sets `DryRun`.
    value dry_run: bool,
});
context_setter!(GenerateDataKeyPairRequest);

/// `GenerateDataKeyPair` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateDataKeyPairResponse {
    /// The private key (PKCS#8 DER) encrypted under the KMS key.
    #[serde(default, with = "b64")]
    pub private_key_ciphertext_blob: Vec<u8>,
    /// The private key (PKCS#8 DER) in plaintext (or recovered from `CiphertextForRecipient`).
    #[serde(
        default,
        with = "b64::secret_or_empty",
        skip_serializing_if = "Plaintext::is_empty"
    )]
    pub private_key_plaintext: Plaintext,
    /// The public key (DER SubjectPublicKeyInfo).
    #[serde(default, with = "b64")]
    pub public_key: Vec<u8>,
    /// ARN of the key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The spec generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair_spec: Option<DataKeyPairSpec>,
    /// The CMS envelope for the recipient (only with a `Recipient`).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
    /// Identifier of the key material used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

/// `GenerateRandom` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateRandomRequest {
    /// 1..=1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    /// Custom key store to draw from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_key_store_id: Option<String>,
    /// Set by the client when it has a [`Recipient`](crate::Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientInfo>,
}

impl GenerateRandomRequest {
    /// `number_of_bytes` random bytes.
    pub fn new(number_of_bytes: u32) -> Self {
        Self {
            number_of_bytes: Some(number_of_bytes),
            ..Self::default()
        }
    }
}

/// `GenerateRandom` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GenerateRandomResponse {
    /// The random bytes (or recovered from `CiphertextForRecipient`).
    #[serde(
        default,
        with = "b64::secret_or_empty",
        skip_serializing_if = "Plaintext::is_empty"
    )]
    pub plaintext: Plaintext,
    /// The CMS envelope for the recipient (only with a `Recipient`).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
}

/// `DeriveSharedSecret` request (ECDH with a KMS key of usage `KEY_AGREEMENT`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DeriveSharedSecretRequest {
    /// The KMS ECC key.
    pub key_id: String,
    /// `ECDH`.
    pub key_agreement_algorithm: KeyAgreementAlgorithm,
    /// The peer's public key (DER SubjectPublicKeyInfo).
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Grant tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_tokens: Option<Vec<String>>,
    /// Checks permissions without deriving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Set by the client when it has a [`Recipient`](crate::Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientInfo>,
}

impl DeriveSharedSecretRequest {
    /// ECDH between `key_id` and the peer's `public_key` (DER SPKI).
    pub fn new(key_id: impl Into<String>, public_key: Vec<u8>) -> Self {
        Self {
            key_id: key_id.into(),
            key_agreement_algorithm: KeyAgreementAlgorithm::Ecdh,
            public_key,
            ..Self::default()
        }
    }
}

/// `DeriveSharedSecret` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DeriveSharedSecretResponse {
    /// ARN of the key used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The raw shared secret (or recovered from `CiphertextForRecipient`).
    #[serde(
        default,
        with = "b64::secret_or_empty",
        skip_serializing_if = "Plaintext::is_empty"
    )]
    pub shared_secret: Plaintext,
    /// The CMS envelope for the recipient (only with a `Recipient`).
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub ciphertext_for_recipient: Option<Vec<u8>>,
    /// `ECDH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
    /// `AWS_KMS`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_origin: Option<String>,
}

/// `GetPublicKey` response (the fields the local KMS fills).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GetPublicKeyResponse {
    /// ARN of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The public key (DER SubjectPublicKeyInfo).
    #[serde(default, with = "b64")]
    pub public_key: Vec<u8>,
    /// `ECC_NIST_P256`, `RSA_2048`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<KeySpec>,
    /// `KEY_AGREEMENT`, `SIGN_VERIFY`, `ENCRYPT_DECRYPT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<KeyUsage>,
    /// Key agreement algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
    /// Encryption algorithms (encryption keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
    /// Signing algorithms (signing keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<SigningAlgorithm>>,
}

/// `CreateKey` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CreateKeyRequest {
    /// Key policy document (JSON text). KMS's default policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ENCRYPT_DECRYPT` (default) or `KEY_AGREEMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<KeyUsage>,
    /// `SYMMETRIC_DEFAULT` (default), `ECC_NIST_P256`, `ECC_NIST_P384`, `ECC_NIST_P521`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<KeySpec>,
    /// Skips the lockout safety check (accepted and ignored by the local KMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

impl CreateKeyRequest {
    /// A symmetric encryption key with the default policy.
    pub fn new() -> Self {
        Self::default()
    }
}

setters!(CreateKeyRequest {
    /// Sets `Policy` (JSON text).
    string policy: impl Into<String>,
    /// Sets `Description`.
    string description: impl Into<String>,
    /// Sets `KeyUsage`.
    string key_usage: impl Into<KeyUsage>,
    /// Sets `KeySpec`.
    string key_spec: impl Into<KeySpec>,
});

/// `KeyMetadata` as returned by `CreateKey` / `DescribeKey` (the fields the local KMS fills).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct KeyMetadata {
    /// Account that owns the key.
    #[serde(
        rename = "AWSAccountId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_account_id: Option<String>,
    /// Key id (a UUID).
    pub key_id: String,
    /// Key ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<f64>,
    /// Whether the key is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ENCRYPT_DECRYPT`, `KEY_AGREEMENT`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<KeyUsage>,
    /// `Enabled`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_state: Option<String>,
    /// `AWS_KMS`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `CUSTOMER` or `AWS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_manager: Option<String>,
    /// `SYMMETRIC_DEFAULT`, `ECC_NIST_P256`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<KeySpec>,
    /// Same as `KeySpec` (deprecated KMS field, still returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<KeySpec>,
    /// Encryption algorithms the key supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
    /// Key agreement algorithms the key supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
    /// Signing algorithms the key supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<SigningAlgorithm>>,
    /// MAC algorithms the key supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_algorithms: Option<Vec<MacAlgorithm>>,
    /// Whether the key is multi-Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<bool>,
}

/// `CreateKey` / `DescribeKey` response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct KeyMetadataResponse {
    /// The key's metadata.
    pub key_metadata: KeyMetadata,
}

/// `PutKeyPolicy` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct PutKeyPolicyRequest {
    /// The key.
    pub key_id: String,
    /// `default` (the only name KMS accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// The policy document (JSON text).
    pub policy: String,
    /// Skips the lockout safety check (accepted and ignored by the local KMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

impl PutKeyPolicyRequest {
    /// Replaces the `default` policy of `key_id`.
    pub fn new(key_id: impl Into<String>, policy: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            policy_name: Some("default".to_owned()),
            policy: policy.into(),
            bypass_policy_lockout_safety_check: None,
        }
    }
}

/// `GetKeyPolicy` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GetKeyPolicyRequest {
    /// The key.
    pub key_id: String,
    /// `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

impl GetKeyPolicyRequest {
    /// The `default` policy of `key_id`.
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            policy_name: Some("default".to_owned()),
        }
    }
}

/// `GetKeyPolicy` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct GetKeyPolicyResponse {
    /// The policy document (JSON text).
    #[serde(default)]
    pub policy: String,
    /// `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

/// `ListKeys` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ListKeysRequest {
    /// Page size, 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `NextMarker` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

impl ListKeysRequest {
    /// The first page.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One entry of `ListKeys`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct KeyListEntry {
    /// Key id.
    pub key_id: String,
    /// Key ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
}

/// `ListKeys` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ListKeysResponse {
    /// The keys on this page.
    #[serde(default)]
    pub keys: Vec<KeyListEntry>,
    /// Whether more pages follow.
    #[serde(default)]
    pub truncated: bool,
    /// Marker for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_plaintext_are_none() {
        for body in [
            r#"{"KeyId":"k"}"#,
            r#"{"KeyId":"k","Plaintext":null}"#,
            r#"{"KeyId":"k","Plaintext":""}"#,
        ] {
            let r: DecryptResponse = serde_json::from_str(body).unwrap();
            assert!(r.plaintext.is_empty(), "{body}");
            assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"KeyId":"k"}"#);
        }
        let r: DecryptResponse = serde_json::from_str(r#"{"Plaintext":"aGk="}"#).unwrap();
        assert_eq!(r.plaintext.as_bytes(), b"hi");
        assert!(serde_json::from_str::<DecryptResponse>(r#"{"Plaintext":"!!"}"#).is_err());
    }

    #[test]
    fn recipient_shape() {
        let req = DecryptRequest {
            recipient: Some(RecipientInfo::new(vec![0xA0])),
            ..DecryptRequest::new(vec![1])
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"CiphertextBlob":"AQ==","Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256","AttestationDocument":"oA=="}}"#
        );
    }

    #[test]
    fn enums_round_trip_and_keep_unknown_values() {
        for v in EncryptionAlgorithm::KNOWN {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(
                &serde_json::from_str::<EncryptionAlgorithm>(&json).unwrap(),
                v
            );
        }
        assert_eq!(KeySpec::from("ML_DSA_65"), KeySpec::MlDsa65);
        let future: SigningAlgorithm = serde_json::from_str(r#""SLH_DSA_SHA2_128S""#).unwrap();
        assert_eq!(
            future,
            SigningAlgorithm::Unknown("SLH_DSA_SHA2_128S".into())
        );
        assert!(!future.is_known());
        assert_eq!(
            serde_json::to_string(&future).unwrap(),
            r#""SLH_DSA_SHA2_128S""#
        );
        assert_eq!(KeyAgreementAlgorithm::Ecdh, "ECDH");
        let req = GenerateDataKeyPairRequest::new("k", "ECC_NIST_P256");
        assert_eq!(req.key_pair_spec, DataKeyPairSpec::EccNistP256);
        let meta: KeyMetadata = serde_json::from_str(
            r#"{"KeyId":"k","KeySpec":"RSA_2048","KeyUsage":"SIGN_VERIFY","SigningAlgorithms":["RSASSA_PSS_SHA_256","NEW_ALG"]}"#,
        )
        .unwrap();
        assert_eq!(meta.key_usage, Some(KeyUsage::SignVerify));
        assert_eq!(
            meta.signing_algorithms.unwrap(),
            [
                SigningAlgorithm::RsassaPssSha256,
                SigningAlgorithm::Unknown("NEW_ALG".into())
            ]
        );
        assert!(serde_json::from_str::<KeyUsage>("3").is_err());
    }
}
