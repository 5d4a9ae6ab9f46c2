//! `nitro-parentd`: the parent-instance daemon of AWS Nitro Enclaves.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nitro_parentd::config::Cid;
use nitro_parentd::daemon::{Daemon, RunOptions};
use nitro_parentd::launch::NitroCli;
use nitro_parentd::notify::notify;

#[derive(Parser)]
#[command(version, about = "The parent-instance daemon of AWS Nitro Enclaves")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validates the configuration and every manifest it names, and prints the plan.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Serves every enclave of the configuration and launches them with nitro-cli.
    Run {
        /// The configuration file.
        config: PathBuf,
        /// Serve only: the enclaves are started by someone else (their CIDs must be fixed for
        /// vsock ingress).
        #[arg(long)]
        no_launch: bool,
        /// Launch with the local emulator (nitro-emulator, QEMU) instead of nitro-cli: the same
        /// services on the hybrid vsock transport (build with the `emulate` feature).
        #[arg(long)]
        emulate: bool,
    },
    /// `nitro-cli describe-enclaves`.
    Describe,
    /// `nitro-cli terminate-enclave --enclave-id ID`.
    Terminate {
        /// The enclave's ID.
        #[arg(long)]
        enclave_id: String,
    },
    /// `nitro-cli console --enclave-id ID` (debug-mode enclaves).
    Console {
        /// The enclave's ID.
        #[arg(long)]
        enclave_id: String,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nitro-parentd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("nitro-parentd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let nitro_cli = NitroCli::default();
    match cli.command {
        Command::Check { config } => {
            let plan = nitro_parentd::check(&config)
                .with_context(|| format!("{} is not valid", config.display()))?;
            print!("{plan}");
            Ok(0)
        }
        Command::Describe => {
            for e in nitro_cli.describe().await? {
                println!(
                    "{} {} cid {} {} CPUs {} MiB {}",
                    e.enclave_id,
                    e.enclave_name.as_deref().unwrap_or("-"),
                    e.enclave_cid,
                    e.number_of_cpus,
                    e.memory_mib,
                    e.state.as_deref().unwrap_or("")
                );
            }
            Ok(0)
        }
        Command::Terminate { enclave_id } => {
            let t = nitro_cli.terminate(&enclave_id).await?;
            println!("{} terminated: {}", t.enclave_id, t.terminated);
            Ok(0)
        }
        Command::Console { enclave_id } => {
            let status = nitro_cli.console(&enclave_id).await?;
            Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
        }
        Command::Run {
            config,
            no_launch,
            emulate,
        } => {
            if emulate {
                return run_emulated(&config).await;
            }
            let plan = nitro_parentd::check(&config)
                .with_context(|| format!("{} is not valid", config.display()))?;
            let mut daemon = Daemon::start(&plan, RunOptions::new()).await?;
            let mut launched = Vec::new();
            for e in &plan.enclaves {
                let cid = if no_launch {
                    match e.cid {
                        Cid::Fixed(c) => Some(c),
                        _ => None,
                    }
                } else {
                    let info = nitro_cli
                        .run_enclave(e)
                        .await
                        .with_context(|| format!("launching {}", e.name))?;
                    tracing::info!(enclave = %e.name, id = %info.enclave_id, cid = info.enclave_cid, "launched");
                    launched.push(info.enclave_id.clone());
                    u32::try_from(info.enclave_cid).ok()
                };
                daemon
                    .attach(&e.name, cid)
                    .await
                    .with_context(|| format!("ingress of {}", e.name))?;
            }
            notify("READY=1")?;
            tracing::info!("ready");
            wait_for_signal().await?;
            notify("STOPPING=1")?;
            tracing::info!("stopping: draining open connections");
            daemon.shutdown().await;
            for id in launched {
                if let Err(e) = nitro_cli.terminate(&id).await {
                    tracing::warn!("terminating {id}: {e:#}");
                }
            }
            Ok(0)
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(feature = "emulate"))]
async fn run_emulated(_config: &std::path::Path) -> anyhow::Result<u8> {
    anyhow::bail!("this build has no emulator: build nitro-parentd with `--features emulate`")
}

/// `run --emulate`: every enclave boots under QEMU through nitro-emulator's driver; the
/// daemon's services listen on each enclave's hybrid vsock socket. Returns the application's
/// exit status of the first enclave that stops.
#[cfg(feature = "emulate")]
async fn run_emulated(config: &std::path::Path) -> anyhow::Result<u8> {
    use nitro_emulator::{Enclave, EnclaveConfig, Tools, hybrid_uds};
    use nitro_parentd::plan::Transport;

    let mut plan = nitro_parentd::check(config)
        .with_context(|| format!("{} is not valid", config.display()))?;
    let tools = Tools::locate().context("locating the emulator's tools")?;
    let base = std::env::temp_dir().join(format!("nitro-parentd-{}", std::process::id()));
    let mut run_dirs = Vec::new();
    for e in &mut plan.enclaves {
        let dir = base.join(&e.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        e.transport = Transport::Hybrid(hybrid_uds(&dir));
        run_dirs.push(dir);
    }
    // The emulator answers the heartbeat and the exit report itself.
    let opts = RunOptions::new().max_write(Some(nitro_net::EMULATOR_MAX_WRITE));
    let mut daemon = Daemon::start(&plan, opts).await?;
    let mut running = tokio::task::JoinSet::new();
    for (i, (e, dir)) in plan.enclaves.iter().zip(run_dirs).enumerate() {
        let mut cfg = EnclaveConfig::new(&e.eif);
        cfg.run_dir = Some(dir);
        cfg.cpus = e.manifest.resources.cpus;
        cfg.memory_mib = e.manifest.resources.memory_mib;
        cfg.guest_cid = match e.cid {
            Cid::Fixed(c) => c,
            _ => 16 + u32::try_from(i).unwrap_or(0),
        };
        cfg.timeout = std::time::Duration::from_secs(365 * 24 * 3600);
        let enclave = Enclave::start(&tools, cfg)
            .await
            .with_context(|| format!("booting {} under the emulator", e.name))?;
        daemon
            .attach(&e.name, None)
            .await
            .with_context(|| format!("ingress of {}", e.name))?;
        let name = e.name.clone();
        running.spawn(async move { (name, enclave.wait().await) });
    }
    notify("READY=1")?;
    tracing::info!("ready (emulated)");
    let status = tokio::select! {
        r = wait_for_signal() => { r?; 0 }
        Some(done) = running.join_next() => {
            let (name, outcome) = done.context("enclave task")?;
            let outcome = outcome.with_context(|| format!("{name} under the emulator"))?;
            let status = outcome.app_status().with_context(|| name.clone())?;
            tracing::info!(enclave = %name, status, "the enclave stopped");
            status
        }
    };
    notify("STOPPING=1")?;
    // Dropping the remaining enclaves kills them; then the services drain.
    running.abort_all();
    daemon.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(status)
}
