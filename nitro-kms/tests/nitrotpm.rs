//! NitroTPM attestation documents in `Recipient` against the local KMS: the
//! `kms:RecipientAttestation:NitroTPMPCR<n>` condition keys admit them, and the enclave keys
//! (`PCR<n>`, `ImageSha384`) never do, nor the reverse, even when both documents carry the same
//! PCR values, with signed documents and in the dangerous unsigned mode.
#![cfg(feature = "local-kms")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use aws_lc_rs::agreement::{self, ECDH_P256};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use nitro_attest::{DocumentKind, Nsm, SimulatedNsm};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::{Credentials, Error, KmsClient, Recipient, RetryConfig};

const REGION: &str = "eu-west-1";
const PCR0: [u8; 48] = [0x30; 48];
const PCR4: [u8; 48] = [0x34; 48];
const PCR4_OTHER: [u8; 48] = [0x44; 48];

fn creds() -> Credentials {
    Credentials::new("AKIDNITROTPMTEST", "local-secret-key", None, None)
}

fn code(e: &Error) -> &str {
    e.service_code().unwrap_or("<not a service error>")
}

/// An enclave's NSM and an instance's NitroTPM with the same PCR0 and PCR4, and a NitroTPM
/// with another PCR4.
fn simulators() -> [Arc<SimulatedNsm>; 3] {
    let enclave = SimulatedNsm::builder()
        .seed(161)
        .pcr(0, PCR0)
        .pcr(4, PCR4)
        .build()
        .unwrap();
    let tpm = SimulatedNsm::builder()
        .seed(162)
        .nitrotpm()
        .pcr(0, PCR0)
        .pcr(4, PCR4)
        .build()
        .unwrap();
    let other_tpm = SimulatedNsm::builder()
        .seed(163)
        .nitrotpm()
        .pcr(0, PCR0)
        .pcr(4, PCR4_OTHER)
        .build()
        .unwrap();
    assert_eq!(enclave.kind(), DocumentKind::Enclave);
    assert_eq!(tpm.kind(), DocumentKind::NitroTpm);
    [enclave, tpm, other_tpm].map(Arc::new)
}

/// A key policy: the account administers the key and may Encrypt; the attested operations are
/// allowed to anyone whose `Recipient` satisfies `condition`.
fn policy(condition: serde_json::Value) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*", "kms:Encrypt"], "Resource": "*"},
            {"Sid": "attested", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:DeriveSharedSecret"],
             "Resource": "*", "Condition": condition}
        ]
    })
    .to_string()
}

struct Env {
    server: server::RunningServer,
}

impl Env {
    async fn start(sims: &[Arc<SimulatedNsm>]) -> Self {
        let roots: Vec<&[u8]> = sims.iter().map(|s| s.root_certificate_der()).collect();
        let kms = LocalKms::new(
            LocalKmsConfig::new(AttestationTrust::roots_der(roots).unwrap())
                .region(REGION)
                .credentials(creds()),
        )
        .unwrap();
        let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
            .await
            .unwrap();
        Env { server }
    }

    fn client(&self, nsm: Option<&Arc<SimulatedNsm>>) -> KmsClient {
        let mut b = KmsClient::builder(REGION)
            .endpoint(format!("http://{}", self.server.local_addr()))
            .dangerous_allow_plain_http()
            .credentials(creds())
            .retry(RetryConfig::new(1));
        if let Some(n) = nsm {
            b = b.recipient(Recipient::new(n.clone()));
        }
        b.build().unwrap()
    }
}

async fn create_key(admin: &KmsClient, condition: serde_json::Value) -> String {
    admin
        .create_key(CreateKeyRequest::new().policy(policy(condition)))
        .await
        .unwrap()
        .key_metadata
        .key_id
}

async fn encrypt(admin: &KmsClient, key_id: &str, secret: &[u8]) -> Vec<u8> {
    admin
        .encrypt(EncryptRequest::new(key_id, secret.to_vec()))
        .await
        .unwrap()
        .ciphertext_blob
}

