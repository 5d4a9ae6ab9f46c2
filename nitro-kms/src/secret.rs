//! Byte strings that must not leak: zeroized on drop, redacted in `Debug`.

use std::fmt;
use std::ops::Deref;

use zeroize::Zeroizing;

/// Secret bytes (a plaintext, a data key, a private key, a shared secret).
///
/// The buffer is overwritten with zeros when dropped, and `Debug` prints only the length.
/// Cloning makes a second zeroized copy; prefer borrowing.
///
/// ```
/// use nitro_kms::Plaintext;
///
/// let p = Plaintext::new(b"hunter2".to_vec());
/// assert_eq!(p.as_bytes(), b"hunter2");
/// assert_eq!(format!("{p:?}"), "Plaintext(7 bytes, redacted)");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Wraps bytes (they are zeroized when this value is dropped).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Plaintext {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl From<Zeroizing<Vec<u8>>> for Plaintext {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        Self(v)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext({} bytes, redacted)", self.0.len())
    }
}

/// A secret string (a secret access key, a session token): zeroized on drop, redacted in `Debug`
/// and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a string.
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"** redacted **\"")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}
