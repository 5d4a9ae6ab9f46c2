//! The enclave manifest, `enclave.toml`: what the in-enclave supervisor, the parent daemon and
//! `eif build --manifest` read to build and run one enclave.
//!
//! The manifest is placed in the image at [`PATH_IN_IMAGE`], so it is measured in PCR2 with the
//! rest of the ramdisk: the enclave's egress policy, the ports it opens and the secrets and
//! volumes it expects are attested along with the application.
//!
//! Parsing is pure (no file system, no network) and strict: unknown keys are refused, the
//! `version` must be one this crate reads, and every value is checked (ports distinct, paths
//! absolute and normalised, sizes in range, the egress policy a valid [`nitro_net::Policy`]).
//!
//! ```
//! use nitro_manifest::{EgressMode, Manifest};
//!
//! let m = Manifest::from_toml(r#"
//!     version = 1
//!     name = "hello"
//!
//!     [image]
//!     oci = "build/hello-oci:latest"
//!
//!     [app]
//!     entrypoint = ["python3", "/app/main.py"]
//!     env = { GREETING = "hi" }
//!
//!     [egress]
//!     mode = "transparent"
//!     [[egress.allow]]
//!     host = "api.example.com"
//!     ports = [443]
//!
//!     [kms]
//!     proxy_port = 4000
//!     region = "eu-west-1"
//!
//!     [[volume]]
//!     name = "data"
//!     size = "256MiB"
//!     mount = "/data"
//!     key = "alias/hello-volumes"
//!
//!     [[secret]]
//!     name = "db-password"
//!     env = "DB_PASSWORD"
//! "#)?;
//! assert_eq!(m.name, "hello");
//! assert_eq!(m.egress.mode, EgressMode::Transparent);
//! assert_eq!(m.volumes[0].size.bytes(), 256 << 20);
//! assert!(m.egress_policy()?.check_name_any_port("api.example.com").is_ok());
//! let env = m.app_environment();
//! assert!(env.contains(&("AWS_ENDPOINT_URL_KMS".into(), "http://127.0.0.1:4000".into())));
//! # Ok::<(), nitro_manifest::Error>(())
//! ```

#![forbid(unsafe_code)]

mod error;
mod schema;
mod size;
mod validate;

pub use error::Error;
pub use schema::{
    App, Attestation, Clock, DEFAULT_CLOCK_INTERVAL_SECS, Egress, EgressMode, Image, ImageSource,
    Ingress, Kms, Manifest, Parent, Resources, Secret, SecretTarget, Volume,
};
pub use size::Size;

/// The manifest version this crate reads.
pub const VERSION: u32 = 1;

/// Where the manifest is placed in the image (and where the supervisor reads it).
pub const PATH_IN_IMAGE: &str = "/etc/nitro/enclave.toml";

/// The default vsock port of the parent's credentials service (`kms.credentials_vsock_port`).
pub const DEFAULT_CREDENTIALS_VSOCK_PORT: u32 = 8002;

/// The placeholder `AWS_ACCESS_KEY_ID` the application gets with the KMS proxy (see
/// [`Manifest::app_environment`]): the proxy ignores the caller's signature.
pub const PROXY_PLACEHOLDER_KEY_ID: &str = "AKIDNITROKMSPROXY";

/// The placeholder `AWS_SECRET_ACCESS_KEY` that goes with [`PROXY_PLACEHOLDER_KEY_ID`].
pub const PROXY_PLACEHOLDER_SECRET: &str = "the-kms-proxy-re-signs-with-the-parent-credentials";

/// The first default NBD export port of volumes (volume `i` uses this + `i`).
pub const VOLUME_VSOCK_BASE: u32 = 9100;

/// Parent vsock ports no service may use: the Nitro heartbeat (answered by `nitro-cli` or the
/// emulator) and the init's exit report.
pub const RESERVED_VSOCK_PORTS: &[(u32, &str)] = &[
    (9000, "the enclave heartbeat (reserved)"),
    (9999, "the exit report (reserved)"),
];

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: usize = 256 * 1024;
