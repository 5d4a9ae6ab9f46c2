//! Sealed device: behaviour, tamper detection, and crash consistency against a model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use nitro_fs::sealed::{MemoryAnchor, SealedConfig, SealedDevice, StaticKeyWrap};
use nitro_fs::{BlockDevice, Error, IntegrityError, MemDevice};
use proptest::prelude::*;

const B: usize = 4096;

fn key() -> StaticKeyWrap {
    StaticKeyWrap::new(&[0x42; 32]).unwrap()
}

fn config(anchor: &MemoryAnchor) -> SealedConfig {
    SealedConfig::default().with_anchor(anchor.clone())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn fresh(blocks: usize) -> (MemDevice, MemoryAnchor, SealedDevice<MemDevice>) {
    let raw = MemDevice::new(SealedDevice::<MemDevice>::raw_size_for((blocks * B) as u64) as usize);
    let anchor = MemoryAnchor::new();
    let dev = SealedDevice::create(raw.clone(), &key(), config(&anchor))
        .await
        .unwrap();
    assert_eq!(dev.size(), (blocks * B) as u64);
    (raw, anchor, dev)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 249) as u8))
        .collect()
}

#[tokio::test]
async fn reads_back_across_reopen_and_unaligned_io() {
    let (raw, anchor, dev) = fresh(300).await;
    let big = pattern(1, 200 * B + 123);
    dev.write_at(B as u64 * 3 + 7, &big).await.unwrap();
    dev.write_at(10, b"hello").await.unwrap();
    let mut b = vec![0u8; big.len()];
    dev.read_at(B as u64 * 3 + 7, &mut b).await.unwrap();
    assert_eq!(b, big);
    dev.flush().await.unwrap();
    let generation = dev.generation();
    drop(dev);

    let dev = SealedDevice::open(raw.clone(), &key(), config(&anchor))
        .await
        .unwrap();
    assert_eq!(dev.generation(), generation);
    let mut b = vec![0u8; big.len()];
    dev.read_at(B as u64 * 3 + 7, &mut b).await.unwrap();
    assert_eq!(b, big);
    let mut h = [0u8; 5];
    dev.read_at(10, &mut h).await.unwrap();
    assert_eq!(&h, b"hello");
    // Unwritten space reads as zeroes; trimmed space too.
    let mut z = vec![1u8; B];
    dev.read_at(299 * B as u64, &mut z).await.unwrap();
    assert!(z.iter().all(|&x| x == 0));
    dev.trim(4 * B as u64, 2 * B as u64 + 100).await.unwrap();
    let mut z = vec![1u8; 2 * B + 100];
    dev.read_at(4 * B as u64, &mut z).await.unwrap();
    assert!(z.iter().all(|&x| x == 0));
    let report = dev.check().await.unwrap();
    assert!(report.failures.is_empty());
    assert!(report.blocks_in_use > 190);
    // Out of range and plaintext-free storage.
    assert!(matches!(
        dev.read_at(300 * B as u64, &mut h).await,
        Err(Error::OutOfRange { .. })
    ));
    let image = raw.snapshot();
    assert!(!image.windows(5).any(|w| w == b"hello"));
}

#[tokio::test]
async fn wrong_key_and_foreign_data_are_refused() {
    let (raw, anchor, dev) = fresh(8).await;
    dev.write_at(0, &[1; B]).await.unwrap();
    dev.flush().await.unwrap();
    drop(dev);
    let other = StaticKeyWrap::new(&[0x43; 32]).unwrap();
    assert!(matches!(
        SealedDevice::open(raw, &other, config(&anchor)).await,
        Err(Error::KeyWrap { .. })
    ));
    assert!(matches!(
        SealedDevice::open(MemDevice::new(1 << 20), &key(), config(&anchor)).await,
        Err(Error::NotSealed(_))
    ));
}

