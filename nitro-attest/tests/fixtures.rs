//! The real AWS-signed attestation documents of `tests/fixtures/attestation/` (workspace root).
//!
//! Every genuine document must verify against the pinned AWS root at its own timestamp; the two
//! negative fixtures must fail with the right error; every document must fail at the current
//! time and four hours after its timestamp. Skipped (with a message) when the fixtures are
//! absent, except under `CI=true`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::Arc;
use std::time::Duration;

use nitro_attest::{
    AWS_ROOT_G1_SHA256, CertCache, CertRef, CertificateError, CheckTime, DocumentKind, Error,
    Field, Policy, Timestamp, TrustAnchors, UnverifiedDocument, Verifier,
};

fn at_doc() -> Policy {
    Policy::new()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true)
}

/// `at_doc()`, opting in to the trailer of the dstack documents (stored after the COSE_Sign1).
fn at_doc_for(f: &common::Fixture) -> Policy {
    at_doc().allow_trailing_bytes(f.trailing > 0)
}

fn size_of(v: &serde_json::Value) -> Option<usize> {
    v.as_str()
        .map(|s| s.trim_end_matches(" bytes").parse().unwrap())
}

#[test]
fn parsed_fields_match_the_manifest() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    for f in &fixtures {
        let j = &f.json;
        let doc = f.parsed();
        let p = doc.payload();
        assert!(!doc.is_tagged(), "{}", f.file);
        assert_eq!(doc.algorithm(), Some(-35), "{}", f.file);
        assert_eq!(
            doc.protected_header(),
            [0xa1, 0x01, 0x38, 0x22],
            "{}",
            f.file
        );
        assert_eq!(doc.signature().len(), 96, "{}", f.file);
        assert_eq!(p.module_id, j["module_id"].as_str().unwrap(), "{}", f.file);
        assert_eq!(
            p.timestamp.unix_millis(),
            j["timestamp_ms"].as_u64().unwrap(),
            "{}",
            f.file
        );
        assert_eq!(
            p.pcrs.len() as u64,
            j["pcr_count"].as_u64().unwrap(),
            "{}",
            f.file
        );
        let nonzero: Vec<u64> = p
            .pcrs
            .iter()
            .filter(|(_, v)| v.iter().any(|&b| b != 0))
            .map(|(&i, _)| u64::from(i))
            .collect();
        let expected_nonzero: Vec<u64> = j["nonzero_pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(nonzero, expected_nonzero, "{}", f.file);
        assert_eq!(
            hex::encode(p.pcr(0).unwrap()),
            j["pcr0"].as_str().unwrap(),
            "{}",
            f.file
        );
        assert_eq!(
            p.cabundle.len() as u64,
            j["cabundle_len"].as_u64().unwrap(),
            "{}",
            f.file
        );
        assert_eq!(
            p.public_key.as_ref().map(Vec::len),
            size_of(&j["public_key"]),
            "{}",
            f.file
        );
        assert_eq!(
            p.user_data.as_ref().map(Vec::len),
            size_of(&j["user_data"]),
            "{}",
            f.file
        );
        assert_eq!(
            p.nonce.as_ref().map(Vec::len),
            size_of(&j["nonce"]),
            "{}",
            f.file
        );
        let indefinite = j["payload_first_byte"]
            .as_str()
            .unwrap()
            .starts_with("0xbf");
        assert_eq!(doc.payload_bytes()[0] == 0xbf, indefinite, "{}", f.file);
        assert_eq!(
            p.is_debug_mode(),
            !expected_nonzero.iter().any(|&i| i < 3),
            "{}",
            f.file
        );
    }
}

#[test]
fn genuine_documents_verify_at_their_own_timestamp() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    let plain = Verifier::aws();
    let cache = Arc::new(CertCache::new(64));
    let cached = Verifier::aws().with_cache(cache.clone());
    let now = Timestamp::now();
    let mut n = 0;
    for f in fixtures.iter().filter(|f| f.valid) {
        let v = plain
            .verify(&f.bytes, now, &at_doc_for(f))
            .unwrap_or_else(|e| panic!("{}: {e}", f.file));
        assert_eq!(v.anchor_sha256(), AWS_ROOT_G1_SHA256);
        assert_eq!(v.trailing_bytes(), f.trailing, "{}", f.file);
        assert_eq!(v.kind(), DocumentKind::Enclave, "{}", f.file);
        // Strict by default: a trailer must be opted into.
        if f.trailing > 0 {
            let e = plain.verify(&f.bytes, now, &at_doc()).unwrap_err();
            assert!(
                matches!(e, Error::TrailingBytes { offset, len }
                    if len == f.trailing && offset + len == f.bytes.len()),
                "{}: {e}",
                f.file
            );
            plain.verify(f.cose(), now, &at_doc()).unwrap();
        }
        // Real documents are enclave documents: a NitroTPM-only policy refuses them.
        let e = plain
            .verify(
                &f.bytes,
                now,
                &at_doc_for(f).accept_kinds([DocumentKind::NitroTpm]),
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::KindNotAccepted {
                    kind: DocumentKind::Enclave
                }
            ),
            "{}: {e}",
            f.file
        );
        assert_eq!(v.checked_at(), v.timestamp);
        // Cold and warm cache give the same verdict.
        for _ in 0..2 {
            cached
                .verify(&f.bytes, now, &at_doc_for(f))
                .unwrap_or_else(|e| panic!("{} (cached): {e}", f.file));
        }
        // The same at a fixed instant equal to the timestamp, and with the PCR0 pinned.
        let pcr0 = v.pcr(0).unwrap().to_vec();
        plain
            .verify(
                &f.bytes,
                now,
                &at_doc_for(f)
                    .check_time(CheckTime::At(v.timestamp))
                    .expect_pcr(0, &pcr0),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", f.file));
        // Debug-mode documents are rejected unless allowed.
        let strict = Policy::new()
            .check_time(CheckTime::DocumentTimestamp)
            .allow_trailing_bytes(f.trailing > 0);
        match plain.verify(&f.bytes, now, &strict) {
            Ok(_) => assert!(!v.is_debug_mode(), "{}", f.file),
            Err(Error::DebugMode) => assert!(v.is_debug_mode(), "{}", f.file),
            Err(e) => panic!("{}: {e}", f.file),
        }
        n += 1;
    }
    assert_eq!(n, 16);
    // Regional, zonal, instance and leaf certificates of the distinct enclaves are cached.
    assert!(cache.len() >= 4, "{}", cache.len());
}

