//! The two ramdisks nitro-cli builds, as deterministic cpio archives.
//!
//! * **Bootstrap** (ramdisk 0, measured into PCR0 and PCR1): `dev/` (0755), `init` (0755), the
//!   kernel modules (0755) at the archive root under their file names, and, when there are
//!   modules, `modules_load_order` (0644) listing their file names one per line in load order
//!   (the newest nitro-cli layout; the AWS init loads `nsm.ko`, a custom init can follow the
//!   list).
//! * **Customer** (ramdisk 1, measured into PCR0 and PCR2): `rootfs/` holding the application's
//!   file system, with `rootfs/{dev,proc,run,sys,tmp,var}` present (0755 when created here),
//!   and at the archive root `cmd` (0644, one argv element per line) and `env` (0644, one
//!   `NAME=value` per line); `workdir` (0644, the image's `WorkingDir`) when it is not `/`.

use std::path::{Path, PathBuf};

use crate::cpio::{CpioArchive, Data, Entry, Kind};
use crate::error::{Error, Result};
#[cfg(feature = "image")]
use crate::image::{self, ImageConfig, ImageOptions};

enum Blob {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// The bootstrap ramdisk: the enclave's `init` and its kernel modules.
///
/// ```
/// # fn main() -> Result<(), nitro_eif::Error> {
/// use nitro_eif::BootstrapRamdisk;
/// let archive = BootstrapRamdisk::from_bytes(b"#!init".to_vec())
///     .module_bytes("vsock.ko", b"mod1".to_vec())
///     .module_bytes("nsm.ko", b"mod2".to_vec())
///     .into_archive()?;
/// let paths: Vec<_> = archive.paths().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
/// assert_eq!(paths, ["dev", "init", "modules_load_order", "nsm.ko", "vsock.ko"]);
/// # Ok(()) }
/// ```
pub struct BootstrapRamdisk {
    init: Blob,
    modules: Vec<(String, Blob)>,
}

impl std::fmt::Debug for BootstrapRamdisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.modules.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("BootstrapRamdisk")
            .field("modules", &names)
            .finish_non_exhaustive()
    }
}

impl BootstrapRamdisk {
    /// A bootstrap ramdisk whose `init` is read from `init` (a static executable).
    pub fn new(init: impl AsRef<Path>) -> Self {
        BootstrapRamdisk {
            init: Blob::Path(init.as_ref().to_owned()),
            modules: Vec::new(),
        }
    }

    /// A bootstrap ramdisk with in-memory `init` contents.
    pub fn from_bytes(init: Vec<u8>) -> Self {
        BootstrapRamdisk {
            init: Blob::Bytes(init),
            modules: Vec::new(),
        }
    }

    /// Appends a kernel module, stored under its file name; modules load in the order added.
    pub fn module(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.modules.push((name, Blob::Path(path.to_owned())));
        self
    }

    /// Appends a kernel module with in-memory contents under `name`.
    pub fn module_bytes(mut self, name: impl Into<String>, contents: Vec<u8>) -> Self {
        self.modules.push((name.into(), Blob::Bytes(contents)));
        self
    }

    /// The module file names in load order.
    pub fn module_names(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|(n, _)| n.as_str())
    }

    /// Builds the archive (file contents are read when it is streamed). An ELF `init` gives
    /// the archive its architecture (x86_64 or aarch64 from `e_machine`), which the builder
    /// checks against the kernel's.
    pub fn into_archive(self) -> Result<CpioArchive> {
        let mut a = CpioArchive::new();
        a.dir("dev", 0o755)?;
        let head = match &self.init {
            Blob::Bytes(b) => b.get(..20).map(<[u8]>::to_vec),
            Blob::Path(p) => {
                let mut h = [0u8; 20];
                std::fs::File::open(p)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut h))
                    .ok()
                    .map(|()| h.to_vec())
            }
        };
        if let Some(arch) = head.as_deref().and_then(elf_arch) {
            a.arch = Some((arch, "the init".into()));
        }
        add_blob(&mut a, "init", 0o755, self.init)?;
        let mut order = String::new();
        for (name, blob) in self.modules {
            let reserved = ["init", "dev", "modules_load_order", "cmd", "env", "rootfs"];
            if name.is_empty()
                || name.contains('/')
                || name.contains('\n')
                || name.starts_with('.')
                || reserved.contains(&name.as_str())
            {
                return Err(Error::InvalidArgument(format!(
                    "bad module file name {name:?}"
                )));
            }
            if a.contains(&name) {
                return Err(Error::InvalidArgument(format!(
                    "module {name:?} given twice"
                )));
            }
            add_blob(&mut a, &name, 0o755, blob)?;
            order.push_str(&name);
            order.push('\n');
        }
        if !order.is_empty() {
            a.file("modules_load_order", 0o644, order.into_bytes())?;
        }
        Ok(a)
    }
}

