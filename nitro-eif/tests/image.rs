//! Container images: OCI layouts (directory and tar) and `docker save` archives (tar, gzip'd
//! tar), layer order, whiteouts, opaque directories, gzip/zstd/plain layers, hard links,
//! digests, platform selection and the architecture check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use aws_lc_rs::digest::{SHA256, digest};
use nitro_eif::{Arch, CustomerRamdisk, EifBuilder, Error, ImageOptions, Source};
use serde_json::json;

// ----- a tiny newc reader for checking results -----

#[derive(Debug, Clone, PartialEq)]
struct Member {
    mode: u32,
    uid: u32,
    data: Vec<u8>,
}

fn parse_newc(mut b: &[u8]) -> BTreeMap<String, Member> {
    let mut out = BTreeMap::new();
    loop {
        assert_eq!(&b[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let (mode, uid, size, namesize) =
            (field(1), field(2), field(6) as usize, field(11) as usize);
        let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
        let data_at = (110 + namesize + 3) & !3;
        let data = b[data_at..data_at + size].to_vec();
        b = &b[(data_at + size + 3) & !3..];
        if name == "TRAILER!!!" {
            return out;
        }
        out.insert(name, Member { mode, uid, data });
    }
}

fn archive_of(c: CustomerRamdisk) -> BTreeMap<String, Member> {
    let a = c.into_archive().unwrap();
    let mut v = Vec::new();
    a.write_to(&mut v).unwrap();
    parse_newc(&v)
}

// ----- building test images -----

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u64, &'a [u8]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn layer_tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        match e {
            E::Dir(p, m) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, m, d) | E::Owned(p, m, _, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                if let E::Owned(_, _, uid, _) = e {
                    h.set_uid(*uid);
                    h.set_gid(*uid);
                }
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn zstd(d: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(d, ruzstd::encoding::CompressionLevel::Fastest)
}

fn sha256(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, d)))
}

/// The three layers of the test image, uncompressed.
fn layers() -> [Vec<u8>; 3] {
    [
        layer_tar(&[
            E::Dir("etc", 0o755),
            E::File("etc/conf", 0o644, b"old config"),
            E::Dir("etc/old", 0o700),
            E::File("etc/old/x", 0o644, b"x"),
            E::Dir("usr/bin", 0o755),
            E::File("usr/bin/a", 0o755, b"first a"),
            E::Hard("usr/bin/a2", "usr/bin/a"),
            E::Link("lib", "usr/lib"),
            E::Owned("home/app/data", 0o600, 1000, b"owned"),
            E::Dir("gone", 0o755),
            E::File("gone/deep", 0o644, b"d"),
        ]),
        layer_tar(&[
            E::File("etc/.wh.conf", 0o644, b""),
            E::File("etc/old/.wh..wh..opq", 0o644, b""),
            E::File("etc/old/new", 0o644, b"new"),
            E::File("usr/bin/b", 0o755, b"b"),
            E::File(".wh.gone", 0o644, b""),
        ]),
        layer_tar(&[
            E::File("usr/bin/a", 0o750, b"second a"),
            E::File("lib/x.so", 0o644, b"so"),
        ]),
    ]
}

