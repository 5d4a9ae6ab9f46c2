//! Kernel attach: expose any [`BlockDevice`] (typically a sealed device) as `/dev/nbdN`, so
//! that an ordinary filesystem can be created and mounted on it.
//!
//! The Linux NBD driver is given one end of a Unix socket pair (`NBD_SET_SOCK`) and serves
//! the block device through it after `NBD_DO_IT`; the other end is served in-process by
//! this crate's NBD server, transmission phase only (the kernel skips the handshake). The
//! kernel's requests therefore never leave the enclave: only the sealed device's encrypted
//! blocks reach the parent.
//!
//! Needs the `nbd` driver (the Debian 6.12 kernel has it as a module; the stock AWS enclave
//! kernel does not) and `CAP_SYS_ADMIN`.
//!
//! ```no_run
//! use nitro_fs::{kernel, MemDevice};
//! # async fn demo() -> nitro_fs::Result<()> {
//! let attached = kernel::attach("/dev/nbd0", MemDevice::new(64 << 20), kernel::AttachOptions::default()).await?;
//! // mkfs.ext4 /dev/nbd0 && mount /dev/nbd0 /mnt ... umount /mnt
//! attached.detach().await?;
//! # Ok(()) }
//! ```

// The NBD ioctls take raw file descriptors and integers; every call is an `unsafe` FFI call.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::libc;
use tokio::task::JoinHandle;

use crate::device::BlockDevice;
use crate::error::{Error, IoContext, Result, display_chain};
use crate::internal::proto::*;
use crate::server::{Export, ServerConfig, serve_transmission};

type Request = nix::sys::ioctl::ioctl_num_type;

const NBD_SET_SOCK: Request = nix::request_code_none!(0xab, 0) as Request;
const NBD_SET_BLKSIZE: Request = nix::request_code_none!(0xab, 1) as Request;
const NBD_DO_IT: Request = nix::request_code_none!(0xab, 3) as Request;
const NBD_CLEAR_SOCK: Request = nix::request_code_none!(0xab, 4) as Request;
const NBD_CLEAR_QUE: Request = nix::request_code_none!(0xab, 5) as Request;
const NBD_SET_SIZE_BLOCKS: Request = nix::request_code_none!(0xab, 7) as Request;
const NBD_DISCONNECT: Request = nix::request_code_none!(0xab, 8) as Request;
const NBD_SET_TIMEOUT: Request = nix::request_code_none!(0xab, 9) as Request;
const NBD_SET_FLAGS: Request = nix::request_code_none!(0xab, 10) as Request;

