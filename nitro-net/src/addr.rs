//! Transport addresses as written on command lines: `vsock:CID:PORT`, `vsock:PORT`,
//! `hybrid:UDS:PORT`, `uds:DIR:PORT`, `uds:PATH`, `tcp:HOST:PORT`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// The parent instance's CID as seen from a Nitro enclave (nitro-cli's `VMADDR_CID_PARENT`).
pub const NITRO_PARENT_CID: u32 = 3;

/// Environment variable (and kernel command-line word) that overrides the parent CID.
///
/// The kernel hands undotted `key=value` words of its command line that it does not know to
/// PID 1 as environment variables, so `nitro_parent_cid=2` on the command line reaches the init
/// process both ways; [`parent_cid`] also reads `/proc/cmdline`.
pub const PARENT_CID_VAR: &str = "nitro_parent_cid";

/// Where a transport connects to or listens on.
///
/// Parsed from (and displayed as) the strings every example CLI of the crate family accepts:
///
/// | form | connect | listen |
/// |---|---|---|
/// | `vsock:CID:PORT` | `AF_VSOCK` to `CID:PORT` | bind `CID:PORT` |
/// | `vsock:PORT` | `AF_VSOCK` to the parent ([`parent_cid`]) | bind `VMADDR_CID_ANY:PORT` |
/// | `hybrid:UDS:PORT` | connect to the Unix socket `UDS`, `CONNECT PORT\n`, await `OK ..\n` | bind the Unix socket `UDS_PORT` |
/// | `uds:DIR:PORT` | the Unix socket `DIR/PORT.sock` | bind `DIR/PORT.sock` |
/// | `uds:PATH` | the Unix socket `PATH` | bind `PATH` |
/// | `tcp:HOST:PORT` | TCP (`TCP_NODELAY`) | bind TCP |
///
/// `uds:X:N` is a directory and a port when `N` is a decimal number, otherwise the whole `X:N`
/// is a socket path.
///
/// ```
/// use nitro_net::Addr;
///
/// let a: Addr = "vsock:16:5005".parse()?;
/// assert_eq!(a, Addr::Vsock { cid: Some(16), port: 5005 });
/// let b: Addr = "uds:/run/enclave:8000".parse()?;
/// assert_eq!(b.to_string(), "uds:/run/enclave:8000");
/// assert_eq!(b.with_port(9000)?.to_string(), "uds:/run/enclave:9000");
/// # Ok::<(), nitro_net::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// `AF_VSOCK`. `cid: None` listens on `VMADDR_CID_ANY` and connects to the parent CID
    /// ([`parent_cid`]).
    Vsock {
        /// Peer CID (connect) or local CID (listen); `None` = parent / any.
        cid: Option<u32>,
        /// vsock port.
        port: u32,
    },
    /// Hybrid vsock over Unix sockets (Firecracker, vhost-device-vsock, cloud-hypervisor): the
    /// host reaches guest port `port` through `uds` with a `CONNECT` line, and listens on
    /// `<uds>_<port>` for connections the guest makes to the host.
    Hybrid {
        /// The backend's Unix socket (`uds-path`).
        uds: PathBuf,
        /// vsock port.
        port: u32,
    },
    /// Plain Unix-socket transport for development: port `N` is the socket `dir/N.sock`.
    UnixDir {
        /// Directory holding one socket per port.
        dir: PathBuf,
        /// Port number.
        port: u32,
    },
    /// One Unix socket path.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// TCP, `host:port` (a name is resolved when connecting or binding).
    Tcp {
        /// `host:port`, `[v6]:port`.
        addr: String,
    },
}

impl Addr {
    /// The port, for the transports that have one (`tcp:` reports its TCP port when it parses).
    pub fn port(&self) -> Option<u32> {
        match self {
            Addr::Vsock { port, .. } | Addr::Hybrid { port, .. } | Addr::UnixDir { port, .. } => {
                Some(*port)
            }
            Addr::Unix { .. } => None,
            Addr::Tcp { addr } => addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .map(u32::from),
        }
    }

    /// The same transport and peer with another port (`uds:PATH` has no port: an error).
    pub fn with_port(&self, port: u32) -> Result<Addr, Error> {
        Ok(match self {
            Addr::Vsock { cid, .. } => Addr::Vsock { cid: *cid, port },
            Addr::Hybrid { uds, .. } => Addr::Hybrid {
                uds: uds.clone(),
                port,
            },
            Addr::UnixDir { dir, .. } => Addr::UnixDir {
                dir: dir.clone(),
                port,
            },
            Addr::Unix { path } => {
                return Err(Error::InvalidAddr {
                    input: format!("uds:{}", path.display()),
                    reason: "a single Unix socket path has no ports".into(),
                });
            }
            Addr::Tcp { addr } => {
                let port = u16::try_from(port).map_err(|_| Error::InvalidAddr {
                    input: self.to_string(),
                    reason: format!("TCP port {port} is above 65535"),
                })?;
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                Addr::Tcp {
                    addr: format!("{host}:{port}"),
                }
            }
        })
    }

