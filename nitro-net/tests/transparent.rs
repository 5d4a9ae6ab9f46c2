//! Transparent egress end to end, inside a network namespace made by the test: real
//! `iptables-legacy` REDIRECT rules, the transparent listener and the in-enclave DNS server, a
//! parent egress server over the Unix-socket transport, and unmodified clients (`curl`,
//! Python `urllib`, `getent`, `dig`) with no proxy variables. Destinations are loopback
//! servers of the namespace; the synthetic ranges and the "denied IP literal" are local routes
//! of the namespace, so nothing can leave it.
//!
//! Needs root (namespaces, iptables). Network namespaces are per thread, so the scenario runs
//! in a re-executed copy of this test binary under `unshare -n -m` (the mount namespace lets it
//! point `/etc/resolv.conf` at the in-enclave DNS server).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nitro_net::dns::DnsServer;
use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
use nitro_net::transparent::{RedirectRules, TransparentProxy};
use nitro_net::{Addr, ClientConfig, EgressClient, EgressServer, Policy, StaticResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHILD_VAR: &str = "NITRO_TRANSPARENT_NETNS_CHILD";
const TOOLS: &[&str] = &[
    "unshare",
    "iptables-legacy",
    "ip6tables-legacy",
    "ip",
    "mount",
    "curl",
    "dig",
    "getent",
    "python3",
    "openssl",
    "dnsmasq",
];

fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI runs as root with scripts/install.sh done)");
    }
    eprintln!("SKIPPED: {why}");
}

#[test]
fn transparent_egress_in_a_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail("needs root (network namespace, iptables)");
    }
    for t in TOOLS {
        if common::tool(t).is_none() {
            return;
        }
    }
    let exe = std::env::current_exe().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private"])
        .arg(exe)
        .args([
            "--exact",
            "netns_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the namespace scenario failed");
    assert!(
        text.contains("TRANSPARENT SCENARIO PASSED"),
        "the scenario did not run"
    );
    eprintln!("namespace scenario took {:?}", started.elapsed());
}

/// The scenario, run only by [`transparent_egress_in_a_network_namespace`] inside the
/// namespace it makes.
#[test]
#[ignore = "runs inside the network namespace made by transparent_egress_in_a_network_namespace"]
fn netns_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        eprintln!("netns_child runs only inside transparent_egress_in_a_network_namespace");
        return;
    }
    common::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario());
    println!("TRANSPARENT SCENARIO PASSED");
}

fn sh(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs an unmodified client with no proxy variables.
async fn client(program: &str, args: &[&str]) -> Run {
    let mut c = tokio::process::Command::new(program);
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for v in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ] {
        c.env_remove(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
        .unwrap();
    let r = Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ {program} {}\n  -> {:?} {:?} {:?}",
        args.join(" "),
        r.code,
        r.stdout.trim(),
        r.stderr.trim()
    );
    r
}

const BODY: &str = "hello through the transparent path";

/// A minimal HTTP/1.1 server answering every request with [`BODY`]; counts requests.
async fn http_server(port: u16) -> Arc<AtomicU64> {
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    hits
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never listened");
}

/// Waits until a DNS server answers (any answer) on `addr`.
async fn wait_dns(addr: SocketAddr) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // "web.test TXT", id 0x0101.
    let q = b"\x01\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x04test\x00\x00\x10\x00\x01";
    let mut buf = [0u8; 512];
    for _ in 0..100 {
        s.send_to(q, addr).await.unwrap();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(50), s.recv_from(&mut buf)).await
        {
            return;
        }
    }
    panic!("no DNS server answers on {addr}");
}

fn is_synthetic(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
        IpAddr::V6(a) => a.segments()[..4] == [0xfd6e, 0x6974, 0x726f, 0],
    }
}

