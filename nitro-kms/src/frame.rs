//! The one frame format of the parent protocols (credentials, sealed-secret files): a 4-byte
//! big-endian length, then that many bytes. The reader bounds the length before allocating,
//! and tells a clean end of stream (before a frame) from one inside a frame.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::error::Error;

/// Frames up to this size are read into a buffer of their exact size (no reallocation, so no
/// stray copy of a secret); larger ones grow as data arrives instead of trusting the length.
const EXACT_ALLOCATION: usize = 64 * 1024;

fn invalid(protocol: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidResponse {
        operation: protocol,
        reason: reason.into(),
    }
}

/// Writes one frame made of `parts` (concatenated) and flushes.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    parts: &[&[u8]],
    max: usize,
    protocol: &'static str,
) -> Result<(), Error> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .ok()
        .filter(|l| usize::try_from(*l).is_ok_and(|l| l <= max))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{protocol}: a frame of {len} bytes exceeds {max}"))
        })?;
    let io = |e| Error::io(format!("{protocol}: write"), e);
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    for p in parts {
        stream.write_all(p).await.map_err(io)?;
    }
    stream.flush().await.map_err(io)
}

/// Reads one frame of at most `max` bytes; `None` on a clean end of stream before a frame.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    protocol: &'static str,
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    let io = |e| Error::io(format!("{protocol}: read"), e);
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        let n = stream.read(&mut header[got..]).await.map_err(io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(invalid(protocol, "end of stream inside a frame header"))
            };
        }
        got += n;
    }
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(invalid(
            protocol,
            format!("a frame of {len} bytes exceeds {max}"),
        ));
    }
    let truncated = || invalid(protocol, "end of stream inside a frame");
    if len <= EXACT_ALLOCATION {
        let mut body = Zeroizing::new(vec![0u8; len]);
        return match stream.read_exact(&mut body).await {
            Ok(_) => Ok(Some(body)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(truncated()),
            Err(e) => Err(io(e)),
        };
    }
    let mut body = Zeroizing::new(Vec::with_capacity(EXACT_ALLOCATION));
    let mut limited = stream.take(len as u64);
    limited.read_to_end(&mut body).await.map_err(io)?;
    if body.len() != len {
        return Err(truncated());
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_hostile_lengths() {
        for len in [0, 1, EXACT_ALLOCATION, EXACT_ALLOCATION + 1, 300_000] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let body = vec![7u8; len];
            let sent = body.clone();
            let writer = tokio::spawn(async move {
                write_frame(
                    &mut a,
                    &[&sent[..1.min(len)], &sent[1.min(len)..]],
                    1 << 20,
                    "test",
                )
                .await
            });
            let got = read_frame(&mut b, 1 << 20, "test").await.unwrap().unwrap();
            assert_eq!(&got[..], &body[..]);
            writer.await.unwrap().unwrap();
            // The writer is gone: a clean end of stream.
            assert!(read_frame(&mut b, 1 << 20, "test").await.unwrap().is_none());
        }
        // Over the limit, on either side; truncated header and body.
        let (mut a, mut b) = tokio::io::duplex(64);
        assert!(matches!(
            write_frame(&mut a, &[&[0; 11]], 10, "test").await,
            Err(Error::InvalidArgument(_))
        ));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 10, "test").await,
            Err(Error::InvalidResponse { .. })
        ));
        for (bytes, max) in [
            (&[0u8, 0][..], 10),
            (&[0, 0, 0, 5, 1, 2][..], 10),
            (&[0, 1, 0, 0, 1][..], 1 << 20),
        ] {
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(bytes).await.unwrap();
            drop(a);
            assert!(matches!(
                read_frame(&mut b, max, "test").await,
                Err(Error::InvalidResponse { .. })
            ));
        }
    }
}
