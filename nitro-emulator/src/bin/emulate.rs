//! `emulate`: boot any EIF in an emulated Nitro Enclave on this machine, with the parent's
//! services around it.
//!
//! ```text
//! cargo run --release -p nitro-emulator -- --eif app.eif \
//!     [--parent-policy egress.toml] [--kms [--kms-state kms.json]] \
//!     [--nbd [NAME=]FILE[:SIZE]]... [--forward [ADDR:]PORT=ENCLAVE_PORT]... \
//!     [--memory 512] [--cpus 2] [--timeout SECS] [--append WORD]...
//! ```
//!
//! It measures the EIF with nitro-eif (and prints PCR0/1/2/8), starts the parent's services on
//! the hybrid vsock transport (`nitro_emulator::parent`: nitro-net's egress server
//! with `--parent-policy` on vsock port 8000, ingress forwards from parent TCP ports, the local
//! KMS of nitro-kms in its unsafe emulator trust mode with a key whose policy admits the image's
//! PCR0, credentials on port 8001, nitro-fs's NBD server on port 10809, the discovery document
//! on port 9001), the heartbeat listener, vhost-device-vsock and QEMU's `nitro-enclave` machine
//! (`nitro_emulator::Enclave`), streams the guest console to stdout, and exits with
//! the application's exit status.
//!
//! Requirements: the emulator installed by `scripts/setup-emulator.sh` (QEMU with the
//! `nitro-enclave` machine, vhost-device-vsock), and an EIF whose init reports to a parent at
//! the CID given by `nitro_parent_cid=` on the kernel command line (the `nitro-init` binary
//! does; the AWS init always uses CID 3, which vhost-device-vsock cannot deliver: see
//! `../shared/notes/vsock-and-emulation.md` §6). The guest sees the parent as CID 2, and QEMU
//! does not measure the words this tool appends (`nitro_parent_cid=2 nitro_exit_port=9999`
//! and boot tuning), so the PCRs are those of the image.
//!
//! Exit status: the application's (0–255, `128 + signal` when it was killed), 125 when the
//! enclave ended without reporting one (init failure, kernel panic, time limit), 130 on SIGINT.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use nitro_eif::EifReader;
use nitro_emulator::parent::{
    CREDENTIALS_PORT, EGRESS_PORT, INFO_PORT, KmsSettings, NBD_PORT, NbdExport, ParentConfig,
    ParentServices,
};
use nitro_emulator::{Enclave, EnclaveConfig, Tools};

#[derive(Parser)]
#[command(
    about = "Boot an EIF in an emulated Nitro Enclave (QEMU nitro-enclave machine) with the parent's services"
)]
struct Args {
    /// The enclave image.
    #[arg(long)]
    eif: PathBuf,
    /// Egress policy of the parent (nitro-net TOML, `[[allow]]` / `[[deny]]`); default: deny
    /// everything.
    #[arg(long)]
    parent_policy: Option<PathBuf>,
    /// Run the local KMS (nitro-kms, unsafe emulator trust mode) with a key whose policy admits
    /// this image's PCR0; the enclave reaches it through the egress tunnel.
    #[arg(long)]
    kms: bool,
    /// Keep the local KMS's keys in this file, so that later runs (of the same image) can
    /// decrypt what earlier ones encrypted.
    #[arg(long, requires = "kms")]
    kms_state: Option<PathBuf>,
    /// Region of the local KMS.
    #[arg(long, default_value = nitro_emulator::parent::DEFAULT_REGION, requires = "kms")]
    kms_region: String,
    /// Serve a file over NBD: `[NAME=]FILE[:SIZE]` (created with SIZE, e.g. 64M, when missing;
    /// default name `disk`). Repeatable.
    #[arg(long, value_name = "[NAME=]FILE[:SIZE]")]
    nbd: Vec<NbdExport>,
    /// Forward a parent TCP address to an enclave vsock port: `[ADDR:]PORT=ENCLAVE_PORT`
    /// (ADDR defaults to 127.0.0.1; PORT 0 picks a free port). Repeatable.
    #[arg(long, value_name = "[ADDR:]PORT=ENCLAVE_PORT")]
    forward: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Stop the enclave after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Extra kernel command-line word (not measured). Repeatable.
    #[arg(long)]
    append: Vec<String>,
    /// The NSM's module id (QEMU machine option `id`).
    #[arg(long)]
    enclave_id: Option<String>,
    /// Parent IAM role ARN, measured into PCR3.
    #[arg(long)]
    parent_role: Option<String>,
    /// Parent instance id, measured into PCR4.
    #[arg(long)]
    parent_id: Option<String>,
    /// Directory for the sockets (default: a temporary directory).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Do not stream the guest console.
    #[arg(long)]
    quiet: bool,
}

/// Exit status when the enclave reported no application status.
const NO_STATUS: i32 = 125;

fn say(message: std::fmt::Arguments<'_>) {
    eprintln!("emulate: {message}");
}

fn parse_forward(spec: &str) -> Result<(String, u32)> {
    let (listen, port) = spec
        .rsplit_once('=')
        .with_context(|| format!("--forward {spec:?}: expected [ADDR:]PORT=ENCLAVE_PORT"))?;
    let port: u32 = port
        .parse()
        .with_context(|| format!("--forward {spec:?}: bad enclave port"))?;
    let listen = if listen.bytes().all(|b| b.is_ascii_digit()) && !listen.is_empty() {
        format!("127.0.0.1:{listen}")
    } else {
        listen.to_owned()
    };
    Ok((listen, port))
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
    let code = run(args).await?;
    std::process::exit(code);
}

