//! Pure validation of a configuration against the manifests it names: the [`Plan`] that
//! `nitro-parentd check` prints and the daemon runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nitro_manifest::{EgressMode, Manifest};
use nitro_net::{Addr, Policy};

use crate::config::{Cid, Config, Credentials, CredentialsSource, Inputs};
use crate::error::{Error, invalid};

/// The default credentials port (`kms.credentials_vsock_port`).
const DEFAULT_CREDENTIALS_PORT: u32 = nitro_manifest::DEFAULT_CREDENTIALS_VSOCK_PORT;

/// How the daemon reaches one enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `AF_VSOCK`: the parent listens on `vsock:PORT` (`VMADDR_CID_ANY`) and connects to the
    /// enclave's CID.
    Vsock,
    /// The emulator's hybrid vsock: the parent listens on `UDS_PORT` and reaches the enclave
    /// through `UDS` with a `CONNECT` line.
    Hybrid(PathBuf),
    /// Development: the parent listens on `DIR/parent/PORT.sock`, the enclave's ports are
    /// `DIR/enclave/PORT.sock`.
    UnixDir(PathBuf),
}

impl Transport {
    /// Parses `vsock`, `hybrid:UDS` or `uds:DIR` (paths relative to `base`).
    pub fn parse(s: &str, base: &Path) -> Result<Transport, String> {
        if s == "vsock" {
            Ok(Transport::Vsock)
        } else if let Some(p) = s.strip_prefix("hybrid:").filter(|p| !p.is_empty()) {
            Ok(Transport::Hybrid(base.join(p)))
        } else if let Some(p) = s.strip_prefix("uds:").filter(|p| !p.is_empty()) {
            Ok(Transport::UnixDir(base.join(p)))
        } else {
            Err(format!(
                "{s:?} is not a transport (\"vsock\", \"hybrid:UDS\" or \"uds:DIR\")"
            ))
        }
    }

    /// Where the parent listens for the enclave's connections to `port`.
    pub fn parent_listen(&self, port: u32) -> Addr {
        match self {
            Transport::Vsock => Addr::Vsock { cid: None, port },
            Transport::Hybrid(uds) => Addr::Hybrid {
                uds: uds.clone(),
                port,
            },
            Transport::UnixDir(dir) => Addr::UnixDir {
                dir: dir.join("parent"),
                port,
            },
        }
    }

    /// How the parent connects to the enclave's `port` (`cid` for vsock; `None` when not
    /// known yet is refused by the caller).
    pub fn enclave_connect(&self, cid: Option<u32>, port: u32) -> Option<Addr> {
        Some(match self {
            Transport::Vsock => Addr::Vsock {
                cid: Some(cid?),
                port,
            },
            Transport::Hybrid(uds) => Addr::Hybrid {
                uds: uds.clone(),
                port,
            },
            Transport::UnixDir(dir) => Addr::UnixDir {
                dir: dir.join("enclave"),
                port,
            },
        })
    }

    /// Enclaves with the same namespace share the parent's port space.
    fn namespace(&self) -> String {
        match self {
            Transport::Vsock => "vsock".into(),
            Transport::Hybrid(p) => format!("hybrid:{}", p.display()),
            Transport::UnixDir(p) => format!("uds:{}", p.display()),
        }
    }
}

/// A parent-side service the enclave connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceKind {
    /// The egress tunnel (`nitro_net::EgressServer`), with the time service when `time`.
    Egress {
        /// Whether the time service is on this port too.
        time: bool,
    },
    /// Time only (an egress server with a deny-all policy).
    Time,
    /// Credentials (`nitro_kms::credentials::serve_credentials`).
    Credentials,
    /// Sealed secrets by name (`nitro_kms::sealed::serve_sealed`).
    Secrets,
    /// The NBD export of a volume.
    Volume(String),
    /// The log sink.
    Log,
    /// The init's exit report (emulator launches only).
    ExitReport,
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKind::Egress { time: true } => f.write_str("egress + time"),
            ServiceKind::Egress { time: false } => f.write_str("egress"),
            ServiceKind::Time => f.write_str("time"),
            ServiceKind::Credentials => f.write_str("credentials"),
            ServiceKind::Secrets => f.write_str("sealed secrets"),
            ServiceKind::Volume(n) => write!(f, "volume {n} (NBD)"),
            ServiceKind::Log => f.write_str("log sink"),
            ServiceKind::ExitReport => f.write_str("exit report"),
        }
    }
}

