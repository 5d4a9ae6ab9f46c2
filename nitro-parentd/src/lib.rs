//! The parent-instance daemon of AWS Nitro Enclaves.
//!
//! One TOML configuration with an `[[enclave]]` section per enclave; each names the manifest
//! its image carries ([`nitro_manifest`]), so the ports the daemon serves are the ones the
//! enclave was built (and attested) with. For each enclave the daemon serves, on the
//! enclave's transport ([`nitro_net::Addr`]): the egress tunnel under the parent's own policy
//! (and the time service), credentials, sealed secrets by name, the NBD exports of its
//! volumes, the log sink, and TCP ingress listeners forwarding to the enclave. It launches
//! the enclave with `nitro-cli` ([`launch`]).
//!
//! Validation is pure ([`plan::plan`] over [`config::Config`] and the file texts of
//! [`config::Inputs`]); [`daemon::Daemon`] runs a [`plan::Plan`].
//!
//! ```
//! use nitro_parentd::config::Config;
//! let c = Config::from_toml("version = 1\n[[enclave]]\nname = \"web\"\nmanifest = \"web.toml\"\neif = \"web.eif\"\n")?;
//! assert_eq!(c.enclaves[0].name, "web");
//! assert!(Config::from_toml("version = 1\nbogus = 1\n").is_err());
//! # Ok::<(), nitro_parentd::Error>(())
//! ```

pub mod config;
pub mod daemon;
mod error;
pub mod launch;
pub mod logsink;
pub mod notify;
pub mod plan;

pub use error::Error;

/// Reads a configuration file and the files it names, and validates everything: what
/// `nitro-parentd check` does.
pub fn check(path: impl AsRef<std::path::Path>) -> Result<plan::Plan, Error> {
    let path = path.as_ref();
    let config = config::Config::load(path)?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let inputs = config::Inputs::load(&config, base);
    plan::plan(&config, &inputs, base)
}
