//! The tunnel wire protocol and the hybrid vsock control lines, as pure functions over bytes.
//!
//! # Tunnel protocol, version 1
//!
//! One tunnel connection carries one request from the enclave, one response from the parent,
//! and then (after a successful `CONNECT`) raw bytes in both directions until each side shuts
//! down its write half. All integers are big-endian.
//!
//! ```text
//! request  = "NT" version:u8 kind:u8 len:u16 body[len]            (len <= 512)
//! response = "NT" version:u8 kind:u8 status:u8 len:u16 body[len]  (len <= 1024)
//!
//! kind 1 CONNECT  request body:  port:u16 host_len:u8 host[host_len]   (host_len = len - 3)
//!                 status 0 body: family:u8 (4|6) address[4|16] port:u16 (the address the
//!                                parent connected to)
//! kind 2 TIME     request body:  nonce:u64
//!                 status 0 body: nonce:u64 unix_seconds:i64 nanoseconds:u32 (< 10^9)
//! kind 3 DNS      request body:  one DNS query message (1..=512 bytes, as sent over UDP)
//!                 status 0 body: the DNS answer (len <= 4096, the only response allowed
//!                                beyond 1024 bytes)
//! status != 0     body: UTF-8 reason; status is a [`RefusalCode`] wire value
//! ```
//!
//! The parent answers a request it cannot parse with a refusal (`BadRequest`,
//! `UnsupportedVersion`, `NotSupported`) and closes; it never leaves the enclave waiting.
//!
//! # Hybrid vsock
//!
//! The host reaches guest port `P` by connecting to the backend's Unix socket and sending
//! `CONNECT P\n`; the backend answers `OK N\n` (Firecracker sends its host-side port, vhost-device-vsock
//! echoes `P`: the number is ignored) and the socket then carries the stream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{ProtocolError, Refusal, RefusalCode};

/// First two bytes of every tunnel message.
pub const MAGIC: [u8; 2] = *b"NT";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 512;
/// Largest response body accepted.
pub const MAX_RESPONSE_BODY: usize = 1024;
/// Request header length.
pub const REQUEST_HEADER_LEN: usize = 6;
/// Response header length.
pub const RESPONSE_HEADER_LEN: usize = 7;
/// Largest host name in a `CONNECT` request.
pub const MAX_HOST_LEN: usize = 255;
/// Longest hybrid vsock control line, newline included.
pub const HYBRID_LINE_MAX: usize = 32;

/// Message kind byte of a `CONNECT` request.
pub const KIND_CONNECT: u8 = 1;
/// Message kind byte of a `TIME` request.
pub const KIND_TIME: u8 = 2;
/// Message kind byte of a `DNS` request (a query forwarded to the parent's resolver).
pub const KIND_DNS: u8 = 3;
/// Largest DNS answer body accepted in a response.
pub const MAX_DNS_RESPONSE_BODY: usize = 4096;

/// Largest response body accepted for a response of this kind.
pub fn max_response_body(kind: u8) -> usize {
    if kind == KIND_DNS {
        MAX_DNS_RESPONSE_BODY
    } else {
        MAX_RESPONSE_BODY
    }
}

/// A request from the enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Open a TCP connection to `host:port` (a name or an IP literal) and relay.
    Connect {
        /// Host name or IP literal, as the application gave it.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Tell the time.
    Time {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Forward one DNS query (wire format) to the parent's resolver. The parent checks the
    /// question against its policy first.
    Dns {
        /// The query message.
        message: Vec<u8>,
    },
}

/// The parent's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// The `CONNECT` succeeded; relaying starts with the next byte.
    Connected {
        /// The destination address the parent connected to.
        peer: SocketAddr,
    },
    /// The time on the parent when it answered.
    Time {
        /// The request's nonce.
        nonce: u64,
        /// Seconds since the Unix epoch.
        unix_seconds: i64,
        /// Nanoseconds within the second (< 10^9).
        nanos: u32,
    },
    /// The resolver's answer to a `DNS` request (wire format, not validated here).
    Dns {
        /// The answer message.
        message: Vec<u8>,
    },
    /// The request was refused.
    Refused {
        /// Kind byte of the refused request ([`KIND_CONNECT`], [`KIND_TIME`], or whatever the
        /// enclave sent).
        kind: u8,
        /// Code and reason.
        refusal: Refusal,
    },
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// What [`decode_request_header`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestHeader {
    /// Protocol version.
    pub version: u8,
    /// Kind byte.
    pub kind: u8,
    /// Body length.
    pub len: usize,
}

