//! `eif build --manifest`: the image named by an enclave manifest (an OCI layout relative to
//! the manifest), with the supervisor as the command (the image's own command after `--`) and
//! the manifest stored at /etc/nitro/enclave.toml, so PCR2 measures the manifest's policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aws_lc_rs::digest::{SHA256, digest};
use nitro_test_support::example;
use serde_json::{Value, json};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, data)))
}

fn blob(dir: &Path, data: &[u8], media_type: &str) -> Value {
    let d = sha256(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    json!({"mediaType": media_type, "digest": d, "size": data.len()})
}

/// A one-layer OCI layout, tag `app`, whose command is `/bin/app --serve`.
fn layout(dir: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(10);
    h.set_mode(0o755);
    h.set_cksum();
    b.append_data(&mut h, "bin/app", &b"#!/bin/sh\n"[..])
        .unwrap();
    let layer = b.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(dir, &config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(dir, &layer, "application/vnd.oci.image.layer.v1.tar")]
    }))
    .unwrap();
    let mut d = blob(dir, &manifest, "application/vnd.oci.image.manifest.v1+json");
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "app"});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [d]})).unwrap(),
    )
    .unwrap();
}

/// The members of a newc cpio archive: path → (mode, data).
fn cpio(bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let field = |at: usize, i: usize| {
        let s = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
        usize::from_str_radix(s, 16).unwrap()
    };
    let pad = |n: usize| (n + 3) & !3;
    let mut out = BTreeMap::new();
    let mut at = 0;
    loop {
        assert_eq!(&bytes[at..at + 6], b"070701");
        let (mode, size, namesize) = (field(at, 1), field(at, 6), field(at, 11));
        let name = String::from_utf8(bytes[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
        let data_at = pad(at + 110 + namesize);
        if name == "TRAILER!!!" {
            return out;
        }
        out.insert(name, (mode as u32, bytes[data_at..data_at + size].to_vec()));
        at = pad(data_at + size);
    }
}

fn build(eif: &Path, dir: &Path, manifest: &str, out: &str) -> Value {
    std::fs::write(dir.join("enclave.toml"), manifest).unwrap();
    let output = Command::new(eif)
        .arg("build")
        .arg("--kernel")
        .arg(dir.join("bzImage"))
        .args(["--cmdline", "console=ttyS0"])
        .arg("--init")
        .arg(dir.join("init"))
        .arg("--manifest")
        .arg(dir.join("enclave.toml"))
        .arg("--supervisor")
        .arg(dir.join("supervisor"))
        .arg("-o")
        .arg(dir.join(out))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

const MANIFEST: &str = r#"version = 1
name = "app"
[image]
oci = "layout:app"
[egress]
mode = "transparent"
[[egress.allow]]
host = "api.example.com"
ports = [443]
"#;

#[test]
fn the_manifest_and_the_supervisor_go_into_the_measured_image() {
    let Some(eif) = example("eif") else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let mut kernel: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(p("bzImage"), kernel).unwrap();
    std::fs::write(p("init"), b"\x7fELF init").unwrap();
    std::fs::write(p("supervisor"), b"\x7fELF supervisor").unwrap();
    std::fs::create_dir(p("layout")).unwrap();
    layout(&p("layout"));

    let first = build(&eif, dir.path(), MANIFEST, "a.eif");
    let unpacked = p("unpacked");
    let status = Command::new(&eif)
        .arg("extract")
        .arg(p("a.eif"))
        .arg("--dir")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(status.status.success());
    let customer = cpio(&std::fs::read(unpacked.join("ramdisk-1.cpio")).unwrap());
    assert_eq!(
        customer["rootfs/etc/nitro/enclave.toml"].1,
        MANIFEST.as_bytes()
    );
    let (mode, bytes) = &customer["rootfs/usr/bin/nitro-supervisor"];
    assert_eq!(
        (mode & 0o7777, bytes.as_slice()),
        (0o755, &b"\x7fELF supervisor"[..])
    );
    assert_eq!(
        String::from_utf8(customer["cmd"].1.clone()).unwrap(),
        "/usr/bin/nitro-supervisor\n--\n/bin/app\n--serve\n"
    );
    assert!(customer.contains_key("rootfs/bin/app"));

    // Another egress policy is another PCR2 (and PCR0); the bootstrap (PCR1) is unchanged.
    let other = MANIFEST.replace("api.example.com", "api.example.org");
    let second = build(&eif, dir.path(), &other, "b.eif");
    let pcr = |v: &Value, n: &str| v["Measurements"][n].as_str().unwrap().to_owned();
    assert_ne!(pcr(&first, "PCR2"), pcr(&second, "PCR2"));
    assert_ne!(pcr(&first, "PCR0"), pcr(&second, "PCR0"));
    assert_eq!(pcr(&first, "PCR1"), pcr(&second, "PCR1"));

    // An invalid manifest is refused with its field path, before anything is built.
    std::fs::write(
        p("enclave.toml"),
        MANIFEST.replace("version = 1", "version = 1\nbogus = 2"),
    )
    .unwrap();
    let out = Command::new(&eif)
        .arg("build")
        .arg("--kernel")
        .arg(p("bzImage"))
        .args(["--cmdline", "x", "--init"])
        .arg(p("init"))
        .arg("--manifest")
        .arg(p("enclave.toml"))
        .arg("--supervisor")
        .arg(p("supervisor"))
        .arg("-o")
        .arg(p("c.eif"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p("c.eif").exists());
}
