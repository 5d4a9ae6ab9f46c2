//! Transparent TCP egress for unmodified applications.
//!
//! An `iptables -t nat OUTPUT ... -j REDIRECT` rule (legacy iptables: the stock enclave kernel
//! has the `iptable_nat` REDIRECT target but no nftables) sends every outbound TCP connection
//! to a local listener, the [`TransparentProxy`]. It reads the connection's original
//! destination (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`) and opens a tunnel to it through the
//! [`EgressClient`]:
//!
//! - a **synthetic** address handed out by the in-enclave [DNS server](crate::dns) is turned
//!   back into its *name*, which goes to the parent as a name-based request (the parent
//!   resolves and checks name and addresses, rebinding-safe);
//! - a synthetic address no name stands behind (forgotten, or never handed out) is refused;
//! - any other address is an IP literal the application chose: it is forwarded as such, and the
//!   enclave policy and then the parent's policy decide.
//!
//! Loopback stays excluded from the redirection ([`RedirectRules`]), and the tunnel itself
//! runs over vsock, which is not IP: the proxy's own traffic never loops back into it.
//!
//! A refused connection is reset (the application sees `ECONNRESET` right after connecting).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::relay::relay_streams;
use crate::server::{ConnCtx, spawn_server};
pub use crate::stats::TransparentStats;
use crate::stats::{TransparentCounters, bump};
use crate::synthetic::{SyntheticLookup, SyntheticNames};
use crate::{EgressClient, Error, Limits, Listener, PeerAddr, ServerHandle, Shutdown, Stream};

/// The original destination of a redirected TCP connection: `SO_ORIGINAL_DST` for IPv4,
/// `IP6T_SO_ORIGINAL_DST` for IPv6 (chosen by the socket's own family).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr()?;
    let is_v4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    };
    if is_v4 {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))),
            u16::from_be(sa.sin_port),
        ))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
            u16::from_be(sa.sin6_port),
        ))
    }
}

/// Where a redirected connection goes, decided from its original destination (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A tunnel to this host (a name for synthetic addresses, else the IP literal) and port.
    Tunnel {
        /// Name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
        /// Whether `host` came from the synthetic table.
        by_name: bool,
    },
    /// Refuse: a synthetic address with no name behind it.
    UnknownSynthetic,
    /// Refuse: the connection was not redirected (its destination is the listener itself).
    NotRedirected,
}

/// Decides the [`Target`] of a connection whose original destination is `dst`, accepted on
/// `local`.
///
/// ```
/// use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
/// use nitro_net::transparent::{target, Target};
///
/// let names = SyntheticNames::new(SyntheticConfig::default())?;
/// let (v4, _) = names.assign("api.example.com");
/// let local = "127.0.0.1:15001".parse()?;
/// assert_eq!(
///     target(&names, (v4, 443).into(), local),
///     Target::Tunnel { host: "api.example.com".into(), port: 443, by_name: true },
/// );
/// assert_eq!(target(&names, "198.18.9.9:443".parse()?, local), Target::UnknownSynthetic);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn target(names: &SyntheticNames, dst: SocketAddr, local: SocketAddr) -> Target {
    if dst == local {
        return Target::NotRedirected;
    }
    match names.lookup(dst.ip()) {
        SyntheticLookup::Name(host) => Target::Tunnel {
            host,
            port: dst.port(),
            by_name: true,
        },
        SyntheticLookup::Unknown => Target::UnknownSynthetic,
        _ => Target::Tunnel {
            host: crate::policy::canonical_ip(dst.ip()).to_string(),
            port: dst.port(),
            by_name: false,
        },
    }
}

/// The transparent listener: forwards redirected connections through the egress tunnel.
///
/// ```no_run
/// # async fn f() -> Result<(), nitro_net::Error> {
/// use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
/// use nitro_net::transparent::{RedirectRules, TransparentProxy};
///
/// let egress = nitro_net::EgressClient::new("vsock:3:8000".parse()?);
/// let names = SyntheticNames::new(SyntheticConfig::default())?;
/// let listener = "tcp:127.0.0.1:15001".parse::<nitro_net::Addr>()?.bind().await?;
/// let proxy = TransparentProxy::new(egress, names).spawn(listener);
/// RedirectRules::new(15001).install()?;
/// # proxy.detach();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TransparentProxy {
    client: EgressClient,
    names: SyntheticNames,
    limits: Limits,
}

