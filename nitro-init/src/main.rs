//! `nitro-init`: a small static PID 1 for enclave images, doing what the AWS init
//! (aws-nitro-enclaves-sdk-bootstrap `init`) does, plus what emulation needs.
//!
//! Build it static and put it at `/init` of the bootstrap ramdisk:
//!
//! ```text
//! cargo build --release --target x86_64-unknown-linux-musl -p nitro-init
//! # → target/x86_64-unknown-linux-musl/release/nitro-init
//! ```
//!
//! At boot it:
//! 1. blocks all signals (PID 1 reaps children with `wait`);
//! 2. mounts devtmpfs on `/dev` (Debian kernels lack `DEVTMPFS_MOUNT`) and opens `/dev/console`
//!    as stdin/stdout/stderr;
//! 3. reads the boot parameters from `/proc/cmdline`: `nitro_parent_cid=N` (default 3, the
//!    parent of a real enclave; 2 under QEMU + vhost-device-vsock) and `nitro_exit_port=N`;
//!    QEMU's `-append` adds them without changing the PCRs;
//! 4. loads the kernel modules of the bootstrap ramdisk with `finit_module`, in the order of
//!    `/modules_load_order` (nitro-cli's format; `.ko.xz`/`.ko.zst`/`.ko.gz` are decompressed by
//!    the kernel), or `/nsm.ko` alone when there is no such file, and deletes them;
//! 5. sends the heartbeat `0xB7` to the parent on vsock port 9000 and expects it back;
//! 6. reads `/env`, `/cmd` (one entry per line) and `/workdir` (nitro-eif writes the image's
//!    `WorkingDir` there; default `/`) and deletes them;
//! 7. switches the root to `/rootfs`; mounts devtmpfs, proc, sysfs, tmpfs on `/run`, `/tmp` and
//!    `/dev/shm`, devpts, the cgroup (v1) hierarchies, and the `/dev/fd`, `/dev/std*` links;
//! 8. brings up `lo` (nitro-net's rtnetlink code);
//! 9. runs `/cmd` with the environment of `/env` in its own process group, in the working
//!    directory (`argv[0]` searched in `/sbin:/usr/sbin:/bin:/usr/bin`, like the AWS init), and
//!    reaps every child until it exits;
//! 10. prints the application's exit status (`128 + signal` when killed) on the console, sends it
//!     to the parent's `nitro_exit_port` when given (`exit N\n`, acknowledged), and reboots,
//!     which ends the enclave (QEMU exits under `-no-reboot`).
//!
//! Any failure is printed (`nitro-init: fatal: …`) and ends the enclave the same way.
//! The wire formats are in this package's library (`nitro_init`).

use anyhow::{Context, Result, bail};
use nitro_init::{self as protocol, BootParams, uptime};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, VsockAddr, connect, setsockopt, socket, sockopt,
};
use nix::sys::stat::Mode;
use nix::sys::time::TimeVal;
use nix::sys::wait::{WaitStatus, wait};
use nix::unistd::{Pid, chdir, chroot, dup2_stderr, dup2_stdin, dup2_stdout, getpid};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Prints a line on the console, ignoring errors (there may be no console yet).
fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "nitro-init: {message}");
}

macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

