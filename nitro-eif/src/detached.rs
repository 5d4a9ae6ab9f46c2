//! Signing after the build: sign requests, signatures made elsewhere, re-signing an EIF, and
//! the asynchronous signer for keys that live in a KMS or an HSM.
//!
//! An EIF's signature covers PCR0 only, so an image can be signed (or re-signed with another
//! key) without rebuilding it: [`SignRequest::for_eif`] measures the image and gives the exact
//! bytes to sign (the COSE `Sig_structure`), [`SignRequest::attach`] takes the signature made
//! elsewhere (raw `r || s` or DER, as `openssl dgst -sign` writes it) and checks it against the
//! certificate, and [`EifSignature::write_eif`] writes the image with its new signature section
//! (every other section copied byte for byte, the CRC recomputed).

use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Seek as _, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, SignatureError};
use crate::format::{self, HEADER_SIZE, SECTION_HEADER_SIZE, SectionKind};
use crate::measure::{Measurements, Pcr};
use crate::reader::EifReader;
use crate::sign::{self, CertificateKey, Signer, SigningAlgorithm};

/// The error type signers return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A signer whose key is remote (a KMS, an HSM behind a network API): like [`Signer`], with an
/// asynchronous `sign`. Use it with [`sign_eif_async`].
///
/// Every [`Signer`] is also an `AsyncSigner` through [`Blocking`].
pub trait AsyncSigner: Send + Sync {
    /// The signing certificate as PEM text (stored in the image; its DER gives PCR8).
    fn certificate_pem(&self) -> &[u8];

    /// The algorithm `sign` produces (must match the certificate's key).
    fn algorithm(&self) -> SigningAlgorithm;

    /// Signs `message` (the COSE `Sig_structure`, to be hashed with the algorithm's digest);
    /// returns the signature as fixed-width `r || s` or as DER (both are accepted).
    fn sign(&self, message: &[u8]) -> impl Future<Output = Result<Vec<u8>, BoxError>> + Send;
}

/// Adapts a synchronous [`Signer`] to [`AsyncSigner`] (its `sign` runs inline).
#[derive(Debug)]
pub struct Blocking<S>(S);

impl<S: Signer> Blocking<S> {
    /// Wraps `signer`.
    pub fn new(signer: S) -> Self {
        Blocking(signer)
    }

    /// Gives back the signer.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S: Signer> AsyncSigner for Blocking<S> {
    fn certificate_pem(&self) -> &[u8] {
        self.0.certificate_pem()
    }

    fn algorithm(&self) -> SigningAlgorithm {
        self.0.algorithm()
    }

    fn sign(&self, message: &[u8]) -> impl Future<Output = Result<Vec<u8>, BoxError>> + Send {
        std::future::ready(self.0.sign(message))
    }
}

/// What has to be signed to sign an image with a given certificate: see the module
/// documentation.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # let (key_pem, cert_pem) = {
/// #     let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
/// #     let cert = rcgen::CertificateParams::new(vec!["signer".into()])?.self_signed(&key)?;
/// #     (key.serialize_pem(), cert.pem())
/// # };
/// use nitro_eif::{Pcr, PemSigner, SignRequest, Signer as _};
/// let pcr0 = Pcr([7; 48]);
/// let request = SignRequest::new(cert_pem.as_bytes(), &pcr0)?;
/// // Sign `request.to_be_signed()` anywhere, e.g. `openssl dgst -sha384 -sign key.pem`:
/// let signer = PemSigner::new(key_pem.as_bytes(), cert_pem.as_bytes())?;
/// let signature = signer.sign(request.to_be_signed())?;
/// let section = request.attach(&signature)?;
/// assert_eq!(section.pcr8(), Pcr::of_certificate_pem(cert_pem.as_bytes())?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SignRequest {
    certificate_pem: Vec<u8>,
    cert: Arc<CertificateKey>,
    pcr0: Pcr,
    payload: Vec<u8>,
    tbs: Vec<u8>,
}

impl std::fmt::Debug for SignRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignRequest")
            .field("algorithm", &self.cert.algorithm)
            .field("pcr0", &self.pcr0)
            .finish_non_exhaustive()
    }
}

