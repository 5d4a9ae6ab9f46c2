//! Data keys, key wrapping and freshness anchors.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::device::BoxFuture;
use crate::error::{Error, Result};

/// Random identity of a sealed device, chosen at creation and bound into every block's
/// associated data and into the freshness anchor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DeviceId {
    type Err = Error;

    /// Parses the 32 hex digits [`Display`](fmt::Display) prints (e.g. from attested
    /// configuration).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("device id {s:?} is not 32 hex digits"));
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// A 256-bit data key; wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from the system CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| Error::Crypto("random number generator failed"))?;
        Ok(Self(k))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Protects a sealed device's data key at rest.
///
/// The device header stores [`scheme`](Self::scheme) and the wrapped key;
/// [`generate`](Self::generate) runs once when a device is created and
/// [`unwrap`](Self::unwrap) every time it is opened. A KMS-backed implementation calls
/// `GenerateDataKey` and, after a restart, `Decrypt` with a `Recipient` attestation; the
/// [`StaticKeyWrap`] in this crate wraps with a caller-supplied key.
///
/// Implementations should bind `device` into the wrapping (e.g. as KMS encryption context
/// or associated data) so a wrapped key cannot be moved to another device's header.
pub trait KeyWrap: Send + Sync {
    /// Short identifier of the scheme, stored in the header (at most 64 bytes).
    fn scheme(&self) -> &str;

    /// A fresh data key and its wrapped form.
    fn generate<'a>(&'a self, device: &'a DeviceId) -> BoxFuture<'a, Result<(DataKey, Vec<u8>)>>;

    /// Recovers the data key from its wrapped form (untrusted bytes read from the device).
    fn unwrap<'a>(
        &'a self,
        device: &'a DeviceId,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey>>;
}

/// Wraps the data key with AES-256-GCM under a key-encryption key supplied by the caller
/// (for instance a secret sealed to the enclave's measurements, or derived from one).
///
/// The wrapped form is `nonce (12) ‖ encrypted key (32) ‖ tag (16)`, with the device
/// identity as associated data.
pub struct StaticKeyWrap {
    kek: LessSafeKey,
}

impl StaticKeyWrap {
    /// Scheme identifier stored in device headers.
    pub const SCHEME: &'static str = "aes256gcm-kek-v1";

    /// A key wrap using `kek` as the key-encryption key.
    pub fn new(kek: &[u8; 32]) -> Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM, kek)
            .map_err(|_| Error::Crypto("AES-256-GCM key setup failed"))?;
        Ok(Self {
            kek: LessSafeKey::new(key),
        })
    }

    fn aad(device: &DeviceId) -> [u8; 36] {
        let mut aad = [0u8; 36];
        aad[..20].copy_from_slice(b"nitro-fs key wrap v1");
        aad[20..].copy_from_slice(&device.0);
        aad
    }
}

impl fmt::Debug for StaticKeyWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticKeyWrap(..)")
    }
}

impl KeyWrap for StaticKeyWrap {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn generate<'a>(&'a self, device: &'a DeviceId) -> BoxFuture<'a, Result<(DataKey, Vec<u8>)>> {
        Box::pin(async move {
            let key = DataKey::generate()?;
            let mut nonce = [0u8; NONCE_LEN];
            SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| Error::Crypto("random number generator failed"))?;
            let mut buf = key.as_bytes().to_vec();
            let tag = self
                .kek
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(Self::aad(device)),
                    &mut buf,
                )
                .map_err(|_| Error::Crypto("key wrapping failed"))?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&buf);
            buf.zeroize();
            out.extend_from_slice(tag.as_ref());
            Ok((key, out))
        })
    }

    fn unwrap<'a>(
        &'a self,
        device: &'a DeviceId,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<DataKey>> {
        Box::pin(async move {
            if wrapped.len() != NONCE_LEN + 32 + 16 {
                return Err(Error::key_wrap("wrapped key has the wrong length"));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
            let mut buf = wrapped[NONCE_LEN..].to_vec();
            let plain = self
                .kek
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(Self::aad(device)),
                    &mut buf,
                )
                .map_err(|_| {
                    Error::key_wrap(
                        "the wrapped data key does not open with this key (wrong key, or the header was altered)",
                    )
                })?;
            let mut k = [0u8; 32];
            k.copy_from_slice(plain);
            buf.zeroize();
            Ok(DataKey::from_bytes(k))
        })
    }
}

