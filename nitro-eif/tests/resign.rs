//! Signing after the build (issue 18 item 2): sign requests signed by the real `openssl`
//! binary, DER and raw signatures attached, unsigned and signed images (re-)signed without a
//! rebuild (PCR0-2 unchanged, CRC recomputed), and the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use nitro_eif::{
    Blocking, EifReader, Error, Pcr, PemSigner, SignRequest, SignatureError, Signer as _,
    SigningAlgorithm, sign_eif, sign_eif_async,
};

fn openssl() -> Option<PathBuf> {
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = d.join("openssl");
        if p.is_file() {
            return Some(p);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and openssl is not installed"
    );
    eprintln!("SKIPPED: openssl not found");
    None
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-384 key and self-signed certificate made by openssl in `dir`.
fn openssl_identity(openssl: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    run(Command::new(openssl)
        .args(["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out"])
        .arg(&key));
    run(Command::new(openssl)
        .args(["req", "-new", "-x509", "-sha384", "-days", "2", "-subj"])
        .arg(format!("/CN={name}/O=nitro-rs tests"))
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (key, cert)
}

fn measurements(path: &Path) -> nitro_eif::Measurements {
    EifReader::open(path).unwrap().verify().unwrap()
}

#[test]
fn openssl_signs_a_request_and_the_signature_is_attached() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unsigned = dir.path().join("app.eif");
    std::fs::write(&unsigned, common::small_eif(false)).unwrap();
    let before = measurements(&unsigned);
    assert!(before.pcr8.is_none());
    let (key, cert) = openssl_identity(&openssl, dir.path(), "offline");
    let cert_pem = std::fs::read(&cert).unwrap();

    // sign-request -> openssl dgst -sha384 -sign (DER) -> attach-signature.
    let request = SignRequest::for_eif(&unsigned, &cert_pem).unwrap();
    assert_eq!(request.algorithm(), SigningAlgorithm::Es384);
    assert_eq!(request.pcr0(), before.pcr0);
    let tbs = dir.path().join("tbs.bin");
    std::fs::write(&tbs, request.to_be_signed()).unwrap();
    let sig = dir.path().join("sig.der");
    run(Command::new(&openssl)
        .args(["dgst", "-sha384", "-sign"])
        .arg(&key)
        .arg("-out")
        .arg(&sig)
        .arg(&tbs));
    let der = std::fs::read(&sig).unwrap();
    assert_eq!(der[0], 0x30);
    let signature = request.attach(&der).unwrap();
    let signed = dir.path().join("signed.eif");
    let after = signature.write_eif(&unsigned, &signed).unwrap();
    assert_eq!(
        (after.pcr0, after.pcr1, after.pcr2),
        (before.pcr0, before.pcr1, before.pcr2)
    );
    assert_eq!(
        after.pcr8,
        Some(Pcr::of_certificate_pem(&cert_pem).unwrap())
    );
    assert_eq!(measurements(&signed), after);
    // openssl verifies what the image now carries, over the same bytes.
    let raw = SigningAlgorithm::Es384.signature_from_der(&der).unwrap();
    assert_eq!(raw.len(), 96);
    run(Command::new(&openssl)
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&cert)
        .arg("-out")
        .arg(dir.path().join("pub.pem")));
    run(Command::new(&openssl)
        .args(["dgst", "-sha384", "-verify"])
        .arg(dir.path().join("pub.pem"))
        .arg("-signature")
        .arg(&sig)
        .arg(&tbs));

    // The same signature as raw r || s attaches to the same section.
    let again = request.attach(&raw).unwrap();
    assert_eq!(again.as_bytes(), signature.as_bytes());

    // The digest form is SHA-384 of the request.
    assert_eq!(
        request.digest(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, request.to_be_signed()).as_ref()
    );

    // Re-sign the signed image in place with another key: PCR0-2 unchanged, PCR8 follows.
    let (key2, cert2) = openssl_identity(&openssl, dir.path(), "second");
    let signer = PemSigner::from_files(&key2, &cert2).unwrap();
    let resigned = sign_eif(&signed, &signed, &signer).unwrap();
    assert_eq!(
        (resigned.pcr0, resigned.pcr1, resigned.pcr2),
        (before.pcr0, before.pcr1, before.pcr2)
    );
    let cert2_pem = std::fs::read(&cert2).unwrap();
    assert_eq!(
        resigned.pcr8,
        Some(Pcr::of_certificate_pem(&cert2_pem).unwrap())
    );
    let eif = EifReader::open(&signed).unwrap();
    assert_eq!(eif.signing_certificate_pem(), Some(&cert2_pem[..]));
    // One signature section, last.
    let kinds: Vec<_> = eif.sections().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == nitro_eif::SectionKind::Signature)
            .count(),
        1
    );
    assert_eq!(kinds.last(), Some(&nitro_eif::SectionKind::Signature));

    // Re-signing gives the same bytes as signing at build time with the same signature.
    let rebuilt = measurements(&signed);
    assert_eq!(rebuilt, resigned);
}

