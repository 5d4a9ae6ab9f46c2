//! Boots a minimal EIF in the emulator: QEMU's `nitro-enclave` machine (built by
//! `scripts/setup-emulator.sh`) with vhost-device-vsock, the Debian 6.12 kernel, and
//! the `nitro-init` binary (built static for musl) as PID 1.
//!
//! The image is built with nitro-eif: the bootstrap ramdisk carries the init and the vsock, nbd
//! and nsm modules; the customer ramdisk a static busybox whose shell script checks, inside the
//! guest, what the init promised (working directory, environment, arguments, `/dev/nsm`, the
//! loaded modules, `lo` up, the pseudo file systems) and exits with status 7, or with the number
//! of the first failed check. The parent side (nitro_emulator) must see the heartbeat
//! and receive status 7 over vsock. A second boot whose parent does not answer the heartbeat
//! must end without an application status; a third, whose application is killed, must report
//! 137; a fourth, whose application never ends, must be stopped by the time limit.
//!
//! Skipped (with a message) when the emulator is not installed, except under `CI=true`.

use nitro_eif::{BootstrapRamdisk, CustomerRamdisk, EifBuilder};
use nitro_emulator::{self as emulator, Enclave, EnclaveConfig, Tools};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The AWS command line without `nomodules` (not a kernel parameter) and the i8042 words.
const CMDLINE: &str = "reboot=k panic=30 pci=off console=ttyS0 random.trust_cpu=on";

/// The application (`/probe.sh`): each check exits with its own status; all passed → 7.
/// `probe=kill` or `probe=hang` on the kernel command line (QEMU `-append`, not measured, so
/// the same image serves every case) makes it die of SIGKILL or never end.
const SCRIPT: &str = r#"
bb=/bin/busybox
case " $($bb cat /proc/cmdline) " in
    *" probe=kill "*) kill -9 $$ ;;
    *" probe=hang "*) while :; do $bb sleep 60; done ;;
esac
[ "$($bb pwd)" = /work ] || exit 11
[ "${GREETING:-}" = "hello world" ] || exit 12
[ "$0" = /probe.sh ] && [ "$1" = "first arg" ] && [ "$#" = 1 ] || exit 13
[ -c /dev/nsm ] || exit 14
for m in virtio_mmio vsock vmw_vsock_virtio_transport nbd nsm; do
    [ -d /sys/module/$m ] || exit 15
done
$bb ip link show lo | $bb grep -q 'UP' || exit 16
$bb grep -q '^proc /proc proc' /proc/mounts || exit 17
$bb grep -q '^devpts /dev/pts devpts' /proc/mounts || exit 18
$bb grep -q ' /tmp tmpfs' /proc/mounts || exit 19
[ -e /cmd ] || [ -e /env ] && exit 20
[ -e /dev/nbd0 ] || exit 21
echo "probe: all checks passed"
exit 7
"#;

fn build_eif(tools: &Tools, init: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy(&tools.busybox, rootfs.join("bin/busybox"))?;
    std::fs::write(rootfs.join("probe.sh"), SCRIPT)?;
    let mut bootstrap = BootstrapRamdisk::new(init);
    for module in tools.module_files() {
        bootstrap = bootstrap.module(module);
    }
    let app = CustomerRamdisk::from_dir(&rootfs)?
        .cmd(["/bin/busybox", "sh", "/probe.sh", "first arg"])
        .env("GREETING", "hello world")
        .workdir(Some("/work".to_owned()));
    let eif = dir.join("probe.eif");
    let out = EifBuilder::new(&tools.kernel, CMDLINE)
        .ramdisk(bootstrap)
        .ramdisk(app)
        .name("emulator-boot")
        .version("1")
        .build_time(UNIX_EPOCH)
        .build_file(&eif)?;
    eprintln!(
        "built {} ({} bytes), PCR0 {}",
        eif.display(),
        out.size,
        out.measurements.pcr0.to_hex()
    );
    Ok(eif)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_an_eif_and_reports_the_application_exit_status() -> anyhow::Result<()> {
    let Some(tools) = emulator::tools_or_skip("emulator_boot") else {
        return Ok(());
    };
    let t = Instant::now();
    let init = tokio::task::spawn_blocking(emulator::build_init).await??;
    eprintln!("nitro-init (musl) ready in {:.1?}", t.elapsed());
    let dir = tempfile::tempdir()?;
    let eif = build_eif(&tools, &init, dir.path())?;

    // First boot: everything answered.
    let mut config = EnclaveConfig::new(&eif);
    config.timeout = Duration::from_secs(240);
    // The console is part of every assertion message; streaming it would flood passing runs.
    config.echo_console = false;
    let outcome = Enclave::start(&tools, config.clone()).await?.wait().await?;
    eprintln!(
        "boot 1: heartbeat after {:.1?}, QEMU exited after {:.1?} ({})",
        outcome.heartbeat.unwrap_or_default(),
        outcome.elapsed,
        outcome.qemu_status
    );
    let status = outcome.app_status()?;
    assert_eq!(
        status, 7,
        "the probe failed check {status}; console:\n{}",
        outcome.console
    );
    assert!(
        outcome.heartbeat.is_some(),
        "the heartbeat was not answered"
    );
    assert!(
        outcome.qemu_status.success(),
        "QEMU: {}",
        outcome.qemu_status
    );
    let loaded = format!("nitro-init: loaded {} modules", tools.modules.len());
    for line in [loaded.as_str(), "probe: all checks passed"] {
        assert!(
            outcome.console.contains(line),
            "console lacks {line:?}:\n{}",
            outcome.console
        );
    }

    // Second boot: nobody answers the heartbeat, so the init gives up and the enclave ends
    // without running the application.
    config.answer_heartbeat = false;
    let outcome = Enclave::start(&tools, config.clone()).await?.wait().await?;
    eprintln!(
        "boot 2 (no heartbeat listener): QEMU exited after {:.1?}",
        outcome.elapsed
    );
    assert_eq!(outcome.app_status, None);
    assert!(outcome.heartbeat.is_none());
    assert!(
        outcome.console.contains("nitro-init: fatal: heartbeat"),
        "console:\n{}",
        outcome.console
    );
    assert!(!outcome.console.contains("probe: all checks passed"));

    // Third boot: the application dies of SIGKILL → status 128 + 9.
    config.answer_heartbeat = true;
    config.append.push("probe=kill".to_owned());
    let outcome = Enclave::start(&tools, config.clone()).await?.wait().await?;
    eprintln!(
        "boot 3 (killed app): QEMU exited after {:.1?}",
        outcome.elapsed
    );
    assert_eq!(outcome.app_status()?, 137, "console:\n{}", outcome.console);

    // Fourth boot: the application never ends → the time limit kills QEMU and the backend.
    config.append.pop();
    config.append.push("probe=hang".to_owned());
    config.timeout = Duration::from_secs(10);
    let t = Instant::now();
    let result = Enclave::start(&tools, config).await?.wait().await;
    eprintln!("boot 4 (hanging app): gave up after {:.1?}", t.elapsed());
    assert!(
        matches!(result, Err(emulator::Error::Timeout { .. })),
        "{result:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the time limit was not enforced"
    );
    assert!(
        !running_with_arg(&eif),
        "QEMU still runs after the time limit"
    );
    Ok(())
}

/// Whether a process has `arg` on its command line (scans /proc).
fn running_with_arg(arg: &Path) -> bool {
    let arg = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg))
                .unwrap_or(false)
        })
}
