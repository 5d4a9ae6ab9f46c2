//! rtnetlink messages for bringing an interface up, as pure functions over bytes (the two
//! messages needed: `RTM_GETLINK`, `RTM_NEWLINK` with `IFF_UP`). Only
//! [`crate::netlink::set_link_up`] touches a socket.

use crate::ProtocolError;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;
/// `RTM_GETLINK`.
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `IFF_UP`.
pub const IFF_UP: u32 = 1;

/// A netlink request this module sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkRequest {
    /// `RTM_GETLINK` for one interface.
    Get,
    /// `RTM_NEWLINK` setting `IFF_UP`, with an acknowledgement.
    SetUp,
}

/// Encodes a request about interface `index` (native byte order, as netlink wants).
pub fn encode_link_request(req: LinkRequest, seq: u32, index: u32) -> Vec<u8> {
    let (ty, flags, ifi_flags, change) = match req {
        LinkRequest::Get => (RTM_GETLINK, NLM_F_REQUEST, 0, 0),
        LinkRequest::SetUp => (RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, IFF_UP, IFF_UP),
    };
    let len = (NLMSG_HDRLEN + IFINFOMSG_LEN) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.push(0); // ifi_family AF_UNSPEC
    m.push(0); // padding
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&index.to_ne_bytes()); // ifi_index (int, same bytes for valid values)
    m.extend_from_slice(&ifi_flags.to_ne_bytes());
    m.extend_from_slice(&change.to_ne_bytes());
    m
}

/// A netlink answer, as far as this module cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkReply {
    /// `NLMSG_ERROR` with error 0: the request was applied.
    Ack,
    /// `NLMSG_ERROR` with this (positive) errno.
    Errno(i32),
    /// A link description: its index and `ifi_flags`.
    Link {
        /// Interface index.
        index: u32,
        /// `IFF_*` flags.
        flags: u32,
    },
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// Finds the answer to request `seq` in a datagram of netlink messages.
pub fn parse_link_reply(mut buf: &[u8], seq: u32) -> Result<Option<LinkReply>, ProtocolError> {
    let bad = |r: &str| ProtocolError::malformed("netlink message", r.to_owned());
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(bad("truncated header"));
        }
        let len = ne_u32(&buf[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad("length out of range"));
        }
        let ty = ne_u16(&buf[4..6]);
        let mseq = ne_u32(&buf[8..12]);
        let payload = &buf[NLMSG_HDRLEN..len];
        if mseq == seq {
            match ty {
                NLMSG_ERROR => {
                    if payload.len() < 4 {
                        return Err(bad("truncated error"));
                    }
                    let err = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return Ok(Some(if err == 0 {
                        LinkReply::Ack
                    } else {
                        LinkReply::Errno(err.checked_neg().unwrap_or(i32::MAX))
                    }));
                }
                RTM_NEWLINK => {
                    if payload.len() < IFINFOMSG_LEN {
                        return Err(bad("truncated ifinfomsg"));
                    }
                    return Ok(Some(LinkReply::Link {
                        index: ne_u32(&payload[4..8]),
                        flags: ne_u32(&payload[8..12]),
                    }));
                }
                NLMSG_DONE => return Ok(None),
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_parse() {
        let m = encode_link_request(LinkRequest::SetUp, 7, 1);
        assert_eq!(m.len(), 32);
        assert_eq!(ne_u32(&m[0..4]), 32);
        assert_eq!(ne_u16(&m[4..6]), RTM_NEWLINK);
        // An acknowledgement: NLMSG_ERROR, error 0, then the original header.
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&7u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&m[..16]);
        assert_eq!(parse_link_reply(&ack, 7), Ok(Some(LinkReply::Ack)));
        assert_eq!(parse_link_reply(&ack, 8), Ok(None));
        let mut eperm = ack.clone();
        eperm[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse_link_reply(&eperm, 7), Ok(Some(LinkReply::Errno(1))));
        let mut link = m.clone();
        link[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        link[24..28].copy_from_slice(&(IFF_UP | 8).to_ne_bytes());
        assert_eq!(
            parse_link_reply(&link, 7),
            Ok(Some(LinkReply::Link {
                index: 1,
                flags: IFF_UP | 8
            }))
        );
        for bad in [&ack[..10], &ack[..20]] {
            assert!(parse_link_reply(bad, 7).is_err());
        }
        let mut huge = ack.clone();
        huge[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_link_reply(&huge, 7).is_err());
    }
}
