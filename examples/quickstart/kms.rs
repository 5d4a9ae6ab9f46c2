//! Quickstart step 4: KMS. A local KMS (standing in for AWS KMS) serves TLS on loopback; the
//! "operator" creates a key whose policy releases secrets only to one enclave image (the PCR0
//! of the EIF built in step 2, which the simulated NSM reports) and
//! seals a secret under it; the "enclave" task, whose only way out is the parent's egress
//! tunnel, gets a data key with `Recipient` (TLS ends inside the enclave, the key arrives in a
//! CMS envelope only its attested RSA key opens) and unseals the secret the parent hands it; a
//! second task with another PCR0 is refused by the key policy. When a Python with boto3 is
//! around, the enclave also runs the KMS proxy on loopback and an unmodified boto3 script
//! decrypts the data key through it (`AWS_ENDPOINT_URL_KMS`, dummy credentials).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use nitro_attest::SimulatedNsm;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::{CreateKeyRequest, DecryptRequest, GenerateDataKeyRequest};
use nitro_kms::sealed::{self, SealOptions, UnsealOptions};
use nitro_kms::{Credentials, KmsClient, Recipient, RetryConfig, TlsRoots};
use nitro_net::{Addr, EgressClient, EgressServer, Policy};

use crate::Context;

const REGION: &str = "eu-west-1";

fn enclave_client(
    url: &str,
    roots: &TlsRoots,
    egress: &EgressClient,
    creds: &Credentials,
    nsm: Arc<SimulatedNsm>,
) -> anyhow::Result<KmsClient> {
    Ok(KmsClient::builder(REGION)
        .endpoint(url)
        .tls_roots(roots.clone())
        .connector(egress.clone())
        .credentials(creds.clone())
        .recipient(Recipient::new(nsm))
        .retry(RetryConfig::new(1))
        .build()?)
}

/// A Python interpreter that can `import boto3`: the test venv's (`$NITRO_VENV`,
/// `$NITRO_CACHE/venv`, `~/.cache/nitro-rs/venv`), else `python3` on `PATH`.
fn python_with_boto3() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let venvs = [
        std::env::var_os("NITRO_VENV").map(std::path::PathBuf::from),
        std::env::var_os("NITRO_CACHE").map(|c| std::path::PathBuf::from(c).join("venv")),
        home.map(|h| h.join(".cache/nitro-rs/venv")),
    ];
    venvs
        .into_iter()
        .flatten()
        .map(|v| v.join("bin/python3"))
        .filter(|p| p.is_file())
        .chain(std::iter::once(std::path::PathBuf::from("python3")))
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import boto3"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

const BOTO3_SCRIPT: &str = r#"
import base64, sys, boto3
kms = boto3.client("kms")  # endpoint, region, dummy credentials: all from the environment
out = kms.decrypt(CiphertextBlob=base64.b64decode(sys.argv[1]), EncryptionContext={"app": "quickstart"})
assert "CiphertextForRecipient" not in out
print(base64.b64encode(out["Plaintext"]).decode())
"#;

/// Inside the enclave: the KMS proxy on loopback, and an unmodified boto3 script pointed at it
/// with `AWS_ENDPOINT_URL_KMS`. Skipped (and said so) without a Python that has boto3.
async fn boto3_through_proxy(
    kms: &KmsClient,
    blob: &[u8],
    data_key: &nitro_kms::Plaintext,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let Some(python) = python_with_boto3() else {
        println!(
            "    boto3 through the KMS proxy: skipped (no Python with boto3; `pip install boto3` to see it)"
        );
        return Ok(());
    };
    let proxy = nitro_kms::proxy::KmsProxy::new(kms.clone())?
        .spawn("127.0.0.1:0")
        .await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let out = tokio::process::Command::new(&python)
        .args(["-c", BOTO3_SCRIPT, &b64.encode(blob)])
        .env("AWS_ENDPOINT_URL_KMS", proxy.url())
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION) // what botocore reads
        .env("AWS_ACCESS_KEY_ID", "unused")
        .env("AWS_SECRET_ACCESS_KEY", "unused")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .await
        .context("running boto3")?;
    anyhow::ensure!(
        out.status.success(),
        "boto3 through the KMS proxy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plaintext = b64
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .context("boto3 output")?;
    anyhow::ensure!(
        plaintext == data_key.as_bytes(),
        "boto3 got another data key"
    );
    println!(
        "    boto3 through the KMS proxy ({}): Decrypt returned the {}-byte data key; \
         the proxy added Recipient and opened the envelope",
        proxy.url(),
        plaintext.len()
    );
    Ok(())
}

