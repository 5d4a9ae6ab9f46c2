//! Interoperability with independent implementations:
//! - AWS's own `aws-nitro-enclaves-nsm-api` types (serde_cbor) parse our simulated payloads and
//!   the genuine fixtures to the same values as our parser, and our verifier accepts a payload
//!   encoded by that crate;
//! - OpenSSL validates the simulator's certificate chain (`openssl verify`) and its COSE
//!   signature over the Sig_structure (`openssl dgst -verify`).

#![cfg(all(feature = "device", feature = "simulator"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest as AwsDigest};
use nitro_attest::{
    AttestationDocument, CheckTime, Nsm, Policy, SimulatedNsm, Timestamp, UnverifiedDocument,
    Verifier,
};

const T0: Timestamp = Timestamp::from_unix_millis(1_750_000_000_123);

fn same(ours: &AttestationDocument, aws: &AttestationDoc) {
    assert_eq!(ours.module_id, aws.module_id);
    assert_eq!(aws.digest, AwsDigest::SHA384);
    assert_eq!(ours.timestamp.unix_millis(), aws.timestamp);
    let aws_pcrs: BTreeMap<u16, Vec<u8>> = aws
        .pcrs
        .iter()
        .map(|(k, v)| (u16::try_from(*k).unwrap(), v.to_vec()))
        .collect();
    assert_eq!(ours.pcrs, aws_pcrs);
    assert_eq!(ours.certificate, aws.certificate.to_vec());
    let bundle: Vec<Vec<u8>> = aws.cabundle.iter().map(|c| c.to_vec()).collect();
    assert_eq!(ours.cabundle, bundle);
    assert_eq!(ours.public_key, aws.public_key.as_ref().map(|b| b.to_vec()));
    assert_eq!(ours.user_data, aws.user_data.as_ref().map(|b| b.to_vec()));
    assert_eq!(ours.nonce, aws.nonce.as_ref().map(|b| b.to_vec()));
}

#[test]
fn aws_nsm_api_parses_simulated_payloads_identically() {
    for indefinite in [false, true] {
        let nsm = SimulatedNsm::builder()
            .seed(21)
            .fixed_time(T0)
            .indefinite_length_payload(indefinite)
            .build()
            .unwrap();
        nsm.extend_pcr(16, b"x").unwrap();
        nsm.lock_pcr(16).unwrap();
        for (u, n, k) in [
            (None, None, None),
            (Some(&b""[..]), Some(&[1u8; 32][..]), Some(&b"key"[..])),
        ] {
            let doc = nsm.attestation(u, n, k).unwrap();
            let ours = UnverifiedDocument::parse(&doc).unwrap();
            let aws = AttestationDoc::from_binary(ours.payload_bytes()).unwrap();
            same(ours.payload(), &aws);
        }
    }
}

#[test]
fn aws_nsm_api_parses_genuine_payloads_identically() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    for f in &fixtures {
        let ours = f.parsed();
        let aws = AttestationDoc::from_binary(ours.payload_bytes())
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.file));
        same(ours.payload(), &aws);
    }
}

/// The COSE Sig_structure, written independently of the crate.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84, 0x6a];
    out.extend_from_slice(b"Signature1");
    for b in [protected, &[], payload] {
        let n = b.len();
        if n < 24 {
            out.push(0x40 | n as u8);
        } else if n < 256 {
            out.extend_from_slice(&[0x58, n as u8]);
        } else {
            out.push(0x59);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        out.extend_from_slice(b);
    }
    out
}

#[test]
fn payload_encoded_by_aws_nsm_api_verifies() {
    // Take a simulated document, re-encode its payload with AWS's serde_cbor-based encoder,
    // re-sign it with a key certified under a test root, and verify.
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut rp = CertificateParams::default();
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = rp.self_signed(&root_key).unwrap();
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut lp = CertificateParams::default();
    lp.distinguished_name = rcgen::DistinguishedName::new();
    lp.distinguished_name
        .push(rcgen::DnType::CommonName, "leaf");
    lp.is_ca = IsCa::ExplicitNoCa;
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = lp
        .signed_by(&leaf_key, &rcgen::Issuer::from_params(&rp, &root_key))
        .unwrap();

    let mut pcrs = BTreeMap::new();
    for i in 0..16usize {
        pcrs.insert(i, vec![i as u8; 48]);
    }
    let aws = AttestationDoc::new(
        "i-0123456789abcdef0-enc0123456789abcdef".to_owned(),
        AwsDigest::SHA384,
        T0.unix_millis(),
        pcrs,
        leaf.der().to_vec(),
        vec![root.der().to_vec()],
        Some(b"user".to_vec()),
        None,
        Some(vec![]),
    );
    let payload = aws.to_binary();
    let protected = [0xa1, 0x01, 0x38, 0x22];
    let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &leaf_key.serialize_der(),
    )
    .unwrap();
    let sig = signer
        .sign(
            &aws_lc_rs::rand::SystemRandom::new(),
            &sig_structure(&protected, &payload),
        )
        .unwrap();
    let mut doc = vec![0x84, 0x44];
    doc.extend_from_slice(&protected);
    doc.push(0xa0);
    doc.push(0x59);
    doc.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    doc.extend_from_slice(&payload);
    doc.extend_from_slice(&[0x58, 0x60]);
    doc.extend_from_slice(sig.as_ref());

    let anchors = nitro_attest::TrustAnchors::non_aws_root_der(root.der()).unwrap();
    let v = Verifier::new(anchors)
        .verify(
            &doc,
            T0,
            &Policy::new()
                .check_time(CheckTime::At(T0))
                .expect_pcr(3, [3u8; 48])
                .expect_public_key(b""),
        )
        .unwrap();
    same(&v, &aws);
}

