//! `Limits::max_write` / `ClientConfig::max_write` / `IngressListener::max_write`: no nitro-net
//! path writes more than the cap to a socket in one system call.
//!
//! The scenario runs in a child process traced by `strace` (a real observer of the system calls
//! the kernel sees): egress through the `splice(2)` relay and through the copying relay, a
//! local forward proxy, ingress (`IngressServer` → `IngressForward`) and `IngressListener`,
//! all over the Unix-socket transport with 1 MiB each way. Then every `write`, `writev`,
//! `sendto`, `sendmsg` and `splice` into a socket must have moved at most the cap. The test's
//! own peers write in chunks of at most the cap, so every larger write would be nitro-net's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use nitro_net::{
    Addr, ClientConfig, EgressClient, EgressServer, IngressForward, IngressListener, IngressServer,
    Limits, LocalProxy,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const CAP: usize = 4096;
const LEN: usize = 1 << 20;
const CHILD_VAR: &str = "NITRO_NET_MAX_WRITE_CHILD";

fn capped_limits(zero_copy: bool) -> Limits {
    let mut l = test_limits();
    l.zero_copy = zero_copy;
    l.max_write = Some(CAP);
    l
}

/// Writes `len` pattern bytes in writes of at most `CAP` (the test's own peers stay under it).
async fn write_small<W: AsyncWrite + Unpin>(w: &mut W, seed: u64) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; CAP];
    for _ in 0..LEN / CAP {
        p.fill(&mut buf);
        w.write_all(&buf).await.unwrap();
    }
}

/// Writes `len` pattern bytes in one `write_all` (nitro-net must cut it).
async fn write_big<W: AsyncWrite + Unpin>(w: &mut W, seed: u64) {
    let mut buf = vec![0u8; LEN];
    Pattern::new(seed).fill(&mut buf);
    w.write_all(&buf).await.unwrap();
}

/// A TCP server on loopback: checks `LEN` pattern bytes (seed 1), then answers `LEN` pattern
/// bytes (seed 2) in small writes.
async fn small_writing_server() -> u16 {
    let (l, port) = destination().await;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(answer(s));
        }
    });
    port
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    assert_eq!(check_pattern(&mut s, 1).await, LEN);
    write_small(&mut s, 2).await;
    s.shutdown().await.unwrap();
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, big: bool) {
    if big {
        write_big(&mut s, 1).await;
    } else {
        write_small(&mut s, 1).await;
    }
    s.shutdown().await.unwrap();
    assert_eq!(check_pattern(&mut s, 2).await, LEN);
}

