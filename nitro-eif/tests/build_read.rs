//! Builder → reader round trips, reproducibility, signing, measurement formulas, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Cursor, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA384, digest};
use common::*;
use nitro_eif::{
    Arch, CpioArchive, EifBuilder, EifReader, Error, FormatError, HEADER_SIZE, Pcr, PemSigner,
    SectionKind, SignatureError, Signer, SigningAlgorithm, Source,
};

fn pcr(parts: &[&[u8]]) -> Pcr {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    Pcr::extend_zero(digest(&SHA384, &all).as_ref())
}

#[test]
fn pcrs_follow_the_formulas_and_the_layout_is_nitro_clis() {
    let kernel = fake_bzimage(50_000, 1);
    let bootstrap = bootstrap().into_archive().unwrap();
    let customer = customer_archive();
    let mut boot_bytes = Vec::new();
    bootstrap.reader().read_to_end(&mut boot_bytes).unwrap();
    let mut cust_bytes = Vec::new();
    customer.reader().read_to_end(&mut cust_bytes).unwrap();

    let mut out = Cursor::new(Vec::new());
    let built = EifBuilder::with_kernel(Source::bytes(kernel.clone()), "console=ttyS0")
        .ramdisk(bootstrap)
        .ramdisk(customer)
        .build(&mut out)
        .unwrap();
    let file = out.into_inner();
    let cmdline: &[u8] = b"console=ttyS0";

    let m = built.measurements;
    assert_eq!(m.pcr0, pcr(&[&kernel, cmdline, &boot_bytes, &cust_bytes]));
    assert_eq!(m.pcr1, pcr(&[&kernel, cmdline, &boot_bytes]));
    assert_eq!(m.pcr2, pcr(&[&cust_bytes]));
    assert_eq!(m.pcr8, None);

    // Layout: header, kernel, cmdline, metadata, ramdisks; contiguous; ends at EOF.
    let kinds: Vec<_> = built.sections.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            SectionKind::Kernel,
            SectionKind::Cmdline,
            SectionKind::Metadata,
            SectionKind::Ramdisk,
            SectionKind::Ramdisk
        ]
    );
    assert_eq!(built.sections[0].offset, HEADER_SIZE as u64);
    for w in built.sections.windows(2) {
        assert_eq!(w[1].offset, w[0].offset + 12 + w[0].size);
    }
    assert_eq!(built.size, file.len() as u64);
    assert_eq!(&file[..4], b".eif");
    assert_eq!(u16::from_be_bytes([file[4], file[5]]), 4);
    assert_eq!(u16::from_be_bytes([file[26], file[27]]), 5);
    // CRC = crc32(header without the CRC field || everything after the header).
    let mut crc = crc32fast::Hasher::new();
    crc.update(&file[..544]);
    crc.update(&file[548..]);
    assert_eq!(
        crc.finalize(),
        u32::from_be_bytes([file[544], file[545], file[546], file[547]])
    );
    // Command line stored without a trailing NUL.
    let s = &built.sections[1];
    assert_eq!(&file[s.offset as usize + 12..][..s.size as usize], cmdline);
    // Metadata: detected kernel release, default build time.
    assert_eq!(built.metadata.build.kernel_version, "6.12.12+bpo");
    assert_eq!(built.metadata.build.operating_system, "Linux");
    assert_eq!(built.arch, Arch::X86_64);

    let mut r = EifReader::new(Cursor::new(file)).unwrap();
    assert_eq!(r.verify().unwrap(), m);
    assert_eq!(r.cmdline(), cmdline);
    assert_eq!(r.metadata(), Some(&built.metadata));
}