fn main() {
    if getpid() != Pid::from_raw(1) {
        eprintln!(
            "nitro-init is the PID 1 of an enclave image (/init of the bootstrap ramdisk); \
             it does not run as an ordinary process"
        );
        std::process::exit(2);
    }
    // PID 1 never handles signals; `wait` still returns when children exit.
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
    let mut params = BootParams::default();
    match boot(&mut params) {
        Ok(status) => {
            say!("application exited with status {status}");
            if let Some(port) = params.exit_port
                && let Err(e) = report_exit(params.parent_cid, port, status)
            {
                say!(
                    "could not report the exit status to {}:{port}: {e:#}",
                    params.parent_cid
                );
            }
        }
        Err(e) => say!("fatal: {e:#}"),
    }
    nix::unistd::sync();
    loop {
        let _ = reboot(RebootMode::RB_AUTOBOOT);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Everything up to the application's exit; returns its exit status.
fn boot(params: &mut BootParams) -> Result<u8> {
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    open_console();

    mount_fs(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let (parsed, warnings) = BootParams::from_cmdline(&cmdline);
    for w in warnings {
        say!("{w}");
    }
    *params = parsed;
    umount2("/proc", MntFlags::MNT_DETACH).context("unmounting /proc")?;

    load_modules()?;
    heartbeat(params.parent_cid)?;
    say!(
        "heartbeat answered by the parent (CID {}) at {:.3} s",
        params.parent_cid,
        uptime()
    );

    let env = read_config("/env")?;
    let cmd = read_config("/cmd")?;
    let workdir = read_config("/workdir")?
        .and_then(|lines| lines.into_iter().next())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let env = env.unwrap_or_else(|| vec![format!("PATH={}", protocol::DEFAULT_PATH)]);
    let cmd = cmd.unwrap_or_else(|| vec!["sh".to_owned()]);

    switch_root("/rootfs")?;
    mount_pseudo_filesystems()?;
    if let Err(e) = nitro_net::netlink::loopback_up() {
        say!("could not bring up lo: {e:#}");
    }
    if !workdir.starts_with('/') {
        bail!("/workdir must be an absolute path, not {workdir:?}");
    }
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("creating the working directory {workdir}"))?;
    run_application(&cmd, &env, &workdir)
}

/// Mounts a filesystem, creating the mount point; "already mounted" (EBUSY) is fine.
fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mkdir(target)?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting {fstype} on {target}")),
    }
}

fn mkdir(path: &str) -> Result<()> {
    match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {path}")),
    }
}

/// Makes `/dev/console` stdin, stdout and stderr (the kernel could not open it before devtmpfs).
fn open_console() {
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console");
    if let Ok(console) = console {
        let _ = dup2_stdin(&console);
        let _ = dup2_stdout(&console);
        let _ = dup2_stderr(&console);
    }
}

fn load_modules() -> Result<()> {
    let order_path = format!("/{}", protocol::MODULES_LOAD_ORDER);
    let modules = match std::fs::read(&order_path) {
        Ok(bytes) => protocol::parse_load_order(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if Path::new("/nsm.ko").exists() {
                vec!["nsm.ko".to_owned()]
            } else {
                Vec::new()
            }
        }
        Err(e) => return Err(e).context(format!("reading {order_path}")),
    };
    for module in &modules {
        let path = format!("/{module}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let flags = if protocol::module_is_compressed(module) {
            // MODULE_INIT_COMPRESSED_FILE (Linux ≥ 5.17, CONFIG_MODULE_DECOMPRESS).
            ModuleInitFlags::from_bits_retain(4)
        } else {
            ModuleInitFlags::empty()
        };
        match finit_module(&file, c"", flags) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("loading module {path}")),
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&order_path);
    if !modules.is_empty() {
        say!("loaded {} modules at {:.3} s", modules.len(), uptime());
    }
    Ok(())
}

fn vsock_connect(cid: u32, port: u32) -> Result<std::fs::File> {
    let fd: OwnedFd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a vsock socket (are the vsock modules loaded?)")?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .with_context(|| format!("connecting to vsock {cid}:{port}"))?;
    let timeout = TimeVal::new(20, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).context("setting a receive timeout")?;
    setsockopt(&fd, sockopt::SendTimeout, &timeout).context("setting a send timeout")?;
    Ok(std::fs::File::from(fd))
}

fn heartbeat(parent_cid: u32) -> Result<()> {
    let mut stream = vsock_connect(parent_cid, protocol::HEARTBEAT_PORT).context("heartbeat")?;
    stream
        .write_all(&[protocol::HEARTBEAT_BYTE])
        .context("sending the heartbeat")?;
    let mut reply = [0u8; 1];
    stream
        .read_exact(&mut reply)
        .context("reading the heartbeat reply")?;
    if reply[0] != protocol::HEARTBEAT_BYTE {
        bail!("wrong heartbeat reply {:#04x}", reply[0]);
    }
    Ok(())
}

