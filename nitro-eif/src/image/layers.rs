//! Applying layers: each layer blob is decompressed, checked against its digest and its
//! `diff_id`, and its tar entries are laid over the tree below with OCI whiteouts. Regular file
//! contents go to the spool file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::sync::Arc;

use serde_json::Value;

use super::ImageConfig;
use super::decompress::{Capped, decompress};
use super::digest::{Hashing, Verifier};
use super::manifest::Layer;
use super::store::Store;
use crate::cpio::{CpioArchive, Data, Entry, Kind, normalize};
use crate::error::{Error, Result};

/// Applies `layers` in order and returns the flattened tree (with its spool file).
pub(super) fn flatten(
    store: &Store,
    layers: &[Layer],
    config: &ImageConfig,
    limit: u64,
) -> Result<CpioArchive> {
    let diff_ids: Vec<Verifier> = match config.raw.get("rootfs").and_then(|r| r.get("diff_ids")) {
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
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(Error::Image(format!(
            "the config lists {} diff_ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    let spool_file = tempfile::tempfile().map_err(|e| Error::io("creating the layer spool", e))?;
    let mut spool = Spool {
        out: BufWriter::with_capacity(1 << 20, spool_file),
        len: 0,
        limit,
    };
    let mut tree = CpioArchive::new();
    for (i, layer) in layers.iter().enumerate() {
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
    Ok(tree)
}

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
