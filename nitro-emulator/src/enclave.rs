//! Starting vhost-device-vsock and QEMU for one EIF, and watching the guest until it powers off.

use crate::{Error, Tools};
use nitro_init::{self as protocol, BootParams};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// File name of the hybrid vsock socket in the run directory (vhost-device-vsock `uds-path`).
const UDS_NAME: &str = "vm.vsock";
/// File name of the vhost-user socket between QEMU and vhost-device-vsock.
const VHOST_SOCKET: &str = "vhost.sock";
/// Longest console line kept (longer lines are cut).
const MAX_LINE: usize = 4096;
/// Bytes of console (and of diagnostics) kept; older lines are dropped.
const MAX_LOG: usize = 4 << 20;
/// How long the parent waits for the guest's side of the heartbeat or the exit report.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long vhost-device-vsock may take to create its socket.
const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The hybrid vsock socket of a run directory: parent → guest connections connect here and send
/// `CONNECT <port>\n` (nitro-net address `hybrid:<this path>:<port>`).
pub fn hybrid_uds(run_dir: &Path) -> PathBuf {
    run_dir.join(UDS_NAME)
}

/// Where a parent-side service must listen (a Unix socket) to accept guest connections to
/// vsock `(CID 2, port)`; bind it before [`Enclave::start`].
pub fn hybrid_listen_path(run_dir: &Path, port: u32) -> PathBuf {
    run_dir.join(format!("{UDS_NAME}_{port}"))
}

/// How to boot an EIF. Create with [`EnclaveConfig::new`], then adjust the fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnclaveConfig {
    /// The EIF to boot (QEMU `-kernel`).
    pub eif: PathBuf,
    /// Directory for the sockets; `None` = a fresh temporary directory removed on drop. Set it
    /// to bind parent services at [`hybrid_listen_path`] before starting. No commas allowed.
    pub run_dir: Option<PathBuf>,
    /// Guest memory in MiB (`-m`; the EIF header's value is ignored by QEMU). Default 512.
    pub memory_mib: u32,
    /// Guest vCPUs (`-smp`). Default 2.
    pub cpus: u32,
    /// The guest's vsock CID (vhost-device-vsock `guest-cid`). Default 16.
    pub guest_cid: u32,
    /// Boot parameters appended to the kernel command line (not measured). Default: parent CID
    /// [`protocol::HOST_CID`], exit report on [`protocol::DEFAULT_EXIT_PORT`].
    pub boot: BootParams,
    /// More kernel command-line words (appended after [`EnclaveConfig::boot`]; later words
    /// override the EIF's). Default: [`boot_tuning`] for the accelerator.
    pub append: Vec<String>,
    /// The NSM's module id (machine option `id`; QEMU's default is `i-234-enc5678`).
    pub enclave_id: Option<String>,
    /// Parent IAM role ARN, measured into PCR3 (machine option `parent-role`).
    pub parent_role: Option<String>,
    /// Parent instance id, measured into PCR4 (machine option `parent-id`).
    pub parent_id: Option<String>,
    /// QEMU accelerator: `$NITRO_EMULATOR_ACCEL`, else `tcg` (KVM cannot run guests on the
    /// development machines; see the emulation notes).
    pub accel: String,
    /// QEMU CPU model: `max` under TCG, `host` otherwise.
    pub cpu: String,
    /// Time limit from QEMU's start to its exit. Default 180 s.
    pub timeout: Duration,
    /// Print console lines (`[enclave] …`) and tool diagnostics to stderr as they arrive.
    pub echo_console: bool,
    /// With [`EnclaveConfig::echo_console`], write console lines unprefixed to stdout (what
    /// the `emulate` binary does) instead of `[enclave] …` to stderr; diagnostics stay on stderr.
    pub console_to_stdout: bool,
    /// Answer the enclave-ready heartbeat on port 9000 (turn off to run your own listener).
    pub answer_heartbeat: bool,
}