pub(crate) async fn run(ctx: &mut Context) -> anyhow::Result<()> {
    // Two enclave images: the one the key policy names, and another one.
    // The image built by the EIF step.
    let image_pcr0 = ctx.image_pcr0;
    let other_pcr0 = [0x0Fu8; 48];
    let enclave_nsm = Arc::new(SimulatedNsm::builder().pcr(0, image_pcr0).build()?);
    let other_nsm = Arc::new(SimulatedNsm::builder().pcr(0, other_pcr0).build()?);

    // --- "AWS": the local KMS over TLS, trusting the simulators' roots ---
    let creds = Credentials::new("AKIDQUICKSTART", "quickstart-secret", None, None);
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::roots_der([
            enclave_nsm.root_certificate_der(),
            other_nsm.root_certificate_der(),
        ])?)
        .region(REGION)
        .credentials(creds.clone()),
    )?;
    let (ca_pem, cert_pem, key_pem) = crate::tls_material("quickstart local KMS CA")?;
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes())?;
    let kms_server = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls)).await?;
    let kms_port = kms_server.local_addr().port();
    let url = format!("https://127.0.0.1:{kms_port}");
    let roots = TlsRoots::from_pem(ca_pem.as_bytes())?;
    println!("    local KMS: {url} (TLS, SigV4-verified requests)");

    // --- parent: egress tunnel to the KMS only, and a sealed secret to hand over ---
    let dir = ctx.dir.path().join("kms");
    std::fs::create_dir_all(&dir)?;
    let tunnel: Addr = format!("uds:{}:8000", dir.display()).parse()?;
    let policy = Policy::builder()
        .allow_cidr("127.0.0.1/32", &[kms_port])
        .build()?;
    let egress_server = EgressServer::new(policy).spawn(tunnel.bind().await?);
    let secrets: Addr = format!("uds:{}:9000", dir.display()).parse()?;
    let secrets_listener = secrets.bind().await?;
    let secrets_dir = dir.join("sealed");
    std::fs::create_dir_all(&secrets_dir)?;
    let secrets_task = tokio::spawn({
        let secrets_dir = secrets_dir.clone();
        async move {
            while let Ok((stream, _)) = secrets_listener.accept().await {
                let lookup = sealed::directory_lookup(secrets_dir.clone());
                tokio::spawn(async move { sealed::serve_sealed(stream, lookup).await });
            }
        }
    });

    // --- operator: a key for this image only, and a sealed secret ---
    let operator = KmsClient::builder(REGION)
        .endpoint(&url)
        .tls_roots(roots.clone())
        .credentials(creds.clone())
        .build()?;
    let key_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "operator", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:CreateKey", "kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(image_pcr0)}}}
        ]
    });
    let key_id = operator
        .create_key(CreateKeyRequest::new().policy(key_policy.to_string()))
        .await?
        .key_metadata
        .key_id;
    let doc = sealed::seal(
        &operator,
        &key_id,
        b"postgres://app:correct-horse@db/prod",
        &SealOptions::new().context("app", "quickstart"),
    )
    .await?;
    std::fs::write(secrets_dir.join("db.sealed"), &doc)?;
    println!(
        "    operator: key {key_id} admits PCR0 {}.. (the EIF of step 2); secret sealed ({} bytes) and left with the parent",
        &hex::encode(image_pcr0)[..12],
        doc.len()
    );

    // --- enclave task: reaches KMS only through the tunnel, TLS ends here ---
    let enclave = tokio::spawn({
        let (url, roots, creds, tunnel, secrets) = (
            url.clone(),
            roots.clone(),
            creds.clone(),
            tunnel.clone(),
            secrets.clone(),
        );
        let key_id = key_id.clone();
        async move {
            let egress = EgressClient::new(tunnel);
            let kms = enclave_client(&url, &roots, &egress, &creds, enclave_nsm)?;
            let t0 = Instant::now();
            let dk = kms
                .generate_data_key(
                    GenerateDataKeyRequest::new(&key_id).context("app", "quickstart"),
                )
                .await?;
            let cold = t0.elapsed();
            let data_key = dk.plaintext;
            let t1 = Instant::now();
            let again = kms
                .decrypt(
                    DecryptRequest::new(dk.ciphertext_blob.clone()).context("app", "quickstart"),
                )
                .await?;
            let warm = t1.elapsed();
            anyhow::ensure!(again.plaintext == data_key, "data key mismatch");
            println!(
                "    enclave: data key of {} bytes from CiphertextForRecipient ({} bytes of CMS); \
                 GenerateDataKey {} ms (new RSA key pair + attestation), Decrypt {} ms (reused)",
                data_key.len(),
                dk.ciphertext_for_recipient.as_ref().map_or(0, Vec::len),
                cold.as_millis(),
                warm.as_millis()
            );
            let blob = dk.ciphertext_blob.clone();
            boto3_through_proxy(&kms, &blob, &data_key).await?;
            let mut parent = secrets.connect().await?;
            let sealed_doc = sealed::fetch_sealed(&mut parent, "db.sealed").await?;
            let secret = sealed::unseal(
                &kms,
                &sealed_doc,
                &UnsealOptions::new().expect_context_pair("app", "quickstart"),
            )
            .await?;
            println!(
                "    enclave: unsealed the operator's secret from the parent: {:?}",
                String::from_utf8_lossy(secret.as_bytes())
            );
            let stats = egress.stats();
            println!(
                "    tunnel: {} connection(s), {} bytes up, {} bytes down (all of it TLS)",
                stats.connections_total, stats.bytes_up, stats.bytes_down
            );
            anyhow::Ok(())
        }
    });
    enclave.await.context("enclave task")??;

    // --- a second enclave task, another image, through the same tunnel: refused ---
    let egress = EgressClient::new(tunnel);
    let intruder = enclave_client(&url, &roots, &egress, &creds, other_nsm)?;
    let attempt = tokio::spawn({
        let (intruder, key_id) = (intruder.clone(), key_id.clone());
        async move {
            intruder
                .generate_data_key(
                    GenerateDataKeyRequest::new(&key_id).context("app", "quickstart"),
                )
                .await
        }
    });
    match attempt.await.context("second enclave task")? {
        Err(e) if e.service_code() == Some("AccessDeniedException") => {
            println!(
                "    other image (PCR0 {}..): refused: {e}",
                &hex::encode(other_pcr0)[..12]
            );
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err(anyhow!("the key policy admitted the wrong image")),
    }

    drop((intruder, egress));
    secrets_task.abort();
    egress_server.shutdown().await?;
    drop(kms_server);
    Ok(())
}