impl SignRequest {
    /// The request for an image measuring to `pcr0`, signed with the key of the certificate
    /// (PEM; its curve selects the algorithm).
    pub fn new(certificate_pem: &[u8], pcr0: &Pcr) -> Result<Self> {
        let cert = CertificateKey::from_pem(certificate_pem).map_err(|e| match e {
            Error::Signature(e) => Error::SigningKey(e.to_string()),
            e => e,
        })?;
        let (payload, tbs) = sign::to_be_signed(cert.algorithm, pcr0);
        Ok(SignRequest {
            certificate_pem: certificate_pem.to_vec(),
            cert: Arc::new(cert),
            pcr0: *pcr0,
            payload,
            tbs,
        })
    }

    /// The request for the EIF at `path`: the image is parsed and measured (its CRC must
    /// match; an existing signature is ignored, it will be replaced).
    pub fn for_eif(path: impl AsRef<Path>, certificate_pem: &[u8]) -> Result<Self> {
        let pcr0 = measure_pcr0(path.as_ref())?;
        SignRequest::new(certificate_pem, &pcr0)
    }

    /// The exact bytes to sign (the COSE `Sig_structure`). A signer hashes them with the
    /// algorithm's digest (SHA-384 for P-384), as `openssl dgst -sha384 -sign` does.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.tbs
    }

    /// The digest of [`to_be_signed`](Self::to_be_signed), for signers that take a digest (KMS
    /// `MessageType` `DIGEST`, PKCS#11 `CKM_ECDSA`).
    pub fn digest(&self) -> Vec<u8> {
        aws_lc_rs::digest::digest(self.cert.algorithm.digest(), &self.tbs)
            .as_ref()
            .to_vec()
    }

    /// The signature algorithm (from the certificate's curve).
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.cert.algorithm
    }

    /// The PCR0 being signed.
    pub fn pcr0(&self) -> Pcr {
        self.pcr0
    }

    /// Checks `signature` (fixed-width `r || s`, or a DER `ECDSA-Sig-Value` as OpenSSL, KMS and
    /// most HSM tools produce) against the certificate and builds the signature section.
    pub fn attach(&self, signature: &[u8]) -> Result<EifSignature> {
        let alg = self.cert.algorithm;
        let mut candidates = Vec::new();
        if let Ok(raw) = alg.signature_from_der(signature) {
            candidates.push(raw);
        }
        if signature.len() == alg.signature_len() {
            candidates.push(signature.to_vec());
        }
        if candidates.is_empty() {
            return Err(Error::SigningKey(format!(
                "the signature is neither {} bytes of r || s nor a DER ECDSA signature for {alg}",
                alg.signature_len()
            )));
        }
        let raw = candidates
            .into_iter()
            .find(|raw| self.cert.verify(&self.tbs, raw))
            .ok_or_else(|| {
                Error::SigningKey(
                    "the signature does not verify with the certificate's public key over this image's PCR0"
                        .into(),
                )
            })?;
        let section = sign::section_from_parts(&self.certificate_pem, alg, &self.payload, raw)?;
        Ok(EifSignature {
            section,
            pcr0: self.pcr0,
            pcr8: Pcr::of_bytes(&self.cert.der),
        })
    }
}

/// A verified signature section for an image with a given PCR0 (from
/// [`SignRequest::attach`]).
#[derive(Debug, Clone)]
pub struct EifSignature {
    section: Vec<u8>,
    pcr0: Pcr,
    pcr8: Pcr,
}

impl EifSignature {
    /// The section bytes (CBOR, as nitro-cli writes them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.section
    }

    /// PCR8 of the signed image (from the certificate).
    pub fn pcr8(&self) -> Pcr {
        self.pcr8
    }

    /// Writes the EIF at `input` with this signature to `output` (which may be `input`):
    /// every section but an old signature is copied byte for byte, the new signature section
    /// goes last, the header's section table and CRC are recomputed. The input must measure to
    /// the signed PCR0 and its CRC must match. Written atomically (temporary file, rename).
    pub fn write_eif(
        &self,
        input: impl AsRef<Path>,
        output: impl AsRef<Path>,
    ) -> Result<Measurements> {
        write_signed(input.as_ref(), output.as_ref(), self)
    }
}

/// Signs (or re-signs) the EIF at `input` with `signer` into `output` (which may be `input`);
/// PCR0, PCR1 and PCR2 do not change.
pub fn sign_eif(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    signer: &dyn Signer,
) -> Result<Measurements> {
    let request = SignRequest::for_eif(input.as_ref(), signer.certificate_pem())?;
    check_algorithm(signer.algorithm(), request.algorithm())?;
    let signature = signer.sign(request.to_be_signed()).map_err(Error::Signer)?;
    request.attach(&signature)?.write_eif(input, output)
}