async fn tamper_setup() -> (MemDevice, MemoryAnchor, SealedDevice<MemDevice>) {
    let (raw, anchor, dev) = fresh(256).await;
    for i in 0..256u64 {
        dev.write_at(i * B as u64, &pattern(i as u8, B))
            .await
            .unwrap();
    }
    dev.flush().await.unwrap();
    (raw, anchor, dev)
}

fn slot_of(raw: &MemDevice, offs: [u64; 2]) -> usize {
    // The slot holding data is the non-zero one (fresh device, written once).
    let img = raw.snapshot();
    usize::from(
        img[offs[0] as usize..offs[0] as usize + B]
            .iter()
            .all(|&b| b == 0),
    )
}

async fn read_block(dev: &SealedDevice<MemDevice>, i: u64) -> nitro_fs::Result<Vec<u8>> {
    let mut b = vec![0u8; B];
    dev.read_at(i * B as u64, &mut b).await.map(|()| b)
}

#[tokio::test]
async fn bit_flip_in_a_block_is_detected_and_named() {
    let (raw, anchor, dev) = tamper_setup().await;
    let (data, _) = dev.physical_offsets(77);
    let s = slot_of(&raw, data);
    raw.with_bytes(|b| b[data[s] as usize + 1000] ^= 0x10);
    // Detected both through the live device and after reopening.
    assert!(matches!(
        read_block(&dev, 77).await,
        Err(Error::Integrity(IntegrityError::Block { index: 77 }))
    ));
    drop(dev);
    let dev = SealedDevice::open(raw, &key(), config(&anchor))
        .await
        .unwrap();
    let err = read_block(&dev, 77).await.unwrap_err();
    assert!(err.to_string().contains("block 77"), "{err}");
    assert_eq!(read_block(&dev, 76).await.unwrap(), pattern(76, B));
    let report = dev.check().await.unwrap();
    assert_eq!(report.failures, vec![IntegrityError::Block { index: 77 }]);
}

#[tokio::test]
async fn swapped_blocks_are_detected() {
    let (raw, anchor, dev) = tamper_setup().await;
    drop(dev);
    let probe = SealedDevice::open(raw.clone(), &key(), config(&anchor))
        .await
        .unwrap();
    let (a, _) = probe.physical_offsets(10);
    let (b, _) = probe.physical_offsets(11);
    let (sa, sb) = (slot_of(&raw, a), slot_of(&raw, b));
    raw.with_bytes(|img| {
        let (x, y) = (a[sa] as usize, b[sb] as usize);
        let tmp = img[x..x + B].to_vec();
        img.copy_within(y..y + B, x);
        img[y..y + B].copy_from_slice(&tmp);
    });
    drop(probe);
    let dev = SealedDevice::open(raw, &key(), config(&anchor))
        .await
        .unwrap();
    assert!(matches!(
        read_block(&dev, 10).await,
        Err(Error::Integrity(IntegrityError::Block { index: 10 }))
    ));
    assert!(matches!(
        read_block(&dev, 11).await,
        Err(Error::Integrity(IntegrityError::Block { index: 11 }))
    ));
}

