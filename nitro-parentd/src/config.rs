//! The daemon's configuration file: its schema (strict, versioned) and the IO that reads it
//! with the files it names. Validation against the manifests is in [`plan`](crate::plan).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, invalid};

/// The configuration version this build reads.
pub const VERSION: u32 = 1;

/// The largest configuration, manifest or policy file read, in bytes.
pub const MAX_FILE_LEN: u64 = 1 << 20;

/// Default time open connections get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Must be [`VERSION`].
    pub version: u32,
    /// Daemon-wide settings.
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// One section per enclave.
    #[serde(default, rename = "enclave")]
    pub enclaves: Vec<EnclaveConfig>,
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DaemonSettings {
    /// Seconds open connections get to finish on SIGTERM/SIGINT (default 30).
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

fn default_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECS
}

/// One `[[enclave]]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EnclaveConfig {
    /// The enclave's name (log prefix, `nitro-cli --enclave-name`); 1–63 of `a-z 0-9 -`.
    pub name: String,
    /// The manifest the image carries (`enclave.toml`): the ports come from it.
    pub manifest: PathBuf,
    /// The Enclave Image File.
    pub eif: PathBuf,
    /// The enclave's CID: a number ≥ 4, or `"auto"` (default: nitro-cli picks one).
    #[serde(default)]
    pub cid: Cid,
    /// Launch in debug mode (console readable, PCRs zero).
    #[serde(default)]
    pub debug_mode: bool,
    /// How the daemon reaches the enclave: `"vsock"` (default), `"hybrid:UDS"` (the
    /// emulator's vhost-device-vsock socket) or `"uds:DIR"` (development: plain Unix sockets).
    #[serde(default = "default_transport")]
    pub transport: String,
    /// TCP listen addresses per ingress port of the manifest: `{ "8080" = "0.0.0.0:80" }`.
    #[serde(default)]
    pub ingress: BTreeMap<String, String>,
    /// The parent's egress policy (nitro-net schema), decided again after the enclave's:
    /// `{ file = "/etc/..." }` or inline `{ allow = [...], deny = [...] }`. Default: the
    /// manifest's own policy.
    #[serde(default)]
    pub egress_policy: Option<toml::Table>,
    /// Names the egress server resolves to fixed addresses before asking the system resolver,
    /// like `/etc/hosts` or docker's `--add-host`: `{ "db.internal" = ["10.0.0.5"] }`. The
    /// parent policy still decides on the name and on these addresses.
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Where the credentials served to the enclave come from (default `default-chain`).
    #[serde(default)]
    pub credentials: Credentials,
    /// Sealed-secret sources per secret name of the manifest.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Backing files per volume name of the manifest (created sparse at the manifest's size).
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeBacking>,
    /// Where the enclave's log lines go: `"stdout"` (default), `"stderr"` or an absolute file
    /// path (appended).
    #[serde(default)]
    pub log: Option<String>,
}

fn default_transport() -> String {
    "vsock".into()
}

/// An enclave CID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cid {
    /// Chosen at launch.
    #[default]
    Auto,
    /// This one.
    Fixed(u32),
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Cid::Fixed(n)),
            Raw::S(s) if s == "auto" => Ok(Cid::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "expected a number or \"auto\", found {s:?}"
            ))),
        }
    }
}

/// `[enclave.credentials]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Credentials {
    /// `static`, `environment`, `instance-role` or `default-chain` (default).
    #[serde(default)]
    pub source: CredentialsSource,
    /// `static` only.
    pub access_key_id: Option<String>,
    /// `static` only.
    pub secret_access_key: Option<String>,
    /// `static` only, optional.
    pub session_token: Option<String>,
}

/// Where credentials come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CredentialsSource {
    /// The keys written in the file.
    Static,
    /// The daemon's `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    Environment,
    /// The instance role through IMDSv2.
    InstanceRole,
    /// `aws-config`'s default chain (environment, profile, web identity, ECS, instance role).
    #[default]
    DefaultChain,
}

/// `[enclave.secrets] NAME = { dir = "..." }` or `{ s3 = "s3://BUCKET/KEY" }`: exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SecretSource {
    /// A directory holding the sealed file named like the secret.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// An S3 object holding the sealed document, `s3://BUCKET/KEY`, fetched with the
    /// enclave's credentials when the daemon starts.
    #[serde(default)]
    pub s3: Option<String>,
    /// `s3` only: the bucket's region (default: the manifest's `kms.region`).
    #[serde(default)]
    pub region: Option<String>,
    /// `s3` only: another endpoint (an S3 VPC endpoint or an S3-compatible store).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[enclave.volumes] NAME = { file = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VolumeBacking {
    /// The backing file (or block device).
    pub file: PathBuf,
}

impl Config {
    /// Parses a configuration (pure; the files it names are read by [`Inputs::load`]).
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<toml::Value>,
        }
        if let Ok(v) = toml::from_str::<VersionOnly>(text)
            && let Some(toml::Value::Integer(found)) = v.version
            && found != i64::from(VERSION)
        {
            return Err(Error::UnsupportedVersion {
                found,
                supported: VERSION,
            });
        }
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            Error::Schema {
                message: e.message().to_owned(),
                line,
                column,
            }
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, Error> {
        Config::from_toml(&read_bounded(path.as_ref(), "the configuration")?)
    }
}

/// The files a configuration names, read (the IO half of `check`): each enclave's manifest
/// text and its parent policy file's text, in the order of the enclaves.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Inputs {
    /// Per enclave: the manifest text, or why it could not be read.
    pub manifests: Vec<Result<String, String>>,
    /// Per enclave: the policy file's text when `egress_policy = { file = ... }`.
    pub policy_files: Vec<Option<Result<String, String>>>,
}

impl Inputs {
    /// Reads the files `config` names (relative paths are relative to `base`, the directory
    /// of the configuration file). Failures are kept and reported by [`plan`](crate::plan).
    pub fn load(config: &Config, base: &Path) -> Inputs {
        let read = |p: &Path, what: &str| {
            read_bounded(&base.join(p), what).map_err(|e| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s.push_str(&format!(": {src}"));
                }
                s
            })
        };
        let mut inputs = Inputs::default();
        for e in &config.enclaves {
            inputs.manifests.push(read(&e.manifest, "the manifest"));
            let file = e
                .egress_policy
                .as_ref()
                .and_then(|t| t.get("file"))
                .and_then(|v| v.as_str())
                .map(|f| read(Path::new(f), "the egress policy"));
            inputs.policy_files.push(file);
        }
        inputs
    }
}

fn read_bounded(path: &Path, what: &str) -> Result<String, Error> {
    let ctx = || format!("reading {what} {}", path.display());
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(ctx(), e))?
        .len();
    if len > MAX_FILE_LEN {
        return Err(invalid(
            path.display().to_string(),
            format!("{len} bytes, more than the {MAX_FILE_LEN} allowed"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(ctx(), e))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