/// Decrypt and GenerateDataKey with `client`: `Ok` with the plaintext (checked to have come
/// through `CiphertextForRecipient`), or the error code of the first refusal.
async fn attested_use(client: &KmsClient, key_id: &str, blob: &[u8]) -> Result<Vec<u8>, String> {
    let resp = client
        .decrypt(DecryptRequest::new(blob.to_vec()))
        .await
        .map_err(|e| code(&e).to_owned())?;
    assert!(resp.ciphertext_for_recipient.is_some());
    let dk = client
        .generate_data_key(GenerateDataKeyRequest::new(key_id))
        .await
        .map_err(|e| code(&e).to_owned())?;
    assert!(dk.ciphertext_for_recipient.is_some());
    assert_eq!(dk.plaintext.len(), 32);
    Ok(resp.plaintext.as_bytes().to_vec())
}

#[tokio::test]
async fn nitrotpm_pcr_policy_admits_nitrotpm_documents_only() {
    let [enclave, tpm, other_tpm] = simulators();
    let env = Env::start(&[enclave.clone(), tpm.clone(), other_tpm.clone()]).await;
    let admin = env.client(None);
    // AWS KMS compares lower-case hex: StringEquals (case-sensitive) matches.
    let key = create_key(
        &admin,
        serde_json::json!({"StringEquals": {
            "kms:RecipientAttestation:NitroTPMPCR0": hex::encode(PCR0),
            "kms:RecipientAttestation:NitroTPMPCR4": hex::encode(PCR4),
        }}),
    )
    .await;
    let blob = encrypt(&admin, &key, b"for the instance").await;

    let tpm_client = env.client(Some(&tpm));
    assert_eq!(
        attested_use(&tpm_client, &key, &blob).await.unwrap(),
        b"for the instance"
    );
    // The enclave document carries the same PCR values, but under `pcrs`: it provides
    // `PCR0`/`PCR4`/`ImageSha384`, never `NitroTPMPCR<n>`.
    assert_eq!(
        attested_use(&env.client(Some(&enclave)), &key, &blob).await,
        Err("AccessDeniedException".to_owned())
    );
    // Another NitroTPM PCR4, and no Recipient at all: refused as well.
    assert_eq!(
        attested_use(&env.client(Some(&other_tpm)), &key, &blob).await,
        Err("AccessDeniedException".to_owned())
    );
    let e = admin.decrypt(DecryptRequest::new(blob)).await.unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // GenerateDataKeyPair and GenerateRandom answer a NitroTPM document with
    // CiphertextForRecipient as they answer an enclave.
    let kp = tpm_client
        .generate_data_key_pair(GenerateDataKeyPairRequest::new(&key, "ECC_NIST_P256"))
        .await
        .unwrap();
    assert!(kp.ciphertext_for_recipient.is_some());
    assert!(!kp.private_key_plaintext.is_empty());
    let random = tpm_client
        .generate_random(GenerateRandomRequest::new(24))
        .await
        .unwrap();
    assert!(random.ciphertext_for_recipient.is_some());
    assert_eq!(random.plaintext.len(), 24);

    // DeriveSharedSecret on a key-agreement key pinned to the NitroTPM PCR.
    let ka = admin
        .create_key(
            CreateKeyRequest::new()
                .key_spec("ECC_NIST_P256")
                .key_usage("KEY_AGREEMENT")
                .policy(policy(serde_json::json!({"StringEqualsIgnoreCase": {
                    "kms:RecipientAttestation:NitroTPMPCR4": hex::encode(PCR4),
                }}))),
        )
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let mine = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
    let my_public: PublicKeyX509Der<'static> = mine.compute_public_key().unwrap().as_der().unwrap();
    let derive = || DeriveSharedSecretRequest::new(&ka, my_public.as_ref().to_vec());
    let resp = tpm_client.derive_shared_secret(derive()).await.unwrap();
    assert!(resp.ciphertext_for_recipient.is_some());
    assert_eq!(resp.shared_secret.len(), 32);
    let e = env
        .client(Some(&enclave))
        .derive_shared_secret(derive())
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");
}

