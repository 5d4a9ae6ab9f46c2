//! Locating the tools installed by `scripts/setup-emulator.sh`.

use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Format version of the env file this code understands (`NITRO_EMULATOR_ENV_FORMAT`).
const ENV_FORMAT: &str = "1";

/// The emulator's tools and guest kernel, as installed by `scripts/setup-emulator.sh`.
///
/// The env file holds one `KEY=VALUE` per line (values raw, not shell-quoted, without spaces, so
/// a shell can `source` it when the cache path has no spaces; `#` comments):
///
/// | key | meaning |
/// |---|---|
/// | `NITRO_EMULATOR_ENV_FORMAT` | `1` |
/// | `NITRO_QEMU` | `qemu-system-x86_64` with the `nitro-enclave` machine |
/// | `NITRO_QEMU_VERSION` | its version (`10.0.2`) |
/// | `NITRO_QEMU_BIOS` | `bios-microvm.bin` (`-bios`) |
/// | `NITRO_QEMU_FIRMWARE_DIRS` | `:`-separated `-L` directories (option ROMs, SeaBIOS) |
/// | `NITRO_VHOST_DEVICE_VSOCK` | `vhost-device-vsock` 0.3.0 |
/// | `NITRO_BUSYBOX` | a static `busybox` (Debian `busybox-static`) for test and debug images |
/// | `NITRO_KERNEL` | the guest kernel (bzImage) for the EIF's kernel section |
/// | `NITRO_KERNEL_CONFIG` | its `config-<release>` |
/// | `NITRO_KERNEL_RELEASE` | `uname -r` of that kernel, e.g. `6.12.117+deb12-cloud-amd64` |
/// | `NITRO_KERNEL_PACKAGE` | the Debian package it came from |
/// | `NITRO_KERNEL_MODULES_TREE` | the package's whole `lib/modules/<release>` (`.ko.xz`) |
/// | `NITRO_KERNEL_MODULES_DIR` | directory of decompressed `<name>.ko` files |
/// | `NITRO_KERNEL_MODULES` | the module names to load, comma-separated, in load order |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tools {
    /// `qemu-system-x86_64` with the `nitro-enclave` machine.
    pub qemu: PathBuf,
    /// Its version.
    pub qemu_version: String,
    /// `bios-microvm.bin`, passed with `-bios` (needed for `acpi=on`).
    pub bios: PathBuf,
    /// Firmware directories passed with `-L`.
    pub firmware_dirs: Vec<PathBuf>,
    /// `vhost-device-vsock`.
    pub vhost_device_vsock: PathBuf,
    /// A static `busybox`, to put a shell and tools into test and debugging images.
    pub busybox: PathBuf,
    /// The guest kernel (bzImage).
    pub kernel: PathBuf,
    /// The guest kernel's build configuration.
    pub kernel_config: PathBuf,
    /// The guest kernel's release (`uname -r`).
    pub kernel_release: String,
    /// The Debian package the kernel came from.
    pub kernel_package: String,
    /// The kernel's complete module tree (`lib/modules/<release>`, compressed modules).
    pub modules_tree: PathBuf,
    /// Directory of the decompressed modules named in [`Tools::modules`].
    pub modules_dir: PathBuf,
    /// Module names in load order (`virtio_mmio vsock … nbd nsm`).
    pub modules: Vec<String>,
}

impl Tools {
    /// Env variable naming the env file (overrides the default location).
    pub const ENV_VAR: &'static str = "NITRO_EMULATOR_ENV";

