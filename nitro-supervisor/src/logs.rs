//! The application's output to the parent's log sink (and the console).
//!
//! One connection per stream to `parent.log_vsock_port`: first
//! [`nitro_init::log_header`], then the raw bytes as they come, then a write shutdown at the
//! stream's end of file, after every byte has been written and flushed. The supervisor then
//! waits (briefly) for the parent to close its side, so that the bytes are delivered before the
//! enclave powers off.

use std::time::Duration;

use nitro_init::LogStream;
use nitro_net::Addr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the supervisor waits for the log sink to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it waits, after its end of file, for the log sink to close its side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`forward`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forwarded {
    /// Bytes read from the application.
    pub bytes: u64,
    /// Whether every byte reached the log sink (and its end of file was sent).
    pub delivered: bool,
}

/// Copies `from` (the application's stdout or stderr) to the log sink at `sink` (when given)
/// and to `echo` (the console, when given) until its end of file.
///
/// A log sink that cannot be reached or fails is reported on the console and the copy to the
/// console continues: the application is never blocked or stopped by its logging.
pub async fn forward<R, E>(
    mut from: R,
    stream: LogStream,
    sink: Option<Addr>,
    write_cap: Option<usize>,
    mut echo: Option<E>,
) -> Forwarded
where
    R: AsyncRead + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut out = match sink {
        Some(addr) => match connect(&addr, stream, write_cap).await {
            Ok(s) => Some(s),
            Err(e) => {
                crate::say(format_args!(
                    "log sink {addr} for {}: {e}; the output goes to the console only",
                    stream.as_str()
                ));
                None
            }
        },
        None => None,
    };
    let mut delivered = out.is_some();
    let mut total = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::say(format_args!(
                    "reading the application's {}: {e}",
                    stream.as_str()
                ));
                break;
            }
        };
        total += n as u64;
        if let Some(s) = out.as_mut()
            && let Err(e) = s.write_all(&buf[..n]).await
        {
            crate::say(format_args!(
                "log sink for {}: {e}; the output goes to the console only",
                stream.as_str()
            ));
            out = None;
            delivered = false;
        }
        if let Some(w) = echo.as_mut()
            && (w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err())
        {
            echo = None;
        }
    }
    if let Some(mut s) = out {
        match finish(&mut s).await {
            Ok(()) => {}
            Err(e) => {
                crate::say(format_args!(
                    "log sink for {}: closing: {e}",
                    stream.as_str()
                ));
                delivered = false;
            }
        }
    }
    Forwarded {
        bytes: total,
        delivered,
    }
}

async fn connect(
    addr: &Addr,
    stream: LogStream,
    write_cap: Option<usize>,
) -> Result<nitro_net::Stream, String> {
    let mut s = addr
        .connect_timeout(CONNECT_TIMEOUT)
        .await
        .map_err(|e| crate::chain(&e))?;
    s.limit_writes(write_cap);
    s.write_all(nitro_init::log_header(stream).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Flushes, shuts the write side down and waits for the peer's end of file.
async fn finish(s: &mut nitro_net::Stream) -> std::io::Result<()> {
    s.flush().await?;
    s.shutdown().await?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}