/// One TCP ingress listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IngressPlan {
    /// The application's port (manifest `[[ingress]] port`).
    pub port: u16,
    /// The enclave's vsock port for it.
    pub vsock_port: u32,
    /// Where the parent listens.
    pub listen: SocketAddr,
}

/// One volume export.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumePlan {
    /// The volume's (and the export's) name.
    pub name: String,
    /// Its backing file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Where an enclave's log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogDestination {
    /// Standard output (journald under systemd).
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
}

/// What the daemon does for one enclave.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnclavePlan {
    /// Its name.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its image.
    pub eif: PathBuf,
    /// Its CID.
    pub cid: Cid,
    /// Debug mode.
    pub debug_mode: bool,
    /// How it is reached.
    pub transport: Transport,
    /// The parent-side services, by port.
    pub services: BTreeMap<u32, ServiceKind>,
    /// TCP ingress listeners.
    pub ingress: Vec<IngressPlan>,
    /// Ingress ports of the manifest that no listener exposes.
    pub unexposed: Vec<u16>,
    /// The parent's egress policy.
    pub egress_policy: Policy,
    /// Pinned names (lower case, no trailing dot) and their addresses.
    pub hosts: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// The credentials source.
    pub credentials: Credentials,
    /// Where each sealed secret comes from, by secret name.
    pub secrets: BTreeMap<String, SecretPlan>,
    /// Volume exports.
    pub volumes: Vec<VolumePlan>,
    /// Log destination.
    pub log: LogDestination,
}

/// A validated configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// The enclaves, in the configuration's order.
    pub enclaves: Vec<EnclavePlan>,
    /// Time open connections get on shutdown.
    pub shutdown_grace: Duration,
}

