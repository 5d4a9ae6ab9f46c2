//! Transparent egress through the supervisor, inside a network namespace made by the test: the
//! supervisor (with `Options::system` on) brings `lo` up, installs the real `iptables-legacy`
//! REDIRECT rules, starts the transparent listener and the DNS server on 127.0.0.1:53 and
//! writes `/etc/resolv.conf` (a file bind-mounted over it in the test's mount namespace). The
//! application, `curl` with no proxy variables, reaches a server "on the parent's side" by name
//! through the parent's egress server (Unix socket), and a name the manifest's policy denies
//! does not resolve.
//!
//! Needs root (namespaces, iptables). Network namespaces are per thread, so the scenario runs
//! in a re-executed copy of this test binary under `unshare -n -m` (nitro-net's
//! `tests/transparent.rs` does the same).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;

use nitro_init::LogStream;
use nitro_manifest::Manifest;
use nitro_net::{Addr, EgressServer, Policy, StaticResolver};
use nitro_supervisor::Options;

const CHILD_VAR: &str = "NITRO_SUPERVISOR_NETNS_CHILD";
const TOOLS: &[&str] = &[
    "unshare",
    "iptables-legacy",
    "ip6tables-legacy",
    "ip",
    "mount",
    "curl",
];

#[test]

fn transparent_egress_in_a_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            !nitro_test_support::strict(),
            "needs root (network namespace, iptables); CI runs as root"
        );
        eprintln!("SKIPPED: needs root (network namespace, iptables)");
        return;
    }
    for t in TOOLS {
        if nitro_test_support::tool(t).is_none() {
            return;
        }
    }
    let exe = std::env::current_exe().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private"])
        .arg(exe)
        .args([
            "--exact",
            "netns_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the namespace scenario failed");
    assert!(
        text.contains("SUPERVISOR TRANSPARENT SCENARIO PASSED"),
        "the scenario did not run"
    );
    eprintln!("namespace scenario took {:?}", started.elapsed());
}

fn sh(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scenario, run only by [`transparent_egress_in_a_network_namespace`] inside the
/// namespace it makes.
#[test]
#[ignore = "runs inside the network namespace made by transparent_egress_in_a_network_namespace"]
fn netns_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        eprintln!("netns_child runs only inside transparent_egress_in_a_network_namespace");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario());
    println!("SUPERVISOR TRANSPARENT SCENARIO PASSED");
}

async fn scenario() {
    let tmp = tempfile::tempdir().unwrap();
    // This mount namespace's /etc/resolv.conf: a file of our own.
    let resolv = tmp.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    sh(
        "mount",
        &["--bind", resolv.to_str().unwrap(), "/etc/resolv.conf"],
    );
    // The test's own servers listen on loopback before the supervisor starts.
    sh("ip", &["link", "set", "lo", "up"]);
    let dir = tmp.path().join("parent");
    let enclave_dir = tmp.path().join("enclave");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&enclave_dir).unwrap();
    let port = |p: u32| Addr::UnixDir {
        dir: dir.clone(),
        port: p,
    };
    let web = common::http_server("hello, transparently").await;
    let egress = EgressServer::new(
        Policy::from_toml("[[allow]]\nhost = \"*\"\n[[allow]]\ncidr = \"127.0.0.0/8\"\n").unwrap(),
    )
    .resolver(
        StaticResolver::new()
            .with("parent-web.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .with("denied.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)]),
    )
    .spawn(port(8000).bind().await.unwrap());
    let received = common::log_sink(port(8005)).await;

    let transparent_port = common::free_port();
    let script = format!(
        r#"
env | grep -iE "^(https?|all|no)_proxy=" || echo "no proxy variables"
echo "web: $(curl -sS -m 10 http://parent-web.test:{web}/)"
if curl -sS -m 10 http://denied.test:{web}/ 2>/dev/null; then echo "denied name reached"; else echo "denied name refused"; fi
echo "resolv: $(cat /etc/resolv.conf)"
"#
    );
    let manifest = Manifest::from_toml(&format!(
        r#"
version = 1
name = "transparent"
[image]
oci = "unused"
[app]
entrypoint = ["/bin/sh", "-c", {script:?}]
[egress]
mode = "transparent"
transparent_port = {transparent_port}
[[egress.allow]]
host = "parent-web.test"
ports = [{web}]
[[egress.allow]]
cidr = "127.0.0.1/32"
[[egress.deny]]
host = "denied.test"
[clock]
sync = false
"#
    ))
    .unwrap();
    let mut o = Options::new(
        Addr::UnixDir {
            dir: dir.clone(),
            port: 0,
        },
        Addr::UnixDir {
            dir: enclave_dir,
            port: 0,
        },
    );
    o.system = true;
    let status = nitro_supervisor::run(&manifest, o, std::future::pending())
        .await
        .unwrap();
    let (out, eof) = common::text(&received, LogStream::Stdout);
    assert_eq!(status, 0, "{out}");
    assert!(eof, "{out}");
    for line in [
        "no proxy variables",
        "web: hello, transparently",
        "denied name refused",
        "resolv: nameserver 127.0.0.1",
    ] {
        assert!(out.contains(line), "{line:?} missing from {out}");
    }
    // The rules are removed when the supervisor ends.
    let rules = std::process::Command::new("iptables-legacy")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("NITRO_TRANSPARENT"),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
    drop(egress);
}
