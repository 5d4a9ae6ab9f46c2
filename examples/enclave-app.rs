//! `enclave-app`: an enclave application that uses all five crates against the real devices of
//! an emulated enclave (nitro-emulator's `emulate` binary): QEMU's emulated `/dev/nsm`,
//! `AF_VSOCK` to the parent, the kernel's NBD driver. The end-to-end test
//! (`nitro-emulator/tests/emulator_e2e.rs`) packs it into an EIF with nitro-eif and boots it
//! twice.
//!
//! ```text
//! enclave-app [--http http://HOST:PORT/PATH [--expect TEXT]] [--denied HOST:PORT]...
//!             [--kms] [--nbd EXPORT] [--mount EXPORT [--mkfs "/bin/busybox mke2fs -F -b 4096"]]
//!             [--ingress PORT]
//! ```
//!
//! Each step prints one line `enclave-app: [step] ok: …` or `enclave-app: [step] FAILED: …`;
//! the exit status is 0 when every step passed, 1 otherwise.
//!
//! - `[info]` reads the emulator's description of the parent's services
//!   (`nitro_emulator::parent::EmulatorInfo`, vsock port 9001);
//! - `[clock]` measures the parent's clock with nitro-net's time service and steps the guest's
//!   clock when it is off by more than a second;
//! - `[nsm]` asks `/dev/nsm` (nitro-attest `NsmDevice`) for an attestation document with a fresh
//!   nonce, prints its PCRs and the document itself (`enclave-app: nsm document <hex>`), checks
//!   the nonce, and compares PCR0/1/2 with what nitro-eif computed on the parent;
//! - `[egress]` sends an HTTP request to `--http` through nitro-net's egress tunnel over
//!   `AF_VSOCK` (a direct TCP connection must fail: the enclave has no network), and checks that
//!   each `--denied` destination is refused by the parent's policy;
//! - `[kms]` gets a data key from the local KMS with `Recipient` (nitro-kms, TLS ending here,
//!   through the tunnel), checks that the same request without `Recipient` is refused, and that
//!   a key whose policy pins another PCR0 (this image's with one bit flipped) refuses it;
//! - `[nbd]` opens (or, the first time, creates) a sealed nitro-fs device on the parent's NBD
//!   export, its data key wrapped by the KMS key (`KmsKeyWrap`), reads back the record the
//!   previous boot wrote and writes a new one;
//! - `[mount]` seals another export, attaches it to `/dev/nbd0` through the kernel's NBD driver,
//!   formats it with ext2 the first time, mounts it, reads back the previous boots' lines and
//!   appends one;
//! - `[ingress]` accepts one connection on a vsock port (forwarded by the parent from TCP) and
//!   answers each line with `echo: LINE`.
//!
//! Under the emulator, every stream to the parent keeps its writes at or below
//! [`EMULATOR_MAX_WRITE`] (16 KiB): the emulator's vsock backend drops the multi-descriptor
//! packets a 6.12 guest kernel makes of larger writes. Whether the cap applies comes from the
//! boot parameters (`nitro_init::BootParams::write_cap`), and the cap itself from nitro-net's
//! own configuration (`ClientConfig::max_write`, `Stream::limit_writes`), not from a wrapper of
//! this application.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use clap::Parser;
use nitro_attest::{
    Nsm, NsmDevice, Policy as AttestPolicy, Timestamp, UnverifiedDocument, dangerous,
};
use nitro_emulator::parent::{EmulatorInfo, INFO_PORT, image_key_policy};
use nitro_fs::sealed::{KmsKeyWrap, SealedConfig, SealedDevice};
use nitro_fs::{BlockDevice, ClientConfig, NbdClient, kernel};
use nitro_init::{BootParams, EMULATOR_MAX_WRITE};
use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials};
use nitro_kms::model::{CreateKeyRequest, GenerateDataKeyRequest};
use nitro_kms::{KmsClient, Recipient, RetryConfig, TlsRoots};
use nitro_net::time::{StepPolicy, TimeClient, TimeConfig};
use nitro_net::{Addr, ClientConfig as EgressConfig, EgressClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Every step's time limit (the guest runs under TCG, so generously).
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// The record the `[nbd]` step keeps at offset 0 of its sealed device.
const RECORD_PREFIX: &str = "nitro enclave-app record: boot=";
/// Where the `[mount]` step mounts its file system, and the file it keeps there.
const MOUNT_POINT: &str = "/mnt/sealed";
const BOOT_LOG: &str = "boots.txt";

#[derive(Parser)]
#[command(
    about = "Exercises nitro-attest, nitro-net, nitro-kms and nitro-fs inside an (emulated) enclave"
)]
struct Args {
    /// An HTTP service on the parent's side, reached through the egress tunnel:
    /// http://HOST:PORT/PATH.
    #[arg(long)]
    http: Option<String>,
    /// Text the HTTP response body must contain.
    #[arg(long, requires = "http")]
    expect: Option<String>,
    /// A HOST:PORT the parent's egress policy must refuse (repeatable).
    #[arg(long)]
    denied: Vec<String>,
    /// Get a data key from the emulator's local KMS, attested with Recipient.
    #[arg(long)]
    kms: bool,
    /// NBD export to seal and keep a record on (read back from the previous boot, then
    /// rewritten). Needs --kms (the data key is wrapped by the KMS key).
    #[arg(long, requires = "kms")]
    nbd: Option<String>,
    /// NBD export to seal, attach to /dev/nbd0, format with ext2 on first use and mount.
    #[arg(long, requires = "kms")]
    mount: Option<String>,
    /// Command that creates an ext2 file system on the device given as its last argument (its
    /// block size must be 4096, the sector size of the attached device).
    #[arg(long, default_value = "/bin/busybox mke2fs -F -b 4096")]
    mkfs: String,
    /// Accept one connection on this vsock port and answer each line with "echo: LINE".
    #[arg(long)]
    ingress: Option<u32>,
    /// vsock port of the emulator's info document.
    #[arg(long, default_value_t = INFO_PORT)]
    info_port: u32,
}

