//! The JSON shapes of the local KMS's requests and responses (private: the client's typed
//! model lives in [`crate::model`]; these follow the same KMS field names, and the server side
//! is kept separate so that the two can evolve independently).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Plaintext;

/// An encryption context.
pub(crate) type Context = BTreeMap<String, String>;

/// Base64 fields.
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    use crate::secret::Plaintext;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    /// `null`, absent and `""` are all empty.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Deserialize::deserialize(d)?;
        STANDARD
            .decode(s.unwrap_or_default().as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }

    /// Optional binary fields.
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
    }

    /// Secret fields, decoded straight into zeroizing buffers.
    pub(crate) mod secret {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Plaintext>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_str(&Zeroizing::new(STANDARD.encode(v.as_bytes()))),
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

/// `Recipient`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Recipient {
    #[serde(default)]
    pub(crate) key_encryption_algorithm: Option<String>,
    #[serde(default, with = "b64")]
    pub(crate) attestation_document: Vec<u8>,
}

/// Only `KeyId`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyIdRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
}

/// Only `KeyId`, in a response.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyIdResponse {
    pub(crate) key_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EncryptRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default, with = "b64::secret")]
    pub(crate) plaintext: Option<Plaintext>,
    #[serde(default)]
    pub(crate) encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) encryption_algorithm: Option<String>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EncryptResponse {
    #[serde(with = "b64")]
    pub(crate) ciphertext_blob: Vec<u8>,
    pub(crate) key_id: String,
    pub(crate) encryption_algorithm: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DecryptRequest {
    #[serde(default, with = "b64")]
    pub(crate) ciphertext_blob: Vec<u8>,
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) encryption_algorithm: Option<String>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
    #[serde(default)]
    pub(crate) recipient: Option<Recipient>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DecryptResponse {
    pub(crate) key_id: String,
    #[serde(with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub(crate) plaintext: Option<Plaintext>,
    pub(crate) encryption_algorithm: String,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub(crate) ciphertext_for_recipient: Option<Vec<u8>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReEncryptRequest {
    #[serde(default, with = "b64")]
    pub(crate) ciphertext_blob: Vec<u8>,
    #[serde(default)]
    pub(crate) source_encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) source_key_id: Option<String>,
    #[serde(default)]
    pub(crate) destination_key_id: Option<String>,
    #[serde(default)]
    pub(crate) destination_encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) source_encryption_algorithm: Option<String>,
    #[serde(default)]
    pub(crate) destination_encryption_algorithm: Option<String>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReEncryptResponse {
    #[serde(with = "b64")]
    pub(crate) ciphertext_blob: Vec<u8>,
    pub(crate) source_key_id: String,
    pub(crate) key_id: String,
    pub(crate) source_encryption_algorithm: String,
    pub(crate) destination_encryption_algorithm: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateDataKeyRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) key_spec: Option<String>,
    #[serde(default)]
    pub(crate) number_of_bytes: Option<i64>,
    #[serde(default)]
    pub(crate) encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
    #[serde(default)]
    pub(crate) recipient: Option<Recipient>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateDataKeyResponse {
    #[serde(with = "b64")]
    pub(crate) ciphertext_blob: Vec<u8>,
    #[serde(with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub(crate) plaintext: Option<Plaintext>,
    pub(crate) key_id: String,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub(crate) ciphertext_for_recipient: Option<Vec<u8>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateDataKeyPairRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) key_pair_spec: Option<String>,
    #[serde(default)]
    pub(crate) encryption_context: Option<Context>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
    #[serde(default)]
    pub(crate) recipient: Option<Recipient>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateDataKeyPairResponse {
    #[serde(with = "b64")]
    pub(crate) private_key_ciphertext_blob: Vec<u8>,
    #[serde(with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub(crate) private_key_plaintext: Option<Plaintext>,
    #[serde(with = "b64")]
    pub(crate) public_key: Vec<u8>,
    pub(crate) key_id: String,
    pub(crate) key_pair_spec: String,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub(crate) ciphertext_for_recipient: Option<Vec<u8>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateRandomRequest {
    #[serde(default)]
    pub(crate) number_of_bytes: Option<i64>,
    #[serde(default)]
    pub(crate) custom_key_store_id: Option<String>,
    #[serde(default)]
    pub(crate) recipient: Option<Recipient>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GenerateRandomResponse {
    #[serde(with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub(crate) plaintext: Option<Plaintext>,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub(crate) ciphertext_for_recipient: Option<Vec<u8>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeriveSharedSecretRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) key_agreement_algorithm: Option<String>,
    #[serde(default, with = "b64")]
    pub(crate) public_key: Vec<u8>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
    #[serde(default)]
    pub(crate) recipient: Option<Recipient>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeriveSharedSecretResponse {
    pub(crate) key_id: String,
    #[serde(with = "b64::secret", skip_serializing_if = "Option::is_none")]
    pub(crate) shared_secret: Option<Plaintext>,
    #[serde(with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub(crate) ciphertext_for_recipient: Option<Vec<u8>>,
    pub(crate) key_agreement_algorithm: String,
    pub(crate) key_origin: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SignRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default, with = "b64::secret")]
    pub(crate) message: Option<Plaintext>,
    #[serde(default)]
    pub(crate) message_type: Option<String>,
    #[serde(default)]
    pub(crate) signing_algorithm: Option<String>,
    #[serde(default, with = "b64")]
    pub(crate) signature: Vec<u8>,
    #[serde(default)]
    pub(crate) dry_run: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SignResponse {
    pub(crate) key_id: String,
    #[serde(with = "b64")]
    pub(crate) signature: Vec<u8>,
    pub(crate) signing_algorithm: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct VerifyResponse {
    pub(crate) key_id: String,
    pub(crate) signature_valid: bool,
    pub(crate) signing_algorithm: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetPublicKeyResponse {
    pub(crate) key_id: String,
    #[serde(with = "b64")]
    pub(crate) public_key: Vec<u8>,
    pub(crate) customer_master_key_spec: String,
    pub(crate) key_spec: String,
    pub(crate) key_usage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signing_algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_agreement_algorithms: Option<Vec<String>>,
}

/// A tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tag {
    #[serde(default)]
    pub(crate) tag_key: String,
    #[serde(default)]
    pub(crate) tag_value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateKeyRequest {
    #[serde(default)]
    pub(crate) policy: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) key_usage: Option<String>,
    #[serde(default)]
    pub(crate) key_spec: Option<String>,
    #[serde(default)]
    pub(crate) customer_master_key_spec: Option<String>,
    #[serde(default)]
    pub(crate) origin: Option<String>,
    #[serde(default)]
    pub(crate) multi_region: Option<bool>,
    #[serde(default)]
    pub(crate) tags: Option<Vec<Tag>>,
}

/// `KeyMetadata`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub(crate) aws_account_id: String,
    pub(crate) key_id: String,
    pub(crate) arn: String,
    pub(crate) creation_date: f64,
    pub(crate) enabled: bool,
    pub(crate) description: String,
    pub(crate) key_usage: String,
    pub(crate) key_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deletion_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pending_deletion_window_in_days: Option<u32>,
    pub(crate) origin: String,
    pub(crate) key_manager: String,
    pub(crate) customer_master_key_spec: String,
    pub(crate) key_spec: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signing_algorithms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_agreement_algorithms: Option<Vec<String>>,
    pub(crate) multi_region: bool,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyMetadataResponse {
    pub(crate) key_metadata: KeyMetadata,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PutKeyPolicyRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) policy_name: Option<String>,
    #[serde(default)]
    pub(crate) policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetKeyPolicyRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) policy_name: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetKeyPolicyResponse {
    pub(crate) policy: String,
    pub(crate) policy_name: String,
}

/// `Limit` and `Marker` (list operations), with `KeyId` where the operation has one.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) limit: Option<i64>,
    #[serde(default)]
    pub(crate) marker: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyListEntry {
    pub(crate) key_id: String,
    pub(crate) key_arn: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListKeysResponse {
    pub(crate) keys: Vec<KeyListEntry>,
    pub(crate) truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AliasRequest {
    #[serde(default)]
    pub(crate) alias_name: Option<String>,
    #[serde(default)]
    pub(crate) target_key_id: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AliasListEntry {
    pub(crate) alias_name: String,
    pub(crate) alias_arn: String,
    pub(crate) target_key_id: String,
    pub(crate) creation_date: f64,
    pub(crate) last_updated_date: f64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListAliasesResponse {
    pub(crate) aliases: Vec<AliasListEntry>,
    pub(crate) truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EnableKeyRotationRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) rotation_period_in_days: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetKeyRotationStatusResponse {
    pub(crate) key_rotation_enabled: bool,
    pub(crate) key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_rotation_date: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ScheduleKeyDeletionRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) pending_window_in_days: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ScheduleKeyDeletionResponse {
    pub(crate) key_id: String,
    pub(crate) deletion_date: f64,
    pub(crate) key_state: String,
    pub(crate) pending_window_in_days: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TagResourceRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) tags: Option<Vec<Tag>>,
    #[serde(default)]
    pub(crate) tag_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListResourceTagsResponse {
    pub(crate) tags: Vec<Tag>,
    pub(crate) truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateKeyDescriptionRequest {
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}
