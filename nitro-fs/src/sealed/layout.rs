//! On-disk format of a sealed device (pure code: geometry, entries, hashes, header).

use aws_lc_rs::{digest, hkdf, hmac};

use super::keys::{DataKey, DeviceId};
use crate::error::{Error, IntegrityError, Result};

/// Size of a data block, a metadata page and a hash-tree page.
pub(crate) const BLOCK: usize = 4096;
/// Bytes per block entry in a metadata page.
pub(crate) const ENTRY: usize = 40;
/// Block entries per metadata page.
pub(crate) const ENTRIES_PER_PAGE: u64 = (BLOCK / ENTRY) as u64;
/// Child hashes per hash-tree page.
pub(crate) const FANOUT: u64 = (BLOCK / 32) as u64;
/// Header magic.
pub(crate) const MAGIC: &[u8; 8] = b"NITROFS1";
/// Header format version.
pub(crate) const VERSION: u32 = 1;
/// Longest key-wrap scheme name.
pub(crate) const MAX_SCHEME: usize = 64;
/// Longest wrapped key.
pub(crate) const MAX_WRAPPED: usize = 2048;
const SCHEME_AT: usize = 80;
const WRAPPED_AT: usize = SCHEME_AT + 2 + MAX_SCHEME;
const MAC_AT: usize = WRAPPED_AT + 2 + MAX_WRAPPED;

/// Where everything lives on the underlying device, in 4 KiB pages:
///
/// ```text
/// page 0, 1                      header slots (generation g is written to slot g % 2)
/// per tree level L = 0..=top     2 slots per page: level L page p at level_base[L] + 2p + s
/// data                           2 slots per block: block i slot s at data_base + s*n + i
/// ```
///
/// Level 0 holds the metadata pages (one [`ENTRY`] per block); level L+1 holds the hashes
/// of level L's pages; the single page of the top level is hashed into the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Logical blocks.
    pub(crate) blocks: u64,
    /// Pages per tree level (level 0 = metadata pages); the last level has one page.
    pub(crate) levels: Vec<u64>,
    level_base: Vec<u64>,
    data_base: u64,
}

impl Geometry {
    /// Layout for `blocks` logical blocks.
    pub(crate) fn new(blocks: u64) -> Result<Self> {
        if blocks == 0 || blocks > (1u64 << 40) {
            return Err(Error::invalid(
                "a sealed device needs between 1 and 2^40 blocks",
            ));
        }
        let mut levels = vec![blocks.div_ceil(ENTRIES_PER_PAGE)];
        while let Some(&last) = levels.last() {
            if last <= 1 {
                break;
            }
            levels.push(last.div_ceil(FANOUT));
        }
        let mut level_base = Vec::with_capacity(levels.len());
        let mut next = 2u64;
        for &n in &levels {
            level_base.push(next);
            next += 2 * n;
        }
        Ok(Self {
            blocks,
            levels,
            level_base,
            data_base: next,
        })
    }

    /// The largest geometry that fits in `raw_bytes` of underlying storage.
    pub(crate) fn fitting(raw_bytes: u64) -> Result<Self> {
        let pages = raw_bytes / BLOCK as u64;
        let fits = |blocks: u64| Self::new(blocks).is_ok_and(|g| g.raw_pages() <= pages);
        // Each block costs 2 data pages plus 2/102 metadata pages and a little tree: start
        // from that estimate and adjust.
        let mut blocks = (pages * ENTRIES_PER_PAGE / (2 * ENTRIES_PER_PAGE + 3)).max(1);
        while fits(blocks + 1) {
            blocks += 1;
        }
        while blocks > 0 && !fits(blocks) {
            blocks -= 1;
        }
        if blocks == 0 {
            return Err(Error::invalid(format!(
                "{raw_bytes} bytes are too few for a sealed device"
            )));
        }
        Self::new(blocks)
    }