/// The state a freshness anchor keeps for one device: the latest committed generation and
/// its hash-tree root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorState {
    /// Commit generation (increases by one per flush that changed something).
    pub generation: u64,
    /// Root of the hash tree at that generation.
    pub root: [u8; 32],
}

/// Keeps the latest committed state of sealed devices somewhere the parent cannot roll
/// back (enclave memory, a remote service, a monotonic counter...).
///
/// On open, a device older than the anchor is refused ([`Error::Rollback`]), and one with
/// the anchor's generation but a different root is refused as a fork. A device *newer* than
/// the anchor is accepted: only the enclave can produce authenticated headers, and a crash
/// between a commit and the anchor update leaves exactly that situation.
pub trait FreshnessAnchor: Send + Sync {
    /// The stored state for `device`, if any.
    fn load<'a>(&'a self, device: &'a DeviceId) -> BoxFuture<'a, Result<Option<AnchorState>>>;

    /// Records a newly committed state for `device`. Must not go backwards.
    fn store<'a>(&'a self, device: &'a DeviceId, state: AnchorState) -> BoxFuture<'a, Result<()>>;

    /// The device bound to the volume named `volume`, if any
    /// ([`SealedDevice::open_volume`](super::SealedDevice::open_volume)). `None` means the
    /// anchor proves the volume has never been created: the only case in which
    /// `open_volume` creates a device.
    ///
    /// The default implementation reports that the anchor keeps no bindings
    /// ([`Error::Anchor`]); an anchor must override both this and
    /// [`bind_device`](Self::bind_device) to support `open_volume`.
    fn bound_device<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<Option<DeviceId>>> {
        Box::pin(async move {
            Err(Error::anchor(format!(
                "this freshness anchor keeps no volume bindings (volume {volume:?})"
            )))
        })
    }

    /// Binds the volume named `volume` to `device`, for good: binding a bound volume to
    /// another device must fail.
    fn bind_device<'a>(&'a self, volume: &'a str, device: DeviceId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Err(Error::anchor(format!(
                "this freshness anchor keeps no volume bindings (volume {volume:?}, device {device})"
            )))
        })
    }
}

/// A freshness anchor in enclave memory: detects rollback for as long as the process (the
/// enclave) lives, including across close and reopen of the device. Its volume bindings
/// ([`FreshnessAnchor::bound_device`]) last as long, so after a restart every volume looks
/// new to it: to stop a parent from resetting a volume across restarts, keep the
/// [`DeviceId`] in attested configuration ([`SealedConfig::expect_device`](super::SealedConfig::expect_device))
/// or use a persistent anchor.
///
/// Clones share state; [`MemoryAnchor::global`] is the process-wide instance used by
/// default.
#[derive(Clone, Debug, Default)]
pub struct MemoryAnchor {
    states: Arc<Mutex<HashMap<DeviceId, AnchorState>>>,
    volumes: Arc<Mutex<HashMap<String, DeviceId>>>,
}

impl MemoryAnchor {
    /// An empty anchor.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide anchor.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryAnchor> = OnceLock::new();
        GLOBAL.get_or_init(MemoryAnchor::new).clone()
    }

    /// The state recorded for `device`.
    pub fn get(&self, device: &DeviceId) -> Option<AnchorState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .copied()
    }
}

impl FreshnessAnchor for MemoryAnchor {
    fn bound_device<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<Option<DeviceId>>> {
        Box::pin(async move {
            Ok(self
                .volumes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(volume)
                .copied())
        })
    }

    fn bind_device<'a>(&'a self, volume: &'a str, device: DeviceId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut g = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
            match g.get(volume) {
                Some(old) if *old != device => Err(Error::anchor(format!(
                    "volume {volume:?} is bound to device {old}, refusing to bind it to {device}"
                ))),
                _ => {
                    g.insert(volume.to_owned(), device);
                    Ok(())
                }
            }
        })
    }

    fn load<'a>(&'a self, device: &'a DeviceId) -> BoxFuture<'a, Result<Option<AnchorState>>> {
        Box::pin(async move { Ok(self.get(device)) })
    }

    fn store<'a>(&'a self, device: &'a DeviceId, state: AnchorState) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut g = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            match g.get(device) {
                Some(old) if old.generation > state.generation => Err(Error::anchor(format!(
                    "refusing to move device {device} back from generation {} to {}",
                    old.generation, state.generation
                ))),
                _ => {
                    g.insert(*device, state);
                    Ok(())
                }
            }
        })
    }
}