fn openssl() -> Option<&'static str> {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("openssl");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but openssl is not installed");
    }
    eprintln!("SKIPPED: openssl not found");
    None
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn openssl_validates_the_simulated_chain_and_signature() {
    let Some(openssl) = openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let now = Timestamp::now();
    let nsm = SimulatedNsm::builder()
        .seed(5)
        .fixed_time(now)
        .build()
        .unwrap();
    let doc = nsm.attestation(None, Some(b"n"), None).unwrap();
    let parsed = UnverifiedDocument::parse(&doc).unwrap();
    let p = parsed.payload();
    std::fs::write(d("root.pem"), pem(&p.cabundle[0])).unwrap();
    assert_eq!(pem(&p.cabundle[0]), nsm.root_certificate_pem());
    let chain: String = p.cabundle[1..].iter().map(|c| pem(c)).collect();
    std::fs::write(d("chain.pem"), chain).unwrap();
    std::fs::write(d("leaf.pem"), pem(&p.certificate)).unwrap();
    let path = |n: &str| d(n).to_str().unwrap().to_owned();

    // The whole chain validates under OpenSSL's RFC 5280 path validation, at the time the
    // document was produced (no purpose: Nitro leaves carry no EKU).
    let (ok, out) = run(Command::new(openssl).args([
        "verify",
        "-x509_strict",
        "-attime",
        &now.unix_secs().to_string(),
        "-CAfile",
        &path("root.pem"),
        "-untrusted",
        &path("chain.pem"),
        &path("leaf.pem"),
    ]));
    assert!(ok, "{out}");
    // ...and fails after the three-hour leaf lifetime.
    let (ok, out) = run(Command::new(openssl).args([
        "verify",
        "-attime",
        &(now.unix_secs() + 4 * 3600).to_string(),
        "-CAfile",
        &path("root.pem"),
        "-untrusted",
        &path("chain.pem"),
        &path("leaf.pem"),
    ]));
    assert!(!ok, "{out}");

    // The COSE signature, converted to DER, verifies over an independently built Sig_structure.
    std::fs::write(
        d("tbs.bin"),
        sig_structure(parsed.protected_header(), parsed.payload_bytes()),
    )
    .unwrap();
    let sig = parsed.signature();
    let int = |v: &[u8]| {
        let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len() - 1)..];
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [int(&sig[..48]), int(&sig[48..])].concat();
    let der = [vec![0x30, body.len() as u8], body].concat();
    std::fs::write(d("sig.der"), der).unwrap();
    let (ok, out) = run(Command::new(openssl).args([
        "x509",
        "-in",
        &path("leaf.pem"),
        "-pubkey",
        "-noout",
        "-out",
        &path("leaf.pub"),
    ]));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(openssl).args([
        "dgst",
        "-sha384",
        "-verify",
        &path("leaf.pub"),
        "-signature",
        &path("sig.der"),
        &path("tbs.bin"),
    ]));
    assert!(ok && out.contains("Verified OK"), "{out}");
    assert!(Path::new(&path("tbs.bin")).exists());

    // The leaf's KeyUsage is non-critical, as in real documents.
    let (ok, out) =
        run(Command::new(openssl).args(["x509", "-in", &path("leaf.pem"), "-noout", "-text"]));
    assert!(ok, "{out}");
    assert!(
        out.contains("X509v3 Key Usage: \n") || out.contains("X509v3 Key Usage:\n"),
        "{out}"
    );
    assert!(out.contains("Digital Signature, Non Repudiation"), "{out}");
}
