//! Verifier rejection paths on purpose-built chains and documents: each test breaks exactly one
//! rule and checks the precise error, with and without the certificate cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

use crate::cbor;
use crate::document::{AttestationDocument, PROTECTED_ES384, encode_sign1};
use crate::{
    CertCache, CertRef, CertificateError, CheckTime, Digest, Error, Field, Policy, Timestamp,
    TrustAnchors, Verifier,
};

const T0: Timestamp = Timestamp::from_unix_millis(1_750_000_000_500);

fn odt(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.unix_secs() as i64).unwrap()
}

fn p384() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn params(cn: &str, ca: Option<Option<u8>>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.not_before = odt(T0.saturating_sub(Duration::from_secs(3600)));
    p.not_after = odt(T0.saturating_add(Duration::from_secs(3600)));
    match ca {
        Some(path_len) => {
            p.is_ca = IsCa::Ca(match path_len {
                Some(n) => BasicConstraints::Constrained(n),
                None => BasicConstraints::Unconstrained,
            });
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        None => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    p
}

struct Cert {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

fn self_signed(p: CertificateParams) -> Cert {
    let key = p384();
    let der = p.self_signed(&key).unwrap().der().to_vec();
    Cert {
        params: p,
        key,
        der,
    }
}

fn issue(p: CertificateParams, key: KeyPair, issuer: &Cert) -> Cert {
    let der = p
        .signed_by(&key, &Issuer::from_params(&issuer.params, &issuer.key))
        .unwrap()
        .der()
        .to_vec();
    Cert {
        params: p,
        key,
        der,
    }
}

/// root → intermediate (pathLen 0) → leaf, all valid around T0.
struct Pki {
    root: Cert,
    int: Cert,
    leaf: Cert,
}

fn pki() -> Pki {
    let root = self_signed(params("root", Some(None)));
    let int = issue(params("intermediate", Some(Some(0))), p384(), &root);
    let leaf = issue(params("leaf", None), p384(), &int);
    Pki { root, int, leaf }
}

fn payload(leaf: &Cert, bundle: Vec<Vec<u8>>) -> AttestationDocument {
    let mut pcrs = BTreeMap::new();
    for i in 0..16u16 {
        pcrs.insert(i, vec![i as u8 + 1; 48]);
    }
    AttestationDocument {
        module_id: "i-0123456789abcdef0-enc0123456789abcdef".to_owned(),
        digest: Digest::Sha384,
        timestamp: T0,
        kind: crate::DocumentKind::Enclave,
        pcrs,
        certificate: leaf.der.clone(),
        cabundle: bundle,
        public_key: None,
        user_data: Some(b"user".to_vec()),
        nonce: Some(b"nonce".to_vec()),
    }
}

fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut tbs = Vec::new();
    cbor::write_head(&mut tbs, cbor::MAJOR_ARRAY, 4);
    cbor::write_text(&mut tbs, "Signature1");
    cbor::write_bytes(&mut tbs, protected);
    cbor::write_bytes(&mut tbs, &[]);
    cbor::write_bytes(&mut tbs, payload);
    tbs
}

fn sign_raw(key: &KeyPair, protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key.serialize_der()).unwrap();
    let sig = signer
        .sign(&SystemRandom::new(), &sig_structure(protected, payload))
        .unwrap();
    encode_sign1(protected, payload, sig.as_ref())
}

fn sign(key: &KeyPair, doc: &AttestationDocument) -> Vec<u8> {
    sign_raw(key, &PROTECTED_ES384, &doc.to_payload(false))
}

fn doc_for(p: &Pki) -> Vec<u8> {
    sign(
        &p.leaf.key,
        &payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    )
}

fn anchors(root: &Cert) -> TrustAnchors {
    TrustAnchors::non_aws_root_der(&root.der).unwrap()
}

fn policy() -> Policy {
    Policy::new().check_time(CheckTime::At(T0))
}

/// Verifies with and without cache (twice with cache); all verdicts must agree.
fn check(anchors: &TrustAnchors, doc: &[u8], policy: &Policy) -> Result<(), Error> {
    let plain = Verifier::new(anchors.clone()).verify(doc, T0, policy);
    let cache = Arc::new(CertCache::new(16));
    let cached = Verifier::new(anchors.clone()).with_cache(cache);
    for _ in 0..2 {
        let c = cached.verify(doc, T0, policy);
        assert_eq!(
            plain.as_ref().err().map(ToString::to_string),
            c.as_ref().err().map(ToString::to_string)
        );
    }
    plain.map(drop)
}

fn cert_err(e: Result<(), Error>) -> (CertRef, CertificateError) {
    match e {
        Err(Error::Certificate { cert, reason }) => (cert, reason),
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn well_formed_chain_verifies() {
    let p = pki();
    check(&anchors(&p.root), &doc_for(&p), &policy()).unwrap();
}

#[test]
fn intermediate_must_be_a_ca() {
    let p = pki();
    let mut ip = params("intermediate", None);
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = issue(ip, p384(), &p.root);
    let leaf = issue(params("leaf", None), p384(), &int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), int.der]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (CertRef::Bundle(1), CertificateError::NotCa)
    );
}

#[test]
fn ca_basic_constraints_must_be_critical() {
    let p = pki();
    let mut ip = params("intermediate", None);
    ip.is_ca = IsCa::NoCa;
    // BasicConstraints { cA TRUE }, non-critical.
    let mut bc =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    bc.set_criticality(false);
    ip.custom_extensions = vec![bc];
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = issue(ip, p384(), &p.root);
    let leaf = issue(params("leaf", None), p384(), &int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), int.der]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (
            CertRef::Bundle(1),
            CertificateError::BasicConstraintsNotCritical
        )
    );
}

