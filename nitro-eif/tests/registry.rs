//! Registry pulls against a real registry: Debian's `docker-registry` (the CNCF distribution
//! registry) started on a loopback port with a temporary config and storage, an image pushed
//! to it with `skopeo copy` from an OCI layout made here. The EIFs built from the tag and from
//! the digest measure like the EIF built from the layout itself; missing names, wrong digests,
//! refused credentials, HTTPS against a plain-HTTP registry and the size cap are typed errors.
//!
//! Needs `docker-registry`, `skopeo` and `htpasswd` (scripts/install.sh); without them the test
//! is skipped with a reason, or fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Cursor, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use nitro_eif::{
    Arch, BuildOutput, CustomerRamdisk, EifBuilder, Error, ImageOptions, RegistryFailure,
    RegistryOptions, Source,
};
use serde_json::{Value, json};

fn sha256(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, d)))
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, *d).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn blob(dir: &Path, data: &[u8], media_type: &str) -> Value {
    let d = sha256(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    json!({"mediaType": media_type, "digest": d, "size": data.len()})
}

/// One image for `arch` (a gzip layer and a plain one) in the layout at `dir`; returns its
/// manifest descriptor (with the platform).
fn image(dir: &Path, arch: &str) -> Value {
    let base = layer_tar(&[
        ("bin/app", b"#!/bin/sh\necho hello\n"),
        ("etc/conf", b"a=1\n"),
    ]);
    let top = layer_tar(&[("etc/arch", arch.as_bytes())]);
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Env": ["A=1"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&top)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(dir, &config, "application/vnd.oci.image.config.v1+json"),
        "layers": [
            blob(dir, &gzip(&base), "application/vnd.oci.image.layer.v1.tar+gzip"),
            blob(dir, &top, "application/vnd.oci.image.layer.v1.tar"),
        ]
    }))
    .unwrap();
    let mut d = blob(dir, &manifest, "application/vnd.oci.image.manifest.v1+json");
    d["platform"] = json!({"architecture": arch, "os": "linux"});
    d
}

/// The test layout: tag `1` is an index of linux/amd64 and linux/arm64, tag `amd` the amd64
/// manifest alone.
fn layout(dir: &Path) {
    let amd = image(dir, "amd64");
    let arm = image(dir, "arm64");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm]
    }))
    .unwrap();
    let mut top = blob(dir, &index, "application/vnd.oci.image.index.v1+json");
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "1"});
    let mut amd_tag = amd.clone();
    amd_tag["annotations"] = json!({"org.opencontainers.image.ref.name": "amd"});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top, amd_tag]})).unwrap(),
    )
    .unwrap();
}

/// A `docker-registry` on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(bin: &Path, htpasswd: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = match htpasswd {
            Some(line) => {
                std::fs::write(dir.path().join("htpasswd"), line).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                r.child.try_wait().unwrap().is_none(),
                "docker-registry exited"
            );
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(skopeo: &Path, layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut c = Command::new(skopeo);
    c.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--multi-arch",
        "all",
    ])
    .arg("--dest-tls-verify=false");
    if let Some(c2) = creds {
        c.arg("--dest-creds").arg(c2);
    }
    let out = c
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest (or index) `reference` names in the registry, as `skopeo inspect --raw` reads
/// it; with its digest.
fn registry_manifest(skopeo: &Path, reference: &str, creds: Option<&str>) -> (Value, String) {
    let mut c = Command::new(skopeo);
    c.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(c2) = creds {
        c.arg("--creds").arg(c2);
    }
    let out = c.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        sha256(&out.stdout),
    )
}

/// The digest of the `linux/<arch>` entry of an index.
fn entry(index: &Value, arch: &str) -> String {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["platform"]["architecture"] == arch)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn build(c: CustomerRamdisk) -> BuildOutput {
    EifBuilder::with_kernel(
        Source::bytes(common::fake_bzimage(4096, 1)),
        "console=ttyS0",
    )
    .ramdisk(common::bootstrap())
    .ramdisk(c)
    .build(&mut Cursor::new(Vec::new()))
    .unwrap()
}