    /// The Unix socket path this address binds (listens on), if it is a Unix-socket transport.
    pub fn listen_path(&self) -> Option<PathBuf> {
        match self {
            Addr::Hybrid { uds, port } => {
                let mut s = uds.clone().into_os_string();
                s.push(format!("_{port}"));
                Some(PathBuf::from(s))
            }
            Addr::UnixDir { dir, port } => Some(dir.join(format!("{port}.sock"))),
            Addr::Unix { path } => Some(path.clone()),
            Addr::Vsock { .. } | Addr::Tcp { .. } => None,
        }
    }

    /// The Unix socket path this address connects to, if it is a Unix-socket transport.
    pub fn connect_path(&self) -> Option<PathBuf> {
        match self {
            Addr::Hybrid { uds, .. } => Some(uds.clone()),
            Addr::UnixDir { .. } | Addr::Unix { .. } => self.listen_path(),
            Addr::Vsock { .. } | Addr::Tcp { .. } => None,
        }
    }
}

fn bad(input: &str, reason: impl Into<String>) -> Error {
    Error::InvalidAddr {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn parse_u32(input: &str, what: &str, s: &str) -> Result<u32, Error> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(input, format!("{what} {s:?} is not a decimal number")));
    }
    s.parse::<u32>()
        .map_err(|_| bad(input, format!("{what} {s:?} does not fit in 32 bits")))
}

fn non_empty_path(input: &str, s: &str) -> Result<PathBuf, Error> {
    if s.is_empty() {
        return Err(bad(input, "empty socket path"));
    }
    if s.contains('\0') {
        return Err(bad(input, "socket path contains a NUL byte"));
    }
    Ok(PathBuf::from(s))
}

impl FromStr for Addr {
    type Err = Error;

    fn from_str(input: &str) -> Result<Addr, Error> {
        let (scheme, rest) = input.split_once(':').ok_or_else(|| {
            bad(
                input,
                "expected vsock:CID:PORT, vsock:PORT, hybrid:UDS:PORT, uds:DIR:PORT, uds:PATH or tcp:HOST:PORT",
            )
        })?;
        match scheme {
            "vsock" => match rest.split_once(':') {
                Some((cid, port)) => Ok(Addr::Vsock {
                    cid: Some(parse_u32(input, "CID", cid)?),
                    port: parse_u32(input, "port", port)?,
                }),
                None => Ok(Addr::Vsock {
                    cid: None,
                    port: parse_u32(input, "port", rest)?,
                }),
            },
            "hybrid" => {
                let (uds, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(input, "expected hybrid:UDS:PORT"))?;
                Ok(Addr::Hybrid {
                    uds: non_empty_path(input, uds)?,
                    port: parse_u32(input, "port", port)?,
                })
            }
            "uds" | "unix" => match rest.rsplit_once(':') {
                Some((dir, port))
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Ok(Addr::UnixDir {
                        dir: non_empty_path(input, dir)?,
                        port: parse_u32(input, "port", port)?,
                    })
                }
                _ => Ok(Addr::Unix {
                    path: non_empty_path(input, rest)?,
                }),
            },
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad(input, "expected tcp:HOST:PORT"))?;
                if host.is_empty() {
                    return Err(bad(input, "empty TCP host"));
                }
                if port.parse::<u16>().is_err() {
                    return Err(bad(input, format!("TCP port {port:?} is not in 0..=65535")));
                }
                Ok(Addr::Tcp {
                    addr: rest.to_owned(),
                })
            }
            other => Err(bad(
                input,
                format!("unknown transport {other:?} (expected vsock, hybrid, uds or tcp)"),
            )),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Vsock {
                cid: Some(cid),
                port,
            } => write!(f, "vsock:{cid}:{port}"),
            Addr::Vsock { cid: None, port } => write!(f, "vsock:{port}"),
            Addr::Hybrid { uds, port } => write!(f, "hybrid:{}:{port}", uds.display()),
            Addr::UnixDir { dir, port } => write!(f, "uds:{}:{port}", dir.display()),
            Addr::Unix { path } => write!(f, "uds:{}", path.display()),
            Addr::Tcp { addr } => write!(f, "tcp:{addr}"),
        }
    }
}

