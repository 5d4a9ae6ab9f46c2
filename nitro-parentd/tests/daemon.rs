//! The daemon over Unix-socket transports: `check` on good and bad configurations, then every
//! service driven the way an enclave drives it, the drain on shutdown and sd_notify.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on failure by design.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nitro_fs::{BlockDevice, NbdClient};
use nitro_net::{Addr, EgressClient};
use nitro_parentd::daemon::{Daemon, RunOptions};
use nitro_parentd::logsink::LogOutput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &str = r#"
version = 1
name = "web"
[image]
oci = "img:latest"
[egress]
mode = "transparent"
[[egress.allow]]
host = "example.com"
[[ingress]]
port = 8080
[kms]
proxy_port = 4000
region = "eu-west-1"
[[volume]]
name = "data"
size = "1MiB"
mount = "/data"
key = "alias/k"
[[secret]]
name = "db-password"
env = "DB_PASSWORD"
"#;

fn config(dir: &Path, allowed_port: u16) -> String {
    format!(
        r#"
version = 1
[daemon]
shutdown_grace_secs = 5

[[enclave]]
name = "web"
manifest = "web.toml"
eif = "web.eif"
cid = 16
transport = "uds:{dir}/sock"
ingress = {{ "8080" = "127.0.0.1:0" }}
egress_policy = {{ allow = [{{ cidr = "127.0.0.1/32", ports = [{allowed_port}] }}] }}
credentials = {{ source = "static", access_key_id = "AKIDTEST", secret_access_key = "s3cr3t" }}
secrets = {{ db-password = {{ dir = "secrets" }} }}
volumes = {{ data = {{ file = "data.img" }} }}
"#,
        dir = dir.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s += &format!(": {x}");
        c = x.source();
    }
    s
}

