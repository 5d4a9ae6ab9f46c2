//! The nitro-net tunnels as a command-line tool: run `proxy parent` on the parent instance and
//! `proxy enclave` inside the enclave.
//!
//! ```sh
//! # parent: egress with a policy, the time service, and TCP 8443 forwarded to enclave port 443
//! cargo run --release --example proxy -- parent --listen vsock:8000 --policy egress.toml \
//!     --enclave-cid 16 --ingress 0.0.0.0:8443=443
//! # enclave: HTTP CONNECT and SOCKS5 proxies on loopback, a fixed forward for KMS, ingress 443
//! proxy enclave --parent vsock:3:8000 --http-proxy 127.0.0.1:3128 --socks 127.0.0.1:1080 \
//!     --forward 127.0.0.1:8443=kms.us-east-1.amazonaws.com:443 --ingress 443=127.0.0.1:8080
//! # enclave, for unmodified programs: transparent egress + DNS (nameserver 127.0.0.1)
//! proxy enclave --parent vsock:3:8000 --policy enclave-egress.toml --transparent 15001 \
//!     --dns 127.0.0.1:53
//! # both on one host, for development: the plain Unix-socket transport
//! proxy parent --listen uds:/tmp/enclave:8000 --policy egress.toml --ingress 127.0.0.1:8443=443
//! proxy enclave --parent uds:/tmp/enclave:8000 --http-proxy 127.0.0.1:3128 --ingress 443=127.0.0.1:8080
//! ```
//!
//! Logs go to stderr through `tracing` (`RUST_LOG=debug` for more). SIGINT/SIGTERM stop
//! accepting and let open connections finish (up to `--shutdown-grace`).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use nitro_net::time::{StepPolicy, TimeClient, TimeConfig};
use nitro_net::{
    Addr, ClientConfig, EgressClient, EgressServer, IngressForward, IngressServer, Limits,
    LocalProxy, Policy, ServerHandle, Shutdown,
};

#[derive(Parser)]
#[command(
    about = "vsock tunnels for AWS Nitro Enclaves: parent-side egress server with policy, enclave-side proxies, ingress"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parent side: the egress server (with its policy and the time service) and ingress
    /// listeners.
    Parent(ParentArgs),
    /// Enclave side: local proxies and forwards through the parent, ingress listeners, clock
    /// synchronisation.
    Enclave(EnclaveArgs),
}

#[derive(Args)]
struct LimitArgs {
    /// Connections relayed at once by each listener.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds without traffic after which a connection is closed (0: never).
    #[arg(long, default_value_t = 3600)]
    idle_timeout: u64,
    /// Seconds open connections get to finish on shutdown.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        let mut l = Limits::default();
        l.max_connections = self.max_connections;
        l.idle_timeout = (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout));
        l.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        l
    }
}

#[derive(Args)]
struct ParentArgs {
    /// Where the enclave reaches the egress server: vsock:PORT, hybrid:UDS:PORT, uds:DIR:PORT.
    #[arg(long)]
    listen: Addr,
    /// The egress policy (TOML with [[allow]] / [[deny]] rules).
    #[arg(long)]
    policy: std::path::PathBuf,
    /// Forward a parent TCP address to an enclave port: TCP_ADDR=PORT (the port on the
    /// --listen transport) or TCP_ADDR=ADDR (any transport address). Repeatable.
    #[arg(long = "ingress", value_name = "TCP_ADDR=PORT")]
    ingress: Vec<String>,
    /// The enclave's CID, needed for ingress over vsock.
    #[arg(long)]
    enclave_cid: Option<u32>,
    /// Send a PROXY protocol v2 header with the client address on ingress connections.
    #[arg(long)]
    proxy_protocol: bool,
    /// Do not answer time requests.
    #[arg(long)]
    no_time: bool,
    /// Answer the enclave's forwarded DNS questions (types other than A/AAAA, from `proxy
    /// enclave --dns`) by asking this resolver, e.g. 169.254.169.253:53 on EC2.
    #[arg(long, value_name = "ADDR")]
    dns_upstream: Option<std::net::SocketAddr>,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args)]
