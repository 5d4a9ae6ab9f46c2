//! Host canonicalisation: names (case, trailing dot, IDNA) and IP literals in every spelling.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::PolicyError;

/// A destination host after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Host {
    /// A DNS name in canonical ASCII form (lower case, no trailing dot, IDNA-encoded).
    Name(String),
    /// An IP address in canonical form (IPv4-mapped and IPv4-compatible IPv6 become IPv4).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Normalises a host as an application wrote it: an IP literal in any spelling (see the
/// documentation of [`Policy`](crate::Policy)) or a DNS name.
///
/// ```
/// use nitro_net::internal::{Host, normalize_host};
/// use std::net::{IpAddr, Ipv4Addr};
///
/// let meta = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
/// for spelling in ["169.254.169.254", "2852039166", "0251.0376.0251.0376", "0xa9.0xfe.0xa9fe",
///                  "[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "169.254.43518"] {
///     assert_eq!(normalize_host(spelling)?, Host::Ip(meta), "{spelling}");
/// }
/// assert_eq!(normalize_host("KMS.us-east-1.AmazonAWS.com.")?,
///            Host::Name("kms.us-east-1.amazonaws.com".into()));
/// assert_eq!(normalize_host("bücher.example")?, Host::Name("xn--bcher-kva.example".into()));
/// assert!(normalize_host("evil.com/x").is_err());
/// # Ok::<(), nitro_net::PolicyError>(())
/// ```
pub fn normalize_host(input: &str) -> Result<Host, PolicyError> {
    let invalid = |reason: &str| PolicyError::InvalidHost {
        pattern: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.is_empty() {
        return Err(invalid("empty"));
    }
    if input.len() > 1024 {
        return Err(invalid("longer than 1024 bytes"));
    }
    let bracketed = input.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
    if let Some(inner) = bracketed {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))))
            .map_err(|_| {
                invalid("not an IPv6 address between brackets (zone ids are not accepted)")
            });
    }
    if input.contains(':') {
        return input
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(canonical_ip(IpAddr::V6(ip))))
            .map_err(|_| invalid("contains ':' but is not an IPv6 address"));
    }
    // UTS 46 mapping first: it folds case, full-width digits and dots, so an IPv4 address
    // spelled with them is recognised as one below.
    let ascii = idna::uts46::Uts46::new()
        .to_ascii(
            input.as_bytes(),
            idna::uts46::AsciiDenyList::URL,
            idna::uts46::Hyphens::Allow,
            idna::uts46::DnsLength::Ignore,
        )
        .map_err(|_| invalid("not a valid internationalised domain name"))?;
    // One trailing dot (the DNS root) is dropped; after mapping, so that an ideographic full
    // stop counts too.
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() {
        return Err(invalid("empty"));
    }
    if ends_in_number(ascii) {
        return parse_ipv4_spelling(ascii)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| invalid("ends in a number but is not a valid IPv4 address"));
    }
    validate_dns_name(ascii).map_err(|r| invalid(&r))?;
    Ok(Host::Name(ascii.to_owned()))
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{} bytes long, above 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} longer than 63 bytes"));
        }
        if let Some(c) = label
            .bytes()
            .find(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_'))
        {
            return Err(format!(
                "character {:?} not allowed in a host name",
                char::from(c)
            ));
        }
    }
    Ok(())
}

/// WHATWG URL "ends in a number": the last label is all digits or `0x` + hex digits. Such a
/// host must be an IPv4 address or is invalid (resolvers would take it as one).
fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// Parses the IPv4 spellings `inet_aton(3)` and URL parsers accept: one to four parts, each
/// decimal, octal (leading `0`) or hexadecimal (`0x`), the last part filling the remaining bytes.
///
/// ```
/// use nitro_net::internal::parse_ipv4_spelling;
/// use std::net::Ipv4Addr;
/// assert_eq!(parse_ipv4_spelling("127.1"), Some(Ipv4Addr::LOCALHOST));
/// assert_eq!(parse_ipv4_spelling("0x7f000001"), Some(Ipv4Addr::LOCALHOST));
/// assert_eq!(parse_ipv4_spelling("017700000001"), Some(Ipv4Addr::LOCALHOST));
/// assert_eq!(parse_ipv4_spelling("1.2.3.256"), None);
/// ```
pub fn parse_ipv4_spelling(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        nums.push(parse_ipv4_part(p)?);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let shift = 8 * (4 - head.len() as u32);
    let limit: u64 = if shift >= 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << shift) - 1
    };
    if *last > limit {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (8 * (3 - i as u32));
    }
    v |= last;
    u32::try_from(v).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero for inet_aton and URL parsers.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 32 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Canonical form of an address for matching: IPv4-mapped (`::ffff:a.b.c.d`) and
