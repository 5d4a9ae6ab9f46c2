//! `sd_notify`: the datagram systemd reads from `$NOTIFY_SOCKET` (`READY=1`, `STOPPING=1`,
//! `STATUS=...`) for `Type=notify` units.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::error::Error;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyAddr {
    /// A socket file.
    Path(std::path::PathBuf),
    /// A Linux abstract-namespace socket (`@name` in the variable).
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parses the value of `NOTIFY_SOCKET` (`/path` or `@abstract`); `None` for anything else.
    ///
    /// ```
    /// use nitro_parentd::notify::NotifyAddr;
    /// assert_eq!(NotifyAddr::parse("@sd"), Some(NotifyAddr::Abstract(b"sd".to_vec())));
    /// assert_eq!(NotifyAddr::parse("/run/systemd/notify"), Some(NotifyAddr::Path("/run/systemd/notify".into())));
    /// assert_eq!(NotifyAddr::parse("vsock:2:9"), None);
    /// ```
    pub fn parse(value: &str) -> Option<NotifyAddr> {
        if let Some(name) = value.strip_prefix('@') {
            Some(NotifyAddr::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Some(NotifyAddr::Path(value.into()))
        } else {
            None
        }
    }

    fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            NotifyAddr::Path(p) => SocketAddr::from_pathname(p),
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
        }
    }
}

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`. Returns `false` without doing
/// anything when the variable is not set (not started by systemd).
pub fn notify(state: &str) -> Result<bool, Error> {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let Some(addr) = value.to_str().and_then(NotifyAddr::parse) else {
        return Ok(false);
    };
    notify_to(&addr, state).map(|()| true)
}

/// Sends `state` to `addr`.
pub fn notify_to(addr: &NotifyAddr, state: &str) -> Result<(), Error> {
    let ctx = || format!("sd_notify {state:?} to {addr:?}");
    let sock = UnixDatagram::unbound().map_err(|e| Error::io(ctx(), e))?;
    let a = addr.socket_addr().map_err(|e| Error::io(ctx(), e))?;
    sock.send_to_addr(state.as_bytes(), &a)
        .map_err(|e| Error::io(ctx(), e))?;
    Ok(())
}
