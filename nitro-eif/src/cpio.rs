//! A deterministic newc (`070701`) cpio writer.
//!
//! Entries are kept sorted by path (byte order, so a directory always precedes its contents),
//! numbered with sequential inode numbers, and written with a fixed mtime (0 unless set), so
//! the same inputs always give the same bytes. The exact archive size is known before a single
//! content byte is read ([`CpioArchive::len`]); contents are streamed from their files when
//! the archive is read ([`CpioArchive::reader`]), so memory stays small whatever the size.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::Arch;

const HEADER_LEN: u64 = 110;
const TRAILER: &[u8] = b"TRAILER!!!";

const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// Where a regular file's bytes come from.
#[derive(Clone)]
pub(crate) enum Data {
    Bytes(Arc<[u8]>),
    Path {
        path: PathBuf,
        len: u64,
    },
    /// A range of the archive's spool file (container image layers).
    #[cfg_attr(not(feature = "image"), allow(dead_code))]
    Spool {
        offset: u64,
        len: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Path { len, .. } | Data::Spool { len, .. } => *len,
        }
    }
}

/// The type of an entry.
#[derive(Clone)]
pub(crate) enum Kind {
    Dir,
    File(Data),
    Symlink(Vec<u8>),
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
    Socket,
}

/// One archive member (its path is the map key).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    /// Permission bits (`0o7777`).
    pub(crate) perm: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Entry {
    pub(crate) fn dir(perm: u32) -> Self {
        Entry {
            kind: Kind::Dir,
            perm,
            uid: 0,
            gid: 0,
        }
    }

    fn mode(&self) -> u32 {
        let t = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::Char { .. } => S_IFCHR,
            Kind::Block { .. } => S_IFBLK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
        };
        t | (self.perm & 0o7777)
    }

    fn data_len(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.len(),
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// Normalizes an archive path: strips leading `/` and `./`, collapses `//` and `.`, rejects
/// `..`, NUL and empty paths.
pub(crate) fn normalize(path: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if path.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "path {:?} contains a \"..\" component",
                    String::from_utf8_lossy(path)
                ));
            }
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

fn show(p: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(p))
}

/// A deterministic newc cpio archive under construction. See the module documentation.
///
/// ```
/// use nitro_eif::CpioArchive;
/// use std::io::Read;
///
/// let mut a = CpioArchive::new();
/// a.file("etc/motd", 0o644, b"hello\n".to_vec())?;   // etc/ is created (0755)
/// a.symlink("bin/sh", "busybox")?;
/// let mut bytes = Vec::new();
/// a.reader().read_to_end(&mut bytes)?;
/// assert_eq!(bytes.len() as u64, a.len());
/// assert_eq!(&bytes[..6], b"070701");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct CpioArchive {
    pub(crate) entries: BTreeMap<Vec<u8>, Entry>,
    mtime: u32,
    pub(crate) spool: Option<Arc<File>>,
    /// Architecture of the contents, when known (container images): checked against the kernel.
    pub(crate) arch: Option<(Arch, String)>,
}

impl fmt::Debug for CpioArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpioArchive")
            .field("entries", &self.entries.len())
            .field("len", &self.len())
            .field("mtime", &self.mtime)
            .finish()
    }
}

impl CpioArchive {
    /// An empty archive (it still has a trailer).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the modification time written for every entry (default 0).
    pub fn set_mtime(&mut self, mtime: u32) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// Adds a directory (missing parents are created with mode 0755).
    pub fn dir(&mut self, path: impl AsRef<[u8]>, perm: u32) -> Result<&mut Self> {
        self.insert(path.as_ref(), Entry::dir(perm))?;
        Ok(self)
    }