    /// The env file: `$NITRO_EMULATOR_ENV`, else `$NITRO_CACHE/emulator/env`, with `NITRO_CACHE`
    /// defaulting as in `scripts/lib.sh` (`${XDG_CACHE_HOME:-$HOME/.cache}/nitro-rs`).
    pub fn env_file() -> PathBuf {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(path) = var(Self::ENV_VAR) {
            return path;
        }
        let cache = var("NITRO_CACHE").unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("nitro-rs")
        });
        cache.join("emulator").join("env")
    }

    /// Reads [`Tools::env_file`] and checks that every file it names exists.
    /// [`Error::NotInstalled`] when the env file or a tool is missing.
    pub fn locate() -> Result<Self, Error> {
        Self::from_env_file(&Self::env_file())
    }

    /// Reads an env file and checks that every file it names exists.
    pub fn from_env_file(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInstalled(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        let tools = Self::parse(&text, path)?;
        tools.check()?;
        Ok(tools)
    }

    /// Parses the text of an env file (`origin` names it in errors). Pure: no file is checked.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::EnvFile {
            path: origin.to_path_buf(),
            reason,
        };
        let mut map = std::collections::HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {}: expected KEY=VALUE", n + 1)))?;
            map.insert(key.trim(), value);
        }
        let get = |key: &str| {
            map.get(key)
                .copied()
                .ok_or_else(|| bad(format!("missing {key}")))
        };
        let path = |key: &str| -> Result<PathBuf, Error> {
            let value = get(key)?;
            if Path::new(value).is_absolute() {
                Ok(PathBuf::from(value))
            } else {
                Err(bad(format!("{key}: not an absolute path: {value:?}")))
            }
        };
        let format = get("NITRO_EMULATOR_ENV_FORMAT")?;
        if format != ENV_FORMAT {
            return Err(bad(format!(
                "format {format:?}, expected {ENV_FORMAT:?}: re-run scripts/setup-emulator.sh"
            )));
        }
        let firmware_dirs = get("NITRO_QEMU_FIRMWARE_DIRS")?
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        let modules: Vec<String> = get("NITRO_KERNEL_MODULES")?
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(m) = modules
            .iter()
            .find(|m| m.contains('/') || m.starts_with('.'))
        {
            return Err(bad(format!(
                "NITRO_KERNEL_MODULES: invalid module name {m:?}"
            )));
        }
        Ok(Self {
            qemu: path("NITRO_QEMU")?,
            qemu_version: get("NITRO_QEMU_VERSION")?.to_owned(),
            bios: path("NITRO_QEMU_BIOS")?,
            firmware_dirs,
            vhost_device_vsock: path("NITRO_VHOST_DEVICE_VSOCK")?,
            busybox: path("NITRO_BUSYBOX")?,
            kernel: path("NITRO_KERNEL")?,
            kernel_config: path("NITRO_KERNEL_CONFIG")?,
            kernel_release: get("NITRO_KERNEL_RELEASE")?.to_owned(),
            kernel_package: get("NITRO_KERNEL_PACKAGE")?.to_owned(),
            modules_tree: path("NITRO_KERNEL_MODULES_TREE")?,
            modules_dir: path("NITRO_KERNEL_MODULES_DIR")?,
            modules,
        })
    }

    /// The module files to put in the bootstrap ramdisk, in load order
    /// (`<modules_dir>/<name>.ko`).
    pub fn module_files(&self) -> Vec<PathBuf> {
        self.modules
            .iter()
            .map(|m| self.modules_dir.join(format!("{m}.ko")))
            .collect()
    }

    /// Checks that every file named exists ([`Error::NotInstalled`] otherwise).
    pub fn check(&self) -> Result<(), Error> {
        let mut files = vec![
            &self.qemu,
            &self.bios,
            &self.vhost_device_vsock,
            &self.busybox,
            &self.kernel,
        ];
        files.extend(self.firmware_dirs.iter());
        let modules = self.module_files();
        files.extend(modules.iter());
        match files.into_iter().find(|f| !f.exists()) {
            Some(missing) => Err(Error::NotInstalled(format!(
                "{} is missing",
                missing.display()
            ))),
            None => Ok(()),
        }
    }
}

/// For tests: the installed tools, or `None` after printing why the test is skipped. Under
/// `CI=true` a missing emulator is a failure (panics), so CI cannot silently skip the test.
///
/// # Panics
/// Under `CI=true` when the emulator is not installed, and whenever the env file is malformed.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    match Tools::locate() {
        Ok(tools) => Some(tools),
        Err(Error::NotInstalled(why)) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "skipping {test}: emulator not installed: {why} (run scripts/setup-emulator.sh)"
            );
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The workspace's root manifest (this package is `<root>/nitro-emulator`).
fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")
}

/// Builds the `nitro-init` binary as a static, stripped `x86_64-unknown-linux-musl` release
/// binary and returns its path:
/// `cargo build --release --target x86_64-unknown-linux-musl -p nitro-init --bin nitro-init`
/// with `profile.release.debug=false` and `strip=true` (the init shrinks from 8.8 MB to 0.7 MB,
/// which the guest unpacks and the PCRs hash at every boot). The package has few dependencies,
/// so the musl build does not compile the whole crate family. Uses `$CARGO` (set by cargo for
/// tests) or `cargo`.
pub fn build_init() -> Result<PathBuf, Error> {
    build_musl("nitro-init")
}

/// Builds the `nitro-supervisor` binary static for musl (release, stripped) and returns its
/// path, like [`build_init`].
pub fn build_supervisor() -> Result<PathBuf, Error> {
    build_musl("nitro-supervisor")
}

/// `cargo build` of the binary named like `package`, static for musl, release, stripped.
fn build_musl(package: &str) -> Result<PathBuf, Error> {
    cargo_build(
        &[
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
            "--config",
            "profile.release.debug=false",
            "--config",
            "profile.release.strip=true",
            "-p",
            package,
            "--bin",
            package,
        ],
        package,
        " (musl)",
    )
}

