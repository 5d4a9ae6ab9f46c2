//! The egress chain over the plain Unix-socket transport: enclave-side client / local proxies
//! → `uds:DIR:PORT` → parent egress server → real TCP destinations.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use nitro_net::{
    Addr, EgressClient, EgressServer, Error, Limits, LocalProxy, Policy, RefusalCode,
    StaticResolver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_are_byte_exact_both_ways() {
    // Both relays: splice(2) between sockets, and the copying one (what vsock uses).
    for zero_copy in [true, false] {
        large_transfer(zero_copy).await;
    }
}

async fn large_transfer(zero_copy: bool) {
    let c = loopback_chain(zero_copy).await;
    // Destination: checks what arrives while sending its own stream back.
    let (dest, port) = destination().await;
    let size = 32 * MIB + 12_345;
    let dest_task = tokio::spawn(async move {
        let (s, _) = dest.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            write_pattern(&mut w, 2, size).await;
            w.shutdown().await.unwrap();
        });
        let got = check_pattern(&mut r, 1).await;
        writer.await.unwrap();
        got
    });
    let t = c.client.connect("127.0.0.1", port).await.unwrap();
    let (mut r, mut w) = tokio::io::split(t);
    let up = tokio::spawn(async move {
        write_pattern(&mut w, 1, size).await;
        w.shutdown().await.unwrap();
        w
    });
    let down = check_pattern(&mut r, 2).await;
    let w = up.await.unwrap();
    assert_eq!(down, size);
    assert_eq!(dest_task.await.unwrap(), size);
    let t = r.unsplit(w);
    assert_eq!(
        (t.bytes_written(), t.bytes_read()),
        (size as u64, size as u64)
    );
    drop(t);
    // Server counters: the same bytes, and the connection is gone once both sides closed.
    assert!(eventually(5, || c.server.stats().connections_active == 0).await);
    let st = c.server.stats();
    assert_eq!((st.bytes_up, st.bytes_down), (size as u64, size as u64));
    assert_eq!(c.client.stats().bytes_up, size as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_enclave_then_answer() {
    for zero_copy in [true, false] {
        half_close_from_the_enclave(zero_copy).await;
    }
}

async fn half_close_from_the_enclave(zero_copy: bool) {
    let c = loopback_chain(zero_copy).await;
    let (dest, port) = destination().await;
    tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap(); // needs the enclave's EOF
        // Answer after EOF, slowly, in pieces: the reverse direction must stay open.
        for chunk in [&b"got "[..], &req[..], b" bytes"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
    let mut t = c.client.connect("127.0.0.1", port).await.unwrap();
    t.write_all(b"17").await.unwrap();
    t.shutdown().await.unwrap();
    let mut answer = String::new();
    t.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 17 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_destination_then_keep_sending() {
    for zero_copy in [true, false] {
        half_close_from_the_destination(zero_copy).await;
    }
}

async fn half_close_from_the_destination(zero_copy: bool) {
    let c = loopback_chain(zero_copy).await;
    let (dest, port) = destination().await;
    let dest_task = tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap(); // the destination is done talking...
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap(); // ...but keeps listening
        rest
    });
    let mut t = c.client.connect("127.0.0.1", port).await.unwrap();
    let mut banner = Vec::new();
    t.read_to_end(&mut banner).await.unwrap();
    assert_eq!(banner, b"banner");
    write_pattern(&mut t, 9, 3 * MIB).await;
    t.shutdown().await.unwrap();
    let rest = dest_task.await.unwrap();
    assert_eq!(rest.len(), 3 * MIB);
    let mut want = vec![0u8; 3 * MIB];
    Pattern::new(9).fill(&mut want);
    assert!(rest == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_a_reset_is_delivered() {
    for zero_copy in [true, false] {
        answer_then_reset(zero_copy).await;
    }
}

/// The destination answers and closes without reading what the enclave is still sending (so
/// its kernel resets the connection, as an HTTP server refusing a large upload does): the
/// relay can no longer write towards it, but the answer still reaches the enclave.
async fn answer_then_reset(zero_copy: bool) {
    let c = loopback_chain(zero_copy).await;
    let (dest, port) = destination().await;
    // Small enough to be held by the kernel buffers along the way while the enclave does
    // not read (what a destination's kernel has not sent yet dies with the reset anyway).
    let answer_len = 256 * 1024;
    tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        let mut first = [0u8; 1];
        s.read_exact(&mut first).await.unwrap(); // the upload has started
        write_pattern(&mut s, 5, answer_len).await;
        s.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await; // the answer reaches the parent
        drop(s); // unread bytes: the kernel sends a reset
    });
    let t = c.client.connect("127.0.0.1", port).await.unwrap();
    let (mut r, mut w) = tokio::io::split(t);
    let upload = tokio::spawn(async move {
        let mut chunk = vec![7u8; 64 * 1024];
        for _ in 0..256 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            chunk[0] = chunk[0].wrapping_add(1);
        }
    });
    // Read late: most of the answer is still on its way when the reset arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything up to the end of the stream (or the error reporting the reset).
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut want = vec![0u8; answer_len];
    Pattern::new(5).fill(&mut want);
    assert_eq!(got.len(), answer_len, "zero_copy {zero_copy}");
    assert!(got == want, "zero_copy {zero_copy}");
    upload.abort();
}

