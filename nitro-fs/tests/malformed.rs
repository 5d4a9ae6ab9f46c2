//! Malformed and hostile NBD traffic in both directions: the server facing a broken client,
//! the client facing a broken (or malicious) server. Nothing may panic, hang or corrupt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::time::Duration;

use nitro_fs::internal::proto::*;
use nitro_fs::{
    BlockDevice, ClientConfig, Error, Export, MemDevice, NbdClient, NbdCommand, NbdErrno,
    ProtocolError, ReconnectPolicy, Server, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

const MIB: usize = 1 << 20;

fn server() -> (MemDevice, Server) {
    let mem = MemDevice::new(MIB);
    let server = Server::new(vec![
        Export::new("rw", mem.clone()),
        Export::new("ro", mem.clone()).read_only(true),
    ])
    .unwrap();
    (mem, server)
}

/// Starts `server` on one end of a pipe; returns the client end and the serve result.
fn connect(server: Server) -> (DuplexStream, tokio::task::JoinHandle<nitro_fs::Result<()>>) {
    let (c, s) = duplex(64 * 1024);
    let task = tokio::spawn(async move { server.serve(s).await });
    (c, task)
}

async fn handshake(c: &mut DuplexStream, flags: u32) -> u16 {
    let mut g = [0u8; Greeting::LEN];
    c.read_exact(&mut g).await.unwrap();
    let g = Greeting::parse(&g).unwrap();
    c.write_all(&flags.to_be_bytes()).await.unwrap();
    g.handshake_flags
}

async fn option(c: &mut DuplexStream, option: u32, data: &[u8]) {
    let mut b = OptionHeader {
        option,
        length: data.len() as u32,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(data);
    c.write_all(&b).await.unwrap();
}

async fn option_reply(c: &mut DuplexStream) -> (OptionReplyHeader, Vec<u8>) {
    let mut h = [0u8; OptionReplyHeader::LEN];
    c.read_exact(&mut h).await.unwrap();
    let h = OptionReplyHeader::parse(&h).unwrap();
    let mut d = vec![0u8; h.length as usize];
    c.read_exact(&mut d).await.unwrap();
    (h, d)
}

/// Negotiates `export` with NBD_OPT_GO and returns the stream in transmission phase.
async fn go(
    server: Server,
    export: &str,
) -> (DuplexStream, tokio::task::JoinHandle<nitro_fs::Result<()>>) {
    let (mut c, task) = connect(server);
    handshake(&mut c, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    let data = InfoRequest {
        name: export,
        requests: vec![],
    }
    .encode();
    option(&mut c, OPT_GO, &data).await;
    loop {
        let (h, _) = option_reply(&mut c).await;
        if h.reply_type == REP_ACK {
            break;
        }
        assert_eq!(h.reply_type, REP_INFO);
    }
    (c, task)
}

async fn request(
    c: &mut DuplexStream,
    command: u16,
    flags: u16,
    offset: u64,
    length: u32,
    data: &[u8],
) -> u64 {
    let handle = offset ^ u64::from(command) << 56 ^ 0xabcd;
    let mut b = Request {
        flags,
        command,
        handle,
        offset,
        length,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(data);
    c.write_all(&b).await.unwrap();
    handle
}

async fn reply(c: &mut DuplexStream, payload: usize) -> (SimpleReply, Vec<u8>) {
    let mut h = [0u8; SimpleReply::LEN];
    c.read_exact(&mut h).await.unwrap();
    let r = SimpleReply::parse(&h).unwrap();
    let mut d = vec![0u8; if r.error == 0 { payload } else { 0 }];
    c.read_exact(&mut d).await.unwrap();
    (r, d)
}

#[tokio::test]
async fn server_refuses_bad_options_and_keeps_negotiating() {
    let (_, srv) = server();
    let (mut c, task) = connect(srv);
    assert_eq!(
        handshake(&mut c, FLAG_C_FIXED_NEWSTYLE).await & FLAG_FIXED_NEWSTYLE,
        FLAG_FIXED_NEWSTYLE
    );
    // Unknown option, structured replies, TLS, meta contexts: clean errors.
    for (opt, expect) in [
        (99, REP_ERR_UNSUP),
        (OPT_STRUCTURED_REPLY, REP_ERR_UNSUP),
        (OPT_STARTTLS, REP_ERR_POLICY),
        (OPT_SET_META_CONTEXT, REP_ERR_INVALID),
        (OPT_EXTENDED_HEADERS, REP_ERR_UNSUP),
    ] {
        option(&mut c, opt, &[]).await;
        let (h, _) = option_reply(&mut c).await;
        assert_eq!((h.option, h.reply_type), (opt, expect));
    }
    // Truncated INFO data, a name longer than the data, a bad info count, a bad name.
    for bad in [
        &[0u8, 0][..],
        &[0, 0, 0, 9, b'r'][..],
        &[0, 0, 0, 2, b'r', b'w', 0, 5][..],
        &[0, 0, 0, 2, 0xff, 0xfe, 0, 0][..],
    ] {
        option(&mut c, OPT_INFO, bad).await;
        let (h, _) = option_reply(&mut c).await;
        assert_eq!(h.reply_type, REP_ERR_INVALID, "{bad:?}");
    }
    // LIST with data is invalid; unknown export is reported.
    option(&mut c, OPT_LIST, b"x").await;
    assert_eq!(option_reply(&mut c).await.0.reply_type, REP_ERR_INVALID);
    option(
        &mut c,
        OPT_GO,
        &InfoRequest {
            name: "nope",
            requests: vec![],
        }
        .encode(),
    )
    .await;
    let (h, msg) = option_reply(&mut c).await;
    assert_eq!(h.reply_type, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&msg).contains("nope"));
    // Oversized option data (skipped), then a normal list still works.
    option(&mut c, 77, &vec![0u8; 100_000]).await;
    assert_eq!(option_reply(&mut c).await.0.reply_type, REP_ERR_TOO_BIG);
    option(&mut c, OPT_LIST, &[]).await;
    let mut names = Vec::new();
    loop {
        let (h, d) = option_reply(&mut c).await;
        if h.reply_type == REP_ACK {
            break;
        }
        names.push(parse_rep_server(&d).unwrap().0);
    }
    assert_eq!(names, ["rw", "ro"]);
    option(&mut c, OPT_ABORT, &[]).await;
    assert_eq!(option_reply(&mut c).await.0.reply_type, REP_ACK);
    assert!(task.await.unwrap().is_ok());
}

#[tokio::test]
async fn server_closes_on_protocol_violations() {
    // Unknown client flags.
    let (_, srv) = server();
    let (mut c, task) = connect(srv.clone());
    handshake(&mut c, 0x8000_0000).await;
    assert!(task.await.unwrap().is_err());
    // Bad option magic.
    let (mut c, task) = connect(srv.clone());
    handshake(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
    c.write_all(&[0x55; 16]).await.unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(Error::Protocol(ProtocolError::BadMagic { .. }))
    ));
    // Absurd option length.
    let (mut c, task) = connect(srv.clone());
    handshake(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
    c.write_all(
        &OptionHeader {
            option: OPT_LIST,
            length: u32::MAX,
        }
        .encode(),
    )
    .await
    .unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(Error::Protocol(ProtocolError::TooLong { .. }))
    ));
    // Unknown export with the legacy option: the protocol can only hang up.
    let (mut c, task) = connect(srv.clone());
    handshake(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
    option(&mut c, OPT_EXPORT_NAME, b"missing").await;
    assert!(matches!(task.await.unwrap(), Err(Error::ExportNotFound(_))));
    // Garbage instead of a request: connection closed.
    let (mut c, task) = go(srv.clone(), "rw").await;
    c.write_all(&[0xee; 28]).await.unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(Error::Protocol(ProtocolError::BadMagic { .. }))
    ));
    // EOF in the middle of a request header.
    let (mut c, task) = go(srv.clone(), "rw").await;
    c.write_all(&REQUEST_MAGIC.to_be_bytes()).await.unwrap();
    drop(c);
    assert!(task.await.unwrap().is_err());
    // A client that never finishes the handshake is timed out.
    let mut cfg = ServerConfig::default();
    cfg.handshake_timeout = Duration::from_millis(100);
    let slow = Server::with_config(vec![Export::new("x", MemDevice::new(4096))], cfg).unwrap();
    let (_c, task) = connect(slow);
    assert!(
        matches!(task.await.unwrap(), Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut)
    );
}

