//! The manifest's types: what `enclave.toml` holds, after validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, MAX_MANIFEST_LEN, Size, validate};

/// A parsed and validated manifest.
///
/// Build one with [`Manifest::from_toml`] or [`Manifest::load`]; every field has been checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Manifest {
    /// Schema version; must be [`VERSION`](crate::VERSION).
    pub version: u32,
    /// The enclave's name: 1 to 63 characters, lowercase ASCII letters, digits and `-`, not
    /// starting or ending with `-` (used in log prefixes, file names and the EIF name).
    pub name: String,
    /// Where the application's root filesystem comes from.
    pub image: Image,
    /// How the application is started (overrides of the image's configuration).
    #[serde(default)]
    pub app: App,
    /// Outbound networking.
    #[serde(default)]
    pub egress: Egress,
    /// Inbound ports forwarded from the parent.
    #[serde(default, rename = "ingress")]
    pub ingress: Vec<Ingress>,
    /// The in-enclave KMS proxy.
    #[serde(default)]
    pub kms: Kms,
    /// The in-enclave attestation API.
    #[serde(default)]
    pub attestation: Attestation,
    /// Sealed volumes (encrypted, authenticated, rollback-aware block devices on the parent).
    #[serde(default, rename = "volume")]
    pub volumes: Vec<Volume>,
    /// Sealed secrets delivered at boot, before the application starts.
    #[serde(default, rename = "secret")]
    pub secrets: Vec<Secret>,
    /// Clock synchronisation with the parent.
    #[serde(default)]
    pub clock: Clock,
    /// CPUs and memory of the enclave.
    #[serde(default)]
    pub resources: Resources,
    /// The vsock ports of the parent's boot services (secrets, logs).
    #[serde(default)]
    pub parent: Parent,
}

/// The parent daemon's vsock ports that are not tied to another section.
///
/// Port 9000 (the Nitro heartbeat, answered by `nitro-cli`) and the exit-report port 9999 are
/// reserved and refused for every service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Parent {
    /// The sealed-secrets service: the supervisor asks for each `[[secret]]` by name before
    /// the application starts (default 8004).
    #[serde(default = "default_secrets_vsock")]
    pub secrets_vsock_port: u32,
    /// The log sink: the supervisor forwards the application's stdout and stderr here
    /// (default 8005).
    #[serde(default = "default_log_vsock")]
    pub log_vsock_port: u32,
}

impl Default for Parent {
    fn default() -> Self {
        Parent {
            secrets_vsock_port: default_secrets_vsock(),
            log_vsock_port: default_log_vsock(),
        }
    }
}

/// Where the root filesystem comes from: exactly one source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Image {
    /// An OCI image layout directory, optionally `:tag` (default `latest`).
    pub oci: Option<String>,
    /// A `docker save` archive (tar file or unpacked directory).
    pub docker_archive: Option<String>,
    /// A registry reference: `registry/repo:tag` or `registry/repo@sha256:…`.
    pub reference: Option<String>,
    /// The platform to select from a multi-platform image (`linux/amd64`, `linux/arm64`);
    /// default: the platform of the EIF being built.
    pub platform: Option<String>,
}

/// The one source of an [`Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageSource<'a> {
    /// An OCI layout directory (with an optional `:tag`).
    Oci(&'a str),
    /// A `docker save` archive.
    DockerArchive(&'a str),
    /// A registry reference.
    Reference(&'a str),
}

impl Image {
    /// The image's source (validation made sure there is exactly one).
    pub fn source(&self) -> ImageSource<'_> {
        match (&self.oci, &self.docker_archive, &self.reference) {
            (Some(p), _, _) => ImageSource::Oci(p),
            (None, Some(p), _) => ImageSource::DockerArchive(p),
            (None, None, Some(r)) => ImageSource::Reference(r),
            // Unreachable after validation; an empty reference fails any later use clearly.
            (None, None, None) => ImageSource::Reference(""),
        }
    }
}

/// Overrides of the image's process configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct App {
    /// Replaces the image's `ENTRYPOINT` (and its `CMD` unless [`App::cmd`] is given).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `CMD`.
    pub cmd: Option<Vec<String>>,
    /// Added to (and overriding) the image's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's working directory (absolute).
    pub workdir: Option<String>,
    /// Seconds the application gets between SIGTERM and SIGKILL on shutdown (default 10).
    pub stop_timeout_secs: Option<u32>,
}