/// Validates `config` with the files it names (`inputs`, from [`Inputs::load`]); relative
/// paths are resolved against `base`. Pure: no file system access.
pub fn plan(config: &Config, inputs: &Inputs, base: &Path) -> Result<Plan, Error> {
    if config.enclaves.is_empty() {
        return Err(invalid("enclave", "no [[enclave]] section"));
    }
    let mut names = BTreeSet::new();
    let mut cids: BTreeMap<u32, usize> = BTreeMap::new();
    let mut vsock_ports: BTreeMap<(String, u32), (usize, ServiceKind)> = BTreeMap::new();
    let mut tcp: Vec<(SocketAddr, String)> = Vec::new();
    let mut enclaves = Vec::new();
    for (i, e) in config.enclaves.iter().enumerate() {
        let f = |k: &str| format!("enclave[{i}].{k}");
        check_name(&e.name).map_err(|r| invalid(f("name"), r))?;
        if !names.insert(e.name.clone()) {
            return Err(invalid(f("name"), format!("{:?} is used twice", e.name)));
        }
        let text = match inputs.manifests.get(i) {
            Some(Ok(t)) => t,
            Some(Err(why)) => return Err(invalid(f("manifest"), why.clone())),
            None => return Err(invalid(f("manifest"), "not read")),
        };
        let manifest = Manifest::from_toml(text).map_err(|source| Error::Manifest {
            field: f("manifest"),
            source,
        })?;
        if let Cid::Fixed(c) = e.cid {
            if c < 4 || c == u32::MAX {
                return Err(invalid(
                    f("cid"),
                    format!("{c} is reserved (an enclave CID is 4 to 4294967294)"),
                ));
            }
            if let Some(j) = cids.insert(c, i) {
                return Err(invalid(f("cid"), format!("{c} is also enclave[{j}]'s CID")));
            }
        }
        let transport =
            Transport::parse(&e.transport, base).map_err(|r| invalid(f("transport"), r))?;

        // Parent-side services.
        let mut services = BTreeMap::new();
        let mut add = |port: u32, kind: ServiceKind, field: &str| -> Result<(), Error> {
            if let Some((p, what)) = nitro_manifest::RESERVED_VSOCK_PORTS
                .iter()
                .find(|(p, _)| *p == port)
            {
                return Err(invalid(
                    format!("enclave[{i}].manifest: {field}"),
                    format!("port {p} is {what}"),
                ));
            }
            if let Some(other) = services.insert(port, kind.clone()) {
                return Err(invalid(
                    format!("enclave[{i}].manifest: {field}"),
                    format!("port {port} is also the {other}"),
                ));
            }
            if let Some((j, other)) = vsock_ports.insert((transport.namespace(), port), (i, kind)) {
                return Err(invalid(
                    format!("enclave[{i}].manifest: {field}"),
                    format!(
                        "parent port {port} is also enclave[{j}]'s {other} on the same transport ({})",
                        transport.namespace()
                    ),
                ));
            }
            Ok(())
        };
        let m = &manifest;
        let time_on_egress = m.clock.sync && m.clock.vsock_port == m.egress.vsock_port;
        if m.egress.mode != EgressMode::None {
            add(
                m.egress.vsock_port,
                ServiceKind::Egress {
                    time: time_on_egress,
                },
                "egress.vsock_port",
            )?;
        }
        if m.clock.sync && (m.egress.mode == EgressMode::None || !time_on_egress) {
            add(m.clock.vsock_port, ServiceKind::Time, "clock.vsock_port")?;
        }
        if m.kms.proxy_port.is_some() || !m.volumes.is_empty() || !m.secrets.is_empty() {
            add(
                m.kms
                    .credentials_vsock_port
                    .unwrap_or(DEFAULT_CREDENTIALS_PORT),
                ServiceKind::Credentials,
                "kms.credentials_vsock_port",
            )?;
        }
        if !m.secrets.is_empty() {
            add(
                m.parent.secrets_vsock_port,
                ServiceKind::Secrets,
                "parent.secrets_vsock_port",
            )?;
        }
        for (v, port) in m.volume_ports() {
            add(
                port,
                ServiceKind::Volume(v.name.clone()),
                &format!("volume {:?}", v.name),
            )?;
        }
        add(
            m.parent.log_vsock_port,
            ServiceKind::Log,
            "parent.log_vsock_port",
        )?;

        // Ingress.
        let mut ingress = Vec::new();
        for (key, listen) in &e.ingress {
            let field = f(&format!("ingress.{key}"));
            let port: u16 = key
                .parse()
                .map_err(|_| invalid(&field, format!("{key:?} is not a port number")))?;
            let Some(ing) = m.ingress.iter().find(|g| g.port == port) else {
                return Err(invalid(
                    &field,
                    format!("the manifest has no [[ingress]] port {port}"),
                ));
            };
            let listen: SocketAddr = listen.parse().map_err(|_| {
                invalid(&field, format!("{listen:?} is not an IP address and port"))
            })?;
            if let Some((_, other)) = tcp.iter().find(|(a, _)| tcp_conflict(*a, listen)) {
                return Err(invalid(&field, format!("{listen} conflicts with {other}")));
            }
            tcp.push((listen, field.clone()));
            ingress.push(IngressPlan {
                port,
                vsock_port: ing.vsock_port(),
                listen,
            });
        }
        let unexposed = m
            .ingress
            .iter()
            .map(|g| g.port)
            .filter(|p| !ingress.iter().any(|i| i.port == *p))
            .collect();

        // Egress policy.
        let egress_policy = match &e.egress_policy {
            None => m.egress_policy().map_err(|source| Error::Manifest {
                field: f("manifest"),
                source,
            })?,
            Some(t) if t.contains_key("file") => {
                if t.len() != 1 {
                    return Err(invalid(f("egress_policy"), "`file` excludes inline rules"));
                }
                let text = match inputs.policy_files.get(i) {
                    Some(Some(Ok(t))) => t,
                    Some(Some(Err(why))) => {
                        return Err(invalid(f("egress_policy.file"), why.clone()));
                    }
                    _ => return Err(invalid(f("egress_policy.file"), "not a path")),
                };
                Policy::from_toml(text).map_err(|source| Error::Policy {
                    field: f("egress_policy.file"),
                    source,
                })?
            }
            Some(t) => {
                let text =
                    toml::to_string(t).map_err(|e| invalid(f("egress_policy"), e.to_string()))?;
                Policy::from_toml(&text).map_err(|source| Error::Policy {
                    field: f("egress_policy"),
                    source,
                })?
            }
        };

        // Credentials.
        let c = &e.credentials;
        let has_keys =
            c.access_key_id.is_some() || c.secret_access_key.is_some() || c.session_token.is_some();
        match c.source {
            CredentialsSource::Static => {
                if c.access_key_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        f("credentials.access_key_id"),
                        "required by source = \"static\"",
                    ));
                }
                if c.secret_access_key.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        f("credentials.secret_access_key"),
                        "required by source = \"static\"",
                    ));
                }
            }
            _ if has_keys => {
                return Err(invalid(
                    f("credentials"),
                    "keys are only read with source = \"static\"",
                ));
            }
            _ => {}
        }

        // Secrets.
        let mut secrets = BTreeMap::new();
        for s in &m.secrets {
            let Some(src) = e.secrets.get(&s.name) else {
                return Err(invalid(
                    f(&format!("secrets.{}", s.name)),
                    "the manifest asks for this secret: give its source",
                ));
            };
            let field = f(&format!("secrets.{}", s.name));
            let plan = match (&src.dir, &src.s3) {
                (Some(dir), None) => {
                    if src.region.is_some() || src.endpoint.is_some() {
                        return Err(invalid(&field, "`region` and `endpoint` go with `s3`"));
                    }
                    SecretPlan::Dir(base.join(dir))
                }
                (None, Some(url)) => {
                    let location: nitro_kms::S3Location = url
                        .parse()
                        .map_err(|e: nitro_kms::Error| invalid(&field, e.to_string()))?;
                    let region = match (&src.region, &m.kms.region) {
                        (Some(r), _) | (None, Some(r)) => r.clone(),
                        (None, None) => {
                            return Err(invalid(&field, "give the bucket's `region`"));
                        }
                    };
                    if let Some(e) = &src.endpoint
                        && !(e.starts_with("https://") || e.starts_with("http://"))
                    {
                        return Err(invalid(&field, "`endpoint` is not an http(s) URL"));
                    }
                    SecretPlan::S3 {
                        location,
                        region,
                        endpoint: src.endpoint.clone(),
                    }
                }
                _ => return Err(invalid(&field, "give exactly one of `dir` and `s3`")),
            };
            secrets.insert(s.name.clone(), plan);
        }
        if let Some(extra) = e
            .secrets
            .keys()
            .find(|k| !m.secrets.iter().any(|s| &s.name == *k))
        {
            return Err(invalid(
                f(&format!("secrets.{extra}")),
                "the manifest has no such secret",
            ));
        }

        // Volumes.
        let mut volumes = Vec::new();
        for v in &m.volumes {
            let Some(b) = e.volumes.get(&v.name) else {
                return Err(invalid(
                    f(&format!("volumes.{}", v.name)),
                    "the manifest has this volume: give its backing file",
                ));
            };
            volumes.push(VolumePlan {
                name: v.name.clone(),
                file: base.join(&b.file),
                size: v.size.bytes(),
            });
        }
        if let Some(extra) = e
            .volumes
            .keys()
            .find(|k| !m.volumes.iter().any(|v| &v.name == *k))
        {
            return Err(invalid(
                f(&format!("volumes.{extra}")),
                "the manifest has no such volume",
            ));
        }

        let log = match e.log.as_deref() {
            None | Some("stdout") => LogDestination::Stdout,
            Some("stderr") => LogDestination::Stderr,
            Some(p) if p.starts_with('/') => LogDestination::File(PathBuf::from(p)),
            Some(p) => {
                return Err(invalid(
                    f("log"),
                    format!("{p:?} is not \"stdout\", \"stderr\" or an absolute path"),
                ));
            }
        };

        let mut hosts = BTreeMap::new();
        for (name, addrs) in &e.hosts {
            let field = f(&format!("hosts.{name}"));
            let norm = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            let ok = !norm.is_empty()
                && norm.len() <= 253
                && norm.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(invalid(&field, "not a DNS name"));
            }
            if addrs.is_empty() {
                return Err(invalid(&field, "no address"));
            }
            if hosts.insert(norm, addrs.clone()).is_some() {
                return Err(invalid(&field, "given twice"));
            }
        }

        enclaves.push(EnclavePlan {
            name: e.name.clone(),
            eif: base.join(&e.eif),
            cid: e.cid,
            debug_mode: e.debug_mode,
            transport,
            services,
            ingress,
            unexposed,
            egress_policy,
            hosts,
            credentials: e.credentials.clone(),
            secrets,
            volumes,
            log,
            manifest,
        });
    }
    Ok(Plan {
        enclaves,
        shutdown_grace: Duration::from_secs(config.daemon.shutdown_grace_secs),
    })
}

