//! Content digests (`sha256:…`, `sha512:…`) of blobs, layers and JSON documents.

use std::io::{self, Read};

use aws_lc_rs::digest;

use crate::error::{Error, Result};

pub(super) struct Verifier {
    pub(super) alg: &'static digest::Algorithm,
    expected: Vec<u8>,
    pub(super) text: String,
}

impl Verifier {
    pub(super) fn new(d: &str) -> Result<Self> {
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

    pub(super) fn blob_path(&self) -> String {
        let (a, h) = self.text.split_once(':').unwrap_or(("sha256", ""));
        format!("blobs/{a}/{h}")
    }

    pub(super) fn matches(&self, got: &[u8]) -> bool {
        got == self.expected.as_slice()
    }
}

pub(super) fn digest_of(alg: &'static digest::Algorithm, data: &[u8]) -> Vec<u8> {
    digest::digest(alg, data).as_ref().to_vec()
}

/// Hashes what passes through it.
pub(super) struct Hashing<R> {
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
    pub(super) fn new(inner: R, alg: Option<&'static digest::Algorithm>) -> Self {
        Hashing {
            inner,
            ctx: alg.map(digest::Context::new),
            count: 0,
        }
    }

    /// Hashes `data` as if it had been read through.
    #[cfg(feature = "registry")]
    pub(super) fn update(&mut self, data: &[u8]) {
        if let Some(c) = &mut self.ctx {
            c.update(data);
        }
        self.count += data.len() as u64;
    }

    pub(super) fn finish(&mut self) -> Option<Vec<u8>> {
        self.ctx.take().map(|c| c.finish().as_ref().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