/// How the application reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EgressMode {
    /// No outbound networking (the default): only loopback exists.
    #[default]
    None,
    /// Every outbound TCP connection is redirected (iptables REDIRECT) to the transparent
    /// listener, and names resolve through the in-enclave DNS server.
    Transparent,
    /// `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` point at in-enclave HTTP CONNECT and
    /// SOCKS5 proxies.
    Proxy,
}

/// Outbound networking: the mode, the loopback ports used, and the enclave's policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Egress {
    /// The mode (default `none`).
    #[serde(default)]
    pub mode: EgressMode,
    /// The parent's egress server vsock port (default 8000).
    #[serde(default = "default_egress_vsock")]
    pub vsock_port: u32,
    /// Loopback port of the transparent listener (default 15001).
    #[serde(default = "default_transparent_port")]
    pub transparent_port: u16,
    /// Loopback port of the HTTP CONNECT proxy in `proxy` mode (default 3128).
    #[serde(default = "default_http_proxy_port")]
    pub http_proxy_port: u16,
    /// Loopback port of the SOCKS5 proxy in `proxy` mode (default 1080).
    #[serde(default = "default_socks_port")]
    pub socks_port: u16,
    /// Answer admitted names with synthetic addresses (default `true`; see nitro-net's `dns`).
    #[serde(default = "yes")]
    pub synthetic_dns: bool,
    /// Allow rules (nitro-net policy schema: `host`, `cidr`, `ports`, `private`, `comment`).
    #[serde(default)]
    pub allow: Vec<toml::Table>,
    /// Deny rules (same schema).
    #[serde(default)]
    pub deny: Vec<toml::Table>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            mode: EgressMode::None,
            vsock_port: default_egress_vsock(),
            transparent_port: default_transparent_port(),
            http_proxy_port: default_http_proxy_port(),
            socks_port: default_socks_port(),
            synthetic_dns: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// One inbound port: the parent forwards connections on `vsock_port` to the application's
/// `port` on the enclave's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Ingress {
    /// The application's TCP port inside the enclave.
    pub port: u16,
    /// The vsock port the parent connects to (default: the same number as `port`).
    pub vsock_port: Option<u32>,
}

impl Ingress {
    /// The vsock port (defaulted).
    pub fn vsock_port(&self) -> u32 {
        self.vsock_port.unwrap_or(u32::from(self.port))
    }
}

/// The in-enclave KMS proxy (KMS JSON 1.1 on loopback; see nitro-kms's `proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Kms {
    /// Loopback port of the proxy; absent: no proxy.
    pub proxy_port: Option<u16>,
    /// The AWS region of the KMS endpoint; required when KMS is used (the KMS proxy, sealed
    /// volumes or secrets): the parent's credentials do not carry a region.
    pub region: Option<String>,
    /// The parent's credentials service vsock port (default
    /// [`DEFAULT_CREDENTIALS_VSOCK_PORT`](crate::DEFAULT_CREDENTIALS_VSOCK_PORT); see
    /// [`Kms::credentials_port`]).
    pub credentials_vsock_port: Option<u32>,
    /// The KMS endpoint, `https://HOST[:PORT]` (default `https://kms.<region>.amazonaws.com`):
    /// the private DNS name of a KMS VPC endpoint, or a local KMS in development. The
    /// supervisor's KMS tunnel reaches only this host and port; the parent's policy must admit
    /// them.
    pub endpoint: Option<String>,
    /// A PEM file in the image whose CA certificates the supervisor trusts for the KMS
    /// endpoint besides the Web PKI roots (a private CA).
    pub ca_file: Option<String>,
}

impl Kms {
    /// The parent's credentials service vsock port, defaulted.
    pub fn credentials_port(&self) -> u32 {
        self.credentials_vsock_port
            .unwrap_or(crate::DEFAULT_CREDENTIALS_VSOCK_PORT)
    }
}

/// The in-enclave attestation API (`POST /v1/attestation` on loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Attestation {
    /// Loopback port of the API; absent: no API.
    pub api_port: Option<u16>,
}

/// A sealed volume.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Volume {
    /// Its name (same rules as the manifest's name); the parent's export is found by it.
    pub name: String,
    /// Its size (`"1GiB"`, `"512MiB"`, or bytes): a multiple of 4 KiB, at least 1 MiB.
    pub size: Size,
    /// Where it is mounted (absolute, normalised, not `/`).
    pub mount: String,
    /// The KMS key whose data key seals it (key id, ARN or `alias/...`).
    pub key: String,
    /// File system made on first use (default `ext4`).
    #[serde(default = "default_fs")]
    pub fs: String,
    /// The parent's NBD export vsock port (default: [`VOLUME_VSOCK_BASE`](crate::VOLUME_VSOCK_BASE)
    /// + the volume's index).
    pub vsock_port: Option<u32>,
}

