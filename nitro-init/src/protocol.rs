//! The contract between an enclave image, its init (the `nitro-init` binary) and the parent.
//!
//! Everything here is pure (no IO), so the init inside the guest and the parent-side launcher
//! (`nitro_emulator::Enclave`) share one definition of each format:
//!
//! - **heartbeat**: the init connects to the parent on vsock port [`HEARTBEAT_PORT`], writes
//!   [`HEARTBEAT_BYTE`] and expects it back (the nitro-cli convention);
//! - **boot parameters** ([`BootParams`]): words on the kernel command line, typically added with
//!   QEMU's `-append` (which the `nitro-enclave` machine does not measure, so the PCRs stay those of
//!   the image): `nitro_parent_cid=N` (the parent's vsock CID, default [`PARENT_CID`]; `2` under
//!   vhost-device-vsock) and `nitro_exit_port=N` (where to report the application's exit status);
//! - **exit report**: `exit <status>\n` ([`exit_message`]) sent to the parent's exit port, answered
//!   with [`EXIT_ACK`] so that the init powers off only after the parent has the status;
//! - **image layout**: the bootstrap ramdisk holds `/init`, the modules and
//!   [`MODULES_LOAD_ORDER`] (nitro-cli's format: one file name per line, `#` comments,
//!   [`parse_load_order`]); the customer ramdisk holds `/rootfs/…`, `/cmd` and `/env` (one entry
//!   per line, [`parse_lines`]).

use crate::Error;

/// Vsock port of the enclave-ready heartbeat (nitro-cli `ENCLAVE_READY_VSOCK_PORT`).
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte: sent by the enclave, echoed by the parent.
pub const HEARTBEAT_BYTE: u8 = 0xB7;
/// The parent's CID as seen from a real Nitro enclave.
pub const PARENT_CID: u32 = 3;
/// The host's CID as seen from a guest of QEMU + vhost-device-vsock (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;
/// The default port of the exit-status report used by `nitro_emulator::Enclave`.
pub const DEFAULT_EXIT_PORT: u32 = 9999;
/// Byte the parent answers an exit report with.
pub const EXIT_ACK: u8 = 0x06;
/// Kernel command-line word carrying the parent CID.
pub const PARENT_CID_PARAM: &str = "nitro_parent_cid";
/// Kernel command-line word carrying the exit-report port.
pub const EXIT_PORT_PARAM: &str = "nitro_exit_port";
/// Name of the module load-order file at the root of the bootstrap ramdisk.
pub const MODULES_LOAD_ORDER: &str = "modules_load_order";
/// Longest exit report accepted (bytes, newline included).
pub const MAX_EXIT_MESSAGE: usize = 16;
/// Longest `/cmd`, `/env` or load-order file accepted (bytes).
pub const MAX_CONFIG_FILE: usize = 1 << 20;
/// Most entries accepted in `/cmd`, `/env` or the load-order file.
pub const MAX_CONFIG_ENTRIES: usize = 4096;
/// The `PATH` the init searches for the application (the AWS init's `DEFAULT_PATH_ENV`).
pub const DEFAULT_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";

/// Boot parameters the init reads from the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootParams {
    /// The parent's vsock CID (heartbeat and exit report go there).
    pub parent_cid: u32,
    /// Where to report the application's exit status, if anywhere.
    pub exit_port: Option<u32>,
}

impl Default for BootParams {
    fn default() -> Self {
        Self {
            parent_cid: PARENT_CID,
            exit_port: None,
        }
    }
}

