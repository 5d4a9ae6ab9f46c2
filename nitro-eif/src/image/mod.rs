//! Container images without a daemon: OCI image layouts (directory or tar) and `docker save`
//! archives (directory or tar, optionally gzip/zstd-compressed), flattened into one file tree.
//!
//! Layers are applied in order with OCI whiteouts (`.wh.NAME` deletes `NAME` from lower
//! layers, `.wh..wh..opq` empties a directory of lower-layer contents) and gzip, zstd or plain
//! tar compression (detected from the bytes, not the media type). Blob digests (OCI descriptors)
//! and layer `diff_ids` (image config) are verified while the layers stream by. Regular file
//! contents are copied once into an anonymous spool file; only metadata stays in memory.

mod decompress;
mod digest;
mod layers;
mod manifest;
#[cfg(feature = "registry")]
pub(crate) mod registry;
mod store;

use std::path::Path;

use serde_json::Value;

use crate::cpio::CpioArchive;
use crate::error::{Error, Result};
use crate::format::Arch;

use manifest::{pick_docker, pick_oci};
use store::Store;

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
    let tree = layers::flatten(&store, &picked.layers, &picked.config, limit)?;
    Ok(LoadedImage {
        config: picked.config,
        tree,
        name: picked.name,
    })
}