/// The architecture of a little-endian 64-bit ELF header (`e_machine` 62 or 183).
fn elf_arch(head: &[u8]) -> Option<crate::Arch> {
    if head.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    match u16::from_le_bytes([*head.get(18)?, *head.get(19)?]) {
        62 => Some(crate::Arch::X86_64),
        183 => Some(crate::Arch::Aarch64),
        _ => None,
    }
}

fn add_blob(a: &mut CpioArchive, name: &str, perm: u32, blob: Blob) -> Result<()> {
    match blob {
        Blob::Path(p) => a.file_from_disk(name, perm, p).map(|_| ()),
        Blob::Bytes(b) => a.file(name, perm, b).map(|_| ()),
    }
}

/// The customer ramdisk: the application's root file system and how to start it.
///
/// ```no_run
/// # fn main() -> Result<(), nitro_eif::Error> {
/// use nitro_eif::CustomerRamdisk;
/// // From a directory (owner/group 0, times fixed):
/// let app = CustomerRamdisk::from_dir("rootfs")?.cmd(["/bin/app", "--serve"]).env("RUST_LOG", "info");
/// // From `docker save app:1 -o app.tar` or an OCI layout, with its Entrypoint/Cmd/Env
/// // (feature `image`):
/// # #[cfg(feature = "image")]
/// let app = CustomerRamdisk::from_image("app.tar")?;
/// # Ok(()) }
/// ```
pub struct CustomerRamdisk {
    tree: CpioArchive,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    #[cfg(feature = "image")]
    config: Option<ImageConfig>,
    #[cfg(feature = "registry")]
    image_digest: Option<String>,
    source: String,
}

impl std::fmt::Debug for CustomerRamdisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRamdisk")
            .field("source", &self.source)
            .field("cmd", &self.cmd)
            .field("env", &self.env)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