/// A real program (socat) writes through the local forward and exits at once: every byte
/// reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_writes_and_exits_is_delivered() {
    let Some(socat) = tool("socat") else { return };
    let c = chain(loopback_policy(), test_limits()).await;
    let dest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dport = dest.local_addr().unwrap().port();
    let fwd = LocalProxy::forward(c.client.clone(), "127.0.0.1", dport).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let fport = fwd.local_addr().port().unwrap();

    let file = c.dir.path().join("payload");
    let mut data = vec![0u8; 5 * MIB + 7];
    Pattern::new(3).fill(&mut data);
    std::fs::write(&file, &data).unwrap();

    let recv = tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let status = tokio::process::Command::new(socat)
        .arg("-u")
        .arg(format!("OPEN:{}", file.display()))
        .arg(format!("TCP:127.0.0.1:{fport}"))
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let got = tokio::time::timeout(Duration::from_secs(20), recv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);

    // The other way round: the destination program writes and exits; the enclave reads it all.
    let dest2 = c.dir.path().join("payload2");
    std::fs::write(&dest2, &data[..MIB]).unwrap();
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p2 = free.local_addr().unwrap().port();
    drop(free);
    let mut child = tokio::process::Command::new(tool("socat").unwrap())
        .arg("-u")
        .arg(format!("OPEN:{}", dest2.display()))
        .arg(format!("TCP-LISTEN:{p2},bind=127.0.0.1,reuseaddr"))
        .spawn()
        .unwrap();
    let mut t = None;
    for _ in 0..200 {
        match c.client.connect("127.0.0.1", p2).await {
            Ok(s) => {
                t = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let mut t = t.expect("socat listener never came up");
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert!(got == data[..MIB]);
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels() {
    raise_fd_limit();
    let c = chain(loopback_policy(), test_limits()).await;
    let echo = echo_server().await;
    // Client, parent's accepted end, parent's destination socket, echo's end; pipes while
    // bytes are in flight.
    let n = connection_budget(1000, 6);
    // Open all of them first (all alive at the same time), then talk on each.
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = c.client.clone();
        opens.spawn(async move { (i, client.connect("127.0.0.1", echo.port()).await.unwrap()) });
    }
    let mut streams = Vec::with_capacity(n);
    while let Some(r) = opens.join_next().await {
        streams.push(r.unwrap());
    }
    // The server registers a connection right after it sends its reply, so the last one may
    // be counted a moment after its client returned.
    assert!(
        eventually(10, || c.server.stats().connections_active == n as u64).await,
        "{} active, {n} expected",
        c.server.stats().connections_active
    );
    assert!(
        eventually(10, || c.server.connections().len() == n).await,
        "{} listed, {n} expected",
        c.server.connections().len()
    );
    let mut talks = tokio::task::JoinSet::new();
    for (i, mut s) in streams {
        talks.spawn(async move {
            let msg = format!("connection {i} says hello");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = String::new();
            s.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        });
    }
    while let Some(r) = talks.join_next().await {
        r.unwrap();
    }
    assert!(eventually(10, || c.server.stats().connections_active == 0).await);
    assert_eq!(c.server.stats().connections_total, n as u64);
}

/// Issue 20.1: Linux connects `0.0.0.0` and `::` to the local host, so a policy allowing
/// `0.0.0.0/0, ::/0` and denying loopback let the enclave reach the parent's loopback-only
/// services through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_destinations_never_reach_the_parent_loopback() {
    let policy = Policy::from_toml(
        r#"
        [[allow]]
        cidr = "0.0.0.0/0"
        [[allow]]
        cidr = "::/0"
        [[allow]]
        host = "*"
        [[deny]]
        cidr = "127.0.0.0/8"
        [[deny]]
        cidr = "::1/128"
        "#,
    )
    .unwrap();
    let resolver = StaticResolver::new()
        .with("zero.test", ["0.0.0.0".parse().unwrap()])
        .with("zero6.test", ["::".parse().unwrap()]);
    let c = chain_with(
        EgressServer::new(policy)
            .limits(test_limits())
            .resolver(resolver),
    )
    .await;
    // A service listening only on the parent's loopback (v4 and v6 on one port when possible).
    let (local, port) = destination().await;
    let local6 = TcpListener::bind(("::1", port)).await.ok();
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                a = local.accept() => a.unwrap(),
                a = async { match &local6 { Some(l) => l.accept().await, None => std::future::pending().await } } => a.unwrap(),
            };
            drop(s);
        }
    });
    for host in [
        "0.0.0.0",
        "0",
        "0.0",
        "[::]",
        "::",
        "[::ffff:0.0.0.0]",
        "zero.test",
        "zero6.test",
    ] {
        let e = c.client.connect(host, port).await.unwrap_err();
        let r = e
            .refusal()
            .unwrap_or_else(|| panic!("{host}: not a refusal: {e}"));
        assert_eq!(r.code, RefusalCode::DeniedByPolicy, "{host}: {e}");
        assert!(r.message.contains("unspecified"), "{host}: {e}");
    }
    // The catch-all blocks do not reach loopback either.
    let e = c.client.connect("127.0.0.1", port).await.unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_destinations_get_the_policy_reason() {
    let policy = Policy::from_toml(
        r#"
        [[allow]]
        host = "*.allowed.test"
        [[allow]]
        cidr = "127.0.0.1/32"
        ports = [1]
        [[deny]]
        cidr = "169.254.0.0/16"
        "#,
    )
    .unwrap();
    let resolver = StaticResolver::new()
        .with("www.allowed.test", ["127.0.0.1".parse().unwrap()])
        .with("meta.allowed.test", ["169.254.169.254".parse().unwrap()]);
    let c = chain_with(
        EgressServer::new(policy)
            .limits(test_limits())
            .resolver(resolver),
    )
    .await;
    let cases: &[(&str, u16, RefusalCode, &str)] = &[
        (
            "example.org",
            443,
            RefusalCode::DeniedByPolicy,
            "default deny",
        ),
        (
            "169.254.169.254",
            80,
            RefusalCode::DeniedByPolicy,
            "deny[0]",
        ),
        ("2852039166", 80, RefusalCode::DeniedByPolicy, "deny[0]"),
        (
            "[::ffff:169.254.169.254]",
            80,
            RefusalCode::DeniedByPolicy,
            "deny[0]",
        ),
        ("0x7f.1", 2, RefusalCode::DeniedByPolicy, "default deny"),
        // DNS rebinding: an admitted name that resolves to loopback or the metadata service.
        (
            "www.allowed.test",
            80,
            RefusalCode::DeniedByPolicy,
            "loopback",
        ),
        (
            "meta.allowed.test",
            80,
            RefusalCode::DeniedByPolicy,
            "deny[0]",
        ),
        (
            "nowhere.allowed.test",
            80,
            RefusalCode::ResolveFailed,
            "nowhere.allowed.test",
        ),
        ("bad host", 80, RefusalCode::BadRequest, "invalid host"),
        (
            "127.0.0.1",
            1,
            RefusalCode::ConnectionRefused,
            "127.0.0.1:1",
        ),
    ];
    for (host, port, code, reason) in cases {
        let t0 = std::time::Instant::now();
        let e = c.client.connect(host, *port).await.unwrap_err();
        let r = e
            .refusal()
            .unwrap_or_else(|| panic!("{host}: not a refusal: {e}"));
        assert_eq!(r.code, *code, "{host}: {e}");
        assert!(r.message.contains(reason), "{host}: {e}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{host}: refusal took {:?}",
            t0.elapsed()
        );
        // The error converts to a meaningful io::Error for io-based callers.
        let io: std::io::Error = e.into();
        if *code == RefusalCode::DeniedByPolicy {
            assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        }
    }
    assert_eq!(c.server.stats().refused, cases.len() as u64);
}

