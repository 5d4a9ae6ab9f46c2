//! Decompression by content (gzip, zstd or none, sniffed from the first bytes) and the cap
//! that bounds every decompressed stream.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

/// A reader that fails once more than `left` bytes came through it (a decompression bomb
/// guard); `tripped` records that this, and not a format error, stopped the read.
pub(super) struct Capped<R> {
    inner: R,
    left: u64,
    pub(super) tripped: Arc<std::sync::atomic::AtomicBool>,
}

impl<R> Capped<R> {
    pub(super) fn new(inner: R, limit: u64) -> Self {
        Capped {
            inner,
            left: limit,
            tripped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than allowed, so that reaching exactly the cap is not an error.
        let want = usize::try_from(self.left.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.tripped
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "decompressed data exceeds the unpacked size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub(super) fn sniff(r: &mut dyn BufRead) -> io::Result<Compression> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(super) fn decompress<'a>(r: impl BufRead + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut r = r;
    Ok(match sniff(&mut r)? {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdReader::new(r)),
    })
}

/// A zstd decoder over a stream of one or more frames (skippable frames are skipped).
struct ZstdReader<R> {
    src: R,
    dec: ruzstd::decoding::FrameDecoder,
    active: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(src: R) -> Self {
        ZstdReader {
            src,
            dec: ruzstd::decoding::FrameDecoder::new(),
            active: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.active {
                while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                    self.dec
                        .decode_blocks(
                            &mut self.src,
                            ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                        )
                        .map_err(io::Error::other)?;
                }
                let n = self.dec.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.dec.is_finished() && self.dec.can_collect() == 0 {
                    self.active = false;
                }
                continue;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => self.active = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}
