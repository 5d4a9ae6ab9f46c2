//! nitro-net tunnel throughput, round-trip time and idle memory, beside a direct loopback TCP
//! connection and a two-`socat` chain over the same Unix-socket hop.
//!
//! ```sh
//! cargo bench --bench net                      # criterion groups + the summary table
//! NITRO_BENCH_QUICK=1 cargo bench --bench net  # shorter runs
//! ```
//!
//! The three paths to the same destination on 127.0.0.1:
//! - `direct`: the client connects to the destination;
//! - `nitro-net chain`: the client connects to a local forward ([`LocalProxy::forward`], the
//!   enclave side), which opens a tunnel over `uds:DIR:PORT` to the [`EgressServer`] (the
//!   parent side, policy-checked), which connects to the destination: the full chain an
//!   enclave program uses, with the vsock hop replaced by a Unix socket;
//! - `nitro-net chain, copy relay, 16 KiB writes`: the chain with copying relays and every
//!   write capped at `EMULATOR_MAX_WRITE` (`Limits::max_write`, `ClientConfig::max_write`),
//!   what the emulator's enclave needs;
//! - `socat chain`: `socat TCP-LISTEN → UNIX-CONNECT` and `socat UNIX-LISTEN → TCP` over one
//!   Unix socket, the usual hand-rolled pair of proxies.
//!
//! Criterion groups: `net/rtt` (one 32-byte ping-pong over an established connection) and
//! `net/throughput` (16 MiB one way over an established connection). After them the summary
//! prints RTT percentiles over 20 000 round trips, iperf3 throughput (3 s, one stream, each
//! path), and the memory an idle tunnelled connection costs (RSS growth of this process,
//! which holds both sides of the tunnel, over 2 000 idle connections).
//!
//! The tunnel's two servers run on a 2-worker tokio runtime in this process; the clients and
//! destinations are blocking threads (or iperf3 processes).

#![allow(missing_docs)] // criterion macros generate undocumented items
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark aborts on setup failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use nitro_net::{
    Addr, ClientConfig, EMULATOR_MAX_WRITE, EgressClient, EgressServer, Limits, LocalProxy, Policy,
    ServerHandle,
};

const MSG: usize = 32;
const BULK: usize = 16 << 20;

fn quick() -> bool {
    std::env::var_os("NITRO_BENCH_QUICK").is_some()
}

/// Blocking echo server, a thread per connection.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    a
}

/// Blocking sink: reads and discards, answers one byte per `BULK` bytes received.
fn sink_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0usize;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
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

/// Holds idle connections open (for the memory measurement).
fn hold_server() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            // One request/response so that the relays have moved data (and taken buffers).
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
                let _ = tx.send(s);
            }
        }
    });
    (a, rx)
}

struct Paths {
    direct: SocketAddr,
    chain: SocketAddr,
    chain_copy: SocketAddr,
    socat: Option<SocketAddr>,
}