/// A sealed secret delivered at boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Secret {
    /// Its name (same rules as the manifest's name); the parent's sealed object is found by it.
    pub name: String,
    /// Deliver it to this file (absolute path; mode 0400, owned by root).
    pub file: Option<String>,
    /// Deliver it in this environment variable of the application.
    pub env: Option<String>,
}

/// Where a [`Secret`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretTarget<'a> {
    /// A file.
    File(&'a str),
    /// An environment variable.
    Env(&'a str),
}

impl Secret {
    /// Where it goes (validation made sure there is exactly one target).
    pub fn target(&self) -> SecretTarget<'_> {
        match (&self.file, &self.env) {
            (Some(f), _) => SecretTarget::File(f),
            (None, Some(e)) => SecretTarget::Env(e),
            (None, None) => SecretTarget::Env(""),
        }
    }
}

/// Clock synchronisation with the parent's time service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Clock {
    /// Synchronise at boot and periodically (default `true`).
    #[serde(default = "yes")]
    pub sync: bool,
    /// The parent's time service vsock port (default 8003).
    #[serde(default = "default_time_vsock")]
    pub vsock_port: u32,
    /// Seconds between synchronisations after the one at boot (default 600; 10 to 86400).
    #[serde(default = "default_clock_interval")]
    pub interval_secs: u32,
}

/// The default of [`Clock::interval_secs`].
pub const DEFAULT_CLOCK_INTERVAL_SECS: u32 = 600;

fn default_clock_interval() -> u32 {
    DEFAULT_CLOCK_INTERVAL_SECS
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            sync: true,
            vsock_port: default_time_vsock(),
            interval_secs: DEFAULT_CLOCK_INTERVAL_SECS,
        }
    }
}