fn report_exit(parent_cid: u32, port: u32, status: u8) -> Result<()> {
    let mut stream = vsock_connect(parent_cid, port)?;
    stream.write_all(protocol::exit_message(status).as_bytes())?;
    // Wait for the acknowledgement: powering off before the backend has forwarded the report
    // would lose it.
    let mut ack = [0u8; 1];
    stream
        .read_exact(&mut ack)
        .context("waiting for the acknowledgement")?;
    if ack[0] != protocol::EXIT_ACK {
        bail!("unexpected acknowledgement {:#04x}", ack[0]);
    }
    Ok(())
}

/// Reads `/env` or `/cmd` and deletes it; `None` when absent.
fn read_config(path: &str) -> Result<Option<Vec<String>>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(file) => {
            let limit = protocol::MAX_CONFIG_FILE as u64 + 1;
            file.take(limit)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {path}"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path != "/workdir" {
                say!("{path} not found: using the default");
            }
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("opening {path}")),
    }
    let _ = std::fs::remove_file(path);
    Ok(Some(protocol::parse_lines(&bytes, path)?))
}

/// Makes `new_root` the root: bind it onto itself, move it over `/`, chroot into it.
fn switch_root(new_root: &str) -> Result<()> {
    mount(
        Some(new_root),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {new_root}"))?;
    chdir(new_root).with_context(|| format!("entering {new_root}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root over /")?;
    chroot(".").context("chroot")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

fn mount_pseudo_filesystems() -> Result<()> {
    use MsFlags as F;
    let hardened = F::MS_NODEV | F::MS_NOSUID | F::MS_NOEXEC;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        F::MS_NOSUID | F::MS_NOEXEC,
        None,
    )?;
    mount_fs("proc", "/proc", "proc", hardened, None)?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("linking {link}")),
        }
    }
    mount_fs("tmpfs", "/run", "tmpfs", hardened, Some("mode=0755"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", hardened, None)?;
    mount_fs("shm", "/dev/shm", "tmpfs", hardened, None)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        F::MS_NOSUID | F::MS_NOEXEC,
        None,
    )?;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None)?;
    mount_fs(
        "cgroup_root",
        "/sys/fs/cgroup",
        "tmpfs",
        hardened,
        Some("mode=0755"),
    )?;
    // One cgroup v1 hierarchy per enabled controller, as the AWS init does.
    // Kernels without a controller's v1 support (Debian 6.12: cpuset, memory) refuse its mount.
    let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let mut unavailable = Vec::new();
    for line in cgroups.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [name, _, _, "1"] = fields[..] {
            let target = format!("/sys/fs/cgroup/{name}");
            if mount_fs(name, &target, "cgroup", hardened, Some(name)).is_err() {
                let _ = std::fs::remove_dir(&target);
                unavailable.push(name);
            }
        }
    }
    if !unavailable.is_empty() {
        say!(
            "cgroup v1 controllers not available: {}",
            unavailable.join(", ")
        );
    }
    Ok(())
}

/// Runs the application and reaps every child until it exits; returns its exit status.
fn run_application(cmd: &[String], env: &[String], workdir: &str) -> Result<u8> {
    let Some(argv0) = cmd.first() else {
        bail!("/cmd is empty")
    };
    let program =
        protocol::resolve_program(argv0, protocol::DEFAULT_PATH, |p| Path::new(p).is_file())
            .with_context(|| format!("{argv0:?} not found in {}", protocol::DEFAULT_PATH))?;
    let mut command = Command::new(&program);
    command
        .arg0(argv0)
        .args(&cmd[1..])
        .env_clear()
        .current_dir(workdir)
        .process_group(0);
    for entry in env {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                command.env(name, value);
            }
            _ => say!("ignoring /env entry without a name: {entry:?}"),
        }
    }
    // std resets the signal mask and dispositions in the child before exec.
    let child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid")?);
    say!("started {program} (pid {pid}) at {:.3} s", uptime());
    loop {
        match wait() {
            Ok(WaitStatus::Exited(p, code)) if p == pid => {
                return Ok(u8::try_from(code & 0xff).unwrap_or(255));
            }
            Ok(WaitStatus::Signaled(p, signal, _)) if p == pid => {
                return Ok(128u8.saturating_add(signal as u8));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for the application"),
        }
    }
}