async fn http_connect(proxy: u16, target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "proxy closed mid-answer");
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_proxy() {
    let c = chain(loopback_policy(), test_limits()).await;
    let echo = echo_server().await;
    let proxy = LocalProxy::http_connect(c.client.clone()).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let pport = proxy.local_addr().port().unwrap() as u16;

    let (head, mut s) = http_connect(pport, &format!("127.0.0.1:{}", echo.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"through the proxy").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "through the proxy");

    let (head, mut s) = http_connect(pport, "169.254.169.254:80").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("Proxy-Status: nitro-net; error=http_request_denied"),
        "{head}"
    );
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("denied by deny[0]"), "{body}");

    // Not CONNECT: a clear 405.
    let mut s = TcpStream::connect(("127.0.0.1", pport)).await.unwrap();
    s.write_all(b"GET http://example.org/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).await.unwrap();
    assert!(all.starts_with("HTTP/1.1 405"), "{all}");
}

/// curl, an unmodified program, through the HTTP CONNECT and SOCKS5 proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_http_and_socks_proxies() {
    let Some(curl) = tool("curl") else { return };
    let c = chain(loopback_policy(), test_limits()).await;
    // A tiny HTTP server as the destination.
    let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wport = web.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = web.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf[have..]).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    have += n;
                }
                let body = "hello from the parent side\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let http = LocalProxy::http_connect(c.client.clone()).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let socks = LocalProxy::socks5(c.client.clone()).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{wport}/");
    let run = |args: Vec<String>| {
        let curl = curl.clone();
        async move {
            let out = tokio::process::Command::new(curl)
                .args(["-sS", "--max-time", "10"])
                .args(args)
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, body, err) = run(vec![
        "--proxytunnel".into(),
        "--proxy".into(),
        format!(
            "http://{}",
            http.local_addr().to_string().trim_start_matches("tcp:")
        ),
        url.clone(),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello from the parent side\n");
    // SOCKS5 with the name resolved by the parent (socks5h): "localhost" is admitted because
    // it resolves (on the parent) into the allowed 127.0.0.0/8.
    let (ok, body, err) = run(vec![
        "--proxy".into(),
        format!(
            "socks5h://{}",
            socks.local_addr().to_string().trim_start_matches("tcp:")
        ),
        format!("http://localhost:{wport}/"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello from the parent side\n");
    // Denied through SOCKS5: curl reports the SOCKS "not allowed by ruleset" reply.
    let (ok, _, err) = run(vec![
        "--proxy".into(),
        format!(
            "socks5h://{}",
            socks.local_addr().to_string().trim_start_matches("tcp:")
        ),
        "http://169.254.169.254/".into(),
    ])
    .await;
    assert!(!ok);
    // curl prints the SOCKS5 reply code: 2 = "connection not allowed by ruleset".
    assert!(
        err.contains("(2)") || err.to_lowercase().contains("not allowed"),
        "{err}"
    );
    // Denied through HTTP CONNECT: curl shows the 403.
    let (ok, _, err) = run(vec![
        "--proxytunnel".into(),
        "--proxy".into(),
        format!(
            "http://{}",
            http.local_addr().to_string().trim_start_matches("tcp:")
        ),
        "http://169.254.169.254/".into(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peers_release_everything() {
    let mut limits = test_limits();
    limits.shutdown_grace = Duration::from_millis(100);
    let c = chain(loopback_policy(), limits).await;
    // 1. The enclave side dies mid-transfer: the destination sees the end, the parent cleans up.
    let dest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dest.local_addr().unwrap().port();
    let seen = tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        let mut n = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    });
    let mut t = c.client.connect("127.0.0.1", port).await.unwrap();
    t.write_all(&vec![7u8; 100_000]).await.unwrap();
    drop(t); // killed: no shutdown, the socket just closes
    let n = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 100_000);
    assert!(eventually(5, || c.server.stats().connections_active == 0).await);

    // 2. The destination dies abruptly (RST) while the enclave is reading.
    let dest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dest.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (s, _) = dest.accept().await.unwrap();
        // A zero linger never blocks on drop; it turns the close into a reset.
        #[allow(deprecated)]
        s.set_linger(Some(Duration::ZERO)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s); // RST
    });
    let mut t = c.client.connect("127.0.0.1", port).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    drop(t);
    assert!(eventually(5, || c.server.stats().connections_active == 0).await);

    // 3. The parent dies: the enclave's tunnel ends instead of hanging.
    let echo = echo_server().await;
    let mut t = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    drop(c.server); // graceful shutdown, then the grace period cuts the idle tunnel
    let r = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // And new tunnels are refused at the transport level, quickly.
    let mut cfg = nitro_net::ClientConfig::default();
    cfg.connect_retries = 0;
    let client = EgressClient::with_config(c.addr.clone(), cfg);
    assert!(matches!(
        client.connect("127.0.0.1", echo.port()).await,
        Err(Error::Io { .. })
    ));
}

/// On paused time: every peer is in this process, so the clock only moves when all of them
/// wait, and the timings asserted are the server's timers, not the machine's load.
#[tokio::test(start_paused = true)]
async fn slow_handshakes_time_out_and_do_not_block_others() {
    let mut limits = test_limits();
    limits.handshake_timeout = Duration::from_millis(300);
    limits.max_pending_handshakes = 2;
    let c = chain(loopback_policy(), limits).await;
    let path = c.addr.connect_path().unwrap();
    // Two silent clients and one that sends half a header: the pending-handshake limit is
    // reached, the server stops accepting, then drops them at the timeout.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::UnixStream::connect(&path).await.unwrap());
    }
    let mut half = tokio::net::UnixStream::connect(&path).await.unwrap();
    half.write_all(b"NT\x01").await.unwrap();
    let t0 = tokio::time::Instant::now();
    // A well-behaved request still gets through once a slot frees up.
    let echo = echo_server().await;
    let mut t = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "served before the stalled ones timed out ({waited:?})"
    );
    // Served right after the stalled handshakes' timeout, not after another timer.
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    t.write_all(b"x").await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"x");
    // The stalled ones were closed by the server.
    for mut s in silent {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)));
    }
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(2), half.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(c.server.stats().failed_handshakes >= 3);

    // The same against the local HTTP proxy (slowloris): closed with 408.
    let mut pl = test_limits();
    pl.handshake_timeout = Duration::from_millis(200);
    let proxy = LocalProxy::http_connect(c.client.clone()).limits(pl).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let mut s = TcpStream::connect(proxy.local_tcp_addr_for_tests())
        .await
        .unwrap();
    s.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX: ")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert!(all.starts_with("HTTP/1.1 408"), "{all}");
}

