//! Transports: hybrid vsock against a backend speaking the `CONNECT`/`OK` protocol, the
//! Unix-socket transports, AF_VSOCK connect timeouts, ingress with the PROXY protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nitro_net::internal::protocol::parse_hybrid_connect;
use nitro_net::internal::{ProxyHeader, parse_proxy_v2};
use nitro_net::{Addr, Error, IngressForward, IngressListener, IngressServer, ProtocolError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

/// A hybrid vsock backend (the host side of Firecracker / vhost-device-vsock): reads the
/// `CONNECT <port>` line byte by byte as those backends do, answers with `answer`, then
/// sends `early` in the same write and echoes.
async fn backend(path: std::path::PathBuf, answer: &'static [u8], early: &'static [u8]) {
    let l = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\n") {
                    if s.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    line.push(b[0]);
                }
                assert_eq!(parse_hybrid_connect(&line), Ok(5005));
                if answer.is_empty() {
                    return; // no listener on that guest port: the backend just closes
                }
                s.write_all(&[answer, early].concat()).await.unwrap();
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
}

#[tokio::test]
async fn hybrid_connect_keeps_bytes_after_ok() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    backend(uds.clone(), b"OK 1073741824\n", b"guest says hi;").await;
    let a: Addr = format!("hybrid:{}:5005", uds.display()).parse().unwrap();
    let mut s = a.connect().await.unwrap();
    let mut early = [0u8; 14];
    s.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"guest says hi;");
    s.write_all(b"echo me").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"echo me");
}

#[tokio::test]
async fn hybrid_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed.vsock");
    backend(closed.clone(), b"", b"").await;
    let a: Addr = format!("hybrid:{}:5005", closed.display()).parse().unwrap();
    let e = a.connect().await.unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ProtocolError::UnexpectedEof(_))),
        "{e}"
    );

    let garbage = dir.path().join("garbage.vsock");
    backend(garbage.clone(), b"NOPE\n", b"").await;
    let a: Addr = format!("hybrid:{}:5005", garbage.display())
        .parse()
        .unwrap();
    assert!(matches!(a.connect().await, Err(Error::Protocol(_))));

    let long = dir.path().join("long.vsock");
    backend(
        long.clone(),
        b"OK 00000000000000000000000000000000000000000000000000",
        b"",
    )
    .await;
    let a: Addr = format!("hybrid:{}:5005", long.display()).parse().unwrap();
    assert!(matches!(
        a.connect().await,
        Err(Error::Protocol(ProtocolError::TooLong { .. }))
    ));

    let missing: Addr = format!("hybrid:{}:5005", dir.path().join("none").display())
        .parse()
        .unwrap();
    let e = missing.connect().await.unwrap_err();
    assert!(e.to_string().contains("connect to hybrid:"), "{e}");
}

#[tokio::test]
async fn hybrid_listen_binds_uds_underscore_port() {
    let dir = tempfile::tempdir().unwrap();
    let a: Addr = format!("hybrid:{}:9000", dir.path().join("vm.vsock").display())
        .parse()
        .unwrap();
    let l = a.bind().await.unwrap();
    let path = dir.path().join("vm.vsock_9000");
    assert!(path.exists());
    // The backend connects there for a guest connection to (host, 9000).
    let mut g = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    g.write_all(&[0xB7]).await.unwrap(); // the enclave-ready heartbeat
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    s.write_all(&b).await.unwrap();
    g.read_exact(&mut b).await.unwrap();
    assert_eq!(b, [0xB7]);
    drop(l);
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
}

