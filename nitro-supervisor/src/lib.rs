//! The in-enclave supervisor: runs one application as the enclave manifest
//! ([`nitro_manifest`]) describes, composing the crate family.
//!
//! PID 1 stays `nitro-init`; the supervisor is the image's command (`/cmd`). It reads the
//! manifest (at [`nitro_manifest::PATH_IN_IMAGE`]) and the boot parameters
//! ([`nitro_init::BootParams`]: the parent's CID, the vsock write cap under the emulator), makes
//! a [`plan::Plan`] (pure, fails fast naming the manifest field) and runs it:
//!
//! 1. `lo` up ([`nitro_net::netlink`]);
//! 2. the clock synchronised with the parent's time service (stepped);
//! 3. egress: `transparent` (transparent listener, iptables `REDIRECT`, DNS server on
//!    127.0.0.1:53, `/etc/resolv.conf`) or `proxy` (HTTP CONNECT and SOCKS5 proxies), all
//!    through an [`nitro_net::EgressClient`] whose enclave policy (the manifest's) decides
//!    first;
//! 4. the KMS proxy ([`nitro_kms::proxy::KmsProxy`]) with the parent's credentials and a
//!    `Recipient` from the NSM, and the attestation API ([`nitro_attest::AttestationApi`]);
//! 5. the sealed secrets, fetched by name, unsealed through KMS, delivered to files (0400) or
//!    the environment ([`secrets`]);
//! 6. the sealed volumes, attached through the kernel's NBD driver and mounted
//!    ([`volumes`]);
//! 7. ingress forwards (vsock → 127.0.0.1);
//! 8. the application, its stdout and stderr forwarded to the parent's log sink ([`logs`]),
//!    until it exits or the supervisor is asked to stop (SIGTERM): then the application gets
//!    SIGTERM, SIGKILL after `app.stop_timeout_secs`, and the volumes are unmounted, flushed
//!    and disconnected.
//!
//! [`run`] returns the application's exit status (`128 + signal` when killed), which the
//! binary exits with.

pub mod app;
mod error;
pub mod logs;
pub mod plan;
pub mod secrets;
pub mod volumes;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nitro_attest::Nsm;
use nitro_init::BootParams;
use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials};
use nitro_kms::{KmsClient, Recipient, TlsRoots};
use nitro_manifest::Manifest;
use nitro_net::{Addr, ClientConfig, EgressClient, IngressForward, Limits, LocalProxy};
use zeroize::Zeroizing;

pub use error::{Error, Result};
use plan::{Plan, SecretDelivery, Step};