#[test]
fn check_reports_field_paths() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "web.toml", MANIFEST);
    let good = config(d.path(), 1);
    let plan = nitro_parentd::check(write(d.path(), "good.toml", &good)).unwrap();
    let printed = plan.to_string();
    assert!(
        printed.contains(":8000 egress") && printed.contains(":8003 time"),
        "{printed}"
    );
    assert!(printed.contains("volume data (NBD)"), "{printed}");
    assert!(printed.contains("ingress → enclave port 8080"), "{printed}");

    let second = |cid: &str, ingress: &str, transport: &str| {
        format!(
            "{good}\n[[enclave]]\nname = \"two\"\nmanifest = \"web.toml\"\neif = \"w.eif\"\ncid = {cid}\ntransport = \"{transport}\"\ningress = {{ \"8080\" = \"{ingress}\" }}\ncredentials = {{ source = \"environment\" }}\nsecrets = {{ db-password = {{ dir = \"s\" }} }}\nvolumes = {{ data = {{ file = \"d.img\" }} }}\n"
        )
    };
    let other_dir = format!("uds:{}/other", d.path().display());
    let cases: Vec<(String, &str)> = vec![
        (good.replace("cid = 16", "cid = 3"), "enclave[0].cid"),
        (
            good.replace("\"8080\"", "\"8081\""),
            "enclave[0].ingress.8081",
        ),
        (
            good.replace("secrets = {", "extra = 1\nsecrets = {"),
            "unknown field `extra`",
        ),
        (
            good.replace("db-password = {", "other = {"),
            "enclave[0].secrets.db-password",
        ),
        (
            good.replace(
                "source = \"static\", access_key_id = \"AKIDTEST\", ",
                "source = \"static\", ",
            ),
            "enclave[0].credentials.access_key_id",
        ),
        (
            good.replace("web.toml", "missing.toml"),
            "enclave[0].manifest",
        ),
        (
            good.replace(
                "{ dir = \"secrets\" }",
                "{ dir = \"secrets\", s3 = \"s3://bucket/key\" }",
            ),
            "exactly one of `dir` and `s3`",
        ),
        (
            good.replace("{ dir = \"secrets\" }", "{ s3 = \"https://bucket/key\" }"),
            "is not s3://BUCKET/KEY",
        ),
        (
            good.replace("{ dir = \"secrets\" }", "{ s3 = \"s3://Bucket_1/key\" }"),
            "is not an S3 bucket name",
        ),
        (
            good.replace(
                "{ dir = \"secrets\" }",
                "{ dir = \"secrets\", region = \"eu-west-1\" }",
            ),
            "go with `s3`",
        ),
        (
            good.replace(
                "secrets = {",
                "hosts = { \"bad name\" = [\"10.0.0.5\"] }\nsecrets = {",
            ),
            "enclave[0].hosts.bad name",
        ),
        (
            good.replace(
                "secrets = {",
                "hosts = { \"db.internal\" = [] }\nsecrets = {",
            ),
            "enclave[0].hosts.db.internal",
        ),
        (
            good.replace(
                "secrets = {",
                "hosts = { \"db.internal\" = [\"10.0.0\"] }\nsecrets = {",
            ),
            "invalid IP address",
        ),
        (
            good.replace("version = 1\n[daemon]", "version = 2\n[daemon]"),
            "version 2",
        ),
        (
            second("16", "127.0.0.1:9", &other_dir),
            "enclave[1].cid: 16 is also enclave[0]'s CID",
        ),
        (
            second("17", "0.0.0.0:18080", &other_dir).replace("127.0.0.1:0", "127.0.0.1:18080"),
            "enclave[1].ingress.8080: 0.0.0.0:18080 conflicts with enclave[0].ingress.8080",
        ),
        (second("17", "127.0.0.1:0", &other_dir), ""),
        (
            second(
                "17",
                "127.0.0.1:9",
                &format!("uds:{}/sock", d.path().display()),
            ),
            "also enclave[0]'s",
        ),
    ];
    for (text, want) in cases {
        let r = nitro_parentd::check(write(d.path(), "bad.toml", &text));
        if want.is_empty() {
            // Two ephemeral ports (0) do not clash.
            r.unwrap();
            continue;
        }
        let e = r.unwrap_err();
        let msg = err_chain(&e);
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
    // A broken manifest is reported under its field, with the manifest's own reason.
    write(
        d.path(),
        "web.toml",
        &MANIFEST.replace("size = \"1MiB\"", "size = \"1KiB\""),
    );
    let e = nitro_parentd::check(write(d.path(), "bad.toml", &good)).unwrap_err();
    let msg = err_chain(&e);
    assert!(
        msg.starts_with("enclave[0].manifest") && msg.contains("volume[0].size"),
        "{msg}"
    );
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_work_like_an_enclave_uses_them() {
    let d = tempfile::tempdir().unwrap();
    let parent = |port: u32| Addr::UnixDir {
        dir: d.path().join("sock/parent"),
        port,
    };
    // A destination on the parent side: echoes with a prefix.
    let dest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest_port = dest.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dest.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                let n = s.read(&mut b).await.unwrap_or(0);
                let _ = s.write_all(&[b"dest:", &b[..n]].concat()).await;
            });
        }
    });
    write(d.path(), "web.toml", MANIFEST);
    std::fs::create_dir(d.path().join("secrets")).unwrap();
    std::fs::write(
        d.path().join("secrets/db-password"),
        b"sealed-document-bytes",
    )
    .unwrap();
    let plan =
        nitro_parentd::check(write(d.path(), "c.toml", &config(d.path(), dest_port))).unwrap();

    let logs = Buf::default();
    let mut daemon = Daemon::start(
        &plan,
        RunOptions::new().log_output(LogOutput::new(logs.clone())),
    )
    .await
    .unwrap();
    daemon.attach("web", None).await.unwrap();

    // Egress through the tunnel, under the parent's policy.
    let egress = EgressClient::new(parent(8000));
    let mut t = egress.connect("127.0.0.1", dest_port).await.unwrap();
    t.write_all(b"hi").await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"dest:hi");
    let refused = egress
        .connect("127.0.0.1", dest_port.wrapping_add(1))
        .await
        .unwrap_err();
    assert!(refused.refusal().is_some(), "{refused}");
    drop(t);

    // Credentials.
    let mut s = parent(8002).connect().await.unwrap();
    let c = nitro_kms::credentials::request_credentials(&mut s)
        .await
        .unwrap();
    assert_eq!(c.access_key_id(), "AKIDTEST");
    drop(s);

    // A sealed secret by name; an unknown name is refused.
    let mut s = parent(8004).connect().await.unwrap();
    let doc = nitro_kms::sealed::fetch_sealed(&mut s, "db-password")
        .await
        .unwrap();
    assert_eq!(doc, b"sealed-document-bytes");
    assert!(
        nitro_kms::sealed::fetch_sealed(&mut s, "other")
            .await
            .is_err()
    );
    drop(s);

    // The volume over NBD, backed by a sparse file of the manifest's size.
    let nbd = NbdClient::connect_unix(d.path().join("sock/parent/9100.sock"), "data")
        .await
        .unwrap();
    assert_eq!(nbd.size(), 1 << 20);
    nbd.write_at(4096, b"block").await.unwrap();
    nbd.flush().await.unwrap();
    let mut b = [0u8; 5];
    nbd.read_at(4096, &mut b).await.unwrap();
    assert_eq!(&b, b"block");
    nbd.close().await.unwrap();
    assert_eq!(
        std::fs::metadata(d.path().join("data.img")).unwrap().len(),
        1 << 20
    );

    // Logs: one connection per stream.
    for (stream, text) in [
        (nitro_init::LogStream::Stdout, &b"hello\nworld"[..]),
        (nitro_init::LogStream::Stderr, &b"oops\n"[..]),
    ] {
        let mut s = parent(8005).connect().await.unwrap();
        s.write_all(nitro_init::log_header(stream).as_bytes())
            .await
            .unwrap();
        s.write_all(text).await.unwrap();
        s.shutdown().await.unwrap();
        let _ = s.read(&mut [0u8; 1]).await;
    }
    // A hostile connection without a header prints nothing.
    let mut s = parent(8005).connect().await.unwrap();
    s.write_all(&[b'x'; 100]).await.unwrap();
    drop(s);

    // Ingress: an enclave-side listener reached from TCP.
    let app = Addr::UnixDir {
        dir: d.path().join("sock/enclave"),
        port: 8080,
    }
    .bind()
    .await
    .unwrap();
    let ingress = daemon.ingress_addrs()[0].2;
    let mut client = tokio::net::TcpStream::connect(ingress).await.unwrap();
    let (mut inside, _) = app.accept().await.unwrap();
    client.write_all(b"GET").await.unwrap();
    let mut b = [0u8; 3];
    inside.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"GET");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        if text.contains("[web] stderr: oops") && text.contains("[web] world") {
            assert!(text.contains("[web] hello\n"), "{text}");
            assert!(!text.contains("xxx"), "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shutdown drains: the open ingress connection still carries data after the signal, new
    // connections are refused, and shutdown returns once it closes.
    let stop = daemon.shutdown_signal().clone();
    let done = tokio::spawn(daemon.shutdown());
    stop.wait().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!done.is_finished());
    assert!(parent(8002).connect().await.is_err());
    inside.write_all(b"200").await.unwrap();
    inside.shutdown().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"200");
    drop(client);
    drop(inside);
    tokio::time::timeout(Duration::from_secs(4), done)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn sd_notify_reaches_a_datagram_socket() {
    use nitro_parentd::notify::{NotifyAddr, notify_to};
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify_to(
        &NotifyAddr::parse(path.to_str().unwrap()).unwrap(),
        "READY=1",
    )
    .unwrap();
    let mut b = [0u8; 64];
    let n = sock.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"READY=1");
    // The abstract namespace.
    let name = format!("nitro-parentd-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    notify_to(
        &NotifyAddr::parse(&format!("@{name}")).unwrap(),
        "STOPPING=1",
    )
    .unwrap();
    let n = sock.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"STOPPING=1");
}

