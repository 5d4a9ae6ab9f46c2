//! Kernel attach: a sealed device as /dev/nbdN with ext4 on it. Needs the `nbd` kernel
//! driver and root; skipped (with a message) where the kernel has no NBD driver, as on
//! hosts whose kernel lacks CONFIG_BLK_DEV_NBD. The emulated enclave runs it too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::path::Path;
use std::process::Command;

use nitro_fs::sealed::{MemoryAnchor, SealedConfig, SealedDevice, StaticKeyWrap};
use nitro_fs::{MemDevice, kernel};

fn nbd_device() -> Option<&'static str> {
    let dev = "/dev/nbd0";
    if !Path::new(dev).exists() {
        // Try loading the module; ignore failures (no modprobe, no module, not root).
        let _ = Command::new("modprobe").arg("nbd").status();
    }
    if Path::new(dev).exists() && Path::new("/sys/block/nbd0").exists() {
        Some(dev)
    } else {
        eprintln!("SKIPPED: no NBD driver in this kernel (/dev/nbd0 missing; CONFIG_BLK_DEV_NBD)");
        None
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_on_a_sealed_kernel_device() {
    let Some(dev) = nbd_device() else { return };
    let raw = MemDevice::new(SealedDevice::<MemDevice>::raw_size_for(64 << 20) as usize);
    let key = StaticKeyWrap::new(&[5; 32]).unwrap();
    let anchor = MemoryAnchor::new();
    let cfg = SealedConfig::default().with_anchor(anchor.clone());
    let sealed = SealedDevice::create(raw.clone(), &key, cfg.clone())
        .await
        .unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mnt_s = mnt.path().to_str().unwrap().to_owned();

    let attached = kernel::attach(dev, sealed, kernel::AttachOptions::default())
        .await
        .unwrap();
    let d = dev.to_owned();
    let m = mnt_s.clone();
    tokio::task::spawn_blocking(move || {
        sh("mkfs.ext4", &["-q", "-F", &d]);
        sh("mount", &[&d, &m]);
        std::fs::write(Path::new(&m).join("hello.txt"), b"sealed and mounted").unwrap();
        sh("umount", &[&m]);
    })
    .await
    .unwrap();
    attached.detach().await.unwrap();
    assert!(!raw.snapshot().windows(6).any(|w| w == b"sealed"));

    // Reopen the sealed device and mount again: the file is there.
    let sealed = SealedDevice::open(raw, &key, cfg).await.unwrap();
    let attached = kernel::attach(dev, sealed, kernel::AttachOptions::default())
        .await
        .unwrap();
    let d = dev.to_owned();
    let content = tokio::task::spawn_blocking(move || {
        sh("mount", &[&d, &mnt_s]);
        let c = std::fs::read(Path::new(&mnt_s).join("hello.txt")).unwrap();
        sh("umount", &[&mnt_s]);
        c
    })
    .await
    .unwrap();
    attached.detach().await.unwrap();
    assert_eq!(content, b"sealed and mounted");
}
