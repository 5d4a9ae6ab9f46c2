//! Sealed volumes: the parent's NBD export, sealed inside the enclave (nitro-fs
//! `SealedDevice` with a KMS-wrapped data key), attached through the kernel's NBD driver and
//! mounted; `mkfs.<fs>` on first use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nitro_fs::sealed::{KmsKeyWrap, SealedConfig, SealedDevice};
use nitro_fs::{BlockDevice as _, ClientConfig, NbdClient, kernel};
use nitro_kms::KmsClient;
use nitro_net::Addr;

use crate::{Error, Result};

/// How long the supervisor waits for the kernel to publish an attached device's size.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that the kernel NBD device `device` (e.g. `/dev/nbd0`) exists, loading the `nbd`
/// module with `modprobe` when it does not. Returns why not when it is still missing.
pub fn ensure_nbd(device: &Path, modprobe: &Path) -> Result<(), String> {
    if device.exists() {
        return Ok(());
    }
    let program = match modprobe.to_str() {
        Some(name) if !name.contains('/') => system_program(name),
        _ => modprobe.to_owned(),
    };
    let loaded = std::process::Command::new(program)
        .args(["nbd", "nbds_max=16"])
        .output();
    let why = match loaded {
        Ok(o) if o.status.success() => {
            // udev-less images: devtmpfs creates the node when the module registers.
            for _ in 0..100 {
                if device.exists() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            format!(
                "`modprobe nbd` succeeded but {} did not appear",
                device.display()
            )
        }
        Ok(o) => format!(
            "no {} and `{} nbd` failed: {}",
            device.display(),
            modprobe.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!(
            "no {} and `{} nbd` could not run: {e}",
            device.display(),
            modprobe.display()
        ),
    };
    Err(why)
}

/// A system program (`mkfs.ext4`) looked up in the sbin and bin directories, whatever the
/// supervisor's `PATH`: images often leave the sbin directories out of it (Debian's OCI images
/// set `PATH=/usr/local/bin:/usr/bin:/bin`). The bare name when none has it.
pub fn system_program(name: &str) -> PathBuf {
    [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from(name))
}

/// The `mkfs` command line for file system `fs` on `device` (`mkfs.<fs>`; ext2/3/4 get a
/// 4096-byte block size, the attached device's sector size, and `-F`).
pub fn mkfs_command(fs: &str, device: &str) -> Vec<String> {
    let mut v = vec![format!("mkfs.{fs}")];
    if matches!(fs, "ext2" | "ext3" | "ext4") {
        v.extend(["-F", "-q", "-b", "4096"].map(str::to_owned));
    }
    v.push(device.to_owned());
    v
}

/// What a volume needs to be opened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VolumeSpec {
    /// Its name (the parent's export, and the encryption context of its data key).
    pub name: String,
    /// The parent's NBD server.
    pub addr: Addr,
    /// The KMS key wrapping its data key.
    pub key: String,
    /// The mount point.
    pub mount: PathBuf,
    /// The file system.
    pub fs: String,
    /// The kernel NBD device node.
    pub device: PathBuf,
    /// `modprobe`.
    pub modprobe: PathBuf,
    /// Write cap of the streams to the parent.
    pub write_cap: Option<usize>,
}

/// A mounted volume; [`Mounted::close`] unmounts, flushes and disconnects it.
#[derive(Debug)]
pub struct Mounted {
    name: String,
    mount: PathBuf,
    device: PathBuf,
    attached: Option<kernel::Attached>,
    sealed: Arc<SealedDevice<NbdClient>>,
}

fn fs_err(volume: &str, context: impl Into<String>) -> impl FnOnce(nitro_fs::Error) -> Error {
    let (volume, context) = (volume.to_owned(), context.into());
    move |source| Error::Volume {
        volume,
        context,
        source,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Opens (or on first use creates) the sealed device of `spec`, attaches it to the kernel's
/// NBD device, formats it when it was just created, and mounts it.
pub async fn open(spec: &VolumeSpec, kms: &KmsClient) -> Result<Mounted> {
    let name = spec.name.as_str();
    ensure_nbd(&spec.device, &spec.modprobe).map_err(|reason| Error::NbdUnavailable {
        volume: name.to_owned(),
        reason,
    })?;
    let addr = spec.addr.clone();
    let cap = spec.write_cap;
    let nbd = NbdClient::connect(
        move || {
            let addr = addr.clone();
            async move {
                let mut s = addr.connect().await.map_err(std::io::Error::other)?;
                s.limit_writes(cap);
                Ok(s)
            }
        },
        ClientConfig::new(name),
    )
    .await
    .map_err(fs_err(
        name,
        format!("connecting to the NBD export at {}", spec.addr),
    ))?;
    let wrap = KmsKeyWrap::new(kms.clone(), &spec.key).context("volume", name);
    let (sealed, created) = SealedDevice::open_volume(nbd, &wrap, SealedConfig::default(), name)
        .await
        .map_err(fs_err(name, "opening the sealed device"))?;
    let sealed = Arc::new(sealed);
    let attached = kernel::attach(
        &spec.device,
        sealed.clone(),
        kernel::AttachOptions::default(),
    )
    .await
    .map_err(fs_err(name, format!("attaching {}", spec.device.display())))?;
    let mut mounted = Mounted {
        name: name.to_owned(),
        mount: spec.mount.clone(),
        device: spec.device.clone(),
        attached: Some(attached),
        sealed,
    };
    match mounted.format_and_mount(spec, created).await {
        Ok(()) => Ok(mounted),
        Err(e) => {
            mounted.mount = PathBuf::new();
            let _ = mounted.close().await;
            Err(e)
        }
    }
}

impl Mounted {
    async fn format_and_mount(&self, spec: &VolumeSpec, created: bool) -> Result<()> {
        let name = &self.name;
        let dev_name = self
            .device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size_file = PathBuf::from(format!("/sys/block/{dev_name}/size"));
        let ready = async {
            while std::fs::read_to_string(&size_file)
                .map(|s| s.trim() == "0")
                .unwrap_or(true)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(DEVICE_TIMEOUT, ready)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "volume {name:?}: waiting for {} to get its size",
                    self.device.display()
                ))
            })?;
        let device = self.device.display().to_string();
        if created {
            let argv = mkfs_command(&spec.fs, &device);
            let output = tokio::process::Command::new(system_program(&argv[0]))
                .args(&argv[1..])
                .output()
                .await
                .map_err(|e| Error::io(format!("volume {name:?}: running {}", argv[0]), e))?;
            if !output.status.success() {
                return Err(Error::io(
                    format!("volume {name:?}: {}", argv.join(" ")),
                    std::io::Error::other(format!(
                        "{}: {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    )),
                ));
            }
            crate::say(format_args!(
                "volume {name}: formatted {device} ({})",
                spec.fs
            ));
        }
        let (mount, fs) = (self.mount.clone(), spec.fs.clone());
        let dev = self.device.clone();
        blocking(move || {
            std::fs::create_dir_all(&mount)?;
            nix::mount::mount(
                Some(&dev),
                &mount,
                Some(fs.as_str()),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map_err(|e| {
            Error::io(
                format!(
                    "volume {name:?}: mounting {device} ({}) on {}",
                    spec.fs,
                    self.mount.display()
                ),
                e,
            )
        })?;
        crate::say(format_args!(
            "volume {name}: mounted on {} (generation {})",
            self.mount.display(),
            self.sealed.generation()
        ));
        Ok(())
    }

    /// Unmounts, writes the device's pages back, disconnects the kernel device, flushes the
    /// sealed device (a commit) and closes the NBD connection. Every step runs; the first
    /// error is returned.
    pub async fn close(mut self) -> Result<()> {
        let name = self.name.clone();
        let mut first: Option<Error> = None;
        if !self.mount.as_os_str().is_empty() {
            let mount = self.mount.clone();
            if let Err(e) = blocking(move || {
                nix::mount::umount2(&mount, nix::mount::MntFlags::empty())
                    .map_err(std::io::Error::from)
            })
            .await
            {
                first.get_or_insert(Error::io(
                    format!("volume {name:?}: unmounting {}", self.mount.display()),
                    e,
                ));
            }
        }
        let dev = self.device.clone();
        if let Err(e) = blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&dev)?
                .sync_all()
        })
        .await
        {
            first.get_or_insert(Error::io(
                format!("volume {name:?}: fsync {}", self.device.display()),
                e,
            ));
        }
        if let Some(a) = self.attached.take()
            && let Err(e) = a.detach().await
        {
            first.get_or_insert(Error::Volume {
                volume: name.clone(),
                context: "detaching the kernel device".into(),
                source: e,
            });
        }
        if let Err(e) = self.sealed.flush().await {
            first.get_or_insert(Error::Volume {
                volume: name.clone(),
                context: "flushing the sealed device".into(),
                source: e,
            });
        }
        if let Err(e) = self.sealed.underlying().close().await {
            first.get_or_insert(Error::Volume {
                volume: name.clone(),
                context: "closing the NBD connection".into(),
                source: e,
            });
        }
        match first {
            Some(e) => Err(e),
            None => {
                crate::say(format_args!(
                    "volume {name}: unmounted and flushed (generation {})",
                    self.sealed.generation()
                ));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn system_programs_are_found_outside_path() {
        let sh = system_program("sh");
        assert!(sh.is_absolute() && sh.is_file(), "{}", sh.display());
        assert_eq!(
            system_program("no-such-program-here"),
            PathBuf::from("no-such-program-here")
        );
    }

    #[test]
    fn mkfs_lines() {
        assert_eq!(
            mkfs_command("ext4", "/dev/nbd0"),
            ["mkfs.ext4", "-F", "-q", "-b", "4096", "/dev/nbd0"]
        );
        assert_eq!(mkfs_command("xfs", "/dev/nbd1"), ["mkfs.xfs", "/dev/nbd1"]);
    }

    #[test]
    fn missing_nbd_is_explained() {
        let why = ensure_nbd(
            Path::new("/nonexistent/nbd0"),
            Path::new("/nonexistent/modprobe"),
        )
        .unwrap_err();
        assert!(why.contains("no /nonexistent/nbd0"), "{why}");
        assert!(why.contains("could not run"), "{why}");
        let why = ensure_nbd(Path::new("/nonexistent/nbd0"), Path::new("/bin/false")).unwrap_err();
        assert!(why.contains("`/bin/false nbd` failed"), "{why}");
        // An existing node is accepted without modprobe.
        ensure_nbd(Path::new("/dev/null"), Path::new("/nonexistent/modprobe")).unwrap();
    }
}