#[tokio::test]
async fn unix_listeners_replace_stale_sockets_but_not_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let a: Addr = format!("uds:{}:7", dir.path().join("sub").display())
        .parse()
        .unwrap();
    let l = a.bind().await.unwrap();
    // A second listener on the same live socket is refused.
    let e = a.bind().await.unwrap_err();
    // The reason is the chained IO source, not repeated in the message.
    let why = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("already listening")),
        "{e}: {why:?}"
    );
    drop(l);
    // A stale socket file (its listener gone without cleanup) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let b: Addr = format!("uds:{}", stale.display()).parse().unwrap();
    let _l2 = b.bind().await.unwrap();
    assert!(stale.exists());
    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let c: Addr = format!("uds:{}", file.display()).parse().unwrap();
    assert!(c.bind().await.is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[tokio::test]
async fn vsock_connect_never_hangs() {
    // No vsock transport to CID 3 on a development host or CI: whatever the kernel does
    // (error at once, or no answer), the connect ends within its timeout.
    let a: Addr = "vsock:3:9".parse().unwrap();
    let t0 = Instant::now();
    let r = a.connect_timeout(Duration::from_millis(300)).await;
    assert!(r.is_err());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn tcp_transport_round_trip() {
    let echo = echo_server().await;
    let a: Addr = format!("tcp:{echo}").parse().unwrap();
    let mut s = a.connect().await.unwrap();
    assert!(s.as_tcp().unwrap().nodelay().unwrap());
    s.write_all(b"tcp").await.unwrap();
    s.shutdown().await.unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.unwrap();
    assert_eq!(v, b"tcp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_with_proxy_protocol_to_a_stream_api() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_port: Addr = format!("uds:{}:9443", dir.path().display())
        .parse()
        .unwrap();
    let app = IngressListener::new(enclave_port.bind().await.unwrap(), true);
    let parent = IngressServer::new(enclave_port.clone())
        .proxy_protocol(true)
        .limits(test_limits())
        .spawn(
            "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap(),
        );
    let paddr: std::net::SocketAddr = parent.local_addr().to_string()["tcp:".len()..]
        .parse()
        .unwrap();

    let mut client = TcpStream::connect(paddr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();

    let mut conn = app.accept().await.unwrap();
    assert_eq!(conn.client, Some(client_addr));
    let mut req = Vec::new();
    conn.stream.read_to_end(&mut req).await.unwrap();
    assert_eq!(req, b"request");
    conn.stream
        .write_all(b"response after the client's EOF")
        .await
        .unwrap();
    conn.stream.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"response after the client's EOF");
    assert!(eventually(5, || parent.stats().connections_active == 0).await);
    assert_eq!(parent.stats().bytes_up, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_forwarded_to_a_local_port() {
    let dir = tempfile::tempdir().unwrap();
    // The application inside the enclave: a TCP server that reads the PROXY header itself.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = vec![0u8; 28];
        s.read_exact(&mut buf).await.unwrap();
        let (h, _) = parse_proxy_v2(&buf).unwrap().unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.unwrap();
        s.write_all(&body).await.unwrap();
        (h, body)
    });
    let enclave_port: Addr = format!("uds:{}:9444", dir.path().display())
        .parse()
        .unwrap();
    let fwd = IngressForward::new(format!("tcp:{app_addr}").parse().unwrap())
        .spawn(enclave_port.bind().await.unwrap());
    let parent = IngressServer::new(enclave_port).proxy_protocol(true).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let paddr: std::net::SocketAddr = parent.local_addr().to_string()["tcp:".len()..]
        .parse()
        .unwrap();
    let mut client = TcpStream::connect(paddr).await.unwrap();
    let me = client.local_addr().unwrap();
    write_pattern(&mut client, 4, 2 << 20).await;
    client.shutdown().await.unwrap();
    let n = check_pattern(&mut client, 4).await;
    assert_eq!(n, 2 << 20);
    let (h, body) = seen.await.unwrap();
    assert_eq!(
        h,
        ProxyHeader::Proxy {
            source: me,
            destination: paddr
        }
    );
    assert_eq!(body.len(), 2 << 20);
    assert!(eventually(5, || fwd.stats().connections_active == 0).await);
    assert_eq!(fwd.stats().connections_total, 1);
}

#[tokio::test]
async fn ingress_to_an_absent_enclave_closes_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let parent = IngressServer::new(format!("uds:{}:1", dir.path().display()).parse().unwrap())
        .spawn(
            "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap(),
        );
    let paddr: std::net::SocketAddr = parent.local_addr().to_string()["tcp:".len()..]
        .parse()
        .unwrap();
    let mut c = TcpStream::connect(paddr).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(eventually(3, || parent.stats().refused == 1).await);
}