#[tokio::test]
async fn server_answers_bad_requests_with_errors_and_stays_usable() {
    let (mem, srv) = server();
    let (mut c, task) = go(srv.clone(), "rw").await;
    let m = MIB as u64;
    let cases: Vec<(u16, u16, u64, u32, Vec<u8>, NbdErrno)> = vec![
        (CMD_READ, 0, m - 100, 200, vec![], NbdErrno::EINVAL),
        (CMD_READ, 0, u64::MAX - 10, 100, vec![], NbdErrno::EINVAL),
        (CMD_WRITE, 0, m - 100, 200, vec![7; 200], NbdErrno::ENOSPC),
        (CMD_TRIM, 0, m, 1, vec![], NbdErrno::EINVAL),
        (CMD_WRITE_ZEROES, 0, m, 1, vec![], NbdErrno::ENOSPC),
        (CMD_FLUSH, 0, 5, 0, vec![], NbdErrno::EINVAL),
        (CMD_READ, CMD_FLAG_DF, 0, 10, vec![], NbdErrno::EINVAL),
        (CMD_WRITE, 0x4000, 0, 3, vec![1, 2, 3], NbdErrno::EINVAL),
        (CMD_BLOCK_STATUS, 0, 0, 10, vec![], NbdErrno::EINVAL),
        (CMD_CACHE, 0, 0, 10, vec![], NbdErrno::EINVAL),
        (42, 0, 0, 10, vec![], NbdErrno::EINVAL),
        (CMD_READ, 0, 0, 64 << 20, vec![], NbdErrno::EINVAL),
    ];
    for (cmd, flags, off, len, data, errno) in cases {
        let h = request(&mut c, cmd, flags, off, len, &data).await;
        let (r, _) = reply(&mut c, 0).await;
        assert_eq!(
            (r.handle, r.error),
            (h, errno.0),
            "command {cmd} flags {flags:#x} at {off}+{len}"
        );
    }
    // An oversized write: its payload is skipped and refused, the stream stays in sync.
    let h = request(
        &mut c,
        CMD_WRITE,
        0,
        0,
        (32 << 20) + 1,
        &vec![9u8; (32 << 20) + 1],
    )
    .await;
    let (r, _) = reply(&mut c, 0).await;
    assert_eq!((r.handle, r.error), (h, NbdErrno::EINVAL.0));
    // Nothing was written by any of that.
    assert!(mem.snapshot().iter().all(|&b| b == 0));
    // And real requests work, pipelined.
    let h1 = request(&mut c, CMD_WRITE, CMD_FLAG_FUA, 4096, 4, b"abcd").await;
    let h2 = request(&mut c, CMD_FLUSH, 0, 0, 0, &[]).await;
    let mut got = [reply(&mut c, 0).await.0, reply(&mut c, 0).await.0];
    got.sort_by_key(|r| r.handle);
    let mut want = [h1, h2];
    want.sort();
    assert_eq!(
        got.iter().map(|r| (r.handle, r.error)).collect::<Vec<_>>(),
        [(want[0], 0), (want[1], 0)]
    );
    let h = request(&mut c, CMD_READ, 0, 4096, 4, &[]).await;
    let (r, d) = reply(&mut c, 4).await;
    assert_eq!((r.handle, r.error, d.as_slice()), (h, 0, &b"abcd"[..]));
    request(&mut c, CMD_DISC, 0, 0, 0, &[]).await;
    assert!(task.await.unwrap().is_ok());

    // Read-only export: writes, trims, zeroes refused with EPERM.
    let (mut c, _task) = go(srv, "ro").await;
    for cmd in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
        let data = if cmd == CMD_WRITE {
            vec![1u8; 8]
        } else {
            vec![]
        };
        let h = request(&mut c, cmd, 0, 0, 8, &data).await;
        let (r, _) = reply(&mut c, 0).await;
        assert_eq!((r.handle, r.error), (h, NbdErrno::EPERM.0));
    }
}

