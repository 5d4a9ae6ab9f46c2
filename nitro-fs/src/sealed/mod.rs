//! Sealed block devices: encryption, integrity and rollback detection over untrusted storage.
//!
//! A [`SealedDevice`] turns any [`BlockDevice`] that the parent controls (typically an
//! [`NbdClient`](crate::NbdClient)) into one the parent can neither read nor alter
//! undetected:
//!
//! * every 4 KiB block is encrypted with AES-256-GCM under a unique nonce per write, with the
//!   device identity, the block index and the block's version in the associated data;
//! * the nonce, tag and version of every block live in metadata pages covered by a hash
//!   tree (Merkle tree), whose root is authenticated in the device header and recorded by a
//!   [`FreshnessAnchor`] after each commit, so swapped, copied, stale or rolled-back blocks
//!   and metadata are detected;
//! * the data key is stored wrapped ([`KeyWrap`]): by KMS, or by a key the caller supplies
//!   ([`StaticKeyWrap`]).
//!
//! Reads that fail authentication return [`Error::Integrity`] naming the block (or the
//! metadata page and the blocks it covers); wrong data is never returned.
//!
//! # Crash consistency
//!
//! Every block, metadata page and tree page has **two slots** on the underlying device.
//! Writes never touch a slot the last commit refers to:
//!
//! 1. A data write encrypts each block into the slot *not* used by the last commit and
//!    records the new nonce/tag/version in the (in-memory) metadata page. Nothing the last
//!    commit refers to is overwritten, so a crash at any point leaves that commit intact.
//! 2. A flush commits: each changed metadata page is written to its free slot, the hashes
//!    are propagated up the tree (each changed tree page also to its free slot), then the
//!    underlying device is flushed — data and pages are now durable, but unreferenced.
//! 3. The header with generation *g+1* and the new root is written to header slot
//!    *(g+1) mod 2* (the older header stays in the other slot) and the device is flushed
//!    again: this single 4 KiB write is the commit point.
//! 4. The freshness anchor records *(g+1, root)*; only then does the flush complete.
//!
//! On open, both headers are authenticated and the highest valid generation wins; a torn or
//! missing newest header falls back to the previous commit, whose pages were not touched.
//! So after a crash of the enclave or of the parent, every write acknowledged by a completed
//! flush reads back intact, and writes in flight read back as their old or new content
//! (whole multi-block writes are atomic with respect to commits). A failed flush leaves the
//! on-disk state uncertain, so the device then refuses further I/O ([`Error::Poisoned`])
//! until it is reopened, which recovers the last commit.
//!
//! The price is twice the raw capacity for data (plus about 1 % for metadata), and no write
//! amplification for data. [`SealedDevice::raw_size_for`] computes the underlying size for a
//! wanted capacity.
//!
//! # Freshness
//!
//! Without an anchor, nothing stops the parent from presenting a consistent *older* image
//! of the whole device. The anchor closes that gap whenever it is newer than the data: the
//! default [`MemoryAnchor::global`] lasts as long as the enclave process; an anchor outside
//! the parent's reach (a remote service, a KMS-protected counter) lasts across restarts.

mod keys;
#[cfg(feature = "kms")]
mod kms;
mod layout;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use futures_util::future::try_join_all;

pub use keys::{
    AnchorState, DataKey, DeviceId, FreshnessAnchor, KeyWrap, MemoryAnchor, StaticKeyWrap,
};
#[cfg(feature = "kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "kms")))]
pub use kms::KmsKeyWrap;
use layout::{BLOCK, ENTRIES_PER_PAGE, Entry, FANOUT, Geometry, Header, state};

use crate::device::{BlockDevice, check_range};
use crate::error::{Error, IntegrityError, Result, display_chain};
use crate::sync::lock;

/// Lock shards for concurrent block access.
const SHARDS: u64 = 4096;
/// Blocks per lock group (64 KiB): a 1 MiB request takes 16 locks, a 4 KiB one takes 1.
const LOCK_GROUP: u64 = 16;

/// Settings of a [`SealedDevice`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SealedConfig {
    /// Where the latest committed state is recorded. Default: [`MemoryAnchor::global`].
    pub anchor: Arc<dyn FreshnessAnchor>,
    /// Metadata and tree pages (4 KiB each) kept in memory. Default 4096 (16 MiB, enough to
    /// cover about 1.6 GiB of data without re-reading metadata).
    pub cache_pages: usize,
    /// Changed metadata pages after which a commit happens by itself, bounding memory and
    /// the work of the next flush. Default 8192 (32 MiB of metadata, covering 3.2 GiB of
    /// changed data; a device smaller than that only commits when flushed).
    pub dirty_limit: usize,
    /// The identity the device must have ([`SealedConfig::expect_device`]). Default: none.
    pub expected_device: Option<DeviceId>,
}

impl Default for SealedConfig {
    fn default() -> Self {
        Self {
            anchor: Arc::new(MemoryAnchor::global()),
            cache_pages: 4096,
            dirty_limit: 8192,
            expected_device: None,
        }
    }
}

impl SealedConfig {
    /// Uses `anchor` as the freshness anchor.
    pub fn with_anchor(mut self, anchor: impl FreshnessAnchor + 'static) -> Self {
        self.anchor = Arc::new(anchor);
        self
    }

