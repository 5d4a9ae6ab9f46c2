//! Container images without a daemon: OCI image layouts (directory or tar) and `docker save`
//! archives (directory or tar, optionally gzip/zstd-compressed), flattened into one file tree.
//!
//! Layers are applied in order with OCI whiteouts (`.wh.NAME` deletes `NAME` from lower
//! layers, `.wh..wh..opq` empties a directory of lower-layer contents) and gzip, zstd or plain
//! tar compression (detected from the bytes, not the media type). Blob digests (OCI descriptors)
//! and layer `diff_ids` (image config) are verified while the layers stream by. Regular file
//! contents are copied once into an anonymous spool file; only metadata stays in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest;
use serde_json::Value;

use crate::cpio::{CpioArchive, Data, Entry, Kind, normalize};
use crate::error::{Error, Result};
use crate::format::Arch;

/// Largest JSON document (index, manifest, config) read from an image.
const MAX_JSON: u64 = 16 << 20;

/// Default cap on the unpacked size of an image ([`ImageOptions::max_unpacked()`]): 4 GiB. The
/// ramdisk has to fit in the enclave's memory anyway.
pub const DEFAULT_MAX_UNPACKED: u64 = 4 << 30;

/// How to pick one image out of a layout or archive that holds several.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImageOptions {
    /// Image reference to select: matched against `docker save` `RepoTags` and the OCI
    /// `org.opencontainers.image.ref.name` / `io.containerd.image.name` annotations (full name
    /// or tag). Needed only when the input holds several images.
    pub reference: Option<String>,
    /// Platform to select from a multi-platform index (default: the kernel's architecture when
    /// built through [`EifBuilder`](crate::EifBuilder) is not known yet, so the host's).
    pub arch: Option<Arch>,
    /// Cap on the unpacked size, in bytes (`None`: [`DEFAULT_MAX_UNPACKED`]). It bounds the
    /// running total of the logical sizes of all regular files in all layers (a sparse member
    /// counts with its full logical size, a file overwritten by a later layer still counts),
    /// and every decompression: the outer archive when it is compressed, and each layer's
    /// decompressed tar stream (including anything after its end-of-archive blocks). Exceeding
    /// it fails with [`Error::ImageTooLarge`] before the offending member is spooled.
    pub max_unpacked: Option<u64>,
}

impl ImageOptions {
    /// Options capping the unpacked size at `bytes` (see the field of the same name).
    pub fn max_unpacked(mut self, bytes: u64) -> Self {
        self.max_unpacked = Some(bytes);
        self
    }

    fn limit(&self) -> u64 {
        self.max_unpacked.unwrap_or(DEFAULT_MAX_UNPACKED)
    }

    /// Options selecting `reference`.
    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// Options selecting the platform for `arch`.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = Some(arch);
        self
    }
}