/// Prints one line on the console (the supervisor's stderr), with the uptime as the kernel
/// prints it: `nitro-supervisor: [    3.912] message`.
pub(crate) fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let line = format!(
        "nitro-supervisor: [{:>9.3}] {message}\n",
        nitro_init::uptime()
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Synchronises the clock every `interval` until aborted; says when it stepped the clock or
/// could not reach the parent (and tries again at the next tick).
async fn resync_clock(client: nitro_net::time::TimeClient, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match client.sync().await {
            Ok(r) if r.stepped => say(format_args!(
                "clock: stepped by {} to the parent's time",
                r.sample.offset
            )),
            Ok(r) => tracing::debug!(offset = %r.sample.offset, "clock: in sync"),
            Err(e) => say(format_args!("clock: resynchronising failed: {}", chain(&e))),
        }
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How the supervisor reaches the parent and the system, beyond the manifest.
///
/// [`Options::from_boot`] is what runs in an enclave. Tests and development replace the
/// transports with Unix sockets ([`Options::new`]) and inject a simulated [`Nsm`]
/// ([`Options::nsm`]); there is no command-line switch for the NSM.
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// The parent (any port: each service replaces it), e.g. `vsock:3:0`, `uds:/run/p:0`.
    pub parent: Addr,
    /// Where the ingress listeners bind (any port), e.g. `vsock:0` (any CID).
    pub listen: Addr,
    /// Largest write to a stream to the parent ([`BootParams::write_cap`]).
    pub write_cap: Option<usize>,
    /// The NSM; `None`: `/dev/nsm` is opened when a step needs it.
    pub nsm: Option<Arc<dyn Nsm>>,
    /// The KMS endpoint (default: the manifest's `kms.endpoint`, else
    /// `https://kms.<region>.amazonaws.com`).
    pub kms_endpoint: Option<String>,
    /// Extra trust roots (PEM) for the KMS endpoint (default: the manifest's `kms.ca_file`,
    /// else only the Web PKI roots).
    pub kms_ca_pem: Option<Vec<u8>>,
    /// Change the system: `lo` up, iptables rules, `resolv_conf`, mounts, clock steps.
    /// Off in tests that run on a development machine.
    pub system: bool,
    /// Where transparent mode writes `nameserver 127.0.0.1`.
    pub resolv_conf: PathBuf,
    /// The kernel NBD devices' directory (`/dev`).
    pub dev_dir: PathBuf,
    /// `modprobe`, to load `nbd` when the kernel has no NBD device.
    pub modprobe: PathBuf,
    /// Also copy the application's output to the supervisor's stdout and stderr (the console).
    pub console: bool,
    /// The image's own command (ENTRYPOINT + CMD), used when the manifest overrides neither.
    pub image_argv: Vec<String>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("parent", &self.parent)
            .field("listen", &self.listen)
            .field("write_cap", &self.write_cap)
            .field("nsm", &self.nsm.is_some())
            .field("kms_endpoint", &self.kms_endpoint)
            .field("system", &self.system)
            .field("image_argv", &self.image_argv)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Options for a parent at `parent` and ingress listeners at `listen`, with no system
    /// changes ([`Options::system`] off) and no write cap.
    pub fn new(parent: Addr, listen: Addr) -> Self {
        Options {
            parent,
            listen,
            write_cap: None,
            nsm: None,
            kms_endpoint: None,
            kms_ca_pem: None,
            system: false,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            dev_dir: PathBuf::from("/dev"),
            modprobe: PathBuf::from("modprobe"),
            console: true,
            image_argv: Vec::new(),
        }
    }

    /// What runs in an enclave: the parent at `vsock:<parent CID>`, ingress on `vsock:` any
    /// CID, the write cap of the boot parameters, `/dev/nsm`, system changes on.
    pub fn from_boot(params: &BootParams) -> Self {
        let mut o = Options::new(
            Addr::Vsock {
                cid: Some(params.parent_cid),
                port: 0,
            },
            Addr::Vsock { cid: None, port: 0 },
        );
        o.write_cap = params.write_cap();
        o.system = true;
        o
    }

    /// Injects an NSM (tests: nitro-attest's simulator).
    #[must_use]
    pub fn nsm(mut self, nsm: Arc<dyn Nsm>) -> Self {
        self.nsm = Some(nsm);
        self
    }

    fn parent_port(&self, port: u32) -> Result<Addr> {
        self.parent
            .with_port(port)
            .map_err(|e| Error::net(format!("the parent's port {port}"), e))
    }
}

/// The servers and mounts the supervisor keeps while the application runs.
#[derive(Default)]
struct Running {
    servers: Vec<nitro_net::ServerHandle>,
    transparent: Vec<nitro_net::transparent::TransparentHandle>,
    dns: Option<nitro_net::dns::DnsHandle>,
    redirect: Option<nitro_net::transparent::RedirectRules>,
    kms_proxy: Option<nitro_kms::proxy::RunningProxy>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    volumes: Vec<volumes::Mounted>,
}

impl Running {
    /// Unmounts the volumes (in reverse order) and stops the services.
    async fn stop(mut self) -> Result<()> {
        let mut first = None;
        while let Some(v) = self.volumes.pop() {
            if let Err(e) = v.close().await {
                say(format_args!("{}", chain(&e)));
                first.get_or_insert(e);
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(r) = self.redirect.take()
            && let Err(e) = r.remove()
        {
            tracing::debug!("removing the redirect rules: {}", chain(&e));
        }
        if let Some(d) = self.dns.take() {
            d.shutdown();
        }
        drop(self.kms_proxy.take());
        for t in self.transparent.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), t.shutdown()).await;
        }
        for s in self.servers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
        }
        first.map_or(Ok(()), Err)
    }
}