/// Helper: the TCP address of a handle listening on `tcp:`.
trait TcpAddr {
    fn local_tcp_addr_for_tests(&self) -> std::net::SocketAddr;
}

impl TcpAddr for nitro_net::ServerHandle {
    fn local_tcp_addr_for_tests(&self) -> std::net::SocketAddr {
        self.local_addr()
            .to_string()
            .trim_start_matches("tcp:")
            .parse()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_busy() {
    let mut limits = test_limits();
    limits.max_connections = 2;
    let c = chain(loopback_policy(), limits).await;
    let echo = echo_server().await;
    let a = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    let b = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    let e = c
        .client
        .connect("127.0.0.1", echo.port())
        .await
        .unwrap_err();
    assert_eq!(e.refusal().unwrap().code, RefusalCode::Busy);
    drop(a);
    assert!(eventually(5, || c.server.stats().connections_active < 2).await);
    let _c = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    drop(b);
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_in_flight_transfers() {
    let c = chain(loopback_policy(), test_limits()).await;
    let dest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dest.local_addr().unwrap().port();
    let got = tokio::spawn(async move {
        let (mut s, _) = dest.accept().await.unwrap();
        check_pattern(&mut s, 5).await
    });
    let mut t = c.client.connect("127.0.0.1", port).await.unwrap();
    write_pattern(&mut t, 5, MIB).await;
    // Shut the parent down while the connection is open; it keeps relaying until done.
    let signal = c.server.shutdown_signal().clone();
    signal.trigger();
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_pattern_from(&mut t, 5, MIB, MIB).await;
    t.shutdown().await.unwrap();
    assert_eq!(got.await.unwrap(), 2 * MIB);
    drop(t);
    tokio::time::timeout(Duration::from_secs(5), c.server.shutdown())
        .await
        .unwrap()
        .unwrap();
    // The listening socket is gone.
    assert!(!c.addr.listen_path().unwrap().exists());
}

/// Issue 15.6: dropping a handle stops its server; a detached server keeps serving until its
/// signal is triggered.
#[tokio::test(start_paused = true)]
async fn dropped_handles_stop_servers_and_detached_ones_keep_running() {
    let echo = echo_server().await;
    // Dropped: the socket file goes away and connects fail.
    let c = chain(loopback_policy(), test_limits()).await;
    drop(c.server);
    assert!(eventually(5, || !c.addr.listen_path().unwrap().exists()).await);
    assert!(c.client.connect("127.0.0.1", echo.port()).await.is_err());
    // Detached: serves without its handle.
    let c = chain(loopback_policy(), test_limits()).await;
    let stop = c.server.detach();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut t = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    t.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    t.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    drop(t);
    stop.trigger();
    assert!(eventually(5, || !c.addr.listen_path().unwrap().exists()).await);
    assert!(c.client.connect("127.0.0.1", echo.port()).await.is_err());
}

async fn write_pattern_from<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    skip: usize,
    len: usize,
) {
    let mut p = Pattern::new(seed);
    let mut sink = vec![0u8; skip];
    p.fill(&mut sink);
    let mut buf = vec![0u8; len];
    p.fill(&mut buf);
    w.write_all(&buf).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_refusals() {
    let c = chain(loopback_policy(), test_limits()).await;
    let path = c.addr.connect_path().unwrap();
    let cases: &[(&[u8], u8)] = &[
        (b"NT\x02\x01\x00\x00", 8),              // version 2 → UnsupportedVersion
        (b"NT\x01\x09\x00\x00", 10),             // unknown kind → NotSupported
        (b"NT\x01\x01\x00\x04\x00\x50\x05a", 7), // host length mismatch → BadRequest
        (b"NT\x01\x01\xff\xff", 7),              // too long → BadRequest
    ];
    for (req, status) in cases {
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert!(resp.len() >= 7, "{req:?}: {resp:?}");
        assert_eq!(
            resp[4],
            *status,
            "{req:?}: {}",
            String::from_utf8_lossy(&resp[7..])
        );
    }
    // Another protocol entirely: closed without a hang.
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut resp))
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(resp[4], 7, "BadRequest");
}

/// On paused time (every peer in this process): the tunnel closes exactly at its idle timeout.
#[tokio::test(start_paused = true)]
async fn idle_tunnels_are_closed() {
    let mut limits = test_limits();
    limits.idle_timeout = Some(Duration::from_millis(200));
    let c = chain(loopback_policy(), limits).await;
    let echo = echo_server().await;
    let mut t = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    let mut b = [0u8; 1];
    let t0 = tokio::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), t.read(&mut b))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(200) && idle < Duration::from_millis(300),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_counters_are_visible() {
    let c = chain(loopback_policy(), test_limits()).await;
    let echo = echo_server().await;
    let mut t = c.client.connect("127.0.0.1", echo.port()).await.unwrap();
    t.write_all(&[1u8; 1000]).await.unwrap();
    let mut back = [0u8; 1000];
    t.read_exact(&mut back).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    assert!(
        eventually(5, || {
            let conns = c.server.connections();
            s2.store(conns.len(), Ordering::Relaxed);
            conns.len() == 1 && conns[0].bytes_up == 1000 && conns[0].bytes_down == 1000
        })
        .await,
        "{:?}",
        c.server.connections()
    );
    assert!(
        c.server.connections()[0]
            .target
            .contains(&format!("127.0.0.1:{}", echo.port()))
    );
    assert_eq!((t.bytes_written(), t.bytes_read()), (1000, 1000));
    let _ = Limits::default();
}