#[test]
fn path_length_is_enforced() {
    let p = pki();
    // root → int (pathLen 0) → int2 (CA) → leaf: int allows no CA below it.
    let int2 = issue(params("intermediate 2", Some(None)), p384(), &p.int);
    let leaf = issue(params("leaf", None), p384(), &int2);
    let doc = sign(
        &leaf.key,
        &payload(
            &leaf,
            vec![p.root.der.clone(), p.int.der.clone(), int2.der.clone()],
        ),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (
            CertRef::Bundle(1),
            CertificateError::PathLenExceeded {
                path_len: 0,
                below: 1
            }
        )
    );
    // An unconstrained root and a pathLen 1 intermediate allow it.
    let int = issue(params("intermediate", Some(Some(1))), p384(), &p.root);
    let int2 = issue(params("intermediate 2", Some(Some(0))), p384(), &int);
    let leaf = issue(params("leaf", None), p384(), &int2);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), int.der, int2.der]),
    );
    check(&anchors(&p.root), &doc, &policy()).unwrap();
}

#[test]
fn key_usage_bits_are_required() {
    let p = pki();
    let mut ip = params("intermediate", Some(Some(0)));
    ip.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let int = issue(ip, p384(), &p.root);
    let leaf = issue(params("leaf", None), p384(), &int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), int.der]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (
            CertRef::Bundle(1),
            CertificateError::KeyUsage("keyCertSign")
        )
    );

    let mut lp = params("leaf", None);
    lp.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let leaf = issue(lp, p384(), &p.int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (
            CertRef::Leaf,
            CertificateError::KeyUsage("digitalSignature")
        )
    );
}

#[test]
fn leaf_must_not_be_a_ca() {
    let p = pki();
    let mut lp = params("leaf", Some(None));
    lp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let leaf = issue(lp, p384(), &p.int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (CertRef::Leaf, CertificateError::LeafIsCa)
    );
}

#[test]
fn only_p384_keys() {
    let p = pki();
    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = issue(params("leaf", None), p256, &p.int);
    let doc = encode_sign1(
        &PROTECTED_ES384,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]).to_payload(false),
        &[1; 96],
    );
    let (cert, reason) = cert_err(check(&anchors(&p.root), &doc, &policy()));
    assert_eq!(cert, CertRef::Leaf);
    assert!(
        matches!(reason, CertificateError::UnsupportedKey(_)),
        "{reason}"
    );
}

