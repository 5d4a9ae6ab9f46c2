//! The unmodified Python application (`examples/python-app`) end to end in the emulator,
//! launched the way production launches it: `nitro-parentd run --emulate` with one
//! configuration file, the image built by `eif build --manifest` with `nitro-supervisor` as the
//! image's command and `nitro-init` as PID 1.
//!
//! 1. The image: `scripts/python-rootfs.sh` (Debian 12 from mmdebstrap, cached) plus one layer
//!    with `main.py` and a CA bundle holding the test's CA (a private CA, as an image that talks
//!    to internal services carries). The manifest is the example's, with the test's ports, a KMS
//!    endpoint (`kms.endpoint`, a name the parent pins to the local KMS) and its CA file.
//! 2. The parent: the daemon serves egress (its own policy, names pinned with `hosts`),
//!    credentials, the two sealed secrets, the volume's NBD export, the log sink and the ingress
//!    listener. The test runs the local KMS over TLS with a key whose policy admits only the
//!    image's PCR0 (alias `alias/hello-python`), and an HTTPS server for
//!    `service.parent.test`.
//! 3. Boot 1: every step of the program passes through the supervisor's services with no proxy
//!    variables (transparent egress and DNS, the KMS proxy, secrets, the attestation API, the
//!    volume), the test reaches the program's HTTP server with curl through the daemon's ingress
//!    listener, the program's lines arrive prefixed on the daemon's stdout, and the daemon exits
//!    with the program's status. Boot 2 of the same EIF reads the first boot's line back from
//!    the volume. The parent's files hold no plaintext.
//!
//! Skipped (with a message) when the emulator or mmdebstrap/umoci are not installed, except
//! under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::CreateKeyRequest;
use nitro_kms::sealed::{SealOptions, seal};
use nitro_kms::{Credentials, KmsClient, RetryConfig, TlsRoots};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

const NAME: &str = "hello-python";
const REGION: &str = "eu-west-1";
/// The AWS command line without `nomodules` (the emulator's kernel loads its modules).
const CMDLINE: &str = "reboot=k panic=30 pci=off console=ttyS0 random.trust_cpu=on";
const SERVICE_HOST: &str = "service.parent.test";
const KMS_HOST: &str = "kms.local.test";
const DB_PASSWORD: &str = "correct horse battery staple";
const API_TOKEN: &str = "tok-3f9a1c5e7b";
/// Where the image's CA bundle is (Debian's; Python's `certifi` reads it too).
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// How long one boot may take under TCG, from the daemon's start to its exit.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn creds() -> Credentials {
    Credentials::new("AKIDPARENT", "parent-secret-key", None, None)
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached Python OCI layout (`scripts/python-rootfs.sh`).
fn python_oci() -> anyhow::Result<Option<PathBuf>> {
    if nitro_test_support::tool("mmdebstrap").is_none()
        || nitro_test_support::tool("umoci").is_none()
    {
        return Ok(None);
    }
    let out = run(&mut std::process::Command::new(
        repo().join("scripts/python-rootfs.sh"),
    ))?;
    let path = out
        .lines()
        .last()
        .context("python-rootfs.sh printed nothing")?;
    Ok(Some(PathBuf::from(path.trim())))
}

/// A copy of the Python layout with one more layer: the program and a CA bundle with the
/// test's CA. Returns the image reference (`DIR:app`).
fn app_image(base: &Path, dir: &Path, ca_pem: &str) -> anyhow::Result<String> {
    let oci = dir.join("oci");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(&oci))?;
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("app"))?;
    std::fs::create_dir_all(layer.join(CA_BUNDLE).parent().unwrap())?;
    std::fs::copy(
        repo().join("examples/python-app/main.py"),
        layer.join("app/main.py"),
    )?;
    std::fs::write(layer.join(CA_BUNDLE), ca_pem)?;
    let tar = dir.join("layer.tar");
    run(std::process::Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&layer)
        .arg("-cf")
        .arg(&tar)
        .args(["app", "etc"]))?;
    let image = format!("{}:python", oci.display());
    run(std::process::Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image, "--tag", "app"])
        .arg(&tar))?;
    Ok(format!("{}:app", oci.display()))
}