    /// Binds [`SealedDevice::open`] to the device `id` (e.g. kept in the enclave's attested
    /// configuration): a header of another device is [`Error::UnexpectedDevice`], and no
    /// authentic header of `id` (zeros, both copies damaged) is
    /// [`Error::SealedDeviceMissing`] instead of [`Error::NotSealed`], so that a parent
    /// cannot make the enclave re-create a volume. [`SealedDevice::create`] refuses a
    /// configuration with an expected device.
    pub fn expect_device(mut self, id: DeviceId) -> Self {
        self.expected_device = Some(id);
        self
    }
}

impl fmt::Debug for SealedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedConfig")
            .field("cache_pages", &self.cache_pages)
            .field("dirty_limit", &self.dirty_limit)
            .field("expected_device", &self.expected_device)
            .finish_non_exhaustive()
    }
}

/// Result of [`SealedDevice::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Logical blocks of the device.
    pub blocks: u64,
    /// Blocks holding data (the others read as zeroes).
    pub blocks_in_use: u64,
    /// Everything that failed authentication.
    pub failures: Vec<IntegrityError>,
}

/// Encryption, integrity and rollback detection over an untrusted [`BlockDevice`]; see the
/// [module documentation](self) for the format and its guarantees.
///
/// ```
/// use nitro_fs::sealed::{SealedConfig, SealedDevice, StaticKeyWrap};
/// use nitro_fs::{BlockDevice, MemDevice};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let untrusted = MemDevice::new(SealedDevice::<MemDevice>::raw_size_for(1 << 20) as usize);
/// let key = StaticKeyWrap::new(&[7; 32])?;
/// let dev = SealedDevice::create(untrusted.clone(), &key, SealedConfig::default()).await?;
/// dev.write_at(0, b"secret record").await?;
/// dev.flush().await?;
/// drop(dev);
///
/// // The parent flips one bit of the stored ciphertext...
/// let data_at = untrusted.snapshot().len() - 2 * (1 << 20); // data slots come last
/// untrusted.with_bytes(|b| b[data_at + 3] ^= 1);
/// let dev = SealedDevice::open(untrusted, &key, SealedConfig::default()).await?;
/// let mut buf = [0u8; 13];
/// let err = dev.read_at(0, &mut buf).await.unwrap_err();
/// assert!(err.is_integrity(), "{err}"); // ...and the enclave notices.
/// # Ok::<(), nitro_fs::Error>(())
/// # }).unwrap();
/// ```
pub struct SealedDevice<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for SealedDevice<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D> fmt::Debug for SealedDevice<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("SealedDevice")
            .field("device", &self.inner.device)
            .field("blocks", &self.inner.geo.blocks)
            .field("generation", &st.generation)
            .finish_non_exhaustive()
    }
}

struct Inner<D> {
    dev: D,
    geo: Geometry,
    device: DeviceId,
    cipher: LessSafeKey,
    header_key: hmac::Key,
    scheme: String,
    wrapped_key: Vec<u8>,
    anchor: Arc<dyn FreshnessAnchor>,
    cache_pages: usize,
    dirty_limit: usize,
    state: Mutex<State>,
    /// Shared by reads and writes, exclusive for commits.
    commit_lock: tokio::sync::RwLock<()>,
    /// Per-block locks (sharded): shared for reads, exclusive for writes.
    shards: Vec<tokio::sync::RwLock<()>>,
    nonces: Mutex<NonceGen>,
    poisoned: Mutex<Option<String>>,
    rng: SystemRandom,
}

struct State {
    generation: u64,
    root: [u8; 32],
    pages: HashMap<(u8, u64), Page>,
    dirty: HashSet<(u8, u64)>,
}

struct Page {
    /// Current content (including uncommitted changes).
    data: Box<[u8]>,
    /// Slot holding the committed content (`None`: all zeroes, nothing stored).
    slot: Option<u8>,
    /// For changed metadata pages: the committed content (to find committed data slots).
    committed: Option<Box<[u8]>>,
}

impl State {
    fn page_mut(&mut self, key: (u8, u64)) -> Result<&mut Page> {
        self.pages
            .get_mut(&key)
            .ok_or(Error::Crypto("internal: page vanished from the cache"))
    }

    /// Marks a page changed (pinning it in the cache).
    fn mark_dirty(&mut self, key: (u8, u64)) -> Result<&mut Page> {
        let newly = self.dirty.insert(key);
        let p = self
            .pages
            .get_mut(&key)
            .ok_or(Error::Crypto("internal: page vanished from the cache"))?;
        if newly && key.0 == 0 {
            p.committed = Some(p.data.clone());
        }
        Ok(p)
    }

    fn evict(&mut self, capacity: usize, keep: (u8, u64)) {
        if self.pages.len() <= capacity {
            return;
        }
        let excess = self.pages.len() - capacity * 9 / 10;
        let victims: Vec<_> = self
            .pages
            .keys()
            .filter(|k| **k != keep && !self.dirty.contains(k))
            .take(excess)
            .copied()
            .collect();
        for k in victims {
            self.pages.remove(&k);
        }
    }
}

struct NonceGen {
    prefix: [u8; 8],
    counter: u32,
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    rng.fill(&mut b)
        .map_err(|_| Error::Crypto("random number generator failed"))?;
    Ok(b)
}

