//! A small load generator for any [`BlockDevice`]: random or sequential reads or writes with
//! many requests in flight, for benchmarks and smoke tests (`nbd client bench`, the
//! criterion bench). Not part of the stable API.
//!
//! ```
//! use std::time::Duration;
//! use nitro_fs::internal::bench::{Pattern, Workload, run};
//! use nitro_fs::MemDevice;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dev = MemDevice::new(16 << 20);
//! let w = Workload::new(Pattern::Random, true, 4096).duration(Duration::from_millis(50));
//! let m = run(&dev, &w).await?;
//! assert!(m.ops > 0);
//! println!("{:.0} IOPS", m.iops());
//! # Ok::<(), nitro_fs::Error>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::device::BlockDevice;
use crate::error::{Error, Result};

/// Access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pattern {
    /// Uniformly random, aligned offsets.
    Random,
    /// Consecutive offsets, wrapping at the end of the region.
    Sequential,
}

/// What to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Workload {
    /// Access pattern.
    pub pattern: Pattern,
    /// Writes (true) or reads (false).
    pub write: bool,
    /// Bytes per request.
    pub io_size: usize,
    /// Requests in flight.
    pub depth: usize,
    /// How long to run.
    pub duration: Duration,
    /// Bytes of the device to use from offset 0 (`None` = all of it).
    pub region: Option<u64>,
}

impl Workload {
    /// A workload with 64 requests in flight for 2 seconds over the whole device.
    pub fn new(pattern: Pattern, write: bool, io_size: usize) -> Self {
        Self {
            pattern,
            write,
            io_size,
            depth: 64,
            duration: Duration::from_secs(2),
            region: None,
        }
    }

    /// Sets the run time.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// Sets the number of requests in flight.
    pub fn depth(mut self, depth: usize) -> Self {
        self.depth = depth.max(1);
        self
    }

    /// Limits the region used.
    pub fn region(mut self, bytes: u64) -> Self {
        self.region = Some(bytes);
        self
    }
}

/// What a run achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Measurement {
    /// Requests completed.
    pub ops: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl Measurement {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Runs `workload` against `dev`. Each of the `depth` workers is its own task, so the work
/// spreads over the runtime's threads like independent application tasks would.
pub async fn run<D: BlockDevice + Clone + 'static>(
    dev: &D,
    workload: &Workload,
) -> Result<Measurement> {
    let io = workload.io_size as u64;
    let region = workload.region.unwrap_or(dev.size()).min(dev.size());
    let slots = region / io.max(1);
    if io == 0 || slots == 0 {
        return Err(Error::invalid("the region is smaller than one request"));
    }
    let next_seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + workload.duration;
    let workers = (0..workload.depth as u64).map(|w| {
        let next_seq = next_seq.clone();
        let dev = dev.clone();
        let (pattern, write, io_size) = (workload.pattern, workload.write, workload.io_size);
        tokio::spawn(async move {
            let mut buf = vec![0xa5u8 ^ w as u8; io_size];
            let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let slot = match pattern {
                    Pattern::Random => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % slots
                    }
                    Pattern::Sequential => next_seq.fetch_add(1, Ordering::Relaxed) % slots,
                };
                if write {
                    dev.write_at(slot * io, &buf).await?;
                } else {
                    dev.read_at(slot * io, &mut buf).await?;
                }
                ops += 1;
            }
            Ok::<_, Error>(ops)
        })
    });
    let mut ops = 0u64;
    for r in try_join_all(workers)
        .await
        .map_err(|e| Error::io("a benchmark worker failed", std::io::Error::other(e)))?
    {
        ops += r?;
    }
    let elapsed = start.elapsed();
    Ok(Measurement {
        ops,
        bytes: ops * io,
        elapsed,
    })
}
