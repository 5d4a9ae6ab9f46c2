//! The block-device abstraction shared by the NBD client, the NBD server and the sealed
//! device.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// An asynchronous block device: a fixed-size range of bytes with read, write, flush, trim
/// and write-zeroes.
///
/// Implemented by [`NbdClient`](crate::NbdClient) (a remote export),
/// [`FileDevice`](crate::FileDevice) (a file or block device on this host),
/// [`SealedDevice`](crate::sealed::SealedDevice) (encryption and integrity over another
/// device) and [`MemDevice`] (RAM). The [`Server`](crate::Server) exports any of them.
///
/// Methods take `&self` so that many requests can be in flight at once (share the device
/// through an [`Arc`] or a clone). Offsets and lengths are in bytes; a request must lie
/// inside `0..size()` and be aligned to [`min_block_size`](Self::min_block_size).
///
/// Durability follows the NBD / Linux block-layer model: a completed write may sit in a
/// volatile cache until a [`flush`](Self::flush) completes; a flush makes every write that
/// completed before it was issued durable. [`write_at_fua`](Self::write_at_fua) makes one
/// write durable before it completes.
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn size(&self) -> u64;

    /// Preferred I/O granularity in bytes (a power of two). Requests aligned to it avoid
    /// read-modify-write cycles.
    fn block_size(&self) -> u32 {
        4096
    }

    /// Alignment every request's offset and length must have (1 = any byte range).
    fn min_block_size(&self) -> u32 {
        1
    }

    /// True when writes, trims and write-zeroes are refused.
    fn is_read_only(&self) -> bool {
        false
    }

    /// True when several independent users (e.g. several NBD connections) of the device see
    /// each other's writes and flushes (`NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> bool {
        false
    }

    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>> + Send;

    /// Reads `len` bytes at `offset` into a new buffer. Implementations that receive data
    /// in buffers of their own (like [`NbdClient`](crate::NbdClient)) return them without a
    /// copy; the default allocates and calls [`read_at`](Self::read_at).
    fn read_to_vec(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let mut v = vec![0u8; len];
            self.read_at(offset, &mut v).await?;
            Ok(v)
        }
    }

    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send;

    /// Writes `data` at `offset` and makes it durable before completing (force unit access).
    fn write_at_fua(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.write_at(offset, data).await?;
            self.flush().await
        }
    }

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;

    /// Hints that `len` bytes at `offset` are no longer needed. Their content is undefined
    /// until written again (most implementations read them back as zeroes).
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send {
        async move { check_range(self.size(), offset, len) }
    }

    /// Sets `len` bytes at `offset` to zero. With `may_trim` the device may deallocate the
    /// range instead of writing zeroes, as long as it reads back as zeroes.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = may_trim;
        async move {
            check_range(self.size(), offset, len)?;
            let zeroes = vec![0u8; len.min(1 << 20) as usize];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zeroes.len() as u64) as usize;
                self.write_at(offset + done, &zeroes[..n]).await?;
                done += n as u64;
            }
            Ok(())
        }
    }
}

/// Checks that `offset..offset+len` lies inside a device of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            offset,
            length: len,
            size,
        }),
    }
}

/// Checks range and alignment of a request.
pub(crate) fn check_request(size: u64, alignment: u32, offset: u64, len: u64) -> Result<()> {
    check_range(size, offset, len)?;
    let a = u64::from(alignment.max(1));
    if !offset.is_multiple_of(a) || !len.is_multiple_of(a) {
        return Err(Error::Unaligned {
            offset,
            length: len,
            alignment,
        });
    }
    Ok(())
}

impl<D: BlockDevice> BlockDevice for Arc<D> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn min_block_size(&self) -> u32 {
        (**self).min_block_size()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn can_multi_conn(&self) -> bool {
        (**self).can_multi_conn()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>> + Send {
        (**self).read_at(offset, buf)
    }
    fn read_to_vec(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>>> + Send {
        (**self).read_to_vec(offset, len)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send {
        (**self).write_at(offset, data)
    }
    fn write_at_fua(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send {
        (**self).write_at_fua(offset, data)
    }
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        (**self).flush()
    }
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send {
        (**self).trim(offset, len)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).write_zeroes(offset, len, may_trim)
    }
}

/// A future boxed for dynamic dispatch.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe mirror of [`BlockDevice`], so that one server can export devices of
/// different types.
pub(crate) trait DynBlockDevice: Send + Sync {
    fn size(&self) -> u64;
    fn block_size(&self) -> u32;
    fn min_block_size(&self) -> u32;
    fn is_read_only(&self) -> bool;
    fn can_multi_conn(&self) -> bool;
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, Result<()>>;
    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> BoxFuture<'a, Result<()>>;
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> BoxFuture<'_, Result<()>>;
}

impl<D: BlockDevice> DynBlockDevice for D {
    fn size(&self) -> u64 {
        BlockDevice::size(self)
    }
    fn block_size(&self) -> u32 {
        BlockDevice::block_size(self)
    }
    fn min_block_size(&self) -> u32 {
        BlockDevice::min_block_size(self)
    }
    fn is_read_only(&self) -> bool {
        BlockDevice::is_read_only(self)
    }
    fn can_multi_conn(&self) -> bool {
        BlockDevice::can_multi_conn(self)
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(BlockDevice::read_at(self, offset, buf))
    }
    fn write_at<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> BoxFuture<'a, Result<()>> {
        if fua {
            Box::pin(BlockDevice::write_at_fua(self, offset, data))
        } else {
            Box::pin(BlockDevice::write_at(self, offset, data))
        }
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(BlockDevice::flush(self))
    }
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(BlockDevice::trim(self, offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(BlockDevice::write_zeroes(self, offset, len, may_trim))
    }
}

/// A device held in RAM: for tests, examples and scratch space.
///
/// Clones share the same bytes. Flush does nothing (RAM is as durable as it gets).
///
/// ```
/// use nitro_fs::{BlockDevice, MemDevice};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dev = MemDevice::new(1 << 20);
/// dev.write_at(4096, b"hello").await?;
/// let mut buf = [0u8; 5];
/// dev.read_at(4096, &mut buf).await?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), nitro_fs::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct MemDevice {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    /// A device holding `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Arc::new(Mutex::new(bytes)),
            read_only: false,
        }
    }

    /// A read-only view sharing the same bytes.
    pub fn read_only(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            read_only: true,
        }
    }

    /// A copy of the current content.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Replaces the content (same length required).
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let mut g = self.lock();
        if g.len() != bytes.len() {
            return Err(Error::invalid(
                "restore: length differs from the device size",
            ));
        }
        g.copy_from_slice(bytes);
        Ok(())
    }

    /// Runs `f` on the raw bytes (e.g. to simulate tampering in tests).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_write(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        true
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let g = self.lock();
        check_range(g.len() as u64, offset, buf.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&g[o..o + buf.len()]);
        Ok(())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_write()?;
        let mut g = self.lock();
        check_range(g.len() as u64, offset, data.len() as u64)?;
        let o = offset as usize;
        g[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        BlockDevice::write_zeroes(self, offset, len, true).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> Result<()> {
        self.check_write()?;
        let mut g = self.lock();
        check_range(g.len() as u64, offset, len)?;
        let o = offset as usize;
        g[o..o + len as usize].fill(0);
        Ok(())
    }
}
