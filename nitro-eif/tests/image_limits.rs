//! Hostile container images (issue 20, items 2 and 3): the unpacked size is bounded (sparse
//! members by their logical size, every decompression capped, oversized members refused before
//! spooling) and `docker save` directories resolve beneath their root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;

use aws_lc_rs::digest::{SHA256, digest};
use nitro_eif::{CustomerRamdisk, Error, ImageOptions};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn sha256(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(digest(&SHA256, d)))
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn octal(field: &mut [u8; 12], v: u64) {
    field.copy_from_slice(format!("{v:011o}\0").as_bytes());
}

/// A tar holding, for each `(name, logical size)`, a GNU sparse member that is all hole: no
/// data blocks at all, a 512-byte header each.
fn sparse_layer(members: &[(&str, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, logical) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(1_600_000_000);
        let g = h.as_gnu_mut().unwrap();
        octal(&mut g.realsize, *logical);
        octal(&mut g.sparse[0].offset, *logical);
        octal(&mut g.sparse[0].numbytes, 0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn file_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/app"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn blob(dir: &Path, data: &[u8]) -> serde_json::Value {
    let d = sha256(data);
    write(dir, &format!("blobs/sha256/{}", &d[7..]), data);
    json!({"digest": d, "size": data.len()})
}

/// An OCI layout whose layers are `(uncompressed tar stream, stored blob)` pairs.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, Vec<u8>)]) {
    let diff_ids: Vec<String> = layers.iter().map(|(plain, _)| sha256(plain)).collect();
    let cfg = blob(dir, &config(&diff_ids));
    let descs: Vec<_> = layers
        .iter()
        .map(|(_, stored)| {
            let mut d = blob(dir, stored);
            d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
            d
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": descs
    }))
    .unwrap();
    let mut desc = blob(dir, &manifest);
    desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    write(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    write(
        dir,
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).unwrap(),
    );
}

fn too_large(e: &Error) -> bool {
    matches!(e, Error::ImageTooLarge { .. })
}

#[test]
fn sparse_members_count_with_their_logical_size() {
    // The review's bomb, scaled down: a digest-correct layer of a few KB holding two sparse
    // members of 40 MiB each against a 64 MiB cap. The first fits, the second is refused
    // before it is spooled.
    let dir = tempfile::tempdir().unwrap();
    let plain = sparse_layer(&[("a", 40 * MIB), ("b", 40 * MIB)]);
    assert!(plain.len() < 4096);
    oci_layout(dir.path(), &[(plain.clone(), gzip(&plain))]);
    let opts = ImageOptions::default().max_unpacked(64 * MIB);
    let e = CustomerRamdisk::from_image_with(dir.path(), &opts).unwrap_err();
    assert!(too_large(&e), "{e}");
    assert!(e.to_string().contains('b'), "{e}");

    // The running total spans layers: 40 MiB in each of two layers is 80 MiB.
    let dir = tempfile::tempdir().unwrap();
    let one = sparse_layer(&[("a", 40 * MIB)]);
    let two = sparse_layer(&[("b", 40 * MIB)]);
    oci_layout(
        dir.path(),
        &[(one.clone(), gzip(&one)), (two.clone(), gzip(&two))],
    );
    let e = CustomerRamdisk::from_image_with(dir.path(), &opts).unwrap_err();
    assert!(too_large(&e), "{e}");

    // With a cap that holds them, the sparse files unpack to their logical size (zeros).
    let ok = ImageOptions::default().max_unpacked(80 * MIB);
    let r = CustomerRamdisk::from_image_with(dir.path(), &ok).unwrap();
    let a = r.into_archive().unwrap();
    assert!(a.len() > 80 * MIB);
}

