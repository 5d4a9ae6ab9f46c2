//! The crate's error type.

use std::fmt;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the manifest file failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The text is larger than [`MAX_MANIFEST_LEN`](crate::MAX_MANIFEST_LEN).
    #[error("the manifest is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not TOML, or does not fit the schema (an unknown key, a wrong type, a
    /// missing required key).
    #[error("{}the manifest does not fit the schema: {message}", location(*.line, *.column))]
    Schema {
        /// The TOML parser's message.
        message: String,
        /// 1-based line of the offending text, when known.
        line: Option<usize>,
        /// 1-based column of the offending text, when known.
        column: Option<usize>,
    },
    /// `version` is not one this crate reads.
    #[error("manifest version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the manifest.
        found: u32,
        /// The version this crate reads.
        supported: u32,
    },
    /// A value is well-typed but not acceptable.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Where: a dotted path such as `volume[1].mount`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The egress policy (`[[egress.allow]]`, `[[egress.deny]]`) is not a valid nitro-net
    /// policy.
    #[error("egress policy")]
    Policy(#[source] nitro_net::PolicyError),
}

fn location(line: Option<usize>, column: Option<usize>) -> impl fmt::Display {
    struct Loc(Option<usize>, Option<usize>);
    impl fmt::Display for Loc {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match (self.0, self.1) {
                (Some(l), Some(c)) => write!(f, "line {l}, column {c}: "),
                (Some(l), None) => write!(f, "line {l}: "),
                _ => Ok(()),
            }
        }
    }
    Loc(line, column)
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}
