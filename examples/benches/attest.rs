//! Attestation document verification throughput, beside the physical floor.
//!
//! ```sh
//! cargo bench --bench attest
//! ```
//!
//! Groups (all single-threaded, one document per iteration):
//! - `attest/ecdsa_p384_verify`: one raw ECDSA P-384/SHA-384 verification of the document's
//!   COSE signature with an already parsed key (aws-lc-rs): the floor of cached verification;
//!   five of them are the floor of full-chain verification;
//! - `attest/parse`: COSE_Sign1 + payload parsing only;
//! - `attest/verify_full_chain`: parse + four certificate signatures + COSE signature + policy;
//! - `attest/verify_cached`: the same with a warm [`CertCache`] (one ECDSA verification).
//!
//! The document is the genuine AWS-signed `marlin__sdks_rs_testcases_aws.bin` from
//! `$NITRO_FIXTURES` (default `tests/fixtures`), verified at its own timestamp; without the
//! fixtures a simulated document of the same shape is used (and a note is printed).

#![allow(missing_docs)] // criterion macros generate undocumented items

use std::hint::black_box;

use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nitro_attest::{
    CertCache, CheckTime, Nsm, Policy, SimulatedNsm, Timestamp, TrustAnchors, UnverifiedDocument,
    Verifier,
};

fn load() -> (Vec<u8>, TrustAnchors, &'static str) {
    let dir = nitro_test_support::fixtures_dir();
    let path = dir.join("attestation/marlin__sdks_rs_testcases_aws.bin");
    if let Ok(bytes) = std::fs::read(&path) {
        return (bytes, TrustAnchors::aws(), "genuine AWS document");
    }
    eprintln!(
        "note: {} not found, benchmarking a simulated document instead",
        path.display()
    );
    let nsm = SimulatedNsm::builder()
        .seed(1)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let doc = nsm
        .attestation(None, Some(&[7u8; 32]), Some(&[9u8; 64]))
        .unwrap_or_else(|e| panic!("{e}"));
    let anchors = nsm.trust_anchors().unwrap_or_else(|e| panic!("{e}"));
    (doc, anchors, "simulated document")
}

/// The COSE Sig_structure the document's signature covers.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84, 0x6a];
    out.extend_from_slice(b"Signature1");
    let mut bstr = |b: &[u8]| {
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
    };
    bstr(protected);
    bstr(&[]);
    bstr(payload);
    out
}

fn bench(c: &mut Criterion) {
    let (doc, anchors, what) = load();
    let parsed = UnverifiedDocument::parse(&doc).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::new()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true);
    let now = Timestamp::now();
    println!("document: {what}, {} bytes", doc.len());

    // The floor: one P-384 verification of the COSE signature with the leaf key, parsed once.
    let leaf = x509_leaf_point(&parsed.payload().certificate);
    let key =
        ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &leaf).unwrap_or_else(|e| panic!("{e}"));
    let msg = sig_structure(parsed.protected_header(), parsed.payload_bytes());
    key.verify_sig(&msg, parsed.signature())
        .unwrap_or_else(|e| panic!("{e}"));

    let full = Verifier::new(anchors.clone());
    let cached = Verifier::new(anchors).with_cache(Arc::new(CertCache::default()));
    full.verify(&doc, now, &policy)
        .unwrap_or_else(|e| panic!("{e}"));
    cached
        .verify(&doc, now, &policy)
        .unwrap_or_else(|e| panic!("{e}"));

    let mut g = c.benchmark_group("attest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ecdsa_p384_verify", |b| {
        b.iter(|| key.verify_sig(black_box(&msg), black_box(parsed.signature())))
    });
    g.bench_function("parse", |b| {
        b.iter(|| UnverifiedDocument::parse(black_box(&doc)))
    });
    g.bench_function("verify_full_chain", |b| {
        b.iter(|| full.verify(black_box(&doc), now, &policy))
    });
    g.bench_function("verify_cached", |b| {
        b.iter(|| cached.verify(black_box(&doc), now, &policy))
    });
    g.finish();
}

/// The uncompressed EC point of a certificate's subject public key: the last 97 bytes of the
/// SubjectPublicKeyInfo BIT STRING, found by its fixed P-384 SPKI prefix.
fn x509_leaf_point(cert: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, secp384r1 }, BIT STRING (98 bytes: 00 04 ...) }
    const PREFIX: [u8; 23] = [
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    let pos = cert
        .windows(PREFIX.len())
        .position(|w| w == PREFIX)
        .unwrap_or_else(|| panic!("no P-384 SPKI in the leaf certificate"));
    cert[pos + PREFIX.len()..pos + PREFIX.len() + 97].to_vec()
}

criterion_group!(benches, bench);
criterion_main!(benches);