/// Builds an example of the `nitro-examples` package (`quickstart`, `attest`, `enclave-app`,
/// `eif`, ...) for this machine (glibc) and returns its path, the binary that
/// `cargo test --workspace --all-features` builds.
///
/// Runs `cargo build --workspace --all-features --example NAME` in the profile of the calling
/// test binary (`--release` when it runs from `target/release`): the same packages and
/// features as that `cargo test` (an example needs the dev-dependencies, as tests do), so after
/// it the build is a no-op that only checks freshness, and a test run alone
/// (`cargo test --release --test X`) still gets an up-to-date binary. A package's own binaries
/// are not built this way: `cargo build --bin` resolves features without the dev-dependencies
/// and rebuilt most of the workspace (3 minutes in CI); tests use `env!("CARGO_BIN_EXE_...")`.
pub fn build_example(name: &str) -> Result<PathBuf, Error> {
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?.parent()?;
            Some(dir.file_name()?.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "debug".to_owned());
    let profile = if profile == "debug" {
        "dev".to_owned()
    } else {
        profile
    };
    cargo_build(
        &[
            "--workspace",
            "--all-features",
            "--profile",
            &profile,
            "--example",
            name,
        ],
        name,
        "",
    )
}

/// Runs `cargo build --message-format=json --manifest-path <workspace root>` with `args`
/// (cargo's output on stderr) and returns the executable of target `name`. Uses `$CARGO` (set
/// by cargo for tests) or `cargo`; `what` qualifies the build in the error message.
fn cargo_build(args: &[&str], name: &str, what: &str) -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--message-format=json"])
        .args(args)
        .arg("--manifest-path")
        .arg(workspace_manifest())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(Error::io("running cargo build"))?;
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "cargo build of {name}{what} failed: {}",
            output.status
        )));
    }
    executable_of(&output.stdout, name)
}

/// The executable of target `name` in cargo's JSON messages.
fn executable_of(json_lines: &[u8], name: &str) -> Result<PathBuf, Error> {
    String::from_utf8_lossy(json_lines)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            Error::Failed(format!(
                "cargo build did not report the executable of {name}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n\
        NITRO_EMULATOR_ENV_FORMAT=1\n\
        NITRO_QEMU=/c/qemu/bin/qemu-system-x86_64\n\
        NITRO_QEMU_VERSION=10.0.2\n\
        NITRO_QEMU_BIOS=/c/fw/usr/share/seabios/bios-microvm.bin\n\
        NITRO_QEMU_FIRMWARE_DIRS=/c/fw/usr/share/qemu:/c/fw/usr/share/seabios\n\
        NITRO_VHOST_DEVICE_VSOCK=/c/v/bin/vhost-device-vsock\n\
        NITRO_BUSYBOX=/c/b/busybox\n\
        NITRO_KERNEL=/c/k/boot/vmlinuz-6.12.117+deb12-cloud-amd64\n\
        NITRO_KERNEL_CONFIG=/c/k/boot/config-6.12.117+deb12-cloud-amd64\n\
        NITRO_KERNEL_RELEASE=6.12.117+deb12-cloud-amd64\n\
        NITRO_KERNEL_PACKAGE=linux-image-6.12.117+deb12-cloud-amd64-unsigned\n\
        NITRO_KERNEL_MODULES_TREE=/c/k/lib/modules/6.12.117+deb12-cloud-amd64\n\
        NITRO_KERNEL_MODULES_DIR=/c/k/modules\n\
        NITRO_KERNEL_MODULES=virtio_mmio,vsock,nsm\n";

    #[test]
    fn parses_env_file() -> Result<(), Error> {
        let t = Tools::parse(SAMPLE, Path::new("env"))?;
        assert_eq!(t.qemu, Path::new("/c/qemu/bin/qemu-system-x86_64"));
        assert_eq!(t.firmware_dirs.len(), 2);
        assert_eq!(t.kernel_release, "6.12.117+deb12-cloud-amd64");
        assert_eq!(t.modules, ["virtio_mmio", "vsock", "nsm"]);
        assert_eq!(t.module_files()[2], Path::new("/c/k/modules/nsm.ko"));
        assert!(matches!(t.check(), Err(Error::NotInstalled(_))));
        Ok(())
    }

    #[test]
    fn rejects_malformed_env_files() {
        let cases = [
            SAMPLE.replace("NITRO_EMULATOR_ENV_FORMAT=1", "NITRO_EMULATOR_ENV_FORMAT=2"),
            SAMPLE.replace("NITRO_QEMU=/c/", "NITRO_QEMU=c/"),
            SAMPLE.replace("NITRO_KERNEL=", "# NITRO_KERNEL="),
            SAMPLE.replace("virtio_mmio,vsock", "../x,vsock"),
            format!("{SAMPLE}garbage\n"),
        ];
        for text in cases {
            assert!(
                matches!(
                    Tools::parse(&text, Path::new("env")),
                    Err(Error::EnvFile { .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn missing_env_file_is_not_installed() {
        let r = Tools::from_env_file(Path::new("/nonexistent/nitro-emulator-env"));
        assert!(matches!(r, Err(Error::NotInstalled(_))));
    }
}