#[test]
fn builds_reproduce_byte_for_byte() {
    let a = small_eif(false);
    let b = small_eif(false);
    assert_eq!(a, b);
    // The build time is an input.
    let with_time = |t: SystemTime| {
        let mut out = Cursor::new(Vec::new());
        let o = builder(fake_bzimage(20_000, 3))
            .build_time(t)
            .build(&mut out)
            .unwrap();
        (out.into_inner(), o)
    };
    let (x, ox) = with_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let (y, oy) = with_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let (z, oz) = with_time(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    assert_eq!(x, y);
    assert_ne!(x, z);
    assert_eq!(ox.measurements, oz.measurements, "metadata is not measured");
    assert_eq!(ox.metadata.build.build_time, "2023-11-14T22:13:20+00:00");
    assert_eq!(oy.metadata, ox.metadata);
}

#[test]
fn signed_images_verify_and_measure_pcr8() {
    let (key, cert) = p384_identity();
    let signer = PemSigner::new(key.as_bytes(), cert.as_bytes()).unwrap();
    assert_eq!(signer.algorithm(), SigningAlgorithm::Es384);
    let mut out = Cursor::new(Vec::new());
    let built = builder(fake_bzimage(30_000, 2))
        .signer(signer)
        .build(&mut out)
        .unwrap();
    let pcr8 = Pcr::of_certificate_pem(cert.as_bytes()).unwrap();
    assert_eq!(built.measurements.pcr8, Some(pcr8));
    let file = out.into_inner();
    assert_eq!(
        built.sections.last().map(|s| s.kind),
        Some(SectionKind::Signature)
    );

    let mut r = EifReader::new(Cursor::new(file.clone())).unwrap();
    assert!(r.is_signed());
    assert_eq!(r.signing_certificate_pem(), Some(cert.as_bytes()));
    assert_eq!(r.verify().unwrap(), built.measurements);
    r.check_certificate_validity(SystemTime::now()).unwrap();
    // Typed: the check time and the validity period, in seconds since the epoch.
    let e = r.check_certificate_validity(UNIX_EPOCH).unwrap_err();
    let Error::Signature(SignatureError::Expired {
        at,
        not_before,
        not_after,
    }) = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*at, 0);
    assert!(0 < *not_before && not_before < not_after, "{e}");
    let message = e.to_string();
    assert!(
        message.starts_with(
            "EIF signature: the signing certificate is not valid at 1970-01-01T00:00:00Z (valid from "
        ),
        "{message}"
    );
    let d = r.describe().unwrap();
    assert_eq!(d.signature_check, Some(true));
    assert!(d.check_crc);
    let info = d.signing_certificate.unwrap();
    assert_eq!(
        info.issuer_name.get("commonName").map(String::as_str),
        Some("EIF signer")
    );
    assert_eq!(info.algorithm, "ecdsa-with-SHA384");
    assert_eq!(
        built.describe().to_json_pretty(),
        r.describe().unwrap().to_json_pretty()
    );

    // Same inputs, same PCRs (ECDSA signatures are randomized, so the bytes differ only there).
    let (key2, _) = (key.clone(), ());
    let mut again = Cursor::new(Vec::new());
    let b2 = builder(fake_bzimage(30_000, 2))
        .signer(PemSigner::new(key2.as_bytes(), cert.as_bytes()).unwrap())
        .build(&mut again)
        .unwrap();
    assert_eq!(b2.measurements, built.measurements);
    let sig = built.sections.last().unwrap();
    assert_eq!(
        file[548..sig.offset as usize],
        again.get_ref()[548..sig.offset as usize]
    );
}

#[test]
fn signature_from_another_image_does_not_verify() {
    let a = small_eif(true);
    let mut other = Cursor::new(Vec::new());
    let (k, c) = p384_identity();
    builder(fake_bzimage(20_000, 9))
        .signer(PemSigner::new(k.as_bytes(), c.as_bytes()).unwrap())
        .build(&mut other)
        .unwrap();
    let other = other.into_inner();
    // Graft b's signature section onto a (same length: same certificate size class) and fix
    // the header and CRC so that only the signature is wrong.
    let ra = EifReader::new(Cursor::new(a.clone())).unwrap();
    let rb = EifReader::new(Cursor::new(other.clone())).unwrap();
    let sa = *ra.sections().last().unwrap();
    let sb = *rb.sections().last().unwrap();
    let mut grafted = a[..sa.offset as usize].to_vec();
    grafted.extend_from_slice(&other[sb.offset as usize..]);
    let idx = sa.index;
    grafted[284 + 8 * idx..292 + 8 * idx].copy_from_slice(&sb.size.to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&grafted[..544]);
    crc.update(&grafted[548..]);
    let crc = crc.finalize();
    grafted[544..548].copy_from_slice(&crc.to_be_bytes());
    let mut r = EifReader::new(Cursor::new(grafted)).unwrap();
    let report = r.measure().unwrap();
    assert!(report.crc_ok());
    assert_eq!(report.signature, Some(Err(SignatureError::PayloadMismatch)));
    assert!(matches!(
        r.verify(),
        Err(Error::Signature(SignatureError::PayloadMismatch))
    ));
    assert_eq!(r.describe().unwrap().signature_check, Some(false));
}

#[test]
fn key_and_certificate_must_match() {
    let (k1, _) = p384_identity();
    let (_, c2) = p384_identity();
    assert!(matches!(
        PemSigner::new(k1.as_bytes(), c2.as_bytes()),
        Err(Error::SigningKey(_))
    ));
    assert!(PemSigner::new(b"not a key", c2.as_bytes()).is_err());
}

