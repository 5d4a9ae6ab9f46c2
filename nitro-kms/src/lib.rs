#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The documentation links items of every feature; it is checked with `--all-features` (CI,
// docs.rs), and a build without some feature would only report those links as unresolved.
#![cfg_attr(
    not(all(feature = "local-kms", feature = "nitro-net")),
    allow(rustdoc::broken_intra_doc_links)
)]
#![forbid(unsafe_code)]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

// Modules are private unless they are the one path for a family of items (`credentials`,
// `model`, `sealed`, `transport`, and the feature-gated `local`, `proxy`, `sdk`, `eif_signer`);
// everything else is re-exported below. Wire-level items are in `internal`.
mod aws_credentials;
mod ber;
mod client;
mod cms;
mod config;
pub mod credentials;
#[cfg(feature = "eif-signer")]
#[cfg_attr(docsrs, doc(cfg(feature = "eif-signer")))]
pub mod eif_signer;
mod error;
mod frame;
mod http;
#[cfg(feature = "local-kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-kms")))]
pub mod local;
pub mod model;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
mod recipient;
mod s3;
#[cfg(feature = "aws-sdk")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-sdk")))]
pub mod sdk;
pub mod sealed;
mod secret;
mod sigv4;
pub mod transport;

/// nitro-attest, whose [`Nsm`](nitro_attest::Nsm) attests a [`Recipient`]: re-exported so that
/// the versions match. Its NSM implementations are behind this crate's features `device`
/// (`NsmDevice`, `/dev/nsm`; default) and `simulator` (`SimulatedNsm`, `SimulatorPki`; opt-in).
pub use nitro_attest;

pub use aws_credentials::{Credentials, ProvideCredentials};
pub use client::{Clock, KmsClient, KmsClientBuilder, RetryConfig, SystemClock, default_endpoint};
pub use cms::{RecipientId, RecipientKey};
pub use config::ClientBuilder;
pub use error::{CmsError, CredentialsErrorKind, Error, SealedErrorKind, ServiceError};
pub use http::TlsRoots;
pub use recipient::{AttestedKey, DEFAULT_LIFETIME, Recipient};
pub use s3::{DEFAULT_MAX_S3_OBJECT, S3Client, S3ClientBuilder, S3Location};
pub use secret::{Plaintext, SecretString};

/// Wire-level items for the fuzz targets in `fuzz/`, the tests and the benches. Not a stable
/// API: anything here may change in any release.
#[doc(hidden)]
pub mod internal {
    /// The CMS `EnvelopedData` codec behind `CiphertextForRecipient`: the parser, the opener,
    /// and the sealer the local KMS uses.
    pub mod cms {
        pub use crate::cms::{
            ContentEncoding, Envelope, KMS_CHUNK_SIZE, MAX_ENVELOPE_LEN, open, seal, seal_with,
        };
    }

    /// Parses `data` as a CMS envelope and, when it parses, decrypts its content with a fixed
    /// content key (RSA-OAEP of fuzzed bytes never succeeds, so this reaches the AES-CBC and
    /// padding code directly).
    pub fn fuzz_cms_envelope(data: &[u8]) {
        if let Ok(env) = crate::cms::Envelope::parse(data) {
            let _ = env.open_with_content_key(&[0x42; 32]);
            let _ = format!("{env:?}");
        }
    }

    /// Parses `data` as a sealed-secret document and, as UTF-8, as a key policy.
    pub fn fuzz_documents(data: &[u8]) {
        let _ = crate::sealed::SealedSecret::parse(data);
        #[cfg(feature = "local-kms")]
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = crate::local::policy::KeyPolicy::parse(text);
        }
    }
}