/// A running [`TransparentProxy`].
///
/// Dropping it shuts the listener down (gracefully); [`TransparentHandle::detach`] keeps it
/// running for the life of the process.
#[derive(Debug)]
#[must_use = "dropping the handle shuts the transparent listener down; call detach() to keep it"]
pub struct TransparentHandle {
    server: Option<ServerHandle>,
    counters: Arc<TransparentCounters>,
}

impl TransparentHandle {
    /// Counters, one per decision, and relay totals.
    pub fn stats(&self) -> TransparentStats {
        let relay = self.server.as_ref().map(|s| s.stats()).unwrap_or_default();
        self.counters.snapshot(relay)
    }

    /// The listener's address.
    pub fn local_addr(&self) -> Option<&crate::Addr> {
        self.server.as_ref().map(|s| s.local_addr())
    }

    /// Stops accepting and waits for the relayed connections (bounded by the shutdown grace).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        match self.server.take() {
            Some(s) => s.shutdown().await,
            None => Ok(()),
        }
    }

    /// Lets the listener run until the process ends.
    pub fn detach(mut self) {
        if let Some(s) = self.server.take() {
            let signal = s.shutdown_signal().clone();
            // Keep the handle (and so the server) alive without ever triggering it.
            tokio::spawn(async move {
                signal.wait().await;
                drop(s);
            });
        }
    }
}

impl TransparentProxy {
    /// A proxy forwarding through `client` (whose enclave policy decides first), turning the
    /// synthetic addresses of `names` back into names.
    pub fn new(client: EgressClient, names: SyntheticNames) -> Self {
        TransparentProxy {
            client,
            names,
            limits: Limits::default(),
        }
    }

    /// Sets limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves on `listener` (a `tcp:` listener: `tcp:127.0.0.1:PORT`, and a second proxy on
    /// `tcp:[::1]:PORT` for IPv6) until the handle is shut down or dropped.
    pub fn spawn(self, listener: Listener) -> TransparentHandle {
        self.spawn_with_shutdown(listener, Shutdown::new())
    }

    /// Serves on `listener` until `shutdown` is triggered.
    pub fn spawn_with_shutdown(self, listener: Listener, shutdown: Shutdown) -> TransparentHandle {
        let counters = Arc::new(TransparentCounters::default());
        let this = Arc::new((self.clone(), counters.clone()));
        let server = spawn_server(
            "transparent",
            listener,
            self.limits,
            shutdown,
            move |s, peer, ctx| {
                let this = this.clone();
                async move { this.0.handle(&this.1, s, peer, ctx).await }
            },
        );
        TransparentHandle {
            server: Some(server),
            counters,
        }
    }

    async fn handle(
        &self,
        counters: &TransparentCounters,
        stream: Stream,
        peer: PeerAddr,
        mut ctx: ConnCtx,
    ) {
        let Some(tcp) = stream.as_tcp() else {
            bump(&counters.failed);
            tracing::warn!(%peer, "transparent: not a TCP connection");
            return;
        };
        let local = match tcp.local_addr() {
            Ok(a) => a,
            Err(e) => {
                bump(&counters.failed);
                tracing::debug!(%peer, error = %crate::error::chain(&e), "transparent: no local address");
                return;
            }
        };
        let dst = match original_dst(tcp) {
            Ok(d) => d,
            Err(e) => {
                bump(&counters.failed);
                tracing::warn!(%peer, error = %crate::error::chain(&e), "transparent: no original destination (is the REDIRECT rule installed?)");
                reset(&stream);
                return;
            }
        };
        let (host, port, by_name) = match target(&self.names, dst, local) {
            Target::Tunnel {
                host,
                port,
                by_name,
            } => (host, port, by_name),
            Target::UnknownSynthetic => {
                bump(&counters.unknown_synthetic);
                tracing::warn!(%peer, %dst, "transparent: refused: synthetic address with no name (forgotten or never resolved here)");
                reset(&stream);
                return;
            }
            Target::NotRedirected => {
                bump(&counters.failed);
                tracing::warn!(%peer, "transparent: refused: connection made to the listener itself");
                reset(&stream);
                return;
            }
        };
        let Some(slot) = ctx.try_slot() else {
            bump(&counters.refused);
            tracing::warn!(%peer, limit = ctx.limits.max_connections, "transparent: connection limit reached");
            reset(&stream);
            return;
        };
        let (tunnel, dest) = match self.client.open(&host, port).await {
            Ok(t) => t,
            Err(e) => {
                if e.refusal().is_some() {
                    bump(&counters.refused);
                } else {
                    bump(&counters.failed);
                }
                tracing::warn!(%peer, %dst, %host, port, error = %crate::error::chain(&e), "transparent: refused");
                reset(&stream);
                return;
            }
        };
        bump(if by_name {
            &counters.by_name
        } else {
            &counters.by_address
        });
        ctx.handshake_done();
        let guard = ctx
            .registry
            .register(peer.to_string(), format!("{host}:{port} ({dest})"));
        tracing::info!(conn = guard.id, %peer, %dst, %host, port, %dest, "transparent: forwarded");
        let r = relay_streams(stream, tunnel, &ctx.limits, &guard.bytes, guard.totals()).await;
        if let Err(e) = r {
            tracing::debug!(conn = guard.id, error = %crate::error::chain(&e), "transparent: closed with an error");
        }
        drop(slot);
    }
}

