//! The supervisor's error type.

/// Errors of the supervisor.
///
/// Library errors are kept as the `#[source]`; the messages name the manifest field or the
/// step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest could not be read or is invalid.
    #[error("the manifest")]
    Manifest(#[from] nitro_manifest::Error),
    /// The manifest asks for something this supervisor cannot do, or lacks something it needs.
    #[error("manifest field `{field}`: {message}")]
    Plan {
        /// The manifest field (`kms.region`, `app.entrypoint`, ...).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A bad argument or option.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A networking step failed (egress, DNS, ingress, clock, loopback, log sink).
    #[error("{context}")]
    Net {
        /// What was being done.
        context: String,
        /// The nitro-net error.
        #[source]
        source: nitro_net::Error,
    },
    /// A KMS step failed (the proxy, a secret).
    #[error("{context}")]
    Kms {
        /// What was being done.
        context: String,
        /// The nitro-kms error.
        #[source]
        source: nitro_kms::Error,
    },
    /// The NSM or the attestation API failed.
    #[error("{context}")]
    Attest {
        /// What was being done.
        context: String,
        /// The nitro-attest error.
        #[source]
        source: nitro_attest::Error,
    },
    /// A volume step failed (NBD, sealing, attaching).
    #[error("volume {volume:?}: {context}")]
    Volume {
        /// The volume's name.
        volume: String,
        /// What was being done.
        context: String,
        /// The nitro-fs error.
        #[source]
        source: nitro_fs::Error,
    },
    /// The kernel has no NBD driver: the volume cannot be attached and mounted.
    #[error(
        "volume {volume:?}: the kernel has no NBD driver ({reason}); sealed volumes need the \
         `nbd` module in the image (or nitro-fs's library API instead of a mount)"
    )]
    NbdUnavailable {
        /// The volume's name.
        volume: String,
        /// What was found.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A secret cannot be delivered as asked (for example not UTF-8 for an environment
    /// variable).
    #[error("secret {name:?}: {message}")]
    Secret {
        /// The secret's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A step ran into its time limit.
    #[error("{0} timed out")]
    Timeout(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn net(context: impl Into<String>, source: nitro_net::Error) -> Self {
        Error::Net {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn kms(context: impl Into<String>, source: nitro_kms::Error) -> Self {
        Error::Kms {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn plan(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Plan {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