/// Runs `manifest` to the end: starts the services, delivers the secrets, mounts the volumes,
/// runs the application until it exits or `stop` completes (then it is stopped: SIGTERM,
/// SIGKILL after `app.stop_timeout_secs`), then unmounts and flushes. Returns the
/// application's exit status (`128 + signal` when killed).
///
/// # Errors
///
/// The first step that fails (the application is then not started); the services already
/// started are stopped and the volumes already mounted are unmounted first.
pub async fn run(
    manifest: &Manifest,
    options: Options,
    stop: impl Future<Output = ()>,
) -> Result<u8> {
    let plan = Plan::new(manifest, &options.image_argv)?;
    let mut running = Running::default();
    let started = start(manifest, &plan, &options, &mut running).await;
    let (app_plan, secret_env) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = running.stop().await;
            return Err(e);
        }
    };
    let log_sink = options.parent_port(app_plan.log_vsock_port)?;
    let status = app::run(
        &app_plan,
        &secret_env,
        Some(log_sink),
        options.write_cap,
        options.console,
        stop,
    )
    .await;
    let stopped = running.stop().await;
    let status = status?;
    stopped?;
    Ok(status)
}

/// Starts every step before the application; returns its plan and the secrets' environment.
async fn start(
    manifest: &Manifest,
    plan: &Plan,
    o: &Options,
    running: &mut Running,
) -> Result<(plan::AppPlan, Vec<(String, Zeroizing<String>)>)> {
    let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut limits = Limits::default();
    limits.max_write = o.write_cap;
    let needs_nsm = plan.kms.is_some() || manifest.attestation.api_port.is_some();
    let nsm: Option<Arc<dyn Nsm>> = match (&o.nsm, needs_nsm) {
        (Some(n), _) => Some(n.clone()),
        (None, true) => Some(Arc::new(nitro_attest::NsmDevice::open().map_err(
            |source| Error::Attest {
                context: "opening /dev/nsm".into(),
                source,
            },
        )?)),
        (None, false) => None,
    };
    let kms = match (&plan.kms, &nsm) {
        (Some(k), Some(nsm)) => Some(kms_client(k, o, nsm.clone())?),
        _ => None,
    };
    let mut secret_env = Vec::new();
    let mut app_plan = None;
    for step in &plan.steps {
        match step {
            Step::Loopback => {
                if o.system {
                    nitro_net::netlink::loopback_up()
                        .map_err(|e| Error::net("bringing up lo", e))?;
                }
            }
            Step::ClockSync {
                vsock_port,
                interval,
            } => {
                let mut config = nitro_net::time::TimeConfig::default();
                config.max_rtt = Duration::from_secs(1);
                if o.system {
                    config.step = nitro_net::time::StepPolicy::Step {
                        min_offset: Duration::from_millis(500),
                    };
                }
                let addr = o.parent_port(*vsock_port)?;
                let client = nitro_net::time::TimeClient::new(addr.clone()).config(config);
                let report = client.sync().await.map_err(|e| {
                    Error::net(
                        format!("clock.sync: synchronising with the parent at {addr}"),
                        e,
                    )
                })?;
                say(format_args!(
                    "clock: offset to the parent {}{}; again every {} s",
                    report.sample.offset,
                    if report.stepped { ", stepped" } else { "" },
                    interval.as_secs()
                ));
                running
                    .tasks
                    .push(tokio::spawn(resync_clock(client, *interval)));
            }
            Step::TransparentEgress {
                vsock_port,
                listen_port,
            } => {
                let client = egress_client(manifest, o, *vsock_port)?;
                let names = nitro_net::synthetic::SyntheticNames::new(Default::default())
                    .map_err(|e| Error::net("egress: the synthetic name table", e))?;
                let listener = Addr::Tcp {
                    addr: loopback(*listen_port).to_string(),
                }
                .bind()
                .await
                .map_err(|e| Error::net("egress.transparent_port: binding", e))?;
                let proxy =
                    nitro_net::transparent::TransparentProxy::new(client.clone(), names.clone())
                        .limits(limits.clone());
                running.transparent.push(proxy.clone().spawn(listener));
                // IPv6 too when `lo` has ::1; otherwise the DNS server answers no AAAA and no
                // ip6tables rules are installed.
                let v6 = Addr::Tcp {
                    addr: format!("[::1]:{listen_port}"),
                }
                .bind()
                .await;
                let ipv6 = match v6 {
                    Ok(l) => {
                        running.transparent.push(proxy.spawn(l));
                        true
                    }
                    Err(e) => {
                        say(format_args!(
                            "egress: no IPv6 on lo ({}): IPv4 only",
                            chain(&e)
                        ));
                        false
                    }
                };
                let mut dns_config = nitro_net::dns::DnsConfig::default();
                dns_config.ipv6 = ipv6;
                running.dns = Some(
                    nitro_net::dns::DnsServer::new(client, names)
                        .config(dns_config)
                        .bind(loopback(plan::DNS_PORT))
                        .await
                        .map_err(|e| Error::net("egress: binding the DNS server on port 53", e))?,
                );
                if o.system {
                    let mut rules = nitro_net::transparent::RedirectRules::new(*listen_port);
                    if !ipv6 {
                        rules.ip6tables = None;
                    }
                    rules
                        .install()
                        .map_err(|e| Error::net("egress: installing the redirect rules", e))?;
                    running.redirect = Some(rules);
                    std::fs::write(&o.resolv_conf, "nameserver 127.0.0.1\n").map_err(|e| {
                        Error::io(format!("writing {}", o.resolv_conf.display()), e)
                    })?;
                }
                say(format_args!(
                    "egress: transparent on port {listen_port}, DNS on 127.0.0.1:53, through the parent's port {vsock_port}"
                ));
            }
            Step::ProxyEgress {
                vsock_port,
                http_port,
                socks_port,
            } => {
                let client = egress_client(manifest, o, *vsock_port)?;
                for (port, field, proxy) in [
                    (
                        *http_port,
                        "egress.http_proxy_port",
                        LocalProxy::http_connect(client.clone()),
                    ),
                    (
                        *socks_port,
                        "egress.socks_port",
                        LocalProxy::socks5(client.clone()),
                    ),
                ] {
                    let listener = Addr::Tcp {
                        addr: loopback(port).to_string(),
                    }
                    .bind()
                    .await
                    .map_err(|e| Error::net(format!("{field}: binding 127.0.0.1:{port}"), e))?;
                    running
                        .servers
                        .push(proxy.limits(limits.clone()).spawn(listener));
                }
                say(format_args!(
                    "egress: HTTP proxy on 127.0.0.1:{http_port}, SOCKS5 on 127.0.0.1:{socks_port}, through the parent's port {vsock_port}"
                ));
            }
            Step::KmsProxy { port } => {
                let Some(kms) = &kms else { continue };
                let proxy = nitro_kms::proxy::KmsProxy::new(kms.clone())
                    .map_err(|e| Error::kms("kms.proxy_port: the KMS proxy", e))?
                    .spawn(loopback(*port))
                    .await
                    .map_err(|e| Error::kms(format!("kms.proxy_port: binding port {port}"), e))?;
                say(format_args!("kms: proxy on {}", proxy.url()));
                running.kms_proxy = Some(proxy);
            }
            Step::AttestationApi { port } => {
                let Some(nsm) = &nsm else { continue };
                let listener =
                    nitro_attest::AttestationApi::<dyn Nsm>::bind_loopback(loopback(*port))
                        .await
                        .map_err(|source| Error::Attest {
                            context: format!("attestation.api_port: binding port {port}"),
                            source,
                        })?;
                let api = nitro_attest::AttestationApi::new(nsm.clone());
                running.tasks.push(tokio::spawn(async move {
                    if let Err(e) = api.serve(listener).await {
                        say(format_args!("attestation API stopped: {}", chain(&e)));
                    }
                }));
                say(format_args!(
                    "attestation: API on http://127.0.0.1:{port}{}",
                    nitro_attest::ATTESTATION_PATH
                ));
            }
            Step::Secret { name, target } => {
                let Some(kms) = &kms else { continue };
                let addr = o.parent_port(plan.secrets_vsock_port)?;
                let plaintext =
                    secrets::fetch_and_unseal(&addr, o.write_cap, kms, &manifest.name, name)
                        .await?;
                match target {
                    SecretDelivery::File(path) => {
                        secrets::write_file_0400(std::path::Path::new(path), &plaintext)?;
                        say(format_args!("secret {name}: delivered to {path}"));
                    }
                    SecretDelivery::Env(var) => {
                        secret_env.push((var.clone(), secrets::env_value(name, &plaintext)?));
                        say(format_args!("secret {name}: delivered in ${var}"));
                    }
                }
            }
            Step::Volume {
                name,
                vsock_port,
                key,
                mount,
                fs,
                device,
            } => {
                let Some(kms) = &kms else { continue };
                let device = o
                    .dev_dir
                    .join(std::path::Path::new(device).file_name().unwrap_or_default());
                let spec = volumes::VolumeSpec {
                    name: name.clone(),
                    addr: o.parent_port(*vsock_port)?,
                    key: key.clone(),
                    mount: PathBuf::from(mount),
                    fs: fs.clone(),
                    device,
                    modprobe: o.modprobe.clone(),
                    write_cap: o.write_cap,
                };
                running.volumes.push(volumes::open(&spec, kms).await?);
            }
            Step::Ingress { vsock_port, port } => {
                let at = o
                    .listen
                    .with_port(*vsock_port)
                    .map_err(|e| Error::net(format!("ingress: port {vsock_port}"), e))?;
                let listener = at.bind().await.map_err(|e| {
                    Error::net(format!("ingress (port {port}): listening on {at}"), e)
                })?;
                let target = Addr::Tcp {
                    addr: loopback(*port).to_string(),
                };
                running.servers.push(
                    IngressForward::new(target)
                        .limits(limits.clone())
                        .spawn(listener),
                );
                say(format_args!("ingress: {at} → 127.0.0.1:{port}"));
            }
            Step::App(a) => app_plan = Some(a.clone()),
        }
    }
    let app_plan = app_plan.ok_or_else(|| Error::plan("app", "no application step"))?;
    Ok((app_plan, secret_env))
}