/// Collects step results.
#[derive(Default)]
struct Report {
    failed: Vec<&'static str>,
}

impl Report {
    fn ok(&self, step: &str, message: impl std::fmt::Display) {
        say(format_args!("[{step}] ok: {message}"));
    }

    fn fail(&mut self, step: &'static str, error: &anyhow::Error) {
        say(format_args!("[{step}] FAILED: {error:#}"));
        self.failed.push(step);
    }

    /// Runs one step with the time limit; returns its value when it succeeded.
    async fn step<T>(
        &mut self,
        step: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Option<T> {
        let result = match tokio::time::timeout(STEP_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("did not finish within {STEP_TIMEOUT:?}")),
        };
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(step, &e);
                None
            }
        }
    }
}

/// One console line, written at once (the console is shared with the kernel's messages).
fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let line = format!("enclave-app: {message}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn random<const N: usize>() -> Result<[u8; N]> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow!("random number generator failed"))?;
    Ok(b)
}

/// The write cap for streams to the parent, from the kernel command line (nitro-init's boot
/// parameters: `Some` under the emulator); kept when `/proc/cmdline` cannot be read (a cap is
/// harmless on a real enclave, its absence is not under the emulator).
fn write_cap() -> Option<usize> {
    static CAP: OnceLock<Option<usize>> = OnceLock::new();
    *CAP.get_or_init(|| match std::fs::read_to_string("/proc/cmdline") {
        Ok(cmdline) => BootParams::from_cmdline(&cmdline).0.write_cap(),
        Err(_) => Some(EMULATOR_MAX_WRITE),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut report = Report::default();
    let parent = |port: u32| Addr::Vsock { cid: None, port };
    say(format_args!(
        "started; the parent is vsock CID {}; vsock write cap {:?}",
        nitro_net::parent_cid(),
        write_cap()
    ));

    // Accept the ingress connection in the background while the other steps run.
    let ingress = args
        .ingress
        .map(|port| tokio::spawn(ingress_once(parent(port))));

    let info = report
        .step("info", async {
            let info = EmulatorInfo::fetch(&parent(args.info_port)).await?;
            report_info(&info);
            Ok(info)
        })
        .await;
    let egress = info.as_ref().map(|i| {
        let mut config = EgressConfig::default();
        config.max_write = write_cap();
        EgressClient::with_config(parent(i.egress_port), config)
    });

    if let Some(info) = &info {
        let tunnel = parent(info.egress_port);
        if let Some(msg) = report.step("clock", clock(tunnel)).await {
            report.ok("clock", msg);
        }
    }

    let nsm = report.step("nsm", attest(info.as_ref())).await;
    if let Some((_, msg)) = &nsm {
        report.ok("nsm", msg);
    }

    if let Some(egress) = &egress {
        if let Some(url) = &args.http
            && let Some(msg) = report
                .step("egress", http_get(egress, url, args.expect.as_deref()))
                .await
        {
            report.ok("egress", msg);
        }
        for target in &args.denied {
            if let Some(msg) = report.step("egress", refused(egress, target)).await {
                report.ok("egress", msg);
            }
        }
    } else if args.http.is_some() || !args.denied.is_empty() {
        report.fail(
            "egress",
            &anyhow!("no egress tunnel (the info step failed)"),
        );
    }

    let mut kms = None;
    if args.kms {
        let ready = match (&info, &egress, &nsm) {
            (Some(info), Some(egress), Some((nsm, _))) => Ok((info, egress, nsm)),
            _ => Err(anyhow!("needs the info, egress and nsm steps")),
        };
        match ready {
            Ok((info, egress, nsm)) => {
                if let Some((client, key_id, msg)) = report
                    .step("kms", data_key(info, egress.clone(), nsm.clone(), parent))
                    .await
                {
                    report.ok("kms", msg);
                    kms = Some((client, key_id));
                }
            }
            Err(e) => report.fail("kms", &e),
        }
    }

    let nbd_addr = info
        .as_ref()
        .and_then(|i| i.nbd.as_ref())
        .map(|n| parent(n.port));
    if let Some(export) = &args.nbd {
        match (&kms, &nbd_addr) {
            (Some((client, key_id)), Some(addr)) => {
                if let Some(msg) = report
                    .step("nbd", sealed_record(addr, export, client, key_id))
                    .await
                {
                    report.ok("nbd", msg);
                }
            }
            _ => report.fail("nbd", &anyhow!("needs the kms step and an NBD server")),
        }
    }
    if let Some(export) = &args.mount {
        match (&kms, &nbd_addr) {
            (Some((client, key_id)), Some(addr)) => {
                if let Some(msg) = report
                    .step(
                        "mount",
                        mounted_fs(addr, export, client, key_id, &args.mkfs),
                    )
                    .await
                {
                    report.ok("mount", msg);
                }
            }
            _ => report.fail("mount", &anyhow!("needs the kms step and an NBD server")),
        }
    }

    if let Some(task) = ingress {
        let result = match tokio::time::timeout(STEP_TIMEOUT, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow!("task failed: {e}")),
            Err(_) => Err(anyhow!("nobody connected within {STEP_TIMEOUT:?}")),
        };
        match result {
            Ok(msg) => report.ok("ingress", msg),
            Err(e) => report.fail("ingress", &e),
        }
    }

    if report.failed.is_empty() {
        say(format_args!("all steps passed"));
        Ok(())
    } else {
        say(format_args!(
            "{} step(s) failed: {}",
            report.failed.len(),
            report.failed.join(", ")
        ));
        std::process::exit(1);
    }
}

fn report_info(info: &EmulatorInfo) {
    let mut parts = vec![format!("egress on vsock port {}", info.egress_port)];
    if let Some(kms) = &info.kms {
        parts.push(format!("local KMS {} (key {})", kms.endpoint, kms.key_id));
    }
    if let Some(nbd) = &info.nbd {
        let names: Vec<&str> = nbd.exports.iter().map(|(n, _)| n.as_str()).collect();
        parts.push(format!("NBD exports {names:?} on port {}", nbd.port));
    }
    say(format_args!("[info] ok: {}", parts.join("; ")));
}

/// Measures the parent's clock; steps ours when it is more than a second off.
async fn clock(tunnel: Addr) -> Result<String> {
    let mut config = TimeConfig::default();
    // Round trips through the emulated vsock device take milliseconds, not microseconds.
    config.max_rtt = Duration::from_secs(1);
    config.step = StepPolicy::Step {
        min_offset: Duration::from_secs(1),
    };
    let report = TimeClient::new(tunnel).config(config).sync().await?;
    let mut msg = format!(
        "offset to the parent's clock {} (round trip {:.1?})",
        report.sample.offset, report.sample.rtt
    );
    if report.stepped {
        msg.push_str(", clock stepped");
    }
    if let Some(e) = report.step_error {
        msg.push_str(&format!(", stepping failed: {e}"));
    }
    Ok(msg)
}

/// The attestation step: a document from `/dev/nsm`, printed, its nonce checked, its PCRs
/// compared with the parent's nitro-eif measurements.
async fn attest(info: Option<&EmulatorInfo>) -> Result<(Arc<dyn Nsm>, String)> {
    let nsm: Arc<dyn Nsm> = Arc::new(NsmDevice::open().context("opening /dev/nsm")?);
    let nonce = random::<16>()?;
    let document = nsm
        .attestation(Some(b"nitro enclave-app"), Some(&nonce), None)
        .context("NSM Attestation request")?;
    let parsed = UnverifiedDocument::parse(&document).context("parsing the document")?;
    let payload = parsed.payload();
    // QEMU's NSM signs nothing: check the payload (nonce) without the signature.
    dangerous::check_policy_without_signature(
        &document,
        Timestamp::now(),
        &AttestPolicy::new().expect_nonce(nonce),
    )
    .context("checking the document's nonce")?;
    for index in [0u16, 1, 2, 3, 4, 8] {
        if let Some(value) = payload.pcrs.get(&index) {
            say(format_args!("nsm PCR{index} {}", hex::encode(value)));
        }
    }
    say(format_args!("nsm document {}", hex::encode(&document)));
    let mut msg = format!(
        "attestation document from /dev/nsm ({} bytes, module {}, {} PCRs, {}), nonce checked",
        document.len(),
        payload.module_id,
        payload.pcrs.len(),
        if dangerous::is_qemu_unsigned(&parsed) {
            "unsigned: QEMU's emulated NSM"
        } else {
            "signed"
        }
    );
    if let Some(expected) = info.and_then(|i| i.measurements.as_ref()) {
        for (index, want) in [
            (0u16, &expected.pcr0),
            (1, &expected.pcr1),
            (2, &expected.pcr2),
        ] {
            let got = payload
                .pcrs
                .get(&index)
                .map(hex::encode)
                .unwrap_or_default();
            ensure!(
                &got == want,
                "PCR{index} is {got}, but nitro-eif computed {want} for this image"
            );
        }
        msg.push_str("; PCR0, PCR1, PCR2 equal nitro-eif's measurements of the EIF");
    }
    Ok((nsm, msg))
}

/// GET `url` through the tunnel; also shows that a direct connection fails.
async fn http_get(egress: &EgressClient, url: &str, expect: Option<&str>) -> Result<String> {
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    ensure!(uri.scheme_str() == Some("http"), "only http:// URLs");
    let host = uri.host().context("URL without a host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();

    // The enclave has no network: the same address directly must not work.
    let direct = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await;
    let direct = match direct {
        Ok(Ok(_)) => bail!("a direct TCP connection to {host}:{port} worked inside the enclave"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };

    let mut stream = egress
        .connect(&host, port)
        .await
        .with_context(|| format!("tunnel to {host}:{port}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: nitro-enclave-app\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .context("reading the response")?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("").trim().to_owned();
    ensure!(
        status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
        "unexpected status line {status:?}"
    );
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if let Some(expect) = expect {
        ensure!(body.contains(expect), "the body {body:?} lacks {expect:?}");
    }
    Ok(format!(
        "GET {url} through the tunnel ({} over AF_VSOCK): {status}, body {body:?}; a direct TCP \
         connection fails ({direct})",
        egress.parent()
    ))
}

/// A destination the parent's policy must refuse.
async fn refused(egress: &EgressClient, target: &str) -> Result<String> {
    let (host, port) = target
        .rsplit_once(':')
        .with_context(|| format!("{target}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{target}: bad port"))?;
    match egress.connect(host, port).await {
        Ok(_) => bail!("{target} was allowed, but the policy should deny it"),
        Err(e) => match e.refusal() {
            Some(refusal) => Ok(format!(
                "{target} refused by the parent's policy: {}",
                refusal.message
            )),
            None => Err(anyhow!(e).context(format!("{target}: failed, but not refused"))),
        },
    }
}

/// The KMS step. Returns the attested client and the image key for the storage steps.
async fn data_key(
    info: &EmulatorInfo,
    egress: EgressClient,
    nsm: Arc<dyn Nsm>,
    parent: impl Fn(u32) -> Addr,
) -> Result<(KmsClient, String, String)> {
    let kms = info
        .kms
        .as_ref()
        .context("the emulator runs no local KMS (emulate --kms)")?;
    let pcr0 = info
        .measurements
        .as_ref()
        .map(|m| m.pcr0.clone())
        .context("no measurements from the emulator")?;
    let creds_addr = parent(kms.credentials_port);
    let credentials = RefreshingCredentials::new(ParentCredentials::new(move || {
        let addr = creds_addr.clone();
        async move {
            let mut stream = addr.connect().await.map_err(std::io::Error::other)?;
            stream.limit_writes(write_cap());
            Ok(stream)
        }
    }));
    let client = KmsClient::builder(&kms.region)
        .endpoint(&kms.endpoint)
        .tls_roots(TlsRoots::from_pem(kms.ca_pem.as_bytes())?)
        .connector(move |host: String, port: u16| {
            let egress = egress.clone();
            async move {
                egress
                    .connect(&host, port)
                    .await
                    .map_err(std::io::Error::from)
            }
        })
        .credentials(credentials)
        .recipient(Recipient::new(nsm))
        .connect_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(60))
        .retry(RetryConfig::new(2))
        .build()?;

    let key = client
        .generate_data_key(GenerateDataKeyRequest::new(&kms.key_id).context("app", "enclave-app"))
        .await
        .context("GenerateDataKey with Recipient")?;
    let plaintext = key.plaintext;
    ensure!(plaintext.len() == 32, "a {}-byte data key", plaintext.len());
    let envelope = key.ciphertext_for_recipient.as_ref().map_or(0, Vec::len);
    ensure!(envelope > 0, "no CiphertextForRecipient");

    // Without Recipient the key policy's PCR0 condition cannot match.
    let plain = client.with_recipient(None);
    let denied = plain
        .generate_data_key(GenerateDataKeyRequest::new(&kms.key_id))
        .await;
    let code = match denied {
        Ok(_) => bail!("GenerateDataKey without Recipient was allowed"),
        Err(e) if e.service_code() == Some("AccessDeniedException") => "AccessDeniedException",
        Err(e) => return Err(anyhow!(e).context("GenerateDataKey without Recipient")),
    };

    // A key pinned to another image (this PCR0 with its last bit flipped) refuses this one.
    let mut other = hex::decode(&pcr0)?;
    if let Some(last) = other.last_mut() {
        *last ^= 1;
    }
    let other_key = plain
        .create_key(
            CreateKeyRequest::new()
                .description("enclave-app: another image's key")
                .policy(image_key_policy(&hex::encode(&other)).to_string()),
        )
        .await
        .context("CreateKey for the control key")?
        .key_metadata
        .key_id;
    let refused = client
        .generate_data_key(GenerateDataKeyRequest::new(&other_key))
        .await;
    match refused {
        Ok(_) => bail!("a key pinned to another PCR0 gave this enclave a data key"),
        Err(e) if e.service_code() == Some("AccessDeniedException") => {}
        Err(e) => return Err(anyhow!(e).context("GenerateDataKey on the control key")),
    }
    Ok((
        client,
        kms.key_id.clone(),
        format!(
            "GenerateDataKey with Recipient over TLS through the tunnel ({}): 32-byte data key \
             from a {envelope}-byte CiphertextForRecipient, key policy pins PCR0 {pcr0}; without \
             Recipient: {code}; a key pinned to another PCR0: AccessDeniedException",
            kms.endpoint
        ),
    ))
}

async fn nbd_client(addr: &Addr, export: &str) -> Result<NbdClient> {
    let addr = addr.clone();
    NbdClient::connect(
        move || {
            let addr = addr.clone();
            async move {
                let mut stream = addr.connect().await.map_err(std::io::Error::other)?;
                stream.limit_writes(write_cap());
                Ok(stream)
            }
        },
        ClientConfig::new(export),
    )
    .await
    .with_context(|| format!("NBD export {export}"))
}

/// Opens the sealed device of the volume `export`, creating it only when the freshness anchor
/// proves the volume new (`SealedDevice::open_volume`): once bound, a parent serving zeros or
/// damaged headers gets an error, not a fresh device. Returns the device and whether it was
/// created now.
async fn open_or_create(
    addr: &Addr,
    export: &str,
    client: &KmsClient,
    key_id: &str,
) -> Result<(SealedDevice<NbdClient>, bool)> {
    let wrap = KmsKeyWrap::new(client.clone(), key_id).context("export", export);
    SealedDevice::open_volume(
        nbd_client(addr, export).await?,
        &wrap,
        SealedConfig::default(),
        export,
    )
    .await
    .map_err(|e| anyhow!(e).context("opening the sealed device"))
}

/// The record step: read back the previous boot's record, write this boot's.
async fn sealed_record(
    addr: &Addr,
    export: &str,
    client: &KmsClient,
    key_id: &str,
) -> Result<String> {
    let (dev, created) = open_or_create(addr, export, client, key_id).await?;
    let mut block = vec![0u8; 4096];
    dev.read_at(0, &mut block)
        .await
        .context("reading the record")?;
    let previous = parse_record(&block)?;
    let boot = previous.as_ref().map_or(1, |(boot, _)| boot + 1);
    let record = format!(
        "{RECORD_PREFIX}{boot} token={}",
        hex::encode(random::<8>()?)
    );
    let mut block = vec![0u8; 4096];
    block[..record.len()].copy_from_slice(record.as_bytes());
    dev.write_at(0, &block)
        .await
        .context("writing the record")?;
    dev.flush().await.context("flushing")?;
    let generation = dev.generation();
    dev.underlying().close().await?;
    let opened = if created {
        format!(
            "created sealed device {} on export {export} (data key from KMS GenerateDataKey with Recipient)",
            dev.device_id()
        )
    } else {
        format!(
            "opened sealed device {} on export {export} (data key unwrapped by KMS Decrypt with Recipient)",
            dev.device_id()
        )
    };
    let back = match previous {
        Some((_, text)) => format!("read back {text:?}"),
        None => "no record yet".to_owned(),
    };
    Ok(format!(
        "{opened}; {back}; wrote {record:?} (generation {generation})"
    ))
}

/// The record at the start of the device: `None` when the block is empty.
fn parse_record(block: &[u8]) -> Result<Option<(u64, String)>> {
    let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
    if end == 0 {
        return Ok(None);
    }
    let text = std::str::from_utf8(&block[..end]).context("the record is not UTF-8")?;
    let boot = text
        .strip_prefix(RECORD_PREFIX)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("unexpected record {text:?}"))?;
    Ok(Some((boot, text.to_owned())))
}

/// Runs a blocking system call (mount, umount, fsync of the NBD device) off the async
/// runtime: the kernel may wait for the in-process NBD server, which needs the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| anyhow!("blocking task: {e}"))?
}

/// Writes the block device's dirty pages back and flushes it (`fsync`), so that nothing is
/// left in the page cache when the device is disconnected.
async fn sync_device(node: &'static str) -> Result<()> {
    blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(node)?
            .sync_all()
            .with_context(|| format!("fsync {node}"))
    })
    .await
}

