//! `nitro-supervisor`: the in-enclave supervisor (the image's command, a child of
//! `nitro-init`).
//!
//! ```text
//! nitro-supervisor [--manifest PATH] [--parent ADDR] [--listen ADDR]
//!                  [--kms-endpoint URL] [--kms-ca PEM_FILE] [-- IMAGE_COMMAND...]
//! ```
//!
//! - `--manifest`: default `/etc/nitro/enclave.toml` (`nitro_manifest::PATH_IN_IMAGE`);
//! - `--parent`: the parent's transport (default `vsock:<CID>:0`, the CID from
//!   `nitro_parent_cid=` on the kernel command line, 3 otherwise); the port is replaced per
//!   service;
//! - `--listen`: where ingress listeners bind (default `vsock:0`);
//! - `--kms-endpoint`, `--kms-ca`: another KMS endpoint and its trust roots (the emulator's
//!   local KMS);
//! - after `--`: the image's own command, used when the manifest has no `app.entrypoint`.
//!
//! Exit status: the application's (`128 + signal` when killed); 125 when the supervisor
//! failed before or around the application (the error is printed).

use anyhow::{Context as _, Result, bail};
use nitro_init::BootParams;
use nitro_manifest::Manifest;
use nitro_supervisor::Options;

/// The exit status when the supervisor itself fails.
const FAILED: i32 = 125;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NITRO_SUPERVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(supervise()) {
            Ok(code) => i32::from(code),
            Err(e) => {
                eprintln!("nitro-supervisor: error: {e:#}");
                FAILED
            }
        },
        Err(e) => {
            eprintln!("nitro-supervisor: error: starting the runtime: {e}");
            FAILED
        }
    };
    std::process::exit(code);
}

async fn supervise() -> Result<u8> {
    let mut args = std::env::args().skip(1);
    let mut manifest_path = nitro_manifest::PATH_IN_IMAGE.to_owned();
    let (mut parent, mut listen, mut kms_endpoint, mut kms_ca) = (None, None, None, None);
    let mut image_argv = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--manifest" => manifest_path = value("--manifest")?,
            "--parent" => parent = Some(value("--parent")?),
            "--listen" => listen = Some(value("--listen")?),
            "--kms-endpoint" => kms_endpoint = Some(value("--kms-endpoint")?),
            "--kms-ca" => kms_ca = Some(value("--kms-ca")?),
            "--" => {
                image_argv = args.by_ref().collect();
                break;
            }
            "-h" | "--help" => {
                println!(
                    "usage: nitro-supervisor [--manifest PATH] [--parent ADDR] [--listen ADDR] \
                     [--kms-endpoint URL] [--kms-ca PEM_FILE] [-- IMAGE_COMMAND...]"
                );
                return Ok(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (params, warnings) = BootParams::from_cmdline(&cmdline);
    for w in warnings {
        eprintln!("nitro-supervisor: {w}");
    }
    let manifest = Manifest::load(&manifest_path).context("loading the manifest")?;
    let mut options = Options::from_boot(&params);
    if let Some(p) = parent {
        options.parent = p.parse().context("--parent")?;
    }
    if let Some(l) = listen {
        options.listen = l.parse().context("--listen")?;
    }
    options.kms_endpoint = kms_endpoint;
    if let Some(path) = kms_ca {
        options.kms_ca_pem = Some(std::fs::read(&path).with_context(|| format!("reading {path}"))?);
    }
    options.image_argv = image_argv;
    eprintln!(
        "nitro-supervisor: enclave {:?}, parent {}, vsock write cap {:?}",
        manifest.name, options.parent, options.write_cap
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    Ok(nitro_supervisor::run(&manifest, options, stop).await?)
}
