//! Read buffers kept for reuse (the server's read replies, the sealed device's ciphertext),
//! and the bounded reads that fill or skip them.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Read buffers kept for reuse, so that large reads neither zero-fill nor page-fault fresh
/// memory every time.
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Buffers above this size are not kept.
const POOLED_MAX: usize = 4 << 20;
/// Buffers kept at most.
const POOLED_COUNT: usize = 64;

/// A buffer of `len` bytes (content unspecified).
pub(crate) fn take_buffer(len: usize) -> Vec<u8> {
    match pooled(len) {
        Some(mut b) => {
            // Only the part beyond the old length is zero-filled.
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// An empty buffer with room for `len` bytes.
fn take_spare(len: usize) -> Vec<u8> {
    match pooled(len) {
        Some(mut b) => {
            b.clear();
            b
        }
        None => Vec::with_capacity(len),
    }
}

fn pooled(len: usize) -> Option<Vec<u8>> {
    if len <= 4096 || len > POOLED_MAX {
        return None;
    }
    let mut pool = BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.iter()
        .position(|b| b.capacity() >= len)
        .map(|i| pool.swap_remove(i))
}

/// Returns a buffer to the pool.
pub(crate) fn give_buffer(b: Vec<u8>) {
    if b.capacity() > 4096 && b.capacity() <= POOLED_MAX {
        let mut pool = BUFFERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOLED_COUNT {
            pool.push(b);
        }
    }
}

/// Reads exactly `n` bytes into a new vector, without zero-filling it first.
pub(crate) async fn read_vec<R: AsyncRead + Unpin>(rd: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut data = take_spare(n);
    while data.len() < n {
        let want = (n - data.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut data).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(data)
}

/// Reads and drops `n` bytes through a small stack buffer (never allocates `n`).
pub(super) async fn discard<R: AsyncRead + Unpin>(rd: &mut R, mut n: u64) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        rd.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}
