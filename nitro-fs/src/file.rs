//! A [`BlockDevice`] backed by a regular file or a block device on this host (the parent
//! side of the NBD server).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{FallocateFlags, fallocate};

use crate::device::{BlockDevice, check_range};
use crate::error::{Error, IoContext, Result};

/// A file or block device used as a [`BlockDevice`].
///
/// Regular files are sparse: [`create`](Self::create) sets the size without allocating,
/// trims punch holes and write-zeroes deallocates where allowed. Flush is `fdatasync`; a
/// write with force-unit-access goes through a second descriptor opened with `O_DSYNC`.
///
/// Reads and writes are positional (`pread`/`pwrite`) and run inline on the calling task:
/// they hit the page cache and take microseconds, and the NBD server gets its best
/// throughput that way. `fdatasync`, hole punching and `O_DSYNC` writes, which wait for the
/// disk, run on Tokio's blocking pool.
///
/// ```no_run
/// use nitro_fs::{BlockDevice, FileDevice};
/// # async fn demo() -> nitro_fs::Result<()> {
/// let dev = FileDevice::create("/var/lib/enclave/disk0.img", 1 << 30)?; // 1 GiB, sparse
/// dev.write_at(0, b"hello").await?;
/// dev.flush().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    /// Same file opened with `O_DSYNC`, for force-unit-access writes.
    dsync: Option<File>,
    size: u64,
    read_only: bool,
    block_device: bool,
}

impl FileDevice {
    /// Opens an existing file or block device for reading and writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), false, None)
    }

    /// Opens an existing file or block device read-only.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), true, None)
    }

    /// Opens `path` with a size of `size` bytes: a missing file is created sparse, a shorter
    /// regular file is extended (sparse). A longer file is refused rather than truncated; a
    /// block device must be at least `size` bytes and only its first `size` bytes are used.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<Self> {
        Self::open_with(path.as_ref(), false, Some(size))
    }

    fn open_with(path: &Path, read_only: bool, size: Option<u64>) -> Result<Self> {
        let with_path = |e: io::Error| Error::io(format!("opening {}", path.display()), e);
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if size.is_some() && !read_only {
            opts.create(true);
        }
        let mut file = opts.open(path).map_err(with_path)?;
        let meta = file.metadata().map_err(with_path)?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(Error::invalid(format!(
                "{}: neither a regular file nor a block device",
                path.display()
            )));
        }
        let current = if block_device {
            file.seek(SeekFrom::End(0)).map_err(with_path)?
        } else {
            meta.len()
        };
        let size = match size {
            None => current,
            Some(want) if want == current => want,
            Some(want) if block_device => {
                if want > current {
                    return Err(Error::invalid(format!(
                        "{}: block device has {current} bytes, {want} requested",
                        path.display()
                    )));
                }
                want
            }
            Some(want) if want > current => {
                file.set_len(want).map_err(with_path)?;
                want
            }
            Some(want) => {
                return Err(Error::invalid(format!(
                    "{}: file has {current} bytes, more than the {want} requested (refusing to truncate)",
                    path.display()
                )));
            }
        };
        let dsync = if read_only {
            None
        } else {
            Some(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_DSYNC)
                    .open(path)
                    .map_err(with_path)?,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                file,
                dsync,
                size,
                read_only,
                block_device,
            }),
        })
    }

    /// Path the device was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.inner.block_device
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        check_range(self.inner.size, offset, len)
    }

    /// Runs `f` on the blocking pool; an error is reported as `{what} {path}`.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .with_context(|| format!("{what} {}", self.inner.path.display()))
    }

    fn context(&self, what: &str, offset: u64) -> String {
        format!("{what} {} at offset {offset}", self.inner.path.display())
    }

    async fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> Result<bool> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::invalid("range too large for fallocate"));
        };
        self.blocking("fallocate on", move |inner| {
            match fallocate(&inner.file, flags, off, l) {
                Ok(()) => Ok(true),
                Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => Ok(false),
                Err(e) => Err(io::Error::from(e)),
            }
        })
        .await
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn can_multi_conn(&self) -> bool {
        // Every connection goes through the same kernel page cache, and fdatasync covers
        // writes made through any descriptor of the file.
        true
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.inner.size, offset, buf.len() as u64)?;
        self.inner
            .file
            .read_exact_at(buf, offset)
            .with_context(|| self.context("reading", offset))?;
        Ok(())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_write(offset, data.len() as u64)?;
        self.inner
            .file
            .write_all_at(data, offset)
            .with_context(|| self.context("writing", offset))?;
        Ok(())
    }

    async fn write_at_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_write(offset, data.len() as u64)?;
        let data = data.to_vec();
        self.blocking("writing (FUA) to", move |inner| match &inner.dsync {
            Some(f) => f.write_all_at(&data, offset),
            None => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.blocking("syncing", |inner| inner.file.sync_data())
            .await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // A hint: filesystems or devices without hole punching simply keep the data.
        self.fallocate(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .await
        .map(drop)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let flags = if may_trim {
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        } else {
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        };
        if self.fallocate(flags, offset, len).await? {
            return Ok(());
        }
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.inner
                .file
                .write_all_at(&zeroes[..n], offset + done)
                .with_context(|| self.context("writing zeroes to", offset + done))?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: panics are failures

    use super::*;

    /// An I/O error says what was being done (with the path) and chains the OS error once.
    #[test]
    fn io_errors_carry_context_and_source_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let err = FileDevice::open(&missing).unwrap_err();
        let Error::Io { context, source } = &err else {
            panic!("expected Error::Io, got {err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(context.contains("missing.img"), "{context}");
        let message = err.to_string();
        assert!(!message.contains(&source.to_string()), "{message}");
        let chain = crate::error::display_chain(&err);
        assert_eq!(chain.matches(&source.to_string()).count(), 1, "{chain}");
    }
}
