//! Test support shared by the nitro-* crates' tests, benches and examples (not published).
//!
//! - [`tls_material`] / [`try_tls_material`]: a throwaway CA and a server certificate for
//!   `127.0.0.1` and `localhost` (what AWS's public certificate is to KMS, for a local KMS or
//!   any TLS test server);
//! - [`fixtures_dir`] / [`fixtures_or_skip`]: where the real fixtures are (`tests/fixtures` at
//!   the workspace root, or `$NITRO_FIXTURES`), with the skip-or-fail rule of the test suite:
//!   a missing fixture skips a test with a printed reason, except under `CI=true`
//!   ([`strict`]), where it fails it;
//! - [`answer_http`]: one HTTP/1.1 answer, for test servers standing for a service;
//! - [`tool`]: an external program (on `PATH` or in the test venv), [`example`]: an example
//!   binary of the package under test, [`Moto`]: moto's AWS emulation in server mode, each
//!   skipped the same way when absent.
//!
//! ```
//! let tls = nitro_test_support::try_tls_material("doc test CA")?;
//! assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(tls.key_pem.contains("PRIVATE KEY"));
//! # Ok::<(), rcgen::Error>(())
//! ```

use std::path::PathBuf;

/// The environment variable naming the fixtures directory.
pub const FIXTURES_VAR: &str = "NITRO_FIXTURES";

/// A CA certificate and a server certificate issued by it, all PEM.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsMaterial {
    /// The CA certificate: the trust root to give the client.
    pub ca_pem: String,
    /// The server certificate (SANs `127.0.0.1` and `localhost`, or the names asked for).
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl TlsMaterial {
    /// `(ca_pem, cert_pem, key_pem)`.
    pub fn into_parts(self) -> (String, String, String) {
        (self.ca_pem, self.cert_pem, self.key_pem)
    }
}

/// A throwaway CA whose common name is `ca_name`, and a certificate for `127.0.0.1` and
/// `localhost` issued by it (fresh keys at every call).
pub fn try_tls_material(ca_name: &str) -> Result<TlsMaterial, rcgen::Error> {
    try_tls_material_for(ca_name, &["127.0.0.1", "localhost"])
}

/// A throwaway CA whose common name is `ca_name`, and a certificate for `names` (DNS names or
/// IP addresses) issued by it (fresh keys at every call).
pub fn try_tls_material_for(ca_name: &str, names: &[&str]) -> Result<TlsMaterial, rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Answers one HTTP/1.1 request on `stream` with `200 OK` and `body` (`text/plain`,
/// `Connection: close`), for a test server standing for a service: reads the request head (at
/// most 16 KiB), writes the response and shuts the stream down. Returns whether a whole
/// request head came (nothing is written otherwise).
pub async fn answer_http<S>(stream: &mut S, body: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() >= 16384 {
            return false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    true
}

/// For tests: [`try_tls_material`] as `(ca_pem, cert_pem, key_pem)`.
///
/// # Panics
/// When key generation fails (a test failure).
pub fn tls_material() -> (String, String, String) {
    match try_tls_material("nitro test CA") {
        Ok(tls) => tls.into_parts(),
        Err(e) => panic!("generating TLS material: {e}"),
    }
}

/// Whether a missing fixture or tool must fail the test (`CI=true`) instead of skipping it.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips: returns `None` after printing `SKIPPED: {why}`, or, under `CI=true`, panics.
///
/// # Panics
/// Under `CI=true`.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(!strict(), "CI=true and {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The fixtures directory: `$NITRO_FIXTURES` when set and not empty, else `tests/fixtures` at
/// the workspace root. Whether it exists is not checked (see [`fixtures_or_skip`]).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os(FIXTURES_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")))
}

/// The fixtures directory when it holds `marker` (a file or directory relative to it, e.g.
/// `manifest.json` or `cms`); otherwise [`skip`]s (prints why and returns `None`, or panics
/// under `CI=true`).
///
/// # Panics
/// Under `CI=true` when `marker` is missing.
pub fn fixtures_or_skip(marker: &str) -> Option<PathBuf> {
    let dir = fixtures_dir();
    if dir.join(marker).exists() {
        Some(dir)
    } else {
        skip(&format!(
            "fixtures not found: no {marker} in {} (set {FIXTURES_VAR})",
            dir.display()
        ))
    }
}

/// An executable named `name` on `PATH`, in `$NITRO_VENV/bin` or in `$NITRO_CACHE/venv/bin`
/// (`NITRO_CACHE` defaulting to `~/.cache/nitro-rs`, as in `scripts/lib.sh`: where
/// `scripts/install.sh` puts moto and the aws CLI); otherwise [`skip`]s.
///
/// # Panics
/// Under `CI=true` when the tool is missing.
pub fn tool(name: &str) -> Option<PathBuf> {
    let var = |v: &str| {
        std::env::var_os(v)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = var("NITRO_CACHE").unwrap_or_else(|| {
        var("HOME")
            .unwrap_or_default()
            .join(".cache")
            .join("nitro-rs")
    });
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(var("NITRO_VENV").map(|v| v.join("bin")));
    dirs.push(cache.join("venv").join("bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .or_else(|| {
            skip(&format!(
                "{name} not found on PATH or in the test venv (scripts/install.sh installs it)"
            ))
        })
}

/// The example `name` of the package under test, as `cargo test` builds it beside the test
/// binary (`target/<profile>/examples/<name>`); otherwise [`skip`]s (`cargo test --test X`
/// alone does not build the examples).
///
/// # Panics
/// Under `CI=true` when the example is not built.
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok();
    let profile_dir = exe.as_deref().and_then(|e| e.parent()?.parent());
    match profile_dir.map(|d| d.join("examples").join(name)) {
        Some(bin) if bin.is_file() => Some(bin),
        Some(bin) => skip(&format!(
            "{} not built (run `cargo test` for the whole package)",
            bin.display()
        )),
        None => skip(&format!("no target directory for example {name}")),
    }
}

/// A `moto_server` (moto's AWS emulation, KMS and S3 among others) on a free loopback port,
/// killed when dropped.
#[derive(Debug)]
pub struct Moto {
    child: std::process::Child,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Moto {
    /// Starts moto in server mode and waits (up to 30 s) until it accepts connections;
    /// `None` ([`skip`]) when it is not installed.
    ///
    /// # Panics
    /// When it cannot be started or does not come up, and under `CI=true` when it is missing.
    pub fn start() -> Option<Self> {
        let bin = tool("moto_server")?;
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("no free loopback port: {e}"),
        };
        let child = match std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!("starting {}: {e}", bin.display()),
        };
        let moto = Self {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready means an HTTP answer, not only an open port: a port accepted before the server
        // is serving has been seen to refuse the first request.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !Self::answers(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Whether an HTTP request to moto's API gets an HTTP response.
    fn answers(port: u16) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut head = [0u8; 5];
        s.write_all(request.as_bytes()).is_ok()
            && s.read_exact(&mut head).is_ok()
            && &head == b"HTTP/"
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_material_is_fresh_pem() -> Result<(), rcgen::Error> {
        let a = try_tls_material("a")?;
        let b = try_tls_material("b")?;
        assert_ne!(a.key_pem, b.key_pem);
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        Ok(())
    }

    #[test]
    fn default_fixtures_dir_is_the_workspace_one() {
        if std::env::var_os(FIXTURES_VAR).is_none_or(|v| v.is_empty()) {
            assert!(fixtures_dir().ends_with("tests/fixtures"));
            assert!(fixtures_dir().join("README.md").is_file());
        }
    }
}
