//! The supervisor run in-process against real parent-side pieces started by the test, over
//! Unix sockets (no vsock loopback here): nitro-net's `EgressServer` (egress tunnel and time
//! service), nitro-kms's local KMS over TLS with `serve_credentials` and `serve_sealed`, and a
//! log sink speaking the log protocol. The application is a shell script using curl: it reads
//! its secrets, goes through the proxy to a server on the parent's side (and is refused a
//! denied name), asks the attestation API (simulated NSM) and the KMS proxy, reaches a port
//! through the ingress forward, writes 200 KB to stdout and a line to stderr, and exits 7.
//!
//! The binary is also run as a process and stopped with SIGTERM (the application stops on
//! SIGTERM; and one that ignores it is killed after `app.stop_timeout_secs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nitro_attest::SimulatedNsm;
use nitro_init::LogStream;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::CreateKeyRequest;
use nitro_kms::sealed::{SealOptions, seal};
use nitro_kms::{Credentials, KmsClient, RetryConfig, TlsRoots};
use nitro_manifest::Manifest;
use nitro_net::{Addr, EgressServer, Policy, StaticResolver};
use nitro_supervisor::{Options, secrets::secret_context};

mod common;
use common::{Received, free_port, http_server, log_sink, text};

const REGION: &str = "eu-west-1";
const PCR0: [u8; 48] = [0x5a; 48];
const NAME: &str = "supervised";

fn creds() -> Credentials {
    Credentials::new("AKIDPARENT", "parent-secret-key", None, None)
}

struct Parent {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    enclave_dir: PathBuf,
    kms_url: String,
    ca_pem: String,
    nsm: Arc<SimulatedNsm>,
    received: Received,
    _kms: server::RunningServer,
    _egress: nitro_net::ServerHandle,
    _time: nitro_net::ServerHandle,
}

impl Parent {
    fn addr(&self) -> Addr {
        Addr::UnixDir {
            dir: self.dir.clone(),
            port: 0,
        }
    }
    fn enclave_addr(&self) -> Addr {
        Addr::UnixDir {
            dir: self.enclave_dir.clone(),
            port: 0,
        }
    }
}

/// The parent's services: egress (with time), credentials, sealed secrets, logs, and a local
/// KMS (reached through the egress tunnel as `https://localhost:PORT`).
async fn parent(secrets: &[(&str, &[u8])]) -> Parent {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("parent");
    let enclave_dir = tmp.path().join("enclave");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&enclave_dir).unwrap();
    let port = |p: u32| Addr::UnixDir {
        dir: dir.clone(),
        port: p,
    };
    let nsm = Arc::new(
        SimulatedNsm::builder()
            .seed(17)
            .pcr(0, PCR0)
            .build()
            .unwrap(),
    );

    // The local KMS over TLS, trusting the simulator's root.
    let kms = Arc::new(
        LocalKms::new(
            LocalKmsConfig::new(AttestationTrust::root_der(nsm.root_certificate_der()).unwrap())
                .region(REGION)
                .credentials(creds()),
        )
        .unwrap(),
    );
    let (ca_pem, cert_pem, key_pem) = nitro_test_support::tls_material();
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let kms_server = server::spawn(kms, "127.0.0.1:0", Some(tls)).await.unwrap();
    let kms_url = format!("https://localhost:{}", kms_server.local_addr().port());

    // The parent's egress server: any name, loopback addresses allowed (the test's servers).
    let policy =
        Policy::from_toml("[[allow]]\nhost = \"*\"\n[[allow]]\ncidr = \"127.0.0.0/8\"\n").unwrap();
    let resolver = StaticResolver::new()
        .with("localhost", [IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .with("parent-web.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .with("denied.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let egress = EgressServer::new(policy)
        .resolver(resolver)
        .spawn(port(8000).bind().await.unwrap());

    // The time service on its own port, as the parent daemon serves it: egress denied.
    let time =
        EgressServer::new(Policy::from_toml("").unwrap()).spawn(port(8003).bind().await.unwrap());

    // Credentials.
    let listener = port(8002).bind().await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = nitro_kms::credentials::serve_credentials(s, &creds()).await;
            });
        }
    });

    // A key admitting only this image's PCR0; the secrets sealed under it by the operator.
    let admin = KmsClient::builder(REGION)
        .endpoint(&kms_url)
        .tls_roots(TlsRoots::from_pem(ca_pem.as_bytes()).unwrap())
        .credentials(creds())
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Encrypt", "kms:GenerateDataKey*"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(PCR0)}}}
        ]
    });
    let key_id = admin
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let mut docs = HashMap::new();
    for (name, value) in secrets {
        let mut opts = SealOptions::new();
        for (k, v) in secret_context(NAME, name) {
            opts = opts.context(k, v);
        }
        docs.insert(
            (*name).to_owned(),
            seal(&admin, &key_id, value, &opts).await.unwrap(),
        );
    }
    let docs = Arc::new(docs);
    let listener = port(8004).bind().await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let docs = docs.clone();
            tokio::spawn(async move {
                let _ = nitro_kms::sealed::serve_sealed(s, |name| {
                    docs.get(name)
                        .cloned()
                        .ok_or_else(|| format!("no secret {name}"))
                })
                .await;
            });
        }
    });

    let received = log_sink(port(8005)).await;
    Parent {
        _dir: tmp,
        dir,
        enclave_dir,
        kms_url,
        ca_pem,
        nsm,
        received,
        _kms: kms_server,
        _egress: egress,
        _time: time,
    }
}