/// A policy inside the enclave (attested with the image) is enforced even when the parent's
/// policy is more permissive, before the request and after the parent's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclave_policy_is_enforced_in_the_enclave() {
    // www.allowed.test is (per the parent's DNS) a loopback address the parent allows.
    let other = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let resolver = StaticResolver::new().with("www.allowed.test", ["127.0.0.3".parse().unwrap()]);
    let c = chain_with(
        EgressServer::new(loopback_policy())
            .limits(test_limits())
            .resolver(resolver),
    )
    .await;
    let echo = echo_server().await;
    let enclave_policy = Policy::from_toml(&format!(
        "[[allow]]\nhost = \"*.allowed.test\"\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
        echo.port()
    ))
    .unwrap();
    let mut cfg = nitro_net::ClientConfig::default();
    cfg.policy = Some(Arc::new(enclave_policy));
    let client = EgressClient::with_config(c.addr.clone(), cfg);

    // Allowed by both.
    let mut t = client.connect("127.0.0.1", echo.port()).await.unwrap();
    t.write_all(b"ok").await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ok");

    // Allowed by the parent, denied in the enclave: never sent to the parent.
    let before = c.server.stats();
    let e = client.connect("127.0.0.2", echo.port()).await.unwrap_err();
    let r = e.refusal().unwrap();
    assert_eq!(r.code, RefusalCode::DeniedByPolicy);
    assert!(r.message.starts_with("enclave policy:"), "{}", r.message);
    let after = c.server.stats();
    assert_eq!(
        before.connections_total + before.refused,
        after.connections_total + after.refused
    );

    // The name is allowed in the enclave, but the parent's answer says it connected to a
    // loopback address the enclave's policy does not admit for names: closed at once.
    let e = client
        .connect("www.allowed.test", other_port)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("the parent connected to 127.0.0.3"),
        "{e}"
    );
    assert!(e.to_string().contains("loopback"), "{e}");
    drop(other);
    assert!(eventually(5, || c.server.stats().connections_active == 0).await);
}