fn config(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/a"],
            "Cmd": ["--x", "y"],
            "Env": ["PATH=/usr/bin", "A=1"],
            "WorkingDir": "/srv",
            "User": "1000"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn blob(dir: &Path, data: &[u8]) -> serde_json::Value {
    let d = sha256(data);
    write(dir, &format!("blobs/sha256/{}", &d[7..]), data);
    json!({"digest": d, "size": data.len()})
}

/// An OCI layout with gzip, zstd and plain layers; returns (dir, manifest descriptor).
fn oci_layout(dir: &Path, arch: &str) -> serde_json::Value {
    let ls = layers();
    let diff_ids: Vec<String> = ls.iter().map(|l| sha256(l)).collect();
    let stored = [gzip(&ls[0]), zstd(&ls[1]), ls[2].clone()];
    let types = [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    ];
    let mut cfg = blob(dir, &config(arch, &diff_ids));
    cfg["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let layers: Vec<_> = stored
        .iter()
        .zip(types)
        .map(|(s, t)| {
            let mut d = blob(dir, s);
            d["mediaType"] = json!(t);
            d
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": layers
    }))
    .unwrap();
    let mut desc = blob(dir, &manifest);
    desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    desc["platform"] = json!({"architecture": arch, "os": "linux"});
    desc
}

fn finish_layout(dir: &Path, manifests: Vec<serde_json::Value>) {
    write(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    write(
        dir,
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    );
}

fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// A classic `docker save` layout: manifest.json, <id>.json config, <id>/layer.tar, with the
/// second layer stored once and referenced through a symlink (as docker does for duplicates).
fn docker_save(dir: &Path) {
    let ls = layers();
    let diff_ids: Vec<String> = ls.iter().map(|l| sha256(l)).collect();
    let cfg = config("amd64", &diff_ids);
    let cfg_name = format!("{}.json", &sha256(&cfg)[7..]);
    write(dir, &cfg_name, &cfg);
    write(dir, "aaa/layer.tar", &ls[0]);
    write(dir, "bbb/layer.tar", &ls[1]);
    std::fs::create_dir_all(dir.join("ccc")).unwrap();
    write(dir, "real/layer.tar", &ls[2]);
    std::os::unix::fs::symlink("../real/layer.tar", dir.join("ccc/layer.tar")).unwrap();
    write(
        dir,
        "manifest.json",
        &serde_json::to_vec(&json!([{
            "Config": cfg_name,
            "RepoTags": ["app:1"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"]
        }]))
        .unwrap(),
    );
}

fn check_flattened(m: &BTreeMap<String, Member>) {
    let names: Vec<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "cmd",
            "env",
            "rootfs",
            "rootfs/dev",
            "rootfs/etc",
            "rootfs/etc/old",
            "rootfs/etc/old/new",
            "rootfs/home",
            "rootfs/home/app",
            "rootfs/home/app/data",
            "rootfs/lib",
            "rootfs/lib/x.so",
            "rootfs/proc",
            "rootfs/run",
            "rootfs/sys",
            "rootfs/tmp",
            "rootfs/usr",
            "rootfs/usr/bin",
            "rootfs/usr/bin/a",
            "rootfs/usr/bin/a2",
            "rootfs/usr/bin/b",
            "rootfs/var",
            "workdir"
        ]
    );
    assert_eq!(m["cmd"].data, b"/usr/bin/a\n--x\ny\n");
    assert_eq!(m["env"].data, b"PATH=/usr/bin\nA=1\n");
    assert_eq!(m["workdir"].data, b"/srv\n");
    assert_eq!(m["rootfs/usr/bin/a"].data, b"second a");
    assert_eq!(m["rootfs/usr/bin/a"].mode, 0o100750);
    assert_eq!(
        m["rootfs/usr/bin/a2"].data, b"first a",
        "hard link keeps the lower content"
    );
    assert_eq!(m["rootfs/etc/old"].mode, 0o040700);
    assert_eq!(
        m["rootfs/home/app/data"].uid, 1000,
        "image ownership is kept"
    );
    // A symlink in a lower layer replaced by a directory in a higher one.
    assert_eq!(m["rootfs/lib"].mode & 0o170000, 0o040000);
}

#[test]
fn oci_layout_directory_and_tar_flatten_identically() {
    let dir = tempfile::tempdir().unwrap();
    let desc = oci_layout(dir.path(), "amd64");
    finish_layout(dir.path(), vec![desc]);
    let c = CustomerRamdisk::from_image(dir.path()).unwrap();
    let cfg = c.image_config().unwrap();
    assert_eq!(cfg.arch(), Some(Arch::X86_64));
    assert_eq!(cfg.user, "1000");
    let from_dir = archive_of(c);
    check_flattened(&from_dir);

    let tar = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tar.path(), tar_dir(dir.path())).unwrap();
    assert_eq!(
        archive_of(CustomerRamdisk::from_image(tar.path()).unwrap()),
        from_dir
    );
}