async fn run(args: Args) -> Result<i32> {
    let tools = Tools::locate().context("the emulator is not installed")?;
    let forwards = args
        .forward
        .iter()
        .map(|f| parse_forward(f))
        .collect::<Result<Vec<_>>>()?;

    // Measure the image (and check its CRC) before booting it.
    let t = Instant::now();
    let measurements = EifReader::open(&args.eif)
        .and_then(|mut r| r.verify())
        .with_context(|| format!("reading {}", args.eif.display()))?;
    say(format_args!(
        "{} measured by nitro-eif in {:.1?}:",
        args.eif.display(),
        t.elapsed()
    ));
    say(format_args!("PCR0 {}", measurements.pcr0));
    say(format_args!("PCR1 {}", measurements.pcr1));
    say(format_args!("PCR2 {}", measurements.pcr2));
    if let Some(pcr8) = &measurements.pcr8 {
        say(format_args!("PCR8 {pcr8}"));
    }

    let temp;
    let run_dir = match &args.run_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("nitro-emulate-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };

    let mut parent = ParentConfig::default();
    parent.policy_toml = match &args.parent_policy {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    parent.measurements = Some(measurements);
    if args.kms {
        let mut kms = KmsSettings::default();
        kms.state_file = args.kms_state.clone();
        kms.region = args.kms_region.clone();
        parent.kms = Some(kms);
    }
    parent.nbd = args.nbd.clone();
    parent.forwards = forwards;
    let services = ParentServices::start(&run_dir, parent).await?;
    say(format_args!(
        "parent services (guest → vsock CID 2): egress on port {EGRESS_PORT} ({}), discovery on port {INFO_PORT}",
        match &args.parent_policy {
            Some(p) => format!("policy {}", p.display()),
            None => "no policy: everything denied".to_owned(),
        }
    ));
    if let Some(kms) = &services.info().kms {
        say(format_args!(
            "local KMS {} (UNSAFE emulator trust mode: unsigned attestation documents accepted, PCRs checked), key {} admits PCR0; credentials on port {CREDENTIALS_PORT}",
            kms.endpoint, kms.key_id
        ));
    }
    if let Some(nbd) = &services.info().nbd {
        for (name, size) in &nbd.exports {
            say(format_args!(
                "NBD export {name:?} ({size} bytes) on port {NBD_PORT}"
            ));
        }
    }
    for (listen, port) in services.forwards() {
        say(format_args!(
            "forwarding tcp:{listen} to enclave port {port}"
        ));
    }

    let mut config = EnclaveConfig::new(&args.eif);
    config.run_dir = Some(run_dir.clone());
    config.memory_mib = args.memory;
    config.cpus = args.cpus;
    config.append.extend(args.append.iter().cloned());
    config.enclave_id = args.enclave_id.clone();
    config.parent_role = args.parent_role.clone();
    config.parent_id = args.parent_id.clone();
    config.timeout = if args.timeout == 0 {
        Duration::from_secs(10 * 365 * 24 * 3600)
    } else {
        Duration::from_secs(args.timeout)
    };
    config.echo_console = !args.quiet;
    config.console_to_stdout = true;
    let enclave = Enclave::start(&tools, config).await?;
    say(format_args!(
        "booting under QEMU {} ({} MiB, {} vCPUs, accel {}); Ctrl-C stops it",
        tools.qemu_version,
        args.memory,
        args.cpus,
        std::env::var("NITRO_EMULATOR_ACCEL").unwrap_or_else(|_| "tcg".into())
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        outcome = enclave.wait() => outcome,
        _ = tokio::signal::ctrl_c() => {
            say(format_args!("SIGINT: stopping the enclave"));
            services.shutdown().await;
            return Ok(130);
        }
        _ = term.recv() => {
            say(format_args!("SIGTERM: stopping the enclave"));
            services.shutdown().await;
            return Ok(128 + 15);
        }
    };
    services.shutdown().await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            say(format_args!("{e}"));
            return Ok(NO_STATUS);
        }
    };
    let heartbeat = outcome
        .heartbeat
        .map_or_else(|| "never".to_owned(), |h| format!("{h:.1?}"));
    match outcome.app_status {
        Some(status) => {
            say(format_args!(
                "the application exited with status {status}; heartbeat after {heartbeat}, enclave ran {:.1?}",
                outcome.elapsed
            ));
            Ok(i32::from(status))
        }
        None => {
            if let Err(e) = outcome.app_status() {
                say(format_args!("{e}"));
            }
            if outcome.heartbeat.is_none() {
                bail_hint();
            }
            Ok(NO_STATUS)
        }
    }
}

/// Explains the usual reason for a missing heartbeat.
fn bail_hint() {
    say(format_args!(
        "no heartbeat: the image's init must connect to the parent CID from `nitro_parent_cid=` \
         (2 here) on vsock port 9000; the AWS init's fixed CID 3 cannot be delivered by \
         vhost-device-vsock (use the nitro-init binary as /init)"
    ));
}