struct EnclaveArgs {
    /// The parent's egress server: vsock:CID:PORT, vsock:PORT (parent CID from
    /// nitro_parent_cid, default 3), uds:DIR:PORT.
    #[arg(long)]
    parent: Addr,
    /// A policy enforced inside the enclave too (attested with the image), checked before each
    /// request and against the address the parent connected to.
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
    /// Local HTTP CONNECT proxy address (for HTTPS_PROXY), e.g. 127.0.0.1:3128.
    #[arg(long)]
    http_proxy: Option<String>,
    /// Local SOCKS5 proxy address (for ALL_PROXY=socks5h://...), e.g. 127.0.0.1:1080.
    #[arg(long)]
    socks: Option<String>,
    /// Fixed forward LOCAL_ADDR=HOST:PORT (repeatable).
    #[arg(long = "forward", value_name = "LOCAL_ADDR=HOST:PORT")]
    forward: Vec<String>,
    /// Forward the enclave port PORT (parent ingress) to LOCAL_ADDR (repeatable).
    #[arg(long = "ingress", value_name = "PORT=LOCAL_ADDR")]
    ingress: Vec<String>,
    /// Do not try to bring the loopback interface up.
    #[arg(long)]
    no_loopback_up: bool,
    /// Transparent egress for unmodified programs: accept connections redirected by iptables on
    /// 127.0.0.1:PORT and [::1]:PORT, and install the REDIRECT rules (needs CAP_NET_ADMIN and
    /// iptables-legacy). Use with --dns.
    #[arg(long, value_name = "PORT")]
    transparent: Option<u16>,
    /// With --transparent: do not install the iptables rules (the image installs them).
    #[arg(long)]
    no_redirect_rules: bool,
    /// Serve DNS on ADDR (UDP and TCP; 127.0.0.1:53 with `nameserver 127.0.0.1` in
    /// /etc/resolv.conf): synthetic addresses for names the enclave policy admits.
    #[arg(long, value_name = "ADDR")]
    dns: Option<std::net::SocketAddr>,
    /// Synchronise with the parent's clock every SECONDS (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    time_sync: u64,
    /// Step the system clock (needs CAP_SYS_TIME) instead of only reporting the offset.
    #[arg(long)]
    step_clock: bool,
    /// Refuse time answers further than this many seconds from the local clock.
    #[arg(long)]
    max_time_offset: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// `127.0.0.1:3128` or any transport address (`tcp:...`, `uds:...`).
fn local_addr(s: &str) -> anyhow::Result<Addr> {
    if let Ok(a) = s.parse::<Addr>() {
        return Ok(a);
    }
    format!("tcp:{s}")
        .parse::<Addr>()
        .with_context(|| format!("{s:?} is neither HOST:PORT nor a transport address"))
}

fn split_eq<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once('=')
        .with_context(|| format!("{what} {s:?}: expected LEFT=RIGHT"))
}

async fn parent(a: ParentArgs) -> anyhow::Result<()> {
    let policy = Policy::from_toml_file(&a.policy)
        .with_context(|| format!("policy {}", a.policy.display()))?;
    let (allow, deny) = policy.len();
    tracing::info!(policy = %a.policy.display(), allow, deny, "policy loaded");
    let shutdown = Shutdown::new();
    let limits = a.limits.limits();
    let mut servers: Vec<ServerHandle> = Vec::new();
    let mut egress = EgressServer::new(policy)
        .limits(limits.clone())
        .time_service(!a.no_time);
    if let Some(up) = a.dns_upstream {
        egress = egress.dns_upstream(up);
    }
    servers.push(egress.spawn_with_shutdown(a.listen.bind().await?, shutdown.clone()));
    for spec in &a.ingress {
        let (tcp, target) = split_eq(spec, "--ingress")?;
        let target = match target.parse::<u32>() {
            Ok(port) => match &a.listen {
                Addr::Vsock { .. } => {
                    let Some(cid) = a.enclave_cid else {
                        bail!("--ingress {spec}: ingress over vsock needs --enclave-cid");
                    };
                    Addr::Vsock {
                        cid: Some(cid),
                        port,
                    }
                }
                other => other.with_port(port)?,
            },
            Err(_) => target.parse::<Addr>()?,
        };
        let listener = local_addr(tcp)?.bind().await?;
        tracing::info!(listen = %listener.local_addr(), %target, proxy_protocol = a.proxy_protocol, "ingress");
        servers.push(
            IngressServer::new(target)
                .proxy_protocol(a.proxy_protocol)
                .limits(limits.clone())
                .spawn_with_shutdown(listener, shutdown.clone()),
        );
    }
    run_until_signal(servers, shutdown).await
}