impl EnclaveConfig {
    /// Defaults for booting `eif` with `the `nitro-init` binary` as its init.
    pub fn new(eif: impl Into<PathBuf>) -> Self {
        let accel = std::env::var("NITRO_EMULATOR_ACCEL")
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "tcg".to_owned());
        let cpu = if accel == "tcg" { "max" } else { "host" }.to_owned();
        Self {
            eif: eif.into(),
            run_dir: None,
            memory_mib: 512,
            cpus: 2,
            guest_cid: 16,
            boot: BootParams {
                parent_cid: protocol::HOST_CID,
                exit_port: Some(protocol::DEFAULT_EXIT_PORT),
            },
            append: boot_tuning(&accel),
            enclave_id: None,
            parent_role: None,
            parent_id: None,
            accel,
            cpu,
            timeout: Duration::from_secs(180),
            echo_console: true,
            console_to_stdout: false,
            answer_heartbeat: true,
        }
    }
}

/// Kernel command-line words that make a guest boot quickly and reliably under emulation
/// (none changes the PCRs: QEMU does not measure `-append`):
///
/// - `reboot=t panic=-1`: the init's reboot (and a panic) end QEMU at once (`-no-reboot`);
///   the AWS command line's `reboot=k` waits seconds for a keyboard controller the machine lacks,
///   its `panic=30` half a minute;
/// - under TCG, `tsc_early_khz=<host TSC kHz>` (guest TSC = host TSC under TCG): without it,
///   TSC calibration against the PIT fails on a busy host and the kernel hangs after
///   "tsc: Marking TSC unstable due to could not calculate TSC khz"; plus `tsc=reliable` when
///   the host's frequency is known exactly, so the guest keeps the accurate TSC clock instead of
///   jiffies slowed by a busy host. `$NITRO_EMULATOR_TSC_KHZ` overrides the detection.
pub fn boot_tuning(accel: &str) -> Vec<String> {
    let mut words = vec!["reboot=t".to_owned(), "panic=-1".to_owned()];
    if accel == "tcg" {
        let from_env = std::env::var("NITRO_EMULATOR_TSC_KHZ")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|khz| (khz, true));
        let detected = from_env.or_else(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            let has_cpufreq = Path::new("/sys/devices/system/cpu/cpu0/cpufreq").exists();
            host_tsc_khz(&cpuinfo, has_cpufreq)
        });
        if let Some((khz, exact)) = detected {
            words.push(format!("tsc_early_khz={khz}"));
            if exact {
                words.push("tsc=reliable".to_owned());
            }
        }
    }
    words
}

/// The host TSC frequency from `/proc/cpuinfo` (the first `cpu MHz`, which is the kernel's
/// `cpu_khz` without a cpufreq driver), and whether it is exact: a constant, non-stop TSC whose
/// frequency the host kernel knows (`tsc_known_freq`) or measured without frequency scaling.
fn host_tsc_khz(cpuinfo: &str, has_cpufreq: bool) -> Option<(u64, bool)> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    };
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    if !(100.0..=100_000.0).contains(&mhz) {
        return None;
    }
    let flags: Vec<&str> = field("flags").unwrap_or("").split_whitespace().collect();
    let has = |f: &str| flags.contains(&f);
    let exact =
        has("constant_tsc") && has("nonstop_tsc") && (has("tsc_known_freq") || !has_cpufreq);
    Some(((mhz * 1000.0).round() as u64, exact))
}

/// How a boot ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// QEMU's exit status (success after the guest rebooted under `-no-reboot`).
    pub qemu_status: ExitStatus,
    /// The application's exit status reported by the init, if any.
    pub app_status: Option<u8>,
    /// Time from QEMU's start to the answered heartbeat.
    pub heartbeat: Option<Duration>,
    /// Time from QEMU's start to its exit.
    pub elapsed: Duration,
    /// The guest console (serial), lines joined with `\n`.
    pub console: String,
    /// QEMU's and vhost-device-vsock's own messages.
    pub diagnostics: String,
}