#[test]
fn negative_fixtures_fail_with_the_right_error() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    let now = Timestamp::now();
    let find = |name: &str| fixtures.iter().find(|f| f.file.contains(name)).unwrap();

    let badsig = find("BADSIG");
    assert!(!badsig.valid);
    let e = Verifier::aws()
        .verify(&badsig.bytes, now, &at_doc())
        .unwrap_err();
    assert!(matches!(e, Error::BadSignature), "{e}");

    let custom = find("NOT_AWS_ROOT");
    assert!(!custom.valid);
    let e = Verifier::aws()
        .verify(&custom.bytes, now, &at_doc())
        .unwrap_err();
    match e {
        Error::UntrustedRoot { fingerprint } => {
            assert!(
                hex::encode(fingerprint).starts_with("024a7c97"),
                "{}",
                hex::encode(fingerprint)
            );
        }
        e => panic!("{e}"),
    }
    // With its own root opted in, that document's chain and signature are self-consistent.
    let doc = UnverifiedDocument::parse(&custom.bytes).unwrap();
    let own = TrustAnchors::non_aws_root_der(&doc.payload().cabundle[0]).unwrap();
    Verifier::new(own)
        .verify(&custom.bytes, now, &at_doc())
        .unwrap();
}

#[test]
fn every_document_fails_now_and_four_hours_later() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    let now = Timestamp::now();
    let verifier = Verifier::aws();
    for f in &fixtures {
        let e = verifier
            .verify(
                &f.bytes,
                now,
                &Policy::new()
                    .allow_debug(true)
                    .allow_trailing_bytes(f.trailing > 0),
            )
            .unwrap_err();
        if f.valid {
            assert!(
                matches!(
                    e,
                    Error::Certificate {
                        cert: CertRef::Leaf,
                        reason: CertificateError::Expired { .. }
                    }
                ),
                "{}: {e}",
                f.file
            );
            let ts = f.parsed().payload().timestamp;
            let later = Policy::new()
                .allow_debug(true)
                .allow_trailing_bytes(f.trailing > 0)
                .check_time(CheckTime::At(
                    ts.saturating_add(Duration::from_secs(4 * 3600)),
                ));
            let e = verifier.verify(&f.bytes, now, &later).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Certificate {
                        cert: CertRef::Leaf,
                        reason: CertificateError::Expired { .. }
                    }
                ),
                "{}: {e}",
                f.file
            );
        }
    }
}

