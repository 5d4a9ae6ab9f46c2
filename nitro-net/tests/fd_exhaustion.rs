//! A relayed connection keeps every byte when the process runs out of file descriptors: the
//! `splice(2)` relay cannot make its pipe (`EMFILE`) and copies through a buffer instead.
//!
//! Its own test binary (so its own process, with an empty pipe pool and nobody else's
//! descriptors), one test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::fs::File;

use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_descriptor_exhaustion() {
    let chain = common::loopback_chain(true).await;
    let (listener, port) = common::destination().await;
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        accepted_tx.send(()).unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let s = chain.client.connect("127.0.0.1", port).await.unwrap();
    accepted_rx.await.unwrap();

    // Every descriptor the process may still open is taken: no pipe can be made now, and the
    // relay has not spliced a byte yet (so its pool holds none).
    let mut hog = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::EMFILE), "{e}");
                break;
            }
        }
        assert!(hog.len() < 2_000_000, "no descriptor limit");
    }

    let size = 8 * 1024 * 1024;
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        common::write_pattern(&mut w, 3, size).await;
        w.shutdown().await.unwrap();
    });
    let got = common::check_pattern(&mut r, 3).await;
    writer.await.unwrap();
    echo.await.unwrap();
    drop(hog);
    assert_eq!(got, size, "every byte echoed while no pipe could be made");
}