async fn synthetic_v4(name: &str, port: u16) -> SocketAddr {
    // getaddrinfo → /etc/resolv.conf → the in-enclave DNS server.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
        .await
        .unwrap()
        .collect();
    let a = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or_else(|| panic!("{name}: no IPv4 address in {addrs:?}"));
    assert!(is_synthetic(a.ip()), "{a}");
    a
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // --- the namespace: loopback, synthetic ranges and the "denied literal" are local -----
    nitro_net::netlink::loopback_up().unwrap();
    sh(
        "ip",
        &["route", "add", "local", "198.18.0.0/15", "dev", "lo"],
    );
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
    );
    sh("ip", &["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let resolv = d.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
    )
    .unwrap();
    sh(
        "mount",
        &["--bind", resolv.to_str().unwrap(), "/etc/resolv.conf"],
    );

    // --- destinations -----------------------------------------------------------------------
    let hits = http_server(8080).await;
    let echo = common::echo_server().await;
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=secure.test",
            "-addext",
            "subjectAltName=DNS:secure.test",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    let _tls = tokio::process::Command::new("openssl")
        .args(["s_server", "-accept", "127.0.0.1:443", "-www", "-quiet"])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The parent's upstream resolver (for the record types the enclave forwards).
    let _dnsmasq = tokio::process::Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--port=5353",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--txt-record=web.test,v=transparent",
            "--user=root",
            "--pid-file=",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port("127.0.0.1:443".parse().unwrap()).await;
    wait_dns("127.0.0.1:5353".parse().unwrap()).await;

    // --- the parent ---------------------------------------------------------------------------
    let parent_policy = Policy::builder()
        .allow_host("web.test", &[8080])
        .allow_host("rebind.test", &[8080])
        .allow_host("secure.test", &[443])
        .allow_host("echo.test", &[echo.port()])
        .allow_cidr("127.0.0.1/32", &[])
        .deny_cidr("127.0.0.2/32", &[])
        .deny_host("inner.test", &[])
        .build()
        .unwrap();
    let resolver = StaticResolver::new()
        .with("web.test", ["127.0.0.1".parse().unwrap()])
        .with("secure.test", ["127.0.0.1".parse().unwrap()])
        .with("echo.test", ["127.0.0.1".parse().unwrap()])
        .with("rebind.test", ["127.0.0.2".parse().unwrap()]);
    let addr: Addr = format!("uds:{}:8000", d.display()).parse().unwrap();
    let parent = EgressServer::new(parent_policy)
        .limits(common::test_limits())
        .resolver(resolver)
        .dns_upstream("127.0.0.1:5353".parse().unwrap())
        .spawn(addr.bind().await.unwrap());

    // --- the enclave ----------------------------------------------------------------------------
    let enclave_policy = Policy::builder()
        .allow_host("web.test", &[])
        .allow_host("rebind.test", &[])
        .allow_host("secure.test", &[])
        .allow_host("echo.test", &[])
        .allow_host("inner.test", &[])
        .allow_cidr("127.0.0.0/8", &[])
        .deny_host("blocked.test", &[])
        .build()
        .unwrap();
    let mut cfg = ClientConfig::default();
    cfg.policy = Some(Arc::new(enclave_policy));
    let egress = EgressClient::with_config(addr.clone(), cfg);
    let names = SyntheticNames::new(SyntheticConfig::default()).unwrap();
    let dns = DnsServer::new(egress.clone(), names.clone())
        .bind("127.0.0.1:53".parse().unwrap())
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for l in ["tcp:127.0.0.1:15001", "tcp:[::1]:15001"] {
        let listener = l.parse::<Addr>().unwrap().bind().await.unwrap();
        proxies.push(
            TransparentProxy::new(egress.clone(), names.clone())
                .limits(common::test_limits())
                .spawn(listener),
        );
    }
    let mut rules = RedirectRules::new(15001);
    rules.default_route = false; // the namespace has local routes for what the test reaches
    rules.install().unwrap();

    // --- DNS --------------------------------------------------------------------------------------
    let r = client("getent", &["hosts", "web.test"]).await;
    assert!(r.ok && r.stdout.contains("web.test"), "getent");
    let ip: IpAddr = r.stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(is_synthetic(ip), "getent gave {ip}");
    let r = client("dig", &["@127.0.0.1", "+short", "web.test", "A"]).await;
    let a: IpAddr = r.stdout.trim().parse().unwrap();
    assert!(a.is_ipv4() && is_synthetic(a));
    let r = client("dig", &["@127.0.0.1", "+short", "+tcp", "web.test", "AAAA"]).await;
    let aaaa: IpAddr = r.stdout.trim().parse().unwrap();
    assert!(aaaa.is_ipv6() && is_synthetic(aaaa));
    let r = client("dig", &["@127.0.0.1", "+short", "web.test", "TXT"]).await;
    assert_eq!(
        r.stdout.trim(),
        "\"v=transparent\"",
        "TXT forwarded to the parent"
    );
    // A program that ignores /etc/resolv.conf: its DNS is redirected to the enclave's server.
    let r = client("dig", &["@192.0.2.1", "+short", "web.test", "A"]).await;
    assert_eq!(
        r.stdout.trim().parse::<IpAddr>().unwrap(),
        a,
        "redirected DNS"
    );
    let r = client("dig", &["@127.0.0.1", "blocked.test", "A"]).await;
    assert!(r.stdout.contains("status: REFUSED"), "denied name");
    let r = client("dig", &["@127.0.0.1", "blocked.test", "TXT"]).await;
    assert!(
        r.stdout.contains("status: REFUSED"),
        "denied name, other type"
    );
    let r = client("getent", &["hosts", "blocked.test"]).await;
    assert!(!r.ok, "getent must not resolve a denied name");
    // An admitted name the parent's policy denies: the parent refuses the forwarded question.
    let r = client("dig", &["@127.0.0.1", "inner.test", "TXT"]).await;
    assert!(
        r.stdout.contains("status: REFUSED"),
        "the parent decides again"
    );

    // --- curl, Python, with no proxy variables -------------------------------------------------
    let r = client(
        "curl",
        &["-sS", "--max-time", "10", "http://web.test:8080/"],
    )
    .await;
    assert!(r.ok && r.stdout == BODY, "curl http");
    for family in ["-4", "-6"] {
        let r = client(
            "curl",
            &["-sS", family, "--max-time", "10", "http://web.test:8080/"],
        )
        .await;
        assert!(r.ok && r.stdout == BODY, "curl http {family}");
    }
    let r = client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            cert.to_str().unwrap(),
            "https://secure.test/",
        ],
    )
    .await;
    assert!(r.ok && r.stdout.contains("s_server"), "curl https");
    let r = client(
        "python3",
        &[
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://web.test:8080/', timeout=10).read().decode())",
        ],
    )
    .await;
    assert!(r.ok && r.stdout.trim() == BODY, "python urllib");
    let hits_before = hits.load(Ordering::SeqCst);

    // --- refusals --------------------------------------------------------------------------------
    let r = client(
        "curl",
        &["-sS", "--max-time", "10", "http://blocked.test:8080/"],
    )
    .await;
    assert_eq!(r.code, Some(6), "denied name: curl cannot resolve it");
    let before = proxies[0].stats();
    let r = client(
        "curl",
        &["-sS", "--max-time", "10", "http://192.0.2.1:8080/"],
    )
    .await;
    assert!(!r.ok, "denied IP literal");
    let r = client(
        "curl",
        &["-sS", "-4", "--max-time", "10", "http://rebind.test:8080/"],
    )
    .await;
    assert!(
        !r.ok,
        "admitted name resolved by the parent to a denied address"
    );
    let after = proxies[0].stats();
    assert_eq!(after.refused, before.refused + 2, "{after:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        hits_before,
        "nothing reached the server"
    );
    assert!(parent.stats().refused >= 1);
    // A synthetic address no name stands behind.
    // (The reset may already be there when connect(2) completes.)
    if let Ok(mut s) = TcpStream::connect("198.18.200.200:8080").await {
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxies[0].stats().unknown_synthetic, 1);

    // A connection made to the listener itself (not redirected) is refused.
    let failed = proxies[0].stats().failed;
    if let Ok(mut s) = TcpStream::connect("127.0.0.1:15001").await {
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxies[0].stats().failed, failed + 1);

    // --- half-close and 50 MB through the transparent path ----------------------------------------
    let to = synthetic_v4("echo.test", echo.port()).await;
    let size = 50 * 1024 * 1024;
    let s = TcpStream::connect(to).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        common::write_pattern(&mut w, 7, size).await;
        w.shutdown().await.unwrap(); // half-close: the echo continues, then ends
    });
    let got = common::check_pattern(&mut r, 7).await;
    writer.await.unwrap();
    assert_eq!(got, size, "50 MB echoed through the transparent path");

    // --- 300 concurrent connections (fewer under a low open-file limit) ---------------------------
    // Every end lives in this process: the client, the transparent listener's accepted end and
    // its tunnel, the parent's accepted tunnel and destination socket, the echo server's end,
    // plus relay pipes while bytes are in flight.
    let n = common::connection_budget(300, 8);
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await?;
            let msg = format!("connection {i}\n").repeat(100);
            s.write_all(msg.as_bytes()).await?;
            s.shutdown().await?;
            let mut back = String::new();
            s.read_to_string(&mut back).await?;
            Ok::<bool, std::io::Error>(back == msg)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, n, "{n} concurrent connections");

    // --- counters ------------------------------------------------------------------------------------
    let ds = dns.stats();
    assert!(
        ds.synthetic >= 4 && ds.denied >= 2 && ds.forwarded >= 1 && ds.forward_failed >= 1,
        "{ds:?}"
    );
    let ts: u64 = proxies.iter().map(|p| p.stats().by_name).sum();
    assert!(ts >= 6 + n as u64, "{ts}");
    eprintln!("dns {ds:?}");
    for p in &proxies {
        eprintln!("transparent {:?}", p.stats());
    }
    rules.remove().unwrap();
    for p in proxies {
        p.shutdown().await.unwrap();
    }
    dns.shutdown();
    parent.shutdown().await.unwrap();
}
