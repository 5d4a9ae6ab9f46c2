//! Data keys from AWS KMS: `GenerateDataKey` when a device is created, `Decrypt` when it is
//! opened, both attested with `Recipient` when the [`KmsClient`] has one.

use nitro_kms::KmsClient;
use nitro_kms::model::{DecryptRequest, GenerateDataKeyRequest};

use super::keys::{DataKey, DeviceId, KeyWrap};
use crate::device::BoxFuture;
use crate::error::{Error, Result};

/// Wraps the data key with an AWS KMS key (or nitro-kms's local KMS).
///
/// The header stores the `CiphertextBlob` of `GenerateDataKey`; opening the device calls
/// `Decrypt`. Give the client a [`Recipient`](nitro_kms::Recipient) so that both calls are
/// attested: KMS then returns the key only inside a `CiphertextForRecipient` envelope that
/// only this enclave image can open, and a key policy on
/// `kms:RecipientAttestation:ImageSha384` / `:PCR<n>` decides which images may have it. The
/// device identity is bound as encryption context (`nitro-fs:device`), with any pairs added by
/// [`context`](Self::context).
///
/// ```no_run
/// use nitro_fs::sealed::{KmsKeyWrap, SealedConfig, SealedDevice};
/// # async fn demo(kms: nitro_kms::KmsClient, storage: nitro_fs::NbdClient) -> nitro_fs::Result<()> {
/// let wrap = KmsKeyWrap::new(kms, "alias/enclave-storage").context("app", "orders");
/// let dev = SealedDevice::open(storage, &wrap, SealedConfig::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KmsKeyWrap {
    client: KmsClient,
    key_id: String,
    context: Vec<(String, String)>,
}

impl std::fmt::Debug for KmsKeyWrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeyWrap")
            .field("key_id", &self.key_id)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl KmsKeyWrap {
    /// Scheme identifier stored in device headers.
    pub const SCHEME: &'static str = "aws-kms-v1";
    /// Encryption-context key carrying the device identity.
    pub const DEVICE_CONTEXT: &'static str = "nitro-fs:device";

    /// Wraps with KMS key `key_id` (id, ARN or alias) through `client`.
    pub fn new(client: KmsClient, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
            context: Vec::new(),
        }
    }

    /// Adds an encryption-context pair (required again, identically, to open the device).
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }

    fn kms_error(op: &str, e: nitro_kms::Error) -> Error {
        Error::KeyWrap {
            reason: format!("KMS {op}"),
            source: Some(Box::new(e)),
        }
    }
}

impl KeyWrap for KmsKeyWrap {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn generate<'a>(&'a self, device: &'a DeviceId) -> BoxFuture<'a, Result<(DataKey, Vec<u8>)>> {
        Box::pin(async move {
            let mut req = GenerateDataKeyRequest::new(&self.key_id)
                .context(Self::DEVICE_CONTEXT, device.to_string());
            for (k, v) in &self.context {
                req = req.context(k, v);
            }
            let resp = self
                .client
                .generate_data_key(req)
                .await
                .map_err(|e| Self::kms_error("GenerateDataKey", e))?;
            let key = to_key(Some(resp.plaintext.as_bytes()))?;
            Ok((key, resp.ciphertext_blob))
        })
    }

    fn unwrap<'a>(
        &'a self,
        device: &'a DeviceId,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey>> {
        Box::pin(async move {
            let mut req = DecryptRequest::new(wrapped.to_vec())
                .context(Self::DEVICE_CONTEXT, device.to_string());
            for (k, v) in &self.context {
                req = req.context(k, v);
            }
            let resp = self
                .client
                .decrypt(req)
                .await
                .map_err(|e| Self::kms_error("Decrypt", e))?;
            to_key(Some(resp.plaintext.as_bytes()))
        })
    }
}

fn to_key(plaintext: Option<&[u8]>) -> Result<DataKey> {
    let bytes = plaintext.ok_or_else(|| Error::key_wrap("KMS returned no plaintext"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::key_wrap(format!("KMS returned a {}-byte key, not 32", bytes.len())))?;
    Ok(DataKey::from_bytes(key))
}
