//! Fuzzing harnesses: the entry points of the `fuzz/` targets, also replayed over the
//! stored corpus by `tests/fuzz_corpus.rs`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proto::*;
use crate::{Export, MemDevice, Server, ServerConfig};

/// Feeds `data` to the NBD parsers and to whole sessions, in both directions.
///
/// The first byte selects the harness: 0–7 parse one message and check that encoding
/// it again parses to the same value; 8 runs the server on `data` as a client's byte
/// stream; 9 runs the client handshake against `data` as a server's byte stream; 10
/// parses a sealed-device header. Never panics unless a round trip breaks.
pub fn nbd_messages(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 11 {
        0 => {
            if let Ok(g) = Greeting::parse(rest) {
                assert_eq!(Greeting::parse(&g.encode()), Ok(g));
            }
        }
        1 => {
            if let Ok(h) = OptionHeader::parse(rest) {
                assert_eq!(OptionHeader::parse(&h.encode()), Ok(h));
            }
        }
        2 => {
            if let Ok(h) = OptionReplyHeader::parse(rest) {
                assert_eq!(OptionReplyHeader::parse(&h.encode()), Ok(h));
            }
        }
        3 => {
            if let Ok(r) = InfoRequest::parse(rest) {
                let again = r.encode();
                assert_eq!(InfoRequest::parse(&again), Ok(r));
            }
        }
        4 => {
            if let Ok(i) = Info::parse(rest)
                && !matches!(i, Info::Unknown(_))
            {
                assert_eq!(Info::parse(&i.encode()), Ok(i));
            }
        }
        5 => {
            if let Ok(r) = Request::parse(rest) {
                assert_eq!(Request::parse(&r.encode()), Ok(r));
            }
        }
        6 => {
            if let Ok(r) = SimpleReply::parse(rest) {
                assert_eq!(SimpleReply::parse(&r.encode()), Ok(r));
            }
            let _ = ExportNameReply::parse(rest);
        }
        7 => {
            if let Ok((name, _)) = parse_rep_server(rest) {
                assert_eq!(
                    parse_rep_server(&encode_rep_server(&name)).map(|r| r.0),
                    Ok(name)
                );
            }
        }
        8 => server_session(rest),
        9 => client_session(rest),
        _ => {
            let _ = crate::sealed::parse_header_for_fuzzing(rest);
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()
}

/// The server reading `input` as everything a client sends.
fn server_session(input: &[u8]) {
    let Some(rt) = runtime() else { return };
    rt.block_on(async {
        let cfg = ServerConfig {
            handshake_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        let Ok(server) = Server::with_config(
            vec![
                Export::new("a", MemDevice::new(1 << 16)),
                Export::new("b", MemDevice::new(4096)).read_only(true),
            ],
            cfg,
        ) else {
            return;
        };
        let (mut client, srv) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move { server.serve(srv).await });
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
        let _ = task.await;
    });
}

/// The client reading `input` as everything a server sends: handshake, then replies to
/// a read and a write.
fn client_session(input: &[u8]) {
    let Some(rt) = runtime() else { return };
    rt.block_on(async {
        let feed = std::sync::Mutex::new(Some(input.to_vec()));
        let mut cfg = crate::ClientConfig::new("a");
        cfg.reconnect = crate::ReconnectPolicy::never();
        cfg.connect_timeout = Duration::from_secs(1);
        cfg.request_timeout = Some(Duration::from_secs(1));
        let connector = move || {
            let bytes = feed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            async move {
                let bytes = bytes.ok_or(std::io::ErrorKind::NotConnected)?;
                let (mut server, client) = tokio::io::duplex(1 << 16);
                tokio::spawn(async move {
                    let _ = server.write_all(&bytes).await;
                    let _ = server.shutdown().await;
                    let mut sink = vec![0u8; 1 << 16];
                    while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                Ok(client)
            }
        };
        if let Ok(c) = crate::NbdClient::connect(connector, cfg).await {
            use crate::BlockDevice;
            let mut buf = [0u8; 512];
            let _ = c.read_at(0, &mut buf).await;
            let _ = c.write_at(0, &buf).await;
            let _ = c.flush().await;
        }
    });
}
