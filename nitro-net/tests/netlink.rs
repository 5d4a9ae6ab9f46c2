//! Bringing `lo` up through rtnetlink, inside a fresh network namespace (where `lo` starts
//! down, as in an enclave). Needs root (CAP_SYS_ADMIN for the namespace).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

use std::net::{TcpListener, TcpStream};

#[test]
fn loopback_comes_up_in_a_fresh_network_namespace() {
    // Namespaces are per thread: only this thread moves to the new one.
    let r = std::thread::spawn(|| {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return Err(format!("unshare(CLONE_NEWNET): {e}"));
        }
        // lo is down: binding works, but nothing can connect over it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = TcpStream::connect(l.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NetworkUnreachable, "{e}");
        drop(l);
        assert!(
            nitro_net::netlink::loopback_up().unwrap(),
            "should have changed lo"
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert!(peer.ip().is_loopback());
        // IPv6 loopback too (the kernel assigns ::1 when lo comes up).
        assert!(TcpListener::bind("[::1]:0").is_ok());
        // Idempotent.
        assert!(!nitro_net::netlink::loopback_up().unwrap());
        Ok(())
    })
    .join()
    .unwrap();
    if let Err(why) = r {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (CI runs as root)");
        }
        eprintln!("SKIPPED: {why}");
    }
}

#[test]
fn unknown_interfaces_are_a_clear_error() {
    let e = nitro_net::netlink::set_link_up("nosuchif0").unwrap_err();
    assert!(e.to_string().contains("nosuchif0"), "{e}");
}
