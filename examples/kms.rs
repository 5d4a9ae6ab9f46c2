//! `kms`: attested AWS KMS calls, the local KMS emulator, CMS envelopes and sealed secrets.
//!
//! ```sh
//! # Credentials come from the standard AWS environment variables, for clients and for the
//! # emulator (which accepts requests signed with them).
//! export AWS_ACCESS_KEY_ID=AKIDLOCAL AWS_SECRET_ACCESS_KEY=local-secret AWS_REGION=us-east-1
//!
//! # A local KMS trusting simulator roots collected in roots.pem (re-read when it changes).
//! cargo run --release --example kms -- emulator --listen tcp:127.0.0.1:4566 \
//!     --root-simulator /tmp/roots.pem --state /tmp/kms-state.json &
//!
//! # Operator: a key whose policy admits one PCR0, and a secret encrypted under it.
//! cargo run --release --example kms -- create-key --endpoint http://127.0.0.1:4566 --policy policy.json
//! cargo run --release --example kms -- encrypt --endpoint http://127.0.0.1:4566 --key-id ID \
//!     --plaintext-b64 $(printf s3cr3t | base64)
//!
//! # "Enclave": Decrypt with Recipient from a simulated NSM with that PCR0; the CLI opens
//! # CiphertextForRecipient itself and prints the recovered Plaintext.
//! cargo run --release --example kms -- decrypt --endpoint http://127.0.0.1:4566 \
//!     --ciphertext-b64 B64 --recipient sim --sim-pcr 0=HEX96 --sim-root /tmp/roots.pem
//!
//! # Sealed secrets: seal outside, unseal inside (always with Recipient), from a file, S3 or
//! # the parent over vsock.
//! cargo run --release --example kms -- seal --endpoint URL --key-id ID --context app=db --in pw --out pw.sealed
//! cargo run --release --example kms -- unseal --endpoint URL --in pw.sealed --recipient sim ...
//! cargo run --release --example kms -- unseal --endpoint URL --s3 s3://bucket/pw.sealed --s3-endpoint URL ...
//!
//! # Any other operation as raw JSON: aliases, signing keys, rotation, deletion, tags.
//! cargo run --release --example kms -- call CreateKey --endpoint URL \
//!     --json '{"KeySpec":"ECC_NIST_P384","KeyUsage":"SIGN_VERIFY"}'
//! cargo run --release --example kms -- call CreateAlias --endpoint URL \
//!     --json '{"AliasName":"alias/eif","TargetKeyId":"ID"}'
//!
//! # Inside the enclave: the attesting KMS proxy for AWS SDKs and tools
//! # (AWS_ENDPOINT_URL_KMS=http://127.0.0.1:8000 aws kms decrypt ...).
//! cargo run --release --example kms -- proxy --listen 127.0.0.1:8000 --egress vsock:3:8000 --recipient nsm
//!
//! # Open a CiphertextForRecipient with a PKCS#8 DER private key.
//! cargo run --release --example kms -- cms-open --key key.pk8.der envelope.ber
//! ```
//!
//! Client options (every KMS command): `--endpoint URL` (default: the regional AWS endpoint;
//! `http://` is accepted for test servers with a warning), `--region R` (default `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, then `us-east-1`), `--ca PEM` (trust only these CAs), `--recipient
//! sim|nsm` (send `Recipient` from a simulated NSM or `/dev/nsm`), `--sim-pcr IDX=HEX`
//! (simulator PCR values, repeatable), `--sim-root PEM` (append the simulator's root certificate
//! to this file, for `emulator --root-simulator`), `--egress ADDR` (open connections through
//! the nitro-net egress tunnel at ADDR, as inside an enclave). Output is JSON with the field
//! names KMS uses; binary fields are base64.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nitro_attest::{Nsm, SimulatedNsm};
use nitro_kms::credentials::EnvironmentCredentials;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::sealed::{self, SealOptions, SealedSecret, UnsealOptions};
use nitro_kms::{
    Credentials, KmsClient, Recipient, RecipientKey, S3Client, S3Location, TlsRoots, internal::cms,
};
use serde::Serialize;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kms",
    about = "Attested AWS KMS calls, a local KMS emulator, CMS envelopes and sealed secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum RecipientKind {
    /// A simulated NSM (development).
    Sim,
    /// The enclave's `/dev/nsm`.
    Nsm,
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// KMS endpoint URL (default: https://kms.REGION.amazonaws.com).
    #[arg(long)]
    endpoint: Option<String>,
    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Trust only the CA certificates in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Send Recipient with an attestation document from this NSM.
    #[arg(long, value_enum)]
    recipient: Option<RecipientKind>,
    /// Simulator PCR value, IDX=HEX (repeatable).
    #[arg(long = "sim-pcr", value_parser = parse_pcr)]
    sim_pcr: Vec<(u16, Vec<u8>)>,
    /// Append the simulator's root certificate (PEM) to this file.
    #[arg(long)]
    sim_root: Option<PathBuf>,
    /// Connect through the nitro-net egress tunnel at this address (vsock:CID:PORT, uds:DIR:PORT, ...).
    #[arg(long)]
    egress: Option<nitro_net::Addr>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local KMS.
    Emulator {
        /// Listen address: tcp:HOST:PORT, vsock:PORT, uds:DIR:PORT, uds:PATH, hybrid:UDS:PORT.
        #[arg(long)]
        listen: nitro_net::Addr,
        /// TLS certificate chain (PEM); plain HTTP without it.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Keep keys in this file (default: in memory).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Trust attestation documents chaining to the root(s) in this PEM file instead of the
        /// AWS Nitro Enclaves root.
        #[arg(long, conflicts_with_all = ["root_simulator", "dangerous_unsigned_emulator"])]
        root: Option<PathBuf>,
        /// Trust simulator roots collected in this PEM file (re-read when it changes).
        #[arg(long, conflicts_with = "dangerous_unsigned_emulator")]
        root_simulator: Option<PathBuf>,
        /// Accept QEMU's UNSIGNED emulated documents (no signature check; PCRs still go through
        /// key policies). Development only: anyone can forge such a document.
        #[arg(long)]
        dangerous_unsigned_emulator: bool,
        /// Region requests are signed for.
        #[arg(long)]
        region: Option<String>,
        /// Account id in ARNs and policies.
        #[arg(long, default_value = nitro_kms::local::DEFAULT_ACCOUNT_ID)]
        account_id: String,
    },
    /// CreateKey.
    CreateKey {
        #[command(flatten)]
        client: ClientOpts,
        /// Key policy document (JSON file).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// SYMMETRIC_DEFAULT (default), ECC_NIST_P256, ...
        #[arg(long)]
        key_spec: Option<String>,
        /// ENCRYPT_DECRYPT (default) or KEY_AGREEMENT.
        #[arg(long)]
        key_usage: Option<String>,
    },
    /// Encrypt.
    Encrypt {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        plaintext_b64: String,
        /// Encryption context pair K=V (repeatable).
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// Decrypt (with --recipient: attested, the plaintext is recovered from CiphertextForRecipient).
    Decrypt {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        ciphertext_b64: String,
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// GenerateDataKey.
    GenerateDataKey {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        /// AES_256 (default) or AES_128.
        #[arg(long, default_value = "AES_256")]
        key_spec: String,
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// GenerateDataKeyPair.
    GenerateDataKeyPair {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        /// RSA_2048, ECC_NIST_P256, ...
        #[arg(long)]
        key_pair_spec: String,
    },
    /// GenerateRandom.
    GenerateRandom {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        bytes: u32,
    },
    /// DeriveSharedSecret (ECDH with a KEY_AGREEMENT key).
    DeriveSharedSecret {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        /// Peer public key, DER SubjectPublicKeyInfo, base64.
        #[arg(long)]
        public_key_b64: String,
    },
    /// PutKeyPolicy.
    PutKeyPolicy {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        policy: PathBuf,
    },
    /// GetKeyPolicy.
    GetKeyPolicy {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
    },
    /// ListKeys.
    ListKeys {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Any KMS operation as raw JSON (aliases, ReEncrypt, Sign, Verify, rotation, deletion,
    /// tags, ...), e.g. `call Sign --json '{"KeyId":"alias/eif","Message":"aGk=",
    /// "SigningAlgorithm":"ECDSA_SHA_384"}'`. Binary fields are base64.
    Call {
        #[command(flatten)]
        client: ClientOpts,
        /// Operation name (the `X-Amz-Target` suffix), e.g. `CreateAlias`.
        operation: String,
        /// Request body (JSON object).
        #[arg(long, default_value = "{}")]
        json: String,
    },
    /// Open a CiphertextForRecipient (CMS EnvelopedData) with a PKCS#8 DER RSA key.
    CmsOpen {
        /// PKCS#8 DER private key.
        #[arg(long)]
        key: PathBuf,
        /// The envelope (BER/DER).
        envelope: PathBuf,
    },
    /// Seal a secret under a KMS key (operator side).
    Seal {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(long)]
        key_id: String,
        /// Encryption context pair K=V (repeatable; at least one: it binds the secret to its
        /// purpose, see nitro_kms::sealed).
        #[arg(long = "context", value_parser = parse_kv, required = true)]
        context: Vec<(String, String)>,
        /// The secret.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the sealed document (a file, or s3://bucket/key).
        #[arg(long)]
        out: String,
        /// Always use envelope encryption.
        #[arg(long)]
        envelope: bool,
        /// S3 endpoint URL for s3:// outputs.
        #[arg(long)]
        s3_endpoint: Option<String>,
    },
    /// Unseal a secret (enclave side, always with Recipient: --recipient nsm unless told otherwise).
    Unseal {
        #[command(flatten)]
        client: ClientOpts,
        /// A sealed document file.
        #[arg(long = "in", conflicts_with_all = ["s3", "parent"])]
        input: Option<PathBuf>,
        /// A sealed document in S3.
        #[arg(long, conflicts_with = "parent")]
        s3: Option<String>,
        /// S3 endpoint URL (default: the regional AWS endpoint).
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// Fetch the document from the parent's `serve-sealed` at this address.
        #[arg(long, requires = "name")]
        parent: Option<nitro_net::Addr>,
        /// Name of the document at the parent.
        #[arg(long)]
        name: Option<String>,
        /// Expected encryption context pair K=V (repeatable; at least one; must equal the
        /// sealed document's context exactly).
        #[arg(long = "context", value_parser = parse_kv, required = true)]
        context: Vec<(String, String)>,
    },
    /// Serve sealed documents from a directory to enclaves (parent side).
    ServeSealed {
        #[arg(long)]
        listen: nitro_net::Addr,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the attesting KMS proxy on loopback (enclave side): AWS SDKs and tools pointed at it
    /// with AWS_ENDPOINT_URL_KMS=http://ADDR get attested calls (always with Recipient:
    /// --recipient nsm unless told otherwise). Prints {"Listening": "http://ADDR"}.
    Proxy {
        #[command(flatten)]
        client: ClientOpts,
        /// Loopback address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
    },
    /// Serve credentials to enclaves (parent side): the AWS_* environment variables, or (built
    /// with feature `aws-config`) aws-config's default chain or the instance role (IMDSv2),
    /// refreshed before they expire.
    ServeCredentials {
        #[arg(long)]
        listen: nitro_net::Addr,
        /// Where the credentials come from.
        #[arg(long, value_enum, default_value = "env")]
        source: CredentialSource,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CredentialSource {
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, read on every request.
    Env,
    /// Environment, profile files, web identity, ECS, then the instance role (aws-config).
    #[cfg(feature = "aws-config")]
    DefaultChain,
    /// The instance role through IMDSv2 only (aws-config).
    #[cfg(feature = "aws-config")]
    InstanceRole,
}

async fn credential_source(
    source: CredentialSource,
) -> anyhow::Result<Arc<dyn nitro_kms::ProvideCredentials>> {
    Ok(match source {
        CredentialSource::Env => Arc::new(EnvironmentCredentials),
        #[cfg(feature = "aws-config")]
        CredentialSource::DefaultChain => {
            Arc::new(nitro_kms::credentials::RefreshingCredentials::new(
                nitro_kms::credentials::default_chain().await?,
            ))
        }
        #[cfg(feature = "aws-config")]
        CredentialSource::InstanceRole => {
            Arc::new(nitro_kms::credentials::RefreshingCredentials::new(
                nitro_kms::credentials::instance_role()?,
            ))
        }
    })
}

fn parse_pcr(s: &str) -> Result<(u16, Vec<u8>), String> {
    let (i, h) = s.split_once('=').ok_or("expected IDX=HEX")?;
    let i: u16 = i.parse().map_err(|e| format!("PCR index: {e}"))?;
    let v = hex::decode(h).map_err(|e| format!("PCR value: {e}"))?;
    Ok((i, v))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}

fn context(pairs: &[(String, String)]) -> Option<EncryptionContext> {
    (!pairs.is_empty()).then(|| pairs.iter().cloned().collect())
}

fn region(opt: Option<String>) -> String {
    opt.or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into())
}

fn b64(s: &str) -> anyhow::Result<Vec<u8>> {
    B64.decode(s.trim()).context("invalid base64")
}

fn print(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn nsm(opts: &ClientOpts, kind: RecipientKind) -> anyhow::Result<Arc<dyn Nsm>> {
    Ok(match kind {
        RecipientKind::Nsm => {
            Arc::new(nitro_attest::NsmDevice::open().context("opening /dev/nsm")?)
        }
        RecipientKind::Sim => {
            let mut b = SimulatedNsm::builder();
            for (i, v) in &opts.sim_pcr {
                b = b.pcr(*i, v);
            }
            let sim = b.build()?;
            if let Some(path) = &opts.sim_root {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.write_all(sim.root_certificate_pem().as_bytes())?;
                f.sync_all()?;
            }
            Arc::new(sim)
        }
    })
}

fn kms_client(opts: &ClientOpts) -> anyhow::Result<KmsClient> {
    let mut b = KmsClient::builder(region(opts.region.clone())).credentials(EnvironmentCredentials);
    if let Some(url) = &opts.endpoint {
        b = b.endpoint(url);
        if url.starts_with("http://") {
            eprintln!("warning: {url} is plain HTTP: no TLS between this process and KMS");
            b = b.dangerous_allow_plain_http();
        }
    }
    if let Some(ca) = &opts.ca {
        b = b.tls_roots(TlsRoots::from_pem(&std::fs::read(ca)?)?);
    }
    if let Some(kind) = opts.recipient {
        b = b.recipient(Recipient::new(nsm(opts, kind)?));
    }
    if let Some(addr) = &opts.egress {
        b = b.connector(nitro_net::EgressClient::new(addr.clone()));
    }
    Ok(b.build()?)
}

fn s3_client(opts: &ClientOpts, endpoint: Option<&str>) -> anyhow::Result<S3Client> {
    let mut b = S3Client::builder(region(opts.region.clone())).credentials(EnvironmentCredentials);
    if let Some(url) = endpoint {
        b = b.endpoint(url);
        if url.starts_with("http://") {
            eprintln!("warning: {url} is plain HTTP: no TLS between this process and S3");
            b = b.dangerous_allow_plain_http();
        }
    }
    if let Some(ca) = &opts.ca {
        b = b.tls_roots(TlsRoots::from_pem(&std::fs::read(ca)?)?);
    }
    if let Some(addr) = &opts.egress {
        b = b.connector(nitro_net::EgressClient::new(addr.clone()));
    }
    Ok(b.build()?)
}

#[allow(clippy::too_many_arguments)] // mirrors the emulator's command line
async fn emulator(
    listen: nitro_net::Addr,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    state: Option<PathBuf>,
    root: Option<PathBuf>,
    root_simulator: Option<PathBuf>,
    dangerous_unsigned_emulator: bool,
    region_opt: Option<String>,
    account_id: String,
) -> anyhow::Result<()> {
    let trust = if dangerous_unsigned_emulator {
        eprintln!(
            "warning: --dangerous-unsigned-emulator: attestation documents are NOT authenticated"
        );
        AttestationTrust::dangerous_unsigned_emulator()
    } else if let Some(path) = root_simulator {
        AttestationTrust::RootsPemFile(path)
    } else if let Some(path) = root {
        let pem = std::fs::read_to_string(&path)?;
        AttestationTrust::root_pem(&pem)?
    } else {
        AttestationTrust::aws()
    };
    let creds = Credentials::from_env().context(
        "the emulator accepts requests signed with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: set them",
    )?;
    let mut config = LocalKmsConfig::new(trust)
        .region(region(region_opt))
        .account_id(account_id)
        .credentials(creds);
    if let Some(path) = state {
        config = config.state_file(path);
    }
    let kms = Arc::new(LocalKms::new(config)?);
    let tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some(server::tls_config(&std::fs::read(c)?, &std::fs::read(k)?)?),
        _ => None,
    };
    let listener = listen.bind().await?;
    let shown = match listener.local_tcp_addr() {
        Some(a) => format!("tcp:{a}"),
        None => listen.to_string(),
    };
    let endpoint = listener
        .local_tcp_addr()
        .map(|a| format!("{}://{a}", if tls.is_some() { "https" } else { "http" }));
    print(&json!({"Listening": shown, "Endpoint": endpoint, "Region": kms.region()}))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let (kms, tls) = (kms.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Err(e) = server::serve_connection(kms, stream, tls).await {
                        eprintln!("connection from {peer:?}: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Emulator {
            listen,
            tls_cert,
            tls_key,
            state,
            root,
            root_simulator,
            dangerous_unsigned_emulator,
            region,
            account_id,
        } => {
            emulator(
                listen,
                tls_cert,
                tls_key,
                state,
                root,
                root_simulator,
                dangerous_unsigned_emulator,
                region,
                account_id,
            )
            .await
        }
        Command::CreateKey {
            client,
            policy,
            description,
            key_spec,
            key_usage,
        } => {
            let mut req = CreateKeyRequest::new();
            if let Some(p) = policy {
                req = req.policy(std::fs::read_to_string(p)?);
            }
            if let Some(d) = description {
                req = req.description(d);
            }
            if let Some(s) = key_spec {
                req = req.key_spec(s);
            }
            if let Some(u) = key_usage {
                req = req.key_usage(u);
            }
            print(&kms_client(&client)?.create_key(req).await?)
        }
        Command::Encrypt {
            client,
            key_id,
            plaintext_b64,
            context: ctx,
        } => {
            let mut req = EncryptRequest::new(key_id, b64(&plaintext_b64)?);
            req.encryption_context = context(&ctx);
            print(&kms_client(&client)?.encrypt(req).await?)
        }
        Command::Decrypt {
            client,
            key_id,
            ciphertext_b64,
            context: ctx,
        } => {
            let mut req = DecryptRequest::new(b64(&ciphertext_b64)?);
            req.key_id = key_id;
            req.encryption_context = context(&ctx);
            print(&kms_client(&client)?.decrypt(req).await?)
        }
        Command::GenerateDataKey {
            client,
            key_id,
            key_spec,
            context: ctx,
        } => {
            let spec = DataKeySpec::from_name(&key_spec)
                .ok_or_else(|| anyhow!("unknown key spec {key_spec}"))?;
            let mut req = GenerateDataKeyRequest::new(key_id).key_spec(spec);
            req.encryption_context = context(&ctx);
            print(&kms_client(&client)?.generate_data_key(req).await?)
        }
        Command::GenerateDataKeyPair {
            client,
            key_id,
            key_pair_spec,
        } => {
            let req = GenerateDataKeyPairRequest::new(key_id, key_pair_spec);
            print(&kms_client(&client)?.generate_data_key_pair(req).await?)
        }
        Command::GenerateRandom { client, bytes } => print(
            &kms_client(&client)?
                .generate_random(GenerateRandomRequest::new(bytes))
                .await?,
        ),
        Command::DeriveSharedSecret {
            client,
            key_id,
            public_key_b64,
        } => {
            let req = DeriveSharedSecretRequest::new(key_id, b64(&public_key_b64)?);
            print(&kms_client(&client)?.derive_shared_secret(req).await?)
        }
        Command::PutKeyPolicy {
            client,
            key_id,
            policy,
        } => {
            let req = PutKeyPolicyRequest::new(key_id, std::fs::read_to_string(policy)?);
            kms_client(&client)?.put_key_policy(req).await?;
            print(&json!({}))
        }
        Command::GetKeyPolicy { client, key_id } => print(
            &kms_client(&client)?
                .get_key_policy(GetKeyPolicyRequest::new(key_id))
                .await?,
        ),
        Command::ListKeys { client } => print(
            &kms_client(&client)?
                .list_keys(ListKeysRequest::new())
                .await?,
        ),
        Command::Call {
            client,
            operation,
            json,
        } => {
            let request: serde_json::Value =
                serde_json::from_str(&json).context("--json is not JSON")?;
            print(&kms_client(&client)?.call_json(&operation, &request).await?)
        }
        Command::CmsOpen { key, envelope } => {
            let key = RecipientKey::from_pkcs8(&std::fs::read(&key)?)?;
            let env = cms::Envelope::parse(&std::fs::read(&envelope)?)?;
            // Envelopes from other tools may name the recipient differently: accept what the
            // envelope says, since the caller chose the key explicitly.
            let key = key.accept(env.recipient_id().clone());
            let plaintext = env.open(&key)?;
            print(&json!({ "Plaintext": B64.encode(plaintext.as_bytes()) }))
        }
        Command::Seal {
            client,
            key_id,
            context: ctx,
            input,
            out,
            envelope,
            s3_endpoint,
        } => {
            let secret = nitro_kms::Plaintext::new(std::fs::read(&input)?);
            let mut opts = SealOptions::new().force_envelope(envelope);
            for (k, v) in ctx {
                opts = opts.context(k, v);
            }
            let doc = sealed::seal(&kms_client(&client)?, &key_id, &secret, &opts).await?;
            let parsed = SealedSecret::parse(&doc)?;
            if out.starts_with("s3://") {
                let loc: S3Location = out.parse()?;
                s3_client(&client, s3_endpoint.as_deref())?
                    .put_object(&loc, doc)
                    .await?;
            } else {
                write_file(Path::new(&out), &doc)?;
            }
            print(&json!({"KeyId": parsed.key_id, "Mode": parsed.mode, "Out": out}))
        }
        Command::Unseal {
            client,
            input,
            s3,
            s3_endpoint,
            parent,
            name,
            context: ctx,
        } => {
            // Unsealing always uses an attested Decrypt: inside an enclave, /dev/nsm by default.
            let mut client = client;
            client.recipient.get_or_insert(RecipientKind::Nsm);
            let doc = match (input, s3, parent) {
                (Some(path), None, None) => std::fs::read(path)?,
                (None, Some(url), None) => {
                    let loc: S3Location = url.parse()?;
                    s3_client(&client, s3_endpoint.as_deref())?
                        .get_object(&loc)
                        .await?
                }
                (None, None, Some(addr)) => {
                    let mut stream = addr.connect().await?;
                    sealed::fetch_sealed(&mut stream, name.as_deref().unwrap_or_default()).await?
                }
                _ => bail!("give exactly one of --in, --s3, --parent"),
            };
            let mut opts = UnsealOptions::new();
            if let Some(c) = context(&ctx) {
                opts = opts.expect_context(c);
            }
            let plaintext = sealed::unseal(&kms_client(&client)?, &doc, &opts).await?;
            print(&json!({ "Plaintext": B64.encode(plaintext.as_bytes()) }))
        }
        Command::Proxy { client, listen } => {
            let mut client = client;
            client.recipient.get_or_insert(RecipientKind::Nsm);
            let running = nitro_kms::proxy::KmsProxy::new(kms_client(&client)?)?
                .spawn(listen.as_str())
                .await?;
            print(&json!({ "Listening": running.url() }))?;
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::ServeSealed { listen, dir } => {
            let listener = listen.bind().await?;
            print(
                &json!({"Listening": listener.local_tcp_addr().map(|a| format!("tcp:{a}")).unwrap_or_else(|| listen.to_string())}),
            )?;
            loop {
                let (stream, peer) = listener.accept().await?;
                let lookup = sealed::directory_lookup(dir.clone());
                tokio::spawn(async move {
                    if let Err(e) = sealed::serve_sealed(stream, lookup).await {
                        eprintln!("serve-sealed {peer:?}: {e}");
                    }
                });
            }
        }
        Command::ServeCredentials { listen, source } => {
            let source = credential_source(source).await?;
            let listener = listen.bind().await?;
            print(
                &json!({"Listening": listener.local_tcp_addr().map(|a| format!("tcp:{a}")).unwrap_or_else(|| listen.to_string())}),
            )?;
            loop {
                let (stream, peer) = listener.accept().await?;
                let source = source.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        nitro_kms::credentials::serve_credentials(stream, &*source).await
                    {
                        eprintln!("serve-credentials {peer:?}: {e}");
                    }
                });
            }
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
