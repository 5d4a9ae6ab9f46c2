//! Shared helpers of the integration tests: a parent + enclave chain over the plain
//! Unix-socket transport, real TCP destination servers, data generators, tool lookup.
#![allow(dead_code)] // Each test binary uses a different subset.
#![allow(unreachable_pub)] // A module of the test crates, not an API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nitro_net::{Addr, EgressClient, EgressServer, Limits, Policy, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raises the open-file soft limit to the hard limit (1,000 tunnels use ~4,000 descriptors).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Root (CAP_SYS_RESOURCE) may also raise the hard limit: CI may start with 1024/1024,
    // too few for hundreds of relayed connections whose every end lives in this process.
    const WANT: u64 = 65536;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if hard < WANT && setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_ok() {
            return;
        }
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// How many connections a test may hold open at once when each one costs `per_conn`
/// descriptors in this process: `want`, or fewer when the open-file limit (which an
/// unprivileged or containerised CI cannot raise; 1024 is common) leaves less room. Says so on
/// stderr when it scales down.
pub fn connection_budget(want: usize, per_conn: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    let free = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(open + 64);
    let n = want.min(free / per_conn.max(1)).max(1);
    if n < want {
        eprintln!("open-file limit {soft}: {n} concurrent connections instead of {want}");
    }
    n
}

/// The parent's egress server on `uds:DIR:8000` and the enclave's client for it.
pub struct Chain {
    pub dir: tempfile::TempDir,
    pub addr: Addr,
    pub server: ServerHandle,
    pub client: EgressClient,
}

pub async fn chain(policy: Policy, limits: Limits) -> Chain {
    chain_with(EgressServer::new(policy).limits(limits)).await
}

pub async fn chain_with(server: EgressServer) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let addr: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let server = server.spawn(addr.bind().await.unwrap());
    let client = EgressClient::new(addr.clone());
    Chain {
        dir,
        addr,
        server,
        client,
    }
}

/// A chain admitting loopback, with test limits, relaying with `splice(2)` (`zero_copy`) or
/// through buffers (what vsock uses).
pub async fn loopback_chain(zero_copy: bool) -> Chain {
    let mut limits = test_limits();
    limits.zero_copy = zero_copy;
    chain(loopback_policy(), limits).await
}

/// A TCP listener on loopback for a test's destination server, and its port.
pub async fn destination() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A policy admitting loopback (where the tests' destination servers listen).
pub fn loopback_policy() -> Policy {
    Policy::builder()
        .allow_cidr("127.0.0.0/8", &[])
        .deny_cidr("169.254.0.0/16", &[])
        .build()
        .unwrap()
}

/// Short timeouts for tests.
pub fn test_limits() -> Limits {
    let mut l = Limits::default();
    l.handshake_timeout = Duration::from_secs(5);
    l.connect_timeout = Duration::from_secs(5);
    l.shutdown_grace = Duration::from_secs(5);
    l
}

/// A TCP echo server: copies what it reads back, and shuts down its write side after the
/// client's EOF (half-close preserved).
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    a
}

/// Deterministic pseudo-random bytes, a function of (seed, position): both ends can generate
/// and check a stream of any length without holding it, whatever the chunking.
#[derive(Clone)]
pub struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed, pos: 0 }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            let mut x = self
                .pos
                .wrapping_add(self.seed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 29;
            *b = (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 56) as u8;
            self.pos += 1;
        }
    }
}

/// Writes `len` pattern bytes (in odd-sized chunks to exercise partial IO).
pub async fn write_pattern<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, seed: u64, len: usize) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 48_611];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
}

/// Reads to EOF, checking every byte against the pattern; returns the count.
pub async fn check_pattern<R: tokio::io::AsyncRead + Unpin>(r: &mut R, seed: u64) -> usize {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 70_001];
    let mut want = vec![0u8; 70_001];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        p.fill(&mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "data differs within offsets {total}..{}",
            total + n
        );
        total += n;
    }
}

/// A tool from PATH; `None` (with a printed reason) when missing, a panic under CI=true.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is required under CI=true (scripts/install.sh installs it)");
        }
        eprintln!("SKIPPED: {name} not found on PATH");
    }
    found
}

/// Polls `f` until it is true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