fn table(v: &mut toml::Value) -> anyhow::Result<&mut toml::Table> {
    v.as_table_mut().context("not a table")
}

/// What `eif build --manifest` needs.
struct Binaries<'a> {
    eif_cli: &'a Path,
    init: &'a Path,
    supervisor: &'a Path,
    tools: &'a nitro_emulator::Tools,
}

impl Binaries<'_> {
    /// `eif build --manifest` for the emulator's kernel and modules; returns PCR0 (hex).
    fn build_eif(&self, manifest: &Path, out: &Path) -> anyhow::Result<String> {
        let mut build = std::process::Command::new(self.eif_cli);
        build
            .arg("build")
            .arg("--kernel")
            .arg(&self.tools.kernel)
            .args(["--cmdline", CMDLINE, "--init"])
            .arg(self.init);
        for module in self.tools.module_files() {
            build.arg("--module").arg(module);
        }
        build
            .arg("--manifest")
            .arg(manifest)
            .arg("--supervisor")
            .arg(self.supervisor)
            .arg("-o")
            .arg(out);
        let built: serde_json::Value = serde_json::from_str(&run(&mut build)?)?;
        Ok(built["Measurements"]["PCR0"]
            .as_str()
            .context("no PCR0 in the build output")?
            .to_owned())
    }
}

/// The example's manifest with the test's image, ports and KMS endpoint.
fn manifest(image: &str, https_port: u16, kms_port: u16) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repo().join("examples/python-app/enclave.toml"))?;
    let mut m: toml::Table = toml::from_str(&text)?;
    table(m.get_mut("image").context("[image]")?)?.insert("oci".into(), image.into());
    let app = table(m.get_mut("app").context("[app]")?)?;
    table(app.get_mut("env").context("app.env")?)?.insert(
        "TARGET_URL".into(),
        format!("https://{SERVICE_HOST}:{https_port}/").into(),
    );
    let egress = table(m.get_mut("egress").context("[egress]")?)?;
    let allow = egress
        .get_mut("allow")
        .and_then(|a| a.as_array_mut())
        .context("egress.allow")?;
    table(&mut allow[0])?.insert(
        "ports".into(),
        toml::Value::Array(vec![i64::from(https_port).into()]),
    );
    // The enclave checks the address the parent connected to as well: this service is on the
    // parent's loopback, a special-purpose address that host rules do not admit.
    let mut loopback = toml::Table::new();
    loopback.insert("cidr".into(), "127.0.0.1/32".into());
    loopback.insert(
        "ports".into(),
        toml::Value::Array(vec![i64::from(https_port).into()]),
    );
    allow.push(loopback.into());
    let kms = table(m.get_mut("kms").context("[kms]")?)?;
    kms.insert(
        "endpoint".into(),
        format!("https://{KMS_HOST}:{kms_port}").into(),
    );
    kms.insert("ca_file".into(), format!("/{CA_BUNDLE}").into());
    Ok(toml::to_string(&m)?)
}

