//! Access to the Nitro Secure Module: the [`Nsm`] trait and its implementations.

use std::collections::BTreeSet;

use crate::document::Digest;
use crate::error::Result;

#[cfg(feature = "device")]
pub(crate) mod device;
#[cfg(feature = "simulator")]
pub(crate) mod pki;
#[cfg(feature = "simulator")]
pub(crate) mod sim;

/// Maximum size of one CBOR-encoded NSM request (`NSM_REQUEST_MAX_SIZE`): larger requests fail
/// with [`NsmErrorCode::InputTooLarge`](crate::NsmErrorCode::InputTooLarge).
pub const NSM_REQUEST_MAX_SIZE: usize = 0x1000;

/// Size of the NSM response buffer (`NSM_RESPONSE_MAX_SIZE`).
pub const NSM_RESPONSE_MAX_SIZE: usize = 0x3000;

/// The operations of the Nitro Secure Module.
///
/// Object safe and `Send + Sync`: share one as `Arc<dyn Nsm>`. Calls are synchronous: the real
/// device answers a short blocking `ioctl`; async callers may call it directly or through
/// `spawn_blocking`.
///
/// Implementations: [`NsmDevice`](crate::NsmDevice) (`/dev/nsm`, feature `device`) and
/// [`SimulatedNsm`](crate::SimulatedNsm) (feature `simulator`).
///
/// ```
/// # #[cfg(feature = "simulator")]
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use std::sync::Arc;
/// use nitro_attest::{Nsm, SimulatedNsm};
/// let nsm: Arc<dyn Nsm> = Arc::new(SimulatedNsm::builder().seed(1).build()?);
/// let pcr16 = nsm.extend_pcr(16, b"hello")?;
/// nsm.lock_pcr(16)?;
/// assert_eq!(nsm.describe_pcr(16)?, nitro_attest::PcrDescription::new(true, pcr16));
/// assert!(nsm.extend_pcr(16, b"again").is_err());
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "simulator"))]
/// # fn main() {}
/// ```
pub trait Nsm: Send + Sync {
    /// Requests an attestation document embedding the given optional fields. Returns the raw
    /// COSE_Sign1 bytes exactly as the NSM produced them.
    ///
    /// # Errors
    ///
    /// [`Error::Nsm`](crate::Error::Nsm) with the NSM's error code (e.g. `InputTooLarge` when the
    /// request exceeds [`NSM_REQUEST_MAX_SIZE`]), [`Error::Io`](crate::Error::Io) for device
    /// failures.
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>>;

    /// Reads PCR `index` and whether it is locked.
    ///
    /// # Errors
    ///
    /// `InvalidIndex` for an index outside `0..max_pcrs`.
    fn describe_pcr(&self, index: u16) -> Result<PcrDescription>;

    /// Extends PCR `index` with `data` (`PCR = SHA384(PCR || data)`) and returns the new value.
    ///
    /// # Errors
    ///
    /// `ReadOnlyIndex` if the PCR is locked (PCR0–15 always are), `InvalidIndex` for an index
    /// outside `0..max_pcrs`.
    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>>;

    /// Locks PCR `index` against further extension; locked PCRs appear in attestation documents.
    ///
    /// # Errors
    ///
    /// `InvalidIndex` for an index outside `0..max_pcrs`.
    fn lock_pcr(&self, index: u16) -> Result<()>;

    /// Locks PCRs `0..range`.
    ///
    /// # Errors
    ///
    /// `InvalidIndex` if `range > max_pcrs`.
    fn lock_pcrs(&self, range: u16) -> Result<()>;

    /// Describes the NSM: version, module id, number of PCRs, locked PCRs, digest.
    ///
    /// # Errors
    ///
    /// Device failures.
    fn describe_nsm(&self) -> Result<NsmDescription>;

    /// Returns random bytes from the NSM's entropy source (the real NSM returns 256 bytes).
    ///
    /// # Errors
    ///
    /// Device failures.
    fn get_random(&self) -> Result<Vec<u8>>;
}

macro_rules! forward_nsm {
    ($($ty:ty),*) => {$(
        /// Forwards to the inner NSM.
        impl<T: Nsm + ?Sized> Nsm for $ty {
            fn attestation(
                &self,
                user_data: Option<&[u8]>,
                nonce: Option<&[u8]>,
                public_key: Option<&[u8]>,
            ) -> Result<Vec<u8>> {
                (**self).attestation(user_data, nonce, public_key)
            }
            fn describe_pcr(&self, index: u16) -> Result<PcrDescription> {
                (**self).describe_pcr(index)
            }
            fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>> {
                (**self).extend_pcr(index, data)
            }
            fn lock_pcr(&self, index: u16) -> Result<()> {
                (**self).lock_pcr(index)
            }
            fn lock_pcrs(&self, range: u16) -> Result<()> {
                (**self).lock_pcrs(range)
            }
            fn describe_nsm(&self) -> Result<NsmDescription> {
                (**self).describe_nsm()
            }
            fn get_random(&self) -> Result<Vec<u8>> {
                (**self).get_random()
            }
        }
    )*};
}

forward_nsm!(&T, Box<T>, std::sync::Arc<T>);

/// The state of one PCR.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PcrDescription {
    /// `true` if the PCR can no longer be extended.
    pub locked: bool,
    /// The current value (48 bytes for SHA-384).
    pub value: Vec<u8>,
}

impl PcrDescription {
    /// Builds a description (for [`Nsm`] implementations outside this crate).
    pub fn new(locked: bool, value: Vec<u8>) -> Self {
        PcrDescription { locked, value }
    }
}

/// What `DescribeNSM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NsmDescription {
    /// Major version (breaking API changes).
    pub version_major: u16,
    /// Minor version.
    pub version_minor: u16,
    /// Patch version.
    pub version_patch: u16,
    /// The module id, as in attestation documents.
    pub module_id: String,
    /// Number of PCRs (32 on Nitro).
    pub max_pcrs: u16,
    /// Indices of the locked PCRs.
    pub locked_pcrs: BTreeSet<u16>,
    /// The PCR bank digest.
    pub digest: Digest,
}

impl NsmDescription {
    /// Builds a description (for [`Nsm`] implementations outside this crate).
    pub fn new(
        version: (u16, u16, u16),
        module_id: String,
        max_pcrs: u16,
        locked_pcrs: BTreeSet<u16>,
        digest: Digest,
    ) -> Self {
        NsmDescription {
            version_major: version.0,
            version_minor: version.1,
            version_patch: version.2,
            module_id,
            max_pcrs,
            locked_pcrs,
            digest,
        }
    }
}