#[test]
fn docker_save_archives_flatten_like_the_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    docker_save(dir.path());
    let plain = tar_dir(dir.path());
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("app.tar"), &plain).unwrap();
    std::fs::write(t.path().join("app.tar.gz"), gzip(&plain)).unwrap();
    std::fs::write(t.path().join("app.tar.zst"), zstd(&plain)).unwrap();
    let reference = archive_of(CustomerRamdisk::from_image(t.path().join("app.tar")).unwrap());
    check_flattened(&reference);
    for f in ["app.tar.gz", "app.tar.zst"] {
        assert_eq!(
            archive_of(CustomerRamdisk::from_image(t.path().join(f)).unwrap()),
            reference,
            "{f}"
        );
    }
    assert_eq!(
        archive_of(CustomerRamdisk::from_image(dir.path()).unwrap()),
        reference
    );
    let opts = ImageOptions::default().reference("app:1");
    assert_eq!(
        archive_of(CustomerRamdisk::from_image_with(dir.path(), &opts).unwrap()),
        reference
    );
    let opts = ImageOptions::default().reference("other:2");
    match CustomerRamdisk::from_image_with(dir.path(), &opts) {
        Err(Error::ImageNotFound {
            reference: Some(r),
            arch: None,
        }) => assert_eq!(r, "other:2"),
        r => panic!("{:?}", r.map(|_| ())),
    }

    // Same bytes, same PCR2, whatever the packaging.
    let oci = tempfile::tempdir().unwrap();
    let desc = oci_layout(oci.path(), "amd64");
    finish_layout(oci.path(), vec![desc]);
    assert_eq!(
        archive_of(CustomerRamdisk::from_image(oci.path()).unwrap()),
        reference
    );
}

#[test]
fn several_images_need_a_reference() {
    // Two images for the same platform: the error names them, and a reference picks one.
    let dir = tempfile::tempdir().unwrap();
    let mut a = oci_layout(dir.path(), "amd64");
    a["annotations"] = json!({"org.opencontainers.image.ref.name": "a"});
    let mut b = oci_layout(dir.path(), "amd64");
    b["annotations"] = json!({"org.opencontainers.image.ref.name": "b"});
    finish_layout(dir.path(), vec![a, b]);
    let opts = ImageOptions::default().arch(Arch::X86_64);
    match CustomerRamdisk::from_image_with(dir.path(), &opts) {
        Err(e @ Error::AmbiguousImage { .. }) => {
            assert_eq!(
                e.to_string(),
                "container image: 2 images match (a, b); select one by reference"
            );
        }
        r => panic!("{:?}", r.map(|_| ())),
    }
    CustomerRamdisk::from_image_with(dir.path(), &opts.reference("b")).unwrap();
}

#[test]
fn cmd_and_env_can_be_overridden() {
    let dir = tempfile::tempdir().unwrap();
    docker_save(dir.path());
    let m = archive_of(
        CustomerRamdisk::from_image(dir.path())
            .unwrap()
            .cmd(["/usr/bin/b"])
            .env("A", "2")
            .env("NEW", "x y")
            .workdir(None),
    );
    assert_eq!(m["cmd"].data, b"/usr/bin/b\n");
    assert_eq!(m["env"].data, b"PATH=/usr/bin\nA=2\nNEW=x y\n");
    assert!(!m.contains_key("workdir"));
}