#[test]
fn issuer_name_and_signature_must_match() {
    let p = pki();
    // Same name as the intermediate, different key: the leaf's signature does not verify.
    let impostor = self_signed(params("intermediate", Some(Some(0))));
    let leaf = issue(params("leaf", None), p384(), &impostor);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (CertRef::Leaf, CertificateError::BadSignature)
    );
    // Issued by another name.
    let other = issue(params("other", Some(Some(0))), p384(), &p.root);
    let leaf = issue(params("leaf", None), p384(), &other);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (CertRef::Leaf, CertificateError::IssuerMismatch)
    );
}

#[test]
fn unknown_critical_extensions_are_rejected_known_ones_accepted() {
    let p = pki();
    let mut lp = params("leaf", None);
    let mut ext =
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
    ext.set_criticality(true);
    lp.custom_extensions = vec![ext];
    let leaf = issue(lp, p384(), &p.int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    assert_eq!(
        cert_err(check(&anchors(&p.root), &doc, &policy())),
        (
            CertRef::Leaf,
            CertificateError::UnknownCriticalExtension("1.3.6.1.4.1.99999.1".to_owned())
        )
    );
    // The same extension non-critical is ignored.
    let mut lp = params("leaf", None);
    lp.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![0x05, 0x00],
    )];
    let leaf = issue(lp, p384(), &p.int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), p.int.der.clone()]),
    );
    check(&anchors(&p.root), &doc, &policy()).unwrap();
}

#[test]
fn validity_window_leeway_and_check_time() {
    let p = pki();
    let doc = doc_for(&p);
    let a = anchors(&p.root);
    // Certificates are valid T0 ± 1 h.
    let at = |t: Timestamp, leeway: u64| {
        policy()
            .check_time(CheckTime::At(t))
            .leeway(Duration::from_secs(leeway))
    };
    let late = T0.saturating_add(Duration::from_secs(3600 + 10));
    let (cert, reason) = cert_err(check(&a, &doc, &at(late, 0)));
    assert_eq!(cert, CertRef::Leaf);
    assert!(
        matches!(reason, CertificateError::Expired { .. }),
        "{reason}"
    );
    check(&a, &doc, &at(late, 30)).unwrap();
    let early = T0.saturating_sub(Duration::from_secs(3600 + 10));
    let (cert, reason) = cert_err(check(&a, &doc, &at(early, 0)));
    assert_eq!(cert, CertRef::Leaf);
    assert!(
        matches!(reason, CertificateError::NotYetValid { .. }),
        "{reason}"
    );
    check(&a, &doc, &at(early, 30)).unwrap();

    // An intermediate that expired while the leaf is still valid is reported by index.
    let mut ip = params("intermediate", Some(Some(0)));
    ip.not_after = odt(T0.saturating_sub(Duration::from_secs(60)));
    let int = issue(ip, p384(), &p.root);
    let leaf = issue(params("leaf", None), p384(), &int);
    let doc = sign(
        &leaf.key,
        &payload(&leaf, vec![p.root.der.clone(), int.der]),
    );
    let (cert, reason) = cert_err(check(&a, &doc, &at(T0, 0)));
    assert_eq!(cert, CertRef::Bundle(1));
    assert!(
        matches!(reason, CertificateError::Expired { .. }),
        "{reason}"
    );
}

#[test]
fn root_must_be_the_pinned_one() {
    let p = pki();
    let other = self_signed(params("root", Some(None)));
    let doc = doc_for(&p);
    let e = check(&anchors(&other), &doc, &policy()).unwrap_err();
    assert!(matches!(e, Error::UntrustedRoot { .. }), "{e}");
    // A cabundle[0] that differs from the anchor is rejected even if it chains.
    let doc = sign(
        &p.leaf.key,
        &payload(&p.leaf, vec![other.der.clone(), p.int.der.clone()]),
    );
    let e = check(&anchors(&p.root), &doc, &policy()).unwrap_err();
    assert!(matches!(e, Error::UntrustedRoot { .. }), "{e}");
}