impl BootParams {
    /// Parses the words this module knows from a kernel command line (`/proc/cmdline`); the last
    /// occurrence of a word wins, as for kernel parameters. Malformed values are ignored and
    /// described in the returned warnings, so a bad `-append` never stops a boot.
    pub fn from_cmdline(cmdline: &str) -> (Self, Vec<String>) {
        let mut params = Self::default();
        let mut warnings = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            // CIDs 0 (hypervisor), 1 (local) and -1 (any) cannot be a parent; port -1 is "any".
            let value = value.parse::<u32>().ok().filter(|v| *v != u32::MAX);
            match (key, value) {
                (PARENT_CID_PARAM, Some(cid)) if cid >= HOST_CID => params.parent_cid = cid,
                (EXIT_PORT_PARAM, Some(port)) => params.exit_port = Some(port),
                (PARENT_CID_PARAM | EXIT_PORT_PARAM, _) => {
                    warnings.push(format!("ignoring invalid kernel parameter {word:?}"));
                }
                _ => {}
            }
        }
        (params, warnings)
    }

    /// The write cap an enclave program must apply to its vsock streams: `Some`
    /// ([`crate::EMULATOR_MAX_WRITE`]) when the parent is the host of an emulator
    /// ([`HOST_CID`]: QEMU with vhost-device-vsock), `None` on a real Nitro Enclave.
    pub fn write_cap(&self) -> Option<usize> {
        (self.parent_cid == HOST_CID).then_some(nitro_net::EMULATOR_MAX_WRITE)
    }

    /// The kernel command-line words that make an init use these parameters.
    pub fn to_cmdline(&self) -> String {
        let mut s = format!("{PARENT_CID_PARAM}={}", self.parent_cid);
        if let Some(port) = self.exit_port {
            s.push_str(&format!(" {EXIT_PORT_PARAM}={port}"));
        }
        s
    }
}

/// The exit report for an application exit status (`0..=255`; `128 + signal` when killed).
pub fn exit_message(status: u8) -> String {
    format!("exit {status}\n")
}

/// Parses an exit report ([`exit_message`]); the input is the whole message as received.
pub fn parse_exit_message(msg: &[u8]) -> Result<u8, Error> {
    let invalid = || {
        Error::malformed(
            "exit report",
            format!("invalid: {:?}", String::from_utf8_lossy(msg)),
        )
    };
    if msg.len() > MAX_EXIT_MESSAGE {
        return Err(invalid());
    }
    let text = std::str::from_utf8(msg).map_err(|_| invalid())?;
    let digits = text
        .strip_prefix("exit ")
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or_else(invalid)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    digits.parse::<u8>().map_err(|_| invalid())
}

