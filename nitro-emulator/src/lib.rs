//! Emulated Nitro Enclaves: boot an EIF under QEMU's `nitro-enclave` machine on this machine.
//!
//! `scripts/setup-emulator.sh` (run by `scripts/install.sh`) builds and caches the tools under
//! `$NITRO_CACHE/emulator` and writes their paths to an env file ([`Tools::env_file`]); this module
//! reads it ([`Tools::locate`]), starts `vhost-device-vsock` (hybrid vsock over Unix sockets) and
//! QEMU ([`Enclave::start`]), answers the enclave-ready heartbeat, streams the guest console,
//! receives the application's exit status from the `nitro-init` binary, enforces a timeout and
//! kills everything it started when dropped.
//!
//! Guest → parent connections (CID 2 under vhost-device-vsock, see [`nitro_init::HOST_CID`]) arrive
//! on the Unix socket [`hybrid_listen_path`]`(run_dir, port)`, which must be listening before the
//! guest connects; parent → guest connections go through [`hybrid_uds`]`(run_dir)` with the
//! `CONNECT <port>\n` handshake (nitro-net's `hybrid:UDS:PORT` address).
//!
//! Tests that need the emulator call [`tools_or_skip`]: it returns `None` (printing why) when the
//! emulator is not installed, except under `CI=true`, where that is a failure.
//!
//! Around that core:
//! - [`parent`]: the parent instance's services for the guest (nitro-net egress with a policy,
//!   ingress forwards, the local KMS of nitro-kms with a key admitting the image's PCR0, its
//!   credentials, nitro-fs's NBD server, and a discovery document), as the `emulate` binary
//!   runs them;
//! - [`image`]: putting this machine's dynamically linked binaries into an image's root file
//!   system with their shared libraries;
//! - [`build_init`] / [`build_example`]: the `nitro-init` binary (static, musl) and host builds
//!   of the `nitro-examples` examples, for tests.
//!
//! The init↔parent protocol (heartbeat, boot parameters, exit report) is the `nitro-init`
//! library's; an enclave program keeps its vsock writes at or below
//! [`nitro_init::EMULATOR_MAX_WRITE`] under the emulator ([`nitro_init::BootParams::write_cap`]):
//! vhost-device-vsock drops packets larger than 32 KiB from 6.12 guests.

pub mod image;
pub mod parent;

mod enclave;
mod tools;

pub use enclave::{Enclave, EnclaveConfig, Outcome, boot_tuning, hybrid_listen_path, hybrid_uds};
pub use tools::{Tools, build_example, build_init, build_supervisor, tools_or_skip};

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the emulator helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The emulator (or one of its files) is not installed: run `scripts/setup-emulator.sh`.
    #[error("emulator not installed: {0} (run scripts/setup-emulator.sh)")]
    NotInstalled(String),
    /// The env file written by `scripts/setup-emulator.sh` is malformed.
    #[error("{path}: {reason}")]
    EnvFile {
        /// The env file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A message of the emulator's protocol (the discovery document) is malformed.
    #[error("{0}")]
    Protocol(String),
    /// An IO operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The enclave did not power off in time.
    #[error("the enclave did not finish within {after:?}; console tail:\n{console_tail}")]
    Timeout {
        /// The time limit.
        after: Duration,
        /// The last lines of the guest console.
        console_tail: String,
    },
    /// A tool failed (exited early, bad arguments, build failure).
    #[error("{0}")]
    Failed(String),
    /// One of the parent's services (egress, NBD, local KMS, ...) could not be set up; the
    /// library's error is kept as the `source`, so its whole chain is reported.
    #[error("{what}")]
    Service {
        /// What was being set up, e.g. `egress listener`.
        what: String,
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    fn service<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |source| Self::Service {
            what,
            source: Box::new(source),
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
