//! Sealed secret in S3 (moto in server mode), fetched by the enclave through the nitro-net
//! tunnel with SigV4, and unsealed with an attested Decrypt from the local KMS through the same
//! tunnel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::CreateKeyRequest;
use nitro_kms::sealed::{self, SealOptions, UnsealOptions};
use nitro_kms::{Credentials, KmsClient, Recipient, S3Client, S3Location};
use nitro_net::{Addr, EgressClient, EgressServer, Policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secret_from_s3_through_the_tunnel() {
    let Some(moto) = nitro_test_support::Moto::start() else {
        return;
    };
    let s3_url = moto.url.clone();
    let kms_creds = Credentials::new("AKIDS3TUNNEL", "kms-secret", None, None);
    let s3_creds = Credentials::new("testing", "testing", None, None);
    let nsm = Arc::new(SimulatedNsm::builder().pcr(0, [0x77; 48]).build().unwrap());

    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::root_der(nsm.root_certificate_der()).unwrap())
            .credentials(kms_creds.clone()),
    )
    .unwrap();
    let kms_server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let kms_port = kms_server.local_addr().port();
    let kms_url = format!("http://127.0.0.1:{kms_port}");

    // Operator, outside: key, sealed secret, uploaded to S3.
    let operator = KmsClient::builder("us-east-1")
        .endpoint(&kms_url)
        .dangerous_allow_plain_http()
        .credentials(kms_creds.clone())
        .build()
        .unwrap();
    let key_id = operator
        .create_key(CreateKeyRequest::new())
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let doc = sealed::seal(
        &operator,
        &key_id,
        b"api token 42",
        &SealOptions::new().context("svc", "api"),
    )
    .await
    .unwrap();
    let location = S3Location::new("enclave-secrets", "api.sealed");
    let outside_s3 = S3Client::builder("us-east-1")
        .endpoint(&s3_url)
        .dangerous_allow_plain_http()
        .credentials(s3_creds.clone())
        .build()
        .unwrap();
    outside_s3.create_bucket(&location.bucket).await.unwrap();
    outside_s3.put_object(&location, doc).await.unwrap();

    // Parent: a tunnel that allows exactly S3 and KMS.
    let dir = tempfile::tempdir().unwrap();
    let tunnel: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let policy = Policy::builder()
        .allow_cidr("127.0.0.1/32", &[kms_port, moto.port()])
        .build()
        .unwrap();
    let egress_server = EgressServer::new(policy).spawn(tunnel.bind().await.unwrap());
    let egress = EgressClient::new(tunnel);

    // Enclave: S3 and KMS only through the tunnel.
    let s3 = S3Client::builder("us-east-1")
        .endpoint(&s3_url)
        .dangerous_allow_plain_http()
        .connector(egress.clone())
        .credentials(s3_creds)
        .build()
        .unwrap();
    let fetched = s3.get_object(&location).await.unwrap();
    let kms = KmsClient::builder("us-east-1")
        .endpoint(&kms_url)
        .dangerous_allow_plain_http()
        .connector(egress.clone())
        .credentials(kms_creds)
        .recipient(Recipient::new(nsm))
        .build()
        .unwrap();
    let secret = sealed::unseal(
        &kms,
        &fetched,
        &UnsealOptions::new().expect_context_pair("svc", "api"),
    )
    .await
    .unwrap();
    assert_eq!(secret.as_bytes(), b"api token 42");
    assert!(egress.stats().connections_total >= 2);
    drop((s3, kms));
    egress_server.shutdown().await.unwrap();
}
