//! Signing an EIF with a KMS key through moto's KMS server (`Sign` with an `ECC_NIST_P384` key,
//! `ECDSA_SHA_384`): the image verifies with the format crate nitro-cli uses and its PCR8 is
//! the certificate's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kms_common;

use kms_common::*;
use nitro_eif::sign_eif_async;
use nitro_kms::eif_signer::{KmsEifSigner, SignMessageType};
use nitro_kms::{Credentials, KmsClient, RetryConfig};

struct Moto(std::process::Child, String);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Option<Moto> {
    let bin = tool("moto_server")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = Moto(child, format!("http://127.0.0.1:{port}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(m)
}

#[tokio::test]
async fn a_kms_key_in_moto_signs_an_eif_that_nitro_cli_accepts() {
    let (Some(moto), Some(openssl)) = (moto(), tool("openssl")) else {
        return;
    };
    let kms = KmsClient::builder("us-east-1")
        .endpoint(&moto.1)
        .dangerous_allow_plain_http()
        .credentials(Credentials::new("testing", "testing", None, None))
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unsigned = unsigned_eif(dir.path());
    let (_key_id, arn) = create_signing_key(&kms).await;
    assert_eq!(KmsEifSigner::region_of_arn(&arn), Some("us-east-1"));
    let cert = certify(&kms, &arn, &openssl, dir.path()).await;

    // moto implements MessageType RAW only; with RAW the signature is the same as DIGEST's.
    let signer = KmsEifSigner::new(kms.clone(), &arn, cert.clone())
        .unwrap()
        .message_type(SignMessageType::Raw);
    let signed = dir.path().join("signed.eif");
    let m = sign_eif_async(&unsigned, &signed, &signer).await.unwrap();
    assert_eq!(
        m.pcr8,
        Some(nitro_eif::Pcr::of_certificate_pem(&cert).unwrap())
    );
    check_signed(&unsigned, &signed, &cert);

    // A server that ignores DIGEST (moto signs the digest again as a message) yields a
    // signature that does not verify: refused, nothing written.
    let digest = KmsEifSigner::new(kms.clone(), &arn, cert.clone()).unwrap();
    let out = dir.path().join("digest.eif");
    let e = sign_eif_async(&unsigned, &out, &digest).await.unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert!(!out.exists());

    // A certificate for another key is caught the same way.
    let (other, _) = create_signing_key(&kms).await;
    let wrong = KmsEifSigner::new(kms.clone(), &other, cert.clone())
        .unwrap()
        .message_type(SignMessageType::Raw);
    assert!(sign_eif_async(&unsigned, &out, &wrong).await.is_err());
    assert!(!out.exists());
}