/// The application's egress client: the manifest's policy decides first.
fn egress_client(manifest: &Manifest, o: &Options, port: u32) -> Result<EgressClient> {
    let policy = manifest
        .egress_policy()
        .map_err(|e| Error::plan("egress.allow", e.to_string()))?;
    let mut config = ClientConfig::default();
    config.policy = Some(Arc::new(policy));
    config.max_write = o.write_cap;
    Ok(EgressClient::with_config(o.parent_port(port)?, config))
}

/// The supervisor's KMS client: credentials from the parent, a `Recipient` from the NSM, and
/// KMS reached through the parent's egress server. This tunnel carries only the KMS
/// endpoint's host and port (TLS ends here); it is the supervisor's, not subject to the
/// application's egress policy.
fn kms_client(k: &plan::KmsPlan, o: &Options, nsm: Arc<dyn Nsm>) -> Result<KmsClient> {
    let endpoint = o
        .kms_endpoint
        .clone()
        .or_else(|| k.endpoint.clone())
        .unwrap_or_else(|| nitro_kms::default_endpoint(&k.region, false));
    let mut config = ClientConfig::default();
    config.max_write = o.write_cap;
    let egress = EgressClient::with_config(o.parent_port(k.egress_vsock_port)?, config);
    let creds_addr = o.parent_port(k.credentials_vsock_port)?;
    let cap = o.write_cap;
    let credentials = RefreshingCredentials::new(ParentCredentials::new(move || {
        let addr = creds_addr.clone();
        async move {
            let mut s = addr.connect().await.map_err(std::io::Error::other)?;
            s.limit_writes(cap);
            Ok(s)
        }
    }));
    let allowed = endpoint_host_port(&endpoint).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the KMS endpoint {endpoint:?} is not https://HOST[:PORT]"
        ))
    })?;
    let mut builder = KmsClient::builder(&k.region)
        .endpoint(&endpoint)
        .connector(move |host: String, port: u16| {
            let egress = egress.clone();
            let ok = host.eq_ignore_ascii_case(&allowed.0) && port == allowed.1;
            let refused = format!(
                "the supervisor's KMS tunnel only reaches {}:{}",
                allowed.0, allowed.1
            );
            async move {
                if !ok {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        refused,
                    ));
                }
                egress
                    .connect(&host, port)
                    .await
                    .map_err(std::io::Error::from)
            }
        })
        .credentials(credentials)
        .recipient(Recipient::new(nsm));
    let manifest_ca = match (&o.kms_ca_pem, &k.ca_file) {
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map_err(|e| Error::io(format!("kms.ca_file: reading {path}"), e))?,
        ),
        _ => None,
    };
    if let Some(pem) = o.kms_ca_pem.as_ref().or(manifest_ca.as_ref()) {
        builder = builder
            .tls_roots(TlsRoots::from_pem(pem).map_err(|e| Error::kms("the KMS trust roots", e))?);
    }
    builder
        .build()
        .map_err(|e| Error::kms("building the KMS client", e))
}