/// Issues an NBD ioctl whose argument is an integer.
fn nbd_ioctl(fd: RawFd, request: Request, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is an open descriptor of an NBD device owned by the caller for the whole
    // call, and every NBD request used here takes its argument by value (an integer or a
    // file descriptor number), so the kernel reads no memory of ours.
    let r = unsafe { libc::ioctl(fd, request, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Settings of [`attach`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AttachOptions {
    /// Block size announced to the kernel (512..=4096, a power of two). Default 4096.
    pub block_size: u32,
    /// Kernel request timeout (`NBD_SET_TIMEOUT`); `None` keeps the kernel default (none).
    pub timeout: Option<Duration>,
    /// Expose the device read-only.
    pub read_only: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            block_size: 4096,
            timeout: None,
            read_only: false,
        }
    }
}

/// A block device attached to a kernel NBD device node; see [`attach`].
#[derive(Debug)]
pub struct Attached {
    path: PathBuf,
    nbd: Arc<File>,
    do_it: Option<JoinHandle<io::Result<()>>>,
    server: Option<JoinHandle<Result<()>>>,
}

impl Attached {
    /// The device node, e.g. `/dev/nbd0`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disconnects the kernel device (after the kernel has flushed its requests) and waits
    /// until the in-process server has answered everything. Unmount filesystems first.
    pub async fn detach(mut self) -> Result<()> {
        let path = self.path.display().to_string();
        nbd_ioctl(self.nbd.as_raw_fd(), NBD_DISCONNECT, 0)
            .with_context(|| format!("NBD_DISCONNECT on {path}"))?;
        if let Some(t) = self.do_it.take() {
            t.await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .with_context(|| format!("NBD_DO_IT on {path}"))?;
        }
        if let Some(t) = self.server.take() {
            // The kernel closed its end of the socket; the server finishes its requests.
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.do_it.is_some() {
            let _ = nbd_ioctl(self.nbd.as_raw_fd(), NBD_DISCONNECT, 0);
        }
    }
}

/// Attaches `device` to the kernel NBD device node `nbd_path` (e.g. `/dev/nbd0`) and serves
/// it in-process until [`Attached::detach`].
pub async fn attach(
    nbd_path: impl AsRef<Path>,
    device: impl BlockDevice + 'static,
    options: AttachOptions,
) -> Result<Attached> {
    let path = nbd_path.as_ref().to_owned();
    let bs = options.block_size;
    if !(512..=4096).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::invalid("block size must be 512, 1024, 2048 or 4096"));
    }
    if !device.size().is_multiple_of(u64::from(bs)) {
        return Err(Error::invalid(format!(
            "device size {} is not a multiple of the block size {bs}",
            device.size()
        )));
    }
    if device.min_block_size() > bs {
        return Err(Error::invalid(format!(
            "the device needs {}-byte alignment, more than the block size {bs}",
            device.min_block_size()
        )));
    }
    let blocks = libc::c_ulong::try_from(device.size() / u64::from(bs))
        .map_err(|_| Error::invalid("device too large"))?;
    let export = Export::new(path.display().to_string(), device).read_only(options.read_only);
    let mut flags = export.transmission_flags();
    // The kernel's request size is bounded by its own queue limits, far below this.
    flags &= !TFLAG_CAN_MULTI_CONN;

    let nbd = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?,
    );
    let (kernel_end, our_end) = StdUnixStream::pair().context("creating a socket pair")?;
    let ioctl = |name: &str| format!("{name} on {}", path.display());
    let fd = nbd.as_raw_fd();
    // Start from a clean state (a previous user may have left a socket behind).
    let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
    nbd_ioctl(fd, NBD_SET_BLKSIZE, libc::c_ulong::from(bs))
        .with_context(|| ioctl("NBD_SET_BLKSIZE"))?;
    nbd_ioctl(fd, NBD_SET_SIZE_BLOCKS, blocks).with_context(|| ioctl("NBD_SET_SIZE_BLOCKS"))?;
    nbd_ioctl(fd, NBD_SET_FLAGS, libc::c_ulong::from(flags))
        .with_context(|| ioctl("NBD_SET_FLAGS"))?;
    if let Some(t) = options.timeout {
        nbd_ioctl(fd, NBD_SET_TIMEOUT, t.as_secs().max(1) as libc::c_ulong)
            .with_context(|| ioctl("NBD_SET_TIMEOUT"))?;
    }
    let kernel_fd: OwnedFd = kernel_end.into();
    nbd_ioctl(fd, NBD_SET_SOCK, kernel_fd.as_raw_fd() as libc::c_ulong)
        .with_context(|| ioctl("NBD_SET_SOCK"))?;
    // The kernel holds its own reference to the socket now.
    drop(kernel_fd);

    let stream = our_end
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(our_end))
        .context("registering the NBD socket with tokio")?;
    let server = tokio::spawn(async move {
        let r = serve_transmission(&export, stream, &ServerConfig::default()).await;
        if let Err(e) = &r {
            tracing::warn!(error = %display_chain(e), "kernel NBD session ended with an error");
        }
        r
    });
    let nbd2 = nbd.clone();
    let do_it = tokio::task::spawn_blocking(move || {
        let fd = nbd2.as_raw_fd();
        // Blocks until NBD_DISCONNECT or until the socket closes.
        let r = nbd_ioctl(fd, NBD_DO_IT, 0).map(drop);
        let _ = nbd_ioctl(fd, NBD_CLEAR_QUE, 0);
        let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
        r
    });
    Ok(Attached {
        path,
        nbd,
        do_it: Some(do_it),
        server: Some(server),
    })
}
