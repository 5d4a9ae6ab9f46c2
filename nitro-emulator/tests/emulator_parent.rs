//! The emulator's parent services (`nitro_emulator::parent`) without QEMU: an
//! "enclave" on this host connects to the Unix sockets vhost-device-vsock would connect the
//! guest's vsock connections to, and uses every service: the discovery document, the egress
//! tunnel (with the policy extended for the local KMS), the credentials, the local KMS with
//! `Recipient` (a simulated NSM: the unsafe emulator trust mode checks PCRs only, so the image's
//! PCR0 is admitted and another refused), and the NBD server. A second start on the same state
//! reuses the KMS key, which decrypts what the first run encrypted, and the NBD file keeps its
//! data. Runs everywhere (no emulator needed); the guest side over real vsock is
//! `emulator_e2e.rs`.

use std::path::Path;
use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_eif::{Measurements, Pcr};
use nitro_emulator::hybrid_listen_path;
use nitro_emulator::parent::{
    CREDENTIALS_PORT, EGRESS_PORT, EmulatorInfo, INFO_PORT, KmsSettings, NBD_PORT, NbdExport,
    ParentConfig, ParentServices,
};
use nitro_fs::{BlockDevice, ClientConfig, NbdClient};
use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials};
use nitro_kms::model::{DecryptRequest, GenerateDataKeyRequest};
use nitro_kms::{KmsClient, Recipient, RetryConfig, TlsRoots};
use nitro_net::{Addr, EgressClient};

/// The address the guest's connection to vsock `(CID 2, port)` arrives at.
fn guest_to(run_dir: &Path, port: u32) -> Addr {
    Addr::Unix {
        path: hybrid_listen_path(run_dir, port),
    }
}

fn kms_client(info: &EmulatorInfo, run_dir: &Path, pcr0: [u8; 48]) -> anyhow::Result<KmsClient> {
    let kms = info.kms.as_ref().ok_or_else(|| anyhow::anyhow!("no KMS"))?;
    let creds = guest_to(run_dir, kms.credentials_port);
    let credentials = RefreshingCredentials::new(ParentCredentials::new(move || {
        let addr = creds.clone();
        async move { addr.connect().await.map_err(std::io::Error::other) }
    }));
    let nsm = Arc::new(SimulatedNsm::builder().pcr(0, pcr0).build()?);
    Ok(KmsClient::builder(&kms.region)
        .endpoint(&kms.endpoint)
        .tls_roots(TlsRoots::from_pem(kms.ca_pem.as_bytes())?)
        .connector(EgressClient::new(guest_to(run_dir, info.egress_port)))
        .credentials(credentials)
        .recipient(Recipient::new(nsm))
        .retry(RetryConfig::new(1))
        .build()?)
}

async fn nbd(run_dir: &Path) -> anyhow::Result<NbdClient> {
    let addr = guest_to(run_dir, NBD_PORT);
    Ok(NbdClient::connect(
        move || {
            let addr = addr.clone();
            async move { addr.connect().await.map_err(std::io::Error::other) }
        },
        ClientConfig::new("data"),
    )
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_services_over_the_hybrid_sockets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image_pcr0 = [0x5Au8; 48];
    let measurements = Measurements::new(Pcr(image_pcr0), Pcr([1; 48]), Pcr([2; 48]), None);
    let state = dir.path().join("kms.json");
    let disk = dir.path().join("disk.img");
    let config = || {
        let mut c = ParentConfig::default();
        c.policy_toml = Some("[[deny]]\ncidr = \"169.254.169.254/32\"\n".to_owned());
        c.measurements = Some(measurements);
        let mut kms = KmsSettings::default();
        kms.state_file = Some(state.clone());
        c.kms = Some(kms);
        c.nbd = vec![
            format!("data={}:4M", disk.display())
                .parse::<NbdExport>()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ];
        anyhow::Ok(c)
    };

    // First run.
    let run1 = dir.path().join("run1");
    std::fs::create_dir_all(&run1)?;
    let services = ParentServices::start(&run1, config()?).await?;
    let info = EmulatorInfo::fetch(&guest_to(&run1, INFO_PORT)).await?;
    assert_eq!(&info, services.info());
    assert_eq!(info.egress_port, EGRESS_PORT);
    let m = info
        .measurements
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no measurements"))?;
    assert_eq!(m.pcr0, hex::encode(image_pcr0));
    let kms = info.kms.clone().ok_or_else(|| anyhow::anyhow!("no KMS"))?;
    assert_eq!(kms.credentials_port, CREDENTIALS_PORT);
    assert_eq!(
        info.nbd.as_ref().map(|n| n.exports.clone()),
        Some(vec![("data".to_owned(), 4 << 20)])
    );

    // The image's PCR0 gets a data key through the tunnel; another PCR0 does not.
    let enclave = kms_client(&info, &run1, image_pcr0)?;
    let key = enclave
        .generate_data_key(GenerateDataKeyRequest::new(&kms.key_id).context("k", "v"))
        .await?;
    let plaintext = key.plaintext;
    assert_eq!(plaintext.len(), 32);
    assert!(key.ciphertext_for_recipient.is_some());
    let blob = key.ciphertext_blob;
    let other = kms_client(&info, &run1, [0x5B; 48])?;
    let refused = other
        .generate_data_key(GenerateDataKeyRequest::new(&kms.key_id))
        .await
        .err()
        .and_then(|e| e.service_code().map(str::to_owned));
    assert_eq!(refused.as_deref(), Some("AccessDeniedException"));
    let plain = enclave.with_recipient(None);
    let refused = plain
        .generate_data_key(GenerateDataKeyRequest::new(&kms.key_id))
        .await
        .err()
        .and_then(|e| e.service_code().map(str::to_owned));
    assert_eq!(refused.as_deref(), Some("AccessDeniedException"));

    // The policy still denies what it denied, and everything else by default.
    let egress = EgressClient::new(guest_to(&run1, EGRESS_PORT));
    for (host, port) in [("169.254.169.254", 80), ("127.0.0.1", 1)] {
        let e = egress
            .connect(host, port)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{host}:{port} allowed"))?;
        assert!(e.refusal().is_some(), "{e}");
    }

    // NBD: the file is created with the size asked for, and keeps what is written.
    let client = nbd(&run1).await?;
    assert_eq!(client.size(), 4 << 20);
    client.write_at(4096, b"kept across runs").await?;
    client.flush().await?;
    client.close().await?;
    drop((enclave, other, plain));
    services.shutdown().await;

    // Second run on the same state: same key, which opens the first run's ciphertext.
    let run2 = dir.path().join("run2");
    std::fs::create_dir_all(&run2)?;
    let services = ParentServices::start(&run2, config()?).await?;
    let info2 = EmulatorInfo::fetch(&guest_to(&run2, INFO_PORT)).await?;
    let kms2 = info2.kms.clone().ok_or_else(|| anyhow::anyhow!("no KMS"))?;
    assert_eq!(kms2.key_id, kms.key_id, "the image key was not reused");
    let enclave = kms_client(&info2, &run2, image_pcr0)?;
    let again = enclave
        .decrypt(DecryptRequest::new(blob).context("k", "v"))
        .await?
        .plaintext;
    assert_eq!(again.as_bytes(), plaintext.as_bytes());
    let client = nbd(&run2).await?;
    let mut buf = [0u8; 16];
    client.read_at(4096, &mut buf).await?;
    assert_eq!(&buf, b"kept across runs");
    client.close().await?;
    drop(enclave);
    services.shutdown().await;
    Ok(())
}