#[test]
fn tagged_form_and_synthetic_mutations() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    let now = Timestamp::now();
    let verifier = Verifier::aws();
    let f = fixtures
        .iter()
        .find(|f| f.file.contains("marlin__sdks_rs_testcases_aws.bin"))
        .unwrap();
    let ts = UnverifiedDocument::parse(&f.bytes)
        .unwrap()
        .payload()
        .timestamp;

    // Tag 18 in front of a genuine untagged document: still valid (the signature does not
    // cover the tag).
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&f.bytes);
    let v = verifier.verify(&tagged, now, &at_doc()).unwrap();
    assert_eq!(v.timestamp, ts);
    assert!(UnverifiedDocument::parse(&tagged).unwrap().is_tagged());
    // Another tag is not COSE_Sign1.
    tagged[0] = 0xd1;
    assert!(matches!(
        verifier.verify(&tagged, now, &at_doc()),
        Err(Error::Cose(_))
    ));

    // One flipped payload byte (inside the module id text) breaks the signature.
    let doc = UnverifiedDocument::parse(&f.bytes).unwrap();
    let module_id = doc.payload().module_id.as_bytes();
    let pos = f
        .bytes
        .windows(module_id.len())
        .position(|w| w == module_id)
        .unwrap();
    let mut flipped = f.bytes.clone();
    flipped[pos + 3] ^= 0x01;
    assert!(matches!(
        verifier.verify(&flipped, now, &at_doc()),
        Err(Error::BadSignature)
    ));

    // Trailing garbage is refused unless the policy opts in; truncation is a parse error.
    let mut trailing = f.bytes.clone();
    trailing.push(0);
    assert!(matches!(
        verifier.verify(&trailing, now, &at_doc()),
        Err(Error::TrailingBytes { len: 1, .. })
    ));
    assert!(matches!(
        UnverifiedDocument::parse(&trailing),
        Err(Error::TrailingBytes { len: 1, .. })
    ));
    let v = verifier
        .verify(&trailing, now, &at_doc().allow_trailing_bytes(true))
        .unwrap();
    assert_eq!(v.trailing_bytes(), 1);
    assert!(
        verifier
            .verify(&f.bytes[..f.bytes.len() - 1], now, &at_doc())
            .is_err()
    );

    // A wrong pinned root: the simulator's.
    #[cfg(feature = "simulator")]
    {
        let sim = nitro_attest::SimulatedNsm::builder()
            .seed(5)
            .build()
            .unwrap();
        let e = Verifier::new(sim.trust_anchors().unwrap())
            .verify(&f.bytes, now, &at_doc())
            .unwrap_err();
        assert!(matches!(e, Error::UntrustedRoot { .. }), "{e}");
        // AWS plus the simulator root: accepted.
        let both = TrustAnchors::aws()
            .with_non_aws_root_der(sim.root_certificate_der())
            .unwrap();
        Verifier::new(both)
            .verify(&f.bytes, now, &at_doc())
            .unwrap();
    }

    // Policy checks name what differs.
    let e = verifier
        .verify(&f.bytes, now, &at_doc().expect_pcr(0, [0u8; 48]))
        .unwrap_err();
    assert!(matches!(e, Error::PcrMismatch { index: 0, .. }), "{e}");
    let e = verifier
        .verify(&f.bytes, now, &at_doc().expect_pcr(20, [0u8; 48]))
        .unwrap_err();
    assert!(matches!(e, Error::PcrMissing { index: 20 }), "{e}");
    let e = verifier
        .verify(&f.bytes, now, &at_doc().expect_nonce(b"x"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::FieldMismatch {
                field: Field::Nonce,
                actual: None,
                ..
            }
        ),
        "{e}"
    );
    // Freshness against `now`, separate from certificate validity.
    let ten_min = ts.saturating_add(Duration::from_secs(600));
    let e = verifier
        .verify(
            &f.bytes,
            ten_min,
            &at_doc().max_age(Duration::from_secs(300)),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DocumentTooOld {
                age_ms: 600_000,
                ..
            }
        ),
        "{e}"
    );
    verifier
        .verify(
            &f.bytes,
            ten_min,
            &at_doc().max_age(Duration::from_secs(900)),
        )
        .unwrap();
    let e = verifier
        .verify(
            &f.bytes,
            ts.saturating_sub(Duration::from_secs(60)),
            &at_doc().max_age(Duration::from_secs(900)),
        )
        .unwrap_err();
    assert!(matches!(e, Error::DocumentFromFuture { .. }), "{e}");
}

#[test]
fn edge_case_documents() {
    let Some(fixtures) = common::attestation_fixtures() else {
        return;
    };
    let get = |name: &str| {
        let f = fixtures.iter().find(|f| f.file.contains(name)).unwrap();
        f.parsed().into_payload()
    };
    // Empty public_key bstr (escrin) is Some(empty), not None.
    assert_eq!(get("escrin").public_key, Some(Vec::new()));
    // 17 PCRs and an empty user_data (marlin pcr16).
    let p = get("aws_pcr16");
    assert_eq!(p.pcrs.len(), 17);
    assert_eq!(p.user_data, Some(Vec::new()));
    assert!(p.pcr(16).unwrap().iter().any(|&b| b != 0));
    // ASCII public key (evervault debug): kept as bytes, never parsed.
    assert_eq!(
        get("evervault__beta__debug").public_key.as_deref(),
        Some(&b"my super secret key"[..])
    );
}

#[test]
fn text_encodings_decode_to_the_same_document() {
    let Some(dir) = common::fixtures_dir() else {
        return;
    };
    let hex_doc =
        std::fs::read(dir.join("attestation/marlin__verifier_test_attestation.hex")).unwrap();
    let decoded = nitro_attest::decode_input(&hex_doc).unwrap();
    assert_eq!(decoded[0], 0x84);
    // The dstack "scale" files carry a 4-byte SCALE prefix before the same COSE bytes.
    let cose =
        std::fs::read(dir.join("attestation/dstack__nsm-qvl_nitro_attestation.cose.cbor")).unwrap();
    let scale =
        std::fs::read(dir.join("attestation/dstack__nsm-qvl_nitro_attestation.scale.bin")).unwrap();
    assert_eq!(&scale[4..], &cose[..]);
    assert!(UnverifiedDocument::parse(&scale).is_err());
}