fn cpio(c: CustomerRamdisk) -> Vec<u8> {
    let mut v = Vec::new();
    c.into_archive().unwrap().write_to(&mut v).unwrap();
    v
}

fn failure(r: Result<CustomerRamdisk, Error>) -> RegistryFailure {
    match r {
        Err(Error::Registry { failure, .. }) => failure,
        other => panic!("expected a registry error, got {other:?}"),
    }
}

struct Tools {
    registry: PathBuf,
    skopeo: PathBuf,
    htpasswd: PathBuf,
}

fn tools() -> Option<Tools> {
    Some(Tools {
        registry: nitro_test_support::tool("docker-registry")?,
        skopeo: nitro_test_support::tool("skopeo")?,
        htpasswd: nitro_test_support::tool("htpasswd")?,
    })
}

#[test]
fn pulls_from_a_real_registry() {
    let Some(t) = tools() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let reg = Registry::start(&t.registry, None);
    let host = reg.host();
    push(&t.skopeo, dir.path(), "1", &format!("{host}/app:1"), None);
    push(
        &t.skopeo,
        dir.path(),
        "amd",
        &format!("{host}/app:amd"),
        None,
    );
    // skopeo may re-serialize manifests: the digests are the registry's.
    let (index, index_digest) = registry_manifest(&t.skopeo, &format!("{host}/app:1"), None);
    let (amd_digest, arm_digest) = (entry(&index, "amd64"), entry(&index, "arm64"));
    let http = RegistryOptions::default().insecure(true);
    let amd64 = ImageOptions::default().arch(Arch::X86_64);

    // The tag (an index): linux/amd64 by default, measured like the layout's amd64 image.
    let direct =
        build(CustomerRamdisk::from_image_with(dir.path(), &amd64.clone().reference("1")).unwrap());
    let pulled =
        CustomerRamdisk::from_registry(&format!("{host}/app:1"), &ImageOptions::default(), &http)
            .unwrap();
    assert_eq!(pulled.image_digest(), Some(amd_digest.as_str()));
    assert_eq!(pulled.image_config().unwrap().architecture, "amd64");
    assert_eq!(build(pulled).measurements, direct.measurements);

    // The same through the async API, which also reports the index digest.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = rt
        .block_on(nitro_eif::pull_image(
            &format!("{host}/app:1"),
            &amd64,
            &http,
        ))
        .unwrap();
    assert_eq!(p.digest(), amd_digest);
    assert_eq!(p.index_digest(), Some(index_digest.as_str()));
    assert_eq!(p.pinned_reference(), format!("{host}/app@{amd_digest}"));
    assert_eq!(
        build(CustomerRamdisk::from_pulled(&p, &amd64).unwrap()).measurements,
        direct.measurements
    );

    // By digest: the pinned reference builds the same image.
    let by_digest = CustomerRamdisk::from_registry(&p.pinned_reference(), &amd64, &http).unwrap();
    assert_eq!(by_digest.image_digest(), Some(amd_digest.as_str()));
    assert_eq!(build(by_digest).measurements, direct.measurements);
    // The single-platform tag too.
    let single = CustomerRamdisk::from_registry(&format!("{host}/app:amd"), &amd64, &http).unwrap();
    let (_, single_digest) = registry_manifest(&t.skopeo, &format!("{host}/app:amd"), None);
    assert_eq!(single.image_digest(), Some(single_digest.as_str()));
    assert_eq!(build(single).measurements, direct.measurements);

    // linux/arm64 for a Graviton build: the same ramdisk as the layout's arm64 image.
    let arm64 = ImageOptions::default().arch(Arch::Aarch64);
    let arm = CustomerRamdisk::from_registry(&format!("{host}/app:1"), &arm64, &http).unwrap();
    assert_eq!(arm.image_digest(), Some(arm_digest.as_str()));
    assert_eq!(arm.image_config().unwrap().architecture, "arm64");
    let arm_direct =
        CustomerRamdisk::from_image_with(dir.path(), &arm64.clone().reference("1")).unwrap();
    assert_eq!(cpio(arm), cpio(arm_direct));

    // Typed errors.
    let wrong = format!("{host}/app@sha256:{}", "0".repeat(64));
    assert_eq!(
        failure(CustomerRamdisk::from_registry(&wrong, &amd64, &http)),
        RegistryFailure::NotFound
    );
    for missing in [format!("{host}/app:nope"), format!("{host}/nothing:1")] {
        assert_eq!(
            failure(CustomerRamdisk::from_registry(&missing, &amd64, &http)),
            RegistryFailure::NotFound,
            "{missing}"
        );
    }
    assert!(matches!(
        failure(CustomerRamdisk::from_registry(
            "no spaces/app:1",
            &amd64,
            &http
        )),
        RegistryFailure::InvalidReference(_)
    ));
    // HTTPS is the default: a plain-HTTP registry is not spoken to without `insecure`.
    assert_eq!(
        failure(CustomerRamdisk::from_registry(
            &format!("{host}/app:1"),
            &amd64,
            &RegistryOptions::default()
        )),
        RegistryFailure::Transport
    );
    // The cap bounds the download as well as the unpacked files.
    let r = CustomerRamdisk::from_registry(
        &format!("{host}/app:1"),
        &amd64.clone().max_unpacked(64),
        &http,
    );
    assert!(
        matches!(r, Err(Error::ImageTooLarge { limit: 64, .. })),
        "{r:?}"
    );
    eprintln!("registry test took {:?}", started.elapsed());
}