struct BrokenSigner(String);

impl Signer for BrokenSigner {
    fn certificate_pem(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::Es384
    }
    fn sign(&self, _: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(vec![0x42; 96])
    }
}

#[test]
fn a_signer_whose_output_does_not_verify_is_refused() {
    let (_, c) = p384_identity();
    let r = builder(fake_bzimage(5000, 1))
        .signer(BrokenSigner(c))
        .build(&mut Cursor::new(Vec::new()));
    assert!(matches!(r, Err(Error::SigningKey(_))), "{r:?}");
}

#[test]
fn architecture_is_detected_and_checked() {
    // Unknown kernel format without an explicit architecture.
    let r = EifBuilder::with_kernel(Source::bytes(vec![0; 100]), "")
        .ramdisk(customer_archive())
        .build(&mut Cursor::new(Vec::new()));
    assert!(matches!(r, Err(Error::UnknownArch)));
    // Explicit architecture contradicting the kernel.
    let r = EifBuilder::with_kernel(Source::bytes(fake_bzimage(2000, 1)), "")
        .arch(Arch::Aarch64)
        .ramdisk(customer_archive())
        .build(&mut Cursor::new(Vec::new()));
    assert!(matches!(r, Err(Error::ArchMismatch { .. })));
    // arm64 Image: flag bit 0.
    let mut arm = vec![0u8; 4096];
    arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let mut out = Cursor::new(Vec::new());
    let b = EifBuilder::with_kernel(Source::bytes(arm), "")
        .ramdisk(customer_archive())
        .build(&mut out)
        .unwrap();
    assert_eq!(b.arch, Arch::Aarch64);
    assert_eq!(out.get_ref()[7], 1);
    assert_eq!(EifReader::new(out).unwrap().arch(), Arch::Aarch64);
}

#[test]
fn inputs_that_change_size_fail_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("kernel");
    std::fs::write(&k, fake_bzimage(3000, 1)).unwrap();
    // A reader that yields fewer bytes than declared.
    let r = EifBuilder::new(&k, "")
        .ramdisk(Source::reader(Cursor::new(vec![0u8; 10]), 20))
        .build(&mut Cursor::new(Vec::new()));
    assert!(
        matches!(
            r,
            Err(Error::SizeMismatch {
                expected: 20,
                actual: 10,
                ..
            })
        ),
        "{r:?}"
    );
    let r = EifBuilder::new(&k, "")
        .ramdisk(Source::reader(Cursor::new(vec![0u8; 30]), 20))
        .build(&mut Cursor::new(Vec::new()));
    assert!(matches!(r, Err(Error::SizeMismatch { .. })), "{r:?}");
    // No ramdisk, NUL in the command line.
    assert!(matches!(
        EifBuilder::new(&k, "").build(&mut Cursor::new(Vec::new())),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        EifBuilder::new(&k, "a\0b")
            .ramdisk(customer_archive())
            .build(&mut Cursor::new(Vec::new())),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn build_file_is_atomic_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.eif");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let built = builder(fake_bzimage(3 << 20, 5))
        .on_progress(move |p| s2.lock().unwrap().push((p.done, p.total)))
        .build_file(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, built.size);
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 3);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(seen.last().map(|p| p.0), Some(built.size));
    // Nothing else left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A failing build leaves no file behind.
    let r = EifBuilder::with_kernel(Source::bytes(vec![0; 10]), "")
        .ramdisk(CpioArchive::new())
        .build_file(dir.path().join("x.eif"));
    assert!(r.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn large_images_hash_on_threads_with_the_same_result() {
    // Above the threading threshold: must equal the single-pass definition.
    let kernel = fake_bzimage(9 << 20, 7);
    let ramdisk: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
    let mut out = Cursor::new(Vec::new());
    let b = EifBuilder::with_kernel(Source::bytes(kernel.clone()), "x")
        .ramdisk_file_bytes(ramdisk.clone())
        .build(&mut out)
        .unwrap();
    assert_eq!(b.measurements.pcr0, pcr(&[&kernel, b"x", &ramdisk]));
    assert_eq!(b.measurements.pcr1, pcr(&[&kernel, b"x", &ramdisk]));
    assert_eq!(b.measurements.pcr2, pcr(&[]));
    assert_eq!(
        EifReader::new(out).unwrap().verify().unwrap(),
        b.measurements
    );
}

trait RamdiskBytes {
    fn ramdisk_file_bytes(self, b: Vec<u8>) -> Self;
}

impl RamdiskBytes for EifBuilder {
    fn ramdisk_file_bytes(self, b: Vec<u8>) -> Self {
        self.ramdisk(Source::bytes(b))
    }
}

#[test]
fn reader_rejects_structural_problems() {
    let good = small_eif(false);
    let parse = |b: Vec<u8>| EifReader::new(Cursor::new(b)).map(|_| ());
    let mut b = good.clone();
    b[0] = b'x';
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::BadMagic(_)))
    ));
    let mut b = good.clone();
    b[5] = 5;
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::UnsupportedVersion(5)))
    ));
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::Truncated { .. }))
    ));
    let b = good[..good.len() - 1].to_vec();
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::Truncated { .. }))
    ));
    let mut b = good.clone();
    b[27] = 33;
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::TooManySections(33)))
    ));
    // Swap kernel and cmdline section types.
    let r = EifReader::new(Cursor::new(good.clone())).unwrap();
    let (k, c) = (r.sections()[0], r.sections()[1]);
    let mut b = good.clone();
    b[k.offset as usize + 1] = 2;
    b[c.offset as usize + 1] = 1;
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::SectionOrder(_)))
    ));
    // Section size disagreement.
    let mut b = good.clone();
    b[c.offset as usize + 11] ^= 1;
    assert!(matches!(
        parse(b),
        Err(Error::Format(FormatError::SizeDisagreement { .. }))
    ));
    // Huge offsets do not allocate or overflow.
    let mut b = good.clone();
    b[28..36].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(parse(b).is_err());
    let mut b = good;
    b[284..292].copy_from_slice(&(u64::MAX - 5).to_be_bytes());
    assert!(parse(b).is_err());
}