impl<D: BlockDevice> SealedDevice<D> {
    /// Underlying bytes needed for a sealed device with (at least) `logical_bytes` of
    /// capacity.
    pub fn raw_size_for(logical_bytes: u64) -> u64 {
        let blocks = logical_bytes.div_ceil(BLOCK as u64).max(1);
        Geometry::new(blocks).map_or(0, |g| g.raw_bytes())
    }

    /// Initialises a new sealed device on `dev`, using all of it, with a fresh identity and
    /// data key. Anything previously stored on `dev` becomes unreadable.
    ///
    /// Never call this because [`open`](Self::open) failed: the parent controls the storage
    /// and can make `open` fail at will (serving zeros). [`open_volume`](Self::open_volume)
    /// creates a device only when the freshness anchor proves the volume new.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `config` expects a particular device
    /// ([`SealedConfig::expect_device`]), I/O, key-wrap and anchor errors.
    pub async fn create(dev: D, key_wrap: &dyn KeyWrap, config: SealedConfig) -> Result<Self> {
        if let Some(id) = config.expected_device {
            return Err(Error::invalid(format!(
                "the configuration expects the existing sealed device {id}; refusing to create a new one"
            )));
        }
        check_underlying(&dev)?;
        let geo = Geometry::fitting(dev.size())?;
        let rng = SystemRandom::new();
        let device = DeviceId(random(&rng)?);
        let (key, wrapped_key) = key_wrap.generate(&device).await?;
        let header = Header {
            device,
            blocks: geo.blocks,
            generation: 1,
            root: [0; 32],
            scheme: key_wrap.scheme().to_owned(),
            wrapped_key,
        };
        let inner = Inner::new(dev, geo, &key, &header, config)?;
        let page = header.encode(&inner.header_key)?;
        inner.dev.write_at(0, &vec![0u8; BLOCK]).await?;
        inner.dev.write_at(BLOCK as u64, &page).await?;
        inner.dev.flush().await?;
        inner
            .anchor
            .store(
                &device,
                AnchorState {
                    generation: 1,
                    root: [0; 32],
                },
            )
            .await?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Opens a sealed device: authenticates its header, unwraps its key, checks the
    /// freshness anchor, and recovers the last commit.
    ///
    /// With [`SealedConfig::expect_device`], only headers of that device are considered.
    ///
    /// # Errors
    ///
    /// [`Error::NotSealed`] when no header is found and no device is expected;
    /// [`Error::SealedDeviceMissing`] / [`Error::UnexpectedDevice`] when the expected device
    /// is not there; [`Error::Integrity`], [`Error::Rollback`], key-wrap, anchor and I/O
    /// errors.
    pub async fn open(dev: D, key_wrap: &dyn KeyWrap, config: SealedConfig) -> Result<Self> {
        match config.expected_device {
            None => Self::open_checked(dev, key_wrap, config).await,
            Some(expected) => {
                Self::open_checked(dev, key_wrap, config)
                    .await
                    .map_err(|e| match e {
                        Error::NotSealed(reason)
                        | Error::Integrity(IntegrityError::Header(reason)) => {
                            Error::SealedDeviceMissing { expected, reason }
                        }
                        e => e,
                    })
            }
        }
    }

    async fn open_checked(dev: D, key_wrap: &dyn KeyWrap, config: SealedConfig) -> Result<Self> {
        check_underlying(&dev)?;
        let mut pages = vec![0u8; 2 * BLOCK];
        dev.read_at(0, &mut pages).await?;
        let mut candidates = Vec::new();
        let mut parse_error = None;
        let mut foreign = None;
        for slot in 0..2 {
            let page = &pages[slot * BLOCK..(slot + 1) * BLOCK];
            match Header::parse_unauthenticated(page) {
                Ok(Some(h)) => match config.expected_device {
                    Some(expected) if h.device != expected => foreign = Some(h.device),
                    _ => candidates.push((h, page)),
                },
                Ok(None) => {}
                Err(e) => parse_error = Some(e),
            }
        }
        if candidates.is_empty() {
            if let (Some(expected), Some(found)) = (config.expected_device, foreign) {
                return Err(Error::UnexpectedDevice { expected, found });
            }
            return Err(parse_error
                .unwrap_or_else(|| Error::NotSealed("no sealed-device header found".into())));
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0.generation));
        let mut unwrapped: Vec<(Vec<u8>, DeviceId, DataKey)> = Vec::new();
        let mut key_error = None;
        let mut chosen = None;
        for (h, page) in &candidates {
            let known = unwrapped
                .iter()
                .find(|(w, d, _)| *w == h.wrapped_key && *d == h.device)
                .map(|(_, _, k)| k.clone());
            let key = match known {
                Some(k) => k,
                None => match key_wrap.unwrap(&h.device, &h.wrapped_key).await {
                    Ok(k) => {
                        unwrapped.push((h.wrapped_key.clone(), h.device, k.clone()));
                        k
                    }
                    Err(e) => {
                        key_error = Some(e);
                        continue;
                    }
                },
            };
            let keys = layout::derive_keys(&key, &h.device)?;
            if Header::authenticate(page, &keys.header) {
                chosen = Some((h.clone(), key));
                break;
            }
        }
        let Some((header, key)) = chosen else {
            return Err(key_error.unwrap_or_else(|| {
                Error::Integrity(IntegrityError::Header(
                    "neither header copy authenticates".into(),
                ))
            }));
        };
        let geo = Geometry::new(header.blocks)
            .map_err(|_| Error::Integrity(IntegrityError::Header("bad geometry".into())))?;
        if geo.raw_bytes() > dev.size() {
            return Err(Error::Integrity(IntegrityError::Header(format!(
                "the header describes {} bytes but the device has {}",
                geo.raw_bytes(),
                dev.size()
            ))));
        }
        let anchor = config.anchor.clone();
        match anchor.load(&header.device).await? {
            Some(a) if a.generation > header.generation => {
                return Err(Error::Rollback {
                    anchor_generation: a.generation,
                    device_generation: header.generation,
                });
            }
            Some(a) if a.generation == header.generation => {
                if a.root != header.root {
                    return Err(Error::Integrity(IntegrityError::Fork {
                        generation: a.generation,
                    }));
                }
            }
            _ => {
                anchor
                    .store(
                        &header.device,
                        AnchorState {
                            generation: header.generation,
                            root: header.root,
                        },
                    )
                    .await?;
            }
        }
        let inner = Inner::new(dev, geo, &key, &header, config)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Opens the sealed device of the volume named `volume`, creating it only when the
    /// freshness anchor proves the volume new. Returns the device and whether it was created.
    ///
    /// The anchor ([`SealedConfig::anchor`]) keeps which [`DeviceId`] each volume is bound to
    /// ([`FreshnessAnchor::bound_device`]):
    ///
    /// * bound: the device is opened with that identity expected
    ///   ([`SealedConfig::expect_device`]); zeros, damaged headers or another device are
    ///   [`Error::SealedDeviceMissing`] / [`Error::UnexpectedDevice`] — never a fresh device;
    /// * not bound (first boot, as far as the anchor knows): if the configuration expects a
    ///   device (attested configuration), it is opened and bound; otherwise, if neither header
    ///   slot holds a sealed-device header, a device is created and bound; if a device is
    ///   there it is opened and bound; anything else (a damaged header) is an error.
    ///
    /// The protection is as durable as the anchor: [`MemoryAnchor`] forgets its bindings when
    /// the enclave restarts, after which the parent could again present a blank device. Keep
    /// the identity in attested configuration ([`SealedConfig::expect_device`], which this
    /// honours) or use a persistent anchor to close that gap.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use nitro_fs::sealed::{MemoryAnchor, SealedConfig, SealedDevice, StaticKeyWrap};
    /// use nitro_fs::{BlockDevice, Error, MemDevice};
    /// let raw = MemDevice::new(SealedDevice::<MemDevice>::raw_size_for(1 << 20) as usize);
    /// let config = SealedConfig::default().with_anchor(MemoryAnchor::new());
    /// let key = StaticKeyWrap::new(&[7; 32])?;
    /// let (dev, created) = SealedDevice::open_volume(raw.clone(), &key, config.clone(), "data").await?;
    /// assert!(created);
    /// drop(dev);
    /// // The parent serves zeros: the volume is not silently re-created.
    /// raw.with_bytes(|b| b.fill(0));
    /// let err = SealedDevice::open_volume(raw, &key, config, "data").await.unwrap_err();
    /// assert!(matches!(err, Error::SealedDeviceMissing { .. }), "{err}");
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open) and [`create`](Self::create); [`Error::Anchor`] if the anchor
    /// keeps no volume bindings or refuses the binding; [`Error::UnexpectedDevice`] if the
    /// configuration expects a device other than the one bound.
    pub async fn open_volume(
        dev: D,
        key_wrap: &dyn KeyWrap,
        config: SealedConfig,
        volume: &str,
    ) -> Result<(Self, bool)> {
        let anchor = config.anchor.clone();
        let bound = anchor.bound_device(volume).await?;
        let expected = match (bound, config.expected_device) {
            (Some(b), Some(c)) if b != c => {
                return Err(Error::UnexpectedDevice {
                    expected: c,
                    found: b,
                });
            }
            (b, c) => b.or(c),
        };
        if let Some(id) = expected {
            let dev = Self::open(dev, key_wrap, config.expect_device(id)).await?;
            if bound.is_none() {
                anchor.bind_device(volume, id).await?;
            }
            return Ok((dev, false));
        }
        // The anchor proves a first boot. Create only on storage without any header.
        let mut pages = vec![0u8; 2 * BLOCK];
        if dev.size() >= pages.len() as u64 {
            dev.read_at(0, &mut pages).await?;
        }
        let blank = pages
            .chunks(BLOCK)
            .all(|p| matches!(Header::parse_unauthenticated(p), Ok(None)));
        let (dev, created) = if blank {
            (Self::create(dev, key_wrap, config).await?, true)
        } else {
            (Self::open(dev, key_wrap, config).await?, false)
        };
        anchor.bind_device(volume, dev.device_id()).await?;
        Ok((dev, created))
    }

