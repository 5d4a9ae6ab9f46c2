//! Quickstart step 2: build a small EIF without Docker, print its PCRs, rebuild it, and show
//! that the two builds are byte-identical (nitro-eif).

use std::path::Path;
use std::time::Instant;

use anyhow::ensure;
use nitro_eif::{
    Arch, BootstrapRamdisk, BuildOutput, CustomerRamdisk, EifBuilder, EifReader, Source,
};

use crate::Context;

/// A generated application root file system: what `docker export` would give for a tiny image.
fn make_rootfs(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("app"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(
        root.join("app/server"),
        b"#!/bin/sh\necho hello from the enclave\n",
    )?;
    std::fs::write(root.join("etc/app.toml"), b"listen = \"vsock:5000\"\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        root.join("app/server"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    Ok(())
}

/// Builds the image from the same inputs every time.
fn build(kernel: &Path, rootfs: &Path, out: &Path) -> anyhow::Result<BuildOutput> {
    Ok(
        EifBuilder::with_kernel(Source::file(kernel), "console=ttyS0 reboot=k panic=30")
            // A real bzImage is recognised; the stand-in needs the architecture spelled out.
            .arch(Arch::X86_64)
            .ramdisk(
                BootstrapRamdisk::from_bytes(b"stand-in init".to_vec())
                    .module_bytes("nsm.ko", b"stand-in NSM driver".to_vec()),
            )
            .ramdisk(
                CustomerRamdisk::from_dir(rootfs)?
                    .cmd(["/app/server", "--config", "/etc/app.toml"])
                    .env("RUST_LOG", "info"),
            )
            .name("quickstart")
            .version("1.0")
            .build_file(out)?,
    )
}

pub(crate) async fn run(ctx: &mut Context) -> anyhow::Result<()> {
    let dir = ctx.dir.path().join("eif");
    let rootfs = dir.join("rootfs");
    make_rootfs(&rootfs)?;
    // A stand-in for the kernel: 2 MiB of deterministic bytes.
    let kernel = dir.join("vmlinuz");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&kernel, bytes)?;

    let (a, b) = (dir.join("first.eif"), dir.join("second.eif"));
    let (k, r, out) = (kernel.clone(), rootfs.clone(), a.clone());
    let t0 = Instant::now();
    let first = tokio::task::spawn_blocking(move || build(&k, &r, &out)).await??;
    println!(
        "    built {} ({} bytes, {} sections) in {} ms from a stand-in kernel, init + nsm.ko, and rootfs/ + cmd + env",
        a.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        first.size,
        first.sections.len(),
        t0.elapsed().as_millis()
    );
    let m = first.measurements;
    ctx.image_pcr0 = m.pcr0.0;
    println!("    PCR0 {}  (whole image)", m.pcr0);
    println!("    PCR1 {}  (kernel, cmdline, bootstrap ramdisk)", m.pcr1);
    println!("    PCR2 {}  (application ramdisk)", m.pcr2);

    let (k, r, out) = (kernel, rootfs, b.clone());
    let second = tokio::task::spawn_blocking(move || build(&k, &r, &out)).await??;
    let (x, y) = (std::fs::read(&a)?, std::fs::read(&b)?);
    ensure!(x == y && second.measurements == m, "the rebuild differs");
    let verified = EifReader::open(&b)?.verify()?;
    ensure!(verified == m, "reading the image back gives other PCRs");
    println!(
        "    rebuilt: byte-identical ({} bytes, CRC {:#010x}); read back and verified: same PCRs",
        y.len(),
        second.crc32()
    );
    Ok(())
}