/// Closes with a reset (`SO_LINGER` 0) so that the application sees the refusal at once.
fn reset(stream: &Stream) {
    if let Some(tcp) = stream.as_tcp() {
        let _ = tcp.set_zero_linger();
    }
}

/// The `iptables` rules that redirect outbound TCP to the transparent listener (legacy
/// iptables, `nat` table, `OUTPUT` chain, through a chain of their own).
///
/// ```
/// use nitro_net::transparent::RedirectRules;
///
/// let rules = RedirectRules::new(15001);
/// let cmds = rules.commands(false);
/// assert!(cmds.iter().any(|c| c.join(" ") == "-t nat -A NITRO_TRANSPARENT -p tcp -j REDIRECT --to-ports 15001"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedirectRules {
    /// The transparent listener's port.
    pub port: u16,
    /// Name of the chain (default `NITRO_TRANSPARENT`).
    pub chain: String,
    /// The IPv4 tool (default `iptables-legacy`, or `iptables` when only that exists).
    pub iptables: PathBuf,
    /// The IPv6 tool (default `ip6tables-legacy`, or `ip6tables`); `None` skips IPv6.
    pub ip6tables: Option<PathBuf>,
    /// Also redirect DNS (UDP and TCP port 53) to the local DNS server on port 53, for
    /// applications that ignore `/etc/resolv.conf` (default on).
    pub redirect_dns: bool,
    /// Users whose connections are not redirected (`-m owner --uid-owner`).
    pub exclude_uids: Vec<u32>,
    /// Also add `local default` routes on `lo` (`ip route replace local default dev lo`, IPv4
    /// and IPv6) when there is no default route, so that connecting to a non-local address
    /// reaches the `OUTPUT` chain instead of failing with "network unreachable" (default on; an
    /// enclave has no other interface). The route is `local`: a plain route through `lo` would
    /// send packets with a loopback source to a non-local address, which the kernel drops as
    /// martians, so the redirected connection would never be accepted.
    pub default_route: bool,
}

fn tool(legacy: &str, plain: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = PathBuf::from(dir).join(legacy);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(plain)
}

impl RedirectRules {
    /// Rules for a listener on `port`, with the defaults.
    pub fn new(port: u16) -> Self {
        RedirectRules {
            port,
            chain: "NITRO_TRANSPARENT".into(),
            iptables: tool("iptables-legacy", "iptables"),
            ip6tables: Some(tool("ip6tables-legacy", "ip6tables")),
            redirect_dns: true,
            exclude_uids: Vec::new(),
            default_route: true,
        }
    }

    /// The argument lists for one family (`ipv6`), in order (pure).
    pub fn commands(&self, ipv6: bool) -> Vec<Vec<String>> {
        let c = self.chain.as_str();
        let lo = if ipv6 { "::1/128" } else { "127.0.0.0/8" };
        let port = self.port.to_string();
        let mut v: Vec<Vec<&str>> = vec![
            vec!["-t", "nat", "-N", c],
            vec!["-t", "nat", "-A", c, "-o", "lo", "-d", lo, "-j", "RETURN"],
            vec!["-t", "nat", "-A", c, "-d", lo, "-j", "RETURN"],
        ];
        let uids: Vec<String> = self.exclude_uids.iter().map(u32::to_string).collect();
        for u in &uids {
            v.push(vec![
                "-t",
                "nat",
                "-A",
                c,
                "-m",
                "owner",
                "--uid-owner",
                u,
                "-j",
                "RETURN",
            ]);
        }
        if self.redirect_dns {
            for proto in ["udp", "tcp"] {
                v.push(vec![
                    "-t",
                    "nat",
                    "-A",
                    c,
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "53",
                ]);
            }
        }
        v.push(vec![
            "-t",
            "nat",
            "-A",
            c,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ]);
        v.push(vec!["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", c]);
        if self.redirect_dns {
            v.push(vec!["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", c]);
        }
        v.into_iter()
            .map(|c| c.into_iter().map(str::to_owned).collect())
            .collect()
    }