struct Setup {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    egress: EgressClient,
    egress_copy: EgressClient,
    /// Copy relays with every write capped at [`EMULATOR_MAX_WRITE`] (`Limits::max_write`).
    egress_capped: EgressClient,
    _servers: Vec<ServerHandle>,
    socats: Vec<Child>,
    dir_path: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().to_path_buf();
        let policy = Policy::builder()
            .allow_cidr("127.0.0.1/32", &[])
            .build()
            .unwrap();
        // Two tunnels: the default zero-copy relay (splice) and the copying relay (64 KiB
        // buffers, what vsock streams use).
        let tunnel: Addr = format!("uds:{}:8000", dir.path().display())
            .parse()
            .unwrap();
        let tunnel_copy: Addr = format!("uds:{}:8001", dir.path().display())
            .parse()
            .unwrap();
        let tunnel_capped: Addr = format!("uds:{}:8002", dir.path().display())
            .parse()
            .unwrap();
        let (server, server_copy, server_capped) = rt.block_on(async {
            (
                EgressServer::new(policy.clone()).spawn(tunnel.bind().await.unwrap()),
                EgressServer::new(policy.clone())
                    .limits(copy_limits())
                    .spawn(tunnel_copy.bind().await.unwrap()),
                EgressServer::new(policy)
                    .limits(capped_limits())
                    .spawn(tunnel_capped.bind().await.unwrap()),
            )
        });
        let mut capped_cfg = ClientConfig::default();
        capped_cfg.max_write = Some(EMULATOR_MAX_WRITE);
        Setup {
            rt,
            _dir: dir,
            egress: EgressClient::new(tunnel),
            egress_copy: EgressClient::new(tunnel_copy),
            egress_capped: EgressClient::with_config(tunnel_capped, capped_cfg),
            _servers: vec![server, server_copy, server_capped],
            socats: Vec::new(),
            dir_path,
        }
    }

    /// A local forward to `dest` through the tunnel (zero-copy or copying relays).
    fn forward(&mut self, dest: SocketAddr, zero_copy: bool) -> SocketAddr {
        let (egress, limits) = if zero_copy {
            (self.egress.clone(), Limits::default())
        } else {
            (self.egress_copy.clone(), copy_limits())
        };
        self.forward_with(dest, egress, limits)
    }

    /// A local forward to `dest` through copying relays whose writes are capped at 16 KiB.
    fn forward_capped(&mut self, dest: SocketAddr) -> SocketAddr {
        let egress = self.egress_capped.clone();
        self.forward_with(dest, egress, capped_limits())
    }

    fn forward_with(
        &mut self,
        dest: SocketAddr,
        egress: EgressClient,
        limits: Limits,
    ) -> SocketAddr {
        let h = self.rt.block_on(async move {
            let l = "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap();
            LocalProxy::forward(egress, dest.ip().to_string(), dest.port())
                .limits(limits)
                .spawn(l)
        });
        let a = h.local_addr().to_string()["tcp:".len()..].parse().unwrap();
        self._servers.push(h);
        a
    }

    /// Two socat processes: TCP → Unix socket → TCP `dest`.
    fn socat(&mut self, dest: SocketAddr, name: &str) -> Option<SocketAddr> {
        let sock = self.dir_path.join(format!("socat-{name}.sock"));
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let spawn = |args: Vec<String>| {
            Command::new("socat")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let back = spawn(vec![
            format!("UNIX-LISTEN:{},fork", sock.display()),
            format!("TCP:{dest}"),
        ]);
        let Ok(back) = back else {
            eprintln!("note: socat not found: the socat chain is skipped");
            return None;
        };
        self.socats.push(back);
        let front = spawn(vec![
            format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
            format!("UNIX-CONNECT:{}", sock.display()),
        ])
        .ok()?;
        self.socats.push(front);
        let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if sock.exists() && TcpStream::connect(a).is_ok() {
                return Some(a);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in &mut self.socats {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn capped_limits() -> Limits {
    let mut l = copy_limits();
    l.max_write = Some(EMULATOR_MAX_WRITE);
    l
}

fn copy_limits() -> Limits {
    let mut l = Limits::default();
    l.zero_copy = false;
    l
}

fn connect(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(a).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn ping(s: &mut TcpStream, buf: &mut [u8; MSG]) {
    s.write_all(buf).unwrap();
    s.read_exact(buf).unwrap();
}

fn rtt_percentiles(a: SocketAddr, n: usize) -> (Duration, Duration, Duration) {
    let mut s = connect(a);
    let mut buf = [7u8; MSG];
    for _ in 0..1000 {
        ping(&mut s, &mut buf);
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            ping(&mut s, &mut buf);
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[n / 2], v[n * 99 / 100], v[n * 999 / 1000])
}

fn bulk(s: &mut TcpStream, chunk: &[u8]) {
    let mut left = BULK;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
}

fn iperf3(port: u16, secs: u32) -> Option<f64> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The open-file soft limit (each tunnelled connection uses 4 descriptors in this process).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// RSS growth per idle tunnelled connection, over `n` connections (both sides of the tunnel
/// are in this process; the client and destination sockets are plain blocking sockets).
fn idle_cost(setup: &mut Setup, n: usize, zero_copy: bool) -> (f64, u64) {
    let (dest, held) = hold_server();
    let fwd = setup.forward(dest, zero_copy);
    let open = |k: usize| -> Vec<(TcpStream, TcpStream)> {
        (0..k)
            .map(|_| {
                let mut c = connect(fwd);
                c.write_all(&[1]).unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).unwrap();
                (c, held.recv().unwrap())
            })
            .collect()
    };
    // A few connections first so that one-time costs (pools, runtime threads) are in the
    // baseline; the growth of tokio's and the allocator's tables with the number of
    // connections is counted.
    let warm = open(20);
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    let conns = open(n);
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib();
    drop(conns);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    (per, after.saturating_sub(before))
}

fn main() {
    if let Ok(mode) = std::env::var("NITRO_NET_IDLE_CHILD") {
        return idle_child(&mode);
    }
    let mut setup = Setup::new();
    let echo = echo_server();
    let sink = sink_server();
    let echo_paths = Paths {
        direct: echo,
        chain: setup.forward(echo, true),
        chain_copy: setup.forward(echo, false),
        socat: setup.socat(echo, "echo"),
    };
    let sink_paths = Paths {
        direct: sink,
        chain: setup.forward(sink, true),
        chain_copy: setup.forward(sink, false),
        socat: setup.socat(sink, "sink"),
    };

    let sink_capped = setup.forward_capped(sink);
    let (mt, ss) = if quick() { (1, 10) } else { (3, 20) };
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(mt))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(ss);

    {
        let mut g = c.benchmark_group("net/rtt");
        for (name, a) in [
            ("direct", Some(echo_paths.direct)),
            ("nitro-net chain", Some(echo_paths.chain)),
            ("nitro-net chain, copy relay", Some(echo_paths.chain_copy)),
            ("socat chain", echo_paths.socat),
        ] {
            let Some(a) = a else { continue };
            let mut s = connect(a);
            let mut buf = [7u8; MSG];
            g.bench_function(name, |b| b.iter(|| ping(&mut s, &mut buf)));
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("net/throughput");
        g.throughput(Throughput::Bytes(BULK as u64));
        let chunk = vec![0x5au8; 128 * 1024];
        for (name, a) in [
            ("direct", Some(sink_paths.direct)),
            ("nitro-net chain", Some(sink_paths.chain)),
            ("nitro-net chain, copy relay", Some(sink_paths.chain_copy)),
            (
                "nitro-net chain, copy relay, 16 KiB writes",
                Some(sink_capped),
            ),
            ("socat chain", sink_paths.socat),
        ] {
            let Some(a) = a else { continue };
            let mut s = connect(a);
            g.bench_function(name, |b| b.iter(|| bulk(&mut s, &chunk)));
        }
        g.finish();
    }
    c.final_summary();

    // --- summary table ---
    let n = if quick() { 5_000 } else { 20_000 };
    println!(
        "\n## nitro-net summary (this machine: {} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("Round trip, {MSG}-byte ping-pong, {n} samples:\n");
    println!("| path | p50 | p99 | p99.9 | added p50 vs direct |");
    println!("|---|---|---|---|---|");
    let direct = rtt_percentiles(echo_paths.direct, n);
    let row = |name: &str, r: (Duration, Duration, Duration)| {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:+.1} µs |",
            r.0.as_secs_f64() * 1e6,
            r.1.as_secs_f64() * 1e6,
            r.2.as_secs_f64() * 1e6,
            (r.0.as_secs_f64() - direct.0.as_secs_f64()) * 1e6
        )
    };
    row("direct loopback TCP", direct);
    row("nitro-net chain", rtt_percentiles(echo_paths.chain, n));
    row(
        "nitro-net chain, copy relay",
        rtt_percentiles(echo_paths.chain_copy, n),
    );
    if let Some(a) = echo_paths.socat {
        row("socat chain", rtt_percentiles(a, n));
    }

    // iperf3 through each path (its control connection goes through the path too).
    let secs = if quick() { 1 } else { 3 };
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let iport = free.local_addr().unwrap().port();
    drop(free);
    match Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &iport.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Err(_) => println!("\n(iperf3 not found: throughput with iperf3 skipped)"),
        Ok(mut srv) => {
            std::thread::sleep(Duration::from_millis(300));
            let idest: SocketAddr = format!("127.0.0.1:{iport}").parse().unwrap();
            let ichain = setup.forward(idest, true);
            let icopy = setup.forward(idest, false);
            let icapped = setup.forward_capped(idest);
            let isocat = setup.socat(idest, "iperf");
            let rounds = if quick() { 1 } else { 3 };
            println!(
                "\niperf3, one stream, {secs} s, best of {rounds} alternating runs (the machine is shared):\n"
            );
            println!("| path | Gbit/s | vs direct | vs socat chain |");
            println!("|---|---|---|---|");
            let mut paths: Vec<(&str, Option<u16>)> = vec![
                ("direct loopback TCP", Some(iport)),
                ("nitro-net chain", Some(ichain.port())),
                ("nitro-net chain, copy relay", Some(icopy.port())),
                (
                    "nitro-net chain, copy relay, 16 KiB writes",
                    Some(icapped.port()),
                ),
                ("socat chain", isocat.map(|a| a.port())),
            ];
            paths.retain(|(_, p)| p.is_some());
            let mut best = vec![0f64; paths.len()];
            for _ in 0..rounds {
                for (i, (_, p)) in paths.iter().enumerate() {
                    if let Some(bps) = p.and_then(|p| iperf3(p, secs)) {
                        best[i] = best[i].max(bps);
                    }
                }
            }
            let d = best[0];
            let so = paths
                .iter()
                .position(|(n, _)| *n == "socat chain")
                .map_or(f64::NAN, |i| best[i]);
            for ((name, _), bps) in paths.iter().zip(&best) {
                println!(
                    "| {name} | {:.1} | {:.2}× | {:.1}× |",
                    bps / 1e9,
                    bps / d,
                    bps / so
                );
            }
            let _ = srv.kill();
            let _ = srv.wait();
        }
    }

    let idle_n = (if quick() { 500 } else { 2_000 }).min(fd_limit().saturating_sub(1200) / 4);
    // Each idle measurement in a fresh process, so that one does not reuse the other's memory.
    for (name, mode) in [("zero-copy relay", "zc"), ("copy relay", "copy")] {
        let out = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                Command::new(exe)
                    .env("NITRO_NET_IDLE_CHILD", mode)
                    .env("NITRO_NET_IDLE_N", idle_n.to_string())
                    .output()
                    .ok()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        println!("\nIdle tunnelled connection ({name}): {out}");
    }
}

/// The idle-memory measurement alone (run in a child process by `main`).
fn idle_child(mode: &str) {
    let n: usize = std::env::var("NITRO_NET_IDLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut setup = Setup::new();
    let (per, total) = idle_cost(&mut setup, n, mode == "zc");
    println!(
        "{:.1} KiB of RSS each, both sides of the tunnel together ({n} connections: +{total} KiB)",
        per / 1024.0
    );
}
