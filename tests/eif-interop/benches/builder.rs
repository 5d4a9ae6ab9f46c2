//! nitro-eif's builder against the builder of `aws-nitro-enclaves-image-format` (what nitro-cli
//! and eif_build use) on the same inputs: a 12 MiB kernel, a 4 MiB bootstrap ramdisk and a
//! 256 MiB customer ramdisk; with one SHA-384 pass over the same bytes as the floor.
//!
//! ```sh
//! cargo bench -p nitro-eif-interop --bench builder
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA384};
use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::EifBuilder as AwsBuilder;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nitro_eif::EifBuilder;
use sha2::Digest as _;

const MIB: usize = 1 << 20;

struct Inputs {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    bootstrap: PathBuf,
    customer: PathBuf,
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

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let mut kernel = pseudo_random(12 * MIB, 1);
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(p("bzImage"), &kernel).unwrap();
    std::fs::write(p("bootstrap.cpio"), pseudo_random(4 * MIB, 2)).unwrap();
    std::fs::write(p("customer.cpio"), pseudo_random(256 * MIB, 3)).unwrap();
    Inputs {
        kernel: p("bzImage"),
        bootstrap: p("bootstrap.cpio"),
        customer: p("customer.cpio"),
        out: p("out.eif"),
        _dir: dir,
    }
}

fn sha384_pass(paths: &[&Path]) -> Vec<u8> {
    let mut ctx = Context::new(&SHA384);
    let mut buf = vec![0u8; MIB];
    for p in paths {
        let mut f = File::open(p).unwrap();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// A new output file. Not a truncated old one: ext4 flushes a file truncated and rewritten when
/// it is closed (`auto_da_alloc`), which would measure the disk instead of the builders.
fn fresh(path: &Path) -> File {
    let _ = std::fs::remove_file(path);
    File::create(path).unwrap()
}

fn identity() -> EifIdentityInfo {
    EifIdentityInfo {
        img_name: "bench".into(),
        img_version: "1.0".into(),
        build_info: EifBuildInfo {
            build_time: "1970-01-01T00:00:00+00:00".into(),
            build_tool: "bench".into(),
            build_tool_version: "0".into(),
            img_os: "Unknown".into(),
            img_kernel: "Unknown".into(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::Value::Null,
    }
}

fn bench(c: &mut Criterion) {
    let i = inputs();
    let mut g = c.benchmark_group("eif_builders_256MiB_customer_ramdisk");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes((272 * MIB) as u64));
    g.bench_function("floor: one SHA-384 pass over the inputs", |b| {
        b.iter(|| sha384_pass(&[&i.kernel, &i.bootstrap, &i.customer]))
    });
    g.bench_function("nitro-eif EifBuilder", |b| {
        b.iter(|| {
            EifBuilder::new(&i.kernel, "console=ttyS0")
                .ramdisk_file(&i.bootstrap)
                .ramdisk_file(&i.customer)
                .build(&mut fresh(&i.out))
                .unwrap()
        })
    });
    g.bench_function("aws-nitro-enclaves-image-format 0.8.1 EifBuilder", |b| {
        b.iter(|| {
            let mut builder = AwsBuilder::new(
                &i.kernel,
                "console=ttyS0".into(),
                None,
                sha2::Sha384::new(),
                0,
                identity(),
            );
            builder.add_ramdisk(&i.bootstrap);
            builder.add_ramdisk(&i.customer);
            builder.write_to(&mut fresh(&i.out))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
