//! Transparent egress and the in-enclave DNS server, each beside a baseline measured in the
//! same run.
//!
//! ```sh
//! cargo bench --bench transparent                      # criterion group + the summary
//! NITRO_BENCH_QUICK=1 cargo bench --bench transparent  # shorter runs
//! ```
//!
//! - `dns/decide` (criterion): the pure decision for a cached synthetic `A` answer.
//! - DNS server over UDP on loopback: p50/p99 of sequential queries and queries/s with 64 in
//!   flight (a Rust load generator, one client thread, the server on one tokio worker), beside
//!   `dnsmasq` answering the same name from its configuration (`--address`), and `dnsperf`
//!   against both when installed.
//! - Transparent path vs explicit `CONNECT` over the same hop (as root, in a network namespace
//!   made for the run with `unshare -n`, with a real `iptables-legacy` REDIRECT rule): bulk
//!   throughput one way and connect latency (connect until the first echoed byte), beside a
//!   direct loopback connection. Both tunnelled paths go through the same `EgressClient`,
//!   Unix-socket hop and parent `EgressServer` to the same destination.

#![allow(missing_docs)] // criterion macros generate undocumented items
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on setup failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use nitro_net::dns::{DnsConfig, DnsServer, decide};
use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
use nitro_net::transparent::{RedirectRules, TransparentProxy};
use nitro_net::{
    Addr, ClientConfig, EgressClient, EgressServer, LocalProxy, Policy, StaticResolver,
};

const CHILD: &str = "NITRO_TRANSPARENT_BENCH_CHILD";
const BULK: usize = 64 << 20;

fn quick() -> bool {
    std::env::var_os("NITRO_BENCH_QUICK").is_some()
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        b.push(u8::try_from(l.len()).unwrap());
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Sequential queries: (p50, p99).
fn dns_latency(server: SocketAddr, n: usize) -> (Duration, Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 512];
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let q = query(i as u16, "bench.test");
        let t = Instant::now();
        s.send(&q).unwrap();
        loop {
            let got = s.recv(&mut buf).unwrap();
            if got >= 2 && buf[..2] == q[..2] {
                break;
            }
        }
        v.push(t.elapsed());
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

/// Queries per second with `window` queries in flight, for `secs` seconds.
fn dns_qps(server: SocketAddr, window: usize, secs: f64) -> f64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let q = query(7, "bench.test");
    let mut buf = [0u8; 512];
    for _ in 0..window {
        s.send(&q).unwrap();
    }
    let start = Instant::now();
    let mut answered = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        match s.recv(&mut buf) {
            Ok(_) => {
                answered += 1;
                s.send(&q).unwrap();
            }
            // A lost datagram: put one back in flight.
            Err(_) => s.send(&q).map(drop).unwrap(),
        }
    }
    answered as f64 / start.elapsed().as_secs_f64()
}

fn dnsperf(server: SocketAddr, secs: u32) -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let f = dir.path().join("queries");
    std::fs::write(&f, "bench.test A\n".repeat(100)).ok()?;
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(&f)
        .args(["-l", &secs.to_string(), "-c", "1", "-T", "1", "-q", "64"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("Queries per second"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
}

fn dnsmasq() -> Option<(Child, SocketAddr)> {
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").ok()?;
        s.local_addr().ok()?.port()
    };
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--address=/bench.test/198.18.0.1",
            "--pid-file=",
            "--cache-size=1000",
        ])
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let a: SocketAddr = ([127, 0, 0, 1], port).into();
    // Wait for it to answer.
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        let _ = s.send_to(&query(1, "bench.test"), a);
        if s.recv(&mut buf).is_ok() {
            return Some((child, a));
        }
    }
    None
}

fn dns_part(c: &mut Criterion) {
    let names = SyntheticNames::new(SyntheticConfig::default()).unwrap();
    let policy = Policy::builder().allow_host("*.test", &[]).build().unwrap();
    let cfg = DnsConfig::default();
    let q = query(1, "bench.test");
    c.bench_function("dns/decide (cached synthetic A)", |b| {
        b.iter(|| decide(std::hint::black_box(&q), Some(&policy), &names, &cfg))
    });

    // The server, on a one-worker runtime (one core), with the enclave policy.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cc = ClientConfig::default();
    cc.policy = Some(Arc::new(policy));
    let client = EgressClient::with_config("uds:/nonexistent:1".parse().unwrap(), cc);
    let dns = rt
        .block_on(DnsServer::new(client, names).bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let ours = dns.local_addr();
    let n = if quick() { 5_000 } else { 20_000 };
    let secs = if quick() { 1.0 } else { 3.0 };
    let baseline = dnsmasq();
    println!("\n## DNS server (UDP, loopback, one client thread)\n");
    println!("| server | p50 | p99 | queries/s (64 in flight) | dnsperf queries/s |");
    println!("|---|---|---|---|---|");
    let mut rows = vec![("nitro-net DnsServer (synthetic A)", ours)];
    if let Some((_, a)) = &baseline {
        rows.push(("dnsmasq (--address, baseline)", *a));
    }
    for (name, a) in rows {
        let (p50, p99) = dns_latency(a, n);
        let qps = dns_qps(a, 64, secs);
        let perf = dnsperf(a, secs as u32).unwrap_or_else(|| "-".into());
        println!("| {name} | {p50:.1?} | {p99:.1?} | {qps:.0} | {perf} |");
    }
    if let Some((mut child, _)) = baseline {
        let _ = child.kill();
        let _ = child.wait();
    }
    dns.shutdown();
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return transparent_child();
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(if quick() { 1 } else { 3 }))
        .warm_up_time(Duration::from_millis(500));
    dns_part(&mut c);

    if !is_root() {
        println!("\ntransparent path: skipped (needs root for a network namespace and iptables)");
        return;
    }
    let out = Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .output();
    match out {
        Ok(o) => {
            print!("{}", String::from_utf8_lossy(&o.stdout));
            if !o.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&o.stderr));
            }
        }
        Err(e) => println!("\ntransparent path: skipped ({e})"),
    }
}