async fn enclave(a: EnclaveArgs) -> anyhow::Result<()> {
    if !a.no_loopback_up {
        match nitro_net::netlink::loopback_up() {
            Ok(true) => tracing::info!("loopback interface brought up"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not bring the loopback interface up"),
        }
    }
    let shutdown = Shutdown::new();
    let limits = a.limits.limits();
    let mut client_cfg = ClientConfig::default();
    if let Some(path) = &a.policy {
        let p =
            Policy::from_toml_file(path).with_context(|| format!("policy {}", path.display()))?;
        tracing::info!(policy = %path.display(), "enclave-side policy loaded");
        client_cfg.policy = Some(std::sync::Arc::new(p));
    }
    let egress = EgressClient::with_config(a.parent.clone(), client_cfg);
    let mut servers: Vec<ServerHandle> = Vec::new();
    if let Some(addr) = &a.http_proxy {
        let l = local_addr(addr)?.bind().await?;
        servers.push(
            LocalProxy::http_connect(egress.clone())
                .limits(limits.clone())
                .spawn_with_shutdown(l, shutdown.clone()),
        );
    }
    if let Some(addr) = &a.socks {
        let l = local_addr(addr)?.bind().await?;
        servers.push(
            LocalProxy::socks5(egress.clone())
                .limits(limits.clone())
                .spawn_with_shutdown(l, shutdown.clone()),
        );
    }
    for spec in &a.forward {
        let (local, dest) = split_eq(spec, "--forward")?;
        let (host, port) = dest
            .rsplit_once(':')
            .with_context(|| format!("--forward {spec}: expected HOST:PORT after '='"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .with_context(|| format!("--forward {spec}: bad port"))?;
        let l = local_addr(local)?.bind().await?;
        servers.push(
            LocalProxy::forward(egress.clone(), host, port)
                .limits(limits.clone())
                .spawn_with_shutdown(l, shutdown.clone()),
        );
    }
    for spec in &a.ingress {
        let (port, local) = split_eq(spec, "--ingress")?;
        let port: u32 = port
            .parse()
            .with_context(|| format!("--ingress {spec}: bad port"))?;
        let listen = match &a.parent {
            Addr::Vsock { .. } => Addr::Vsock { cid: None, port },
            other => other.with_port(port)?,
        };
        let l = listen.bind().await?;
        servers.push(
            IngressForward::new(local_addr(local)?)
                .limits(limits.clone())
                .spawn_with_shutdown(l, shutdown.clone()),
        );
    }
    let _time = (a.time_sync > 0).then(|| {
        let mut cfg = TimeConfig::default();
        cfg.interval = Duration::from_secs(a.time_sync);
        cfg.max_offset = a.max_time_offset.map(Duration::from_secs);
        if a.step_clock {
            cfg.step = StepPolicy::Step {
                min_offset: Duration::from_millis(100),
            };
        }
        TimeClient::new(a.parent.clone()).config(cfg).spawn()
    });
    let names = nitro_net::synthetic::SyntheticNames::new(Default::default())?;
    let _dns = match a.dns {
        Some(addr) => Some(
            nitro_net::dns::DnsServer::new(egress.clone(), names.clone())
                .bind(addr)
                .await?,
        ),
        None => None,
    };
    let mut transparent = Vec::new();
    if let Some(port) = a.transparent {
        for host in ["127.0.0.1", "[::1]"] {
            let l = format!("tcp:{host}:{port}").parse::<Addr>()?.bind().await?;
            transparent.push(
                nitro_net::transparent::TransparentProxy::new(egress.clone(), names.clone())
                    .limits(limits.clone())
                    .spawn_with_shutdown(l, shutdown.clone()),
            );
        }
        if !a.no_redirect_rules {
            nitro_net::transparent::RedirectRules::new(port).install()?;
        }
    }
    if servers.is_empty() && transparent.is_empty() && a.dns.is_none() && a.time_sync == 0 {
        bail!(
            "nothing to do: give --http-proxy, --socks, --forward, --ingress, --transparent, --dns or --time-sync"
        );
    }
    run_until_signal(servers, shutdown).await
}

async fn run_until_signal(servers: Vec<ServerHandle>, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.trigger();
    for s in servers {
        let stats = s.stats();
        let local = s.local_addr().clone();
        s.shutdown().await?;
        tracing::info!(listen = %local, connections = stats.connections_total, bytes_up = stats.bytes_up, bytes_down = stats.bytes_down, refused = stats.refused, "stopped");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Parent(a) => parent(a).await,
        Cmd::Enclave(a) => enclave(a).await,
    }
}