/// `https://host[:port][/...]` → (host, port).
fn endpoint_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn endpoints() {
        use super::endpoint_host_port as e;
        assert_eq!(
            e("https://kms.eu-west-1.amazonaws.com"),
            Some(("kms.eu-west-1.amazonaws.com".into(), 443))
        );
        assert_eq!(
            e("https://localhost:8443/"),
            Some(("localhost".into(), 8443))
        );
        assert_eq!(e("http://x"), None);
        assert_eq!(e("https://"), None);
    }

    /// The periodic resynchronisation asks the parent's time service (nitro-net's, over Unix
    /// sockets) again at every interval, and keeps going when the parent is unreachable.
    #[tokio::test]
    async fn the_clock_is_resynchronised_periodically() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        use nitro_net::{Addr, EgressServer, Policy};

        let dir = tempfile::tempdir().unwrap();
        let at = |port: u32| Addr::UnixDir {
            dir: dir.path().to_owned(),
            port,
        };
        let _time = EgressServer::new(Policy::deny_all())
            .time_service(true)
            .spawn(at(8003).bind().await.unwrap());
        // A counting relay in front of it: one connection per synchronisation.
        let relay = at(7003).bind().await.unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let upstream = at(8003);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = relay.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut up = upstream.connect().await.unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                });
            }
        });
        let client = nitro_net::time::TimeClient::new(at(7003));
        let task = tokio::spawn(super::resync_clock(client, Duration::from_millis(50)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            count.load(Ordering::SeqCst) >= 3,
            "fewer than 3 resynchronisations"
        );
        task.abort();

        // An unreachable parent: the loop survives its failures.
        let client = nitro_net::time::TimeClient::new(at(9999));
        let task = tokio::spawn(super::resync_clock(client, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "the loop stopped after a failure");
        task.abort();
    }
}
