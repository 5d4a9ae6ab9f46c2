//! nitro-kms through nitro-net: an "enclave" client reaches the local KMS only through the
//! parent's egress tunnel (over Unix sockets standing in for vsock), runs TLS end to end inside
//! the enclave, and gets a secret with `Recipient` when its PCR0 matches the key policy; an
//! enclave with another PCR0 is refused. The enclave's credentials come from the parent over the
//! credentials protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials, serve_credentials};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::{Credentials, KmsClient, Recipient, RetryConfig, TlsRoots};
use nitro_net::{Addr, EgressClient, EgressServer, Policy};

const REGION: &str = "eu-central-1";

fn creds() -> Credentials {
    Credentials::new("AKIDTUNNEL", "tunnel-secret", Some("session".into()), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_decrypt_through_the_tunnel_admits_one_pcr0_and_refuses_another() {
    let admitted_pcr0 = [0xA1u8; 48];
    let refused_pcr0 = [0xB2u8; 48];
    let good = Arc::new(
        SimulatedNsm::builder()
            .pcr(0, admitted_pcr0)
            .build()
            .unwrap(),
    );
    let other = Arc::new(
        SimulatedNsm::builder()
            .pcr(0, refused_pcr0)
            .build()
            .unwrap(),
    );

    // The local KMS (parent side / "AWS"), over TLS, trusting both simulators' roots.
    let kms = LocalKms::new(
        LocalKmsConfig::new(
            AttestationTrust::roots_der([
                good.root_certificate_der(),
                other.root_certificate_der(),
            ])
            .unwrap(),
        )
        .region(REGION)
        .credentials(creds()),
    )
    .unwrap();
    let (ca, cert, key) = nitro_test_support::tls_material();
    let tls = server::tls_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let kms_server = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls))
        .await
        .unwrap();
    let kms_port = kms_server.local_addr().port();
    let url = format!("https://127.0.0.1:{kms_port}");
    let roots = TlsRoots::from_pem(ca.as_bytes()).unwrap();

    // The parent's egress server: only the KMS address and port are allowed.
    let dir = tempfile::tempdir().unwrap();
    let tunnel: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let policy = Policy::builder()
        .allow_cidr("127.0.0.1/32", &[kms_port])
        .build()
        .unwrap();
    let egress_server = EgressServer::new(policy).spawn(tunnel.bind().await.unwrap());
    let egress = EgressClient::new(tunnel);

    // The operator (outside) creates a key whose policy admits PCR0 = A1.. only.
    let operator = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .credentials(creds())
        .build()
        .unwrap();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:CreateKey", "kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"], "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(admitted_pcr0)}}}
        ]
    });
    let key_id = operator
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let sealed = operator
        .encrypt(EncryptRequest::new(&key_id, b"database password".to_vec()).context("app", "db"))
        .await
        .unwrap()
        .ciphertext_blob;

    // The parent hands its credentials to the enclave over the transport (vsock in production).
    let creds_addr: Addr = format!("uds:{}:8001", dir.path().display())
        .parse()
        .unwrap();
    let creds_listener = creds_addr.bind().await.unwrap();
    let creds_server = tokio::spawn(async move {
        while let Ok((stream, _)) = creds_listener.accept().await {
            tokio::spawn(async move { serve_credentials(stream, &creds()).await });
        }
    });
    let from_parent = RefreshingCredentials::new(ParentCredentials::new(move || {
        let addr = creds_addr.clone();
        async move { addr.connect().await.map_err(std::io::Error::other) }
    }));

    // The enclave: every byte goes through the tunnel; TLS ends here.
    let enclave = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .connector(egress.clone())
        .credentials(from_parent)
        .recipient(Recipient::new(good))
        .build()
        .unwrap();
    let secret = enclave
        .decrypt(DecryptRequest::new(sealed.clone()).context("app", "db"))
        .await
        .unwrap();
    assert_eq!(secret.plaintext.as_bytes(), b"database password");
    let data_key = enclave
        .generate_data_key(GenerateDataKeyRequest::new(&key_id).context("app", "db"))
        .await
        .unwrap();
    assert_eq!(data_key.plaintext.len(), 32);
    let stats = egress.stats();
    assert!(stats.connections_total >= 1, "{stats:?}");
    assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");

    // Another enclave image through the same tunnel: refused by the key policy.
    let intruder = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .connector(egress.clone())
        .credentials(creds())
        .recipient(Recipient::new(other))
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let e = intruder
        .decrypt(DecryptRequest::new(sealed).context("app", "db"))
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("AccessDeniedException"), "{e}");

    // A destination the parent's policy does not allow is refused by the tunnel.
    let elsewhere = KmsClient::builder(REGION)
        .endpoint("https://127.0.0.1:1")
        .tls_roots(roots)
        .connector(egress)
        .credentials(creds())
        .retry(RetryConfig::new(1))
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    let e = elsewhere
        .generate_random(GenerateRandomRequest::new(8))
        .await
        .unwrap_err();
    // The refusal is the cause (the KMS error says what it was connecting to).
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("denied") || chain.contains("policy"),
        "{chain}"
    );
    eprintln!("refusal took {:?}", t.elapsed());
    // Close the pooled keep-alive connections before stopping the tunnel.
    drop((enclave, intruder, elsewhere));
    egress_server.shutdown().await.unwrap();
    creds_server.abort();
}