/// An HTTPS server for `service.parent.test`: answers every request with `body`.
async fn https_server(
    tls: Arc<rustls::ServerConfig>,
    body: String,
) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, counter) = (acceptor.clone(), body.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                if nitro_test_support::answer_http(&mut stream, &body).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((port, hits))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What one `nitro-parentd run --emulate` printed and returned.
struct Boot {
    status: Option<i32>,
    /// The daemon's stdout: the enclave's log lines, prefixed.
    stdout: Vec<String>,
    /// The daemon's stderr: its own log and the console.
    stderr: Vec<String>,
    /// What curl got from the program's HTTP server through the ingress listener.
    curl: Option<String>,
    /// From the daemon's start to the program's first log line.
    first_line: Option<Duration>,
    elapsed: Duration,
}

impl Boot {
    /// The program's line for `step` (`[hello-python] step: ...`), without the prefix.
    fn step(&self, step: &str) -> anyhow::Result<&str> {
        let prefix = format!("[{NAME}] {step}: ");
        self.stdout
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {step:?} line\n{}", self.dump()))
    }

    /// The guest uptime in the console line containing `needle`: nitro-init's
    /// `... at 3.442 s`, the supervisor's `nitro-supervisor: [    3.912] ...`.
    fn uptime_at(&self, needle: &str) -> Option<f64> {
        let line = self.stderr.iter().find(|l| l.contains(needle))?;
        let text = match line.split_once("nitro-supervisor: [") {
            Some((_, rest)) => rest.split_once(']')?.0,
            None => line.rsplit_once(" at ")?.1.strip_suffix(" s")?,
        };
        text.trim().parse().ok()
    }

    /// Prints where the boot's time went (guest uptimes from the console).
    fn timeline(&self, label: &str) {
        let kernel = self.uptime_at("nitro-init: started /usr/bin/nitro-supervisor");
        let app = self.uptime_at("] started python3");
        let fmt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.3} s"));
        eprintln!(
            "{label}: guest uptime at the supervisor's start {}, at the program's start {} \
             (the supervisor's own set-up {}); first program line {:.1?} after the daemon \
             started; the daemon ran {:.1?}",
            fmt(kernel),
            fmt(app),
            fmt(kernel.zip(app).map(|(k, a)| a - k)),
            self.first_line.unwrap_or_default(),
            self.elapsed
        );
    }

    fn dump(&self) -> String {
        format!(
            "--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}",
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

/// Runs the daemon once; curls the ingress listener when the program serves.
async fn boot(config: &Path, ingress_port: u16, label: &str) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nitro-parentd"))
        .arg("run")
        .arg("--emulate")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting nitro-parentd")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let label2 = label.to_owned();
    let stderr_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{label2} daemon] {line}");
            all.push(line);
        }
        all
    });
    let mut out = Vec::new();
    let mut curl = None;
    let mut first_line = None;
    let mut lines = BufReader::new(stdout).lines();
    let reading = async {
        while let Some(line) = lines.next_line().await? {
            eprintln!("[{label} stdout] {line}");
            if first_line.is_none() && line.starts_with(&format!("[{NAME}] ")) {
                first_line = Some(started.elapsed());
            }
            if line.starts_with(&format!("[{NAME}] serving ")) && curl.is_none() {
                let got = tokio::process::Command::new("curl")
                    .args(["-sS", "--max-time", "60"])
                    .arg(format!("http://127.0.0.1:{ingress_port}/"))
                    .output()
                    .await
                    .context("running curl")?;
                curl = Some(format!(
                    "{}{}",
                    String::from_utf8_lossy(&got.stdout),
                    String::from_utf8_lossy(&got.stderr)
                ));
            }
            out.push(line);
        }
        anyhow::Ok(child.wait().await?)
    };
    let status = match tokio::time::timeout(BOOT_TIMEOUT, reading).await {
        Ok(status) => status?.code(),
        Err(_) => {
            let _ = child.start_kill();
            None
        }
    };
    let _ = child.wait().await;
    let stderr = stderr_task.await?;
    Ok(Boot {
        status,
        stdout: out,
        stderr,
        curl,
        first_line,
        elapsed: started.elapsed(),
    })
}

