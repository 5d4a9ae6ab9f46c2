//! The real NSM: `/dev/nsm` through `aws-nitro-enclaves-nsm-api`.
//!
//! The request/response CBOR (and its `serde_cbor` dependency) stays inside that crate; this
//! module only converts types. The device file is owned by an [`std::fs::File`] (closed on
//! drop), and the ioctl ABI (`NSM_IOCTL_RAW = 0xC0200A00`, 4 KiB request, 12 KiB response) is
//! the upstream Linux `nsm` driver's.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use aws_nitro_enclaves_nsm_api::api::{self, Request, Response};
use aws_nitro_enclaves_nsm_api::driver;
use serde_bytes::ByteBuf;

use crate::document::Digest;
use crate::error::{Error, NsmErrorCode, Result};
use crate::nsm::{Nsm, NsmDescription, PcrDescription};

/// Default path of the NSM device inside an enclave.
pub const NSM_DEVICE_PATH: &str = "/dev/nsm";

/// The Nitro Secure Module device (`/dev/nsm`) of the enclave this process runs in.
///
/// ```no_run
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, NsmDevice};
/// let nsm = NsmDevice::open()?;
/// let document = nsm.attestation(None, Some(b"fresh nonce"), None)?;
/// # let _ = document;
/// # Ok(())
/// # }
/// ```
///
/// Errors: the upstream driver reports `EMSGSIZE` as
/// [`NsmErrorCode::InputTooLarge`] and every other failing `ioctl` as
/// [`NsmErrorCode::InternalError`] (the errno is not available through the NSM API crate).
#[derive(Debug)]
pub struct NsmDevice {
    file: File,
}

impl NsmDevice {
    /// Opens [`NSM_DEVICE_PATH`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the device cannot be opened (e.g. outside an enclave).
    pub fn open() -> Result<Self> {
        Self::open_path(NSM_DEVICE_PATH)
    }

    /// Opens an NSM device at `path` (e.g. in a guest where it is named differently).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the device cannot be opened.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening the NSM device {}", path.display()), e))?;
        Ok(NsmDevice { file })
    }

    fn call(&self, request: Request) -> Result<Response> {
        match driver::nsm_process_request(self.file.as_raw_fd(), request) {
            Response::Error(code) => Err(Error::Nsm(map_code(code))),
            r => Ok(r),
        }
    }
}

fn map_code(code: api::ErrorCode) -> NsmErrorCode {
    use api::ErrorCode as E;
    match code {
        E::InvalidArgument => NsmErrorCode::InvalidArgument,
        E::InvalidIndex => NsmErrorCode::InvalidIndex,
        E::InvalidResponse => NsmErrorCode::InvalidResponse,
        E::ReadOnlyIndex => NsmErrorCode::ReadOnlyIndex,
        E::InvalidOperation => NsmErrorCode::InvalidOperation,
        E::BufferTooSmall => NsmErrorCode::BufferTooSmall,
        E::InputTooLarge => NsmErrorCode::InputTooLarge,
        // `Success` inside an error response is itself a protocol violation.
        E::InternalError | E::Success => NsmErrorCode::InternalError,
    }
}

fn unexpected(op: &str, r: &Response) -> Error {
    Error::NsmResponse(format!("{op}: {r:?}"))
}

impl Nsm for NsmDevice {
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let buf = |b: Option<&[u8]>| b.map(|b| ByteBuf::from(b.to_vec()));
        match self.call(Request::Attestation {
            user_data: buf(user_data),
            nonce: buf(nonce),
            public_key: buf(public_key),
        })? {
            Response::Attestation { document } => Ok(document),
            r => Err(unexpected("Attestation", &r)),
        }
    }

    fn describe_pcr(&self, index: u16) -> Result<PcrDescription> {
        match self.call(Request::DescribePCR { index })? {
            Response::DescribePCR { lock, data } => Ok(PcrDescription::new(lock, data)),
            r => Err(unexpected("DescribePCR", &r)),
        }
    }

    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>> {
        match self.call(Request::ExtendPCR {
            index,
            data: data.to_vec(),
        })? {
            Response::ExtendPCR { data } => Ok(data),
            r => Err(unexpected("ExtendPCR", &r)),
        }
    }

    fn lock_pcr(&self, index: u16) -> Result<()> {
        match self.call(Request::LockPCR { index })? {
            Response::LockPCR => Ok(()),
            r => Err(unexpected("LockPCR", &r)),
        }
    }

    fn lock_pcrs(&self, range: u16) -> Result<()> {
        match self.call(Request::LockPCRs { range })? {
            Response::LockPCRs => Ok(()),
            r => Err(unexpected("LockPCRs", &r)),
        }
    }

    fn describe_nsm(&self) -> Result<NsmDescription> {
        match self.call(Request::DescribeNSM)? {
            Response::DescribeNSM {
                version_major,
                version_minor,
                version_patch,
                module_id,
                max_pcrs,
                locked_pcrs,
                digest,
            } => {
                let digest = match digest {
                    api::Digest::SHA384 => Digest::Sha384,
                    d => return Err(Error::NsmResponse(format!("unsupported PCR digest {d:?}"))),
                };
                Ok(NsmDescription::new(
                    (version_major, version_minor, version_patch),
                    module_id,
                    max_pcrs,
                    locked_pcrs.into_iter().collect::<BTreeSet<u16>>(),
                    digest,
                ))
            }
            r => Err(unexpected("DescribeNSM", &r)),
        }
    }

    fn get_random(&self) -> Result<Vec<u8>> {
        match self.call(Request::GetRandom)? {
            Response::GetRandom { random } => Ok(random),
            r => Err(unexpected("GetRandom", &r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_device_is_an_io_error() {
        let e = NsmDevice::open_path("/nonexistent/nsm").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert_eq!(e.to_string(), "opening the NSM device /nonexistent/nsm");
    }

    #[test]
    fn ioctl_on_a_non_nsm_file_is_an_nsm_error_not_a_panic() {
        // /dev/null accepts open(O_RDWR) but not the NSM ioctl (ENOTTY): the driver crate maps
        // that to InternalError.
        let dev = NsmDevice::open_path("/dev/null").unwrap();
        let e = dev.get_random().unwrap_err();
        assert!(matches!(e, Error::Nsm(NsmErrorCode::InternalError)), "{e}");
        let e = dev.attestation(None, Some(&[0u8; 8192]), None).unwrap_err();
        assert!(matches!(e, Error::Nsm(NsmErrorCode::InputTooLarge)), "{e}");
    }
}