/// Splits `/cmd` or `/env` into entries, as the AWS init does: one entry per line, the final
/// newline optional, empty lines kept (an empty argument is valid). Rejects NUL bytes (they cannot
/// be passed to `execve`), non-UTF-8 text, and files or entry counts above the limits.
pub fn parse_lines(bytes: &[u8], what: &str) -> Result<Vec<String>, Error> {
    if bytes.len() > MAX_CONFIG_FILE {
        return Err(Error::malformed(
            what,
            format!("larger than {MAX_CONFIG_FILE} bytes"),
        ));
    }
    if bytes.contains(&0) {
        return Err(Error::malformed(what, "contains a NUL byte"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Error::malformed(what, "not UTF-8"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if lines.len() > MAX_CONFIG_ENTRIES {
        return Err(Error::malformed(
            what,
            format!("more than {MAX_CONFIG_ENTRIES} entries"),
        ));
    }
    Ok(lines)
}

/// Parses nitro-cli's `modules_load_order`: one module file per line, relative to the root of the
/// bootstrap ramdisk (`nsm.ko`, `modules/vsock.ko.xz`), `#` comments and blank lines skipped.
/// Rejects absolute paths, `..` components and NUL bytes.
pub fn parse_load_order(bytes: &[u8]) -> Result<Vec<String>, Error> {
    let mut modules = Vec::new();
    for line in parse_lines(bytes, MODULES_LOAD_ORDER)? {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if entry.starts_with('/') || entry.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(Error::malformed(
                MODULES_LOAD_ORDER,
                format!("invalid module path {entry:?}"),
            ));
        }
        modules.push(entry.to_owned());
    }
    Ok(modules)
}

/// Whether a module file must be loaded with `MODULE_INIT_COMPRESSED_FILE` (the kernel
/// decompresses `.ko.xz`, `.ko.zst` and `.ko.gz` itself when built with `MODULE_DECOMPRESS`).
pub fn module_is_compressed(path: &str) -> bool {
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

/// Where the init finds the program of `argv[0]`: as given when it contains a `/`, otherwise
/// the first directory of `path` (a `PATH` value) for which `exists` says yes. The AWS init
/// searches its own default `PATH` ([`DEFAULT_PATH`]), not the application's.
pub fn resolve_program(argv0: &str, path: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    if argv0.is_empty() {
        return None;
    }
    if argv0.contains('/') {
        return Some(argv0.to_owned());
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        .find(|candidate| exists(candidate))
}

/// The first line of a log stream: `nitro-log 1 stdout\n` or `nitro-log 1 stderr\n`.
const LOG_MAGIC: &str = "nitro-log 1 ";

/// The longest log-stream header accepted ([`parse_log_header`]), newline included.
pub const MAX_LOG_HEADER: usize = 32;

/// Which of the application's output streams a log connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The header the enclave writes first on a log connection to the parent's log sink: one
/// connection per stream, then the stream's bytes as they come, then a write shutdown (EOF)
/// when the application closes the stream. The parent splits the bytes into lines.
///
/// ```
/// use nitro_init::{LogStream, log_header, parse_log_header};
/// let header = log_header(LogStream::Stderr);
/// assert_eq!(header, "nitro-log 1 stderr\n");
/// assert_eq!(parse_log_header(header.as_bytes()).unwrap(), LogStream::Stderr);
/// ```
pub fn log_header(stream: LogStream) -> String {
    format!("{LOG_MAGIC}{}\n", stream.as_str())
}

/// Parses a log-stream header: the bytes up to and including the first newline, at most
/// [`MAX_LOG_HEADER`] bytes (read no further than that from the connection).
pub fn parse_log_header(line: &[u8]) -> Result<LogStream, Error> {
    let invalid = || {
        Error::malformed(
            "log header",
            format!(
                "invalid: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(MAX_LOG_HEADER)])
            ),
        )
    };
    if line.len() > MAX_LOG_HEADER {
        return Err(invalid());
    }
    let name = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_prefix(LOG_MAGIC))
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or_else(invalid)?;
    match name {
        "stdout" => Ok(LogStream::Stdout),
        "stderr" => Ok(LogStream::Stderr),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_params_from_cmdline() {
        let (p, w) = BootParams::from_cmdline("console=ttyS0 quiet");
        assert_eq!(p, BootParams::default());
        assert!(w.is_empty());
        let (p, w) = BootParams::from_cmdline("a nitro_parent_cid=2 nitro_exit_port=9999\n");
        assert_eq!(
            p,
            BootParams {
                parent_cid: 2,
                exit_port: Some(9999)
            }
        );
        assert!(w.is_empty());
        // Last one wins; bad values are ignored with a warning.
        let (p, w) =
            BootParams::from_cmdline("nitro_parent_cid=5 nitro_parent_cid=x nitro_parent_cid=7");
        assert_eq!(p.parent_cid, 7);
        assert_eq!(w.len(), 1);
        let (p, w) = BootParams::from_cmdline(
            "nitro_parent_cid=1 nitro_parent_cid=-3 nitro_exit_port=4294967295",
        );
        assert_eq!(p, BootParams::default());
        assert_eq!(w.len(), 3);
        // Dotted words are module parameters for the kernel: not ours.
        let (p, _) = BootParams::from_cmdline("nitro.parent_cid=2");
        assert_eq!(p.parent_cid, PARENT_CID);
    }

    #[test]
    fn boot_params_round_trip() {
        for p in [
            BootParams::default(),
            BootParams {
                parent_cid: HOST_CID,
                exit_port: Some(DEFAULT_EXIT_PORT),
            },
        ] {
            assert_eq!(BootParams::from_cmdline(&p.to_cmdline()), (p, vec![]));
        }
    }

    #[test]
    fn write_cap_only_under_the_emulator() {
        assert_eq!(BootParams::default().write_cap(), None);
        let (emulated, _) = BootParams::from_cmdline("nitro_parent_cid=2");
        assert_eq!(emulated.write_cap(), Some(16 << 10));
        let (other, _) = BootParams::from_cmdline("nitro_parent_cid=7");
        assert_eq!(other.write_cap(), None);
    }

    #[test]
    fn exit_messages() {
        for s in [0u8, 1, 7, 128, 255] {
            assert_eq!(parse_exit_message(exit_message(s).as_bytes()).ok(), Some(s));
        }
        for bad in [
            &b""[..],
            b"exit 0",
            b"exit \n",
            b"exit 256\n",
            b"exit -1\n",
            b"exit +1\n",
            b"exit 1 \n",
            b"EXIT 1\n",
            b"exit 00000000000000001\n",
            b"exit \xff\n",
        ] {
            assert!(parse_exit_message(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_lines() -> Result<(), Error> {
        assert_eq!(parse_lines(b"", "cmd")?, Vec::<String>::new());
        assert_eq!(
            parse_lines(b"/bin/app\n--flag\n\nlast", "cmd")?,
            ["/bin/app", "--flag", "", "last"]
        );
        assert_eq!(parse_lines(b"A=1\nB=2\n", "env")?, ["A=1", "B=2"]);
        assert!(parse_lines(b"a\0b", "cmd").is_err());
        assert!(parse_lines(b"\xff", "cmd").is_err());
        assert!(parse_lines(&vec![b'\n'; MAX_CONFIG_ENTRIES + 1], "cmd").is_err());
        assert!(parse_lines(&vec![b'a'; MAX_CONFIG_FILE + 1], "cmd").is_err());
        Ok(())
    }

    #[test]
    fn load_order() -> Result<(), Error> {
        let text = b"# Module load order for Nitro Enclaves\n# one per line\nvsock.ko\n\n  modules/nsm.ko.xz \n";
        assert_eq!(parse_load_order(text)?, ["vsock.ko", "modules/nsm.ko.xz"]);
        for bad in [
            &b"/nsm.ko"[..],
            b"../nsm.ko",
            b"a/../b.ko",
            b"a//b.ko",
            b"a\0.ko",
        ] {
            assert!(parse_load_order(bad).is_err(), "{bad:?}");
        }
        assert!(module_is_compressed("modules/vsock.ko.xz"));
        assert!(!module_is_compressed("nsm.ko"));
        Ok(())
    }

    #[test]
    fn program_resolution() {
        let exists = |p: &str| p == "/usr/bin/app" || p == "/bin/app";
        assert_eq!(
            resolve_program("app", DEFAULT_PATH, exists).as_deref(),
            Some("/bin/app")
        );
        assert_eq!(
            resolve_program("app", "/usr/bin", exists).as_deref(),
            Some("/usr/bin/app")
        );
        assert_eq!(
            resolve_program("./x", DEFAULT_PATH, exists).as_deref(),
            Some("./x")
        );
        assert_eq!(resolve_program("nope", DEFAULT_PATH, exists), None);
        assert_eq!(resolve_program("", DEFAULT_PATH, exists), None);
        assert_eq!(
            resolve_program("app", "::/bin/:", exists).as_deref(),
            Some("/bin/app")
        );
    }

    #[test]
    fn log_headers_round_trip_and_hostile_ones_are_refused() {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            assert_eq!(
                parse_log_header(log_header(stream).as_bytes()).unwrap(),
                stream
            );
        }
        let long = format!("nitro-log 1 {}\n", "x".repeat(100));
        for bad in [
            &b""[..],
            b"nitro-log 1 stdout",
            b"nitro-log 2 stdout\n",
            b"nitro-log 1 stdin\n",
            b"nitro-log 1 stdout\nextra",
            b"\xff\xfe\n",
            long.as_bytes(),
        ] {
            assert!(parse_log_header(bad).is_err(), "{bad:?}");
        }
    }
}
