//! Putting host binaries into an enclave image's root file system.

use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies the dynamically linked executable `binary` to `<rootfs>/<dest>` together with the
/// shared libraries it loads (the dynamic loader, libc, libm, libgcc_s, ... as `ldd` resolves
/// them on this machine), each at the same absolute path inside `rootfs`: what a container
/// image built from this machine's distribution would carry. Debug information is removed
/// from the copies with `strip --strip-debug` when `strip` is installed (symbols stay, so
/// panics still name functions); otherwise they are copied as they are.
///
/// Returns the library paths (on this machine) that were copied. A static executable has none.
///
/// The guest kernel must run this machine's binaries (same architecture; the Debian 6.12
/// kernel runs anything built for Debian 12's glibc).
pub fn install_dynamic_binary(
    binary: &Path,
    rootfs: &Path,
    dest: &str,
) -> Result<Vec<PathBuf>, Error> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(Error::io("running ldd"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `ldd` fails on a static binary ("not a dynamic executable"): nothing to copy then.
    let libraries = if output.status.success() {
        parse_ldd(&text)?
    } else {
        Vec::new()
    };
    let rel = dest.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Err(Error::Failed(format!("invalid destination {dest:?}")));
    }
    copy_stripped(binary, &rootfs.join(rel))?;
    for lib in &libraries {
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(lib));
        copy_stripped(lib, &inside)?;
    }
    Ok(libraries)
}

/// The libraries in `ldd` output: `name => /path (0x…)` and `/path (0x…)` lines (the
/// loader); the vDSO (no path) is skipped. A library `ldd` could not find is an error.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, Error> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(Error::Failed(format!(
                        "ldd: library {} not found",
                        name.trim()
                    )));
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Copies `from` to `to` (creating directories, mode 0755), without debug information when
/// `strip` is available.
fn copy_stripped(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .output()
        .is_ok_and(|o| o.status.success());
    if !stripped {
        std::fs::copy(from, to).map_err(Error::io(format!(
            "copying {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", to.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() -> Result<(), Error> {
        let out = "\tlinux-vdso.so.1 (0x00007ffd2d1f5000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c5e0000)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c1c500000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c31f000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1d63b000)\n";
        assert_eq!(
            parse_ldd(out)?,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("")?.is_empty());
        Ok(())
    }

    #[test]
    fn installs_this_test_binary_with_its_libraries() -> Result<(), Error> {
        let exe = std::env::current_exe().map_err(Error::io("current_exe"))?;
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let libs = install_dynamic_binary(&exe, dir.path(), "/app/test")?;
        assert!(dir.path().join("app/test").is_file());
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        for lib in libs {
            assert!(
                dir.path()
                    .join(lib.strip_prefix("/").unwrap_or(&lib))
                    .is_file()
            );
        }
        assert!(install_dynamic_binary(&exe, dir.path(), "../x").is_err());
        Ok(())
    }
}