/// CPUs and memory given to the enclave (`nitro-cli run-enclave --cpu-count --memory`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Resources {
    /// vCPUs (default 2).
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory in MiB (default 1024; at least 64).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: default_cpus(),
            memory_mib: default_memory(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_egress_vsock() -> u32 {
    8000
}
fn default_transparent_port() -> u16 {
    15001
}
fn default_http_proxy_port() -> u16 {
    3128
}
fn default_socks_port() -> u16 {
    1080
}
fn default_time_vsock() -> u32 {
    8003
}
fn default_secrets_vsock() -> u32 {
    8004
}
fn default_log_vsock() -> u32 {
    8005
}
fn default_fs() -> String {
    "ext4".into()
}
fn default_cpus() -> u32 {
    2
}
fn default_memory() -> u32 {
    1024
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Manifest, Error> {
        if text.len() > MAX_MANIFEST_LEN {
            return Err(Error::TooLarge {
                len: text.len(),
                max: MAX_MANIFEST_LEN,
            });
        }
        // The version first, so that a newer manifest is refused for its version and not for
        // the keys this build does not know.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<toml::Value>,
        }
        if let Ok(v) = toml::from_str::<VersionOnly>(text)
            && let Some(toml::Value::Integer(found)) = v.version
            && found != i64::from(crate::VERSION)
        {
            return Err(Error::UnsupportedVersion {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: crate::VERSION,
            });
        }
        let m: Manifest = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            Error::Schema {
                message: e.message().to_owned(),
                line,
                column,
            }
        })?;
        validate::manifest(&m)?;
        Ok(m)
    }

    /// Reads, parses and validates a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, Error> {
        let path = path.as_ref();
        let ctx = || format!("reading the manifest {}", path.display());
        let len = std::fs::metadata(path)
            .map_err(|source| Error::Io {
                context: ctx(),
                source,
            })?
            .len();
        if len > MAX_MANIFEST_LEN as u64 {
            return Err(Error::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: MAX_MANIFEST_LEN,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: ctx(),
            source,
        })?;
        Manifest::from_toml(&text)
    }

    /// The enclave's egress policy (the `[[egress.allow]]` and `[[egress.deny]]` rules), as
    /// nitro-net reads it. Validation already parsed it once, so this does not fail for a
    /// manifest built by this crate.
    pub fn egress_policy(&self) -> Result<nitro_net::Policy, Error> {
        nitro_net::Policy::from_toml(&self.egress.policy_toml()).map_err(Error::Policy)
    }

    /// The environment the supervisor gives the application on top of the image's and
    /// [`App::env`]: the endpoints of the in-enclave services this manifest enables
    /// (`AWS_ENDPOINT_URL_KMS` with `AWS_REGION`, `AWS_DEFAULT_REGION` and placeholder
    /// credentials for the SDK to sign with, `NITRO_ATTESTATION_URL`, the proxy variables in `proxy`
    /// mode), then `App::env` (which wins), then the secrets delivered by environment are
    /// added by the supervisor once unsealed. Sorted by name.
    pub fn app_environment(&self) -> Vec<(String, String)> {
        let mut env = BTreeMap::new();
        if let Some(p) = self.kms.proxy_port {
            env.insert(
                "AWS_ENDPOINT_URL_KMS".to_owned(),
                format!("http://127.0.0.1:{p}"),
            );
            if let Some(r) = &self.kms.region {
                // AWS_DEFAULT_REGION too: older SDKs (boto3 before 1.28) read only that one.
                env.insert("AWS_REGION".to_owned(), r.clone());
                env.insert("AWS_DEFAULT_REGION".to_owned(), r.clone());
            }
            // An SDK signs every request and stops without credentials (after looking for
            // the instance metadata service, which an enclave cannot reach). The proxy ignores
            // the caller's signature and re-signs with the parent's credentials, so these
            // placeholders are all the application needs; `app.env` may replace them.
            env.insert(
                "AWS_ACCESS_KEY_ID".to_owned(),
                crate::PROXY_PLACEHOLDER_KEY_ID.to_owned(),
            );
            env.insert(
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                crate::PROXY_PLACEHOLDER_SECRET.to_owned(),
            );
        }
        if let Some(p) = self.attestation.api_port {
            env.insert(
                "NITRO_ATTESTATION_URL".to_owned(),
                format!("http://127.0.0.1:{p}/v1/attestation"),
            );
        }
        if self.egress.mode == EgressMode::Proxy {
            let http = format!("http://127.0.0.1:{}", self.egress.http_proxy_port);
            for k in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.insert(k.to_owned(), http.clone());
            }
            let socks = format!("socks5h://127.0.0.1:{}", self.egress.socks_port);
            env.insert("ALL_PROXY".to_owned(), socks.clone());
            env.insert("all_proxy".to_owned(), socks);
            env.insert("NO_PROXY".to_owned(), "localhost,127.0.0.1,::1".to_owned());
            env.insert("no_proxy".to_owned(), "localhost,127.0.0.1,::1".to_owned());
        }
        for (k, v) in &self.app.env {
            env.insert(k.clone(), v.clone());
        }
        env.into_iter().collect()
    }

    /// The loopback TCP ports the supervisor opens for its own services (DNS on 53 in
    /// transparent mode, the transparent listener or the proxies, the KMS proxy, the
    /// attestation API), with what each is for. Validation made sure they are distinct and
    /// distinct from the ingress ports.
    pub fn service_ports(&self) -> Vec<(u16, &'static str)> {
        let mut v = Vec::new();
        match self.egress.mode {
            EgressMode::None => {}
            EgressMode::Transparent => {
                v.push((53, "dns"));
                v.push((self.egress.transparent_port, "egress.transparent_port"));
            }
            EgressMode::Proxy => {
                v.push((self.egress.http_proxy_port, "egress.http_proxy_port"));
                v.push((self.egress.socks_port, "egress.socks_port"));
            }
        }
        if let Some(p) = self.kms.proxy_port {
            v.push((p, "kms.proxy_port"));
        }
        if let Some(p) = self.attestation.api_port {
            v.push((p, "attestation.api_port"));
        }
        v
    }

    /// Where the volumes' NBD exports are on the parent: (volume, vsock port).
    pub fn volume_ports(&self) -> Vec<(&Volume, u32)> {
        self.volumes
            .iter()
            .zip(0u32..)
            .map(|(v, i)| (v, v.vsock_port.unwrap_or(crate::VOLUME_VSOCK_BASE + i)))
            .collect()
    }

    /// Mount points of the volumes as paths.
    pub fn mounts(&self) -> impl Iterator<Item = (&Volume, PathBuf)> {
        self.volumes.iter().map(|v| (v, PathBuf::from(&v.mount)))
    }
}

impl Egress {
    /// The policy rules as a nitro-net policy document (`[[allow]]`, `[[deny]]`).
    pub fn policy_toml(&self) -> String {
        let mut t = toml::Table::new();
        let arr = |rules: &[toml::Table]| {
            toml::Value::Array(rules.iter().cloned().map(toml::Value::Table).collect())
        };
        t.insert("allow".into(), arr(&self.allow));
        t.insert("deny".into(), arr(&self.deny));
        toml::to_string(&t).unwrap_or_default()
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