/// Decodes a request header: `Ok(None)` when fewer than [`REQUEST_HEADER_LEN`] bytes are there.
/// Checks the magic and the length limit, not the version (so that a parent can answer
/// `UnsupportedVersion` to a newer enclave).
pub fn decode_request_header(buf: &[u8]) -> Result<Option<RequestHeader>, ProtocolError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if buf.len() < REQUEST_HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(be16(&buf[4..6]));
    if len > MAX_REQUEST_BODY {
        return Err(ProtocolError::TooLong {
            what: "tunnel request",
            len,
            max: MAX_REQUEST_BODY,
        });
    }
    Ok(Some(RequestHeader {
        version: buf[2],
        kind: buf[3],
        len,
    }))
}

impl Request {
    /// Decodes one request from the front of `buf`: `Ok(None)` if more bytes are needed,
    /// else the request and the number of bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
        let Some(h) = decode_request_header(buf)? else {
            return Ok(None);
        };
        if h.version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(h.version));
        }
        let total = REQUEST_HEADER_LEN + h.len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[REQUEST_HEADER_LEN..total];
        let req = match h.kind {
            KIND_CONNECT => {
                if body.len() < 3 {
                    return Err(ProtocolError::malformed(
                        "CONNECT request",
                        "body too short",
                    ));
                }
                let port = be16(&body[..2]);
                let host_len = usize::from(body[2]);
                if host_len != body.len() - 3 {
                    return Err(ProtocolError::malformed(
                        "CONNECT request",
                        format!(
                            "host length {host_len} does not match the body ({} bytes left)",
                            body.len() - 3
                        ),
                    ));
                }
                if host_len == 0 {
                    return Err(ProtocolError::malformed("CONNECT request", "empty host"));
                }
                let host = std::str::from_utf8(&body[3..]).map_err(|_| {
                    ProtocolError::malformed("CONNECT request", "host is not UTF-8")
                })?;
                Request::Connect {
                    host: host.to_owned(),
                    port,
                }
            }
            KIND_TIME => {
                if body.len() != 8 {
                    return Err(ProtocolError::malformed(
                        "TIME request",
                        format!("body is {} bytes, expected 8", body.len()),
                    ));
                }
                Request::Time { nonce: be64(body) }
            }
            KIND_DNS => {
                if body.is_empty() {
                    return Err(ProtocolError::malformed("DNS request", "empty query"));
                }
                Request::Dns {
                    message: body.to_vec(),
                }
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        Ok(Some((req, total)))
    }

    /// The request's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Connect { .. } => KIND_CONNECT,
            Request::Time { .. } => KIND_TIME,
            Request::Dns { .. } => KIND_DNS,
        }
    }

    /// Encodes the request. Fails only for a host longer than [`MAX_HOST_LEN`] or empty, or a
    /// DNS query empty or longer than [`MAX_REQUEST_BODY`].
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut body = Vec::with_capacity(16);
        match self {
            Request::Connect { host, port } => {
                let hb = host.as_bytes();
                if hb.is_empty() || hb.len() > MAX_HOST_LEN {
                    return Err(ProtocolError::TooLong {
                        what: "host name",
                        len: hb.len(),
                        max: MAX_HOST_LEN,
                    });
                }
                body.extend_from_slice(&port.to_be_bytes());
                body.push(u8::try_from(hb.len()).unwrap_or(u8::MAX));
                body.extend_from_slice(hb);
            }
            Request::Time { nonce } => body.extend_from_slice(&nonce.to_be_bytes()),
            Request::Dns { message } => {
                if message.is_empty() || message.len() > MAX_REQUEST_BODY {
                    return Err(ProtocolError::TooLong {
                        what: "DNS query",
                        len: message.len(),
                        max: MAX_REQUEST_BODY,
                    });
                }
                body.extend_from_slice(message);
            }
        }
        let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind());
        out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