/// Reads and discards; answers one byte per `BULK` bytes. Echoes when `echo`.
fn server(echo: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0usize;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Ok(n) => {
                            got += n;
                            while got >= BULK {
                                got -= BULK;
                                if s.write_all(&[1]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    a
}

#[derive(Clone, Copy)]
enum Path {
    Direct(SocketAddr),
    Connect { proxy: SocketAddr, dest: SocketAddr },
    Transparent(SocketAddr),
}

fn open(p: Path) -> TcpStream {
    let s = match p {
        Path::Direct(a) | Path::Transparent(a) => TcpStream::connect(a).unwrap(),
        Path::Connect { proxy, dest } => {
            let mut s = TcpStream::connect(proxy).unwrap();
            write!(s, "CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).unwrap();
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
            s
        }
    };
    s.set_nodelay(true).unwrap();
    s
}

fn throughput(p: Path, rounds: usize) -> f64 {
    let mut s = open(p);
    let chunk = vec![0x5au8; 256 * 1024];
    let mut ack = [0u8; 1];
    let t = Instant::now();
    for _ in 0..rounds {
        for _ in 0..BULK / chunk.len() {
            s.write_all(&chunk).unwrap();
        }
        s.read_exact(&mut ack).unwrap();
    }
    (BULK * rounds) as f64 / t.elapsed().as_secs_f64() / 1e9 * 8.0
}

fn connect_latency(p: Path, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        let mut s = open(p);
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
        v.push(t.elapsed());
    }
    v
}

fn transparent_child() {
    nitro_net::netlink::loopback_up().unwrap();
    let ok = Command::new("ip")
        .args(["route", "add", "local", "198.18.0.0/15", "dev", "lo"])
        .status()
        .unwrap();
    assert!(ok.success());
    let (sink, echo) = (server(false), server(true));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tunnel: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let policy = Policy::builder()
        .allow_host("*.test", &[])
        .allow_cidr("127.0.0.1/32", &[])
        .build()
        .unwrap();
    let resolver = StaticResolver::new()
        .with("sink.test", [sink.ip()])
        .with("echo.test", [echo.ip()]);
    let mut cc = ClientConfig::default();
    cc.policy = Some(Arc::new(policy.clone()));
    let names = SyntheticNames::new(SyntheticConfig::default()).unwrap();
    let (_servers, proxy, _tp) = rt.block_on(async {
        let parent = EgressServer::new(policy)
            .resolver(resolver)
            .spawn(tunnel.bind().await.unwrap());
        let egress = EgressClient::with_config(tunnel.clone(), cc);
        let l = "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap();
        let proxy = LocalProxy::http_connect(egress.clone()).spawn(l);
        let l = "tcp:127.0.0.1:15001"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap();
        let tp = TransparentProxy::new(egress, names.clone()).spawn(l);
        (parent, proxy, tp)
    });
    let proxy_addr: SocketAddr = proxy.local_addr().to_string()["tcp:".len()..]
        .parse()
        .unwrap();
    let mut rules = RedirectRules::new(15001);
    rules.default_route = false;
    rules.redirect_dns = false;
    rules.ip6tables = None;
    rules.install().unwrap();
    let (sink_v4, _) = names.assign("sink.test");
    let (echo_v4, _) = names.assign("echo.test");
    let (trials, rounds, n) = if quick() { (2, 2, 300) } else { (3, 4, 1_000) };
    println!("\n## Transparent path vs explicit CONNECT (same Unix-socket hop, same parent)\n");
    let paths = [
        (
            "direct loopback (baseline)",
            Path::Direct(sink),
            Path::Direct(echo),
        ),
        (
            "explicit HTTP CONNECT (LocalProxy)",
            Path::Connect {
                proxy: proxy_addr,
                dest: sink,
            },
            Path::Connect {
                proxy: proxy_addr,
                dest: echo,
            },
        ),
        (
            "transparent (REDIRECT + synthetic name)",
            Path::Transparent((sink_v4, sink.port()).into()),
            Path::Transparent((echo_v4, echo.port()).into()),
        ),
    ];
    // The machine is shared: interleave the paths over several trials, keep each path's best
    // throughput and pool its latencies, so that a load spike does not land on one path only.
    let mut best = [0f64; 3];
    let mut lats: [Vec<Duration>; 3] = Default::default();
    for _ in 0..trials {
        for (i, (_, bulk, lat)) in paths.iter().enumerate() {
            let _ = connect_latency(*lat, 20); // warm up
            best[i] = best[i].max(throughput(*bulk, rounds));
            lats[i].extend(connect_latency(*lat, n));
        }
    }
    println!(
        "| path | throughput (Gbit/s, one way, best of {trials}) | connect + first byte p50 | p99 |"
    );
    println!("|---|---|---|---|");
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let p50 = pct(&mut lats[i], 0.5);
        let p99 = pct(&mut lats[i], 0.99);
        println!("| {name} | {:.2} | {p50:.1?} | {p99:.1?} |", best[i]);
    }
    println!(
        "\ntransparent / CONNECT throughput: {:.2}x; connect p50 difference: {:+.1} µs",
        best[2] / best[1],
        (pct(&mut lats[2], 0.5).as_secs_f64() - pct(&mut lats[1], 0.5).as_secs_f64()) * 1e6
    );
    rules.remove().unwrap();
}
