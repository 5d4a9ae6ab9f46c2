//! Parent-side test helpers: a log sink speaking the log protocol, a plain HTTP server.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nitro_init::{LogStream, MAX_LOG_HEADER, parse_log_header};
use nitro_net::Addr;
use tokio::io::AsyncReadExt;

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the log sink received, per stream: the bytes and whether the end of file came.
pub type Received = Arc<Mutex<HashMap<LogStream, (Vec<u8>, bool)>>>;

/// The parent's log sink: reads the header (at most `MAX_LOG_HEADER` bytes), then the bytes
/// until the end of file, then closes.
pub async fn log_sink(addr: Addr) -> Received {
    let received: Received = Arc::default();
    let listener = addr.bind().await.unwrap();
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut header = Vec::new();
                let mut byte = [0u8; 1];
                while header.len() < MAX_LOG_HEADER && !header.ends_with(b"\n") {
                    if s.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    header.push(byte[0]);
                }
                let stream = parse_log_header(&header).unwrap();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    let mut map = r.lock().unwrap();
                    let entry = map.entry(stream).or_default();
                    if n == 0 {
                        entry.1 = true;
                        break;
                    }
                    entry.0.extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    received
}

pub fn text(r: &Received, stream: LogStream) -> (String, bool) {
    let map = r.lock().unwrap();
    map.get(&stream)
        .map(|(b, eof)| (String::from_utf8_lossy(b).into_owned(), *eof))
        .unwrap_or_default()
}

/// A plain HTTP server "on the parent's side" answering every request with `body`.
pub async fn http_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                nitro_test_support::answer_http(&mut s, body).await;
            });
        }
    });
    port
}