/// The parent's CID as configured for this enclave: the environment variable
/// `nitro_parent_cid` (or `NITRO_PARENT_CID`), else the word `nitro_parent_cid=N` of
/// `/proc/cmdline`, else [`NITRO_PARENT_CID`] (3).
///
/// Under emulation (QEMU, Firecracker, vhost-device-vsock) the host is CID 2: boot the guest with
/// `nitro_parent_cid=2` on its kernel command line.
pub fn parent_cid() -> u32 {
    for var in [PARENT_CID_VAR, "NITRO_PARENT_CID"] {
        if let Some(cid) = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()) {
            return cid;
        }
    }
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| parent_cid_from_cmdline(&c))
        .unwrap_or(NITRO_PARENT_CID)
}

/// The value of the `nitro_parent_cid=N` word of a kernel command line, if any (the last one
/// wins, as for the kernel's own parameters).
///
/// ```
/// assert_eq!(nitro_net::parent_cid_from_cmdline("console=ttyS0 nitro_parent_cid=2 quiet"), Some(2));
/// assert_eq!(nitro_net::parent_cid_from_cmdline("console=ttyS0"), None);
/// ```
pub fn parent_cid_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("nitro_parent_cid="))
        .filter_map(|v| v.parse().ok())
        .next_back()
}

pub(crate) fn display_path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let cases = [
            (
                "vsock:3:8000",
                Addr::Vsock {
                    cid: Some(3),
                    port: 8000,
                },
            ),
            (
                "vsock:8000",
                Addr::Vsock {
                    cid: None,
                    port: 8000,
                },
            ),
            (
                "hybrid:/tmp/vm.vsock:5005",
                Addr::Hybrid {
                    uds: "/tmp/vm.vsock".into(),
                    port: 5005,
                },
            ),
            (
                "uds:/tmp/d:7",
                Addr::UnixDir {
                    dir: "/tmp/d".into(),
                    port: 7,
                },
            ),
            (
                "uds:/tmp/nbd.sock",
                Addr::Unix {
                    path: "/tmp/nbd.sock".into(),
                },
            ),
            (
                "uds:/tmp/a:b",
                Addr::Unix {
                    path: "/tmp/a:b".into(),
                },
            ),
            (
                "tcp:127.0.0.1:80",
                Addr::Tcp {
                    addr: "127.0.0.1:80".into(),
                },
            ),
            (
                "tcp:[::1]:443",
                Addr::Tcp {
                    addr: "[::1]:443".into(),
                },
            ),
            (
                "tcp:localhost:0",
                Addr::Tcp {
                    addr: "localhost:0".into(),
                },
            ),
        ];
        for (s, want) in cases {
            let got: Addr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string(), s, "{s}");
        }
    }

    #[test]
    fn parse_errors() {
        for s in [
            "",
            "vsock",
            "vsock:",
            "vsock:x:1",
            "vsock:1:",
            "vsock:1:99999999999",
            "vsock:-1:5",
            "hybrid:/x",
            "hybrid::5",
            "hybrid:/x:y",
            "uds:",
            "uds::5",
            "tcp:1.2.3.4",
            "tcp::80",
            "tcp:h:65536",
            "udp:1.2.3.4:5",
        ] {
            assert!(s.parse::<Addr>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn paths_and_ports() {
        let h: Addr = "hybrid:/run/vm.vsock:9000".parse().unwrap();
        assert_eq!(
            h.listen_path().unwrap(),
            PathBuf::from("/run/vm.vsock_9000")
        );
        assert_eq!(h.connect_path().unwrap(), PathBuf::from("/run/vm.vsock"));
        let d: Addr = "uds:/run/x:5".parse().unwrap();
        assert_eq!(d.listen_path().unwrap(), PathBuf::from("/run/x/5.sock"));
        assert_eq!(d.with_port(6).unwrap().port(), Some(6));
        let t: Addr = "tcp:[::1]:80".parse().unwrap();
        assert_eq!(t.with_port(81).unwrap().to_string(), "tcp:[::1]:81");
        assert!("uds:/x".parse::<Addr>().unwrap().with_port(1).is_err());
        assert!(t.with_port(70000).is_err());
    }

    #[test]
    fn cmdline_cid() {
        assert_eq!(parent_cid_from_cmdline("a nitro_parent_cid=2 b"), Some(2));
        assert_eq!(
            parent_cid_from_cmdline("nitro_parent_cid=2 nitro_parent_cid=5"),
            Some(5)
        );
        assert_eq!(parent_cid_from_cmdline("nitro.parent_cid=2"), None);
        assert_eq!(parent_cid_from_cmdline("nitro_parent_cid=x"), None);
        assert_eq!(parent_cid_from_cmdline(""), None);
    }
}
