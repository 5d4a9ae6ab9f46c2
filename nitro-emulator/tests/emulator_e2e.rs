//! The emulated enclave end to end: all five crates together on real parts.
//!
//! 1. nitro-eif builds an EIF from the Debian 6.12 kernel, the `nitro-init` binary (static,
//!    musl) with the vsock, nbd and nsm modules, and nitro-examples' `enclave-app` (this
//!    machine's build, shipped with the shared libraries it loads) plus a static busybox (for
//!    `mke2fs`).
//! 2. nitro-emulator's `emulate` binary boots it twice under QEMU's `nitro-enclave` machine with
//!    vhost-device-vsock, a parent egress policy, the local KMS (state kept between the boots),
//!    two NBD exports and an ingress forward; a plain HTTP server of this test stands for a
//!    service on the parent's network.
//! 3. Checked for each boot: the application's exit status 0 and each of its steps; PCR0, PCR1
//!    and PCR2 in the attestation document QEMU's NSM gave the application (printed as hex on the
//!    console, parsed here with nitro-attest) equal those nitro-eif computed when building; the
//!    HTTP request reached the server through the tunnel, denied destinations were refused, the
//!    KMS data key came with `Recipient` and a control key pinned to another PCR0 refused it, an
//!    echo over the ingress forward; the second boot reads back the sealed record and the
//!    mounted file system's line the first boot wrote; the parent's files hold no plaintext.
//!
//! Skipped (with a message) when the emulator is not installed, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use nitro_attest::{Policy, Timestamp, UnverifiedDocument, dangerous};
use nitro_eif::{BootstrapRamdisk, CustomerRamdisk, EifBuilder, Measurements};
use nitro_emulator::{self as emulator, Tools};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The AWS command line without `nomodules` and the i8042 words (as in `emulator_boot.rs`).
const CMDLINE: &str = "reboot=k panic=30 pci=off console=ttyS0 random.trust_cpu=on";
/// The enclave port of the ingress check.
const INGRESS_PORT: u32 = 5005;

/// A plain HTTP/1.1 server on the parent's network: answers every request with `body`.
async fn http_server(body: String) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                if nitro_test_support::answer_http(&mut stream, &body).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((port, hits))
}

/// Builds the EIF; returns it with nitro-eif's measurements.
fn build_eif(
    tools: &Tools,
    init: &Path,
    app: &Path,
    dir: &Path,
    cmd: Vec<String>,
) -> anyhow::Result<(PathBuf, Measurements)> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy(&tools.busybox, rootfs.join("bin/busybox"))?;
    let libs = emulator::image::install_dynamic_binary(app, &rootfs, "/app/enclave-app")?;
    eprintln!(
        "rootfs: enclave-app ({} KiB stripped) with {}",
        std::fs::metadata(rootfs.join("app/enclave-app"))?.len() >> 10,
        libs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut bootstrap = BootstrapRamdisk::new(init);
    for module in tools.module_files() {
        bootstrap = bootstrap.module(module);
    }
    let app = CustomerRamdisk::from_dir(&rootfs)?
        .cmd(cmd)
        .env("RUST_LOG", "warn");
    let eif = dir.join("enclave-app.eif");
    let out = EifBuilder::new(&tools.kernel, CMDLINE)
        .ramdisk(bootstrap)
        .ramdisk(app)
        .name("emulator-e2e")
        .version("1")
        .build_time(UNIX_EPOCH)
        .build_file(&eif)?;
    let m = out.measurements;
    eprintln!(
        "nitro-eif built {} ({} KiB):\n  PCR0 {}\n  PCR1 {}\n  PCR2 {}",
        eif.display(),
        out.size >> 10,
        m.pcr0,
        m.pcr1,
        m.pcr2
    );
    Ok((eif, m))
}

/// What one run of `emulate` printed and returned.
struct Boot {
    status: Option<i32>,
    console: Vec<String>,
    stderr: Vec<String>,
    echo: Option<String>,
    elapsed: Duration,
}

impl Boot {
    /// The `[step] ok: …` lines of a step.
    fn ok(&self, step: &str) -> Vec<&str> {
        let prefix = format!("enclave-app: [{step}] ok: ");
        self.console
            .iter()
            .filter_map(|l| l.trim_end().split_once(prefix.as_str()).map(|(_, m)| m))
            .collect()
    }

    fn one_ok(&self, step: &str) -> anyhow::Result<&str> {
        match self.ok(step)[..] {
            [line] => Ok(line),
            ref other => bail!("step {step}: {} ok lines\n{}", other.len(), self.dump()),
        }
    }

    fn value(&self, prefix: &str) -> Option<&str> {
        self.console
            .iter()
            .find_map(|l| l.trim_end().split_once(prefix).map(|(_, v)| v.trim()))
    }

    fn dump(&self) -> String {
        format!(
            "--- console ---\n{}\n--- emulate ---\n{}",
            self.console.join("\n"),
            self.stderr.join("\n")
        )
    }
}

