//! Bringing a network interface up through rtnetlink: an enclave boots with `lo` down, and
//! the local proxies, the DNS server and the transparent proxy listen on loopback.
//!
//! [`loopback_up`] is what an enclave's init (or the application, when it runs as PID 1 or
//! has `CAP_NET_ADMIN`) calls once at start:
//!
//! ```no_run
//! // Idempotent: `false` when `lo` was already up.
//! let changed = nitro_net::netlink::loopback_up()?;
//! # let _ = changed;
//! # Ok::<(), nitro_net::Error>(())
//! ```

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

use crate::internal::netlink::{
    IFF_UP, LinkReply, LinkRequest, encode_link_request, parse_link_reply,
};
use crate::{Error, ProtocolError};

struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl, Error> {
        let ctx = |e: nix::Error| Error::io("netlink socket", std::io::Error::from(e));
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(ctx)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(ctx)?;
        let tv = nix::sys::time::TimeVal::new(2, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(ctx)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    fn call(&mut self, req: LinkRequest, index: u32) -> Result<LinkReply, Error> {
        self.seq += 1;
        let seq = self.seq;
        let msg = encode_link_request(req, seq, index);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())
            .map_err(|e| Error::io("netlink send", e.into()))?;
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| Error::io("netlink receive", e.into()))?;
            if let Some(r) = parse_link_reply(&buf[..n], seq)? {
                return Ok(r);
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::timeout("netlink answer", Duration::from_secs(2)));
            }
        }
    }
}

/// Brings interface `name` up if it is down. Returns whether it changed anything. Needs
/// `CAP_NET_ADMIN` (PID 1 in an enclave has it) when the interface is down.
pub fn set_link_up(name: &str) -> Result<bool, Error> {
    let index = nix::net::if_::if_nametoindex(name)
        .map_err(|e| Error::io(format!("interface {name:?}"), e.into()))?;
    let mut nl = Rtnl::open()?;
    match nl.call(LinkRequest::Get, index)? {
        LinkReply::Link { flags, .. } if flags & IFF_UP != 0 => return Ok(false),
        LinkReply::Link { .. } => {}
        LinkReply::Errno(e) => {
            return Err(Error::io(
                format!("RTM_GETLINK {name}"),
                std::io::Error::from_raw_os_error(e),
            ));
        }
        LinkReply::Ack => {}
    }
    match nl.call(LinkRequest::SetUp, index)? {
        LinkReply::Ack => {
            tracing::info!(interface = name, "interface brought up");
            Ok(true)
        }
        LinkReply::Errno(e) => Err(Error::io(
            format!("bringing {name} up"),
            std::io::Error::from_raw_os_error(e),
        )),
        LinkReply::Link { .. } => {
            Err(ProtocolError::malformed("netlink message", "expected an acknowledgement").into())
        }
    }
}

/// Brings the loopback interface `lo` up if it is down (the Linux kernel then assigns
/// `127.0.0.1/8` and `::1` itself). Returns whether it changed anything.
pub fn loopback_up() -> Result<bool, Error> {
    set_link_up("lo")
}