    /// The argument lists that undo [`RedirectRules::commands`] (pure).
    pub fn removal_commands(&self, _ipv6: bool) -> Vec<Vec<String>> {
        let c = self.chain.as_str();
        let mut v = vec![vec!["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", c]];
        if self.redirect_dns {
            v.push(vec!["-t", "nat", "-D", "OUTPUT", "-p", "udp", "-j", c]);
        }
        v.push(vec!["-t", "nat", "-F", c]);
        v.push(vec!["-t", "nat", "-X", c]);
        v.into_iter()
            .map(|c| c.into_iter().map(str::to_owned).collect())
            .collect()
    }

    /// Runs the commands (needs `CAP_NET_ADMIN`): IPv4, then IPv6 when configured, then the
    /// default routes. Undo with [`RedirectRules::remove`].
    pub fn install(&self) -> Result<(), Error> {
        for args in self.commands(false) {
            run(&self.iptables, &args)?;
        }
        if let Some(t) = &self.ip6tables {
            for args in self.commands(true) {
                run(t, &args)?;
            }
        }
        if self.default_route {
            for fam in ["-4", "-6"] {
                if fam == "-6" && self.ip6tables.is_none() {
                    continue;
                }
                let has = Command::new("ip")
                    .args([fam, "route", "show", "default"])
                    .output()
                    .map(|o| !o.stdout.is_empty())
                    .unwrap_or(false);
                if !has {
                    run(
                        &PathBuf::from("ip"),
                        &[fam, "route", "replace", "local", "default", "dev", "lo"]
                            .map(str::to_owned),
                    )?;
                }
            }
        }
        tracing::info!(port = self.port, chain = %self.chain, "transparent: redirect rules installed");
        Ok(())
    }

    /// Removes the rules (best effort: every command runs; the first error is returned).
    pub fn remove(&self) -> Result<(), Error> {
        let mut first = None;
        for args in self.removal_commands(false) {
            if let Err(e) = run(&self.iptables, &args) {
                first.get_or_insert(e);
            }
        }
        if let Some(t) = &self.ip6tables {
            for args in self.removal_commands(true) {
                if let Err(e) = run(t, &args) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn run(program: &PathBuf, args: &[String]) -> Result<(), Error> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {shown}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!("running {shown}"),
            io::Error::other(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticConfig;

    #[test]
    fn targets() {
        let names = SyntheticNames::new(SyntheticConfig::default()).unwrap();
        let (_, v6) = names.assign("a.example");
        let local: SocketAddr = "[::1]:15001".parse().unwrap();
        assert_eq!(
            target(&names, SocketAddr::new(v6.into(), 80), local),
            Target::Tunnel {
                host: "a.example".into(),
                port: 80,
                by_name: true
            }
        );
        assert_eq!(
            target(&names, "[::ffff:10.0.0.1]:22".parse().unwrap(), local),
            Target::Tunnel {
                host: "10.0.0.1".into(),
                port: 22,
                by_name: false
            }
        );
        assert_eq!(target(&names, local, local), Target::NotRedirected);
    }

    #[test]
    fn rules_exclude_loopback_before_redirecting() {
        let mut r = RedirectRules::new(15001);
        r.exclude_uids = vec![1000];
        for v6 in [false, true] {
            let cmds: Vec<String> = r.commands(v6).iter().map(|c| c.join(" ")).collect();
            let ret = cmds
                .iter()
                .position(|c| {
                    c.contains("-d 127.0.0.0/8 -j RETURN") || c.contains("-d ::1/128 -j RETURN")
                })
                .unwrap();
            let redir = cmds
                .iter()
                .position(|c| c.ends_with("--to-ports 15001"))
                .unwrap();
            let uid = cmds
                .iter()
                .position(|c| c.contains("--uid-owner 1000"))
                .unwrap();
            assert!(ret < redir && uid < redir);
            assert!(cmds.last().unwrap().starts_with("-t nat -A OUTPUT"));
        }
        assert_eq!(r.removal_commands(false).len(), 4);
    }
}