/// Where one sealed secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretPlan {
    /// The file named like the secret in this directory, read at each request.
    Dir(PathBuf),
    /// An S3 object, fetched when the daemon starts.
    S3 {
        /// The object.
        location: nitro_kms::S3Location,
        /// The bucket's region.
        region: String,
        /// Another endpoint than `https://s3.<region>.amazonaws.com`.
        endpoint: Option<String>,
    },
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?}: 1 to 63 of a-z, 0-9 and -"))
    }
}

/// Two TCP listen addresses that cannot both be bound (port 0 is any free port).
fn tcp_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.enclaves {
            let cid = match e.cid {
                Cid::Auto => "auto".to_owned(),
                Cid::Fixed(c) => c.to_string(),
            };
            writeln!(
                f,
                "enclave {}: cid {cid}, {} CPUs, {} MiB{}, image {}",
                e.name,
                e.manifest.resources.cpus,
                e.manifest.resources.memory_mib,
                if e.debug_mode { ", debug mode" } else { "" },
                e.eif.display()
            )?;
            for (port, kind) in &e.services {
                writeln!(
                    f,
                    "  {:<28} {kind}",
                    e.transport.parent_listen(*port).to_string()
                )?;
            }
            for i in &e.ingress {
                writeln!(
                    f,
                    "  {:<28} ingress → enclave port {} (app port {})",
                    format!("tcp:{}", i.listen),
                    i.vsock_port,
                    i.port
                )?;
            }
            for p in &e.unexposed {
                writeln!(f, "  (ingress port {p} of the manifest is not exposed)")?;
            }
            for v in &e.volumes {
                writeln!(
                    f,
                    "  volume {}: {} ({} bytes)",
                    v.name,
                    v.file.display(),
                    v.size
                )?;
            }
            for (s, src) in &e.secrets {
                match src {
                    SecretPlan::Dir(d) => writeln!(f, "  secret {s}: {}", d.join(s).display())?,
                    SecretPlan::S3 {
                        location, region, ..
                    } => writeln!(f, "  secret {s}: {location} ({region})")?,
                }
            }
            let log = match &e.log {
                LogDestination::Stdout => "stdout".to_owned(),
                LogDestination::Stderr => "stderr".to_owned(),
                LogDestination::File(p) => p.display().to_string(),
            };
            writeln!(f, "  logs → {log}")?;
        }
        Ok(())
    }
}