impl Outcome {
    /// The application's exit status, or an error with the console tail explaining its absence.
    pub fn app_status(&self) -> Result<u8, Error> {
        self.app_status.ok_or_else(|| {
            Error::Failed(format!(
                "the enclave reported no exit status (QEMU {}; heartbeat {}); console tail:\n{}\n{}",
                self.qemu_status,
                if self.heartbeat.is_some() { "answered" } else { "never received" },
                tail(&self.console, 30),
                tail(&self.diagnostics, 10),
            ))
        })
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A bounded log of lines.
#[derive(Debug, Default)]
struct Lines {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Lines {
    fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > MAX_LOG {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    fn joined(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Default)]
struct State {
    qemu_started: Option<Instant>,
    heartbeat: Option<Instant>,
    app_status: Option<u8>,
    console: Lines,
    diagnostics: Lines,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running emulated enclave: QEMU (`nitro-enclave` machine) + vhost-device-vsock. Dropping it
/// kills both and removes its temporary run directory.
#[derive(Debug)]
pub struct Enclave {
    qemu: Child,
    vhost: Child,
    state: Shared,
    /// Heartbeat and exit-report listeners (run until drop).
    listeners: JoinSet<()>,
    /// Readers of QEMU's stdout/stderr (end when QEMU exits).
    readers: JoinSet<()>,
    run_dir: PathBuf,
    _temp_dir: Option<tempfile::TempDir>,
    started: Instant,
    timeout: Duration,
}

impl Enclave {
    /// Starts vhost-device-vsock, then QEMU booting `config.eif`. Parent services the guest
    /// connects to must already listen at [`hybrid_listen_path`] in `config.run_dir`.
    pub async fn start(tools: &Tools, config: EnclaveConfig) -> Result<Self, Error> {
        let (run_dir, temp_dir) = match &config.run_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("nitro-enclave-")
                    .tempdir()
                    .map_err(Error::io("creating a run directory"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        if run_dir.to_string_lossy().contains(',') {
            return Err(Error::Failed(format!(
                "run directory {} contains a comma",
                run_dir.display()
            )));
        }
        let state = Shared::default();
        let mut listeners = JoinSet::new();
        if config.answer_heartbeat {
            let listener = bind(&hybrid_listen_path(&run_dir, protocol::HEARTBEAT_PORT))?;
            listeners.spawn(heartbeat_listener(listener, state.clone()));
        }
        if let Some(port) = config.boot.exit_port {
            let listener = bind(&hybrid_listen_path(&run_dir, port))?;
            listeners.spawn(exit_listener(listener, state.clone()));
        }

        let vhost_socket = run_dir.join(VHOST_SOCKET);
        let _ = std::fs::remove_file(&vhost_socket);
        let mut vhost = Command::new(&tools.vhost_device_vsock)
            .arg("--vm")
            .arg(format!(
                "guest-cid={},socket={},uds-path={}",
                config.guest_cid,
                vhost_socket.display(),
                hybrid_uds(&run_dir).display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!(
                "starting {}",
                tools.vhost_device_vsock.display()
            )))?;
        let mut readers = JoinSet::new();
        let echo = match (config.echo_console, config.console_to_stdout) {
            (false, _) => Echo::Off,
            (true, false) => Echo::Stderr,
            (true, true) => Echo::Stdout,
        };
        if let Some(out) = vhost.stdout.take() {
            readers.spawn(read_lines(
                out,
                state.clone(),
                Sink::Diagnostics("[vhost-device-vsock] "),
                echo,
            ));
        }
        if let Some(err) = vhost.stderr.take() {
            readers.spawn(read_lines(
                err,
                state.clone(),
                Sink::Diagnostics("[vhost-device-vsock] "),
                echo,
            ));
        }
        wait_for_socket(&vhost_socket, &mut vhost, &state).await?;

        let args = qemu_args(tools, &config, &vhost_socket);
        let mut qemu = Command::new(&tools.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("starting {}", tools.qemu.display())))?;
        let started = Instant::now();
        lock(&state).qemu_started = Some(started);
        if let Some(out) = qemu.stdout.take() {
            readers.spawn(read_lines(out, state.clone(), Sink::Console, echo));
        }
        if let Some(err) = qemu.stderr.take() {
            readers.spawn(read_lines(
                err,
                state.clone(),
                Sink::Diagnostics("[qemu] "),
                echo,
            ));
        }
        Ok(Self {
            qemu,
            vhost,
            state,
            listeners,
            readers,
            run_dir,
            _temp_dir: temp_dir,
            started,
            timeout: config.timeout,
        })
    }

    /// The run directory (sockets).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The hybrid vsock socket for parent → guest connections ([`hybrid_uds`]).
    pub fn hybrid_uds(&self) -> PathBuf {
        hybrid_uds(&self.run_dir)
    }

    /// The console so far.
    pub fn console(&self) -> String {
        lock(&self.state).console.joined()
    }

    /// Waits until the heartbeat has been answered (time since QEMU's start), or fails when QEMU
    /// exits first or `timeout` passes.
    pub async fn wait_for_heartbeat(&mut self, timeout: Duration) -> Result<Duration, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = lock(&self.state).heartbeat {
                return Ok(at.duration_since(self.started));
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return Err(Error::Failed(format!(
                    "QEMU exited ({status}) before the heartbeat; console tail:\n{}",
                    tail(&self.console(), 30)
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    after: timeout,
                    console_tail: tail(&self.console(), 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the guest to power off (QEMU exits), up to the configured timeout from QEMU's
    /// start; kills everything on timeout ([`Error::Timeout`]).
    pub async fn wait(mut self) -> Result<Outcome, Error> {
        let deadline = tokio::time::Instant::from_std(self.started + self.timeout);
        let status = match tokio::time::timeout_at(deadline, self.qemu.wait()).await {
            Ok(status) => status.map_err(Error::io("waiting for QEMU"))?,
            Err(_) => {
                self.kill().await;
                return Err(Error::Timeout {
                    after: self.timeout,
                    console_tail: tail(&self.console(), 40),
                });
            }
        };
        let elapsed = self.started.elapsed();
        self.kill().await;
        // QEMU is gone: its pipes are closed, so the readers end once they have drained them.
        let drain = async { while self.readers.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        let state = lock(&self.state);
        Ok(Outcome {
            qemu_status: status,
            app_status: state.app_status,
            heartbeat: state.heartbeat.map(|at| at.duration_since(self.started)),
            elapsed,
            console: state.console.joined(),
            diagnostics: state.diagnostics.joined(),
        })
    }

    /// Kills QEMU and vhost-device-vsock and reaps them.
    pub async fn kill(&mut self) {
        for child in [&mut self.qemu, &mut self.vhost] {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.listeners.abort_all();
    }
}

/// The QEMU command line (without the program).
fn qemu_args(tools: &Tools, config: &EnclaveConfig, vhost_socket: &Path) -> Vec<OsString> {
    let esc = |s: &str| s.replace(',', ",,");
    let mut machine = String::from("nitro-enclave,vsock=c0,acpi=on");
    for (key, value) in [
        ("id", &config.enclave_id),
        ("parent-role", &config.parent_role),
        ("parent-id", &config.parent_id),
    ] {
        if let Some(value) = value {
            machine.push_str(&format!(",{key}={}", esc(value)));
        }
    }
    let mut append = config.boot.to_cmdline();
    for word in &config.append {
        append.push(' ');
        append.push_str(word);
    }
    let mut args: Vec<OsString> = vec![
        "-M".into(),
        machine.into(),
        "-bios".into(),
        tools.bios.clone().into(),
    ];
    for dir in &tools.firmware_dirs {
        args.extend(["-L".into(), dir.clone().into()]);
    }
    args.extend([
        "-kernel".into(),
        config.eif.clone().into(),
        "-append".into(),
        append.into(),
        "-m".into(),
        format!("{}M", config.memory_mib).into(),
        "-smp".into(),
        config.cpus.to_string().into(),
        "-accel".into(),
        config.accel.clone().into(),
        "-cpu".into(),
        config.cpu.clone().into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-chardev".into(),
        format!("socket,id=c0,path={}", esc(&vhost_socket.to_string_lossy())).into(),
    ]);
    args
}

fn bind(path: &Path) -> Result<UnixListener, Error> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(Error::io(format!("listening on {}", path.display())))
}

async fn wait_for_socket(path: &Path, backend: &mut Child, state: &Shared) -> Result<(), Error> {
    let deadline = Instant::now() + BACKEND_START_TIMEOUT;
    while !path.exists() {
        if let Ok(Some(status)) = backend.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(Error::Failed(format!(
                "vhost-device-vsock exited ({status}):\n{}",
                lock(state).diagnostics.joined()
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "vhost-device-vsock did not create {} within {BACKEND_START_TIMEOUT:?}",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Where [`read_lines`] echoes lines as they arrive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    Off,
    /// Console lines as `[enclave] …` and diagnostics on stderr.
    Stderr,
    /// Console lines unprefixed on stdout, diagnostics on stderr.
    Stdout,
}

#[derive(Clone, Copy)]
enum Sink {
    Console,
    Diagnostics(&'static str),
}

/// Splits a byte stream into lines (cut at [`MAX_LINE`], `\r` dropped) into the shared log.
async fn read_lines(mut reader: impl AsyncRead + Unpin, state: Shared, sink: Sink, echo: Echo) {
    let mut buf = vec![0u8; 8192];
    let mut line = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line).into_owned();
        line.clear();
        let mut state = lock(&state);
        match sink {
            Sink::Console => {
                match echo {
                    Echo::Off => {}
                    Echo::Stderr => eprintln!("[enclave] {text}"),
                    Echo::Stdout => {
                        use std::io::Write as _;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{text}");
                        let _ = out.flush();
                    }
                }
                state.console.push(text);
            }
            Sink::Diagnostics(prefix) => {
                if echo != Echo::Off {
                    eprintln!("{prefix}{text}");
                }
                state.diagnostics.push(format!("{prefix}{text}"));
            }
        }
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

fn diagnostic(state: &Shared, message: String) {
    lock(state).diagnostics.push(format!("[parent] {message}"));
}

/// Answers the enclave-ready heartbeat: reads `0xB7`, writes `0xB7`, waits for the guest to close.
async fn heartbeat_listener(listener: UnixListener, state: Shared) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                diagnostic(&state, format!("heartbeat accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let exchange = async {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            if byte[0] != protocol::HEARTBEAT_BYTE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("wrong heartbeat byte {:#04x}", byte[0]),
                ));
            }
            stream.write_all(&[protocol::HEARTBEAT_BYTE]).await?;
            lock(&state).heartbeat.get_or_insert_with(Instant::now);
            drain_until_eof(&mut stream).await;
            Ok(())
        };
        match tokio::time::timeout(PEER_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => diagnostic(&state, format!("heartbeat: {e}")),
            Err(_) => diagnostic(&state, "heartbeat: the guest sent nothing".to_owned()),
        }
    }
}

/// Receives the init's exit report (`exit N\n`) and acknowledges it.
async fn exit_listener(listener: UnixListener, state: Shared) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                diagnostic(&state, format!("exit report accept: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let exchange = async {
            let mut msg = Vec::new();
            let mut byte = [0u8; 1];
            while msg.len() < protocol::MAX_EXIT_MESSAGE && msg.last() != Some(&b'\n') {
                if stream.read(&mut byte).await? == 0 {
                    break;
                }
                msg.push(byte[0]);
            }
            let status = protocol::parse_exit_message(&msg)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            lock(&state).app_status = Some(status);
            stream.write_all(&[protocol::EXIT_ACK]).await?;
            drain_until_eof(&mut stream).await;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(PEER_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => diagnostic(&state, format!("exit report: {e}")),
            Err(_) => diagnostic(&state, "exit report: timed out".to_owned()),
        }
    }
}

/// Reads and discards until the peer closes (bounded by the caller's timeout), so that the
/// parent's last write is not cut off by its own close (vhost-device-vsock turns a host-side
/// close into a reset of both directions).
async fn drain_until_eof(stream: &mut UnixStream) {
    let mut sink = [0u8; 64];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Result<Tools, Error> {
        let text = "NITRO_EMULATOR_ENV_FORMAT=1\nNITRO_QEMU=/q\nNITRO_QEMU_VERSION=10.0.2\n\
            NITRO_QEMU_BIOS=/fw/bios-microvm.bin\nNITRO_QEMU_FIRMWARE_DIRS=/fw/qemu:/fw/seabios\n\
            NITRO_VHOST_DEVICE_VSOCK=/v\nNITRO_BUSYBOX=/b\nNITRO_KERNEL=/k\nNITRO_KERNEL_CONFIG=/kc\n\
            NITRO_KERNEL_RELEASE=r\nNITRO_KERNEL_PACKAGE=p\nNITRO_KERNEL_MODULES_TREE=/t\n\
            NITRO_KERNEL_MODULES_DIR=/m\nNITRO_KERNEL_MODULES=nsm\n";
        Tools::parse(text, Path::new("env"))
    }

    #[test]
    fn qemu_command_line() -> Result<(), Error> {
        let mut config = EnclaveConfig::new("/x/a.eif");
        config.accel = "tcg".into();
        config.cpu = "max".into();
        config.parent_role = Some("arn:aws:iam::123456789012:role/a,b".into());
        config.append = vec!["quiet".into()];
        let args = qemu_args(&tools()?, &config, Path::new("/run/vhost.sock"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with(
                "-M nitro-enclave,vsock=c0,acpi=on,parent-role=arn:aws:iam::123456789012:role/a,,b \
                 -bios /fw/bios-microvm.bin -L /fw/qemu -L /fw/seabios -kernel /x/a.eif"
            ),
            "{joined}"
        );
        let append = args
            .iter()
            .position(|a| a == "-append")
            .map(|i| args[i + 1].as_str());
        assert_eq!(
            append,
            Some("nitro_parent_cid=2 nitro_exit_port=9999 quiet")
        );
        assert!(joined.contains("-accel tcg -cpu max -no-reboot"));
        assert!(joined.ends_with("-chardev socket,id=c0,path=/run/vhost.sock"));
        Ok(())
    }

    #[test]
    fn tsc_frequency_from_cpuinfo() {
        let vm = "processor\t: 0\ncpu MHz\t\t: 2596.150\nflags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq\n";
        assert_eq!(host_tsc_khz(vm, false), Some((2_596_150, true)));
        assert_eq!(host_tsc_khz(vm, true), Some((2_596_150, true)));
        let scaled = "cpu MHz\t: 1200.000\nflags\t: tsc constant_tsc nonstop_tsc\n";
        assert_eq!(host_tsc_khz(scaled, true), Some((1_200_000, false)));
        assert_eq!(host_tsc_khz(scaled, false), Some((1_200_000, true)));
        assert_eq!(host_tsc_khz("flags: tsc\n", false), None);
        assert_eq!(host_tsc_khz("cpu MHz: nan\n", false), None);
        assert_eq!(host_tsc_khz("cpu MHz: 1e30\n", false), None);
        let words = boot_tuning("kvm");
        assert_eq!(words, ["reboot=t", "panic=-1"]);
    }

    #[test]
    fn bounded_lines() {
        let mut lines = Lines::default();
        for i in 0..(MAX_LOG / 1000 + 10) {
            lines.push(format!("{i:0>999}"));
        }
        assert!(lines.bytes <= MAX_LOG);
        assert!(
            lines
                .joined()
                .ends_with(&format!("{:0>999}", MAX_LOG / 1000 + 9))
        );
    }

    #[tokio::test]
    async fn line_reader_cuts_and_strips() {
        let state = Shared::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nlast");
        read_lines(&input[..], state.clone(), Sink::Console, Echo::Off).await;
        let console = lock(&state).console.joined();
        let lines: Vec<&str> = console.lines().collect();
        assert_eq!(lines[..2], ["one", "two"]);
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "last");
    }

    #[tokio::test]
    async fn heartbeat_and_exit_report_over_unix_sockets() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let state = Shared::default();
        let hb = bind(&hybrid_listen_path(dir.path(), protocol::HEARTBEAT_PORT))?;
        let ex = bind(&hybrid_listen_path(dir.path(), 9999))?;
        let mut tasks = JoinSet::new();
        tasks.spawn(heartbeat_listener(hb, state.clone()));
        tasks.spawn(exit_listener(ex, state.clone()));

        // The guest side, as the init does it.
        let path = hybrid_listen_path(dir.path(), protocol::HEARTBEAT_PORT);
        let mut s = UnixStream::connect(&path)
            .await
            .map_err(Error::io("connect"))?;
        s.write_all(&[protocol::HEARTBEAT_BYTE])
            .await
            .map_err(Error::io("write"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(Error::io("read"))?;
        assert_eq!(b[0], protocol::HEARTBEAT_BYTE);
        drop(s);

        let mut s = UnixStream::connect(hybrid_listen_path(dir.path(), 9999))
            .await
            .map_err(Error::io("connect"))?;
        s.write_all(protocol::exit_message(42).as_bytes())
            .await
            .map_err(Error::io("write"))?;
        s.read_exact(&mut b).await.map_err(Error::io("read"))?;
        assert_eq!(b[0], protocol::EXIT_ACK);
        drop(s);

        // A hostile report is refused without an ack.
        let mut s = UnixStream::connect(hybrid_listen_path(dir.path(), 9999))
            .await
            .map_err(Error::io("connect"))?;
        s.write_all(b"exit 4200000000000\n")
            .await
            .map_err(Error::io("write"))?;
        // Closed without an ack (a reset when unread bytes remain).
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)));

        let st = lock(&state);
        assert!(st.heartbeat.is_some());
        assert_eq!(st.app_status, Some(42));
        assert!(st.diagnostics.joined().contains("exit report: invalid"));
        Ok(())
    }
}