async fn scenario() {
    let dest = small_writing_server().await;
    // Egress through the splice relay and through the copying relay; the client writes 1 MiB
    // at once through its TunnelStream.
    for zero_copy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let addr: Addr = format!("uds:{}:8000", dir.path().display())
            .parse()
            .unwrap();
        let _server = EgressServer::new(loopback_policy())
            .limits(capped_limits(zero_copy))
            .spawn(addr.bind().await.unwrap());
        let mut cfg = ClientConfig::default();
        cfg.max_write = Some(CAP);
        let client = EgressClient::with_config(addr, cfg);
        exchange(client.connect("127.0.0.1", dest).await.unwrap(), true).await;
    }
    // A local forward proxy whose client has no cap: the proxy's limits cap the tunnel.
    let dir = tempfile::tempdir().unwrap();
    let addr: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let _server = EgressServer::new(loopback_policy())
        .limits(capped_limits(true))
        .spawn(addr.bind().await.unwrap());
    let proxy_at: Addr = "tcp:127.0.0.1:0".parse().unwrap();
    let proxy = LocalProxy::forward(EgressClient::new(addr), "127.0.0.1", dest)
        .limits(capped_limits(true))
        .spawn(proxy_at.bind().await.unwrap());
    let proxy_addr = tcp_addr(proxy.local_addr());
    exchange(TcpStream::connect(&proxy_addr).await.unwrap(), false).await;
    // Ingress: parent TCP → uds → IngressForward → the application.
    let enclave: Addr = format!("uds:{}:9000", dir.path().display())
        .parse()
        .unwrap();
    let _fwd = IngressForward::new(format!("tcp:127.0.0.1:{dest}").parse().unwrap())
        .limits(capped_limits(true))
        .spawn(enclave.bind().await.unwrap());
    let ingress = IngressServer::new(enclave)
        .proxy_protocol(false)
        .limits(capped_limits(true))
        .spawn(
            "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap(),
        );
    let ingress_addr = tcp_addr(ingress.local_addr());
    exchange(TcpStream::connect(&ingress_addr).await.unwrap(), false).await;
    // IngressListener: the application writes 1 MiB at once to its accepted stream.
    let enclave: Addr = format!("uds:{}:9100", dir.path().display())
        .parse()
        .unwrap();
    let listener = IngressListener::new(enclave.bind().await.unwrap(), true).max_write(Some(CAP));
    let ingress = IngressServer::new(enclave)
        .proxy_protocol(true)
        .limits(capped_limits(true))
        .spawn(
            "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap(),
        );
    let ingress_addr = tcp_addr(ingress.local_addr());
    let app = tokio::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        assert_eq!(check_pattern(&mut conn.stream, 1).await, LEN);
        write_big(&mut conn.stream, 2).await;
        conn.stream.shutdown().await.unwrap();
    });
    exchange(TcpStream::connect(&ingress_addr).await.unwrap(), false).await;
    app.await.unwrap();
}

/// The traced half: does nothing unless started by [`no_socket_write_exceeds_the_cap`].
#[test]
fn traced_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

/// One traced system call into a socket: (call, bytes moved).
fn socket_writes(trace: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((call, rest)) = line.split_once('(') else {
            continue;
        };
        // `splice(in<..>, off, out<..>, ...)`: the destination is the second annotated fd.
        let target = if call == "splice" {
            rest.split(", ").nth(2)
        } else if ["write", "writev", "sendto", "sendmsg"].contains(&call) {
            rest.split(", ").next()
        } else {
            None
        };
        let Some(target) = target else { continue };
        if !target.contains("<socket:[") {
            continue;
        }
        let Some((_, ret)) = line.rsplit_once(") = ") else {
            continue;
        };
        if let Ok(n) = ret.trim().parse::<usize>() {
            out.push((line.to_owned(), n));
        }
    }
    out
}

#[test]
fn no_socket_write_exceeds_the_cap() {
    let Some(strace) = tool("strace") else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("trace");
    let status = Command::new(strace)
        .args(["-f", "-ff", "-qq", "-y", "-s", "0", "-o"])
        .arg(&prefix)
        .args(["-e", "trace=write,writev,sendto,sendmsg,splice", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["traced_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .status()
        .unwrap();
    assert!(status.success(), "traced scenario failed: {status}");
    let mut writes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        writes.extend(socket_writes(&read(&path)));
    }
    let moved: usize = writes.iter().map(|(_, n)| n).sum();
    // Six hops of 2 MiB (both ways) at least: the trace saw the traffic.
    assert!(moved >= 12 * LEN, "only {moved} bytes seen in the trace");
    let over: Vec<_> = writes.iter().filter(|(_, n)| *n > CAP).collect();
    assert!(
        over.is_empty(),
        "{} of {} socket writes exceed {CAP} bytes, e.g. {:?}",
        over.len(),
        writes.len(),
        &over[..over.len().min(5)]
    );
    let splices = writes
        .iter()
        .filter(|(l, _)| l.starts_with("splice"))
        .count();
    assert!(splices > 0, "the splice relay was not exercised");
}

fn tcp_addr(a: &Addr) -> String {
    match a {
        Addr::Tcp { addr } => addr.clone(),
        other => panic!("not TCP: {other}"),
    }
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()
}