/// Runs `emulate` once; answers the ingress check when the application listens.
async fn run_emulate(emulate: &Path, args: &[String], label: &str) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(emulate)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", emulate.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (forward_tx, forward_rx) = tokio::sync::oneshot::channel::<String>();
    let label2 = label.to_owned();
    let stderr_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        let mut forward_tx = Some(forward_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{label2} emulate] {line}");
            if let Some(rest) = line.strip_prefix("emulate: forwarding tcp:")
                && let Some((addr, _)) = rest.split_once(' ')
                && let Some(tx) = forward_tx.take()
            {
                let _ = tx.send(addr.to_owned());
            }
            all.push(line);
        }
        all
    });
    let mut forward_rx = Some(forward_rx);
    let mut forward = None;
    let mut console = Vec::new();
    let mut echo_task = None;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        eprintln!("[{label} console] {line}");
        if line.contains("enclave-app: [ingress] listening on") {
            if forward.is_none()
                && let Some(rx) = forward_rx.take()
            {
                forward = rx.await.ok();
            }
            let addr = forward.clone().context("emulate printed no forward")?;
            let ping = format!("ping from the parent, {label}");
            echo_task = Some(tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await?;
                s.write_all(format!("{ping}\n").as_bytes()).await?;
                let mut reader = BufReader::new(s);
                let mut reply = String::new();
                tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut reply))
                    .await??;
                Ok::<_, anyhow::Error>(reply.trim_end().to_owned())
            }));
        }
        console.push(line);
    }
    let status = child.wait().await?.code();
    let stderr = stderr_task.await?;
    let echo = match echo_task {
        Some(t) => Some(t.await??),
        None => None,
    };
    Ok(Boot {
        status,
        console,
        stderr,
        echo,
        elapsed: started.elapsed(),
    })
}

/// Checks the attestation document the application printed against nitro-eif's PCRs.
fn check_document(boot: &Boot, m: &Measurements) -> anyhow::Result<()> {
    let hex_doc = boot
        .value("enclave-app: nsm document ")
        .with_context(|| format!("no document on the console\n{}", boot.dump()))?;
    let doc = hex::decode(hex_doc).context("document hex")?;
    let parsed = UnverifiedDocument::parse(&doc)?;
    ensure!(
        dangerous::is_qemu_unsigned(&parsed),
        "not QEMU's unsigned document shape"
    );
    // The PCRs of the NSM's document = nitro-eif's (no signature exists to check).
    dangerous::check_policy_without_signature(
        &doc,
        Timestamp::now(),
        &Policy::new()
            .expect_pcr(0, m.pcr0.0)
            .expect_pcr(1, m.pcr1.0)
            .expect_pcr(2, m.pcr2.0),
    )
    .context("the NSM's PCRs differ from nitro-eif's")?;
    for (i, pcr) in [(0, &m.pcr0), (1, &m.pcr1), (2, &m.pcr2)] {
        ensure!(
            boot.value(&format!("enclave-app: nsm PCR{i} ")) == Some(pcr.to_hex().as_str()),
            "printed PCR{i} differs"
        );
    }
    Ok(())
}

/// Common checks of one boot.
fn check_boot(boot: &Boot, m: &Measurements, label: &str) -> anyhow::Result<()> {
    ensure!(
        boot.status == Some(0),
        "{label}: emulate exited with {:?}\n{}",
        boot.status,
        boot.dump()
    );
    ensure!(
        boot.console
            .iter()
            .any(|l| l.contains("enclave-app: all steps passed")),
        "{label}: not all steps passed\n{}",
        boot.dump()
    );
    // The application found from its boot parameters that it runs under the emulator, and
    // caps its vsock writes (nitro_init::BootParams::write_cap).
    ensure!(
        boot.console
            .iter()
            .any(|l| l.contains("vsock write cap Some(16384)")),
        "{label}: the write cap is not applied\n{}",
        boot.dump()
    );
    check_document(boot, m)?;
    let nsm = boot.one_ok("nsm")?;
    ensure!(nsm.contains("PCR0, PCR1, PCR2 equal nitro-eif's"), "{nsm}");
    ensure!(nsm.contains("unsigned: QEMU's emulated NSM"), "{nsm}");
    boot.one_ok("info")?;
    boot.one_ok("clock")?;
    let egress = boot.ok("egress");
    ensure!(egress.len() == 3, "{label}: egress lines {egress:?}");
    ensure!(
        egress[0].contains("HTTP/1.1 200 OK") && egress[0].contains("AF_VSOCK"),
        "{}",
        egress[0]
    );
    ensure!(
        egress[1].starts_with("169.254.169.254:80 refused by the parent's policy"),
        "{}",
        egress[1]
    );
    ensure!(
        egress[2].starts_with("127.0.0.1:1 refused by the parent's policy"),
        "{}",
        egress[2]
    );
    let kms = boot.one_ok("kms")?;
    ensure!(
        kms.contains(&format!("key policy pins PCR0 {}", m.pcr0))
            && kms.contains("without Recipient: AccessDeniedException")
            && kms.contains("another PCR0: AccessDeniedException"),
        "{kms}"
    );
    ensure!(
        boot.one_ok("ingress")?.contains("answered 1 line"),
        "{label}: ingress"
    );
    let echo = boot.echo.as_deref().unwrap_or("");
    ensure!(
        echo == format!("echo: ping from the parent, {label}"),
        "{label}: echo {echo:?}"
    );
    Ok(())
}