#[test]
fn wrong_signatures_and_damaged_images_are_refused() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let eif = dir.path().join("app.eif");
    std::fs::write(&eif, common::small_eif(false)).unwrap();
    let (key, cert) = openssl_identity(&openssl, dir.path(), "k");
    let (_, other_cert) = openssl_identity(&openssl, dir.path(), "other");
    let cert_pem = std::fs::read(&cert).unwrap();
    let signer = PemSigner::from_files(&key, &cert).unwrap();

    let request = SignRequest::for_eif(&eif, &cert_pem).unwrap();
    // A signature over other bytes.
    let wrong = signer.sign(b"something else").unwrap();
    assert!(matches!(request.attach(&wrong), Err(Error::SigningKey(_))));
    // Garbage of the wrong length, and truncated DER.
    assert!(request.attach(&[0u8; 10]).is_err());
    let good = signer.sign(request.to_be_signed()).unwrap();
    assert!(request.attach(&good[..95]).is_err());
    // A good signature, but checked against another certificate.
    let other = SignRequest::for_eif(&eif, &std::fs::read(&other_cert).unwrap()).unwrap();
    assert!(other.attach(&good).is_err());
    // The signature for one image does not go onto another.
    let section = request.attach(&good).unwrap();
    let different = dir.path().join("different.eif");
    let mut b = common::builder(common::fake_bzimage(20_000, 9));
    let mut out = std::io::Cursor::new(Vec::new());
    b = b.name("other");
    b.build(&mut out).unwrap();
    std::fs::write(&different, out.into_inner()).unwrap();
    let e = section
        .write_eif(&different, dir.path().join("x.eif"))
        .unwrap_err();
    assert!(
        matches!(e, Error::Signature(SignatureError::PayloadMismatch)),
        "{e}"
    );
    // A damaged image (bad CRC) is not signed.
    let mut bytes = std::fs::read(&eif).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    let damaged = dir.path().join("damaged.eif");
    std::fs::write(&damaged, &bytes).unwrap();
    assert!(matches!(
        SignRequest::for_eif(&damaged, &cert_pem),
        Err(Error::CrcMismatch { .. })
    ));
    assert!(sign_eif(&damaged, dir.path().join("y.eif"), &signer).is_err());
}

#[test]
fn the_async_path_signs_like_the_sync_one() {
    let dir = tempfile::tempdir().unwrap();
    let eif = dir.path().join("app.eif");
    std::fs::write(&eif, common::small_eif(true)).unwrap();
    let (k, c) = common::p384_identity();
    let signer = Blocking::new(PemSigner::new(k.as_bytes(), c.as_bytes()).unwrap());
    let out = dir.path().join("async.eif");
    // A minimal executor: the future is ready at once.
    let fut = sign_eif_async(&eif, &out, &signer);
    let m = futures_lite_block_on(fut).unwrap();
    assert_eq!(m.pcr8, Some(Pcr::of_certificate_pem(c.as_bytes()).unwrap()));
    assert_eq!(measurements(&out), m);
}

fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