#[test]
fn tampered_blobs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let desc = oci_layout(dir.path(), "amd64");
    finish_layout(dir.path(), vec![desc]);
    // Corrupt the plain (third) layer blob in place: digest mismatch.
    let ls = layers();
    let p = dir.path().join("blobs/sha256").join(&sha256(&ls[2])[7..]);
    let mut b = std::fs::read(&p).unwrap();
    let i = b.windows(8).position(|w| w == b"second a").unwrap();
    b[i] = b'S';
    std::fs::write(&p, &b).unwrap();
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Image(ref m) if m.contains("digest") || m.contains("diff_id")),
        "{e}"
    );

    // docker save: no blob digests, but the diff_ids catch it.
    let dir = tempfile::tempdir().unwrap();
    docker_save(dir.path());
    let p = dir.path().join("aaa/layer.tar");
    let mut b = std::fs::read(&p).unwrap();
    let i = b.windows(10).position(|w| w == b"old config").unwrap();
    b[i] = b'O';
    std::fs::write(&p, &b).unwrap();
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Image(ref m) if m.contains("diff_id")),
        "{e}"
    );
}

#[test]
fn path_traversal_in_a_layer_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.as_old_mut().name[..12].copy_from_slice(b"../etc/evil\0");
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    let cfg = config("amd64", &[sha256(&evil)]);
    let cfg_name = "c.json";
    write(dir.path(), cfg_name, &cfg);
    write(dir.path(), "l/layer.tar", &evil);
    write(
        dir.path(),
        "manifest.json",
        &serde_json::to_vec(
            &json!([{"Config": cfg_name, "RepoTags": [], "Layers": ["l/layer.tar"]}]),
        )
        .unwrap(),
    );
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(matches!(e, Error::Image(ref m) if m.contains("..")), "{e}");
}

#[test]
fn multi_platform_index_and_architecture_check() {
    let dir = tempfile::tempdir().unwrap();
    let amd = oci_layout(dir.path(), "amd64");
    let arm = oci_layout(dir.path(), "arm64");
    let attestation = json!({"digest": amd["digest"], "size": amd["size"], "platform": {"architecture": "unknown", "os": "unknown"}});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm, attestation]
    }))
    .unwrap();
    let mut top = blob(dir.path(), &index);
    top["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    top["annotations"] = json!({"io.containerd.image.name": "docker.io/library/app:1", "org.opencontainers.image.ref.name": "1"});
    finish_layout(dir.path(), vec![top]);

    let c =
        CustomerRamdisk::from_image_with(dir.path(), &ImageOptions::default().arch(Arch::Aarch64))
            .unwrap();
    assert_eq!(c.image_config().unwrap().architecture, "arm64");
    // An arm64 image with an x86 kernel is refused.
    let r = EifBuilder::with_kernel(Source::bytes(common::fake_bzimage(4096, 1)), "")
        .ramdisk(common::bootstrap())
        .ramdisk(c)
        .build(&mut Cursor::new(Vec::new()));
    assert!(
        matches!(
            r,
            Err(Error::ArchMismatch {
                found: Arch::Aarch64,
                expected: Arch::X86_64,
                ..
            })
        ),
        "{r:?}"
    );

    let c = CustomerRamdisk::from_image_with(
        dir.path(),
        &ImageOptions::default()
            .arch(Arch::X86_64)
            .reference("app:1"),
    )
    .unwrap();
    assert_eq!(c.image_config().unwrap().architecture, "amd64");
    let mut out = Cursor::new(Vec::new());
    let built = EifBuilder::with_kernel(Source::bytes(common::fake_bzimage(4096, 1)), "")
        .ramdisk(common::bootstrap())
        .ramdisk(c)
        .build(&mut out)
        .unwrap();
    // The image config becomes DockerInfo in the metadata.
    assert_eq!(built.metadata.docker_info["architecture"], "amd64");
    let mut cpio = Vec::new();
    let r = nitro_eif::EifReader::new(Cursor::new(out.into_inner())).unwrap();
    let idx = r.sections().last().unwrap().index;
    let mut r = r;
    r.copy_section(idx, &mut cpio).unwrap();
    assert!(parse_newc(&cpio).contains_key("rootfs/usr/bin/b"));
    let _ = Cursor::new(cpio).read(&mut [0u8; 1]);
}

#[test]
fn not_an_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(e.to_string().contains("neither an OCI image layout"), "{e}");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        b"definitely not a tar archive, just some text that is long enough",
    )
    .unwrap();
    assert!(CustomerRamdisk::from_image(f.path()).is_err());
}
