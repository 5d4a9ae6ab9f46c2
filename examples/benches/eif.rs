//! nitro-eif: building an EIF with a 256 MiB customer ramdisk, beside the physical floor (one
//! SHA-384 pass over the same bytes), and reading/verifying it back.
//!
//! ```sh
//! cargo bench --bench eif
//! ```
//!
//! The comparison with the format crate nitro-cli uses (`aws-nitro-enclaves-image-format`) is
//! in `tests/eif-interop/benches/builder.rs` (that crate may only be a dependency there).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA384};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nitro_eif::{BootstrapRamdisk, CustomerRamdisk, EifBuilder, EifReader};

const MIB: usize = 1 << 20;
const CUSTOMER: usize = 256 * MIB;

struct Inputs {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    bootstrap: PathBuf,
    customer: PathBuf,
    rootfs: PathBuf,
    out: PathBuf,
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn inputs() -> anyhow::Result<Inputs> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    // A 12 MiB stand-in bzImage (the Debian 6.12 kernel is about that size).
    let mut kernel = pseudo_random(12 * MIB, 1);
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(p("bzImage"), &kernel)?;
    std::fs::write(p("bootstrap.cpio"), pseudo_random(4 * MIB, 2))?;
    std::fs::write(p("customer.cpio"), pseudo_random(CUSTOMER, 3))?;
    // The same amount of data as a root file system: 64 files of 4 MiB.
    std::fs::create_dir_all(p("rootfs/data"))?;
    for i in 0..64 {
        std::fs::write(
            p(&format!("rootfs/data/blob{i:02}")),
            pseudo_random(4 * MIB, 10 + i),
        )?;
    }
    Ok(Inputs {
        kernel: p("bzImage"),
        bootstrap: p("bootstrap.cpio"),
        customer: p("customer.cpio"),
        rootfs: p("rootfs"),
        out: p("out.eif"),
        _dir: dir,
    })
}

/// The floor: read every input byte once and hash it once with SHA-384.
fn sha384_pass(paths: &[&Path]) -> anyhow::Result<Vec<u8>> {
    let mut ctx = Context::new(&SHA384);
    let mut buf = vec![0u8; MIB];
    for p in paths {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
    }
    Ok(ctx.finish().as_ref().to_vec())
}

/// A new output file. Not a truncated old one: ext4 flushes a file truncated and rewritten when
/// it is closed (`auto_da_alloc`), which would measure the disk instead of the builder.
fn fresh(path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    File::create(path)
}

fn build_from_files(i: &Inputs) -> anyhow::Result<()> {
    EifBuilder::new(&i.kernel, "console=ttyS0")
        .ramdisk_file(&i.bootstrap)
        .ramdisk_file(&i.customer)
        .build(&mut fresh(&i.out)?)?;
    Ok(())
}

fn build_from_rootfs(i: &Inputs) -> anyhow::Result<()> {
    EifBuilder::new(&i.kernel, "console=ttyS0")
        .ramdisk(BootstrapRamdisk::new(&i.bootstrap))
        .ramdisk(CustomerRamdisk::from_dir(&i.rootfs)?.cmd(["/data/app"]))
        .build(&mut fresh(&i.out)?)?;
    Ok(())
}

fn bench(c: &mut Criterion) {
    let i = match inputs() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cannot prepare the inputs: {e}");
            return;
        }
    };
    let total = (12 + 4) * MIB + CUSTOMER;
    let mut g = c.benchmark_group("eif_256MiB_customer_ramdisk");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(total as u64));
    g.bench_function("floor: one SHA-384 pass over the inputs", |b| {
        b.iter(|| sha384_pass(&[&i.kernel, &i.bootstrap, &i.customer]))
    });
    g.bench_function("nitro-eif build, ready ramdisk files", |b| {
        b.iter(|| build_from_files(&i))
    });
    g.bench_function(
        "nitro-eif build, customer ramdisk from a rootfs directory",
        |b| b.iter(|| build_from_rootfs(&i)),
    );
    if build_from_files(&i).is_ok() {
        g.bench_function("nitro-eif read + verify", |b| {
            b.iter(|| -> anyhow::Result<()> {
                EifReader::open(&i.out)?.verify()?;
                Ok(())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