impl CustomerRamdisk {
    /// Uses directory `dir` as the root file system. The tree is scanned now (metadata only);
    /// contents are read once, while the EIF is written. `cmd` and `env` start empty.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let mut tree = CpioArchive::new();
        tree.add_tree("", dir.as_ref())?;
        Ok(CustomerRamdisk {
            tree,
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            #[cfg(feature = "image")]
            config: None,
            #[cfg(feature = "registry")]
            image_digest: None,
            source: dir.as_ref().display().to_string(),
        })
    }

    /// Uses a container image: an OCI image layout (directory or tar) or a `docker save`
    /// archive (directory or tar, optionally gzip/zstd-compressed). Its layers are flattened now
    /// into a temporary spool file; `cmd` is its `Entrypoint` followed by its `Cmd`, `env` its
    /// `Env`, `workdir` its `WorkingDir`. The image's architecture is checked against the kernel's
    /// when the EIF is built.
    #[cfg(feature = "image")]
    #[cfg_attr(docsrs, doc(cfg(feature = "image")))]
    pub fn from_image(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_image_with(path, &ImageOptions::default())
    }

    /// Like [`from_image`](Self::from_image), selecting the image or platform with `options`.
    #[cfg(feature = "image")]
    #[cfg_attr(docsrs, doc(cfg(feature = "image")))]
    pub fn from_image_with(path: impl AsRef<Path>, options: &ImageOptions) -> Result<Self> {
        let loaded = image::load(path.as_ref(), options)?;
        let config = loaded.config;
        let arch = config.arch().ok_or_else(|| {
            Error::Image(format!(
                "image architecture {:?} is not one Nitro Enclaves run (amd64, arm64)",
                config.architecture
            ))
        })?;
        let mut tree = loaded.tree;
        let label = if loaded.name.is_empty() {
            path.as_ref().display().to_string()
        } else {
            loaded.name
        };
        tree.arch = Some((arch, format!("container image {label}")));
        let cmd = config
            .entrypoint
            .iter()
            .chain(config.cmd.iter())
            .cloned()
            .collect();
        let workdir = match config.working_dir.as_str() {
            "" | "/" => None,
            w => Some(w.to_owned()),
        };
        Ok(CustomerRamdisk {
            tree,
            cmd,
            env: config.env.clone(),
            workdir,
            config: Some(config),
            #[cfg(feature = "registry")]
            image_digest: None,
            source: label,
        })
    }

    /// Pulls `reference` (`host[:port]/repo:tag`, `repo@sha256:…`; Docker Hub for names
    /// without a host) from its registry and uses it like [`from_image`](Self::from_image).
    /// `image` picks the platform of a multi-platform image (`linux/amd64` unless
    /// [`ImageOptions::arch`] says otherwise) and caps the download and the unpacked size
    /// ([`ImageOptions::max_unpacked`]); `registry` sets the transport and credentials. The
    /// digest of the manifest pulled is [`image_digest`](Self::image_digest).
    ///
    /// This blocks (it runs the registry client on a private runtime); from async code use
    /// [`pull_image`](crate::pull_image) and [`from_pulled`](Self::from_pulled).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), nitro_eif::Error> {
    /// use nitro_eif::{Arch, CustomerRamdisk, ImageOptions, RegistryOptions};
    /// let app = CustomerRamdisk::from_registry(
    ///     "ghcr.io/example/app:1.2",
    ///     &ImageOptions::default().arch(Arch::Aarch64),
    ///     &RegistryOptions::default(),
    /// )?;
    /// println!("pinned: {}", app.image_digest().unwrap_or_default());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "registry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
    pub fn from_registry(
        reference: &str,
        image: &ImageOptions,
        registry: &crate::RegistryOptions,
    ) -> Result<Self> {
        let pulled = crate::pull_image_blocking(reference, image, registry)?;
        Self::from_pulled(&pulled, image)
    }

    /// Uses an image pulled with [`pull_image`](crate::pull_image) (its layout can be dropped
    /// afterwards: the files are in the ramdisk's spool).
    #[cfg(feature = "registry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
    pub fn from_pulled(pulled: &crate::PulledImage, image: &ImageOptions) -> Result<Self> {
        let mut opts = image.clone();
        opts.reference = None;
        let mut c = Self::from_image_with(pulled.layout_path(), &opts)?;
        c.image_digest = Some(pulled.digest().to_owned());
        c.source = pulled.reference().to_owned();
        c.tree.arch = c
            .tree
            .arch
            .take()
            .map(|(a, _)| (a, format!("container image {}", pulled.reference())));
        Ok(c)
    }

    /// The digest of the image manifest (`sha256:…`), when the ramdisk was pulled from a
    /// registry: the `repo@digest` that builds the same image again.
    #[cfg(feature = "registry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
    pub fn image_digest(&self) -> Option<&str> {
        self.image_digest.as_deref()
    }

    /// Replaces the command (argv, one element per line in `cmd`).
    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable, replacing an earlier value of the same name.
    pub fn env(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let line = format!("{name}={}", value.as_ref());
        match self
            .env
            .iter_mut()
            .find(|l| l.split_once('=').map_or(l.as_str(), |(k, _)| k) == name)
        {
            Some(l) => *l = line,
            None => self.env.push(line),
        }
        self
    }

    /// Sets (or with `None` clears) the working directory written to `workdir`.
    pub fn workdir(mut self, dir: Option<String>) -> Self {
        self.workdir = dir.filter(|d| !d.is_empty() && d != "/");
        self
    }

    /// The command as it will be written.
    pub fn command(&self) -> &[String] {
        &self.cmd
    }

    /// The environment as it will be written.
    pub fn environment(&self) -> &[String] {
        &self.env
    }

    /// The image config, when built from a container image.
    #[cfg(feature = "image")]
    #[cfg_attr(docsrs, doc(cfg(feature = "image")))]
    pub fn image_config(&self) -> Option<&ImageConfig> {
        self.config.as_ref()
    }

    /// The whole image config document (the EIF metadata's default `DockerInfo`).
    #[cfg(feature = "image")]
    pub(crate) fn docker_info(&self) -> Option<&serde_json::Value> {
        self.config.as_ref().map(|c| &c.raw)
    }

    /// Without the `image` feature no ramdisk comes from a container image.
    #[cfg(not(feature = "image"))]
    pub(crate) fn docker_info(&self) -> Option<&serde_json::Value> {
        None
    }

    /// Builds the archive.
    pub fn into_archive(self) -> Result<CpioArchive> {
        for (what, items) in [("cmd", &self.cmd), ("env", &self.env)] {
            if let Some(bad) = items.iter().find(|s| s.contains('\n') || s.contains('\0')) {
                return Err(Error::InvalidArgument(format!(
                    "{what} entry {bad:?} contains a newline or NUL, which the init's one-per-line format cannot carry"
                )));
            }
        }
        let mut a = CpioArchive::new();
        a.spool = self.tree.spool.clone();
        a.arch = self.tree.arch.clone();
        a.dir("rootfs", 0o755)?;
        for (path, e) in self.tree.entries {
            let mut p = b"rootfs/".to_vec();
            p.extend_from_slice(&path);
            a.entries.insert(p, e);
        }
        for d in ["dev", "proc", "run", "sys", "tmp", "var"] {
            let p = format!("rootfs/{d}");
            if !a.entries.contains_key(p.as_bytes()) {
                a.entries.insert(p.into_bytes(), Entry::dir(0o755));
            }
        }
        let lines = |v: &[String]| {
            v.iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .into_bytes()
        };
        a.entries
            .insert(b"cmd".to_vec(), file_entry(lines(&self.cmd)));
        a.entries
            .insert(b"env".to_vec(), file_entry(lines(&self.env)));
        if let Some(w) = self.workdir {
            if w.contains('\n') || w.contains('\0') {
                return Err(Error::InvalidArgument(format!(
                    "bad working directory {w:?}"
                )));
            }
            a.entries.insert(
                b"workdir".to_vec(),
                file_entry(format!("{w}\n").into_bytes()),
            );
        }
        Ok(a)
    }
}