    /// The device identity.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device
    }

    /// The last committed generation.
    pub fn generation(&self) -> u64 {
        self.inner.state().generation
    }

    /// The hash-tree root of the last commit.
    pub fn root(&self) -> [u8; 32] {
        self.inner.state().root
    }

    /// The key-wrap scheme recorded in the header.
    pub fn key_scheme(&self) -> &str {
        &self.inner.scheme
    }

    /// The underlying (untrusted) device.
    pub fn underlying(&self) -> &D {
        &self.inner.dev
    }

    /// Where block `block` lives on the underlying (untrusted) device: the byte offsets of its
    /// two data slots and of the two slots of its metadata page. For forensics, and for
    /// demonstrating tamper detection.
    pub fn physical_offsets(&self, block: u64) -> ([u64; 2], [u64; 2]) {
        let g = &self.inner.geo;
        let page = block / ENTRIES_PER_PAGE;
        (
            [g.data_offset(block, 0), g.data_offset(block, 1)],
            [g.page_offset(0, page, 0), g.page_offset(0, page, 1)],
        )
    }

    /// Reads and authenticates every metadata page and every block in use, and reports
    /// what failed (a scrub). Runs concurrently with other I/O.
    pub async fn check(&self) -> Result<CheckReport> {
        let inner = &self.inner;
        inner.check_poisoned()?;
        let _c = inner.commit_lock.read().await;
        let mut report = CheckReport {
            blocks: inner.geo.blocks,
            blocks_in_use: 0,
            failures: Vec::new(),
        };
        for page in 0..inner.geo.levels[0] {
            let entries = match inner.with_page(0, page, |p| p.data.clone()).await {
                Ok(e) => e,
                Err(Error::Integrity(e)) => {
                    report.failures.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let first = page * ENTRIES_PER_PAGE;
            let count = ENTRIES_PER_PAGE.min(inner.geo.blocks - first);
            let futs = (0..count).filter_map(|i| {
                let e = Entry::read(&entries, i as usize);
                let slot = e.slot()?;
                Some(async move {
                    let mut buf = vec![0u8; BLOCK];
                    inner
                        .dev
                        .read_at(inner.geo.data_offset(first + i, slot), &mut buf)
                        .await?;
                    Ok::<_, Error>(inner.open_block(first + i, &e, &mut buf).err())
                })
            });
            for failure in try_join_all(futs).await? {
                report.blocks_in_use += 1;
                if let Some(Error::Integrity(e)) = failure {
                    report.failures.push(e);
                }
            }
        }
        Ok(report)
    }

    async fn lock_shared(
        &self,
        first: u64,
        last: u64,
    ) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let mut guards = Vec::new();
        for s in shard_set(first, last) {
            guards.push(self.inner.shards[s as usize].read().await);
        }
        guards
    }

    async fn lock_exclusive(
        &self,
        first: u64,
        last: u64,
    ) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let mut guards = Vec::new();
        for s in shard_set(first, last) {
            guards.push(self.inner.shards[s as usize].write().await);
        }
        guards
    }

    /// Applies a write (or, with `data == None`, zeroes) to `offset..offset+len`.
    async fn modify(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        let inner = &self.inner;
        check_range(inner.geo.logical_bytes(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        {
            let _c = inner.commit_lock.read().await;
            inner.check_poisoned()?;
            let b = BLOCK as u64;
            let first = offset / b;
            let last = (offset + len - 1) / b;
            let _locks = self.lock_exclusive(first, last).await;
            let head = !offset.is_multiple_of(b);
            let tail = !(offset + len).is_multiple_of(b);
            match data {
                Some(data) if !head && !tail => inner.write_blocks(first, data).await?,
                None if !head && !tail => inner.zero_blocks(first, last).await?,
                _ => {
                    // Read-modify-write of the partial first and last blocks.
                    let nblocks = (last - first + 1) as usize;
                    let mut buf = vec![0u8; nblocks * BLOCK];
                    if head {
                        inner.read_blocks(first, &mut buf[..BLOCK]).await?;
                    }
                    if tail && (last != first || !head) {
                        inner
                            .read_blocks(last, &mut buf[(nblocks - 1) * BLOCK..])
                            .await?;
                    }
                    let start = (offset - first * b) as usize;
                    let dst = &mut buf[start..start + len as usize];
                    match data {
                        Some(d) => dst.copy_from_slice(d),
                        None => dst.fill(0),
                    }
                    inner.write_blocks(first, &buf).await?;
                }
            }
        }
        if inner.state().dirty.len() > inner.dirty_limit {
            inner.commit().await?;
        }
        Ok(())
    }
}

/// Parses a header page the way [`SealedDevice::open`] does before authenticating it.
pub(crate) fn parse_header_for_fuzzing(page: &[u8]) -> bool {
    matches!(Header::parse_unauthenticated(page), Ok(Some(_)))
}

fn check_underlying<D: BlockDevice>(dev: &D) -> Result<()> {
    let min = dev.min_block_size().max(1) as usize;
    if !BLOCK.is_multiple_of(min) {
        return Err(Error::invalid(format!(
            "the underlying device needs {min}-byte alignment; a sealed device needs a divisor of {BLOCK}"
        )));
    }
    Ok(())
}

/// The sorted, distinct lock shards of blocks `first..=last`.
fn shard_set(first: u64, last: u64) -> Vec<u64> {
    let (first, last) = (first / LOCK_GROUP, last / LOCK_GROUP);
    if last - first + 1 >= SHARDS {
        return (0..SHARDS).collect();
    }
    let mut v: Vec<u64> = (first..=last).map(|g| g % SHARDS).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl<D: BlockDevice> Inner<D> {
    fn new(
        dev: D,
        geo: Geometry,
        key: &DataKey,
        header: &Header,
        config: SealedConfig,
    ) -> Result<Self> {
        let keys = layout::derive_keys(key, &header.device)?;
        let cipher = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &keys.block)
                .map_err(|_| Error::Crypto("AES-256-GCM key setup failed"))?,
        );
        let rng = SystemRandom::new();
        let prefix = random(&rng)?;
        Ok(Self {
            dev,
            geo,
            device: header.device,
            cipher,
            header_key: keys.header,
            scheme: header.scheme.clone(),
            wrapped_key: header.wrapped_key.clone(),
            anchor: config.anchor,
            cache_pages: config.cache_pages.max(16),
            dirty_limit: config.dirty_limit.max(1),
            state: Mutex::new(State {
                generation: header.generation,
                root: header.root,
                pages: HashMap::new(),
                dirty: HashSet::new(),
            }),
            commit_lock: tokio::sync::RwLock::new(()),
            shards: (0..SHARDS).map(|_| tokio::sync::RwLock::new(())).collect(),
            nonces: Mutex::new(NonceGen { prefix, counter: 0 }),
            poisoned: Mutex::new(None),
            rng,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn check_poisoned(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn next_nonce(&self) -> Result<[u8; 12]> {
        let mut g = lock(&self.nonces);
        if g.counter == u32::MAX {
            g.prefix = random(&self.rng)?;
            g.counter = 0;
        }
        g.counter += 1;
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&g.prefix);
        n[8..].copy_from_slice(&g.counter.to_be_bytes());
        Ok(n)
    }

    /// Runs `f` on a cached page, loading and verifying it first if needed.
    async fn with_page<R>(
        &self,
        level: u8,
        index: u64,
        f: impl FnOnce(&mut Page) -> R,
    ) -> Result<R> {
        loop {
            {
                let mut st = self.state();
                if let Some(p) = st.pages.get_mut(&(level, index)) {
                    return Ok(f(p));
                }
            }
            self.load_page(level, index).await?;
        }
    }

    /// Like [`with_page`](Self::with_page), marking the page changed first (which pins it
    /// in the cache until the next commit).
    async fn with_dirty_page<R>(
        &self,
        level: u8,
        index: u64,
        f: impl FnOnce(&mut Page) -> R,
    ) -> Result<R> {
        loop {
            {
                let mut st = self.state();
                if st.pages.contains_key(&(level, index)) {
                    return Ok(f(st.mark_dirty((level, index))?));
                }
            }
            self.load_page(level, index).await?;
        }
    }

    /// Reads a page from its slots and verifies it against its parent (or the root).
    fn load_page(&self, level: u8, index: u64) -> crate::device::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let expected = if level == self.geo.top() {
                self.state().root
            } else {
                let child = (index % FANOUT) as usize * 32;
                self.with_page(level + 1, index / FANOUT, |p| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(&p.data[child..child + 32]);
                    h
                })
                .await?
            };
            let page = if expected == [0; 32] {
                Page {
                    data: vec![0u8; BLOCK].into_boxed_slice(),
                    slot: None,
                    committed: None,
                }
            } else {
                let mut both = vec![0u8; 2 * BLOCK];
                self.dev
                    .read_at(self.geo.page_offset(level, index, 0), &mut both)
                    .await?;
                let mut found = None;
                for slot in 0..2u8 {
                    let content = &both[slot as usize * BLOCK..(slot as usize + 1) * BLOCK];
                    if layout::page_hash(&self.device, level, index, content) == expected {
                        found = Some(Page {
                            data: content.to_vec().into_boxed_slice(),
                            slot: Some(slot),
                            committed: None,
                        });
                        break;
                    }
                }
                found.ok_or_else(|| self.geo.page_error(level, index))?
            };
            let mut st = self.state();
            st.pages.entry((level, index)).or_insert(page);
            st.evict(self.cache_pages, (level, index));
            Ok(())
        })
    }

    fn open_block(&self, block: u64, e: &Entry, buf: &mut [u8]) -> Result<()> {
        let aad = layout::block_aad(&self.device, block, e.version);
        self.cipher
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(e.nonce),
                Aad::from(aad),
                &e.tag,
                buf,
            )
            .map(|_| ())
            .map_err(|_| Error::Integrity(IntegrityError::Block { index: block }))
    }

    /// Reads and authenticates whole blocks starting at `first` (callers hold the locks).
    async fn read_blocks(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let n = (buf.len() / BLOCK) as u64;
        let mut entries = Vec::with_capacity(n as usize);
        // One cache lookup per metadata page, not per block.
        let mut b = first;
        while b < first + n {
            let page = b / ENTRIES_PER_PAGE;
            let end = ((page + 1) * ENTRIES_PER_PAGE).min(first + n);
            self.with_page(0, page, |p| {
                for x in b..end {
                    entries.push(Entry::read(&p.data, (x % ENTRIES_PER_PAGE) as usize));
                }
            })
            .await?;
            b = end;
        }
        // Runs of consecutive blocks in the same slot become one read; each run is decrypted
        // straight from the buffer it arrived in into `buf`.
        let mut runs = Vec::new();
        let mut k = 0usize;
        while k < entries.len() {
            let slot = entries[k].slot();
            let mut j = k + 1;
            while j < entries.len() && entries[j].slot() == slot {
                j += 1;
            }
            match slot {
                Some(s) => runs.push((k, j, s)),
                None => buf[k * BLOCK..j * BLOCK].fill(0),
            }
            k = j;
        }
        let reads = runs.iter().map(|&(k, j, s)| {
            self.dev
                .read_to_vec(self.geo.data_offset(first + k as u64, s), (j - k) * BLOCK)
        });
        let data = try_join_all(reads).await?;
        for (&(k, j, _), cipher) in runs.iter().zip(data) {
            if cipher.len() != (j - k) * BLOCK {
                return Err(Error::Crypto(
                    "internal: short read from the underlying device",
                ));
            }
            for i in k..j {
                let block = first + i as u64;
                let e = &entries[i];
                self.cipher
                    .open_separate_gather(
                        Nonce::assume_unique_for_key(e.nonce),
                        Aad::from(layout::block_aad(&self.device, block, e.version)),
                        &cipher[(i - k) * BLOCK..(i - k + 1) * BLOCK],
                        &e.tag,
                        &mut buf[i * BLOCK..(i + 1) * BLOCK],
                    )
                    .map_err(|_| Error::Integrity(IntegrityError::Block { index: block }))?;
            }
            crate::server::give_buffer(cipher);
        }
        Ok(())
    }

    /// Encrypts and writes whole blocks starting at `first` (callers hold the locks).
    async fn write_blocks(&self, first: u64, data: &[u8]) -> Result<()> {
        let n = (data.len() / BLOCK) as u64;
        // Pin the metadata pages and find each block's free slot.
        let mut slots = Vec::with_capacity(n as usize);
        let version = self.state().generation + 1;
        let mut b = first;
        while b < first + n {
            let page = b / ENTRIES_PER_PAGE;
            let end = ((page + 1) * ENTRIES_PER_PAGE).min(first + n);
            self.with_dirty_page(0, page, |p| {
                let c = p.committed.as_deref().unwrap_or(&p.data);
                for x in b..end {
                    slots.push(
                        match Entry::read(c, (x % ENTRIES_PER_PAGE) as usize).slot() {
                            Some(s) => 1 - s,
                            None => 0,
                        },
                    );
                }
            })
            .await?;
            b = end;
        }
        let mut cipher = crate::server::take_buffer(data.len());
        let mut entries = Vec::with_capacity(n as usize);
        for (k, (chunk, plain)) in cipher.chunks_mut(BLOCK).zip(data.chunks(BLOCK)).enumerate() {
            let b = first + k as u64;
            let nonce = self.next_nonce()?;
            let mut t = [0u8; 16];
            self.cipher
                .seal_out_of_place_scatter(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(layout::block_aad(&self.device, b, version)),
                    plain,
                    chunk,
                    &[],
                    &mut t,
                )
                .map_err(|_| Error::Crypto("AES-GCM sealing failed"))?;
            entries.push(Entry {
                nonce,
                tag: t,
                version,
                state: if slots[k] == 0 {
                    state::SLOT0
                } else {
                    state::SLOT1
                },
            });
        }
        let mut futs = Vec::new();
        let mut k = 0usize;
        while k < slots.len() {
            let mut j = k + 1;
            while j < slots.len() && slots[j] == slots[k] {
                j += 1;
            }
            futs.push(self.dev.write_at(
                self.geo.data_offset(first + k as u64, slots[k]),
                &cipher[k * BLOCK..j * BLOCK],
            ));
            k = j;
        }
        try_join_all(futs).await?;
        crate::server::give_buffer(cipher);
        let mut st = self.state();
        for (k, e) in entries.iter().enumerate() {
            let b = first + k as u64;
            let p = st.page_mut((0, b / ENTRIES_PER_PAGE))?;
            e.write(&mut p.data, (b % ENTRIES_PER_PAGE) as usize);
        }
        Ok(())
    }

    /// Marks whole blocks `first..=last` as zero (callers hold the locks).
    async fn zero_blocks(&self, first: u64, last: u64) -> Result<()> {
        let mut page = first / ENTRIES_PER_PAGE;
        while page * ENTRIES_PER_PAGE <= last {
            let lo = (page * ENTRIES_PER_PAGE).max(first);
            let hi = ((page + 1) * ENTRIES_PER_PAGE - 1).min(last);
            self.with_dirty_page(0, page, |p| {
                for b in lo..=hi {
                    Entry::default().write(&mut p.data, (b % ENTRIES_PER_PAGE) as usize);
                }
            })
            .await?;
            page += 1;
        }
        Ok(())
    }

    fn poison(&self, why: String) {
        tracing::error!(reason = %why, "sealed device flush failed; reopen it to recover the last commit");
        let mut g = lock(&self.poisoned);
        if g.is_none() {
            *g = Some(why);
        }
    }

    /// Commits all changes (the flush).
    async fn commit(&self) -> Result<()> {
        let _c = self.commit_lock.write().await;
        self.check_poisoned()?;
        if self.state().dirty.is_empty() {
            return self.dev.flush().await;
        }
        match self.commit_locked().await {
            Ok(anchored) => anchored,
            Err(e) => {
                self.poison(display_chain(&e));
                Err(e)
            }
        }
    }

    /// The commit protocol; the outer error means "state uncertain", the inner one that
    /// only the anchor update failed (the commit itself is durable).
    async fn commit_locked(&self) -> Result<Result<()>> {
        let geo = &self.geo;
        let generation = self.state().generation + 1;
        let mut writes: Vec<(u64, Box<[u8]>)> = Vec::new();
        let mut new_slots: Vec<((u8, u64), Option<u8>)> = Vec::new();
        let mut discards: Vec<u64> = Vec::new();
        let mut root = [0u8; 32];
        for level in 0..=geo.top() {
            let mut keys: Vec<u64> = self
                .state()
                .dirty
                .iter()
                .filter(|k| k.0 == level)
                .map(|k| k.1)
                .collect();
            keys.sort_unstable();
            for index in keys {
                let (content, hash, slot) = {
                    let mut st = self.state();
                    let p = st.page_mut((level, index))?;
                    if let Some(old) = &p.committed {
                        // Blocks that no longer hold data: free both their slots afterwards.
                        for i in 0..ENTRIES_PER_PAGE as usize {
                            if Entry::read(old, i).slot().is_some()
                                && Entry::read(&p.data, i).slot().is_none()
                            {
                                discards.push(index * ENTRIES_PER_PAGE + i as u64);
                            }
                        }
                    }
                    let hash = layout::page_hash(&self.device, level, index, &p.data);
                    (p.data.clone(), hash, p.slot)
                };
                let new_slot = if hash == [0; 32] {
                    None
                } else {
                    Some(slot.map_or(0, |s| 1 - s))
                };
                if let Some(s) = new_slot {
                    writes.push((geo.page_offset(level, index, s), content));
                }
                new_slots.push(((level, index), new_slot));
                if level == geo.top() {
                    root = hash;
                } else {
                    let parent = (level + 1, index / FANOUT);
                    let at = (index % FANOUT) as usize * 32;
                    self.with_dirty_page(parent.0, parent.1, |p| {
                        p.data[at..at + 32].copy_from_slice(&hash);
                    })
                    .await?;
                }
            }
        }
        try_join_all(writes.iter().map(|(off, b)| self.dev.write_at(*off, b))).await?;
        self.dev.flush().await?;
        let header = Header {
            device: self.device,
            blocks: geo.blocks,
            generation,
            root,
            scheme: self.scheme.clone(),
            wrapped_key: self.wrapped_key.clone(),
        }
        .encode(&self.header_key)?;
        self.dev
            .write_at((generation % 2) * BLOCK as u64, &header)
            .await?;
        self.dev.flush().await?;
        // Durable: the new generation is the recovery point now.
        {
            let mut st = self.state();
            st.generation = generation;
            st.root = root;
            for (key, slot) in new_slots {
                let p = st.page_mut(key)?;
                p.slot = slot;
                p.committed = None;
            }
            st.dirty.clear();
            st.evict(self.cache_pages, (geo.top(), 0));
        }
        let anchored = self
            .anchor
            .store(&self.device, AnchorState { generation, root })
            .await;
        // Free the slots of zeroed blocks (a hint; failures are harmless).
        let b = BLOCK as u64;
        let trims = discards
            .iter()
            .flat_map(|&blk| [0u8, 1].map(|s| self.dev.trim(geo.data_offset(blk, s), b)));
        if let Err(e) = try_join_all(trims).await {
            tracing::debug!(error = %display_chain(&e), "trimming freed blocks failed");
        }
        Ok(anchored)
    }
}