#[tokio::test]
async fn rolling_back_one_block_and_its_metadata_is_detected() {
    let (raw, anchor, dev) = tamper_setup().await;
    let old_image = raw.snapshot();
    // Overwrite block 5 twice (so both slots move on), committing each time.
    dev.write_at(5 * B as u64, &pattern(200, B)).await.unwrap();
    dev.flush().await.unwrap();
    dev.write_at(5 * B as u64, &pattern(201, B)).await.unwrap();
    dev.flush().await.unwrap();
    let (data, meta) = dev.physical_offsets(5);
    drop(dev);
    // The parent restores block 5's data slots and its metadata page from the old image.
    raw.with_bytes(|img| {
        for off in data.into_iter().chain(meta) {
            let o = off as usize;
            img[o..o + B].copy_from_slice(&old_image[o..o + B]);
        }
    });
    let dev = SealedDevice::open(raw, &key(), config(&anchor))
        .await
        .unwrap();
    let err = read_block(&dev, 5).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Integrity(IntegrityError::Metadata {
                level: 0,
                first_block: 0,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("blocks 0..=101"), "{err}");
}

#[tokio::test]
async fn whole_image_rollback_is_detected_by_a_newer_anchor() {
    let (raw, anchor, dev) = tamper_setup().await;
    let old_image = raw.snapshot();
    dev.write_at(0, &pattern(99, B)).await.unwrap();
    dev.flush().await.unwrap();
    let newer = dev.generation();
    drop(dev);
    raw.restore(&old_image).unwrap();
    match SealedDevice::open(raw.clone(), &key(), config(&anchor)).await {
        Err(Error::Rollback {
            anchor_generation,
            device_generation,
        }) => {
            assert_eq!(anchor_generation, newer);
            assert_eq!(device_generation, newer - 1);
        }
        other => panic!("expected Rollback, got {other:?}"),
    }
    // Without the anchor's knowledge (a new enclave with an empty in-memory anchor) the old
    // image opens: that is what the anchor is for.
    let fresh_anchor = MemoryAnchor::new();
    let dev = SealedDevice::open(raw, &key(), config(&fresh_anchor))
        .await
        .unwrap();
    assert_eq!(read_block(&dev, 0).await.unwrap(), pattern(0, B));
}

#[tokio::test]
async fn forked_state_and_tampered_headers_are_detected() {
    let (raw, anchor, dev) = tamper_setup().await;
    let base = raw.snapshot();
    dev.write_at(0, &pattern(1, B)).await.unwrap();
    dev.flush().await.unwrap();
    drop(dev);
    // A second enclave (own anchor) forks from the same base image to the same generation.
    let fork_raw = MemDevice::from_vec(base);
    let fork_anchor = MemoryAnchor::new();
    let fork = SealedDevice::open(fork_raw.clone(), &key(), config(&fork_anchor))
        .await
        .unwrap();
    fork.write_at(0, &pattern(2, B)).await.unwrap();
    fork.flush().await.unwrap();
    drop(fork);
    assert!(matches!(
        SealedDevice::open(fork_raw, &key(), config(&anchor)).await,
        Err(Error::Integrity(IntegrityError::Fork { .. }))
    ));
    // Both header copies altered: refused.
    raw.with_bytes(|img| {
        img[60] ^= 1;
        img[B + 60] ^= 1;
    });
    assert!(matches!(
        SealedDevice::open(raw, &key(), config(&anchor)).await,
        Err(Error::Integrity(IntegrityError::Header(_)))
    ));
}

#[tokio::test]
async fn concurrent_io_on_shared_blocks() {
    let (_raw, _anchor, dev) = fresh(64).await;
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20u8 {
                let off = ((t as u64 * 7 + round as u64) % 60) * B as u64 + 100;
                let data = vec![t ^ round; 2 * B];
                dev.write_at(off, &data).await.unwrap();
                let mut back = vec![0u8; 2 * B];
                // Another task may overwrite in between; any read must authenticate.
                dev.read_at(off, &mut back).await.unwrap();
                if round % 5 == 0 {
                    dev.flush().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    dev.flush().await.unwrap();
    assert!(dev.check().await.unwrap().failures.is_empty());
}

// ---------------------------------------------------------------------------------------
// Crash consistency against a model.

/// A disk with a volatile write cache: writes since the last flush may or may not survive
/// a crash, independently, and may be torn at 512-byte sectors. It can also start failing
/// every operation after a countdown, like a server that dies mid-request.
#[derive(Clone)]
struct CrashDisk(Arc<Mutex<CrashState>>);

struct CrashState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<(usize, Vec<u8>)>,
    fail_after: Option<usize>,
}

impl CrashDisk {
    fn new(size: usize) -> Self {
        Self(Arc::new(Mutex::new(CrashState {
            durable: vec![0; size],
            current: vec![0; size],
            pending: Vec::new(),
            fail_after: None,
        })))
    }

    fn tick(&self) -> nitro_fs::Result<std::sync::MutexGuard<'_, CrashState>> {
        let mut g = self.0.lock().unwrap();
        if let Some(n) = g.fail_after.as_mut() {
            if *n == 0 {
                return Err(Error::Io {
                    context: "serving a request".into(),
                    source: std::io::Error::other("server died"),
                });
            }
            *n -= 1;
        }
        Ok(g)
    }

    fn fail_after(&self, n: usize) {
        self.0.lock().unwrap().fail_after = Some(n);
    }

    /// Crashes: keeps a random subset of the unflushed writes, some of them torn.
    fn crash(&self, mut rng: u64) {
        let mut g = self.0.lock().unwrap();
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let pending = std::mem::take(&mut g.pending);
        for (off, data) in pending {
            match next() % 3 {
                0 => {}
                1 => g.durable[off..off + data.len()].copy_from_slice(&data),
                _ => {
                    for (i, sector) in data.chunks(512).enumerate() {
                        if next() % 2 == 0 {
                            let o = off + i * 512;
                            g.durable[o..o + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
        }
        g.current = g.durable.clone();
        g.fail_after = None;
    }
}

impl BlockDevice for CrashDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().current.len() as u64
    }
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> nitro_fs::Result<()> {
        let g = self.tick()?;
        let o = offset as usize;
        buf.copy_from_slice(&g.current[o..o + buf.len()]);
        Ok(())
    }
    async fn write_at(&self, offset: u64, data: &[u8]) -> nitro_fs::Result<()> {
        let mut g = self.tick()?;
        let o = offset as usize;
        g.current[o..o + data.len()].copy_from_slice(data);
        g.pending.push((o, data.to_vec()));
        Ok(())
    }
    async fn flush(&self) -> nitro_fs::Result<()> {
        let mut g = self.tick()?;
        let pending = std::mem::take(&mut g.pending);
        for (o, d) in pending {
            g.durable[o..o + d.len()].copy_from_slice(&d);
        }
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u64) -> nitro_fs::Result<()> {
        let zero = vec![0u8; len as usize];
        self.write_at(offset, &zero).await
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        block: u64,
        skew: u16,
        len: u16,
        seed: u8,
    },
    Zero {
        block: u64,
        len: u16,
    },
    Read {
        block: u64,
        len: u16,
    },
    Flush,
    Crash {
        fail_after: Option<u8>,
        seed: u64,
    },
}

const BLOCKS: u64 = 40;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..BLOCKS, 0u16..4096, 1u16..12000, any::<u8>())
            .prop_map(|(block, skew, len, seed)| Op::Write { block, skew, len, seed }),
        1 => (0..BLOCKS, 1u16..12000).prop_map(|(block, len)| Op::Zero { block, len }),
        2 => (0..BLOCKS, 1u16..12000).prop_map(|(block, len)| Op::Read { block, len }),
        2 => Just(Op::Flush),
        1 => (proptest::option::of(0u8..30), any::<u64>())
            .prop_map(|(fail_after, seed)| Op::Crash { fail_after, seed: seed | 1 }),
    ]
}

/// The model: current content, plus per block every value it may hold after a crash
/// (its value at the last completed flush and everything written since).
struct Model {
    current: Vec<u8>,
    possible: Vec<HashSet<Vec<u8>>>,
}

impl Model {
    fn new() -> Self {
        Self {
            current: vec![0; BLOCKS as usize * B],
            possible: (0..BLOCKS).map(|_| HashSet::from([vec![0u8; B]])).collect(),
        }
    }
    fn block(&self, i: usize) -> Vec<u8> {
        self.current[i * B..(i + 1) * B].to_vec()
    }
    fn apply(&mut self, off: usize, data: &[u8]) {
        self.current[off..off + data.len()].copy_from_slice(data);
        for i in off / B..=(off + data.len() - 1) / B {
            let b = self.block(i);
            self.possible[i].insert(b);
        }
    }
    fn flushed(&mut self) {
        for i in 0..BLOCKS as usize {
            self.possible[i] = HashSet::from([self.block(i)]);
        }
    }
}

async fn run_ops(ops: Vec<Op>, dirty_limit: usize) {
    let raw_size = SealedDevice::<CrashDisk>::raw_size_for(BLOCKS * B as u64) as usize;
    let disk = CrashDisk::new(raw_size);
    let anchor = MemoryAnchor::new();
    let mut cfg = config(&anchor);
    cfg.dirty_limit = dirty_limit;
    cfg.cache_pages = 16;
    let mut dev = SealedDevice::create(disk.clone(), &key(), cfg.clone())
        .await
        .unwrap();
    let mut model = Model::new();
    let size = BLOCKS as usize * B;
    for op in ops {
        match op {
            Op::Write {
                block,
                skew,
                len,
                seed,
            } => {
                let off = (block as usize * B + skew as usize).min(size - 1);
                let len = (len as usize).min(size - off);
                let data = pattern(seed, len);
                dev.write_at(off as u64, &data).await.unwrap();
                model.apply(off, &data);
            }
            Op::Zero { block, len } => {
                let off = block as usize * B;
                let len = (len as usize).min(size - off);
                dev.write_zeroes(off as u64, len as u64, true)
                    .await
                    .unwrap();
                model.apply(off, &vec![0; len]);
            }
            Op::Read { block, len } => {
                let off = block as usize * B;
                let len = (len as usize).min(size - off);
                let mut b = vec![0u8; len];
                dev.read_at(off as u64, &mut b).await.unwrap();
                assert_eq!(b, model.current[off..off + len], "read at {off}+{len}");
            }
            Op::Flush => {
                dev.flush().await.unwrap();
                model.flushed();
            }
            Op::Crash { fail_after, seed } => {
                if let Some(n) = fail_after {
                    // The storage dies mid-way through a write and a flush.
                    disk.fail_after(n as usize);
                    let data = pattern(seed as u8, 3 * B);
                    if dev.write_at(B as u64 * 2, &data).await.is_ok() {
                        model.apply(2 * B, &data);
                    } else {
                        model.possible[2].insert(data[..B].to_vec());
                        model.possible[3].insert(data[B..2 * B].to_vec());
                        model.possible[4].insert(data[2 * B..].to_vec());
                    }
                    if dev.flush().await.is_ok() {
                        model.flushed();
                    }
                }
                drop(dev);
                disk.crash(seed);
                dev = SealedDevice::open(disk.clone(), &key(), cfg.clone())
                    .await
                    .expect("reopen after a crash");
                for i in 0..BLOCKS as usize {
                    let mut b = vec![0u8; B];
                    dev.read_at((i * B) as u64, &mut b)
                        .await
                        .expect("read after a crash");
                    assert!(
                        model.possible[i].contains(&b),
                        "block {i} holds a value that was never written or was lost"
                    );
                    model.current[i * B..(i + 1) * B].copy_from_slice(&b);
                }
                model.flushed();
            }
        }
    }
    assert!(dev.check().await.unwrap().failures.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn sealed_device_matches_the_model_across_crashes(
        ops in proptest::collection::vec(op(), 1..60),
        small_commits in any::<bool>(),
    ) {
        rt().block_on(run_ops(ops, if small_commits { 1 } else { 1024 }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_writes_of_the_same_block_see_old_or_new_never_an_error() {
    let (_raw, _anchor, dev) = fresh(4).await;
    let a = vec![0xaa; 2 * B];
    let b = vec![0xbb; 2 * B];
    dev.write_at(0, &a).await.unwrap();
    let writer = {
        let (dev, a, b) = (dev.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..3000 {
                dev.write_at(0, if i % 2 == 0 { &b } else { &a })
                    .await
                    .unwrap();
                if i % 500 == 0 {
                    dev.flush().await.unwrap();
                }
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let mut got = vec![0u8; B];
        dev.read_at(B as u64, &mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 0xaa) || got.iter().all(|&x| x == 0xbb));
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
}
