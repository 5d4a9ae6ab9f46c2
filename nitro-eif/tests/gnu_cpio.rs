//! GNU cpio as a real peer: our newc archives list and extract identically with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nitro_eif::{BootstrapRamdisk, CpioArchive, CustomerRamdisk};

fn gnu_cpio() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("cpio"))
            .find(|c| c.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "GNU cpio is required in CI (scripts/install.sh installs it)"
        );
        eprintln!("skipped: GNU cpio not found on PATH");
    }
    found
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc/ssl")).unwrap();
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(dir.join("usr/bin/app"), vec![0xab; 70_001]).unwrap();
    std::fs::set_permissions(
        dir.join("usr/bin/app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("etc/ssl/key"), b"secret").unwrap();
    std::fs::set_permissions(
        dir.join("etc/ssl/key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(dir.join("z"), b"").unwrap();
    std::fs::write(dir.join("name with spaces & ünïcode"), b"x").unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("/nonexistent/target", dir.join("dangling")).unwrap();
    std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    nix_mkfifo(&dir.join("fifo"));
}

fn nix_mkfifo(p: &Path) {
    let ok = Command::new("mkfifo")
        .arg(p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mkfifo failed");
}

fn run_cpio(cpio: &Path, args: &[&str], dir: &Path, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cpio)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn archive_bytes(a: &CpioArchive) -> Vec<u8> {
    let mut v = Vec::new();
    a.write_to(&mut v).unwrap();
    assert_eq!(v.len() as u64, a.len());
    v
}

#[test]
fn gnu_cpio_lists_and_extracts_our_archives() {
    let Some(cpio) = gnu_cpio() else { return };
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let mut a = CpioArchive::new();
    a.add_tree("", src.path()).unwrap();
    a.file("generated/config.json", 0o640, b"{}".to_vec())
        .unwrap();
    if is_root() {
        a.device("dev/null", false, 0o666, 1, 3).unwrap();
        a.device("dev/loop0", true, 0o660, 7, 0).unwrap();
    }
    let bytes = archive_bytes(&a);

    // Listing: same names, same order.
    let listed = run_cpio(&cpio, &["-t", "--quiet"], src.path(), &bytes);
    let listed: Vec<String> = String::from_utf8(listed)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = a
        .paths()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert_eq!(listed, ours);

    // Verbose listing: owner 0, group 0, mtime 1970.
    let verbose = run_cpio(
        &cpio,
        &["-tv", "--quiet", "--numeric-uid-gid"],
        src.path(),
        &bytes,
    );
    for line in String::from_utf8(verbose).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("0", "0"), "{line}");
        assert!(line.contains("1970"), "{line}");
    }

    // Extraction: identical tree.
    let dst = tempfile::tempdir().unwrap();
    run_cpio(
        &cpio,
        &["-idm", "--quiet", "--no-absolute-filenames"],
        dst.path(),
        &bytes,
    );
    compare_trees(src.path(), dst.path());
    assert_eq!(
        std::fs::read(dst.path().join("generated/config.json")).unwrap(),
        b"{}"
    );
    let m = std::fs::symlink_metadata(dst.path().join("generated/config.json")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    if is_root() {
        let m = std::fs::symlink_metadata(dst.path().join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0x103);
        assert!(
            std::fs::symlink_metadata(dst.path().join("dev/loop0"))
                .unwrap()
                .file_type()
                .is_block_device()
        );
    }
}

fn compare_trees(a: &Path, b: &Path) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(a.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ma = std::fs::symlink_metadata(a.join(&r)).unwrap();
            let mb = std::fs::symlink_metadata(b.join(&r))
                .unwrap_or_else(|_| panic!("{} missing", r.display()));
            assert_eq!(ma.file_type(), mb.file_type(), "{}", r.display());
            if !ma.file_type().is_symlink() {
                assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{}", r.display());
            }
            if ma.is_file() {
                assert_eq!(
                    std::fs::read(a.join(&r)).unwrap(),
                    std::fs::read(b.join(&r)).unwrap(),
                    "{}",
                    r.display()
                );
            } else if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(a.join(&r)).unwrap(),
                    std::fs::read_link(b.join(&r)).unwrap()
                );
            } else if ma.is_dir() {
                stack.push(r);
            } else {
                assert!(mb.file_type().is_fifo());
            }
        }
    }
}

#[test]
fn gnu_cpio_reads_the_two_ramdisks() {
    let Some(cpio) = gnu_cpio() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let boot = BootstrapRamdisk::from_bytes(b"init-binary".to_vec())
        .module_bytes("virtio_mmio.ko", b"m1".to_vec())
        .module_bytes("nsm.ko", b"m2".to_vec())
        .into_archive()
        .unwrap();
    let bytes = archive_bytes(&boot);
    let d = tmp.path().join("boot");
    std::fs::create_dir(&d).unwrap();
    run_cpio(&cpio, &["-idm", "--quiet"], &d, &bytes);
    assert_eq!(std::fs::read(d.join("init")).unwrap(), b"init-binary");
    assert_eq!(
        std::fs::metadata(d.join("init")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_to_string(d.join("modules_load_order")).unwrap(),
        "virtio_mmio.ko\nnsm.ko\n"
    );
    assert!(d.join("dev").is_dir());

    let root = tmp.path().join("rootfs-src");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/server"), b"ELF").unwrap();
    let customer = CustomerRamdisk::from_dir(&root)
        .unwrap()
        .cmd(["/app/server", "--port", "8000"])
        .env("PATH", "/app")
        .into_archive()
        .unwrap();
    let bytes = archive_bytes(&customer);
    let d = tmp.path().join("customer");
    std::fs::create_dir(&d).unwrap();
    run_cpio(&cpio, &["-idm", "--quiet"], &d, &bytes);
    assert_eq!(
        std::fs::read_to_string(d.join("cmd")).unwrap(),
        "/app/server\n--port\n8000\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("env")).unwrap(),
        "PATH=/app\n"
    );
    assert_eq!(std::fs::read(d.join("rootfs/app/server")).unwrap(), b"ELF");
    for sub in ["dev", "proc", "run", "sys", "tmp", "var"] {
        assert!(d.join("rootfs").join(sub).is_dir(), "{sub}");
    }
}