#[tokio::test]
async fn enclave_pcr_policies_refuse_nitrotpm_documents() {
    let [enclave, tpm, _] = simulators();
    let env = Env::start(&[enclave.clone(), tpm.clone()]).await;
    let admin = env.client(None);
    let enclave_client = env.client(Some(&enclave));
    let tpm_client = env.client(Some(&tpm));
    let conditions = [
        serde_json::json!({"StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": hex::encode(PCR0),
            "kms:RecipientAttestation:PCR4": hex::encode(PCR4),
        }}),
        serde_json::json!({"StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": hex::encode(PCR0),
        }}),
    ];
    for condition in conditions {
        let key = create_key(&admin, condition.clone()).await;
        let blob = encrypt(&admin, &key, b"for the enclave").await;
        assert_eq!(
            attested_use(&enclave_client, &key, &blob).await.as_deref(),
            Ok(&b"for the enclave"[..]),
            "{condition}"
        );
        assert_eq!(
            attested_use(&tpm_client, &key, &blob).await,
            Err("AccessDeniedException".to_owned()),
            "{condition}"
        );
    }

    // `Null: false` on an enclave key ("an enclave document must be present") is not met by a
    // NitroTPM document either.
    let key = create_key(
        &admin,
        serde_json::json!({"Null": {"kms:RecipientAttestation:PCR0": "false"}}),
    )
    .await;
    let blob = encrypt(&admin, &key, b"enclaves only").await;
    assert!(attested_use(&enclave_client, &key, &blob).await.is_ok());
    assert_eq!(
        attested_use(&tpm_client, &key, &blob).await,
        Err("AccessDeniedException".to_owned())
    );

    // The NitroTPM document really carries PCR0 and PCR4 equal to the enclave's.
    let doc = tpm.attestation(None, None, None).unwrap();
    let parsed = nitro_attest::UnverifiedDocument::parse(&doc).unwrap();
    let payload = parsed.payload();
    assert_eq!(payload.kind, DocumentKind::NitroTpm);
    assert_eq!(payload.pcr(0), Some(&PCR0[..]));
    assert_eq!(payload.pcr(4), Some(&PCR4[..]));
}

/// Under `DangerousUnsignedEmulator` (no signature check) the document kind still decides the
/// condition keys: a simulated NitroTPM document provides `NitroTPMPCR<n>` only.
#[tokio::test]
async fn unsigned_mode_keeps_the_kinds_apart() {
    let [enclave, tpm, _] = simulators();
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::dangerous_unsigned_emulator())
            .region(REGION)
            .credentials(creds()),
    )
    .unwrap();
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let env = Env { server };
    let admin = env.client(None);
    let tpm_key = create_key(
        &admin,
        serde_json::json!({"StringEquals": {
            "kms:RecipientAttestation:NitroTPMPCR4": hex::encode(PCR4),
        }}),
    )
    .await;
    let enclave_key = create_key(
        &admin,
        serde_json::json!({"StringEquals": {
            "kms:RecipientAttestation:PCR4": hex::encode(PCR4),
        }}),
    )
    .await;
    let tpm_blob = encrypt(&admin, &tpm_key, b"tpm").await;
    let enclave_blob = encrypt(&admin, &enclave_key, b"enclave").await;
    let tpm_client = env.client(Some(&tpm));
    let enclave_client = env.client(Some(&enclave));
    assert!(attested_use(&tpm_client, &tpm_key, &tpm_blob).await.is_ok());
    assert!(
        attested_use(&enclave_client, &enclave_key, &enclave_blob)
            .await
            .is_ok()
    );
    assert_eq!(
        attested_use(&tpm_client, &enclave_key, &enclave_blob).await,
        Err("AccessDeniedException".to_owned())
    );
    assert_eq!(
        attested_use(&enclave_client, &tpm_key, &tpm_blob).await,
        Err("AccessDeniedException".to_owned())
    );
}
