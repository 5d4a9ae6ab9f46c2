//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Output;

use nitro_fs::Server;
use tokio::task::JoinHandle;

/// Finds an external tool on PATH. Missing tools skip the test (printing why), except under
/// `CI=true`, where they fail it.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is required under CI=true (run scripts/install.sh)");
    }
    eprintln!("SKIPPED: {name} not found on PATH (run scripts/install.sh)");
    None
}

/// Serves `server` on a fresh Unix socket; returns the socket path and the accept task.
pub(crate) async fn serve_unix(server: Server, dir: &Path) -> (PathBuf, JoinHandle<()>) {
    let path = dir.join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.serve(stream).await;
            });
        }
    });
    (path, task)
}

/// Serves `server` on 127.0.0.1 with an ephemeral port.
pub(crate) async fn serve_tcp(server: Server) -> (std::net::SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.serve(stream).await;
            });
        }
    });
    (addr, task)
}

/// Runs a command to completion off the async runtime and returns its output.
pub(crate) async fn run(program: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// Like `run`, but panics with the output unless the command succeeded.
pub(crate) async fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        program.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The NBD URI of export `name` on Unix socket `sock`.
pub(crate) fn unix_uri(name: &str, sock: &Path) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}
