//! The streaming engine shared by the writer and the reader.
//!
//! PCR0 hashes every measured byte; PCR1 hashes the kernel, the command line and the first
//! ramdisk, which are a *prefix* of PCR0's input: SHA-384 being a Merkle-Damgard construction,
//! the PCR1 digest is a copy of the PCR0 context taken at the end of that prefix, so those bytes
//! are hashed once. PCR2 hashes the other ramdisks on a second chain. The PCR0 chain and the
//! PCR2 chain run on two threads, fed with reference-counted chunks by the thread that reads the
//! sources, writes the output and computes the CRC; so a build costs about one SHA-384 pass of
//! wall time on two cores. Channels are bounded and buffers are recycled, so memory stays at a
//! few chunks whatever the image size.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use aws_lc_rs::digest::{self, Context};

use crate::error::{Error, Result};
use crate::measure::Pcr;

/// Size of a chunk moved through the pipeline.
pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks queued per hashing thread.
const QUEUE: usize = 4;
/// Below this many measured bytes, hashing runs inline (threads cost more than they save).
const THREAD_THRESHOLD: u64 = 8 << 20;

/// Which PCRs a section is measured into. All `Boot` bytes come before all `App` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// Measured into PCR0 and PCR1.
    Boot,
    /// Measured into PCR0 and PCR2.
    App,
    /// Not measured (metadata, signature).
    None,
}

/// The three image PCRs.
pub(crate) struct ImagePcrs {
    pub(crate) pcr0: Pcr,
    pub(crate) pcr1: Pcr,
    pub(crate) pcr2: Pcr,
}

enum ImageMsg {
    Data(Arc<Vec<u8>>),
    /// The bootstrap prefix is complete: snapshot the context for PCR1.
    EndOfBoot,
}

enum Mode {
    Inline {
        image: Context,
        boot: Option<Context>,
        app: Context,
    },
    Threaded {
        image: SyncSender<ImageMsg>,
        app: SyncSender<Arc<Vec<u8>>>,
        pool: Receiver<Vec<u8>>,
        recycle: Sender<Vec<u8>>,
    },
}

/// Feeds chunks to the hash chains.
pub(crate) struct Feeder {
    mode: Mode,
    boot_done: bool,
}

fn sha384() -> Context {
    Context::new(&digest::SHA384)
}

fn internal(what: &str) -> Error {
    Error::io("hashing", io::Error::other(format!("internal: {what}")))
}