    /// Index of the top tree level.
    pub(crate) fn top(&self) -> u8 {
        (self.levels.len() - 1) as u8
    }

    /// Total underlying pages used.
    pub(crate) fn raw_pages(&self) -> u64 {
        self.data_base + 2 * self.blocks
    }

    /// Total underlying bytes used.
    pub(crate) fn raw_bytes(&self) -> u64 {
        self.raw_pages() * BLOCK as u64
    }

    /// Logical size in bytes.
    pub(crate) fn logical_bytes(&self) -> u64 {
        self.blocks * BLOCK as u64
    }

    /// Byte offset of slot `slot` of page `page` at tree level `level`.
    pub(crate) fn page_offset(&self, level: u8, page: u64, slot: u8) -> u64 {
        (self.level_base[level as usize] + 2 * page + u64::from(slot)) * BLOCK as u64
    }

    /// Byte offset of slot `slot` of data block `block`.
    pub(crate) fn data_offset(&self, block: u64, slot: u8) -> u64 {
        (self.data_base + u64::from(slot) * self.blocks + block) * BLOCK as u64
    }

    /// First and last logical block covered by a page.
    pub(crate) fn page_blocks(&self, level: u8, page: u64) -> (u64, u64) {
        let mut span = ENTRIES_PER_PAGE;
        for _ in 0..level {
            span = span.saturating_mul(FANOUT);
        }
        let first = page.saturating_mul(span);
        let last = first.saturating_add(span - 1).min(self.blocks - 1);
        (first, last)
    }

    /// The integrity error for page (`level`, `page`).
    pub(crate) fn page_error(&self, level: u8, page: u64) -> Error {
        let (first_block, last_block) = self.page_blocks(level, page);
        Error::Integrity(IntegrityError::Metadata {
            level,
            page,
            first_block,
            last_block,
        })
    }
}

/// State byte of a block entry.
pub(crate) mod state {
    /// Never written, trimmed or zeroed: reads as zeroes, no data stored.
    pub(crate) const ZERO: u8 = 0;
    /// Data in slot 0.
    pub(crate) const SLOT0: u8 = 1;
    /// Data in slot 1.
    pub(crate) const SLOT1: u8 = 2;
}

/// One block's metadata: how to find and authenticate its current content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Entry {
    /// AES-GCM nonce of the last write (unique per write).
    pub(crate) nonce: [u8; 12],
    /// AES-GCM tag.
    pub(crate) tag: [u8; 16],
    /// Commit generation in which the block was last written (bound into the AAD).
    pub(crate) version: u64,
    /// [`state`] byte.
    pub(crate) state: u8,
}

impl Entry {
    /// Decodes entry `index` of a metadata page.
    pub(crate) fn read(page: &[u8], index: usize) -> Self {
        let b = &page[index * ENTRY..(index + 1) * ENTRY];
        let mut e = Self::default();
        e.nonce.copy_from_slice(&b[0..12]);
        e.tag.copy_from_slice(&b[12..28]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[28..36]);
        e.version = u64::from_be_bytes(v);
        e.state = b[36];
        e
    }

    /// Encodes the entry into slot `index` of a metadata page.
    pub(crate) fn write(&self, page: &mut [u8], index: usize) {
        let b = &mut page[index * ENTRY..(index + 1) * ENTRY];
        if self.state == state::ZERO {
            b.fill(0);
            return;
        }
        b[0..12].copy_from_slice(&self.nonce);
        b[12..28].copy_from_slice(&self.tag);
        b[28..36].copy_from_slice(&self.version.to_be_bytes());
        b[36] = self.state;
        b[37..40].fill(0);
    }

    /// The data slot, if the block holds data.
    pub(crate) fn slot(&self) -> Option<u8> {
        match self.state {
            state::SLOT0 => Some(0),
            state::SLOT1 => Some(1),
            _ => None,
        }
    }
}