impl Response {
    /// Decodes one response from the front of `buf`: `Ok(None)` if more bytes are needed,
    /// else the response and the number of bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Response, usize)>, ProtocolError> {
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        if buf.len() < RESPONSE_HEADER_LEN {
            return Ok(None);
        }
        let version = buf[2];
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let kind = buf[3];
        let status = buf[4];
        let len = usize::from(be16(&buf[5..7]));
        let max = max_response_body(kind);
        if len > max {
            return Err(ProtocolError::TooLong {
                what: "tunnel response",
                len,
                max,
            });
        }
        let total = RESPONSE_HEADER_LEN + len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[RESPONSE_HEADER_LEN..total];
        if status != 0 {
            let message = String::from_utf8_lossy(body).into_owned();
            return Ok(Some((
                Response::Refused {
                    kind,
                    refusal: Refusal::new(RefusalCode::from_u8(status), message),
                },
                total,
            )));
        }
        let resp = match kind {
            KIND_CONNECT => Response::Connected {
                peer: decode_socket_addr(body)?,
            },
            KIND_TIME => {
                if body.len() != 20 {
                    return Err(ProtocolError::malformed(
                        "TIME response",
                        format!("body is {} bytes, expected 20", body.len()),
                    ));
                }
                let nonce = be64(&body[..8]);
                let unix_seconds = i64::from_be_bytes(be64(&body[8..16]).to_be_bytes());
                let nanos = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
                if nanos >= 1_000_000_000 {
                    return Err(ProtocolError::malformed(
                        "TIME response",
                        format!("nanoseconds {nanos} out of range"),
                    ));
                }
                Response::Time {
                    nonce,
                    unix_seconds,
                    nanos,
                }
            }
            KIND_DNS => Response::Dns {
                message: body.to_vec(),
            },
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        Ok(Some((resp, total)))
    }

    /// Encodes the response (a refusal's reason is cut to [`MAX_RESPONSE_BODY`] bytes on a
    /// character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, status, body) = match self {
            Response::Connected { peer } => (KIND_CONNECT, 0, encode_socket_addr(peer)),
            Response::Time {
                nonce,
                unix_seconds,
                nanos,
            } => {
                let mut b = Vec::with_capacity(20);
                b.extend_from_slice(&nonce.to_be_bytes());
                b.extend_from_slice(&unix_seconds.to_be_bytes());
                b.extend_from_slice(&nanos.to_be_bytes());
                (KIND_TIME, 0, b)
            }
            Response::Dns { message } => {
                // An answer too long for the limit is cut (the enclave rejects it as malformed
                // DNS); the parent truncates properly before this.
                let n = message.len().min(MAX_DNS_RESPONSE_BODY);
                (KIND_DNS, 0, message[..n].to_vec())
            }
            Response::Refused { kind, refusal } => {
                let mut msg = refusal.message.as_str();
                if msg.len() > MAX_RESPONSE_BODY {
                    let mut end = MAX_RESPONSE_BODY;
                    while !msg.is_char_boundary(end) {
                        end -= 1;
                    }
                    msg = &msg[..end];
                }
                // Status 0 means success: a refusal always carries a non-zero code.
                let status = match refusal.code.to_u8() {
                    0 => RefusalCode::Internal.to_u8(),
                    s => s,
                };
                (*kind, status, msg.as_bytes().to_vec())
            }
        };
        let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.push(status);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

fn encode_socket_addr(a: &SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(19);
    match a.ip() {
        IpAddr::V4(ip) => {
            b.push(4);
            b.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.push(6);
            b.extend_from_slice(&ip.octets());
        }
    }
    b.extend_from_slice(&a.port().to_be_bytes());
    b
}

fn decode_socket_addr(b: &[u8]) -> Result<SocketAddr, ProtocolError> {
    let bad = |r: &str| ProtocolError::malformed("CONNECT response address", r.to_owned());
    match b.first() {
        Some(4) if b.len() == 7 => Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
            be16(&b[5..7]),
        )),
        Some(6) if b.len() == 19 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(o)),
                be16(&b[17..19]),
            ))
        }
        Some(4 | 6) => Err(bad("wrong length")),
        Some(_) => Err(bad("unknown address family")),
        None => Err(bad("missing")),
    }
}

/// The line the host sends to reach guest port `port` through a hybrid vsock backend.
pub fn hybrid_connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

