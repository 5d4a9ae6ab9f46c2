//! Signing an EIF with a key in the local KMS (`nitro_kms::local`), which gains `Sign` and
//! `GetPublicKey` for ECC keys: the image verifies with the format crate nitro-cli uses and
//! its PCR8 is the certificate's. Both message types are checked (the local KMS is meant to
//! implement `DIGEST` too).
//!
//! NOTE: this test needs the local KMS's `Sign`/`GetPublicKey`; it fails until that lands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kms_common;

use std::sync::Arc;

use kms_common::*;
use nitro_eif::sign_eif_async;
use nitro_kms::eif_signer::{KmsEifSigner, SignMessageType};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::{Credentials, KmsClient, RetryConfig};

#[tokio::test]
async fn a_key_in_the_local_kms_signs_an_eif_that_nitro_cli_accepts() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let creds = Credentials::new("AKIDEIFSIGNER", "local-secret-key", None, None);
    let state = tempfile::tempdir().unwrap();
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::dangerous_unsigned_emulator())
            .region("eu-west-1")
            .state_file(state.path().join("kms.json"))
            .credentials(creds.clone()),
    )
    .unwrap();
    let running = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let client = KmsClient::builder("eu-west-1")
        .endpoint(format!("http://{}", running.local_addr()))
        .dangerous_allow_plain_http()
        .credentials(creds)
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unsigned = unsigned_eif(dir.path());
    let (key_id, _arn) = create_signing_key(&client).await;
    let cert = certify(&client, &key_id, &openssl, dir.path()).await;
    for (i, mt) in [SignMessageType::Raw, SignMessageType::Digest]
        .into_iter()
        .enumerate()
    {
        let signer = KmsEifSigner::new(client.clone(), &key_id, cert.clone())
            .unwrap()
            .message_type(mt);
        let signed = dir.path().join(format!("signed-{i}.eif"));
        let m = sign_eif_async(&unsigned, &signed, &signer).await.unwrap();
        assert_eq!(
            m.pcr8,
            Some(nitro_eif::Pcr::of_certificate_pem(&cert).unwrap())
        );
        check_signed(&unsigned, &signed, &cert);
    }
}