impl<D: BlockDevice> BlockDevice for SealedDevice<D> {
    fn size(&self) -> u64 {
        self.inner.geo.logical_bytes()
    }

    fn block_size(&self) -> u32 {
        BLOCK as u32
    }

    fn is_read_only(&self) -> bool {
        self.inner.dev.is_read_only()
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let inner = &self.inner;
        check_range(inner.geo.logical_bytes(), offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        inner.check_poisoned()?;
        let b = BLOCK as u64;
        let first = offset / b;
        let last = (offset + buf.len() as u64 - 1) / b;
        let aligned = offset.is_multiple_of(b) && buf.len().is_multiple_of(BLOCK);
        let mut tmp = Vec::new();
        let target: &mut [u8] = if aligned {
            buf
        } else {
            tmp = vec![0u8; ((last - first + 1) * b) as usize];
            &mut tmp
        };
        // Optimistically without locks: a block entry names the exact ciphertext (nonce and
        // tag), so a concurrent write to the same block can only make authentication fail,
        // never return wrong data. On failure, read again with the locks held, and only a
        // failure then is an integrity error.
        if let Err(e) = inner.read_blocks(first, target).await {
            if !matches!(e, Error::Integrity(IntegrityError::Block { .. })) {
                return Err(e);
            }
            let _c = inner.commit_lock.read().await;
            inner.check_poisoned()?;
            let _locks = self.lock_shared(first, last).await;
            inner.read_blocks(first, target).await?;
        }
        if !aligned {
            let start = (offset - first * b) as usize;
            buf.copy_from_slice(&tmp[start..start + buf.len()]);
        }
        Ok(())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        self.modify(offset, data.len() as u64, Some(data)).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.commit().await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, true).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        self.modify(offset, len, None).await
    }
}
