//! Sealed secrets: sealed by the operator, unsealed by the enclave through the local KMS with a
//! PCR0 key policy (admitted and refused), wrong encryption context and damaged documents
//! refused, and an S3 round trip through moto's S3 in server mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::sealed::{self, Mode, SealOptions, SealedSecret, UnsealOptions};
use nitro_kms::{
    Credentials, Error, KmsClient, Recipient, RetryConfig, S3Client, S3Location, SealedErrorKind,
};

const REGION: &str = "us-east-1";
const GOOD: [u8; 48] = [0x5A; 48];
const BAD: [u8; 48] = [0xA5; 48];

fn creds() -> Credentials {
    Credentials::new("AKIDSEAL", "seal-secret", None, None)
}

struct Setup {
    _server: server::RunningServer,
    url: String,
    key_id: String,
    good: Arc<SimulatedNsm>,
    bad: Arc<SimulatedNsm>,
}

async fn setup() -> Setup {
    let good = Arc::new(SimulatedNsm::builder().pcr(0, GOOD).build().unwrap());
    let bad = Arc::new(SimulatedNsm::builder().pcr(0, BAD).build().unwrap());
    let kms = LocalKms::new(
        LocalKmsConfig::new(
            AttestationTrust::roots_der([good.root_certificate_der(), bad.root_certificate_der()])
                .unwrap(),
        )
        .region(REGION)
        .credentials(creds()),
    )
    .unwrap();
    // Plain HTTP on loopback keeps this test about sealing; TLS is covered by local_kms.rs.
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let operator = client(&url, None);
    let policy = serde_json::json!({
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": ["kms:Encrypt", "kms:GenerateDataKey", "kms:CreateKey"], "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": hex::encode(GOOD)}}}
        ]
    });
    let key_id = operator
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    Setup {
        _server: server,
        url,
        key_id,
        good,
        bad,
    }
}

fn client(url: &str, nsm: Option<Arc<SimulatedNsm>>) -> KmsClient {
    let mut b = KmsClient::builder(REGION)
        .endpoint(url)
        .dangerous_allow_plain_http()
        .credentials(creds())
        .retry(RetryConfig::new(1));
    if let Some(n) = nsm {
        b = b.recipient(Recipient::new(n));
    }
    b.build().unwrap()
}