#[test]
fn cose_envelope_rules() {
    let p = pki();
    let a = anchors(&p.root);
    let body = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]).to_payload(false);
    // ES256 in the protected header.
    let doc = sign_raw(&p.leaf.key, &[0xa1, 0x01, 0x26], &body);
    assert!(matches!(
        check(&a, &doc, &policy()),
        Err(Error::UnsupportedAlgorithm(Some(-7)))
    ));
    // No algorithm at all (empty protected header).
    let doc = sign_raw(&p.leaf.key, &[], &body);
    assert!(matches!(
        check(&a, &doc, &policy()),
        Err(Error::UnsupportedAlgorithm(None))
    ));
    // A crit header parameter.
    let doc = sign_raw(
        &p.leaf.key,
        &[0xa2, 0x01, 0x38, 0x22, 0x02, 0x81, 0x01],
        &body,
    );
    assert!(matches!(check(&a, &doc, &policy()), Err(Error::Cose(_))));
    // A DER (not raw) or short signature.
    let doc = encode_sign1(&PROTECTED_ES384, &body, &[0; 64]);
    assert!(matches!(
        check(&a, &doc, &policy()),
        Err(Error::SignatureLength(64))
    ));
    // A signature over a re-encoded (indefinite-length) payload does not cover the definite one.
    let indefinite = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]).to_payload(true);
    let signed_indef = sign_raw(&p.leaf.key, &PROTECTED_ES384, &indefinite);
    check(&a, &signed_indef, &policy()).unwrap();
    let sig = &signed_indef[signed_indef.len() - 96..];
    let swapped = encode_sign1(&PROTECTED_ES384, &body, sig);
    assert!(matches!(
        check(&a, &swapped, &policy()),
        Err(Error::BadSignature)
    ));
}

#[test]
fn policy_checks() {
    let p = pki();
    let a = anchors(&p.root);
    let doc = doc_for(&p);
    check(
        &a,
        &doc,
        &policy()
            .expect_pcr(3, [4u8; 48])
            .expect_nonce(b"nonce")
            .expect_user_data(b"user"),
    )
    .unwrap();
    assert!(matches!(
        check(&a, &doc, &policy().expect_pcr(3, [0u8; 48])),
        Err(Error::PcrMismatch { index: 3, .. })
    ));
    assert!(matches!(
        check(&a, &doc, &policy().expect_pcr(16, [0u8; 48])),
        Err(Error::PcrMissing { index: 16 })
    ));
    assert!(matches!(
        check(&a, &doc, &policy().expect_user_data(b"other")),
        Err(Error::FieldMismatch {
            field: Field::UserData,
            ..
        })
    ));
    assert!(matches!(
        check(&a, &doc, &policy().expect_public_key(b"")),
        Err(Error::FieldMismatch {
            field: Field::PublicKey,
            actual: None,
            ..
        })
    ));
}

/// A document with one payload field replaced by raw CBOR `value` (or removed when `None`).
fn with_field(p: &Pki, name: &str, value: Option<&[u8]>) -> Vec<u8> {
    let doc = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]);
    let full = doc.to_payload(false);
    // Re-encode the map entry by entry from the canonical encoding.
    let mut r = cbor::Reader::new(&full);
    let n = r.container(cbor::MAJOR_MAP).unwrap().unwrap();
    let mut entries = Vec::new();
    for _ in 0..n {
        let k0 = r_pos(&r);
        let key = r.text().unwrap();
        let v0 = r_pos(&r);
        r.skip().unwrap();
        let v1 = r_pos(&r);
        entries.push((key, full[k0..v0].to_vec(), full[v0..v1].to_vec()));
    }
    let mut out = Vec::new();
    let kept: Vec<_> = entries
        .into_iter()
        .filter_map(|(k, kb, vb)| {
            if k == name {
                value.map(|v| (kb, v.to_vec()))
            } else {
                Some((kb, vb))
            }
        })
        .collect();
    cbor::write_head(&mut out, cbor::MAJOR_MAP, kept.len() as u64);
    for (k, v) in kept {
        out.extend_from_slice(&k);
        out.extend_from_slice(&v);
    }
    sign_raw(&p.leaf.key, &PROTECTED_ES384, &out)
}

