//! The client against the local KMS over TLS on loopback: every operation with and without
//! `Recipient`, key policies on PCR0, SigV4 rejection, attestation trust, and the state file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use aws_lc_rs::agreement::{self, ECDH_P256, UnparsedPublicKey};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use nitro_attest::SimulatedNsm;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::{Credentials, Error, KmsClient, Recipient, RetryConfig, TlsRoots};

const REGION: &str = "eu-west-1";
const PCR0_GOOD: [u8; 48] = [0x11; 48];
const PCR0_BAD: [u8; 48] = [0x22; 48];

fn creds() -> Credentials {
    Credentials::new("AKIDLOCALTEST", "local-secret-key", None, None)
}

struct Env {
    server: server::RunningServer,
    ca_pem: String,
    roots: Vec<Vec<u8>>,
    _state: tempfile::TempDir,
    state_file: std::path::PathBuf,
}

/// A local KMS over TLS trusting the roots of `nsms`.
async fn env(nsms: &[&SimulatedNsm]) -> Env {
    let roots: Vec<Vec<u8>> = nsms
        .iter()
        .map(|n| n.root_certificate_der().to_vec())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("kms-state.json");
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::roots_der(roots.iter().map(Vec::as_slice)).unwrap())
            .region(REGION)
            .state_file(&state_file)
            .credentials(creds()),
    )
    .unwrap();
    let (ca_pem, cert_pem, key_pem) = nitro_test_support::tls_material();
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls))
        .await
        .unwrap();
    Env {
        server,
        ca_pem,
        roots,
        _state: dir,
        state_file,
    }
}

fn nsm(seed: u64, pcr0: &[u8]) -> Arc<SimulatedNsm> {
    Arc::new(
        SimulatedNsm::builder()
            .seed(seed)
            .pcr(0, pcr0)
            .build()
            .unwrap(),
    )
}

fn client(env: &Env, recipient: Option<Recipient>) -> KmsClient {
    let mut b = KmsClient::builder(REGION)
        .endpoint(format!(
            "https://localhost:{}",
            env.server.local_addr().port()
        ))
        .tls_roots(TlsRoots::from_pem(env.ca_pem.as_bytes()).unwrap())
        .credentials(creds())
        .retry(RetryConfig::new(1));
    if let Some(r) = recipient {
        b = b.recipient(r);
    }
    b.build().unwrap()
}

fn pcr0_policy(pcr0: &[u8]) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*", "kms:Encrypt", "kms:List*"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:DeriveSharedSecret"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(pcr0)}}}
        ]
    })
    .to_string()
}

fn code(e: &Error) -> &str {
    e.service_code().unwrap_or("<not a service error>")
}