#[test]
fn credentials_from_the_docker_config() {
    let Some(t) = tools() else { return };
    let out = Command::new(&t.htpasswd)
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let reg = Registry::start(&t.registry, Some(&String::from_utf8(out.stdout).unwrap()));
    let host = reg.host();
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    push(
        &t.skopeo,
        dir.path(),
        "amd",
        &format!("{host}/private:1"),
        Some("alice:s3cret"),
    );
    let reference = format!("{host}/private:1");
    let (_, amd_digest) = registry_manifest(&t.skopeo, &reference, Some("alice:s3cret"));
    let amd64 = ImageOptions::default().arch(Arch::X86_64);
    let conf = tempfile::tempdir().unwrap();
    let write_config = |user_pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
        let p = conf.path().join("config.json");
        std::fs::write(
            &p,
            serde_json::to_vec(&json!({"auths": {host.clone(): {"auth": auth}}})).unwrap(),
        )
        .unwrap();
        RegistryOptions::default().insecure(true).docker_config(p)
    };
    // No credentials for the registry: anonymous, refused.
    let none = RegistryOptions::default()
        .insecure(true)
        .docker_config(conf.path().join("absent.json"));
    assert!(matches!(
        failure(CustomerRamdisk::from_registry(&reference, &amd64, &none)),
        RegistryFailure::Credentials(_)
    ));
    let empty = conf.path().join("empty.json");
    std::fs::write(&empty, b"{}").unwrap();
    let anon = RegistryOptions::default()
        .insecure(true)
        .docker_config(&empty);
    assert_eq!(
        failure(CustomerRamdisk::from_registry(&reference, &amd64, &anon)),
        RegistryFailure::Unauthorized
    );
    assert_eq!(
        failure(CustomerRamdisk::from_registry(
            &reference,
            &amd64,
            &write_config("alice:wrong")
        )),
        RegistryFailure::Unauthorized
    );
    let ok =
        CustomerRamdisk::from_registry(&reference, &amd64, &write_config("alice:s3cret")).unwrap();
    assert_eq!(ok.image_digest(), Some(amd_digest.as_str()));
    let direct =
        CustomerRamdisk::from_image_with(dir.path(), &amd64.clone().reference("amd")).unwrap();
    assert_eq!(build(ok).measurements, build(direct).measurements);
}