fn r_pos(r: &cbor::Reader<'_>) -> usize {
    r.position()
}

#[test]
fn payload_field_rules() {
    let p = pki();
    let a = anchors(&p.root);
    let run = |name: &str, v: Option<&[u8]>| check(&a, &with_field(&p, name, v), &policy());
    // Mandatory fields: absent or null.
    for f in [
        "module_id",
        "digest",
        "timestamp",
        "pcrs",
        "certificate",
        "cabundle",
    ] {
        assert!(matches!(run(f, None), Err(Error::MissingField(_))), "{f}");
        assert!(
            matches!(run(f, Some(&[0xf6])), Err(Error::MissingField(_))),
            "{f}"
        );
    }
    // Optional fields: absent ≡ null.
    for f in ["public_key", "user_data", "nonce"] {
        run(f, None).unwrap();
        run(f, Some(&[0xf6])).unwrap();
    }
    let bad = |name: &str, v: &[u8], field: Field| {
        let e = run(name, Some(v)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidField { field: f, .. } if *f == field),
            "{name}: {e}"
        );
    };
    bad("module_id", &[0x60], Field::ModuleId);
    bad("module_id", &[0x41, 0x61], Field::ModuleId);
    bad(
        "digest",
        &[0x66, b'S', b'H', b'A', b'2', b'5', b'6'],
        Field::Digest,
    );
    bad("timestamp", &[0x00], Field::Timestamp);
    bad("timestamp", &[0x20], Field::Timestamp);
    bad("pcrs", &[0xa0], Field::Pcrs);
    let mut pcr32 = vec![0xa1, 0x18, 0x20, 0x58, 0x30];
    pcr32.extend_from_slice(&[0; 48]);
    bad("pcrs", &pcr32, Field::Pcrs);
    let mut short = vec![0xa1, 0x00, 0x58, 0x20];
    short.extend_from_slice(&[0; 32]);
    bad("pcrs", &short, Field::Pcrs);
    let mut dup = vec![0xa2];
    for _ in 0..2 {
        dup.extend_from_slice(&[0x00, 0x58, 0x30]);
        dup.extend_from_slice(&[0; 48]);
    }
    bad("pcrs", &dup, Field::Pcrs);
    bad("certificate", &[0x40], Field::Certificate);
    bad("cabundle", &[0x80], Field::Cabundle);
    bad("cabundle", &[0x81, 0x40], Field::Cabundle);
    let mut big = vec![0x59, 0x04, 0x01];
    big.extend_from_slice(&[0; 1025]);
    bad("user_data", &big, Field::UserData);
    bad("nonce", &[0x61, b'x'], Field::Nonce);
}

#[test]
fn duplicate_keys_unknown_keys_and_size_limit() {
    let p = pki();
    let a = anchors(&p.root);
    let doc = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]);
    let full = doc.to_payload(false);
    // Append a duplicate "nonce" (null) and bump the map length from 9 to 10.
    let mut dup = full.clone();
    dup[0] = 0xaa;
    dup.extend_from_slice(&[0x65, b'n', b'o', b'n', b'c', b'e', 0xf6]);
    let e = check(
        &a,
        &sign_raw(&p.leaf.key, &PROTECTED_ES384, &dup),
        &policy(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::DuplicateField(Field::Nonce)), "{e}");
    // An unknown key is ignored (it is covered by the signature).
    let mut extra = full.clone();
    extra[0] = 0xaa;
    extra.extend_from_slice(&[0x63, b'x', b'y', b'z', 0x82, 0x01, 0x02]);
    check(
        &a,
        &sign_raw(&p.leaf.key, &PROTECTED_ES384, &extra),
        &policy(),
    )
    .unwrap();
    // Oversized input is rejected before parsing.
    let huge = vec![0x84; crate::MAX_DOCUMENT_SIZE + 1];
    assert!(matches!(
        check(&a, &huge, &policy()),
        Err(Error::DocumentTooLarge { .. })
    ));
}