// ---------------------------------------------------------------------------------------
// A hostile server.

/// A connector whose "server" runs `script` on the other end of a pipe.
async fn client_with<F, Fut>(script: F) -> nitro_fs::Result<NbdClient>
where
    F: Fn(DuplexStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let script = std::sync::Arc::new(script);
    let mut cfg = ClientConfig::new("x");
    cfg.reconnect = ReconnectPolicy::never();
    cfg.connect_timeout = Duration::from_millis(500);
    NbdClient::connect(
        move || {
            let (c, s) = duplex(64 * 1024);
            tokio::spawn(script(s));
            async move { Ok(c) }
        },
        cfg,
    )
    .await
}

/// Plays a well-behaved handshake for a 1 MiB export; returns after NBD_OPT_GO.
async fn good_handshake(s: &mut DuplexStream) {
    s.write_all(
        &Greeting {
            handshake_flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
        }
        .encode(),
    )
    .await
    .unwrap();
    let mut f = [0u8; 4];
    s.read_exact(&mut f).await.unwrap();
    let mut h = [0u8; OptionHeader::LEN];
    s.read_exact(&mut h).await.unwrap();
    let h = OptionHeader::parse(&h).unwrap();
    let mut d = vec![0u8; h.length as usize];
    s.read_exact(&mut d).await.unwrap();
    let info = Info::Export {
        size: MIB as u64,
        flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH,
    }
    .encode();
    let mut out = OptionReplyHeader {
        option: OPT_GO,
        reply_type: REP_INFO,
        length: info.len() as u32,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(&info);
    out.extend_from_slice(
        &OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_ACK,
            length: 0,
        }
        .encode(),
    );
    s.write_all(&out).await.unwrap();
}