fn file_entry(contents: Vec<u8>) -> Entry {
    Entry {
        kind: Kind::File(Data::Bytes(contents.into())),
        perm: 0o644,
        uid: 0,
        gid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn names(a: &CpioArchive) -> Vec<String> {
        a.paths()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn customer_layout_from_dir() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        std::fs::create_dir(dir.path().join("bin")).map_err(|e| Error::io("mkdir", e))?;
        std::fs::write(dir.path().join("bin/app"), b"\x7fELF")
            .map_err(|e| Error::io("write", e))?;
        std::fs::create_dir(dir.path().join("tmp")).map_err(|e| Error::io("mkdir", e))?;
        let a = CustomerRamdisk::from_dir(dir.path())?
            .cmd(["/bin/app", "--x"])
            .env("A", "1")
            .env("B", "2")
            .env("A", "3")
            .into_archive()?;
        assert_eq!(
            names(&a),
            [
                "cmd",
                "env",
                "rootfs",
                "rootfs/bin",
                "rootfs/bin/app",
                "rootfs/dev",
                "rootfs/proc",
                "rootfs/run",
                "rootfs/sys",
                "rootfs/tmp",
                "rootfs/var"
            ]
        );
        let mut bytes = Vec::new();
        a.reader()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", e))?;
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("/bin/app\n--x\n"));
        assert!(text.contains("A=3\nB=2\n"));
        Ok(())
    }

    #[test]
    fn bad_cmd_and_modules_are_rejected() {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e));
        let Ok(dir) = dir else { return };
        let r = CustomerRamdisk::from_dir(dir.path()).and_then(|c| c.cmd(["a\nb"]).into_archive());
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
        let r = BootstrapRamdisk::from_bytes(vec![1])
            .module_bytes("x.ko", vec![])
            .module_bytes("x.ko", vec![])
            .into_archive();
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
        let r = BootstrapRamdisk::from_bytes(vec![1])
            .module_bytes("init", vec![])
            .into_archive();
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }
}