#[test]
fn qemu_unsigned_documents_only_pass_the_dangerous_path() {
    // The shape of QEMU's emulated NSM documents: {1: -1}, zero signature and certificates.
    let mut doc = payload(&pki().leaf, vec![vec![0; 64]]);
    doc.certificate = vec![0; 64];
    doc.timestamp = Timestamp::from_unix_secs(T0.unix_secs());
    let bytes = encode_sign1(&[0xa1, 0x01, 0x20], &doc.to_payload(false), &[0; 64]);
    let parsed = crate::UnverifiedDocument::parse(&bytes).unwrap();
    assert!(crate::dangerous::is_qemu_unsigned(&parsed));
    let e = Verifier::aws().verify(&bytes, T0, &policy()).unwrap_err();
    assert!(matches!(e, Error::UnsupportedAlgorithm(Some(-1))), "{e}");
    let policy = Policy::new()
        .expect_pcr(0, [1u8; 48])
        .expect_nonce(b"nonce")
        .max_age(Duration::from_secs(60));
    let got = crate::dangerous::check_policy_without_signature(&bytes, T0, &policy).unwrap();
    assert_eq!(got.module_id, doc.module_id);
    // Its policy checks still apply.
    assert!(matches!(
        crate::dangerous::check_policy_without_signature(
            &bytes,
            T0,
            &policy.clone().expect_nonce(b"x")
        ),
        Err(Error::FieldMismatch {
            field: Field::Nonce,
            ..
        })
    ));
    assert!(matches!(
        crate::dangerous::check_policy_without_signature(
            &bytes,
            T0.saturating_add(Duration::from_secs(120)),
            &policy
        ),
        Err(Error::DocumentTooOld { .. })
    ));
}

#[test]
fn cache_is_bounded_and_shared() {
    let p = pki();
    let a = anchors(&p.root);
    let cache = Arc::new(CertCache::new(1));
    let v = Verifier::new(a).with_cache(cache.clone());
    v.verify(&doc_for(&p), T0, &policy()).unwrap();
    assert_eq!(cache.len(), 1);
    v.verify(&doc_for(&p), T0, &policy()).unwrap();
    cache.clear();
    assert!(cache.is_empty());
    let none = Arc::new(CertCache::new(0));
    Verifier::new(anchors(&p.root))
        .with_cache(none.clone())
        .verify(&doc_for(&p), T0, &policy())
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn public_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<TrustAnchors>();
    assert_send_sync::<CertCache>();
    assert_send_sync::<crate::VerifiedDocument>();
    assert_send_sync::<crate::UnverifiedDocument>();
    assert_send_sync::<Error>();
    assert_send_sync::<crate::SimulatedNsm>();
    #[cfg(feature = "device")]
    assert_send_sync::<crate::NsmDevice>();
    let nsm: Arc<dyn crate::Nsm> =
        Arc::new(crate::SimulatedNsm::builder().seed(1).build().unwrap());
    // The forwarding impls let `Arc<dyn Nsm>` (and `&T`, `Box<T>`) be used where `impl Nsm` is
    // expected.
    fn describe(n: impl crate::Nsm) -> u16 {
        n.describe_nsm().unwrap().max_pcrs
    }
    assert_eq!(describe(nsm.clone()), 32);
    assert_eq!(describe(&*nsm), 32);
}

/// `payload()` as a NitroTPM document (`nitrotpm_pcrs`, PCR0/1/2 zero: no debug mode there).
fn tpm_payload(p: &Pki) -> AttestationDocument {
    let mut doc = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]);
    doc.kind = crate::DocumentKind::NitroTpm;
    doc.module_id = "i-0123456789abcdef0-tpm0123456789abcdef".to_owned();
    for i in 0..3 {
        doc.pcrs.insert(i, vec![0; 48]);
    }
    doc
}