fn options(p: &Parent) -> Options {
    let mut o = Options::new(p.addr(), p.enclave_addr()).nsm(p.nsm.clone());
    o.kms_endpoint = Some(p.kms_url.clone());
    o.kms_ca_pem = Some(p.ca_pem.as_bytes().to_vec());
    o
}

fn curl() -> Option<PathBuf> {
    nitro_test_support::tool("curl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_run_against_the_parents_services() {
    if curl().is_none() {
        return;
    }
    let p = parent(&[
        ("db-password", b"env-secret-value"),
        ("tls-key", b"file-secret-value"),
    ])
    .await;
    let web = http_server("hello from the parent side").await;
    let app_port = http_server("hello through ingress").await;
    let (kms_port, api_port, http_port, socks_port) =
        (free_port(), free_port(), free_port(), free_port());
    let secret_file = p.dir.parent().unwrap().join("run/secrets/tls.key");
    let ingress_sock = p.enclave_dir.join("7000.sock");
    let script = format!(
        r#"
[ "$DB_PASSWORD" = "env-secret-value" ] && echo "env secret ok"
[ "$(cat {file})" = "file-secret-value" ] && echo "file secret ok"
[ "$(stat -c %a {file})" = "400" ] && echo "file mode ok"
echo "web: $(curl -sS --noproxy '' -p -x "$HTTPS_PROXY" http://parent-web.test:{web}/)"
echo "socks: $(curl -sS --noproxy '' -x "$ALL_PROXY" http://parent-web.test:{web}/)"
if curl -sS --noproxy '' -p -x "$HTTPS_PROXY" http://denied.test:{web}/ 2>/dev/null; then echo "denied name reached"; else echo "denied name refused"; fi
echo "attestation: $(curl -sS -X POST -H 'Accept: application/json' -H 'Content-Type: application/json' -d '{{"nonce":"AAECAw=="}}' "$NITRO_ATTESTATION_URL")"
echo "kms: $(curl -sS -X POST -H 'X-Amz-Target: TrentService.GenerateRandom' -H 'Content-Type: application/x-amz-json-1.1' -d '{{"NumberOfBytes":16}}' "$AWS_ENDPOINT_URL_KMS/")"
echo "ingress: $(curl -sS --unix-socket {sock} http://app/)"
head -c 200000 /dev/zero | tr '\0' 'x'
echo
echo "to stderr" >&2
exit 7
"#,
        file = secret_file.display(),
        sock = ingress_sock.display(),
    );
    let manifest = Manifest::from_toml(&format!(
        r#"
version = 1
name = "{NAME}"
[image]
oci = "unused"
[app]
entrypoint = ["/bin/sh", "-c", {script:?}]
[egress]
mode = "proxy"
http_proxy_port = {http_port}
socks_port = {socks_port}
[[egress.allow]]
host = "parent-web.test"
ports = [{web}]
[[egress.allow]]
cidr = "127.0.0.1/32"
[[egress.deny]]
host = "denied.test"
[kms]
proxy_port = {kms_port}
region = "{REGION}"
[attestation]
api_port = {api_port}
[[ingress]]
port = {app_port}
vsock_port = 7000
[[secret]]
name = "db-password"
env = "DB_PASSWORD"
[[secret]]
name = "tls-key"
file = "{file}"
"#,
        file = secret_file.display(),
    ))
    .unwrap();
    let started = Instant::now();
    let mut o = options(&p);
    o.console = false; // 200 KB of output
    let status = nitro_supervisor::run(&manifest, o, std::future::pending())
        .await
        .unwrap();
    assert_eq!(status, 7);
    let (out, out_eof) = text(&p.received, LogStream::Stdout);
    let (err, err_eof) = text(&p.received, LogStream::Stderr);
    let short: String = out.replace(&"x".repeat(200_000), "<200000 x>");
    assert!(out_eof && err_eof, "both streams end with EOF");
    for line in [
        "env secret ok",
        "file secret ok",
        "file mode ok",
        "web: hello from the parent side",
        "socks: hello from the parent side",
        "denied name refused",
        "ingress: hello through ingress",
    ] {
        assert!(out.contains(line), "{line:?} missing from {short}");
    }
    assert!(!out.contains("secret-value"), "the secrets are not printed");
    assert!(
        out.contains(&format!("\n{}\n", "x".repeat(200_000))),
        "nothing lost: {short}"
    );
    assert_eq!(err, "to stderr\n");
    // The attestation document carries the nonce.
    let json = out
        .lines()
        .find_map(|l| l.strip_prefix("attestation: "))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    use base64::Engine as _;
    let doc = base64::engine::general_purpose::STANDARD
        .decode(v["document"].as_str().unwrap())
        .unwrap();
    let parsed = nitro_attest::UnverifiedDocument::parse(&doc).unwrap();
    assert_eq!(parsed.payload().nonce.as_deref(), Some(&[0u8, 1, 2, 3][..]));
    // KMS through the proxy: attested (the key policy pins PCR0), 16 random bytes.
    let kms = out.lines().find_map(|l| l.strip_prefix("kms: ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(kms).unwrap();
    let random = base64::engine::general_purpose::STANDARD
        .decode(v["Plaintext"].as_str().expect(kms))
        .unwrap();
    assert_eq!(random.len(), 16);
    eprintln!("supervised run: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_image_gets_no_secret_and_no_app() {
    let p = parent(&[("db-password", b"v")]).await;
    let mut o = options(&p);
    // Another image (PCR0) than the key policy admits.
    o.nsm = Some(Arc::new(
        SimulatedNsm::builder()
            .pki(p.nsm.pki().clone())
            .pcr(0, [1u8; 48])
            .build()
            .unwrap(),
    ));
    let marker = p.dir.join("started");
    let manifest = Manifest::from_toml(&format!(
        r#"
version = 1
name = "{NAME}"
[image]
oci = "unused"
[app]
entrypoint = ["/bin/touch", "{}"]
[kms]
region = "{REGION}"
[clock]
sync = false
[[secret]]
name = "db-password"
env = "DB_PASSWORD"
"#,
        marker.display()
    ))
    .unwrap();
    let err = nitro_supervisor::run(&manifest, o, std::future::pending())
        .await
        .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.contains("db-password"), "{chain}");
    assert!(chain.contains("AccessDenied"), "{chain}");
    assert!(!marker.exists(), "the application must not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_without_kernel_nbd_is_a_typed_error() {
    let p = parent(&[]).await;
    let mut o = options(&p);
    o.dev_dir = p.dir.join("no-dev");
    o.modprobe = PathBuf::from("/bin/false");
    let manifest = Manifest::from_toml(&format!(
        r#"
version = 1
name = "{NAME}"
[image]
oci = "unused"
[app]
entrypoint = ["/bin/true"]
[kms]
region = "{REGION}"
[clock]
sync = false
[[volume]]
name = "data"
size = "1MiB"
mount = "/data"
key = "alias/none"
"#
    ))
    .unwrap();
    let err = nitro_supervisor::run(&manifest, o, std::future::pending())
        .await
        .unwrap_err();
    match &err {
        nitro_supervisor::Error::NbdUnavailable { volume, reason } => {
            assert_eq!(volume, "data");
            assert!(reason.contains("nbd0"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains("the kernel has no NBD driver"),
        "{err}"
    );
}

/// Runs the binary with `app` as the application; waits for `ready` at the log sink, sends
/// SIGTERM, and returns the exit status and how long the stop took.
async fn binary_sigterm(app: &str, stop_timeout: u32) -> (i32, Duration, String) {
    let p = parent(&[]).await;
    let manifest = p.dir.join("enclave.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
version = 1
name = "{NAME}"
[image]
oci = "unused"
[app]
entrypoint = ["/bin/sh", "-c", {app:?}]
stop_timeout_secs = {stop_timeout}
[clock]
sync = false
"#
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nitro-supervisor"))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--parent")
        .arg(p.addr().to_string())
        .arg("--listen")
        .arg(p.enclave_addr().to_string())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&p.received, LogStream::Stdout).0.contains("ready") {
        assert!(
            Instant::now() < deadline,
            "the application never said ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    // The log streams still end cleanly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text(&p.received, LogStream::Stdout).1 {
        assert!(Instant::now() < deadline, "no EOF on stdout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (
        status.code().unwrap(),
        took,
        text(&p.received, LogStream::Stdout).0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_application() {
    let (code, took, out) = binary_sigterm(
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        5,
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("got TERM"), "{out}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let (code, took, _) =
        binary_sigterm("trap '' TERM; echo ready; while :; do sleep 0.05; done", 1).await;
    assert_eq!(code, 128 + 9);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}
