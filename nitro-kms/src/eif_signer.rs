//! Signing Enclave Image Files with a KMS key (feature `eif-signer`).
//!
//! [`KmsEifSigner`] implements [`nitro_eif::AsyncSigner`]: it calls KMS `Sign` with an
//! asymmetric `SIGN_VERIFY` key (`ECC_NIST_P384` with `ECDSA_SHA_384`, as AWS documents for EIF
//! signing; P-256 and P-521 keys work too) and converts the DER signature KMS returns into the
//! fixed-width `r || s` value COSE needs. The certificate of the key's public half comes from
//! the user (KMS does not issue certificates); nitro-eif checks every signature against it
//! before writing, so a key that does not match the certificate fails cleanly.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use nitro_kms::{KmsClient, credentials::EnvironmentCredentials};
//! use nitro_kms::eif_signer::KmsEifSigner;
//!
//! let arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
//! let client = KmsClient::builder(KmsEifSigner::region_of_arn(arn).unwrap_or("us-east-1"))
//!     .credentials(EnvironmentCredentials)
//!     .build()?;
//! let signer = KmsEifSigner::new(client, arn, std::fs::read("cert.pem")?)?;
//! let m = nitro_eif::sign_eif_async("app.eif", "app.eif", &signer).await?;
//! println!("PCR8 {}", m.pcr8.unwrap());
//! # Ok(()) }
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use nitro_eif::{AsyncSigner, BoxError, Pcr, SignRequest, SigningAlgorithm};
use serde::{Deserialize, Serialize};

use crate::{Error, KmsClient};

/// What KMS `Sign` is given: the message (KMS hashes it) or its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SignMessageType {
    /// `DIGEST`: the SHA-384 (SHA-256, SHA-512) of the COSE `Sig_structure` is sent, as
    /// nitro-cli's KMS signing does. The default.
    #[default]
    Digest,
    /// `RAW`: the `Sig_structure` itself (about 100 bytes) is sent and KMS hashes it. Same
    /// signature; needed for servers without `DIGEST` support (moto).
    Raw,
}

impl SignMessageType {
    fn as_str(self) -> &'static str {
        match self {
            SignMessageType::Digest => "DIGEST",
            SignMessageType::Raw => "RAW",
        }
    }
}

/// An EIF signer whose private key stays in KMS. See the module documentation.
#[derive(Clone)]
pub struct KmsEifSigner {
    client: KmsClient,
    key_id: String,
    certificate_pem: Vec<u8>,
    algorithm: SigningAlgorithm,
    message_type: SignMessageType,
}

impl fmt::Debug for KmsEifSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsEifSigner")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("message_type", &self.message_type)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SignRequestJson<'a> {
    key_id: &'a str,
    message: String,
    message_type: &'static str,
    signing_algorithm: &'static str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignResponseJson {
    signature: String,
    #[serde(default)]
    signing_algorithm: Option<String>,
}

fn kms_algorithm(a: SigningAlgorithm) -> Result<&'static str, Error> {
    match a {
        SigningAlgorithm::Es256 => Ok("ECDSA_SHA_256"),
        SigningAlgorithm::Es384 => Ok("ECDSA_SHA_384"),
        SigningAlgorithm::Es512 => Ok("ECDSA_SHA_512"),
        _ => Err(Error::InvalidArgument(format!(
            "no KMS signing algorithm for {a}"
        ))),
    }
}

impl KmsEifSigner {
    /// A signer for the KMS key `key_id` (key id, ARN or alias) whose public key is certified by
    /// `certificate_pem`. The certificate's curve selects the algorithm.
    pub fn new(
        client: KmsClient,
        key_id: impl Into<String>,
        certificate_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, Error> {
        let certificate_pem = certificate_pem.into();
        let algorithm = SignRequest::new(&certificate_pem, &Pcr::ZERO)
            .map_err(|e| Error::InvalidArgument(format!("signing certificate: {e}")))?
            .algorithm();
        kms_algorithm(algorithm)?;
        Ok(KmsEifSigner {
            client,
            key_id: key_id.into(),
            certificate_pem,
            algorithm,
            message_type: SignMessageType::default(),
        })
    }

    /// Chooses what `Sign` is given (default [`SignMessageType::Digest`]).
    pub fn message_type(mut self, message_type: SignMessageType) -> Self {
        self.message_type = message_type;
        self
    }

    /// The key id given to KMS.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The region of a KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`, also `alias/NAME`
    /// and other partitions), or `None` if `key` is not such an ARN.
    ///
    /// ```
    /// use nitro_kms::eif_signer::KmsEifSigner;
    /// assert_eq!(KmsEifSigner::region_of_arn("arn:aws:kms:eu-west-1:1:key/x"), Some("eu-west-1"));
    /// assert_eq!(KmsEifSigner::region_of_arn("1234abcd"), None);
    /// ```
    pub fn region_of_arn(key: &str) -> Option<&str> {
        let mut parts = key.splitn(6, ':');
        let (Some("arn"), Some(_partition), Some("kms"), Some(region), Some(_account), Some(res)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        (!region.is_empty() && (res.starts_with("key/") || res.starts_with("alias/")))
            .then_some(region)
    }

    /// Signs `message` (the COSE `Sig_structure` of a [`SignRequest`]) with KMS `Sign`;
    /// returns the fixed-width `r || s` signature.
    pub async fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let alg = kms_algorithm(self.algorithm)?;
        let payload = match self.message_type {
            SignMessageType::Raw => message.to_vec(),
            SignMessageType::Digest => {
                let d = match self.algorithm {
                    SigningAlgorithm::Es256 => &aws_lc_rs::digest::SHA256,
                    SigningAlgorithm::Es512 => &aws_lc_rs::digest::SHA512,
                    _ => &aws_lc_rs::digest::SHA384,
                };
                aws_lc_rs::digest::digest(d, message).as_ref().to_vec()
            }
        };
        let request = SignRequestJson {
            key_id: &self.key_id,
            message: B64.encode(payload),
            message_type: self.message_type.as_str(),
            signing_algorithm: alg,
        };
        let request = serde_json::to_value(&request)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode the Sign request: {e}")))?;
        let response = self.client.call_json("Sign", &request).await?;
        let bad = |reason: String| Error::InvalidResponse {
            operation: "Sign",
            reason,
        };
        let response: SignResponseJson =
            serde_json::from_value(response).map_err(|e| bad(format!("{e}")))?;
        if let Some(a) = &response.signing_algorithm
            && a != alg
        {
            return Err(bad(format!("KMS signed with {a}, {alg} was asked")));
        }
        let der = B64
            .decode(response.signature.as_bytes())
            .map_err(|e| bad(format!("Signature is not base64: {e}")))?;
        self.algorithm
            .signature_from_der(&der)
            .map_err(|e| bad(e.to_string()))
    }
}

impl AsyncSigner for KmsEifSigner {
    fn certificate_pem(&self) -> &[u8] {
        &self.certificate_pem
    }

    fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(self.sign_message(message).await?)
    }
}