/// The payload map of `doc` with the entry `name` replaced by raw CBOR `value` (removed when
/// `None`) and the raw entries `extra` appended, signed by the leaf.
fn edited(
    p: &Pki,
    doc: &AttestationDocument,
    name: &str,
    value: Option<&[u8]>,
    extra: &[&[u8]],
) -> Vec<u8> {
    let full = doc.to_payload(false);
    let mut r = cbor::Reader::new(&full);
    let n = r.container(cbor::MAJOR_MAP).unwrap().unwrap();
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for _ in 0..n {
        let k0 = r_pos(&r);
        let key = r.text().unwrap();
        let v0 = r_pos(&r);
        r.skip().unwrap();
        let v1 = r_pos(&r);
        if key != name {
            entries.push(full[k0..v1].to_vec());
        } else if let Some(v) = value {
            let mut e = full[k0..v0].to_vec();
            e.extend_from_slice(v);
            entries.push(e);
        }
    }
    entries.extend(extra.iter().map(|e| e.to_vec()));
    let mut out = Vec::new();
    cbor::write_head(&mut out, cbor::MAJOR_MAP, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(&e);
    }
    sign_raw(&p.leaf.key, &PROTECTED_ES384, &out)
}

fn pcr_map_entry(key: &str, index: u8) -> Vec<u8> {
    let mut e = Vec::new();
    cbor::write_text(&mut e, key);
    e.extend_from_slice(&[0xa1, index, 0x58, 0x30]);
    e.extend_from_slice(&[7; 48]);
    e
}

#[test]
fn nitrotpm_documents_are_a_distinct_kind_refused_by_default() {
    use crate::DocumentKind::{Enclave, NitroTpm};
    let p = pki();
    let a = anchors(&p.root);
    let tpm = sign(&p.leaf.key, &tpm_payload(&p));
    let parsed = crate::UnverifiedDocument::parse(&tpm).unwrap();
    assert_eq!(parsed.kind(), NitroTpm);
    assert!(
        !parsed.payload().is_debug_mode(),
        "NitroTPM has no debug mode"
    );
    // Same PKI and envelope, refused unless NitroTPM documents are asked for.
    assert!(matches!(
        check(&a, &tpm, &policy()),
        Err(Error::KindNotAccepted { kind: NitroTpm })
    ));
    check(&a, &tpm, &policy().accept_kinds([NitroTpm])).unwrap();
    check(&a, &tpm, &policy().accept_kinds([Enclave, NitroTpm])).unwrap();
    let v = Verifier::new(a.clone())
        .verify(
            &tpm,
            T0,
            &policy().accept_kinds([NitroTpm]).expect_pcr(4, [5u8; 48]),
        )
        .unwrap();
    assert_eq!(v.kind(), NitroTpm);
    assert_eq!(v.pcr(4), Some(&[5u8; 48][..]));
    // And the other way round: a NitroTPM-only policy refuses enclave documents.
    let enclave = doc_for(&p);
    assert!(matches!(
        check(&a, &enclave, &policy().accept_kinds([NitroTpm])),
        Err(Error::KindNotAccepted { kind: Enclave })
    ));
    assert!(matches!(
        check(&a, &enclave, &policy().accept_kinds([])),
        Err(Error::KindNotAccepted { kind: Enclave })
    ));
    // The kind is decided by the signed payload: forgery still fails on the signature first.
    let mut forged = tpm.clone();
    let at = forged
        .windows(13)
        .position(|w| w == b"nitrotpm_pcrs")
        .unwrap();
    forged[at + 1] ^= 0x20;
    assert!(check(&a, &forged, &policy().accept_kinds([NitroTpm])).is_err());
    // The unsigned path applies the kind too.
    assert!(matches!(
        crate::dangerous::check_policy_without_signature(&tpm, T0, &policy()),
        Err(Error::KindNotAccepted { kind: NitroTpm })
    ));
    let any = policy().accept_kinds([NitroTpm]);
    crate::dangerous::check_policy_without_signature(&tpm, T0, &any).unwrap();
}

