//! Quickstart step 5: storage. The parent serves a plain file over NBD; the "enclave" task
//! seals it (AES-256-GCM per block, a hash tree, a freshness anchor) with a data key from the
//! local KMS (GenerateDataKey with `Recipient`), writes a record, "restarts" (drops
//! everything and reopens, unwrapping the key again through KMS `Decrypt` with `Recipient`),
//! reads the record back, and then catches the parent flipping one byte of its file and
//! rolling the whole file back.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, ensure};
use nitro_attest::SimulatedNsm;
use nitro_fs::sealed::{KmsKeyWrap, MemoryAnchor, SealedConfig, SealedDevice};
use nitro_fs::{BlockDevice, ClientConfig, Error, Export, FileDevice, NbdClient, Server};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::CreateKeyRequest;
use nitro_kms::{Credentials, KmsClient, Recipient, TlsRoots};
use nitro_net::Addr;

use crate::Context;

const REGION: &str = "eu-west-1";
const RECORD: &[u8] = b"order #1042: 3 crates of apples, paid";

async fn nbd_client(addr: &Addr) -> anyhow::Result<NbdClient> {
    let addr = addr.clone();
    Ok(NbdClient::connect(
        move || {
            let addr = addr.clone();
            async move { addr.connect().await.map_err(std::io::Error::other) }
        },
        ClientConfig::new("data"),
    )
    .await?)
}

pub(crate) async fn run(ctx: &mut Context) -> anyhow::Result<()> {
    // --- "AWS": a local KMS with a key only this enclave image may use ---
    // The image built by the EIF step.
    let image_pcr0 = ctx.image_pcr0;
    let nsm = Arc::new(SimulatedNsm::builder().pcr(0, image_pcr0).build()?);
    let creds = Credentials::new("AKIDQUICKSTART", "quickstart-secret", None, None);
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::roots_der([nsm.root_certificate_der()])?)
            .region(REGION)
            .credentials(creds.clone()),
    )?;
    let (ca_pem, cert_pem, key_pem) = crate::tls_material("quickstart storage KMS CA")?;
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes())?;
    let kms_server = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls)).await?;
    let url = format!("https://127.0.0.1:{}", kms_server.local_addr().port());
    let roots = TlsRoots::from_pem(ca_pem.as_bytes())?;
    let operator = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .credentials(creds.clone())
        .build()?;
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "operator", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:CreateKey", "kms:DescribeKey"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(image_pcr0)}}}
        ]
    });
    let key_id = operator
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await?
        .key_metadata
        .key_id;
    // The enclave's KMS client attests with the (simulated) NSM. It talks to the KMS directly
    // here; step 4 shows the same client going through the parent's egress tunnel.
    let enclave_kms = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots)
        .credentials(creds)
        .recipient(Recipient::new(nsm))
        .build()?;
    let key_wrap = KmsKeyWrap::new(enclave_kms, &key_id).context("app", "quickstart");

    // --- parent: a plain file, served over NBD ---
    let dir = ctx.dir.path().join("fs");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("enclave-data.img");
    let capacity = 16 << 20;
    let raw = SealedDevice::<NbdClient>::raw_size_for(capacity);
    let server = Server::new(vec![Export::new("data", FileDevice::create(&file, raw)?)])?;
    let addr: Addr = format!("uds:{}:5000", dir.display()).parse()?;
    let listener = addr.bind().await?;
    let parent = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move { server.serve(stream).await });
        }
    });
    println!(
        "    parent: serving {} ({} KiB sparse file) over NBD at {addr}",
        file.display(),
        raw >> 10
    );

    // The enclave's freshness anchor: its own memory (it outlives the device's "restart").
    let anchor = MemoryAnchor::new();
    let config = SealedConfig::default().with_anchor(anchor.clone());

    // --- enclave: create, write, flush ---
    let dev = SealedDevice::create(nbd_client(&addr).await?, &key_wrap, config.clone()).await?;
    dev.write_at(0, RECORD).await?;
    dev.flush().await?;
    let (slots, _) = dev.physical_offsets(0);
    println!(
        "    enclave: sealed device {} ({} MiB), data key from KMS GenerateDataKey with Recipient; \
         wrote and flushed {:?}",
        dev.device_id(),
        dev.size() >> 20,
        String::from_utf8_lossy(RECORD)
    );
    let image = std::fs::read(&file)?;
    ensure!(
        !image.windows(RECORD.len()).any(|w| w == RECORD),
        "plaintext reached the parent"
    );
    println!("    parent: its file holds only ciphertext (the record is nowhere in it)");
    dev.underlying().close().await?;
    drop(dev);

    // --- enclave "restarts": reopen, key unwrapped again through KMS Decrypt with Recipient ---
    let dev = SealedDevice::open(nbd_client(&addr).await?, &key_wrap, config.clone()).await?;
    let mut back = vec![0u8; RECORD.len()];
    dev.read_at(0, &mut back).await?;
    ensure!(back == RECORD, "the record did not read back");
    println!(
        "    enclave: restarted, key unwrapped through KMS Decrypt with Recipient, read back {:?} \
         (generation {})",
        String::from_utf8_lossy(&back),
        dev.generation()
    );
    dev.underlying().close().await?;
    drop(dev);

    // --- the parent flips one byte of the stored block ---
    let before = std::fs::read(&file)?;
    let slot = slots
        .iter()
        .map(|&o| o as usize)
        .find(|&o| before[o..o + 4096].iter().any(|&b| b != 0))
        .ok_or_else(|| anyhow!("block 0 not found in the file"))?;
    let mut tampered = before.clone();
    tampered[slot + 9] ^= 0x01;
    std::fs::write(&file, &tampered)?;
    let dev = SealedDevice::open(nbd_client(&addr).await?, &key_wrap, config.clone()).await?;
    match dev.read_at(0, &mut back).await {
        Err(e @ Error::Integrity(_)) => println!("    parent flipped one bit of block 0: {e}"),
        Ok(()) => return Err(anyhow!("tampering went unnoticed")),
        Err(e) => return Err(e).context("reading the tampered block"),
    }
    dev.underlying().close().await?;
    drop(dev);
    std::fs::write(&file, &before)?;

    // --- the parent rolls the whole file back to an older, authentic state ---
    let dev = SealedDevice::open(nbd_client(&addr).await?, &key_wrap, config.clone()).await?;
    dev.write_at(0, b"order #1042: CANCELLED").await?;
    dev.flush().await?;
    dev.underlying().close().await?;
    drop(dev);
    std::fs::write(&file, &before)?;
    match SealedDevice::open(nbd_client(&addr).await?, &key_wrap, config).await {
        Err(e @ Error::Rollback { .. }) => println!("    parent replayed the older file: {e}"),
        Ok(_) => return Err(anyhow!("rollback went unnoticed")),
        Err(e) => return Err(e).context("opening the rolled-back device"),
    }

    parent.abort();
    drop(kms_server);
    Ok(())
}