    /// Adds a regular file with in-memory contents.
    pub fn file(
        &mut self,
        path: impl AsRef<[u8]>,
        perm: u32,
        contents: impl Into<Vec<u8>>,
    ) -> Result<&mut Self> {
        let contents: Vec<u8> = contents.into();
        self.insert(
            path.as_ref(),
            Entry {
                kind: Kind::File(Data::Bytes(contents.into())),
                perm,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(self)
    }

    /// Adds a regular file whose contents are read from `source` when the archive is read. Its
    /// size is taken now; if the file changes size before then, reading fails.
    pub fn file_from_disk(
        &mut self,
        path: impl AsRef<[u8]>,
        perm: u32,
        source: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let source = source.as_ref();
        let meta = std::fs::metadata(source)
            .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
        if !meta.is_file() {
            return Err(Error::Unsupported {
                path: source.to_owned(),
                reason: "not a regular file".into(),
            });
        }
        self.insert(
            path.as_ref(),
            Entry {
                kind: Kind::File(Data::Path {
                    path: source.to_owned(),
                    len: meta.len(),
                }),
                perm,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(self)
    }

    /// Adds a symbolic link.
    pub fn symlink(
        &mut self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<&mut Self> {
        self.insert(
            path.as_ref(),
            Entry {
                kind: Kind::Symlink(target.as_ref().to_vec()),
                perm: 0o777,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(self)
    }

    /// Adds a character (`block == false`) or block device node.
    pub fn device(
        &mut self,
        path: impl AsRef<[u8]>,
        block: bool,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self> {
        let kind = if block {
            Kind::Block { major, minor }
        } else {
            Kind::Char { major, minor }
        };
        self.insert(
            path.as_ref(),
            Entry {
                kind,
                perm,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(self)
    }

    /// Adds a named pipe.
    pub fn fifo(&mut self, path: impl AsRef<[u8]>, perm: u32) -> Result<&mut Self> {
        self.insert(
            path.as_ref(),
            Entry {
                kind: Kind::Fifo,
                perm,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(self)
    }

    /// Adds the contents of directory `dir` under `prefix` (`""` for the archive root), without
    /// following symbolic links. Regular files, directories, symlinks, device nodes, fifos and
    /// sockets are kept with their permission bits; owner and group are set to 0 and times to the
    /// archive's mtime, so the result does not depend on who builds it or when. Hard links become
    /// independent copies. File contents are read when the archive is read.
    pub fn add_tree(
        &mut self,
        prefix: impl AsRef<[u8]>,
        dir: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let dir = dir.as_ref();
        let prefix = normalize(prefix.as_ref()).map_err(Error::InvalidArgument)?;
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::Unsupported {
                path: dir.to_owned(),
                reason: "not a directory".into(),
            });
        }
        if !prefix.is_empty() {
            self.insert(&prefix, Entry::dir(meta.mode() & 0o7777))?;
        }
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(dir.to_owned(), prefix)];
        while let Some((fs_dir, arc_dir)) = stack.pop() {
            let rd = std::fs::read_dir(&fs_dir)
                .map_err(|e| Error::io(format!("listing {}", fs_dir.display()), e))?;
            for item in rd {
                let item =
                    item.map_err(|e| Error::io(format!("listing {}", fs_dir.display()), e))?;
                let fs_path = item.path();
                let name = item.file_name();
                let mut arc_path = arc_dir.clone();
                if !arc_path.is_empty() {
                    arc_path.push(b'/');
                }
                arc_path.extend_from_slice(name.as_bytes());
                let m = std::fs::symlink_metadata(&fs_path)
                    .map_err(|e| Error::io(format!("reading {}", fs_path.display()), e))?;
                let ft = m.file_type();
                let perm = m.mode() & 0o7777;
                let kind = if ft.is_dir() {
                    stack.push((fs_path.clone(), arc_path.clone()));
                    Kind::Dir
                } else if ft.is_file() {
                    Kind::File(Data::Path {
                        path: fs_path.clone(),
                        len: m.len(),
                    })
                } else if ft.is_symlink() {
                    let t = std::fs::read_link(&fs_path)
                        .map_err(|e| Error::io(format!("reading link {}", fs_path.display()), e))?;
                    Kind::Symlink(t.as_os_str().as_bytes().to_vec())
                } else if ft.is_char_device() || ft.is_block_device() {
                    let (major, minor) = split_dev(m.rdev());
                    if ft.is_char_device() {
                        Kind::Char { major, minor }
                    } else {
                        Kind::Block { major, minor }
                    }
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else if ft.is_socket() {
                    Kind::Socket
                } else {
                    return Err(Error::Unsupported {
                        path: fs_path,
                        reason: "unknown file type".into(),
                    });
                };
                self.insert(
                    &arc_path,
                    Entry {
                        kind,
                        perm,
                        uid: 0,
                        gid: 0,
                    },
                )?;
            }
        }
        Ok(self)
    }

    /// Inserts an entry, creating missing parent directories (0755). A non-directory replacing
    /// a directory removes the directory's contents.
    pub(crate) fn insert(&mut self, path: &[u8], entry: Entry) -> Result<()> {
        let path = normalize(path).map_err(Error::InvalidArgument)?;
        if path.is_empty() {
            return Err(Error::InvalidArgument("empty archive path".into()));
        }
        if path.len() > 4095 {
            return Err(Error::Unsupported {
                path: show(&path),
                reason: "path longer than 4095 bytes".into(),
            });
        }
        if entry.data_len() > u64::from(u32::MAX) {
            return Err(Error::Unsupported {
                path: show(&path),
                reason: "newc cpio cannot hold members of 4 GiB or more".into(),
            });
        }
        // Parents.
        let mut i = 0;
        while let Some(pos) = path[i..].iter().position(|&b| b == b'/') {
            let parent = &path[..i + pos];
            match self.entries.get(parent) {
                Some(e) if e.is_dir() => {}
                Some(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "{}: parent {} is not a directory",
                        show(&path).display(),
                        show(parent).display()
                    )));
                }
                None => {
                    self.entries.insert(parent.to_vec(), Entry::dir(0o755));
                }
            }
            i += pos + 1;
        }
        if !entry.is_dir() {
            self.remove_children(&path);
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Removes everything below `path` (not `path` itself).
    pub(crate) fn remove_children(&mut self, path: &[u8]) {
        let mut lo = path.to_vec();
        lo.push(b'/');
        let mut hi = path.to_vec();
        hi.push(b'/' + 1);
        let doomed: Vec<Vec<u8>> = self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }

    /// Removes `path` and everything below it.
    #[cfg(feature = "image")]
    pub(crate) fn remove_tree(&mut self, path: &[u8]) {
        self.remove_children(path);
        self.entries.remove(path);
    }

    /// Whether an entry exists at `path`.
    pub fn contains(&self, path: impl AsRef<[u8]>) -> bool {
        normalize(path.as_ref()).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The member paths, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries.keys().map(Vec::as_slice)
    }

    /// Number of members (the trailer not counted).
    pub fn member_count(&self) -> usize {
        self.entries.len()
    }

    /// Exact size in bytes of the archive.
    pub fn len(&self) -> u64 {
        let members: u64 = self
            .entries
            .iter()
            .map(|(p, e)| {
                let n = HEADER_LEN + p.len() as u64 + 1;
                let d = e.data_len();
                n + pad4(n) + d + pad4(d)
            })
            .sum();
        let t = HEADER_LEN + TRAILER.len() as u64 + 1;
        members + t + pad4(t)
    }

    /// Always false: an archive has at least a trailer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Streams the archive bytes.
    pub fn reader(&self) -> CpioReader<'_> {
        CpioReader {
            archive: self,
            iter: self.entries.iter(),
            ino: 0,
            pending: Vec::new(),
            pending_pos: 0,
            data: None,
            data_pad: 0,
            finished: false,
        }
    }

    /// Writes the archive to `w`.
    pub fn write_to(&self, w: &mut impl io::Write) -> io::Result<u64> {
        io::copy(&mut self.reader(), w)
    }
}

/// Splits a Linux `dev_t` into (major, minor).
fn split_dev(dev: u64) -> (u32, u32) {
    if cfg!(target_os = "linux") {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        (major as u32, minor as u32)
    } else {
        ((dev >> 24) as u32, (dev & 0xff_ffff) as u32)
    }
}

#[allow(clippy::too_many_arguments)] // reason: one argument per newc header field
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &[u8],
) {
    let namesize = name.len() as u32 + 1;
    let h = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{filesize:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, rdev.0, rdev.1, 0
    );
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(name);
    out.push(0);
    let n = HEADER_LEN + u64::from(namesize);
    out.resize(out.len() + pad4(n) as usize, 0);
}

enum DataReader {
    Bytes {
        data: Arc<[u8]>,
        pos: usize,
    },
    File {
        file: File,
        path: PathBuf,
        left: u64,
        len: u64,
    },
    Spool {
        file: Arc<File>,
        offset: u64,
        left: u64,
    },
}

/// Streams a [`CpioArchive`]; see [`CpioArchive::reader`].
pub struct CpioReader<'a> {
    archive: &'a CpioArchive,
    iter: std::collections::btree_map::Iter<'a, Vec<u8>, Entry>,
    ino: u32,
    pending: Vec<u8>,
    pending_pos: usize,
    data: Option<DataReader>,
    data_pad: usize,
    finished: bool,
}

impl fmt::Debug for CpioReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpioReader")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl CpioReader<'_> {
    /// Prepares the next member's header (and data reader) in `pending`.
    fn next_member(&mut self) -> io::Result<bool> {
        self.pending.clear();
        self.pending_pos = 0;
        let Some((path, e)) = self.iter.next() else {
            if self.finished {
                return Ok(false);
            }
            self.finished = true;
            header(&mut self.pending, 0, 0, 0, 0, 1, 0, 0, (0, 0), TRAILER);
            return Ok(true);
        };
        self.ino += 1;
        let (nlink, rdev) = match e.kind {
            Kind::Dir => (2, (0, 0)),
            Kind::Char { major, minor } | Kind::Block { major, minor } => (1, (major, minor)),
            _ => (1, (0, 0)),
        };
        let len = e.data_len();
        header(
            &mut self.pending,
            self.ino,
            e.mode(),
            e.uid,
            e.gid,
            nlink,
            self.archive.mtime,
            u32::try_from(len).unwrap_or(u32::MAX),
            rdev,
            path,
        );
        self.data_pad = pad4(len) as usize;
        self.data = match &e.kind {
            Kind::File(Data::Bytes(b)) => Some(DataReader::Bytes {
                data: Arc::clone(b),
                pos: 0,
            }),
            Kind::Symlink(t) => Some(DataReader::Bytes {
                data: t.clone().into(),
                pos: 0,
            }),
            Kind::File(Data::Path { path, len }) => Some(DataReader::File {
                file: File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?,
                path: path.clone(),
                left: *len,
                len: *len,
            }),
            Kind::File(Data::Spool { offset, len }) => match &self.archive.spool {
                Some(f) => Some(DataReader::Spool {
                    file: Arc::clone(f),
                    offset: *offset,
                    left: *len,
                }),
                None => return Err(io::Error::other("archive spool missing")),
            },
            _ => None,
        };
        Ok(true)
    }
}

impl Read for CpioReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pending_pos < self.pending.len() {
                let n = (self.pending.len() - self.pending_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + n]);
                self.pending_pos += n;
                return Ok(n);
            }
            if let Some(d) = &mut self.data {
                let n = match d {
                    DataReader::Bytes { data, pos } => {
                        let n = (data.len() - *pos).min(buf.len());
                        buf[..n].copy_from_slice(&data[*pos..*pos + n]);
                        *pos += n;
                        n
                    }
                    DataReader::File {
                        file,
                        path,
                        left,
                        len,
                    } => {
                        if *left == 0 {
                            let mut probe = [0u8; 1];
                            if file.read(&mut probe)? != 0 {
                                return Err(io::Error::other(format!(
                                    "{} grew beyond {len} bytes while the image was being built",
                                    path.display()
                                )));
                            }
                            0
                        } else {
                            let want =
                                usize::try_from((*left).min(buf.len() as u64)).unwrap_or(buf.len());
                            let n = file.read(&mut buf[..want])?;
                            if n == 0 {
                                return Err(io::Error::other(format!(
                                    "{} shrank below {len} bytes while the image was being built",
                                    path.display()
                                )));
                            }
                            *left -= n as u64;
                            n
                        }
                    }
                    DataReader::Spool { file, offset, left } => {
                        let want =
                            usize::try_from((*left).min(buf.len() as u64)).unwrap_or(buf.len());
                        if want == 0 {
                            0
                        } else {
                            let n = file.read_at(&mut buf[..want], *offset)?;
                            if n == 0 {
                                return Err(io::Error::other("archive spool truncated"));
                            }
                            *offset += n as u64;
                            *left -= n as u64;
                            n
                        }
                    }
                };
                if n > 0 {
                    return Ok(n);
                }
                self.data = None;
                self.pending.clear();
                self.pending.resize(self.data_pad, 0);
                self.pending_pos = 0;
                self.data_pad = 0;
                continue;
            }
            if !self.next_member()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"/a//b/./c/").as_deref(), Ok(&b"a/b/c"[..]));
        assert_eq!(normalize(b"./x").as_deref(), Ok(&b"x"[..]));
        assert!(normalize(b"a/../b").is_err());
        assert!(normalize(b"a\0b").is_err());
        assert_eq!(normalize(b"/").as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn layout_and_size() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let mut a = CpioArchive::new();
        a.file("b/file", 0o644, b"hello".to_vec())?;
        a.dir("a", 0o700)?;
        a.symlink("b/link", "file")?;
        a.fifo("c", 0o600)?;
        let mut out = Vec::new();
        a.reader().read_to_end(&mut out)?;
        assert_eq!(out.len() as u64, a.len());
        assert_eq!(out.len() % 4, 0);
        let paths: Vec<_> = a
            .paths()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(paths, ["a", "b", "b/file", "b/link", "c"]);
        // First header: inode 1, directory 0700.
        assert_eq!(&out[..6 + 16], b"07070100000001000041C0");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        // Deterministic.
        let mut again = Vec::new();
        a.reader().read_to_end(&mut again)?;
        assert_eq!(out, again);
        Ok(())
    }

    #[test]
    fn replacing_a_dir_with_a_file_drops_its_contents() -> Result<()> {
        let mut a = CpioArchive::new();
        a.file("d/x", 0o644, b"1".to_vec())?;
        a.file("d", 0o644, b"2".to_vec())?;
        assert!(!a.contains("d/x"));
        assert!(a.file("d/y", 0o644, b"3".to_vec()).is_err());
        Ok(())
    }

    #[test]
    fn file_that_changes_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").map_err(|e| Error::io("write", e))?;
        let mut a = CpioArchive::new();
        a.file_from_disk("f", 0o644, &p)?;
        std::fs::write(&p, b"abcdef").map_err(|e| Error::io("write", e))?;
        let mut out = Vec::new();
        assert!(a.reader().read_to_end(&mut out).is_err());
        std::fs::write(&p, b"a").map_err(|e| Error::io("write", e))?;
        assert!(a.reader().read_to_end(&mut out).is_err());
        Ok(())
    }
}