#[test]
fn malformed_nitrotpm_documents_return_typed_errors() {
    use crate::DocumentKind::NitroTpm;
    let p = pki();
    let a = anchors(&p.root);
    let tpm = tpm_payload(&p);
    let pol = policy().accept_kinds([NitroTpm]);
    let run = |name: &str, v: Option<&[u8]>, extra: &[&[u8]]| {
        check(&a, &edited(&p, &tpm, name, v, extra), &pol)
    };
    // Both PCR maps: ambiguous, whichever comes first.
    let e = run("x", None, &[&pcr_map_entry("pcrs", 0)]).unwrap_err();
    assert!(matches!(e, Error::AmbiguousKind), "{e}");
    let enclave = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]);
    let e = check(
        &a,
        &edited(
            &p,
            &enclave,
            "x",
            None,
            &[&pcr_map_entry("nitrotpm_pcrs", 0)],
        ),
        &pol,
    )
    .unwrap_err();
    assert!(matches!(e, Error::AmbiguousKind), "{e}");
    // Twice the same map.
    let e = run("x", None, &[&pcr_map_entry("nitrotpm_pcrs", 1)]).unwrap_err();
    assert!(
        matches!(e, Error::DuplicateField(Field::NitroTpmPcrs)),
        "{e}"
    );
    // Neither map.
    let e = run("nitrotpm_pcrs", None, &[]).unwrap_err();
    assert!(matches!(e, Error::MissingField(Field::Pcrs)), "{e}");
    // null.
    let e = run("nitrotpm_pcrs", Some(&[0xf6]), &[]).unwrap_err();
    assert!(matches!(e, Error::MissingField(Field::NitroTpmPcrs)), "{e}");
    // Wrong type, empty, bad index, bad length: the error names `nitrotpm_pcrs`.
    let mut pcr32 = vec![0xa1, 0x18, 0x20, 0x58, 0x30];
    pcr32.extend_from_slice(&[0; 48]);
    let mut short = vec![0xa1, 0x00, 0x58, 0x20];
    short.extend_from_slice(&[0; 32]);
    for bad in [
        &[0x80][..],
        &[0xa0],
        &[0x43, 1, 2, 3],
        &pcr32,
        &short,
        &[0xa1, 0x00],
    ] {
        let e = run("nitrotpm_pcrs", Some(bad), &[]).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::InvalidField {
                    field: Field::NitroTpmPcrs,
                    ..
                }
            ),
            "{bad:02x?}: {e}"
        );
    }
}

#[test]
fn trailing_bytes_are_refused_unless_the_policy_opts_in() {
    let p = pki();
    let a = anchors(&p.root);
    let doc = doc_for(&p);
    for trailer in [&[0x00][..], &[0xf6], b"{\"os_image_hash\":\"00\"}"] {
        let mut with = doc.clone();
        with.extend_from_slice(trailer);
        let e = check(&a, &with, &policy()).unwrap_err();
        assert!(
            matches!(e, Error::TrailingBytes { offset, len } if offset == doc.len() && len == trailer.len()),
            "{e}"
        );
        assert!(matches!(
            crate::dangerous::check_policy_without_signature(&with, T0, &policy()),
            Err(Error::TrailingBytes { .. })
        ));
        let v = Verifier::new(a.clone())
            .verify(&with, T0, &policy().allow_trailing_bytes(true))
            .unwrap();
        assert_eq!(v.trailing_bytes(), trailer.len());
        crate::dangerous::check_policy_without_signature(
            &with,
            T0,
            &policy().allow_trailing_bytes(true),
        )
        .unwrap();
    }
    // The opt-in does not relax anything else (debug mode stays refused by default).
    let mut debug = payload(&p.leaf, vec![p.root.der.clone(), p.int.der.clone()]);
    for i in 0..3 {
        debug.pcrs.insert(i, vec![0; 48]);
    }
    let mut with = sign(&p.leaf.key, &debug);
    with.push(0);
    assert!(matches!(
        check(&a, &with, &policy().allow_trailing_bytes(true)),
        Err(Error::DebugMode)
    ));
    assert_eq!(
        Verifier::new(a.clone())
            .verify(&doc, T0, &policy())
            .unwrap()
            .trailing_bytes(),
        0
    );
}
