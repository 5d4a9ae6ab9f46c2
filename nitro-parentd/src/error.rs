//! The crate's error type.

/// Why the daemon refused a configuration, or a service or a launch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file, binding a socket, running a program.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not TOML or does not fit the schema (an unknown key, a wrong type).
    #[error("{}the configuration does not fit the schema: {message}", location(*.line, *.column))]
    Schema {
        /// The TOML parser's message.
        message: String,
        /// 1-based line of the offending text, when known.
        line: Option<usize>,
        /// 1-based column of the offending text, when known.
        column: Option<usize>,
    },
    /// `version` is not one this build reads.
    #[error(
        "configuration version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: i64,
        /// The version this build reads.
        supported: u32,
    },
    /// A value is well-typed but not acceptable (also: two enclaves that clash).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Where: a dotted path such as `enclave[1].ingress.8080`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An enclave's manifest was refused.
    #[error("{field}: the manifest is not valid")]
    Manifest {
        /// Where: `enclave[N].manifest`.
        field: String,
        /// Why.
        #[source]
        source: nitro_manifest::Error,
    },
    /// A parent egress policy was refused.
    #[error("{field}: the egress policy is not valid")]
    Policy {
        /// Where: `enclave[N].egress_policy`.
        field: String,
        /// Why.
        #[source]
        source: nitro_net::PolicyError,
    },
    /// A nitro-net transport or server failed.
    #[error("{context}")]
    Net {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: nitro_net::Error,
    },
    /// A nitro-kms service (credentials source, S3) failed.
    #[error("{context}")]
    Kms {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: nitro_kms::Error,
    },
    /// A volume could not be opened or exported.
    #[error("{context}")]
    Volume {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: nitro_fs::Error,
    },
    /// `nitro-cli` failed or printed something this crate does not understand.
    #[error("nitro-cli {command}: {reason}")]
    NitroCli {
        /// The subcommand (`run-enclave`, ...).
        command: &'static str,
        /// What went wrong (its standard error, or why its output was refused).
        reason: String,
    },
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
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}