fn hybrid_number(line: &[u8], prefix: &[u8], what: &'static str) -> Result<u32, ProtocolError> {
    if line.len() > HYBRID_LINE_MAX {
        return Err(ProtocolError::TooLong {
            what,
            len: line.len(),
            max: HYBRID_LINE_MAX,
        });
    }
    let Some(rest) = line.strip_prefix(prefix) else {
        return Err(ProtocolError::malformed(
            what,
            format!(
                "expected {:?}, got {:?}",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(line)
            ),
        ));
    };
    let Some(num) = rest.strip_suffix(b"\n") else {
        return Err(ProtocolError::malformed(what, "no terminating newline"));
    };
    let num = num.strip_suffix(b"\r").unwrap_or(num);
    if num.is_empty() || num.len() > 10 || !num.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::malformed(
            what,
            format!("{:?} is not a port number", String::from_utf8_lossy(num)),
        ));
    }
    num.iter()
        .try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or_else(|| ProtocolError::malformed(what, "port number does not fit in 32 bits"))
}

/// Parses the backend's `OK <n>\n` answer (newline included) and returns `n`.
pub fn parse_hybrid_ok(line: &[u8]) -> Result<u32, ProtocolError> {
    hybrid_number(line, b"OK ", "hybrid vsock reply line")
}

