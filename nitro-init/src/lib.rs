//! The init of AWS Nitro Enclave images and the protocol it speaks with the parent instance.
//!
//! This package has two parts:
//!
//! - the **`nitro-init` binary**: a small static PID 1 for enclave images (`/init` of the
//!   bootstrap ramdisk) doing what the AWS init does (mounts, kernel modules, the enclave-ready
//!   heartbeat, `/env` `/cmd`, switch to `/rootfs`, `lo` up, run and reap the application), plus
//!   what an emulated enclave needs (the parent's CID from the kernel command line, the
//!   application's exit status reported to the parent). Build it with
//!   `cargo build --release --target x86_64-unknown-linux-musl -p nitro-init`
//!   (→ `target/x86_64-unknown-linux-musl/release/nitro-init`);
//! - this **library**: the contract between an image, its init and the parent, as pure
//!   functions (no IO), shared by the init and the parent-side launcher (the `nitro-emulator`
//!   package): the heartbeat ([`HEARTBEAT_PORT`], [`HEARTBEAT_BYTE`]), the boot parameters
//!   ([`BootParams`]), the exit report ([`exit_message`], [`parse_exit_message`], [`EXIT_ACK`]),
//!   the application's log streams ([`log_header`], [`parse_log_header`]),
//!   and the image layout ([`parse_load_order`], [`parse_lines`], [`resolve_program`]).
//!
//! # Under the emulator: the write cap
//!
//! The emulator's vsock backend (vhost-device-vsock 0.3) drops the packets a 6.12 guest kernel
//! splits over several descriptors, which it does for writes above 32 KiB. An enclave program
//! running there must keep every write to a vsock stream at or below [`EMULATOR_MAX_WRITE`]
//! (nitro-net's constant, re-exported): set nitro-net's `ClientConfig::max_write` /
//! `Limits::max_write`, or call `Stream::limit_writes`, with [`BootParams::write_cap`], which
//! is `Some(EMULATOR_MAX_WRITE)` when the image was booted by the emulator and `None` on a
//! real Nitro Enclave.
//!
//! ```
//! use nitro_init::{BootParams, EMULATOR_MAX_WRITE};
//! // The words the emulator appends to the kernel command line.
//! let (params, warnings) = BootParams::from_cmdline("console=ttyS0 nitro_parent_cid=2 nitro_exit_port=9999");
//! assert!(warnings.is_empty());
//! assert_eq!(params.write_cap(), Some(EMULATOR_MAX_WRITE));
//! // A real enclave: parent CID 3, no cap.
//! assert_eq!(BootParams::default().write_cap(), None);
//! ```

mod protocol;

pub use nitro_net::EMULATOR_MAX_WRITE;
pub use protocol::{
    BootParams, DEFAULT_EXIT_PORT, DEFAULT_PATH, EXIT_ACK, EXIT_PORT_PARAM, HEARTBEAT_BYTE,
    HEARTBEAT_PORT, HOST_CID, LogStream, MAX_CONFIG_ENTRIES, MAX_CONFIG_FILE, MAX_EXIT_MESSAGE,
    MAX_LOG_HEADER, MODULES_LOAD_ORDER, PARENT_CID, PARENT_CID_PARAM, exit_message, log_header,
    module_is_compressed, parse_exit_message, parse_lines, parse_load_order, parse_log_header,
    resolve_program,
};

/// Seconds since boot (`CLOCK_BOOTTIME`, which clock steps do not move): the console's
/// timeline, printed by the init and by the programs it starts.
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// Errors of the protocol's parsers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message or file of the protocol is malformed.
    #[error("{what}: {reason}")]
    Malformed {
        /// The message or file (`exit report`, `/cmd`, `modules_load_order`, ...).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
