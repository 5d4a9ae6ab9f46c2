//! Blob stores: a directory, or an (uncompressed) tar file indexed by member name. A
//! compressed archive is decompressed once into an anonymous temporary file first.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::MAX_JSON;
use super::decompress::{Capped, Compression, decompress, sniff};
use super::digest::{Verifier, digest_of};
use crate::cpio::normalize;
use crate::error::{Error, Result};

pub(super) enum Member {
    Data { offset: u64, size: u64 },
    Link(Vec<u8>),
}

pub(super) enum Store {
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

impl Store {
    pub(super) fn open(path: &Path, limit: u64) -> Result<Store> {
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

    pub(super) fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => {
                matches!(Self::dir_member(d, name), Ok(Some(p)) if p.is_file())
            }
            Store::Tar { members, .. } => members.contains_key(name.as_bytes()),
        }
    }

    /// Opens member `name` and returns a reader and its size.
    pub(super) fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
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

    pub(super) fn read_json(&self, name: &str, digest: Option<&str>) -> Result<Value> {
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
}