#[tokio::test]
async fn plain_operations() {
    let sim = nsm(1, &PCR0_GOOD);
    let env = env(&[&sim]).await;
    let kms = client(&env, None);

    let key = kms
        .create_key(CreateKeyRequest::new().description("test"))
        .await
        .unwrap();
    let key_id = key.key_metadata.key_id.clone();
    assert_eq!(key.key_metadata.key_spec, Some(KeySpec::SymmetricDefault));

    let enc = kms
        .encrypt(
            EncryptRequest::new(&key_id, b"attack at dawn".to_vec()).context("purpose", "test"),
        )
        .await
        .unwrap();
    let dec = kms
        .decrypt(DecryptRequest::new(enc.ciphertext_blob.clone()).context("purpose", "test"))
        .await
        .unwrap();
    assert_eq!(dec.plaintext.as_bytes(), b"attack at dawn");
    // Wrong encryption context.
    let e = kms
        .decrypt(DecryptRequest::new(enc.ciphertext_blob.clone()).context("purpose", "other"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidCiphertextException");

    let dk = kms
        .generate_data_key(GenerateDataKeyRequest::new(&key_id))
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    let back = kms
        .decrypt(DecryptRequest::new(dk.ciphertext_blob))
        .await
        .unwrap();
    assert_eq!(back.plaintext, dk.plaintext);

    let kp = kms
        .generate_data_key_pair(GenerateDataKeyPairRequest::new(&key_id, "ECC_NIST_P256"))
        .await
        .unwrap();
    assert!(!kp.public_key.is_empty());
    let back = kms
        .decrypt(DecryptRequest::new(kp.private_key_ciphertext_blob))
        .await
        .unwrap();
    assert_eq!(back.plaintext, kp.private_key_plaintext);

    let r = kms
        .generate_random(GenerateRandomRequest::new(64))
        .await
        .unwrap();
    assert_eq!(r.plaintext.len(), 64);

    let listed = kms.list_keys(ListKeysRequest::new()).await.unwrap();
    assert!(listed.keys.iter().any(|k| k.key_id == key_id));
    let policy = kms
        .get_key_policy(GetKeyPolicyRequest::new(&key_id))
        .await
        .unwrap();
    assert!(policy.policy.contains("kms:*"));

    // Validation errors come back typed.
    let e = kms
        .generate_random(GenerateRandomRequest::new(2000))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationException");
    let e = kms
        .decrypt(DecryptRequest::new(vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidCiphertextException");
    let e = kms
        .encrypt(EncryptRequest::new("no-such-key", b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NotFoundException");
}

#[tokio::test]
async fn key_agreement() {
    let sim = nsm(2, &PCR0_GOOD);
    let env = env(&[&sim]).await;
    let kms = client(&env, None);
    let key = kms
        .create_key(
            CreateKeyRequest::new()
                .key_spec("ECC_NIST_P256")
                .key_usage("KEY_AGREEMENT"),
        )
        .await
        .unwrap();
    let key_id = key.key_metadata.key_id;
    let kms_public = kms.get_public_key(&key_id).await.unwrap().public_key;

    let mine = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
    let my_public: PublicKeyX509Der<'static> = mine.compute_public_key().unwrap().as_der().unwrap();
    let expected = agreement::agree(
        &mine,
        UnparsedPublicKey::new(&ECDH_P256, &kms_public),
        (),
        |s| Ok(s.to_vec()),
    )
    .unwrap();

    let plain = kms
        .derive_shared_secret(DeriveSharedSecretRequest::new(
            &key_id,
            my_public.as_ref().to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(plain.shared_secret.as_bytes(), expected.as_slice());

    // Attested: the key policy is the default (account-wide), so any recipient is admitted.
    let attested = client(&env, Some(Recipient::new(sim)));
    let resp = attested
        .derive_shared_secret(DeriveSharedSecretRequest::new(
            &key_id,
            my_public.as_ref().to_vec(),
        ))
        .await
        .unwrap();
    assert!(resp.ciphertext_for_recipient.is_some());
    assert_eq!(resp.shared_secret.as_bytes(), expected.as_slice());
}

#[tokio::test]
async fn recipient_admitted_and_refused_by_pcr0_policy() {
    let good = nsm(3, &PCR0_GOOD);
    // A second enclave image: another PCR0 (and its own simulator root, also trusted).
    let bad = nsm(30, &PCR0_BAD);
    let env = env(&[&good, &bad]).await;
    let admin = client(&env, None);
    let key_id = admin
        .create_key(CreateKeyRequest::new().policy(pcr0_policy(&PCR0_GOOD)))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let sealed = admin
        .encrypt(EncryptRequest::new(&key_id, b"only for PCR0 11..".to_vec()).context("app", "x"))
        .await
        .unwrap()
        .ciphertext_blob;

    // Without Recipient the condition key is absent: denied even for the admin.
    let e = admin
        .decrypt(DecryptRequest::new(sealed.clone()).context("app", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // The enclave with the right PCR0 gets it, through CiphertextForRecipient.
    let enclave = client(&env, Some(Recipient::new(good.clone())));
    let resp = enclave
        .decrypt(DecryptRequest::new(sealed.clone()).context("app", "x"))
        .await
        .unwrap();
    assert!(resp.ciphertext_for_recipient.is_some());
    assert_eq!(resp.plaintext.as_bytes(), b"only for PCR0 11..");

    let dk = enclave
        .generate_data_key(GenerateDataKeyRequest::new(&key_id).context("app", "x"))
        .await
        .unwrap();
    let again = enclave
        .decrypt(DecryptRequest::new(dk.ciphertext_blob.clone()).context("app", "x"))
        .await
        .unwrap();
    assert_eq!(again.plaintext, dk.plaintext);
    let kp = enclave
        .generate_data_key_pair(GenerateDataKeyPairRequest::new(&key_id, "RSA_2048"))
        .await
        .unwrap();
    let pk8 = kp.private_key_plaintext;
    assert!(aws_lc_rs::rsa::KeyPair::from_pkcs8(&pk8).is_ok());
    let random = enclave
        .generate_random(GenerateRandomRequest::new(32))
        .await
        .unwrap();
    assert_eq!(random.plaintext.len(), 32);

    // The other enclave image, attested by a trusted root, is refused by the key policy.
    let other = client(&env, Some(Recipient::new(bad)));
    let e = other
        .decrypt(DecryptRequest::new(sealed.clone()).context("app", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException", "{e}");
    let e = other
        .generate_data_key(GenerateDataKeyRequest::new(&key_id))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // A document from an untrusted root is refused before the policy is even read.
    let stranger = client(&env, Some(Recipient::new(nsm(99, &PCR0_GOOD))));
    let e = stranger
        .decrypt(DecryptRequest::new(sealed).context("app", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationException", "{e}");
}

/// Key policies and `kms:RecipientAttestation` conditions govern the asymmetric key types as
/// they govern symmetric keys: RSA `ENCRYPT_DECRYPT` (Decrypt with `Recipient`), ECC
/// `KEY_AGREEMENT` (DeriveSharedSecret with `Recipient`) and `SIGN_VERIFY` keys, through aliases.
#[tokio::test]
async fn pcr0_policy_governs_asymmetric_keys() {
    let good = nsm(5, &PCR0_GOOD);
    let bad = nsm(50, &PCR0_BAD);
    let env = env(&[&good, &bad]).await;
    let admin = client(&env, None);
    let enclave = client(&env, Some(Recipient::new(good.clone())));
    let other = client(&env, Some(Recipient::new(bad)));

    let create = |spec: &'static str, usage: &'static str| {
        let admin = &admin;
        async move {
            admin
                .create_key(
                    CreateKeyRequest::new()
                        .key_spec(spec)
                        .key_usage(usage)
                        .policy(pcr0_policy(&PCR0_GOOD)),
                )
                .await
                .unwrap()
                .key_metadata
                .key_id
        }
    };

    // RSA ENCRYPT_DECRYPT: anyone allowed to Encrypt encrypts; only the right image decrypts.
    let rsa = create("RSA_2048", "ENCRYPT_DECRYPT").await;
    admin
        .call_json(
            "CreateAlias",
            &serde_json::json!({"AliasName": "alias/enclave-rsa", "TargetKeyId": rsa}),
        )
        .await
        .unwrap();
    let ct = admin
        .call_json(
            "Encrypt",
            &serde_json::json!({"KeyId": "alias/enclave-rsa", "Plaintext": "c2VjcmV0",
                                "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await
        .unwrap()["CiphertextBlob"]
        .as_str()
        .map(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).unwrap())
        .unwrap();
    let decrypt = || {
        DecryptRequest::new(ct.clone())
            .key_id("alias/enclave-rsa")
            .encryption_algorithm("RSAES_OAEP_SHA_256")
    };
    let resp = enclave.decrypt(decrypt()).await.unwrap();
    assert!(resp.ciphertext_for_recipient.is_some());
    assert_eq!(resp.plaintext.as_bytes(), b"secret");
    let e = other.decrypt(decrypt()).await.unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");
    let e = admin.decrypt(decrypt()).await.unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // ECC KEY_AGREEMENT.
    let ka = create("ECC_NIST_P256", "KEY_AGREEMENT").await;
    let mine = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
    let my_public: PublicKeyX509Der<'static> = mine.compute_public_key().unwrap().as_der().unwrap();
    let derive = || DeriveSharedSecretRequest::new(&ka, my_public.as_ref().to_vec());
    let resp = enclave.derive_shared_secret(derive()).await.unwrap();
    assert!(resp.ciphertext_for_recipient.is_some());
    let e = other.derive_shared_secret(derive()).await.unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // SIGN_VERIFY: the policy allows GetPublicKey (kms:Get*) but not Sign.
    let signer = create("ECC_NIST_P384", "SIGN_VERIFY").await;
    let sign = serde_json::json!({"KeyId": signer, "Message": "aGk=", "SigningAlgorithm": "ECDSA_SHA_384"});
    let e = admin.call_json("Sign", &sign).await.unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");
    let public = admin
        .call_json("GetPublicKey", &serde_json::json!({"KeyId": signer}))
        .await
        .unwrap();
    assert_eq!(public["KeySpec"], "ECC_NIST_P384");
    assert_eq!(
        public["SigningAlgorithms"],
        serde_json::json!(["ECDSA_SHA_384"])
    );
}

#[tokio::test]
async fn signatures_are_checked() {
    let sim = nsm(4, &PCR0_GOOD);
    let env = env(&[&sim]).await;
    let url = format!("https://localhost:{}", env.server.local_addr().port());
    let roots = TlsRoots::from_pem(env.ca_pem.as_bytes()).unwrap();
    let bad_secret = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .credentials(Credentials::new("AKIDLOCALTEST", "wrong", None, None))
        .build()
        .unwrap();
    let e = bad_secret
        .list_keys(ListKeysRequest::new())
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidSignatureException");
    let unknown = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .credentials(Credentials::new("AKIDOTHER", "x", None, None))
        .build()
        .unwrap();
    let e = unknown.list_keys(ListKeysRequest::new()).await.unwrap_err();
    assert_eq!(code(&e), "UnrecognizedClientException");
    let wrong_region = KmsClient::builder("us-west-2")
        .endpoint(&url)
        .tls_roots(roots)
        .credentials(creds())
        .build()
        .unwrap();
    let e = wrong_region
        .list_keys(ListKeysRequest::new())
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidSignatureException");
    // And a client that does not trust the server's CA never gets to send anything.
    let untrusting = KmsClient::builder(REGION)
        .endpoint(&url)
        .credentials(creds())
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let e = untrusting
        .list_keys(ListKeysRequest::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
}

#[tokio::test]
async fn state_file_survives_restart() {
    let sim = nsm(5, &PCR0_GOOD);
    let env = env(&[&sim]).await;
    let kms = client(&env, None);
    let key_id = kms
        .create_key(CreateKeyRequest::new())
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let blob = kms
        .encrypt(EncryptRequest::new(&key_id, b"persisted".to_vec()))
        .await
        .unwrap()
        .ciphertext_blob;
    // A second local KMS reading the same state file decrypts it.
    let reloaded = LocalKms::new(
        LocalKmsConfig::new(
            AttestationTrust::roots_der(env.roots.iter().map(Vec::as_slice)).unwrap(),
        )
        .region(REGION)
        .state_file(&env.state_file)
        .credentials(creds()),
    )
    .unwrap();
    let server2 = server::spawn(Arc::new(reloaded), "127.0.0.1:0", None)
        .await
        .unwrap();
    let plain = KmsClient::builder(REGION)
        .endpoint(format!("http://127.0.0.1:{}", server2.local_addr().port()))
        .dangerous_allow_plain_http()
        .credentials(creds())
        .build()
        .unwrap();
    let dec = plain.decrypt(DecryptRequest::new(blob)).await.unwrap();
    assert_eq!(dec.plaintext.as_bytes(), b"persisted");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env.state_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Documents in the shape of QEMU's emulated NSM (`virtio-nsm-device`): protected header
/// `{1: -1}`, 64 zero bytes as signature, certificate and the only cabundle entry, real payload.
/// QEMU itself is exercised end to end by the emulator's tests; this produces the same bytes so
/// that the local KMS's trust modes can be tested here.
struct QemuShapedNsm {
    pcr0: [u8; 48],
}

impl nitro_attest::Nsm for QemuShapedNsm {
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> nitro_attest::Result<Vec<u8>> {
        use ciborium::Value as V;
        let bytes = |b: Option<&[u8]>| b.map_or(V::Null, |b| V::Bytes(b.to_vec()));
        let pcrs = (0..16u8)
            .map(|i| {
                let v = if i == 0 {
                    self.pcr0.to_vec()
                } else {
                    vec![0u8; 48]
                };
                (V::Integer(i.into()), V::Bytes(v))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            * 1000;
        let payload = V::Map(vec![
            (V::Text("module_id".into()), V::Text("i-234-enc5678".into())),
            (V::Text("digest".into()), V::Text("SHA384".into())),
            (V::Text("timestamp".into()), V::Integer(now.into())),
            (V::Text("pcrs".into()), V::Map(pcrs)),
            (V::Text("certificate".into()), V::Bytes(vec![0; 64])),
            (
                V::Text("cabundle".into()),
                V::Array(vec![V::Bytes(vec![0; 64])]),
            ),
            (V::Text("public_key".into()), bytes(public_key)),
            (V::Text("user_data".into()), bytes(user_data)),
            (V::Text("nonce".into()), bytes(nonce)),
        ]);
        let mut payload_bytes = Vec::new();
        ciborium::into_writer(&payload, &mut payload_bytes).unwrap();
        let doc = V::Array(vec![
            V::Bytes(vec![0xa1, 0x01, 0x20]),
            V::Map(vec![]),
            V::Bytes(payload_bytes),
            V::Bytes(vec![0; 64]),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&doc, &mut out).unwrap();
        Ok(out)
    }
    fn describe_pcr(&self, _: u16) -> nitro_attest::Result<nitro_attest::PcrDescription> {
        Err(nitro_attest::Error::Nsm(
            nitro_attest::NsmErrorCode::InvalidOperation,
        ))
    }
    fn extend_pcr(&self, _: u16, _: &[u8]) -> nitro_attest::Result<Vec<u8>> {
        Err(nitro_attest::Error::Nsm(
            nitro_attest::NsmErrorCode::ReadOnlyIndex,
        ))
    }
    fn lock_pcr(&self, _: u16) -> nitro_attest::Result<()> {
        Ok(())
    }
    fn lock_pcrs(&self, _: u16) -> nitro_attest::Result<()> {
        Ok(())
    }
    fn describe_nsm(&self) -> nitro_attest::Result<nitro_attest::NsmDescription> {
        Err(nitro_attest::Error::Nsm(
            nitro_attest::NsmErrorCode::InvalidOperation,
        ))
    }
    fn get_random(&self) -> nitro_attest::Result<Vec<u8>> {
        Ok(vec![4; 32])
    }
}

#[tokio::test]
async fn unsigned_emulator_documents_only_in_the_dangerous_mode() {
    let qemu = |pcr0| Recipient::new(Arc::new(QemuShapedNsm { pcr0 }));
    let start = |trust: AttestationTrust| async move {
        let kms = LocalKms::new(
            LocalKmsConfig::new(trust)
                .region(REGION)
                .credentials(creds()),
        )
        .unwrap();
        server::spawn(Arc::new(kms), "127.0.0.1:0", None)
            .await
            .unwrap()
    };
    let plain = |server: &server::RunningServer, recipient: Option<Recipient>| {
        let mut b = KmsClient::builder(REGION)
            .endpoint(format!("http://{}", server.local_addr()))
            .dangerous_allow_plain_http()
            .credentials(creds())
            .retry(RetryConfig::new(1));
        if let Some(r) = recipient {
            b = b.recipient(r);
        }
        b.build().unwrap()
    };

    let dangerous = start(AttestationTrust::dangerous_unsigned_emulator()).await;
    let admin = plain(&dangerous, None);
    let key_id = admin
        .create_key(CreateKeyRequest::new().policy(pcr0_policy(&PCR0_GOOD)))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let blob = admin
        .encrypt(EncryptRequest::new(&key_id, b"for the QEMU guest".to_vec()))
        .await
        .unwrap()
        .ciphertext_blob;
    let ok = plain(&dangerous, Some(qemu(PCR0_GOOD)))
        .decrypt(DecryptRequest::new(blob.clone()))
        .await
        .unwrap();
    assert_eq!(ok.plaintext.as_bytes(), b"for the QEMU guest");
    // PCRs still go through the key policy.
    let e = plain(&dangerous, Some(qemu(PCR0_BAD)))
        .decrypt(DecryptRequest::new(blob))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");

    // A local KMS that verifies signatures refuses the same documents.
    let sim = nsm(6, &PCR0_GOOD);
    let strict = start(AttestationTrust::root_der(sim.root_certificate_der()).unwrap()).await;
    let e = plain(&strict, Some(qemu(PCR0_GOOD)))
        .generate_random(GenerateRandomRequest::new(8))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationException", "{e}");
    // And the dangerous mode does not make a signed document's PCRs optional either: a
    // simulator document is parsed and its PCR0 checked like any other.
    let e = plain(&dangerous, Some(Recipient::new(nsm(7, &PCR0_BAD))))
        .generate_data_key(GenerateDataKeyRequest::new(&key_id))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException");
}

#[tokio::test]
async fn watched_roots_file() {
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::RootsPemFile(roots.clone()))
            .region(REGION)
            .credentials(creds()),
    )
    .unwrap();
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let sim = nsm(8, &PCR0_GOOD);
    let client = KmsClient::builder(REGION)
        .endpoint(format!("http://{}", server.local_addr()))
        .dangerous_allow_plain_http()
        .credentials(creds())
        .recipient(Recipient::new(sim.clone()))
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    // No file yet: nothing is trusted.
    let e = client
        .generate_random(GenerateRandomRequest::new(8))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationException", "{e}");
    // The simulator's root appears in the file: trusted from the next request on.
    std::fs::write(&roots, sim.root_certificate_pem()).unwrap();
    let r = client
        .generate_random(GenerateRandomRequest::new(8))
        .await
        .unwrap();
    assert_eq!(r.plaintext.len(), 8);
}