/// Associated data of block `index`: domain, device identity, block index, version.
pub(crate) fn block_aad(device: &DeviceId, index: u64, version: u64) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..16].copy_from_slice(b"nitro-fs blk v1\0");
    aad[16..32].copy_from_slice(&device.0);
    aad[32..40].copy_from_slice(&index.to_be_bytes());
    aad[40..48].copy_from_slice(&version.to_be_bytes());
    aad
}

/// Hash of a metadata or tree page, bound to its position. An all-zero page hashes to all
/// zeroes, so that unwritten parts of the tree need neither storage nor reads.
pub(crate) fn page_hash(device: &DeviceId, level: u8, index: u64, page: &[u8]) -> [u8; 32] {
    if page.iter().all(|&b| b == 0) {
        return [0; 32];
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"nitro-fs tree v1");
    ctx.update(&device.0);
    ctx.update(&[level]);
    ctx.update(&index.to_be_bytes());
    ctx.update(page);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Keys derived from the data key.
pub(crate) struct DerivedKeys {
    /// AES-256-GCM key for blocks.
    pub(crate) block: [u8; 32],
    /// HMAC-SHA256 key for headers.
    pub(crate) header: hmac::Key,
}

/// Derives the block and header keys (HKDF-SHA256, salt = device id).
pub(crate) fn derive_keys(key: &DataKey, device: &DeviceId) -> Result<DerivedKeys> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &device.0).extract(key.as_bytes());
    let expand = |info: &[u8]| -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        prk.expand(&[info], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| Error::Crypto("HKDF failed"))?;
        Ok(out)
    };
    let block = expand(b"nitro-fs v1 block key")?;
    let mut h = expand(b"nitro-fs v1 header key")?;
    let header = hmac::Key::new(hmac::HMAC_SHA256, &h);
    h.fill(0);
    Ok(DerivedKeys { block, header })
}

/// A device header: identity, geometry, wrapped key and the latest commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Device identity.
    pub(crate) device: DeviceId,
    /// Logical blocks.
    pub(crate) blocks: u64,
    /// Commit generation.
    pub(crate) generation: u64,
    /// Hash-tree root of that generation.
    pub(crate) root: [u8; 32],
    /// Key-wrap scheme.
    pub(crate) scheme: String,
    /// Wrapped data key.
    pub(crate) wrapped_key: Vec<u8>,
}

impl Header {
    /// Encodes and authenticates the header into one 4 KiB page.
    pub(crate) fn encode(&self, key: &hmac::Key) -> Result<Vec<u8>> {
        if self.scheme.len() > MAX_SCHEME || self.wrapped_key.len() > MAX_WRAPPED {
            return Err(Error::invalid("key-wrap scheme or wrapped key too long"));
        }
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        b[12..28].copy_from_slice(&self.device.0);
        b[28..32].copy_from_slice(&(BLOCK as u32).to_be_bytes());
        b[32..40].copy_from_slice(&self.blocks.to_be_bytes());
        b[40..48].copy_from_slice(&self.generation.to_be_bytes());
        b[48..80].copy_from_slice(&self.root);
        b[SCHEME_AT..SCHEME_AT + 2].copy_from_slice(&(self.scheme.len() as u16).to_be_bytes());
        b[SCHEME_AT + 2..SCHEME_AT + 2 + self.scheme.len()].copy_from_slice(self.scheme.as_bytes());
        b[WRAPPED_AT..WRAPPED_AT + 2]
            .copy_from_slice(&(self.wrapped_key.len() as u16).to_be_bytes());
        b[WRAPPED_AT + 2..WRAPPED_AT + 2 + self.wrapped_key.len()]
            .copy_from_slice(&self.wrapped_key);
        let tag = hmac::sign(key, &b[..MAC_AT]);
        b[MAC_AT..MAC_AT + 32].copy_from_slice(tag.as_ref());
        Ok(b)
    }