/// A sealed secret held in S3 (moto's S3): fetched with the enclave's credentials when the
/// daemon starts and served by name like a file secret; a missing object stops the start with
/// an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_from_s3() {
    let Some(moto) = nitro_test_support::Moto::start() else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port());
    let s3 = nitro_kms::S3Client::builder("eu-west-1")
        .endpoint(endpoint.clone())
        .credentials(nitro_kms::Credentials::new(
            "AKIDTEST", "s3cr3t", None, None,
        ))
        .dangerous_allow_plain_http()
        .build()
        .unwrap();
    s3.create_bucket("nitro-secrets").await.unwrap();
    s3.put_object(
        &nitro_kms::S3Location::new("nitro-secrets", "web/db-password"),
        b"sealed-in-s3".to_vec(),
    )
    .await
    .unwrap();

    let d = tempfile::tempdir().unwrap();
    write(d.path(), "web.toml", MANIFEST);
    let with_s3 = |key: &str| {
        config(d.path(), 9).replace(
            "db-password = { dir = \"secrets\" }",
            &format!(
                "db-password = {{ s3 = \"s3://nitro-secrets/{key}\", endpoint = \"{endpoint}\" }}"
            ),
        )
    };
    let plan =
        nitro_parentd::check(write(d.path(), "c.toml", &with_s3("web/db-password"))).unwrap();
    assert!(
        plan.to_string()
            .contains("secret db-password: s3://nitro-secrets/web/db-password (eu-west-1)"),
        "{plan}"
    );
    let mut daemon = Daemon::start(&plan, RunOptions::new()).await.unwrap();
    daemon.attach("web", None).await.unwrap();
    let parent = Addr::UnixDir {
        dir: d.path().join("sock/parent"),
        port: 8004,
    };
    let mut s = parent.connect().await.unwrap();
    let doc = nitro_kms::sealed::fetch_sealed(&mut s, "db-password")
        .await
        .unwrap();
    assert_eq!(doc, b"sealed-in-s3");
    drop(s);
    daemon.shutdown().await;

    // A missing object: the daemon does not start, and says which.
    let plan = nitro_parentd::check(write(d.path(), "c.toml", &with_s3("web/missing"))).unwrap();
    let Err(e) = Daemon::start(&plan, RunOptions::new()).await else {
        panic!("the daemon started without its secret");
    };
    let msg = err_chain(&e);
    assert!(
        msg.contains("secret db-password") && msg.contains("s3://nitro-secrets/web/missing"),
        "{msg}"
    );
}