async fn read_request(s: &mut DuplexStream) -> Request {
    let mut h = [0u8; Request::LEN];
    s.read_exact(&mut h).await.unwrap();
    Request::parse(&h).unwrap()
}

#[tokio::test]
async fn client_rejects_hostile_handshakes() {
    // Not an NBD server at all.
    let r = client_with(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    })
    .await;
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::BadMagic { .. }))),
        "{r:?}"
    );
    // Oldstyle negotiation.
    let r = client_with(|mut s| async move {
        let mut b = NBD_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&CLISERV_MAGIC.to_be_bytes());
        b.extend_from_slice(&[0; 136]);
        let _ = s.write_all(&b).await;
    })
    .await;
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::Unsupported(_)))),
        "{r:?}"
    );
    // A 4 GiB option reply.
    let r = client_with(|mut s| async move {
        s.write_all(
            &Greeting {
                handshake_flags: FLAG_FIXED_NEWSTYLE,
            }
            .encode(),
        )
        .await
        .unwrap();
        let mut b = [0u8; 4 + OptionHeader::LEN + 10];
        let _ = s.read(&mut b).await;
        let _ = s
            .write_all(
                &OptionReplyHeader {
                    option: OPT_GO,
                    reply_type: REP_INFO,
                    length: u32::MAX,
                }
                .encode(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::TooLong { .. }))),
        "{r:?}"
    );
    // GO acknowledged without describing the export.
    let r = client_with(|mut s| async move {
        s.write_all(
            &Greeting {
                handshake_flags: FLAG_FIXED_NEWSTYLE,
            }
            .encode(),
        )
        .await
        .unwrap();
        let mut b = [0u8; 4 + OptionHeader::LEN + 10];
        let _ = s.read(&mut b).await;
        let _ = s
            .write_all(
                &OptionReplyHeader {
                    option: OPT_GO,
                    reply_type: REP_ACK,
                    length: 0,
                }
                .encode(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::Invalid(_)))),
        "{r:?}"
    );
    // Absurd block sizes.
    let r = client_with(|mut s| async move {
        s.write_all(
            &Greeting {
                handshake_flags: FLAG_FIXED_NEWSTYLE,
            }
            .encode(),
        )
        .await
        .unwrap();
        let mut b = [0u8; 4 + OptionHeader::LEN + 10];
        let _ = s.read(&mut b).await;
        let info = Info::BlockSize {
            minimum: 3,
            preferred: 4096,
            maximum: 1,
        }
        .encode();
        let mut out = OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_INFO,
            length: info.len() as u32,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(&info);
        let _ = s.write_all(&out).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::Invalid(_)))),
        "{r:?}"
    );
    // A server that says nothing at all: the connect timeout fires.
    let r = client_with(|s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    assert!(
        matches!(r, Err(Error::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
}

#[tokio::test]
async fn client_rejects_hostile_replies() {
    // A reply to a request that was never sent.
    let c = client_with(|mut s| async move {
        good_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        let _ = s
            .write_all(
                &SimpleReply {
                    error: 0,
                    handle: req.handle ^ 1,
                }
                .encode(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await
    .unwrap();
    let mut b = [0u8; 512];
    let e = c.read_at(0, &mut b).await.unwrap_err();
    assert!(
        matches!(e, Error::Disconnected(ref why) if why.contains("unknown handle")),
        "{e}"
    );

    // A structured reply that was never negotiated.
    let c = client_with(|mut s| async move {
        good_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&[0, 1, 0, 1]);
        b.extend_from_slice(&req.handle.to_be_bytes());
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        let _ = s.write_all(&b).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await
    .unwrap();
    assert!(matches!(
        c.read_at(0, &mut b).await,
        Err(Error::Disconnected(_))
    ));

    // A read reply cut short.
    let c = client_with(|mut s| async move {
        good_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        let _ = s
            .write_all(
                &SimpleReply {
                    error: 0,
                    handle: req.handle,
                }
                .encode(),
            )
            .await;
        let _ = s.write_all(&[1; 100]).await;
    })
    .await
    .unwrap();
    assert!(matches!(
        c.read_at(0, &mut b).await,
        Err(Error::Disconnected(_))
    ));

    // An error reply is reported with its value; the connection stays usable.
    let c = client_with(|mut s| async move {
        good_handshake(&mut s).await;
        let req = read_request(&mut s).await;
        s.write_all(
            &SimpleReply {
                error: NbdErrno::EIO.0,
                handle: req.handle,
            }
            .encode(),
        )
        .await
        .unwrap();
        let req = read_request(&mut s).await;
        s.write_all(
            &SimpleReply {
                error: 0,
                handle: req.handle,
            }
            .encode(),
        )
        .await
        .unwrap();
        s.write_all(&[7; 512]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await
    .unwrap();
    match c.read_at(0, &mut b).await {
        Err(Error::Server {
            errno,
            command: NbdCommand::READ,
            ..
        }) => assert_eq!(errno, NbdErrno::EIO),
        other => panic!("{other:?}"),
    }
    c.read_at(0, &mut b).await.unwrap();
    assert_eq!(b, [7; 512]);
}
