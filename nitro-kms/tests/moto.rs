//! The client against moto in server mode (a real, independent implementation of the KMS JSON
//! protocol): the plain operations, KMS errors, and fail-closed behaviour when a server
//! ignores `Recipient`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::sync::Arc;

use nitro_kms::model::*;
use nitro_kms::{Credentials, Error, KmsClient, Recipient, RetryConfig};

fn client(moto: &common::Moto) -> KmsClient {
    KmsClient::builder("us-east-1")
        .endpoint(&moto.url)
        .dangerous_allow_plain_http()
        .credentials(Credentials::new(
            "testing",
            "testing",
            Some("testing".into()),
            None,
        ))
        .retry(RetryConfig::new(1))
        .build()
        .unwrap()
}

#[tokio::test]
async fn plain_operations_against_moto() {
    let Some(moto) = common::Moto::start() else {
        return;
    };
    let kms = client(&moto);

    let key = kms
        .create_key(CreateKeyRequest::new().description("nitro-kms interop"))
        .await
        .unwrap();
    let key_id = key.key_metadata.key_id.clone();
    assert!(key.key_metadata.arn.as_deref().unwrap().ends_with(&key_id));

    let described = kms.describe_key(&key_id).await.unwrap();
    assert_eq!(described.key_metadata.key_id, key_id);
    assert!(
        kms.list_keys(ListKeysRequest::new())
            .await
            .unwrap()
            .keys
            .iter()
            .any(|k| k.key_id == key_id)
    );

    let enc = kms
        .encrypt(
            EncryptRequest::new(&key_id, b"moto says hi".to_vec()).context("purpose", "interop"),
        )
        .await
        .unwrap();
    let dec = kms
        .decrypt(DecryptRequest::new(enc.ciphertext_blob.clone()).context("purpose", "interop"))
        .await
        .unwrap();
    assert_eq!(dec.plaintext.as_bytes(), b"moto says hi");

    let dk = kms
        .generate_data_key(GenerateDataKeyRequest::new(&key_id).key_spec(DataKeySpec::Aes256))
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    let back = kms
        .decrypt(DecryptRequest::new(dk.ciphertext_blob))
        .await
        .unwrap();
    assert_eq!(back.plaintext, dk.plaintext);

    let dk = kms
        .generate_data_key(GenerateDataKeyRequest::new(&key_id).number_of_bytes(17))
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 17);

    let random = kms
        .generate_random(GenerateRandomRequest::new(48))
        .await
        .unwrap();
    assert_eq!(random.plaintext.len(), 48);

    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#;
    kms.put_key_policy(PutKeyPolicyRequest::new(&key_id, policy))
        .await
        .unwrap();
    let got = kms
        .get_key_policy(GetKeyPolicyRequest::new(&key_id))
        .await
        .unwrap();
    assert_eq!(got.policy, policy);

    // Errors surface with their KMS code.
    let e = kms
        .encrypt(EncryptRequest::new(
            "00000000-0000-0000-0000-000000000000",
            b"x".to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("NotFoundException"), "{e}");
    let e = kms
        .decrypt(DecryptRequest::new(b"not a ciphertext blob".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("InvalidCiphertextException"), "{e}");
    // moto implements neither of these: a clear service error, no panic, no hang.
    let e = kms
        .derive_shared_secret(DeriveSharedSecretRequest::new(&key_id, vec![0x30]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Service(_)), "{e}");
}

#[tokio::test]
async fn recipient_ignored_by_moto_fails_closed() {
    let Some(moto) = common::Moto::start() else {
        return;
    };
    let kms = client(&moto);
    let key_id = kms
        .create_key(CreateKeyRequest::new())
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let blob = kms
        .encrypt(EncryptRequest::new(&key_id, b"secret".to_vec()))
        .await
        .unwrap()
        .ciphertext_blob;
    let nsm = Arc::new(
        nitro_attest::SimulatedNsm::builder()
            .seed(11)
            .build()
            .unwrap(),
    );
    let attested = kms.with_recipient(Some(Recipient::new(nsm)));
    // moto returns the plaintext in the clear: the client refuses to use it.
    let e = attested
        .decrypt(DecryptRequest::new(blob))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::RecipientIgnored {
                operation: "Decrypt"
            }
        ),
        "{e}"
    );
    let e = attested
        .generate_data_key(GenerateDataKeyRequest::new(&key_id))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RecipientIgnored { .. }), "{e}");
    let e = attested
        .generate_random(GenerateRandomRequest::new(8))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RecipientIgnored { .. }), "{e}");
}