/// What an image's config says about how to run it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ImageConfig {
    /// `architecture` (`amd64`, `arm64`).
    pub architecture: String,
    /// `os` (`linux`).
    pub os: String,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env` (`NAME=value`).
    pub env: Vec<String>,
    /// `config.WorkingDir` (empty if unset).
    pub working_dir: String,
    /// `config.User` (empty if unset). The AWS init runs the application as root regardless.
    pub user: String,
    /// The whole config document.
    pub raw: Value,
}

impl ImageConfig {
    fn from_json(raw: Value) -> Result<Self> {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let list = |v: Option<&Value>, what: &str| -> Result<Vec<String>> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_owned).ok_or_else(|| {
                            Error::Image(format!("config {what} has a non-string element"))
                        })
                    })
                    .collect(),
                Some(_) => Err(Error::Image(format!("config {what} is not an array"))),
            }
        };
        let c = raw.get("config");
        Ok(ImageConfig {
            architecture: s(raw.get("architecture")),
            os: s(raw.get("os")),
            entrypoint: list(c.and_then(|c| c.get("Entrypoint")), "Entrypoint")?,
            cmd: list(c.and_then(|c| c.get("Cmd")), "Cmd")?,
            env: list(c.and_then(|c| c.get("Env")), "Env")?,
            working_dir: s(c.and_then(|c| c.get("WorkingDir"))),
            user: s(c.and_then(|c| c.get("User"))),
            raw,
        })
    }

    /// The architecture as an [`Arch`], if Nitro Enclaves support it.
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_oci_name(&self.architecture)
    }
}

/// A flattened image: its config and its file tree (paths relative to the image root).
pub(crate) struct LoadedImage {
    pub(crate) config: ImageConfig,
    pub(crate) tree: CpioArchive,
    pub(crate) name: String,
}

// ---------------------------------------------------------------------------------------------
// Blob stores: a directory, or an (uncompressed) tar file indexed by member name.

enum Member {
    Data { offset: u64, size: u64 },
    Link(Vec<u8>),
}

enum Store {
    Dir(PathBuf),
    Tar {
        file: Arc<File>,
        members: HashMap<Vec<u8>, Member>,
    },
}

/// A reader over `size` bytes of a shared file at `offset` (positional reads, no shared cursor).
struct Slice {
    file: Arc<File>,
    offset: u64,
    left: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let want = usize::try_from(self.left.min(buf.len() as u64)).unwrap_or(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member truncated",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Resolves `..` and `.` in a path relative to the archive root (for symlink targets inside an
/// archive); `None` if it escapes the root.
fn resolve(base_dir: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let joined: Vec<&[u8]> = if target.first() == Some(&b'/') {
        target.split(|&b| b == b'/').collect()
    } else {
        base_dir
            .split(|&b| b == b'/')
            .chain(target.split(|&b| b == b'/'))
            .collect()
    };
    for c in joined {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

/// A reader that fails once more than `left` bytes came through it (a decompression bomb
/// guard); `tripped` records that this, and not a format error, stopped the read.
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: Arc<std::sync::atomic::AtomicBool>,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
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

fn sniff(r: &mut dyn BufRead) -> io::Result<Compression> {
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
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn decompress<'a>(r: impl BufRead + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
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

impl Store {
    fn open(path: &Path, limit: u64) -> Result<Store> {
        let ctx = |e| Error::io(format!("reading {}", path.display()), e);
        let meta = std::fs::metadata(path).map_err(ctx)?;
        if meta.is_dir() {
            // Members are resolved beneath the canonical root (see `Store::dir_member`).
            return Ok(Store::Dir(std::fs::canonicalize(path).map_err(ctx)?));
        }
        let mut f = BufReader::new(File::open(path).map_err(ctx)?);
        let file = match sniff(&mut f).map_err(ctx)? {
            Compression::None => f.into_inner(),
            _ => {
                // A compressed archive cannot be indexed: decompress it to a temporary file.
                let mut tmp =
                    tempfile::tempfile().map_err(|e| Error::io("creating a temporary file", e))?;
                let mut d = Capped::new(decompress(f).map_err(ctx)?, limit);
                let tripped = Arc::clone(&d.tripped);
                if let Err(e) = io::copy(&mut d, &mut tmp) {
                    if tripped.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(Error::ImageTooLarge {
                            what: format!("the decompressed archive {}", path.display()),
                            limit,
                        });
                    }
                    return Err(ctx(e));
                }
                tmp
            }
        };
        let file = Arc::new(file);
        let mut members = HashMap::new();
        {
            let mut reader = &*file;
            reader.seek(SeekFrom::Start(0)).map_err(ctx)?;
            let mut ar = tar::Archive::new(reader);
            let entries = ar.entries_with_seek().map_err(|e| {
                Error::Image(format!("{} is not a tar archive: {e}", path.display()))
            })?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::Image(format!("{}: {e}", path.display())))?;
                let Ok(name) = normalize(&entry.path_bytes()) else {
                    continue;
                };
                let et = entry.header().entry_type();
                let member = if et.is_file() {
                    Member::Data {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    }
                } else if et.is_symlink() || et.is_hard_link() {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let base: &[u8] = if et.is_symlink() {
                        name.rsplit_once_byte(b'/').map(|(d, _)| d).unwrap_or(b"")
                    } else {
                        b""
                    };
                    match resolve(base, &target) {
                        Some(t) => Member::Link(t),
                        None => continue,
                    }
                } else {
                    continue;
                };
                members.insert(name, member);
            }
        }
        Ok(Store::Tar { file, members })
    }

    fn describe(&self) -> String {
        match self {
            Store::Dir(p) => p.display().to_string(),
            Store::Tar { .. } => "archive".into(),
        }
    }

    /// The file for member `name` of a directory store, resolved beneath the root: symbolic
    /// links are followed only while they stay inside it, as in the tar form of the same
    /// archive. `Ok(None)` if there is no such member.
    fn dir_member(root: &Path, name: &str) -> Result<Option<PathBuf>> {
        let norm = normalize(name.as_bytes())
            .map_err(|e| Error::Image(format!("bad path {name:?}: {e}")))?;
        if norm.is_empty() {
            return Ok(None);
        }
        let joined = root.join(std::ffi::OsStr::from_bytes(&norm));
        let real = match std::fs::canonicalize(&joined) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("resolving {}", joined.display()), e)),
        };
        if !real.starts_with(root) {
            return Err(Error::Image(format!(
                "{name:?} resolves to {}, outside the image directory {}",
                real.display(),
                root.display()
            )));
        }
        Ok(Some(real))
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => {
                matches!(Self::dir_member(d, name), Ok(Some(p)) if p.is_file())
            }
            Store::Tar { members, .. } => members.contains_key(name.as_bytes()),
        }
    }

    /// Opens member `name` and returns a reader and its size.
    fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Store::Dir(d) => {
                let p = Self::dir_member(d, name)?
                    .ok_or_else(|| Error::Image(format!("{} has no file {name:?}", d.display())))?;
                let f =
                    File::open(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                let meta = f
                    .metadata()
                    .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                if !meta.is_file() {
                    return Err(Error::Image(format!("{name:?} is not a regular file")));
                }
                Ok((Box::new(f), meta.len()))
            }
            Store::Tar { file, members } => {
                let mut key = normalize(name.as_bytes())
                    .map_err(|e| Error::Image(format!("bad path {name:?}: {e}")))?;
                for _ in 0..16 {
                    match members.get(&key) {
                        Some(Member::Data { offset, size }) => {
                            return Ok((
                                Box::new(Slice {
                                    file: Arc::clone(file),
                                    offset: *offset,
                                    left: *size,
                                }),
                                *size,
                            ));
                        }
                        Some(Member::Link(t)) => key = t.clone(),
                        None => break,
                    }
                }
                Err(Error::Image(format!("archive has no member {name:?}")))
            }
        }
    }

    fn read_json(&self, name: &str, digest: Option<&str>) -> Result<Value> {
        let (r, len) = self.open_member(name)?;
        if len > MAX_JSON {
            return Err(Error::Image(format!(
                "{name} is {len} bytes (limit {MAX_JSON})"
            )));
        }
        let mut buf = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("reading {name}"), e))?;
        if let Some(d) = digest {
            let v = Verifier::new(d)?;
            if !v.matches(&digest_of(v.alg, &buf)) {
                return Err(Error::Image(format!(
                    "{name} does not match its digest {d}"
                )));
            }
        }
        serde_json::from_slice(&buf).map_err(|e| Error::Image(format!("{name}: {e}")))
    }
}

trait RsplitOnce {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])>;
}

impl RsplitOnce for Vec<u8> {
    fn rsplit_once_byte(&self, b: u8) -> Option<(&[u8], &[u8])> {
        let i = self.iter().rposition(|&x| x == b)?;
        Some((&self[..i], &self[i + 1..]))
    }
}

// ---------------------------------------------------------------------------------------------
// Digests.

struct Verifier {
    alg: &'static digest::Algorithm,
    expected: Vec<u8>,
    text: String,
}

impl Verifier {
    fn new(d: &str) -> Result<Self> {
        let (alg_name, hex_part) = d
            .split_once(':')
            .ok_or_else(|| Error::Image(format!("bad digest {d:?}")))?;
        let alg = match alg_name {
            "sha256" => &digest::SHA256,
            "sha512" => &digest::SHA512,
            _ => {
                return Err(Error::Image(format!(
                    "unsupported digest algorithm in {d:?}"
                )));
            }
        };
        let expected =
            hex::decode(hex_part).map_err(|_| Error::Image(format!("bad digest {d:?}")))?;
        if expected.len() != alg.output_len() || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::Image(format!("bad digest {d:?}")));
        }
        Ok(Verifier {
            alg,
            expected,
            text: d.to_owned(),
        })
    }

    fn blob_path(&self) -> String {
        let (a, h) = self.text.split_once(':').unwrap_or(("sha256", ""));
        format!("blobs/{a}/{h}")
    }

    fn matches(&self, got: &[u8]) -> bool {
        got == self.expected.as_slice()
    }
}

fn digest_of(alg: &'static digest::Algorithm, data: &[u8]) -> Vec<u8> {
    digest::digest(alg, data).as_ref().to_vec()
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    ctx: Option<digest::Context>,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &mut self.ctx {
            c.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R, alg: Option<&'static digest::Algorithm>) -> Self {
        Hashing {
            inner,
            ctx: alg.map(digest::Context::new),
            count: 0,
        }
    }

    fn finish(&mut self) -> Option<Vec<u8>> {
        self.ctx.take().map(|c| c.finish().as_ref().to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Picking the image.

struct Layer {
    path: String,
    /// Digest of the stored (possibly compressed) blob, and its size.
    blob: Option<(Verifier, u64)>,
}

struct Picked {
    config: ImageConfig,
    layers: Vec<Layer>,
    name: String,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn is_index(desc_type: Option<&str>, doc: &Value) -> bool {
    match desc_type {
        Some(t) if INDEX_TYPES.contains(&t) => true,
        Some(t) if t.ends_with("manifest.v1+json") || t.ends_with("manifest.v2+json") => false,
        _ => doc.get("manifests").is_some() && doc.get("layers").is_none(),
    }
}

fn ref_matches(wanted: &str, names: &[&str]) -> bool {
    names.iter().any(|n| {
        *n == wanted
            || n.strip_prefix("docker.io/library/") == Some(wanted)
            || n.strip_prefix("docker.io/") == Some(wanted)
            || n.rsplit_once(':').map(|(_, tag)| tag) == Some(wanted) && !wanted.contains(':')
    })
}

fn desc_names(d: &Value) -> Vec<&str> {
    let a = d.get("annotations");
    [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .filter_map(|k| a.and_then(|a| a.get(*k)).and_then(Value::as_str))
    .collect()
}

fn platform_arch(d: &Value) -> Option<(&str, &str)> {
    let p = d.get("platform")?;
    Some((
        p.get("architecture")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        p.get("os").and_then(Value::as_str).unwrap_or_default(),
    ))
}

fn pick_oci(store: &Store, opts: &ImageOptions) -> Result<Picked> {
    let index = store.read_json("index.json", None)?;
    let target = opts.arch.or_else(Arch::host).unwrap_or(Arch::X86_64);
    let mut desc: Value = {
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Image("index.json has no manifests".into()))?;
        let mut cands: Vec<&Value> = manifests.iter().collect();
        if let Some(r) = &opts.reference {
            cands.retain(|d| ref_matches(r, &desc_names(d)));
            if cands.is_empty() {
                return Err(Error::Image(format!("no image named {r:?} in index.json")));
            }
        }
        if cands.len() > 1 {
            cands.retain(|d| match platform_arch(d) {
                Some((a, os)) => a == target.oci_name() && (os == "linux" || os.is_empty()),
                None => true,
            });
        }
        match cands.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::Image(format!(
                    "index.json has no image for {target}"
                )));
            }
            many => {
                let names: Vec<String> = many
                    .iter()
                    .flat_map(|d| desc_names(d))
                    .map(str::to_owned)
                    .collect();
                return Err(Error::Image(format!(
                    "index.json holds several images ({}); select one by reference",
                    names.join(", ")
                )));
            }
        }
    };
    let name = desc_names(&desc)
        .first()
        .map(|s| (*s).to_owned())
        .unwrap_or_default();
    for _ in 0..8 {
        let digest = desc
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Image("descriptor without digest".into()))?;
        let v = Verifier::new(digest)?;
        let doc = store.read_json(&v.blob_path(), Some(digest))?;
        if is_index(desc.get("mediaType").and_then(Value::as_str), &doc) {
            let manifests = doc
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Image("image index without manifests".into()))?;
            let found = manifests.iter().find(|d| {
                platform_arch(d).is_some_and(|(a, os)| {
                    a == target.oci_name() && (os == "linux" || os.is_empty())
                })
            });
            desc = found
                .ok_or_else(|| {
                    Error::Image(format!(
                        "the image index has no linux/{} image",
                        target.oci_name()
                    ))
                })?
                .clone();
            continue;
        }
        let cdesc = doc
            .get("config")
            .ok_or_else(|| Error::Image("manifest without config".into()))?;
        let cdigest = cdesc
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Image("config descriptor without digest".into()))?;
        let config = ImageConfig::from_json(
            store.read_json(&Verifier::new(cdigest)?.blob_path(), Some(cdigest))?,
        )?;
        let mut layers = Vec::new();
        for l in doc
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = l
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Image("layer descriptor without digest".into()))?;
            let size = l.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let v = Verifier::new(d)?;
            layers.push(Layer {
                path: v.blob_path(),
                blob: Some((v, size)),
            });
        }
        return Ok(Picked {
            config,
            layers,
            name,
        });
    }
    Err(Error::Image("image indexes nested too deeply".into()))
}

fn pick_docker(store: &Store, opts: &ImageOptions) -> Result<Picked> {
    let manifest = store.read_json("manifest.json", None)?;
    let items = manifest
        .as_array()
        .ok_or_else(|| Error::Image("manifest.json is not an array".into()))?;
    let tags = |m: &Value| -> Vec<String> {
        m.get("RepoTags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut cands: Vec<&Value> = items.iter().collect();
    if let Some(r) = &opts.reference {
        cands.retain(|m| {
            let t = tags(m);
            ref_matches(r, &t.iter().map(String::as_str).collect::<Vec<_>>())
        });
    }
    let m = match cands.as_slice() {
        [one] => *one,
        [] => return Err(Error::Image("manifest.json has no matching image".into())),
        many => {
            let names: Vec<String> = many.iter().flat_map(|m| tags(m)).collect();
            return Err(Error::Image(format!(
                "manifest.json holds several images ({}); select one by reference",
                names.join(", ")
            )));
        }
    };
    let cpath = m
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Image("manifest.json entry without Config".into()))?;
    let config = ImageConfig::from_json(store.read_json(cpath, None)?)?;
    let layers = m
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Image("manifest.json entry without Layers".into()))?
        .iter()
        .map(|l| {
            l.as_str()
                .map(|p| Layer {
                    path: p.to_owned(),
                    blob: None,
                })
                .ok_or_else(|| Error::Image("non-string layer path".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let name = tags(m).first().cloned().unwrap_or_default();
    Ok(Picked {
        config,
        layers,
        name,
    })
}

// ---------------------------------------------------------------------------------------------
// Applying layers.

struct Spool {
    out: BufWriter<File>,
    len: u64,
    /// The cap on `len`: the running total of logical bytes of all regular files.
    limit: u64,
}

impl Spool {
    fn add(&mut self, r: &mut dyn Read, expected: u64, what: &[u8]) -> Result<Data> {
        // Refuse before copying anything: `expected` is the member's logical size (for a sparse
        // member, holes included), which is what the spool and the ramdisk will hold.
        if self
            .len
            .checked_add(expected)
            .is_none_or(|t| t > self.limit)
        {
            return Err(Error::ImageTooLarge {
                what: format!(
                    "{} ({expected} bytes, after {} bytes of earlier files)",
                    String::from_utf8_lossy(what),
                    self.len
                ),
                limit: self.limit,
            });
        }
        let offset = self.len;
        let n = io::copy(&mut r.take(expected.saturating_add(1)), &mut self.out)
            .map_err(|e| Error::io(format!("unpacking {}", String::from_utf8_lossy(what)), e))?;
        if n != expected {
            return Err(Error::Image(format!(
                "{}: {n} bytes, header says {expected}",
                String::from_utf8_lossy(what)
            )));
        }
        self.len += n;
        Ok(Data::Spool { offset, len: n })
    }
}

enum Change {
    Put(Vec<u8>, Entry),
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
}

fn apply_layer(
    tree: &mut CpioArchive,
    spool: &mut Spool,
    layer: &mut dyn Read,
    what: &str,
) -> Result<()> {
    let bad = |e: io::Error| Error::Image(format!("layer {what}: {e}"));
    let mut ar = tar::Archive::new(layer);
    let mut changes: Vec<Change> = Vec::new();
    let mut upper: HashMap<Vec<u8>, Entry> = HashMap::new();
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = normalize(&raw_path).map_err(|e| Error::Image(format!("layer {what}: {e}")))?;
        if path.is_empty() {
            continue; // the root directory itself
        }
        let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.clone()),
        };
        if base == b".wh..wh..opq" {
            changes.push(Change::Opaque(dir));
            continue;
        }
        if base.starts_with(b".wh..wh.") {
            continue; // other AUFS metadata
        }
        if let Some(name) = base.strip_prefix(b".wh.") {
            let mut p = dir.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            changes.push(Change::Whiteout(p));
            continue;
        }
        if entry.header().entry_type() == tar::EntryType::Link {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::Image(format!("layer {what}: hard link without target")))?;
            let target =
                normalize(&target).map_err(|e| Error::Image(format!("layer {what}: {e}")))?;
            let found = upper
                .get(&target)
                .or_else(|| tree.entries.get(&target))
                .cloned()
                .ok_or_else(|| {
                    Error::Image(format!(
                        "layer {what}: hard link {} to missing {}",
                        String::from_utf8_lossy(&path),
                        String::from_utf8_lossy(&target)
                    ))
                })?;
            changes.push(Change::Put(path.clone(), found.clone()));
            upper.insert(path, found);
            continue;
        }
        let h = entry.header();
        let perm = h.mode().map_err(bad)? & 0o7777;
        let id = |v: io::Result<u64>, raw: &[u8], name: &str| -> Result<u32> {
            match v {
                Ok(n) => u32::try_from(n)
                    .map_err(|_| Error::Image(format!("layer {what}: {name} too large"))),
                // An empty field (all NUL or spaces) is written by some tools for root.
                Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
                Err(e) => Err(bad(e)),
            }
        };
        let uid = id(h.uid(), &h.as_old().uid, "uid")?;
        let gid = id(h.gid(), &h.as_old().gid, "gid")?;
        let et = h.entry_type();
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                Kind::File(spool.add(&mut entry, size, &path)?)
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(
                entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::Image(format!("layer {what}: symlink without target")))?
                    .into_owned(),
            ),
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = h.device_major().map_err(bad)?.unwrap_or(0);
                let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                if et == tar::EntryType::Char {
                    Kind::Char { major, minor }
                } else {
                    Kind::Block { major, minor }
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            _ => continue, // pax/global headers are consumed by the tar reader; others are not files
        };
        let e = Entry {
            kind,
            perm,
            uid,
            gid,
        };
        upper.insert(path.clone(), e.clone());
        changes.push(Change::Put(path, e));
    }
    // Whiteouts apply to the lower layers only, then this layer's entries go on top.
    for c in &changes {
        match c {
            Change::Opaque(d) => tree.remove_children(d),
            Change::Whiteout(p) => tree.remove_tree(p),
            Change::Put(..) => {}
        }
    }
    for c in changes {
        if let Change::Put(p, e) = c {
            tree.insert_overlay(&p, e)?;
        }
    }
    Ok(())
}

impl CpioArchive {
    /// Inserts like [`CpioArchive::insert`], but a non-directory parent (e.g. a lower layer's
    /// symlink) is replaced by a directory, as an overlay filesystem would show it.
    fn insert_overlay(&mut self, path: &[u8], entry: Entry) -> Result<()> {
        let mut i = 0;
        while let Some(pos) = path[i..].iter().position(|&b| b == b'/') {
            let parent = &path[..i + pos];
            if self.entries.get(parent).is_some_and(|e| !e.is_dir()) {
                self.entries.insert(parent.to_vec(), Entry::dir(0o755));
            }
            i += pos + 1;
        }
        if let (Some(old), Kind::Dir) = (self.entries.get(path), &entry.kind)
            && old.is_dir()
        {
            {
                // Same directory in a higher layer: new metadata, contents kept.
                self.entries.insert(path.to_vec(), entry);
                return Ok(());
            }
        }
        self.insert(path, entry)
    }
}

/// Loads and flattens the image at `path`.
pub(crate) fn load(path: &Path, opts: &ImageOptions) -> Result<LoadedImage> {
    let limit = opts.limit();
    let store = Store::open(path, limit)?;
    let picked = if store.exists("index.json")
        && (store.exists("oci-layout") || !store.exists("manifest.json"))
    {
        pick_oci(&store, opts)?
    } else if store.exists("manifest.json") {
        pick_docker(&store, opts)?
    } else {
        return Err(Error::Image(format!(
            "{} is neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)",
            path.display()
        )));
    };
    let diff_ids: Vec<Verifier> = match picked
        .config
        .raw
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
    {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|d| {
                d.as_str()
                    .ok_or_else(|| Error::Image("non-string diff_id".into()))
                    .and_then(Verifier::new)
            })
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    if !diff_ids.is_empty() && diff_ids.len() != picked.layers.len() {
        return Err(Error::Image(format!(
            "the config lists {} diff_ids for {} layers",
            diff_ids.len(),
            picked.layers.len()
        )));
    }
    let spool_file = tempfile::tempfile().map_err(|e| Error::io("creating the layer spool", e))?;
    let mut spool = Spool {
        out: BufWriter::with_capacity(1 << 20, spool_file),
        len: 0,
        limit,
    };
    let mut tree = CpioArchive::new();
    for (i, layer) in picked.layers.iter().enumerate() {
        let what = format!("{} ({})", i + 1, layer.path);
        let (r, size) = store.open_member(&layer.path)?;
        let mut blob = Hashing::new(r, layer.blob.as_ref().map(|(v, _)| v.alg));
        if let Some((_, want)) = &layer.blob
            && *want != u64::MAX
            && *want != size
        {
            return Err(Error::Image(format!(
                "layer {what}: {size} bytes, descriptor says {want}"
            )));
        }
        {
            let buffered = BufReader::with_capacity(1 << 20, &mut blob);
            let d = decompress(buffered).map_err(|e| Error::Image(format!("layer {what}: {e}")))?;
            let d = Capped::new(d, limit);
            let tripped = Arc::clone(&d.tripped);
            let too_large = || Error::ImageTooLarge {
                what: format!("the decompressed layer {what}"),
                limit,
            };
            let mut plain = Hashing::new(d, diff_ids.get(i).map(|v| v.alg));
            match apply_layer(&mut tree, &mut spool, &mut plain, &what) {
                Err(_) if tripped.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(too_large());
                }
                r => r?,
            }
            // Hash (and check) anything after the tar end-of-archive blocks too (still capped).
            if let Err(e) = io::copy(&mut plain, &mut io::sink()) {
                if tripped.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(too_large());
                }
                return Err(Error::Image(format!("layer {what}: {e}")));
            }
            if let (Some(v), Some(got)) = (diff_ids.get(i), plain.finish())
                && !v.matches(&got)
            {
                return Err(Error::Image(format!(
                    "layer {what} does not match diff_id {}",
                    v.text
                )));
            }
        }
        if let (Some((v, _)), Some(got)) = (&layer.blob, blob.finish())
            && !v.matches(&got)
        {
            return Err(Error::Image(format!(
                "layer {what} does not match its digest {}",
                v.text
            )));
        }
    }
    let file = spool
        .out
        .into_inner()
        .map_err(|e| Error::io("writing the layer spool", e.into_error()))?;
    file.sync_data().ok();
    tree.spool = Some(Arc::new(file));
    let _ = store.describe();
    Ok(LoadedImage {
        config: picked.config,
        tree,
        name: picked.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_paths() {
        assert_eq!(
            resolve(b"a/b", b"../c/layer.tar").as_deref(),
            Some(&b"a/c/layer.tar"[..])
        );
        assert_eq!(resolve(b"", b"/x/y").as_deref(), Some(&b"x/y"[..]));
        assert_eq!(resolve(b"a", b"../../x"), None);
    }

    #[test]
    fn references() {
        assert!(ref_matches("app:1", &["docker.io/library/app:1"]));
        assert!(ref_matches("1", &["app:1"]));
        assert!(!ref_matches("app:2", &["app:1"]));
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", hex::encode(digest_of(&digest::SHA256, b"x")));
        let v = Verifier::new(&d).unwrap_or_else(|e| panic!("{e}"));
        assert!(v.matches(&digest_of(&digest::SHA256, b"x")));
        assert!(v.blob_path().starts_with("blobs/sha256/"));
        assert!(Verifier::new("sha256:../../etc/passwd").is_err());
        assert!(Verifier::new("md5:00").is_err());
    }
}
