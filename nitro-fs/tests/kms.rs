//! Sealed devices whose data key comes from KMS (nitro-kms's local KMS, attested with a
//! simulated NSM as `Recipient`): created with GenerateDataKey, reopened with Decrypt, and
//! unopenable by another enclave image.
#![cfg(feature = "kms")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_fs::sealed::{KmsKeyWrap, MemoryAnchor, SealedConfig, SealedDevice};
use nitro_fs::{BlockDevice, Error, MemDevice};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::CreateKeyRequest;
use nitro_kms::{Credentials, KmsClient, Recipient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_device_with_a_kms_data_key() {
    let image = [0x11u8; 48];
    let nsm = Arc::new(SimulatedNsm::builder().pcr(0, image).build().unwrap());
    let other = Arc::new(SimulatedNsm::builder().pcr(0, [0x22; 48]).build().unwrap());
    let creds = Credentials::new("AKIDTEST", "secret", None, None);
    let kms = LocalKms::new(
        LocalKmsConfig::new(
            AttestationTrust::roots_der([nsm.root_certificate_der(), other.root_certificate_der()])
                .unwrap(),
        )
        .region("eu-west-1")
        .credentials(creds.clone()),
    )
    .unwrap();
    let running = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let url = format!("http://{}", running.local_addr());
    let client = |recipient: Option<Arc<SimulatedNsm>>| {
        let mut b = KmsClient::builder("eu-west-1")
            .endpoint(&url)
            .dangerous_allow_plain_http()
            .credentials(creds.clone());
        if let Some(nsm) = recipient {
            b = b.recipient(Recipient::new(nsm));
        }
        b.build().unwrap()
    };
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:CreateKey", "kms:DescribeKey"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(image)}}}
        ]
    });
    let key_id = client(None)
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await
        .unwrap()
        .key_metadata
        .key_id;

    let raw = MemDevice::new(SealedDevice::<MemDevice>::raw_size_for(1 << 20) as usize);
    let cfg = SealedConfig::default().with_anchor(MemoryAnchor::new());
    let wrap = KmsKeyWrap::new(client(Some(nsm.clone())), &key_id).context("app", "test");
    let dev = SealedDevice::create(raw.clone(), &wrap, cfg.clone())
        .await
        .unwrap();
    assert_eq!(dev.key_scheme(), KmsKeyWrap::SCHEME);
    dev.write_at(0, b"kms-protected").await.unwrap();
    dev.flush().await.unwrap();
    drop(dev);

    // Restart: the key comes back through Decrypt with Recipient.
    let dev = SealedDevice::open(raw.clone(), &wrap, cfg.clone())
        .await
        .unwrap();
    let mut b = [0u8; 13];
    dev.read_at(0, &mut b).await.unwrap();
    assert_eq!(&b, b"kms-protected");
    drop(dev);

    // Another image is refused by the key policy; so is a different encryption context.
    let intruder = KmsKeyWrap::new(client(Some(other)), &key_id).context("app", "test");
    assert!(matches!(
        SealedDevice::open(raw.clone(), &intruder, cfg.clone()).await,
        Err(Error::KeyWrap { .. })
    ));
    let wrong_ctx = KmsKeyWrap::new(client(Some(nsm)), &key_id).context("app", "other");
    assert!(matches!(
        SealedDevice::open(raw, &wrong_ctx, cfg).await,
        Err(Error::KeyWrap { .. })
    ));
}