/// IPv4-compatible (`::a.b.c.d`, except `::` and `::1`) IPv6 addresses become IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    #[test]
    fn ipv4_spellings() {
        let lo = Some(Ipv4Addr::LOCALHOST);
        let table: &[(&str, Option<Ipv4Addr>)] = &[
            ("127.0.0.1", lo),
            ("127.1", lo),
            ("127.0.1", lo),
            ("2130706433", lo),
            ("0x7f000001", lo),
            ("0X7F000001", lo),
            ("017700000001", lo),
            ("0177.0.0.1", lo),
            ("0x7f.0.0.1", lo),
            ("0x7f.1", lo),
            ("0x7f.0x0.0x0.0x1", lo),
            ("127.0.0.01", lo),
            ("0", Some(Ipv4Addr::UNSPECIFIED)),
            ("0x", Some(Ipv4Addr::UNSPECIFIED)),
            ("4294967295", Some(Ipv4Addr::BROADCAST)),
            ("4294967296", None),
            ("1.2.3.256", None),
            ("1.2.65536", None),
            ("1.16777216", None),
            ("256.1", None),
            ("1.2.3.4.5", None),
            ("08", None),
            ("0x1g", None),
            ("1..2", None),
            ("", None),
            ("1.2.3.", None),
            ("99999999999999999999999999999999999999", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_ipv4_spelling(s), *want, "{s:?}");
        }
    }

    #[test]
    fn host_normalisation() {
        let meta = Host::Ip(v4("169.254.169.254"));
        let table: &[(&str, Result<Host, ()>)] = &[
            ("169.254.169.254", Ok(meta.clone())),
            ("169.254.169.254.", Ok(meta.clone())),
            ("2852039166", Ok(meta.clone())),
            ("0xA9FEA9FE", Ok(meta.clone())),
            ("0251.0376.0251.0376", Ok(meta.clone())),
            ("169.254.43518", Ok(meta.clone())),
            ("::ffff:169.254.169.254", Ok(meta.clone())),
            ("[::ffff:a9fe:a9fe]", Ok(meta.clone())),
            ("::169.254.169.254", Ok(meta.clone())),
            ("[0:0:0:0:0:ffff:169.254.169.254]", Ok(meta.clone())),
            ("１６９．２５４．１６９．２５４", Ok(meta.clone())),
            ("::1", Ok(Host::Ip("::1".parse().unwrap()))),
            ("[::]", Ok(Host::Ip("::".parse().unwrap()))),
            (
                "[64:ff9b::a9fe:a9fe]",
                Ok(Host::Ip("64:ff9b::a9fe:a9fe".parse().unwrap())),
            ),
            ("Example.COM", Ok(Host::Name("example.com".into()))),
            ("example.com.", Ok(Host::Name("example.com".into()))),
            ("EXAMPLE.com.", Ok(Host::Name("example.com".into()))),
            (
                "Bücher.example",
                Ok(Host::Name("xn--bcher-kva.example".into())),
            ),
            (
                "xn--bcher-kva.example",
                Ok(Host::Name("xn--bcher-kva.example".into())),
            ),
            ("_srv.example", Ok(Host::Name("_srv.example".into()))),
            ("1.2.3.example", Ok(Host::Name("1.2.3.example".into()))),
            ("localhost", Ok(Host::Name("localhost".into()))),
            ("example.com..", Err(())),
            ("a..b", Err(())),
            (".", Err(())),
            ("", Err(())),
            ("ex ample.com", Err(())),
            ("example.com/x", Err(())),
            ("user@example.com", Err(())),
            ("example.com:443", Err(())),
            ("[::1", Err(())),
            ("[fe80::1%eth0]", Err(())),
            ("1.2.3.999", Err(())),
            ("example.0x1g", Ok(Host::Name("example.0x1g".into()))),
            ("example.123", Err(())),
            ("a\u{0}b", Err(())),
            (&"a".repeat(64), Err(())),
        ];
        for (s, want) in table {
            let got = normalize_host(s).map_err(|_| ());
            assert_eq!(&got, want, "{s:?}");
        }
        let long = ["a"; 127].join(".") + ".bb"; // 256 bytes
        assert!(normalize_host(&long).is_err());
    }
}
