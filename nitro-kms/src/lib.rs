#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

mod ber;
mod client;
pub mod cms;
pub mod credentials;
mod error;
mod http;
#[cfg(feature = "local-kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-kms")))]
pub mod local;
pub mod model;
mod recipient;
pub mod s3;
pub mod sealed;
mod secret;
mod sigv4;
pub mod transport;

pub use client::{Clock, KmsClient, KmsClientBuilder, RetryConfig, SystemClock, default_endpoint};
pub use cms::{RecipientId, RecipientKey};
pub use credentials::{Credentials, ProvideCredentials};
pub use error::{CmsError, Error, ServiceError};
pub use http::TlsRoots;
pub use recipient::{AttestedKey, DEFAULT_LIFETIME, Recipient};
pub use s3::{S3Client, S3Location};
pub use secret::{Plaintext, SecretString};