    /// Parses a header page without authenticating it (the key to do so is wrapped inside).
    /// `None` for a page that is not a header at all.
    pub(crate) fn parse_unauthenticated(b: &[u8]) -> Result<Option<Self>> {
        if b.len() < BLOCK || &b[0..8] != MAGIC {
            return Ok(None);
        }
        let bad = |why: &str| Error::Integrity(IntegrityError::Header(why.to_owned()));
        let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let be64 = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(a)
        };
        if be32(8) != VERSION {
            return Err(Error::NotSealed(format!(
                "unsupported sealed-device format version {}",
                be32(8)
            )));
        }
        if be32(28) != BLOCK as u32 {
            return Err(bad("unsupported block size"));
        }
        let mut device = [0u8; 16];
        device.copy_from_slice(&b[12..28]);
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[48..80]);
        let slen = u16::from_be_bytes([b[SCHEME_AT], b[SCHEME_AT + 1]]) as usize;
        let wlen = u16::from_be_bytes([b[WRAPPED_AT], b[WRAPPED_AT + 1]]) as usize;
        if slen > MAX_SCHEME || wlen > MAX_WRAPPED {
            return Err(bad("field length out of bounds"));
        }
        let scheme = std::str::from_utf8(&b[SCHEME_AT + 2..SCHEME_AT + 2 + slen])
            .map_err(|_| bad("scheme is not UTF-8"))?
            .to_owned();
        Ok(Some(Self {
            device: DeviceId(device),
            blocks: be64(32),
            generation: be64(40),
            root,
            scheme,
            wrapped_key: b[WRAPPED_AT + 2..WRAPPED_AT + 2 + wlen].to_vec(),
        }))
    }

    /// Checks the header's MAC.
    pub(crate) fn authenticate(page: &[u8], key: &hmac::Key) -> bool {
        page.len() >= MAC_AT + 32
            && hmac::verify(key, &page[..MAC_AT], &page[MAC_AT..MAC_AT + 32]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_consistent() {
        for blocks in [1u64, 2, 101, 102, 103, 102 * 128, 102 * 128 + 1, 1_000_000] {
            let g = Geometry::new(blocks).unwrap();
            assert_eq!(*g.levels.last().unwrap(), 1);
            assert!(g.levels[0] * ENTRIES_PER_PAGE >= blocks);
            // Regions do not overlap.
            let last_page = g.page_offset(g.top(), 0, 1);
            assert!(last_page < g.data_offset(0, 0));
            assert_eq!(g.data_offset(blocks - 1, 1) + BLOCK as u64, g.raw_bytes());
            let fit = Geometry::fitting(g.raw_bytes()).unwrap();
            assert!(fit.blocks >= blocks && fit.raw_bytes() <= g.raw_bytes() + BLOCK as u64 * 8);
        }
        assert!(Geometry::fitting(3 * 4096).is_err());
    }

    #[test]
    fn entries_and_headers_round_trip() {
        let mut page = vec![0u8; BLOCK];
        let e = Entry {
            nonce: [1; 12],
            tag: [2; 16],
            version: 7,
            state: state::SLOT1,
        };
        e.write(&mut page, 101);
        assert_eq!(Entry::read(&page, 101), e);
        assert_eq!(Entry::read(&page, 100), Entry::default());

        let dev = DeviceId([9; 16]);
        let keys = derive_keys(&DataKey::from_bytes([3; 32]), &dev).unwrap();
        let h = Header {
            device: dev,
            blocks: 1234,
            generation: 5,
            root: [4; 32],
            scheme: "x".into(),
            wrapped_key: vec![5; 60],
        };
        let mut b = h.encode(&keys.header).unwrap();
        assert!(Header::authenticate(&b, &keys.header));
        assert_eq!(Header::parse_unauthenticated(&b).unwrap(), Some(h));
        b[45] ^= 1;
        assert!(!Header::authenticate(&b, &keys.header));
        assert_eq!(Header::parse_unauthenticated(&[0u8; BLOCK]).unwrap(), None);
    }
}
