//! Sealed secrets: fetched from the parent by name, unsealed through KMS with the enclave's
//! attestation (`Recipient`), delivered to a file or an environment variable.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nitro_kms::KmsClient;
use nitro_kms::sealed::{UnsealOptions, fetch_sealed, unseal};
use nitro_net::Addr;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The encryption context a secret must be sealed with: `enclave=<manifest name>` and
/// `secret=<secret name>`, so that a sealed document of another secret or another enclave
/// (substituted by the parent) is refused before KMS is asked.
///
/// Seal with `kms seal --context enclave=NAME --context secret=SECRET ...`.
///
/// ```
/// let ctx = nitro_supervisor::secrets::secret_context("hello", "db-password");
/// assert_eq!(ctx, [("enclave".to_owned(), "hello".to_owned()), ("secret".to_owned(), "db-password".to_owned())]);
/// ```
pub fn secret_context(enclave: &str, secret: &str) -> [(String, String); 2] {
    [
        ("enclave".to_owned(), enclave.to_owned()),
        ("secret".to_owned(), secret.to_owned()),
    ]
}

/// Fetches the sealed document `name` from the parent's secrets service at `addr` and unseals
/// it with `kms` (which must have a `Recipient`).
pub async fn fetch_and_unseal(
    addr: &Addr,
    write_cap: Option<usize>,
    kms: &KmsClient,
    enclave: &str,
    name: &str,
) -> Result<nitro_kms::Plaintext> {
    let mut stream = addr
        .connect()
        .await
        .map_err(|e| Error::net(format!("secret {name:?}: connecting to {addr}"), e))?;
    stream.limit_writes(write_cap);
    let doc = fetch_sealed(&mut stream, name)
        .await
        .map_err(|e| Error::kms(format!("secret {name:?}: fetching it from the parent"), e))?;
    let mut options = UnsealOptions::new();
    for (k, v) in secret_context(enclave, name) {
        options = options.expect_context_pair(k, v);
    }
    unseal(kms, &doc, &options)
        .await
        .map_err(|e| Error::kms(format!("secret {name:?}: unsealing it"), e))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, `fsync`,
/// `rename`, `fsync` of the directory) with mode 0400, creating the parent directories.
pub fn write_file_0400(path: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = |what: &str| format!("writing the secret file {}: {what}", path.display());
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidArgument(ctx("no parent directory")))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(ctx("no file name")))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(ctx("creating the directory"), e))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(ctx("write"), e));
    }
    Ok(())
}

/// The value of a secret delivered by environment: UTF-8 without NUL.
pub fn env_value(name: &str, plaintext: &[u8]) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::str::from_utf8(plaintext)
            .map_err(|_| Error::Secret {
                name: name.to_owned(),
                message: "not UTF-8: it cannot be delivered in an environment variable \
                          (deliver it to a file)"
                    .into(),
            })?
            .to_owned(),
    );
    if text.contains('\0') {
        return Err(Error::Secret {
            name: name.to_owned(),
            message: "contains a NUL byte: it cannot be delivered in an environment variable \
                      (deliver it to a file)"
                .into(),
        });
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn file_is_0400_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secret");
        write_file_0400(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        // A second delivery replaces it (rename over a read-only file is allowed).
        write_file_0400(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn env_values() {
        assert_eq!(&*env_value("x", b"pw").unwrap(), "pw");
        assert!(matches!(env_value("x", b"\xff"), Err(Error::Secret { .. })));
        assert!(matches!(env_value("x", b"a\0b"), Err(Error::Secret { .. })));
    }
}
