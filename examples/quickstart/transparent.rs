//! Quickstart step 6: transparent egress. An unmodified `curl`, with no proxy variables, asks
//! for `http://web.internal:PORT/`: the in-enclave DNS server answers with a synthetic address,
//! an `iptables-legacy` REDIRECT rule sends the connection to the transparent listener, which
//! turns the address back into the name and opens a tunnel to the parent, which resolves the
//! name and checks its policy.
//!
//! This needs root (a network namespace and iptables rules), so it runs in a copy of this
//! program started under `unshare -n -m`; without root, or without the tools, it says it is
//! skipped and why.

use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use nitro_net::dns::DnsServer;
use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
use nitro_net::transparent::{RedirectRules, TransparentProxy};
use nitro_net::{Addr, ClientConfig, EgressClient, EgressServer, Policy, StaticResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Context;

/// Set in the copy of the quickstart that runs inside the namespace.
pub(crate) const CHILD_VAR: &str = "NITRO_QUICKSTART_TRANSPARENT_CHILD";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

pub(crate) async fn run(_ctx: &mut Context) -> anyhow::Result<()> {
    if !is_root() {
        println!(
            "    skipped: needs root (a network namespace and iptables rules); run the quickstart as root to see it"
        );
        return Ok(());
    }
    let missing: Vec<&str> = [
        "unshare",
        "iptables-legacy",
        "ip6tables-legacy",
        "ip",
        "mount",
        "curl",
    ]
    .into_iter()
    .filter(|t| !on_path(t))
    .collect();
    if !missing.is_empty() {
        println!(
            "    skipped: {} not installed (scripts/install.sh installs them)",
            missing.join(", ")
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private"])
        .arg(exe)
        .env(CHILD_VAR, "1")
        .stdin(Stdio::null())
        .output()
        .await?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "the namespace step failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs inside the namespace (the quickstart's `main` calls it when [`CHILD_VAR`] is set).
pub(crate) async fn child() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The namespace: lo up, the synthetic ranges routed locally, resolv.conf → 127.0.0.1.
    nitro_net::netlink::loopback_up()?;
    sh(
        "ip",
        &["route", "add", "local", "198.18.0.0/15", "dev", "lo"],
    )?;
    sh(
        "ip",
        &[
            "-6",
            "route",
            "add",
            "local",
            "fd6e:6974:726f::/64",
            "dev",
            "lo",
        ],
    )?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n")?;
    sh(
        "mount",
        &["--bind", &resolv.display().to_string(), "/etc/resolv.conf"],
    )?;

    // Parent: a web server on loopback, the egress server admitting web.internal.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "hello, unmodified application\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let parent_policy = Policy::builder()
        .allow_host("web.internal", &[port])
        .allow_cidr("127.0.0.1/32", &[port])
        .build()?;
    let tunnel: Addr = format!("uds:{}:8000", dir.path().display()).parse()?;
    let parent = EgressServer::new(parent_policy)
        .resolver(StaticResolver::new().with("web.internal", ["127.0.0.1".parse()?]))
        .spawn(tunnel.bind().await?);

    // Enclave: its own policy, the DNS server, the transparent listener, the REDIRECT rules.
    let mut cfg = ClientConfig::default();
    cfg.policy = Some(Arc::new(
        Policy::builder()
            .allow_host("web.internal", &[])
            .allow_cidr("127.0.0.1/32", &[])
            .build()?,
    ));
    let egress = EgressClient::with_config(tunnel, cfg);
    let names = SyntheticNames::new(SyntheticConfig::default())?;
    let dns = DnsServer::new(egress.clone(), names.clone())
        .bind("127.0.0.1:53".parse()?)
        .await?;
    let mut proxies = Vec::new();
    for a in ["tcp:127.0.0.1:15001", "tcp:[::1]:15001"] {
        let l = a.parse::<Addr>()?.bind().await?;
        proxies.push(TransparentProxy::new(egress.clone(), names.clone()).spawn(l));
    }
    let mut rules = RedirectRules::new(15001);
    rules.default_route = false; // the namespace routes the synthetic ranges locally
    rules.install()?;

    let url = format!("http://web.internal:{port}/");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &url])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .await
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("    $ curl {url}   (no proxy variables)");
    println!("    -> {}", String::from_utf8_lossy(&out.stdout).trim());
    let d = dns.stats();
    let t: u64 = proxies.iter().map(|p| p.stats().by_name).sum();
    println!(
        "    DNS: {} synthetic answers; transparent listener: {t} connection(s) forwarded by name",
        d.synthetic
    );
    rules.remove()?;
    for p in proxies {
        p.shutdown().await?;
    }
    dns.shutdown();
    parent.shutdown().await?;
    Ok(())
}