#[tokio::test]
async fn seal_then_unseal_admitted_and_refused() {
    let s = setup().await;
    let operator = client(&s.url, None);
    let enclave = client(&s.url, Some(s.good.clone()));
    let intruder = client(&s.url, Some(s.bad.clone()));
    let opts = SealOptions::new().context("app", "payments");
    let expect = UnsealOptions::new().expect_context_pair("app", "payments");

    let small = b"sk_live_0123456789".to_vec();
    let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for (secret, mode) in [(&small, Mode::Kms), (&large, Mode::Envelope)] {
        let doc = sealed::seal(&operator, &s.key_id, secret, &opts)
            .await
            .unwrap();
        let parsed = SealedSecret::parse(&doc).unwrap();
        assert_eq!(parsed.mode, mode);
        assert!(parsed.key_id.ends_with(&s.key_id));
        let plain = sealed::unseal(&enclave, &doc, &expect).await.unwrap();
        assert_eq!(plain.as_bytes(), secret.as_slice());
        // Another image is refused by the key policy.
        let e = sealed::unseal(&intruder, &doc, &expect).await.unwrap_err();
        assert_eq!(e.service_code(), Some("AccessDeniedException"), "{e}");
    }
    // Envelope mode on request, for a small secret.
    let doc = sealed::seal(
        &operator,
        &s.key_id,
        &small,
        &opts.clone().force_envelope(true),
    )
    .await
    .unwrap();
    assert_eq!(SealedSecret::parse(&doc).unwrap().mode, Mode::Envelope);
    assert_eq!(
        sealed::unseal(&enclave, &doc, &expect)
            .await
            .unwrap()
            .as_bytes(),
        small.as_slice()
    );
    // Unsealing without Recipient is refused outright.
    let e = sealed::unseal(&operator, &doc, &expect).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[tokio::test]
async fn wrong_context_and_damaged_documents_refused() {
    let s = setup().await;
    let operator = client(&s.url, None);
    let enclave = client(&s.url, Some(s.good.clone()));
    let opts = SealOptions::new().context("app", "payments");
    let expect = UnsealOptions::new().expect_context_pair("app", "payments");
    // Sealing without a context is refused (wrapped-key substitution).
    let e = sealed::seal(&operator, &s.key_id, b"hunter2", &SealOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    for force in [false, true] {
        let doc = sealed::seal(
            &operator,
            &s.key_id,
            b"hunter2",
            &opts.clone().force_envelope(force),
        )
        .await
        .unwrap();
        // The caller expects another context: refused before KMS is asked.
        let e = sealed::unseal(
            &enclave,
            &doc,
            &UnsealOptions::new().expect_context_pair("app", "billing"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            sealed_kind(&e),
            Some(SealedErrorKind::ContextMismatch),
            "{e}"
        );
        // The document's context was edited: KMS refuses the ciphertext.
        let edited = String::from_utf8(doc.clone())
            .unwrap()
            .replace("payments", "billing");
        let e = sealed::unseal(
            &enclave,
            edited.as_bytes(),
            &UnsealOptions::new().expect_context_pair("app", "billing"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.service_code(), Some("InvalidCiphertextException"), "{e}");
        // Unsealing without naming the expected context is refused.
        let e = sealed::unseal(&enclave, &doc, &UnsealOptions::new())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        // A document whose context was removed is refused before KMS is asked.
        let mut stripped = SealedSecret::parse(&doc).unwrap();
        stripped.encryption_context.clear();
        let e = sealed::unseal(&enclave, &stripped.to_bytes().unwrap(), &expect)
            .await
            .unwrap_err();
        assert_eq!(
            sealed_kind(&e),
            Some(SealedErrorKind::ContextMismatch),
            "{e}"
        );
        // Another key was expected.
        let e = sealed::unseal(
            &enclave,
            &doc,
            &expect.clone().expect_key_id("some-other-key"),
        )
        .await
        .unwrap_err();
        assert_eq!(sealed_kind(&e), Some(SealedErrorKind::KeyMismatch), "{e}");
        // Damaged ciphertext.
        let mut parsed = SealedSecret::parse(&doc).unwrap();
        let last = parsed.ciphertext.len() - 1;
        parsed.ciphertext[last] ^= 1;
        let e = sealed::unseal(&enclave, &parsed.to_bytes().unwrap(), &expect)
            .await
            .unwrap_err();
        if force {
            assert_eq!(sealed_kind(&e), Some(SealedErrorKind::Tampered), "{e}");
            assert!(e.to_string().contains("modified"), "{e}");
        } else {
            assert_eq!(e.service_code(), Some("InvalidCiphertextException"), "{e}");
        }
        // Truncated or non-JSON documents.
        for bad in [&doc[..doc.len() / 2], b"not json", b""] {
            let e = sealed::unseal(&enclave, bad, &expect).await.unwrap_err();
            assert_eq!(sealed_kind(&e), Some(SealedErrorKind::Malformed), "{e}");
        }
    }
}

#[tokio::test]
async fn s3_round_trip_through_moto() {
    let Some(moto) = common::Moto::start() else {
        return;
    };
    let s = setup().await;
    let operator = client(&s.url, None);
    let enclave = client(&s.url, Some(s.good.clone()));
    let s3 = |c: Credentials| {
        S3Client::builder(REGION)
            .endpoint(&moto.url)
            .dangerous_allow_plain_http()
            .credentials(c)
            .build()
            .unwrap()
    };
    let moto_creds = Credentials::new("testing", "testing", None, None);
    let operator_s3 = s3(moto_creds.clone());
    operator_s3.create_bucket("sealed-secrets").await.unwrap();
    let location: S3Location = "s3://sealed-secrets/prod/db password.json".parse().unwrap();
    let secret: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let doc = sealed::seal(
        &operator,
        &s.key_id,
        &secret,
        &SealOptions::new().context("app", "db"),
    )
    .await
    .unwrap();
    operator_s3
        .put_object(&location, doc.clone())
        .await
        .unwrap();

    let enclave_s3 = s3(moto_creds);
    let fetched = enclave_s3.get_object(&location).await.unwrap();
    assert_eq!(fetched, doc);
    let plain = sealed::unseal(
        &enclave,
        &fetched,
        &UnsealOptions::new().expect_context_pair("app", "db"),
    )
    .await
    .unwrap();
    assert_eq!(plain.as_bytes(), secret.as_slice());

    let e = enclave_s3
        .get_object(&"s3://sealed-secrets/missing".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("NoSuchKey"), "{e}");
}

fn sealed_kind(e: &Error) -> Option<SealedErrorKind> {
    match e {
        Error::Sealed { kind, .. } => Some(*kind),
        _ => None,
    }
}