/// Parses a `CONNECT <port>\n` line (newline included), as a hybrid vsock backend receives it.
pub fn parse_hybrid_connect(line: &[u8]) -> Result<u32, ProtocolError> {
    hybrid_number(line, b"CONNECT ", "hybrid vsock CONNECT line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_incomplete() {
        let reqs = [
            Request::Connect {
                host: "kms.us-east-1.amazonaws.com".into(),
                port: 443,
            },
            Request::Connect {
                host: "::1".into(),
                port: 1,
            },
            Request::Time { nonce: u64::MAX },
            Request::Dns {
                message: vec![0xab; MAX_REQUEST_BODY],
            },
        ];
        for r in reqs {
            let b = r.encode().unwrap();
            for cut in 0..b.len() {
                assert_eq!(Request::decode(&b[..cut]), Ok(None), "{r:?} cut at {cut}");
            }
            let mut extra = b.clone();
            extra.extend_from_slice(b"payload");
            assert_eq!(Request::decode(&extra), Ok(Some((r.clone(), b.len()))));
        }
    }

    #[test]
    fn request_errors() {
        let ok = Request::Connect {
            host: "a".into(),
            port: 80,
        }
        .encode()
        .unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), "magic"),
            (b"N".to_vec(), "incomplete"),
            (
                {
                    let mut b = ok.clone();
                    b[2] = 2;
                    b
                },
                "version",
            ),
            (
                {
                    let mut b = ok.clone();
                    b[3] = 9;
                    b
                },
                "kind",
            ),
            (vec![b'N', b'T', 1, 1, 0xff, 0xff], "too long"),
            (vec![b'N', b'T', 1, 1, 0, 2, 0, 80], "short body"),
            (
                vec![b'N', b'T', 1, 1, 0, 4, 0, 80, 5, b'a'],
                "host len mismatch",
            ),
            (vec![b'N', b'T', 1, 1, 0, 3, 0, 80, 0], "empty host"),
            (vec![b'N', b'T', 1, 1, 0, 4, 0, 80, 1, 0xff], "utf8"),
            (vec![b'N', b'T', 1, 2, 0, 4, 0, 0, 0, 0], "time body"),
            (vec![b'N', b'T', 1, 3, 0, 0], "empty dns"),
        ];
        for (b, what) in cases {
            let r = Request::decode(&b);
            if what == "incomplete" {
                assert_eq!(r, Ok(None));
            } else {
                assert!(r.is_err(), "{what}: {r:?}");
            }
        }
        assert!(
            Request::Connect {
                host: "x".repeat(256),
                port: 1
            }
            .encode()
            .is_err()
        );
        assert!(
            Request::Connect {
                host: String::new(),
                port: 1
            }
            .encode()
            .is_err()
        );
    }

    #[test]
    fn response_round_trip() {
        let rs = [
            Response::Connected {
                peer: "10.1.2.3:443".parse().unwrap(),
            },
            Response::Connected {
                peer: "[2001:db8::1]:8443".parse().unwrap(),
            },
            Response::Time {
                nonce: 7,
                unix_seconds: -5,
                nanos: 999_999_999,
            },
            Response::Refused {
                kind: KIND_CONNECT,
                refusal: Refusal::new(RefusalCode::DeniedByPolicy, "deny[0] cidr 169.254.0.0/16"),
            },
            Response::Dns {
                message: vec![7; MAX_DNS_RESPONSE_BODY],
            },
        ];
        for r in rs {
            let b = r.encode();
            for cut in 0..b.len() {
                assert_eq!(Response::decode(&b[..cut]), Ok(None));
            }
            assert_eq!(Response::decode(&b), Ok(Some((r.clone(), b.len()))));
        }
        let long = Response::Refused {
            kind: 1,
            refusal: Refusal::new(RefusalCode::Internal, "é".repeat(1000)),
        }
        .encode();
        let (r, _) = Response::decode(&long).unwrap().unwrap();
        let Response::Refused { refusal, .. } = r else {
            panic!()
        };
        assert!(
            refusal.message.len() <= MAX_RESPONSE_BODY && refusal.message.chars().all(|c| c == 'é')
        );
    }

    #[test]
    fn response_errors() {
        for b in [
            vec![b'N', b'T', 1, 2, 0, 0, 3, 1, 2, 3],
            vec![b'N', b'T', 1, 1, 0, 0, 2, 4, 1],
            vec![b'N', b'T', 1, 1, 0, 0, 1, 9],
            vec![b'N', b'T', 1, 7, 0, 0, 0],
            vec![b'N', b'T', 9, 1, 0, 0, 0],
            vec![b'N', b'T', 1, 1, 1, 0xff, 0xff],
            vec![b'N', b'T', 1, 1, 0, 0x04, 0x01],
            vec![b'N', b'T', 1, 3, 0, 0x10, 0x01],
            vec![b'X', b'T', 1, 1, 1, 0, 0],
            {
                let mut b = Response::Time {
                    nonce: 1,
                    unix_seconds: 1,
                    nanos: 0,
                }
                .encode();
                b[RESPONSE_HEADER_LEN + 16] = 0xff;
                b
            },
        ] {
            assert!(Response::decode(&b).is_err(), "{b:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any encodable request decodes to itself, whatever follows it and however the bytes
        /// are cut.
        #[test]
        fn requests_round_trip(host in "\\PC{1,60}", port in proptest::prelude::any::<u16>(), tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32)) {
            let r = Request::Connect { host, port };
            if let Ok(b) = r.encode() {
                let mut with_tail = b.clone();
                with_tail.extend_from_slice(&tail);
                proptest::prop_assert_eq!(Request::decode(&with_tail), Ok(Some((r, b.len()))));
                proptest::prop_assert_eq!(Request::decode(&b[..b.len() - 1]), Ok(None));
            }
        }

        /// Arbitrary bytes never panic the decoders, and what decodes re-encodes identically.
        #[test]
        fn decoders_are_total(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&b);
            if let Ok(Some((r, used))) = Request::decode(&framed) {
                proptest::prop_assert_eq!(r.encode().ok(), Some(framed[..used].to_vec()));
            }
            let _ = Response::decode(&framed);
            let _ = parse_hybrid_ok(&b);
        }
    }

    #[test]
    fn hybrid_lines() {
        assert_eq!(hybrid_connect_line(5005), "CONNECT 5005\n");
        assert_eq!(parse_hybrid_ok(b"OK 5005\n"), Ok(5005));
        assert_eq!(parse_hybrid_ok(b"OK 1073741824\r\n"), Ok(1 << 30));
        assert_eq!(parse_hybrid_connect(b"CONNECT 42\n"), Ok(42));
        for bad in [
            &b"OK\n"[..],
            b"OK 5005",
            b"ok 5005\n",
            b"OK -1\n",
            b"OK 99999999999\n",
            b"OK 4294967296\n",
            b"OK 1 2\n",
            b"ERR\n",
            b"",
            b"OK 000000000000000000000000000000001\n",
        ] {
            assert!(parse_hybrid_ok(bad).is_err(), "{bad:?}");
        }
        assert!(parse_hybrid_connect(b"CONNECT x\n").is_err());
    }
}
