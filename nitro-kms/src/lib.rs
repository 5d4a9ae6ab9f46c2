#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod ber;
pub mod cms;
mod error;
mod secret;

pub use cms::{RecipientId, RecipientKey};
pub use error::{CmsError, Error, ServiceError};
pub use secret::{Plaintext, SecretString};
