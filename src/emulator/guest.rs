//! Enclave-side helpers for running under the emulator.
//!
//! # Large writes to vsock
//!
//! Since Linux commit 6693731487a8 ("vsock/virtio: Allocate nonlinear SKBs for handling large
//! transmit buffers", v6.17, backported to the 6.12 stable kernels the emulator boots), the
//! guest's virtio-vsock driver puts a packet whose payload exceeds 32 KiB
//! (`PAGE_SIZE << PAGE_ALLOC_COSTLY_ORDER`) in several descriptors. vhost-device-vsock 0.3.0
//! (through `virtio-vsock` ≤ 0.12, whose `VsockPacket::from_tx_virtq_chain` reads one data
//! descriptor) drops such packets without a word, so the parent loses bytes in the middle of
//! the stream: an NBD write of 64 KiB either stalls or arrives torn (tested: 8 KiB writes
//! pass, 64 KiB ones do not). libkrun and cloud-hypervisor had the same bug with these
//! kernels. Until the backend handles descriptor chains, an enclave application running in
//! the emulator must keep each `write` to a vsock stream at most [`VSOCK_MAX_WRITE`] bytes,
//! which [`CappedWrites`] does for any stream; the kernel never merges separate writes into
//! one packet. Real Nitro Enclaves do not need it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest write [`CappedWrites`] passes to the stream: well below the 32 KiB at which the
/// guest kernel starts splitting a packet over several descriptors.
pub const VSOCK_MAX_WRITE: usize = 16 << 10;

/// A stream whose writes are cut to at most a given size (reads pass through unchanged).
#[derive(Debug)]
pub struct CappedWrites<S> {
    inner: S,
    max: usize,
}

impl<S> CappedWrites<S> {
    /// Caps writes to `inner` at [`VSOCK_MAX_WRITE`] bytes.
    pub fn new(inner: S) -> Self {
        Self::with_max(inner, VSOCK_MAX_WRITE)
    }

    /// Caps writes to `inner` at `max` bytes (at least 1).
    pub fn with_max(inner: S, max: usize) -> Self {
        Self {
            inner,
            max: max.max(1),
        }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CappedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CappedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.max);
        Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records the size of every write it gets.
    struct Recorder(Vec<usize>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_are_cut_and_bytes_kept() -> io::Result<()> {
        let mut capped = CappedWrites::new(Recorder(Vec::new()));
        capped.write_all(&vec![7u8; 100_000]).await?;
        let sizes = capped.into_inner().0;
        assert!(sizes.iter().all(|&n| n <= VSOCK_MAX_WRITE));
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);

        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut capped = CappedWrites::with_max(a, 3);
        capped.write_all(b"hello world").await?;
        capped.shutdown().await?;
        let mut got = Vec::new();
        b.read_to_end(&mut got).await?;
        assert_eq!(got, b"hello world");
        Ok(())
    }
}
