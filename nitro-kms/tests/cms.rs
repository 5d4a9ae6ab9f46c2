//! CMS `EnvelopedData` interop: real AWS KMS `CiphertextForRecipient` vectors, envelopes written
//! by `openssl cms -encrypt`, and envelopes written by this crate opened by `openssl cms -decrypt`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::path::Path;
use std::process::Command;

use nitro_kms::internal::cms::{self, ContentEncoding, Envelope};
use nitro_kms::{CmsError, RecipientId, RecipientKey};
use proptest::prelude::*;

const KMS_VECTORS: &[(&str, usize)] = &[
    ("sdk-c__cms_test_input_ber.ber", 48),
    ("sdk-c__cms_test_input_ber_w_ctx.ber", 16),
    ("enclaver__pkcs7_tests_INPUT.ber", 16),
    ("rustcrypto-formats__kms_ciphertext_for_recipient_1.ber", 16),
    ("rustcrypto-formats__kms_ciphertext_for_recipient_2.ber", 48),
    ("rustcrypto-formats__kms_ciphertext_for_recipient_3.ber", 16),
    (
        "rustcrypto-formats__kms_ciphertext_for_recipient_4.ber",
        4112,
    ),
];

#[test]
fn real_kms_vectors_parse() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    for (name, content_len) in KMS_VECTORS {
        let ber = std::fs::read(dir.join("cms").join(name)).unwrap();
        let env = Envelope::parse(&ber).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.encrypted_key().len(), 256, "{name}");
        assert_eq!(env.encrypted_content().len(), *content_len, "{name}");
        match env.recipient_id() {
            RecipientId::SubjectKeyIdentifier(ski) => assert_eq!(ski.len(), 32, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn enclaver_vector_opens_to_hello_world() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let ber = std::fs::read(dir.join("cms/enclaver__pkcs7_tests_INPUT.ber")).unwrap();
    let pk8 = std::fs::read(dir.join("cms/enclaver__pkcs7_tests_PRIVATE_KEY.pk8.der")).unwrap();
    let expected = std::fs::read(dir.join("cms/enclaver__expected_plaintext.txt")).unwrap();
    let key = RecipientKey::from_pkcs8(&pk8).unwrap();
    // The vector's rid is SHA-256 of the key's SPKI, as real KMS writes it.
    let env = Envelope::parse(&ber).unwrap();
    assert_eq!(
        env.recipient_id(),
        &RecipientId::SubjectKeyIdentifier(key.subject_key_identifier().to_vec())
    );
    assert_eq!(env.open(&key).unwrap().as_bytes(), expected.as_slice());
    assert_eq!(expected, b"Hello, World");
    // Another key is refused before any RSA operation.
    let other = RecipientKey::generate().unwrap();
    assert_eq!(env.open(&other), Err(CmsError::RecipientMismatch));
}

/// The writer reproduces the real KMS shape byte for byte, except the random parts.
#[test]
fn writer_matches_real_kms_layout() {
    let Some(dir) = common::fixtures() else {
        return;
    };
    let key = RecipientKey::generate().unwrap();
    for (name, content_len) in KMS_VECTORS {
        let real = std::fs::read(dir.join("cms").join(name)).unwrap();
        let env = Envelope::parse(&real).unwrap();
        let primitive =
            real.windows(2).any(|w| w == [0x80, 0x10]) && *content_len == 16 && real.len() == 457;
        let encoding = if primitive {
            ContentEncoding::Primitive
        } else {
            ContentEncoding::Chunked(cms::KMS_CHUNK_SIZE)
        };
        let ours =
            cms::seal_with(key.public_key_der(), &vec![0u8; content_len - 1], encoding).unwrap();
        assert_eq!(ours.len(), real.len(), "{name}");
        let mine = Envelope::parse(&ours).unwrap();
        // Mask the random fields (rid, encrypted key, IV, content) and compare the rest.
        let mask = |bytes: &[u8], e: &Envelope| -> Vec<u8> {
            let mut out = bytes.to_vec();
            let mut blank = |needle: &[u8]| {
                if let Some(pos) = out.windows(needle.len()).position(|w| w == needle) {
                    out[pos..pos + needle.len()].fill(0xEE);
                }
            };
            if let RecipientId::SubjectKeyIdentifier(ski) = e.recipient_id() {
                blank(ski);
            }
            blank(e.encrypted_key());
            blank(e.iv());
            for chunk in e.encrypted_content().chunks(cms::KMS_CHUNK_SIZE) {
                blank(chunk);
            }
            out
        };
        assert_eq!(mask(&ours, &mine), mask(&real, &env), "{name}");
    }
}

fn openssl() -> Option<std::path::PathBuf> {
    common::tool("openssl")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed RSA-2048 certificate and its key, made by openssl.
fn openssl_identity(openssl: &Path, dir: &Path) -> RecipientKey {
    run(Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=nitro-kms test",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
    run(Command::new(openssl)
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"])
        .arg("-in")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("key.pk8")));
    run(Command::new(openssl)
        .args(["x509", "-outform", "DER"])
        .arg("-in")
        .arg(dir.join("cert.pem"))
        .arg("-out")
        .arg(dir.join("cert.der")));
    let mut key = RecipientKey::from_pkcs8(&std::fs::read(dir.join("key.pk8")).unwrap()).unwrap();
    for id in RecipientId::from_certificate(&std::fs::read(dir.join("cert.der")).unwrap()).unwrap()
    {
        key = key.accept(id);
    }
    key
}

#[test]
fn openssl_envelopes_open() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_identity(&openssl, dir.path());
    let plaintext: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(dir.path().join("pt"), &plaintext).unwrap();
    // rid = issuerAndSerialNumber (default) or subjectKeyIdentifier (-keyid); DER or streamed BER.
    let variants: &[&[&str]] = &[
        &[],
        &["-keyid"],
        &["-stream", "-indef"],
        &["-keyid", "-stream", "-indef"],
    ];
    for (i, extra) in variants.iter().enumerate() {
        let out = dir.path().join(format!("env{i}.der"));
        run(Command::new(&openssl)
            .args([
                "cms",
                "-encrypt",
                "-binary",
                "-aes-256-cbc",
                "-outform",
                "DER",
            ])
            .args(*extra)
            // -keyopt applies to the -recip before it.
            .arg("-recip")
            .arg(dir.path().join("cert.pem"))
            .args([
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
            ])
            .arg("-in")
            .arg(dir.path().join("pt"))
            .arg("-out")
            .arg(&out));
        let ber = std::fs::read(&out).unwrap();
        let env = Envelope::parse(&ber).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(
            env.open(&key).unwrap().as_bytes(),
            plaintext.as_slice(),
            "{extra:?}"
        );
        // Without the certificate's identifiers, the envelope is not for this key.
        let bare = RecipientKey::from_pkcs8(&key.to_pkcs8_der().unwrap()).unwrap();
        assert_eq!(
            env.open(&bare),
            Err(CmsError::RecipientMismatch),
            "{extra:?}"
        );
    }
    // PKCS#1 v1.5 key transport (openssl's default) is refused with a clear error.
    let out = dir.path().join("pkcs1.der");
    run(Command::new(&openssl)
        .args([
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-outform",
            "DER",
        ])
        .arg("-recip")
        .arg(dir.path().join("cert.pem"))
        .arg("-in")
        .arg(dir.path().join("pt"))
        .arg("-out")
        .arg(&out));
    let err = Envelope::parse(&std::fs::read(&out).unwrap()).unwrap_err();
    assert!(matches!(err, CmsError::UnexpectedOid { .. }), "{err}");
    // AES-128 content encryption is refused.
    run(Command::new(&openssl)
        .args([
            "cms",
            "-encrypt",
            "-binary",
            "-aes-128-cbc",
            "-outform",
            "DER",
        ])
        .arg("-recip")
        .arg(dir.path().join("cert.pem"))
        .args([
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
        ])
        .arg("-in")
        .arg(dir.path().join("pt"))
        .arg("-out")
        .arg(&out));
    let err = Envelope::parse(&std::fs::read(&out).unwrap()).unwrap_err();
    assert!(matches!(err, CmsError::UnexpectedOid { .. }), "{err}");
    // OAEP with SHA-1 is refused.
    run(Command::new(&openssl)
        .args([
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-outform",
            "DER",
        ])
        .arg("-recip")
        .arg(dir.path().join("cert.pem"))
        .args(["-keyopt", "rsa_padding_mode:oaep"])
        .arg("-in")
        .arg(dir.path().join("pt"))
        .arg("-out")
        .arg(&out));
    let err = Envelope::parse(&std::fs::read(&out).unwrap()).unwrap_err();
    assert!(
        matches!(err, CmsError::UnsupportedKeyEncryption(_)),
        "{err}"
    );
}

#[test]
fn our_envelopes_open_with_openssl() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = RecipientKey::generate().unwrap();
    std::fs::write(dir.path().join("key.pk8"), key.to_pkcs8_der().unwrap()).unwrap();
    for (i, (len, encoding)) in [
        (12usize, ContentEncoding::Chunked(1000)),
        (4096, ContentEncoding::Chunked(1000)),
        (33, ContentEncoding::Primitive),
        (0, ContentEncoding::Chunked(1000)),
    ]
    .into_iter()
    .enumerate()
    {
        let plaintext: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        let env = cms::seal_with(key.public_key_der(), &plaintext, encoding).unwrap();
        let path = dir.path().join(format!("env{i}.ber"));
        std::fs::write(&path, &env).unwrap();
        let out = Command::new(&openssl)
            .args([
                "cms", "-decrypt", "-binary", "-inform", "DER", "-keyform", "DER",
            ])
            .arg("-inkey")
            .arg(dir.path().join("key.pk8"))
            .arg("-in")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plaintext, "length {len}");
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let key = RecipientKey::generate().unwrap();
    let mut v = vec![
        cms::seal(key.public_key_der(), b"0123456789abcdef0123").unwrap(),
        cms::seal_with(key.public_key_der(), b"x", ContentEncoding::Primitive).unwrap(),
    ];
    let dir = nitro_test_support::fixtures_dir();
    for (name, _) in KMS_VECTORS {
        if let Ok(b) = std::fs::read(dir.join("cms").join(name)) {
            v.push(b);
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutated and truncated envelopes are errors or valid parses, never panics.
    #[test]
    fn mutations_never_panic(seed in 0usize..9, edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..8), cut in any::<u16>()) {
        thread_local!(static CORPUS: Vec<Vec<u8>> = corpus());
        let mut input = CORPUS.with(|c| c[seed % c.len()].clone());
        for (pos, byte) in edits {
            let len = input.len();
            input[usize::from(pos) % len] = byte;
        }
        if cut % 3 == 0 {
            input.truncate(usize::from(cut) % (input.len() + 1));
        }
        let _ = Envelope::parse(&input);
    }

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Envelope::parse(&input);
    }
}