/// Runs `f` with a [`Feeder`]; returns its result and the image PCRs of everything fed.
/// `measured_bytes` decides whether hashing runs on threads.
pub(crate) fn with_feeder<T>(
    measured_bytes: u64,
    f: impl FnOnce(&mut Feeder) -> Result<T>,
) -> Result<(T, ImagePcrs)> {
    if measured_bytes < THREAD_THRESHOLD {
        let mut feeder = Feeder {
            mode: Mode::Inline {
                image: sha384(),
                boot: None,
                app: sha384(),
            },
            boot_done: false,
        };
        let out = f(&mut feeder)?;
        return match feeder.mode {
            Mode::Inline { image, boot, app } => {
                let boot = boot.unwrap_or_else(|| image.clone());
                Ok((out, finish(image, boot, app)))
            }
            Mode::Threaded { .. } => Err(internal("feeder mode changed")),
        };
    }
    thread::scope(|s| {
        let (image_tx, image_rx) = mpsc::sync_channel::<ImageMsg>(QUEUE);
        let (app_tx, app_rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(QUEUE);
        let (recycle, pool) = mpsc::channel::<Vec<u8>>();
        let r1 = recycle.clone();
        let image_thread = s.spawn(move || {
            let mut ctx = sha384();
            let mut boot = None;
            for msg in image_rx {
                match msg {
                    ImageMsg::Data(chunk) => {
                        ctx.update(&chunk);
                        give_back(chunk, &r1);
                    }
                    ImageMsg::EndOfBoot => boot = Some(ctx.clone()),
                }
            }
            let boot = boot.unwrap_or_else(|| ctx.clone());
            (ctx, boot)
        });
        let r2 = recycle.clone();
        let app_thread = s.spawn(move || {
            let mut app = sha384();
            for chunk in app_rx {
                app.update(&chunk);
                give_back(chunk, &r2);
            }
            app
        });
        let mut feeder = Feeder {
            mode: Mode::Threaded {
                image: image_tx,
                app: app_tx,
                pool,
                recycle,
            },
            boot_done: false,
        };
        let result = f(&mut feeder);
        // Closing the channels ends the hashing threads.
        drop(feeder);
        let image = image_thread.join();
        let app = app_thread.join();
        let out = result?;
        match (image, app) {
            (Ok((image, boot)), Ok(app)) => Ok((out, finish(image, boot, app))),
            _ => Err(internal("a hashing thread panicked")),
        }
    })
}

fn give_back(chunk: Arc<Vec<u8>>, recycle: &Sender<Vec<u8>>) {
    if let Some(v) = Arc::into_inner(chunk) {
        let _ = recycle.send(v);
    }
}

fn finish(image: Context, boot: Context, app: Context) -> ImagePcrs {
    ImagePcrs {
        pcr0: Pcr::extend_zero(image.finish().as_ref()),
        pcr1: Pcr::extend_zero(boot.finish().as_ref()),
        pcr2: Pcr::extend_zero(app.finish().as_ref()),
    }
}

impl Feeder {
    fn buffer(&mut self) -> Vec<u8> {
        let mut v = match &self.mode {
            Mode::Threaded { pool, .. } => pool.try_recv().unwrap_or_default(),
            Mode::Inline { .. } => Vec::new(),
        };
        v.clear();
        v.reserve(CHUNK);
        v
    }

    fn feed(&mut self, chunk: Vec<u8>, chain: Chain) -> Result<Arc<Vec<u8>>> {
        let chunk = Arc::new(chunk);
        match chain {
            Chain::None => return Ok(chunk),
            Chain::Boot if self.boot_done => {
                return Err(internal("bootstrap data after application data"));
            }
            Chain::Boot => {}
            Chain::App if !self.boot_done => {
                self.boot_done = true;
                match &mut self.mode {
                    Mode::Inline { image, boot, .. } => *boot = Some(image.clone()),
                    // A send fails only if a hashing thread died; the join reports it.
                    Mode::Threaded { image, .. } => {
                        let _ = image.send(ImageMsg::EndOfBoot);
                    }
                }
            }
            Chain::App => {}
        }
        match &mut self.mode {
            Mode::Inline { image, app, .. } => {
                image.update(&chunk);
                if chain == Chain::App {
                    app.update(&chunk);
                }
            }
            Mode::Threaded { image, app, .. } => {
                let _ = image.send(ImageMsg::Data(Arc::clone(&chunk)));
                if chain == Chain::App {
                    let _ = app.send(Arc::clone(&chunk));
                }
            }
        }
        Ok(chunk)
    }

    fn recycle(&mut self, chunk: Arc<Vec<u8>>) {
        if let Mode::Threaded { recycle, .. } = &self.mode {
            give_back(chunk, recycle);
        }
    }

    /// Copies exactly `len` bytes from `src` to `out`, feeding them to `chain` and `crc`.
    /// With `expect_eof`, `src` must end right after them (a file that grew is an error).
    /// `progress` is called with the number of bytes copied so far by this call.
    #[allow(clippy::too_many_arguments)] // reason: internal plumbing, all call sites are in this crate
    pub(crate) fn copy(
        &mut self,
        what: &str,
        src: &mut dyn Read,
        len: u64,
        expect_eof: bool,
        chain: Chain,
        out: &mut dyn Write,
        crc: &mut crc32fast::Hasher,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = self.buffer();
            buf.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                match src.read(&mut buf[filled..]) {
                    Ok(0) => {
                        return Err(Error::SizeMismatch {
                            what: what.to_owned(),
                            expected: len,
                            actual: done + filled as u64,
                        });
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(format!("reading {what}"), e)),
                }
            }
            let chunk = self.feed(buf, chain)?;
            out.write_all(&chunk)
                .map_err(|e| Error::io("writing the EIF", e))?;
            crc.update(&chunk);
            done += want as u64;
            self.recycle(chunk);
            progress(done);
        }
        if expect_eof {
            let mut probe = [0u8; 1];
            loop {
                match src.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(Error::SizeMismatch {
                            what: what.to_owned(),
                            expected: len,
                            actual: len + 1,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(format!("reading {what}"), e)),
                }
            }
        }
        Ok(())
    }

    /// Feeds an in-memory section (small: command line, metadata, signature).
    pub(crate) fn copy_bytes(
        &mut self,
        data: &[u8],
        chain: Chain,
        out: &mut dyn Write,
        crc: &mut crc32fast::Hasher,
    ) -> Result<()> {
        let mut src = data;
        self.copy(
            "in-memory section",
            &mut src,
            data.len() as u64,
            false,
            chain,
            out,
            crc,
            &mut |_| {},
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sizes: &[(usize, Chain)]) -> (ImagePcrs, Vec<u8>, u32) {
        let total: u64 = sizes.iter().map(|s| s.0 as u64).sum();
        let mut out = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        let res = with_feeder(total, |f| {
            for (i, &(n, chain)) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                f.copy(
                    "t",
                    &mut &data[..],
                    n as u64,
                    true,
                    chain,
                    &mut out,
                    &mut crc,
                    &mut |_| {},
                )?;
            }
            Ok(())
        });
        let ((), pcrs) = res.unwrap_or_else(|e| panic!("{e}"));
        (pcrs, out, crc.finalize())
    }

    #[test]
    fn threaded_equals_inline_equals_definition() {
        let small = run(&[(1000, Chain::Boot), (10, Chain::None), (3000, Chain::App)]);
        let mut all = Vec::new();
        let mut boot = Vec::new();
        let mut app = Vec::new();
        for (i, (n, chain)) in [
            (1000usize, Chain::Boot),
            (10, Chain::None),
            (3000, Chain::App),
        ]
        .iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
            match chain {
                Chain::Boot => {
                    all.extend_from_slice(&data);
                    boot.extend_from_slice(&data);
                }
                Chain::App => {
                    all.extend_from_slice(&data);
                    app.extend_from_slice(&data);
                }
                Chain::None => {}
            }
        }
        assert_eq!(small.0.pcr0, Pcr::of_bytes(&all));
        assert_eq!(small.0.pcr1, Pcr::of_bytes(&boot));
        assert_eq!(small.0.pcr2, Pcr::of_bytes(&app));
        assert_eq!(small.2, crc32fast::hash(&small.1));

        let big = [
            (5 * CHUNK + 17, Chain::Boot),
            (3, Chain::None),
            (4 * CHUNK + 1, Chain::App),
        ];
        let threaded = run(&big);
        // Same input hashed inline: feed it in pieces below the threshold.
        let mut all = Vec::new();
        let mut boot = Vec::new();
        let mut app = Vec::new();
        for (i, (n, chain)) in big.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
            match chain {
                Chain::Boot => {
                    all.extend_from_slice(&data);
                    boot.extend_from_slice(&data);
                }
                Chain::App => {
                    all.extend_from_slice(&data);
                    app.extend_from_slice(&data);
                }
                Chain::None => {}
            }
        }
        assert_eq!(threaded.0.pcr0, Pcr::of_bytes(&all));
        assert_eq!(threaded.0.pcr1, Pcr::of_bytes(&boot));
        assert_eq!(threaded.0.pcr2, Pcr::of_bytes(&app));
        assert_eq!(threaded.2, crc32fast::hash(&threaded.1));
    }

    #[test]
    fn bootstrap_data_after_application_data_is_refused() {
        let mut crc = crc32fast::Hasher::new();
        let r = with_feeder(0, |f| {
            f.copy_bytes(b"app", Chain::App, &mut io::sink(), &mut crc)?;
            f.copy_bytes(b"boot", Chain::Boot, &mut io::sink(), &mut crc)
        });
        assert!(r.is_err());
    }

    #[test]
    fn short_and_long_sources_are_errors() {
        let mut crc = crc32fast::Hasher::new();
        let r = with_feeder(0, |f| {
            f.copy(
                "short",
                &mut &[1u8, 2][..],
                3,
                true,
                Chain::Boot,
                &mut io::sink(),
                &mut crc,
                &mut |_| {},
            )
        });
        assert!(matches!(r, Err(Error::SizeMismatch { actual: 2, .. })));
        let r = with_feeder(0, |f| {
            f.copy(
                "long",
                &mut &[1u8, 2, 3, 4][..],
                3,
                true,
                Chain::Boot,
                &mut io::sink(),
                &mut crc,
                &mut |_| {},
            )
        });
        assert!(matches!(r, Err(Error::SizeMismatch { .. })));
    }
}