#[test]
fn crc_mismatch_is_reported() {
    let mut b = small_eif(false);
    let n = b.len();
    b[n - 100] ^= 0x10; // inside the customer ramdisk
    let mut r = EifReader::new(Cursor::new(b)).unwrap();
    let report = r.measure().unwrap();
    assert!(!report.crc_ok());
    assert!(matches!(r.verify(), Err(Error::CrcMismatch { .. })));
    assert!(!r.describe().unwrap().check_crc);
}

#[test]
fn describe_json_has_nitro_cli_keys() {
    let mut r = EifReader::new(Cursor::new(small_eif(true))).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.describe().unwrap().to_json_pretty()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "EifVersion",
        "Measurements",
        "IsSigned",
        "SigningCertificate",
        "CheckCRC",
        "SignatureCheck",
        "ImageName",
        "ImageVersion",
        "Metadata",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    let m = &v["Measurements"];
    assert_eq!(m["HashAlgorithm"], "Sha512_48 { .. }");
    for k in ["PCR0", "PCR1", "PCR2", "PCR8"] {
        assert_eq!(m[k].as_str().map(str::len), Some(96), "{k}");
    }
    assert_eq!(v["Metadata"]["BuildTool"], "nitro-eif");
    assert_eq!(v["ImageName"], "test");
}

#[test]
fn copy_section_extracts_data() {
    let file = small_eif(false);
    let mut r = EifReader::new(Cursor::new(file)).unwrap();
    let mut cmd = Vec::new();
    r.copy_section(1, &mut cmd).unwrap();
    assert_eq!(cmd, b"console=ttyS0 reboot=k panic=30");
    assert!(r.copy_section(99, &mut Vec::new()).is_err());
}

#[test]
fn sec1_keys_and_p256_work() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let sec1 = pair.private_key().as_der().unwrap();
    let pem = |label: &str, der: &[u8]| pem::encode(&pem::Pem::new(label, der));
    let key_pem = pem("EC PRIVATE KEY", sec1.as_ref());
    let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["p256".into()])
        .unwrap()
        .self_signed(&rc_key)
        .unwrap()
        .pem();
    let signer = PemSigner::new(key_pem.as_bytes(), cert.as_bytes()).unwrap();
    assert_eq!(signer.algorithm(), SigningAlgorithm::Es256);
    let mut out = Cursor::new(Vec::new());
    let built = builder(fake_bzimage(4000, 4))
        .signer(signer)
        .build(&mut out)
        .unwrap();
    let mut r = EifReader::new(out).unwrap();
    assert_eq!(r.verify().unwrap(), built.measurements);
    assert_eq!(
        r.describe().unwrap().signing_certificate.unwrap().algorithm,
        "ecdsa-with-SHA256"
    );
}