/// [`sign_eif`] with an [`AsyncSigner`] (a KMS or HSM key). The file work is synchronous; the
/// signer is awaited.
pub async fn sign_eif_async<S: AsyncSigner + ?Sized>(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    signer: &S,
) -> Result<Measurements> {
    let request = SignRequest::for_eif(input.as_ref(), signer.certificate_pem())?;
    check_algorithm(signer.algorithm(), request.algorithm())?;
    let signature = signer
        .sign(request.to_be_signed())
        .await
        .map_err(Error::Signer)?;
    request.attach(&signature)?.write_eif(input, output)
}

fn check_algorithm(signer: SigningAlgorithm, cert: SigningAlgorithm) -> Result<()> {
    if signer != cert {
        return Err(Error::SigningKey(format!(
            "the signer produces {signer} but the certificate's key needs {cert}"
        )));
    }
    Ok(())
}

fn measure_pcr0(path: &Path) -> Result<Pcr> {
    let mut eif = EifReader::open(path)?;
    let report = eif.measure()?;
    if !report.crc_ok() {
        return Err(Error::CrcMismatch {
            expected: report.crc_expected,
            computed: report.crc_computed,
        });
    }
    Ok(report.measurements.pcr0)
}

fn write_signed(input: &Path, output: &Path, signature: &EifSignature) -> Result<Measurements> {
    let mut eif = EifReader::open(input)?;
    let report = eif.measure()?;
    if !report.crc_ok() {
        return Err(Error::CrcMismatch {
            expected: report.crc_expected,
            computed: report.crc_computed,
        });
    }
    if report.measurements.pcr0 != signature.pcr0 {
        return Err(SignatureError::PayloadMismatch.into());
    }
    let keep: Vec<_> = eif
        .sections()
        .iter()
        .copied()
        .filter(|s| s.kind != SectionKind::Signature)
        .collect();
    let mut header = eif.header().clone();
    header.section_offsets = [0; format::MAX_SECTIONS];
    header.section_sizes = [0; format::MAX_SECTIONS];
    header.num_sections = u16::try_from(keep.len() + 1).unwrap_or(u16::MAX);
    if keep.len() + 1 > format::MAX_SECTIONS {
        return Err(Error::InvalidArgument(
            "too many sections to add a signature".into(),
        ));
    }

    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".eif-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    let wctx = |e| Error::io(format!("writing {}", output.display()), e);
    let mut crc = crc32fast::Hasher::new();
    let mut offset = HEADER_SIZE as u64;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        out.write_all(&[0u8; HEADER_SIZE]).map_err(wctx)?;
        let mut sink = CrcWriter {
            out: &mut out,
            crc: &mut crc,
        };
        for (i, s) in keep.iter().enumerate() {
            header.section_offsets[i] = offset;
            header.section_sizes[i] = s.size;
            sink.write_all(&format::section_header(s.kind, s.size))
                .map_err(wctx)?;
            eif.copy_section(s.index, &mut sink)?;
            offset += SECTION_HEADER_SIZE as u64 + s.size;
        }
        let n = keep.len();
        let len = signature.section.len() as u64;
        header.section_offsets[n] = offset;
        header.section_sizes[n] = len;
        sink.write_all(&format::section_header(SectionKind::Signature, len))
            .and_then(|()| sink.write_all(&signature.section))
            .map_err(wctx)?;
        offset += SECTION_HEADER_SIZE as u64 + len;
        out.flush().map_err(wctx)?;
    }
    let mut bytes = header.to_bytes();
    let mut full = crc32fast::Hasher::new();
    full.update(&bytes[..format::CRC_OFFSET]);
    full.combine(&crc);
    header.crc32 = full.finalize();
    bytes[format::CRC_OFFSET..].copy_from_slice(&header.crc32.to_be_bytes());
    let mut f: &File = tmp.as_file();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&bytes))
        .and_then(|()| f.sync_all())
        .map_err(wctx)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(wctx)?;
    }
    debug_assert_eq!(f.metadata().map(|m| m.len()).ok(), Some(offset));
    tmp.persist(output).map_err(|e| wctx(e.error))?;
    // Check what was written, as a reader of the image will.
    let measurements = EifReader::open(output)?.verify()?;
    Ok(measurements)
}

struct CrcWriter<'a, W> {
    out: &'a mut W,
    crc: &'a mut crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