#[test]
fn the_default_cap_refuses_a_huge_sparse_member_up_front() {
    // 5 GiB of hole in a 1 KB layer: refused at once, nothing spooled (before the cap existed
    // this wrote 5 GiB of zeros to a temporary file).
    let dir = tempfile::tempdir().unwrap();
    let plain = sparse_layer(&[("huge", 5 << 30)]);
    oci_layout(dir.path(), &[(plain.clone(), gzip(&plain))]);
    let t = std::time::Instant::now();
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::ImageTooLarge { limit, .. } if limit == nitro_eif::DEFAULT_MAX_UNPACKED),
        "{e}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn data_after_the_tar_end_is_decompressed_under_the_cap() {
    // A small layer followed by 32 MiB of zeros after its end-of-archive blocks (it gzips to a
    // few tens of KB); the diff_id covers the whole stream, so only the cap can stop it.
    let dir = tempfile::tempdir().unwrap();
    let mut plain = file_layer(&[("app", b"#!/bin/sh\n")]);
    plain.resize(plain.len() + 32 * MIB as usize, 0);
    let stored = gzip(&plain);
    assert!(stored.len() < 256 * 1024);
    oci_layout(dir.path(), &[(plain.clone(), stored)]);
    let opts = ImageOptions::default().max_unpacked(8 * MIB);
    let e = CustomerRamdisk::from_image_with(dir.path(), &opts).unwrap_err();
    assert!(too_large(&e), "{e}");
    assert!(e.to_string().contains("layer"), "{e}");
    // Under a cap that holds the stream it loads.
    let opts = ImageOptions::default().max_unpacked(33 * MIB);
    CustomerRamdisk::from_image_with(dir.path(), &opts).unwrap();
}

#[test]
fn a_compressed_outer_archive_is_decompressed_under_the_cap() {
    // docker save | gzip, holding an uncompressed 16 MiB layer of zeros.
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 16 * MIB as usize];
    let layer = file_layer(&[("zeros", &zeros)]);
    write(dir.path(), "c.json", &config(&[sha256(&layer)]));
    write(dir.path(), "l/layer.tar", &layer);
    write(
        dir.path(),
        "manifest.json",
        &serde_json::to_vec(
            &json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l/layer.tar"]}]),
        )
        .unwrap(),
    );
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir.path()).unwrap();
    let archive = gzip(&b.into_inner().unwrap());
    let file = dir.path().join("image.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let opts = ImageOptions::default().max_unpacked(4 * MIB);
    let e = CustomerRamdisk::from_image_with(&file, &opts).unwrap_err();
    assert!(too_large(&e), "{e}");
    assert!(e.to_string().contains("archive"), "{e}");
    let opts = ImageOptions::default().max_unpacked(20 * MIB);
    CustomerRamdisk::from_image_with(&file, &opts).unwrap();
}

/// A `docker save` directory in `root` whose config and layer are found through `via`.
fn docker_dir(root: &Path, cfg_path: &str, layer_path: &str) {
    write(
        root,
        "manifest.json",
        &serde_json::to_vec(
            &json!([{"Config": cfg_path, "RepoTags": ["a:1"], "Layers": [layer_path]}]),
        )
        .unwrap(),
    );
}

#[test]
fn docker_save_directories_do_not_follow_links_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let layer = file_layer(&[("etc/shadow", b"root:secret:::")]);
    write(outside.path(), "backup.tar", &layer);
    write(outside.path(), "c.json", &config(&[sha256(&layer)]));

    // The layer through a directory symlink pointing outside.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.json", &config(&[sha256(&layer)]));
    std::os::unix::fs::symlink(outside.path(), dir.path().join("l")).unwrap();
    docker_dir(dir.path(), "c.json", "l/backup.tar");
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Image(ref m) if m.contains("outside the image directory")),
        "{e}"
    );

    // The layer itself a symlink to an absolute path outside.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.json", &config(&[sha256(&layer)]));
    std::fs::create_dir(dir.path().join("l")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("backup.tar"),
        dir.path().join("l/layer.tar"),
    )
    .unwrap();
    docker_dir(dir.path(), "c.json", "l/layer.tar");
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Image(ref m) if m.contains("outside the image directory")),
        "{e}"
    );

    // The config through a relative link that climbs out.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "l/layer.tar", &layer);
    let up = format!(
        "../{}/c.json",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    std::os::unix::fs::symlink(&up, dir.path().join("c.json")).unwrap();
    assert!(dir.path().join("c.json").exists(), "the link resolves");
    docker_dir(dir.path(), "c.json", "l/layer.tar");
    let e = CustomerRamdisk::from_image(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Image(ref m) if m.contains("outside the image directory")),
        "{e}"
    );

    // Links that stay inside (docker's duplicate layers) keep working.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.json", &config(&[sha256(&layer)]));
    write(dir.path(), "real/layer.tar", &layer);
    std::fs::create_dir(dir.path().join("l")).unwrap();
    std::os::unix::fs::symlink("../real/layer.tar", dir.path().join("l/layer.tar")).unwrap();
    docker_dir(dir.path(), "c.json", "l/layer.tar");
    CustomerRamdisk::from_image(dir.path()).unwrap();
}
