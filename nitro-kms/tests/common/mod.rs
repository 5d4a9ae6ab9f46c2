//! Helpers shared by the integration tests: fixtures and external tools, skipped with a printed
//! reason when absent unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure
#![allow(dead_code, unreachable_pub)] // each test binary uses a subset

use std::path::PathBuf;

pub use nitro_test_support::skip;

/// The fixtures directory (`NITRO_FIXTURES`, default `<workspace>/tests/fixtures`).
pub fn fixtures() -> Option<PathBuf> {
    nitro_test_support::fixtures_or_skip("cms")
}

/// Path of an executable on PATH or in `$NITRO_CACHE/venv/bin`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nitro-rs")
        });
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cache.join("venv/bin"));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    skip(&format!(
        "{name} not found on PATH or in $NITRO_CACHE/venv/bin"
    ))
}

/// A `moto_server` on a free loopback port, killed when dropped.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Moto {
    /// Starts moto in server mode; `None` (skip) when it is not installed.
    pub fn start() -> Option<Self> {
        let bin = tool("moto_server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