/// The mount step: a sealed device as /dev/nbd0 through the kernel's NBD driver, with ext2.
async fn mounted_fs(
    addr: &Addr,
    export: &str,
    client: &KmsClient,
    key_id: &str,
    mkfs: &str,
) -> Result<String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    const NODE: &str = "/dev/nbd0";
    let (dev, created) = open_or_create(addr, export, client, key_id).await?;
    let dev = Arc::new(dev);
    let attached = kernel::attach(NODE, dev.clone(), kernel::AttachOptions::default())
        .await
        .with_context(|| format!("attaching {NODE}"))?;
    let work = async {
        // `attach` returns once NBD_DO_IT is issued; the kernel publishes the device's size
        // only when that ioctl runs: wait for it before using the device.
        let ready = async {
            while std::fs::read_to_string("/sys/block/nbd0/size")
                .map(|s| s.trim() == "0")
                .unwrap_or(true)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .map_err(|_| anyhow!("{NODE} did not get its size within 10 s"))?;
        let mut msg = String::new();
        if created {
            let mut words = mkfs.split_whitespace();
            let program = words.next().context("empty --mkfs")?;
            let output = tokio::process::Command::new(program)
                .args(words)
                .arg(NODE)
                .output()
                .await
                .with_context(|| format!("running {mkfs}"))?;
            ensure!(
                output.status.success(),
                "{mkfs} {NODE}: {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            sync_device(NODE).await?;
            msg.push_str(&format!("formatted {NODE} with `{mkfs}`; "));
        }
        blocking(|| {
            std::fs::create_dir_all(MOUNT_POINT)?;
            mount(Some(NODE), MOUNT_POINT, Some("ext2"), MsFlags::empty(), None::<&str>)
                .with_context(|| format!("mounting {NODE} (ext2) on {MOUNT_POINT}"))
        })
        .await?;
        let inner = blocking(|| {
            let log = std::path::Path::new(MOUNT_POINT).join(BOOT_LOG);
            let before = match std::fs::read_to_string(&log) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(anyhow!(e).context("reading the boot log")),
            };
            let boot = before.lines().count() + 1;
            let line = format!("mounted boot {boot} token={}", hex::encode(random::<8>()?));
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            use std::io::Write as _;
            writeln!(file, "{line}")?;
            file.sync_all()?;
            Ok((before, line))
        })
        .await;
        let unmounted = blocking(|| {
            umount2(MOUNT_POINT, MntFlags::empty())
                .with_context(|| format!("unmounting {MOUNT_POINT}"))
        })
        .await;
        let (before, line) = inner?;
        unmounted?;
        let back = if before.is_empty() {
            "no earlier lines".to_owned()
        } else {
            format!("read back {:?}", before.trim_end())
        };
        msg.push_str(&format!(
            "mounted ext2 on {MOUNT_POINT} from {NODE} (sealed export {export}); {back}; appended {line:?}; unmounted"
        ));
        Ok(msg)
    }
    .await;
    // Whatever happened, nothing may stay in the page cache when the device disconnects.
    let synced = sync_device(NODE).await;
    let detached = attached.detach().await.context("detaching /dev/nbd0");
    let msg = work?;
    synced?;
    detached?;
    dev.flush().await.context("flushing the sealed device")?;
    dev.underlying().close().await?;
    Ok(format!("{msg}, detached, generation {}", dev.generation()))
}

/// Accepts one connection on `addr` (vsock, from the parent's ingress) and echoes lines.
async fn ingress_once(addr: Addr) -> Result<String> {
    let listener = addr
        .bind()
        .await
        .with_context(|| format!("listening on {addr}"))?;
    say(format_args!("[ingress] listening on {addr}"));
    let (mut stream, peer) = listener.accept().await?;
    stream.limit_writes(write_cap());
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read.take(1 << 16)).lines();
    let mut count = 0;
    // The parent closes after its last line (vhost-device-vsock does not carry half-closes, so
    // the echo is written before the peer's end of file, never after).
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
    {
        write
            .write_all(format!("echo: {line}\n").as_bytes())
            .await?;
        write.flush().await?;
        count += 1;
    }
    ensure!(count > 0, "the connection from {peer:?} sent no line");
    Ok(format!("answered {count} line(s) from {peer:?} on {addr}"))
}
