//! The parent-side NBD server.
//!
//! [`handshake`] negotiates an export with a client (fixed newstyle); [`transmission`]
//! serves its requests, many in flight; [`buffers`] recycles large read buffers. This module
//! holds the exports, the limits and the [`Server`] that ties them together.

mod buffers;
mod handshake;
mod transmission;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

pub(crate) use self::buffers::{give_buffer, read_vec, take_buffer};
pub(crate) use self::transmission::serve_transmission;
use self::transmission::{READ_BUFFER, transmission};
use crate::device::{BlockDevice, DynBlockDevice};
use crate::error::{Error, Result};
use crate::internal::proto::*;

/// One named export: a block device offered to NBD clients.
#[derive(Clone)]
pub struct Export {
    name: String,
    description: String,
    device: Arc<dyn DynBlockDevice>,
    read_only: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Export {
    /// An export named `name` serving `device`.
    pub fn new(name: impl Into<String>, device: impl BlockDevice + 'static) -> Self {
        let read_only = device.is_read_only();
        Self {
            name: name.into(),
            description: String::new(),
            device: Arc::new(device),
            read_only,
        }
    }

    /// Sets the description shown by `nbdinfo` and `NBD_INFO_DESCRIPTION`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Serves the export read-only (writes, trims and write-zeroes fail with `EPERM`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only || self.device.is_read_only();
        self
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.device.size()
    }

    /// Transmission flags advertised for this export.
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.read_only {
            flags |= TFLAG_READ_ONLY;
        } else {
            flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        if self.device.can_multi_conn() {
            flags |= TFLAG_CAN_MULTI_CONN;
        }
        flags
    }

    fn block_size_info(&self, max_request: u32) -> Info {
        let minimum = self.device.min_block_size().max(1);
        let preferred = self.device.block_size().max(minimum);
        Info::BlockSize {
            minimum,
            preferred,
            maximum: max_request - max_request % minimum,
        }
    }
}

/// Limits and timeouts of a [`Server`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest read or write payload accepted in one request (advertised as the maximum
    /// block size). Default 32 MiB, the value qemu and the Linux kernel assume.
    pub max_request: u32,
    /// Requests processed concurrently per connection before the server stops reading.
    /// Default 256.
    pub max_in_flight: usize,
    /// Payload bytes processed concurrently per connection before the server stops
    /// reading. Default 128 MiB.
    pub max_in_flight_bytes: usize,
    /// Time a client has to finish the handshake. Default 30 s.
    pub handshake_timeout: Duration,
    /// Options a client may send before entering transmission. Default 256.
    pub max_options: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request: 32 << 20,
            max_in_flight: 256,
            max_in_flight_bytes: 128 << 20,
            handshake_timeout: Duration::from_secs(30),
            max_options: 256,
        }
    }
}

/// An NBD server exporting one or more block devices, over any byte stream.
///
/// Speaks fixed-newstyle negotiation with `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`,
/// `NBD_OPT_EXPORT_NAME` and `NBD_OPT_ABORT` (structured replies, metadata contexts, TLS and
/// extended headers are refused with the proper error replies, so qemu, libnbd and the Linux
/// kernel fall back to simple replies), then serves read, write, flush, FUA, trim and
/// write-zeroes with many requests in flight. Malformed or out-of-range requests get an
/// error reply; a corrupt stream ends the connection.
///
/// The server is cheap to clone; run [`serve`](Self::serve) once per accepted connection.
///
/// ```no_run
/// use nitro_fs::{Export, FileDevice, Server};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::new(vec![Export::new("disk0", FileDevice::create("disk0.img", 1 << 30)?)])?;
/// let listener = tokio::net::UnixListener::bind("/run/nbd.sock")?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let server = server.clone();
///     tokio::spawn(async move { server.serve(stream).await });
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Server {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    exports: Vec<Export>,
    config: ServerConfig,
}

impl Server {
    /// A server with the default [`ServerConfig`].
    pub fn new(exports: Vec<Export>) -> Result<Self> {
        Self::with_config(exports, ServerConfig::default())
    }

    /// A server with explicit limits.
    pub fn with_config(exports: Vec<Export>, config: ServerConfig) -> Result<Self> {
        if exports.is_empty() {
            return Err(Error::invalid("a server needs at least one export"));
        }
        if config.max_request < 4096 || config.max_in_flight == 0 {
            return Err(Error::invalid(
                "max_request must be at least 4096 and max_in_flight at least 1",
            ));
        }
        let mut seen = HashSet::new();
        for e in &exports {
            parse_string("export name", e.name.as_bytes())?;
            parse_string("export description", e.description.as_bytes())?;
            if !seen.insert(e.name.clone()) {
                return Err(Error::invalid(format!(
                    "duplicate export name {:?}",
                    e.name
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(ServerInner { exports, config }),
        })
    }

    /// The exports.
    pub fn exports(&self) -> &[Export] {
        &self.inner.exports
    }

    fn find(&self, name: &str) -> Option<&Export> {
        let exports = &self.inner.exports;
        exports
            .iter()
            .find(|e| e.name == name)
            // The empty name is the protocol's "default export": the first one.
            .or_else(|| {
                if name.is_empty() {
                    exports.first()
                } else {
                    None
                }
            })
    }

    /// Serves one client connection: handshake, then transmission until the client
    /// disconnects. Returns `Ok` on a clean end (`NBD_CMD_DISC`, `NBD_OPT_ABORT`, or EOF
    /// between requests) and an error when the client broke the protocol.
    pub async fn serve<S>(&self, stream: S) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
        let cfg = &self.inner.config;
        let chosen =
            match tokio::time::timeout(cfg.handshake_timeout, self.handshake(&mut rd, &mut wr))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::io(
                        "NBD handshake with a client",
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timed out after {:?}", cfg.handshake_timeout),
                        ),
                    ));
                }
            };
        match chosen {
            Some(export) => transmission(&export, rd, wr, cfg).await,
            None => Ok(()),
        }
    }
}
