//! The official `aws-sdk-kms` client, unmodified, through `NitroHttpClient` over a nitro-net
//! egress tunnel (Unix sockets standing in for vsock), TLS ending in the "enclave":
//!
//! - against the local KMS (TLS, SigV4 checked, a key policy admitting one PCR0 of the simulated
//!   NSM): GenerateDataKey and Decrypt with `RecipientInfo` from `SdkRecipient`, whose
//!   `CiphertextForRecipient` it opens; another PCR0 is refused with AccessDenied. Credentials
//!   come from the parent over the credentials protocol, through `SdkCredentials`.
//! - against moto (an independent KMS implementation): the plain operations, and fail-closed
//!   opening when the server ignores `Recipient`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use nitro_attest::SimulatedNsm;
use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials, serve_credentials};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::sdk::{NitroHttpClient, SdkCredentials, SdkRecipient};
use nitro_kms::{Credentials, Error, ProvideCredentials, Recipient, TlsRoots};
use nitro_net::{Addr, EgressClient, EgressServer, Policy};

const REGION: &str = "eu-central-1";

fn creds() -> Credentials {
    Credentials::new("AKIDSDK", "sdk-secret", Some("session".into()), None)
}

/// An `aws_sdk_kms` client, configured as an application would, with our HTTP client.
fn sdk_client(
    url: &str,
    http: NitroHttpClient,
    creds: impl ProvideCredentials + 'static,
) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(url)
        .http_client(http)
        .credentials_provider(SdkCredentials::new(creds))
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// The parent's egress server on a Unix socket in `dir`, allowing only `port` on loopback.
async fn tunnel(dir: &std::path::Path, port: u16) -> (nitro_net::ServerHandle, EgressClient) {
    let addr: Addr = format!("uds:{}:8000", dir.display()).parse().unwrap();
    let policy = Policy::builder()
        .allow_cidr("127.0.0.1/32", &[port])
        .build()
        .unwrap();
    let server = EgressServer::new(policy).spawn(addr.bind().await.unwrap());
    (server, EgressClient::new(addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_kms_through_the_tunnel_with_recipient_against_the_local_kms() {
    let admitted_pcr0 = [0xC3u8; 48];
    let good = Arc::new(
        SimulatedNsm::builder()
            .pcr(0, admitted_pcr0)
            .build()
            .unwrap(),
    );
    let other = Arc::new(
        SimulatedNsm::builder()
            .pcr(0, [0xD4u8; 48])
            .build()
            .unwrap(),
    );

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
    let port = kms_server.local_addr().port();
    let url = format!("https://127.0.0.1:{port}");
    let roots = TlsRoots::from_pem(ca.as_bytes()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (egress_server, egress) = tunnel(dir.path(), port).await;

    // The parent serves its credentials over the transport (vsock in production).
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

    // Everything the SDK sends goes through the tunnel; TLS ends here.
    let http = NitroHttpClient::builder(egress.clone())
        .tls_roots(roots)
        .build()
        .unwrap();
    let client = sdk_client(&url, http.clone(), from_parent);

    // The operator's key (same SDK, same tunnel for brevity): Decrypt and GenerateDataKey only
    // for an enclave whose PCR0 is admitted.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:CreateKey", "kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": hex::encode(admitted_pcr0)}}}
        ]
    });
    let key_id = client
        .create_key()
        .policy(policy.to_string())
        .description("aws-sdk-kms through nitro-net")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;

    // GenerateDataKey with RecipientInfo: no plaintext in the response, the data key is in
    // CiphertextForRecipient, opened with the enclave's private key.
    let recipient = SdkRecipient::current(&Recipient::new(good)).await.unwrap();
    let out = client
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("app", "sdk")
        .recipient(recipient.recipient_info())
        .send()
        .await
        .unwrap();
    assert!(out.plaintext().is_none(), "plaintext next to Recipient");
    let data_key = recipient
        .open_response(
            "GenerateDataKey",
            out.ciphertext_for_recipient(),
            out.plaintext(),
        )
        .unwrap();
    assert_eq!(data_key.len(), 32);

    // Decrypt the data key's ciphertext with Recipient: the same 32 bytes.
    let blob = out.ciphertext_blob().unwrap().clone();
    let dec = client
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("app", "sdk")
        .recipient(recipient.recipient_info())
        .send()
        .await
        .unwrap();
    let again = recipient
        .open_response("Decrypt", dec.ciphertext_for_recipient(), dec.plaintext())
        .unwrap();
    assert_eq!(again.as_bytes(), data_key.as_bytes());
    // A CiphertextForRecipient is bound to its key pair: another one cannot open it.
    let stranger = SdkRecipient::current(&Recipient::new(Arc::new(
        SimulatedNsm::builder().build().unwrap(),
    )))
    .await
    .unwrap();
    assert!(matches!(
        stranger.open(dec.ciphertext_for_recipient().unwrap()),
        Err(Error::Cms(_))
    ));

    // Without Recipient the policy's condition is not met.
    let e = client
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("app", "sdk")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e:?}");

    // Another enclave image: refused.
    let intruder = SdkRecipient::current(&Recipient::new(other)).await.unwrap();
    let e = client
        .decrypt()
        .ciphertext_blob(blob)
        .encryption_context("app", "sdk")
        .recipient(intruder.recipient_info())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e:?}");

    // Every request went through the tunnel, and the pool reused connections.
    let stats = egress.stats();
    assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");
    assert!(stats.connections_total < 6, "no keep-alive? {stats:?}");

    // A destination the parent's policy does not allow: a connector error, not a response.
    let blocked = sdk_client("https://127.0.0.1:1", http, creds());
    let e = blocked
        .generate_random()
        .number_of_bytes(8)
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(e, aws_sdk_kms::error::SdkError::DispatchFailure(_)),
        "{e:?}"
    );

    drop((client, blocked));
    egress_server.shutdown().await.unwrap();
    creds_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_kms_through_the_tunnel_against_moto() {
    let Some(moto) = common::Moto::start() else {
        return;
    };
    let port: u16 = moto.url.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (egress_server, egress) = tunnel(dir.path(), port).await;

    // moto speaks plain HTTP: refused unless allowed.
    let strict = NitroHttpClient::builder(egress.clone()).build().unwrap();
    let e = sdk_client(&moto.url, strict, creds())
        .list_keys()
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", e).contains("plain http"),
        "plain HTTP was not refused: {e:?}"
    );

    let http = NitroHttpClient::builder(egress.clone())
        .dangerous_allow_plain_http()
        .build()
        .unwrap();
    let client = sdk_client(&moto.url, http, creds());
    let key_id = client
        .create_key()
        .description("moto via nitro-net")
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let enc = client
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(b"moto through the tunnel".to_vec()))
        .encryption_context("purpose", "sdk")
        .send()
        .await
        .unwrap();
    let dec = client
        .decrypt()
        .ciphertext_blob(enc.ciphertext_blob().unwrap().clone())
        .encryption_context("purpose", "sdk")
        .send()
        .await
        .unwrap();
    assert_eq!(
        dec.plaintext().unwrap().as_ref(),
        b"moto through the tunnel"
    );
    // The largest plaintext KMS accepts (4 KiB), each way.
    let big = vec![0x5Au8; 4096];
    let enc = client
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(big.clone()))
        .send()
        .await
        .unwrap();
    let dec = client
        .decrypt()
        .ciphertext_blob(enc.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), &big[..]);
    let random = client
        .generate_random()
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    assert_eq!(random.plaintext().unwrap().as_ref().len(), 64);

    // moto ignores Recipient and answers in plaintext: the helper refuses it.
    let nsm = Arc::new(SimulatedNsm::builder().build().unwrap());
    let recipient = SdkRecipient::current(&Recipient::new(nsm)).await.unwrap();
    let out = client
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .recipient(recipient.recipient_info())
        .send()
        .await
        .unwrap();
    let e = recipient
        .open_response(
            "GenerateDataKey",
            out.ciphertext_for_recipient(),
            out.plaintext(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::RecipientIgnored { .. }), "{e}");

    // A KMS error through the SDK's error model.
    let e = client
        .describe_key()
        .key_id("alias/does-not-exist")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NotFoundException"), "{e:?}");

    assert!(egress.stats().bytes_down > 0);
    drop(client);
    egress_server.shutdown().await.unwrap();
}
