//! NBD storage: 4 KiB random read/write and 1 MiB sequential read/write through the nitro-fs
//! client, against the nitro-fs server unsealed and sealed, and against qemu-nbd (the
//! baseline, measured in the same run when it is installed). Each iteration is a batch of
//! requests in flight (64 of 4 KiB, 8 of 1 MiB), so criterion's throughput is IOPS or MB/s.
//!
//! ```sh
//! cargo bench --bench nbd
//! ```
//!
//! `cargo run --release --example nbd -- bench` adds the comparison with `qemu-img bench` as the
//! client, which is what the crate README reports.

#![allow(missing_docs)] // criterion macros generate undocumented items
#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up failures abort the benchmark

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::try_join_all;
use nitro_fs::sealed::{SealedConfig, SealedDevice, StaticKeyWrap};
use nitro_fs::{BlockDevice, ClientConfig, Export, FileDevice, NbdClient, Server};

const SIZE: u64 = 256 << 20;

struct Qemu(Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn client(sock: &Path, export: &str) -> NbdClient {
    let sock = sock.to_owned();
    NbdClient::connect(
        move || tokio::net::UnixStream::connect(sock.clone()),
        ClientConfig::new(export),
    )
    .await
    .expect("connect")
}

async fn fill<D: BlockDevice>(dev: &D, len: u64) {
    let chunk = vec![0x3cu8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        dev.write_at(off, &chunk[..n]).await.expect("fill");
        off += n as u64;
    }
    dev.flush().await.expect("flush");
}

/// One batch: `depth` requests of `size` bytes in flight, random or sequential.
async fn batch<D: BlockDevice>(
    dev: &D,
    write: bool,
    size: usize,
    depth: usize,
    cursor: &mut u64,
    region: u64,
) {
    let slots = region / size as u64;
    let offsets: Vec<u64> = (0..depth)
        .map(|_| {
            *cursor = if size == 4096 {
                // xorshift: random 4 KiB slots
                let mut x = *cursor | 1;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            } else {
                cursor.wrapping_add(1)
            };
            (*cursor % slots) * size as u64
        })
        .collect();
    let futs = offsets.into_iter().map(|off| async move {
        let mut buf = vec![0x5au8; size];
        if write {
            dev.write_at(off, &buf).await
        } else {
            dev.read_at(off, &mut buf).await
        }
    });
    try_join_all(futs).await.expect("I/O");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_img = dir.path().join("plain.img");
    let sealed_img = dir.path().join("sealed.img");
    let sock = dir.path().join("nitro.sock");
    let raw = SealedDevice::<NbdClient>::raw_size_for(SIZE);

    let (plain, sealed, qemu_client, _qemu) = rt.block_on(async {
        let server = Server::new(vec![
            Export::new("plain", FileDevice::create(&plain_img, SIZE).expect("file")),
            Export::new(
                "sealed",
                FileDevice::create(&sealed_img, raw).expect("file"),
            ),
        ])
        .expect("server");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(s).await });
            }
        });
        let plain = client(&sock, "plain").await;
        fill(&plain, SIZE).await;
        let key = StaticKeyWrap::new(&[9; 32]).expect("key");
        let sealed =
            SealedDevice::create(client(&sock, "sealed").await, &key, SealedConfig::default())
                .await
                .expect("seal");
        // Twice, so that both slots of every block hold flushed data (see below).
        fill(&sealed, SIZE).await;
        fill(&sealed, SIZE).await;

        // Baseline server: qemu-nbd on the same kind of file, if installed.
        let mut qemu = None;
        let mut qemu_client = None;
        if let Some(qemu_nbd) = which("qemu-nbd") {
            let img = dir.path().join("qemu.img");
            std::fs::copy(&plain_img, &img).expect("copy");
            // Every file is flushed once filled: overwriting pages that were written back is
            // several times slower on ext4 than rewriting dirty ones, so all must start alike.
            std::fs::File::open(&img)
                .and_then(|f| f.sync_all())
                .expect("sync");
            let qsock = dir.path().join("qemu.sock");
            let child = Command::new(qemu_nbd)
                .args(["-f", "raw", "-t", "-x", "plain", "-k"])
                .arg(&qsock)
                .arg(&img)
                .stdin(Stdio::null())
                .spawn()
                .expect("qemu-nbd");
            qemu = Some(Qemu(child));
            for _ in 0..500 {
                if qsock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            qemu_client = Some(client(&qsock, "plain").await);
        } else {
            eprintln!("qemu-nbd not found: no baseline");
        }
        (plain, sealed, qemu_client, qemu)
    });

    for (name, write, size, depth) in [
        ("4k-random-write", true, 4096usize, 64usize),
        ("4k-random-read", false, 4096, 64),
        ("1m-seq-write", true, 1 << 20, 8),
        ("1m-seq-read", false, 1 << 20, 8),
    ] {
        let mut g = c.benchmark_group(format!("nbd/{name}"));
        if size == 4096 {
            g.throughput(Throughput::Elements(depth as u64));
        } else {
            g.throughput(Throughput::Bytes((size * depth) as u64));
        }
        let mut cursor = 0x9e37_79b9u64;
        if let Some(q) = &qemu_client {
            g.bench_function(BenchmarkId::new("qemu-nbd server (baseline)", ""), |b| {
                b.iter(|| rt.block_on(batch(q, write, size, depth, &mut cursor, SIZE)))
            });
        }
        g.bench_function(BenchmarkId::new("nitro-fs server", ""), |b| {
            b.iter(|| rt.block_on(batch(&plain, write, size, depth, &mut cursor, SIZE)))
        });
        g.bench_function(BenchmarkId::new("nitro-fs server, sealed", ""), |b| {
            b.iter(|| rt.block_on(batch(&sealed, write, size, depth, &mut cursor, SIZE)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
