//! Shared by the KMS signing tests: an unsigned EIF, a KMS signing key certified by an openssl
//! CA, and the check through the format crate nitro-cli uses.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_nitro_enclaves_image_format::utils::PcrSignatureChecker;
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader as AwsReader;
use base64::Engine as _;
use nitro_eif::{BootstrapRamdisk, CpioArchive, EifBuilder, EifReader, Pcr, Source};
use nitro_kms::KmsClient;

/// Whether a missing tool must fail the test (CI) instead of skipping it.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {why}"
    );
    eprintln!("SKIPPED: {why}");
    None
}

/// An executable on PATH or in `$NITRO_VENV/bin` / `$NITRO_CACHE/venv/bin`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(v) = std::env::var_os("NITRO_VENV") {
        dirs.push(PathBuf::from(v).join("bin"));
    }
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nitro-rs")
        });
    dirs.push(cache.join("venv/bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .or_else(|| skip(&format!("{name} not found")))
}

fn fake_bzimage(len: usize) -> Vec<u8> {
    let mut k: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(5) as u8)
        .collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k
}

/// An unsigned EIF in `dir`.
pub fn unsigned_eif(dir: &Path) -> PathBuf {
    let mut customer = CpioArchive::new();
    customer
        .file("rootfs/bin/app", 0o755, vec![9; 20_000])
        .unwrap();
    customer.file("cmd", 0o644, b"/bin/app\n".to_vec()).unwrap();
    let path = dir.join("unsigned.eif");
    EifBuilder::with_kernel(Source::bytes(fake_bzimage(100_000)), "console=ttyS0")
        .ramdisk(BootstrapRamdisk::from_bytes(b"\x7fELF init".to_vec()))
        .ramdisk(customer)
        .build_file(&path)
        .unwrap();
    path
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates an `ECC_NIST_P384` `SIGN_VERIFY` key; returns its id and ARN.
pub async fn create_signing_key(kms: &KmsClient) -> (String, String) {
    let created = kms
        .call_json(
            "CreateKey",
            &serde_json::json!({
                "KeySpec": "ECC_NIST_P384",
                "KeyUsage": "SIGN_VERIFY",
                "Description": "EIF signing"
            }),
        )
        .await
        .unwrap();
    let meta = &created["KeyMetadata"];
    (
        meta["KeyId"].as_str().unwrap().to_owned(),
        meta["Arn"].as_str().unwrap().to_owned(),
    )
}

/// A certificate for the KMS key's public half (from `GetPublicKey`), issued by a throw-away
/// openssl CA: KMS holds the private key, the user supplies the certificate.
pub async fn certify(kms: &KmsClient, key_id: &str, openssl: &Path, dir: &Path) -> Vec<u8> {
    let public = kms
        .call_json("GetPublicKey", &serde_json::json!({"KeyId": key_id}))
        .await
        .unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(public["PublicKey"].as_str().unwrap())
        .unwrap();
    std::fs::write(dir.join("kms-pub.der"), &spki).unwrap();
    run(Command::new(openssl)
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(dir.join("kms-pub.der"))
        .arg("-out")
        .arg(dir.join("kms-pub.pem")));
    run(Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=EIF signing CA"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem")));
    run(Command::new(openssl)
        .args([
            "x509",
            "-new",
            "-days",
            "2",
            "-sha384",
            "-subj",
            "/CN=EIF signer in KMS/O=nitro-rs",
        ])
        .arg("-force_pubkey")
        .arg(dir.join("kms-pub.pem"))
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("kms-cert.pem")));
    std::fs::read(dir.join("kms-cert.pem")).unwrap()
}

/// Checks a KMS-signed EIF with the format crate nitro-cli uses: CRC, signature, PCR0-2 as
/// before signing, PCR8 from the certificate.
pub fn check_signed(unsigned: &Path, signed: &Path, cert_pem: &[u8]) {
    let before = EifReader::open(unsigned).unwrap().verify().unwrap();
    let mut r = AwsReader::from_eif(signed.to_str().unwrap().to_owned()).unwrap();
    let m = r.get_measurements().unwrap();
    assert!(r.check_crc());
    let info = r.get_certificate_info(m.clone()).unwrap();
    assert!(serde_json::to_value(info).unwrap()["IssuerName"]["commonName"] == "EIF signing CA");
    assert_eq!(r.sign_check, Some(true));
    assert_eq!(m["PCR0"], before.pcr0.to_hex());
    assert_eq!(m["PCR1"], before.pcr1.to_hex());
    assert_eq!(m["PCR2"], before.pcr2.to_hex());
    assert_eq!(
        m["PCR8"],
        Pcr::of_certificate_pem(cert_pem).unwrap().to_hex()
    );
    let mut checker = PcrSignatureChecker::from_eif(signed.to_str().unwrap()).unwrap();
    checker.verify().unwrap();
}