/// The token written by the `[nbd]` step (`wrote "…"`).
fn written(line: &str) -> anyhow::Result<String> {
    let (_, rest) = line.split_once("wrote \"").context("no `wrote`")?;
    Ok(rest.split_once('"').context("unterminated")?.0.to_owned())
}

/// The line appended by the `[mount]` step (`appended "…"`).
fn appended(line: &str) -> anyhow::Result<String> {
    let (_, rest) = line.split_once("appended \"").context("no `appended`")?;
    Ok(rest.split_once('"').context("unterminated")?.0.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_enclave_end_to_end() -> anyhow::Result<()> {
    let Some(tools) = emulator::tools_or_skip("emulator_e2e") else {
        return Ok(());
    };
    let t = Instant::now();
    let init = tokio::task::spawn_blocking(emulator::build_init).await??;
    let app = tokio::task::spawn_blocking(|| emulator::build_example("enclave-app")).await??;
    // The binary cargo built for this test run, with its features.
    let emulate = PathBuf::from(env!("CARGO_BIN_EXE_emulate"));
    eprintln!("binaries ready in {:.1?}", t.elapsed());

    let dir = tempfile::tempdir()?;
    let token = hex::encode(std::process::id().to_be_bytes());
    let (http_port, hits) = http_server(format!("hello from the parent, token {token}")).await?;
    let cmd: Vec<String> = [
        "/app/enclave-app",
        "--http",
        &format!("http://127.0.0.1:{http_port}/hello"),
        "--expect",
        &format!("token {token}"),
        "--denied",
        "169.254.169.254:80",
        "--denied",
        "127.0.0.1:1",
        "--kms",
        "--nbd",
        "records",
        "--mount",
        "fs",
        "--ingress",
        &INGRESS_PORT.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let t = Instant::now();
    let (eif, m) = build_eif(&tools, &init, &app, dir.path(), cmd)?;
    eprintln!("EIF built in {:.1?}", t.elapsed());

    let policy = dir.path().join("egress.toml");
    std::fs::write(
        &policy,
        format!(
            "[[allow]]\ncidr = \"127.0.0.1/32\"\nports = [{http_port}]\n\n[[deny]]\ncidr = \"169.254.169.254/32\"\n"
        ),
    )?;
    let records = dir.path().join("records.img");
    let fs = dir.path().join("fs.img");
    let args: Vec<String> = vec![
        "--eif".into(),
        eif.display().to_string(),
        "--parent-policy".into(),
        policy.display().to_string(),
        "--kms".into(),
        "--kms-state".into(),
        dir.path().join("kms.json").display().to_string(),
        "--nbd".into(),
        format!("records={}:1M", records.display()),
        "--nbd".into(),
        format!("fs={}:24M", fs.display()),
        "--forward".into(),
        format!("127.0.0.1:0={INGRESS_PORT}"),
        "--timeout".into(),
        "240".into(),
    ];

    // Boot 1: everything is new.
    let first = run_emulate(&emulate, &args, "boot 1").await?;
    eprintln!("boot 1: emulate ran {:.1?}", first.elapsed);
    check_boot(&first, &m, "boot 1")?;
    let nbd = first.one_ok("nbd")?;
    ensure!(
        nbd.contains("created sealed device") && nbd.contains("no record yet"),
        "{nbd}"
    );
    let record = written(nbd)?;
    ensure!(record.contains("boot=1 "), "{record}");
    let mount = first.one_ok("mount")?;
    ensure!(
        mount.contains("formatted /dev/nbd0") && mount.contains("no earlier lines"),
        "{mount}"
    );
    let line = appended(mount)?;
    ensure!(
        hits.load(Ordering::SeqCst) == 1,
        "the HTTP server was not reached once"
    );

    // The parent stores only ciphertext.
    for (file, secret) in [(&records, &record), (&fs, &line)] {
        let bytes = std::fs::read(file)?;
        ensure!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds plaintext",
            file.display()
        );
    }

    // Boot 2: the same EIF reads back what boot 1 wrote.
    let second = run_emulate(&emulate, &args, "boot 2").await?;
    eprintln!("boot 2: emulate ran {:.1?}", second.elapsed);
    check_boot(&second, &m, "boot 2")?;
    let nbd = second.one_ok("nbd")?;
    ensure!(
        nbd.contains("opened sealed device") && nbd.contains(&format!("read back {record:?}")),
        "boot 2 did not read back {record:?}: {nbd}"
    );
    ensure!(written(nbd)?.contains("boot=2 "), "{nbd}");
    let mount = second.one_ok("mount")?;
    ensure!(
        !mount.contains("formatted") && mount.contains(&format!("read back {line:?}")),
        "boot 2 did not read back {line:?}: {mount}"
    );
    ensure!(
        hits.load(Ordering::SeqCst) == 2,
        "the HTTP server was not reached twice"
    );
    Ok(())
}