/// Checks common to both boots; returns the journal line.
fn check_boot(b: &Boot, label: &str) -> anyhow::Result<String> {
    ensure!(
        b.status == Some(0),
        "{label}: the daemon exited with {:?}\n{}",
        b.status,
        b.dump()
    );
    let egress = b.step("egress")?;
    ensure!(
        egress.starts_with("200 hello from the parent"),
        "{label}: egress {egress:?}"
    );
    let denied = b.step("denied")?;
    ensure!(denied.starts_with("refused"), "{label}: denied {denied:?}");
    let kms = b.step("kms")?;
    ensure!(
        kms == "data key 32 bytes round-tripped",
        "{label}: kms {kms:?}"
    );
    let secret = b.step("secret")?;
    ensure!(
        secret
            == format!(
                "{} chars in env, {} in file",
                DB_PASSWORD.len(),
                API_TOKEN.len()
            ),
        "{label}: secret {secret:?}"
    );
    let att = b.step("attestation")?;
    ensure!(att.starts_with("document "), "{label}: attestation {att:?}");
    let curl = b.curl.as_deref().unwrap_or("");
    ensure!(
        curl == "hello from python\n",
        "{label}: curl through the ingress listener got {curl:?}\n{}",
        b.dump()
    );
    ensure!(
        b.stdout.iter().any(|l| l == &format!("[{NAME}] done")),
        "{label}: no `done` line\n{}",
        b.dump()
    );
    Ok(b.step("journal")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_in_the_emulator_through_the_daemon() -> anyhow::Result<()> {
    let Some(tools) = nitro_emulator::tools_or_skip("emulated_python") else {
        return Ok(());
    };
    let Some(base_oci) = tokio::task::spawn_blocking(python_oci).await?? else {
        return Ok(());
    };
    let t = Instant::now();
    let init = tokio::task::spawn_blocking(nitro_emulator::build_init).await??;
    let supervisor = tokio::task::spawn_blocking(nitro_emulator::build_supervisor).await??;
    let eif_cli = tokio::task::spawn_blocking(|| nitro_emulator::build_example("eif")).await??;
    eprintln!("binaries ready in {:.1?}", t.elapsed());

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let tls = nitro_test_support::try_tls_material_for(
        "python e2e CA",
        &[SERVICE_HOST, KMS_HOST, "127.0.0.1"],
    )?;

    // The parent's network: the local KMS and the HTTPS service.
    let kms = Arc::new(LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::dangerous_unsigned_emulator())
            .region(REGION)
            .credentials(creds()),
    )?);
    let server_tls = server::tls_config(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes())?;
    let kms_server = server::spawn(kms, "127.0.0.1:0", Some(server_tls.clone())).await?;
    let kms_port = kms_server.local_addr().port();
    let token = format!("token {}", std::process::id());
    let (https_port, hits) =
        https_server(server_tls, format!("hello from the parent, {token}")).await?;

    // The image and the EIF.
    let image = {
        let (dir, ca) = (dir.to_owned(), tls.ca_pem.clone());
        tokio::task::spawn_blocking(move || app_image(&base_oci, &dir, &ca)).await??
    };
    let manifest_path = dir.join("enclave.toml");
    std::fs::write(&manifest_path, manifest(&image, https_port, kms_port)?)?;
    let eif = dir.join("hello-python.eif");
    let t = Instant::now();
    let bins = Binaries {
        eif_cli: &eif_cli,
        init: &init,
        supervisor: &supervisor,
        tools: &tools,
    };
    let pcr0 = bins.build_eif(&manifest_path, &eif)?;
    eprintln!(
        "EIF built in {:.1?}: {} MiB, PCR0 {pcr0}",
        t.elapsed(),
        std::fs::metadata(&eif)?.len() >> 20
    );

    // The operator: a key admitting only this image, its alias, and the sealed secrets.
    let admin = KmsClient::builder(REGION)
        .endpoint(format!("https://127.0.0.1:{kms_port}"))
        .tls_roots(TlsRoots::from_pem(tls.ca_pem.as_bytes())?)
        .credentials(creds())
        .retry(RetryConfig::new(1))
        .build()?;
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Encrypt", "kms:GenerateDataKey*"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}}
        ]
    });
    let key_id = admin
        .create_key(CreateKeyRequest::new().policy(policy.to_string()))
        .await?
        .key_metadata
        .key_id;
    admin
        .call_json(
            "CreateAlias",
            &serde_json::json!({"AliasName": "alias/hello-python", "TargetKeyId": key_id}),
        )
        .await?;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    for (name, value) in [("db-password", DB_PASSWORD), ("api-token", API_TOKEN)] {
        let mut opts = SealOptions::new();
        for (k, v) in nitro_supervisor::secrets::secret_context(NAME, name) {
            opts = opts.context(k, v);
        }
        std::fs::write(
            secrets.join(name),
            seal(&admin, &key_id, value.as_bytes(), &opts).await?,
        )?;
    }

    // The daemon's configuration.
    let ingress_port = free_port()?;
    let volume = dir.join("data.img");
    let config = dir.join("parentd.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1

[daemon]
shutdown_grace_secs = 5

[[enclave]]
name = "{NAME}"
manifest = "enclave.toml"
eif = "hello-python.eif"
ingress = {{ "8080" = "127.0.0.1:{ingress_port}" }}
hosts = {{ "{SERVICE_HOST}" = ["127.0.0.1"], "{KMS_HOST}" = ["127.0.0.1"] }}
credentials = {{ source = "static", access_key_id = "AKIDPARENT", secret_access_key = "parent-secret-key" }}
secrets = {{ "db-password" = {{ dir = "secrets" }}, "api-token" = {{ dir = "secrets" }} }}
volumes = {{ data = {{ file = "data.img" }} }}

[enclave.egress_policy]
allow = [
    {{ host = "{SERVICE_HOST}", ports = [{https_port}] }},
    {{ host = "{KMS_HOST}", ports = [{kms_port}] }},
    {{ cidr = "127.0.0.1/32", ports = [{https_port}, {kms_port}] }},
]
"#
        ),
    )?;
    let check = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_nitro-parentd"))
            .arg("check")
            .arg(&config),
    )?;
    eprintln!("nitro-parentd check:\n{check}");

    // Boot 1.
    let first = boot(&config, ingress_port, "boot 1").await?;
    first.timeline("boot 1");
    let journal = check_boot(&first, "boot 1")?;
    ensure!(journal == "boot unnamed", "boot 1: journal {journal:?}");
    ensure!(
        hits.load(Ordering::SeqCst) == 1,
        "the HTTPS server was not reached once"
    );

    // The parent's files hold no plaintext.
    for (file, secret) in [
        (volume.clone(), "boot unnamed"),
        (secrets.join("db-password"), DB_PASSWORD),
        (secrets.join("api-token"), API_TOKEN),
    ] {
        let bytes = std::fs::read(&file)?;
        ensure!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds plaintext",
            file.display()
        );
    }

    // Boot 2 of the same EIF: the volume keeps the first boot's line.
    let second = boot(&config, ingress_port, "boot 2").await?;
    second.timeline("boot 2");
    let journal = check_boot(&second, "boot 2")?;
    if journal != "boot unnamed | boot unnamed" {
        bail!("boot 2 did not read the first boot's line back: {journal:?}");
    }
    ensure!(
        hits.load(Ordering::SeqCst) == 2,
        "the HTTPS server was not reached twice"
    );

    // Another image (one more variable in its manifest: another PCR2, so another PCR0) under
    // the same configuration: the key policy refuses it, so its secrets stay sealed and the
    // program never starts.
    let other_manifest = manifest(&image, https_port, kms_port)?
        .replace("[app.env]", "[app.env]\nVARIANT = \"another image\"");
    ensure!(
        other_manifest.contains("VARIANT"),
        "no [app.env] table to extend"
    );
    std::fs::write(dir.join("other.toml"), &other_manifest)?;
    let other_eif = dir.join("other.eif");
    let other_pcr0 = bins.build_eif(&dir.join("other.toml"), &other_eif)?;
    ensure!(
        !other_pcr0.is_empty() && other_pcr0 != pcr0,
        "the PCR0s do not differ"
    );
    let other_config = dir.join("other-parentd.toml");
    std::fs::write(
        &other_config,
        std::fs::read_to_string(&config)?
            .replace("manifest = \"enclave.toml\"", "manifest = \"other.toml\"")
            .replace("eif = \"hello-python.eif\"", "eif = \"other.eif\""),
    )?;
    let third = boot(&other_config, ingress_port, "other image").await?;
    ensure!(
        third.status == Some(125),
        "the other image: the daemon exited with {:?}\n{}",
        third.status,
        third.dump()
    );
    ensure!(
        !third
            .stdout
            .iter()
            .any(|l| l.starts_with(&format!("[{NAME}] "))),
        "the other image's program ran\n{}",
        third.dump()
    );
    ensure!(
        third
            .stderr
            .iter()
            .any(|l| l.contains("secret") && l.contains("AccessDenied")),
        "the other image was not refused by the key policy\n{}",
        third.dump()
    );
    Ok(())
}
