//! Address classification: public, private, special-purpose (with the block that says so), and
//! the unspecified addresses that are never destinations.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::canonical_ip;

/// The IPv4 address embedded in a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
pub(super) fn embedded_ipv4(ip: &IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    embedded_ipv4_at(v6).map(|(v4, _, _)| v4)
}

/// The embedded IPv4 address, the translation prefix (as bits) and the bit position of the
/// IPv4 address's lowest bit.
fn embedded_ipv4_at(v6: &Ipv6Addr) -> Option<(Ipv4Addr, u128, u32)> {
    let s = v6.segments();
    let o = v6.octets();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
        return Some((v4, 0x0064_ff9b << 96, 0));
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new(o[2], o[3], o[4], o[5]);
        return Some((v4, 0x2002 << 112, 80));
    }
    None
}

/// Whether `ip` is an unspecified address (`0.0.0.0/8`, `::`, in any spelling): Linux
/// connects such a destination to the local host, and RFC 1122 §3.2.1.3 / RFC 4291 §2.5.2
/// forbid it as a destination, so no rule can admit it.
pub fn is_unspecified_destination(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// How an address is classified for names admitted by host rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// Private networks: RFC 1918, CGNAT `100.64.0.0/10`, IPv6 unique local `fc00::/7`.
    Private,
    /// A special-purpose range (loopback, link-local, multicast, documentation, ...); the name
    /// says which.
    Special(&'static str),
}

/// Special-purpose and private IPv4 blocks, most specific first.
const V4_BLOCKS: &[(u32, u8, AddressClass)] = {
    use AddressClass::*;
    &[
        (0x0000_0000, 8, Special("\"this network\" 0.0.0.0/8")),
        (0x0a00_0000, 8, Private),
        (0x6440_0000, 10, Private),
        (0x7f00_0000, 8, Special("loopback")),
        (
            0xa9fe_0000,
            16,
            Special("link-local (instance metadata service)"),
        ),
        (0xac10_0000, 12, Private),
        (
            0xc000_0000,
            24,
            Special("IETF protocol assignments 192.0.0.0/24"),
        ),
        (0xc000_0200, 24, Special("documentation")),
        (0xc633_6400, 24, Special("documentation")),
        (0xcb00_7100, 24, Special("documentation")),
        (0xc058_6300, 24, Special("6to4 relay anycast")),
        (0xc0a8_0000, 16, Private),
        (0xc612_0000, 15, Special("benchmarking 198.18.0.0/15")),
        (0xffff_ffff, 32, Special("broadcast")),
        (0xf000_0000, 4, Special("reserved 240.0.0.0/4")),
        (0xe000_0000, 4, Special("multicast")),
    ]
};

/// Special-purpose and private IPv6 blocks (besides `::`, `::1` and the IPv4 translations),
/// most specific first.
const V6_BLOCKS: &[(u128, u8, AddressClass)] = {
    use AddressClass::*;
    &[
        // EC2's IPv6 instance metadata service, DNS resolver and NTP server: the twins of
        // 169.254.169.254, 169.254.169.253 and 169.254.169.123, inside the ULA range.
        (
            0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
            128,
            Special("EC2 instance metadata service fd00:ec2::254"),
        ),
        (
            0xfd00_0ec2_0000_0000_0000_0000_0000_0253,
            128,
            Special("EC2 DNS resolver fd00:ec2::253"),
        ),
        (
            0xfd00_0ec2_0000_0000_0000_0000_0000_0123,
            128,
            Special("EC2 time service fd00:ec2::123"),
        ),
        (0xfe80 << 112, 10, Special("link-local")),
        (0xfec0 << 112, 10, Special("site-local (deprecated)")),
        (0xff00 << 112, 8, Special("multicast")),
        (0xfc00 << 112, 7, Private),
        (0x2001_0db8 << 96, 32, Special("documentation")),
        (
            0x2001 << 112,
            23,
            Special("IETF protocol assignments 2001::/23 (Teredo, ...)"),
        ),
        (0x0100 << 112, 64, Special("discard-only 100::/64")),
        (
            0x0064_ff9b_0001 << 80,
            48,
            Special("local-use NAT64 64:ff9b:1::/48"),
        ),
        (0x3fff << 112, 20, Special("documentation")),
        (0, 8, Special("reserved ::/8")),
    ]
};

/// Classifies a (canonical) address.
pub fn classify(ip: IpAddr) -> AddressClass {
    classify_block(ip).0
}

/// The class of an address and the block that gives it (the whole address family for
/// [`AddressClass::Public`]).
pub(super) fn classify_block(ip: IpAddr) -> (AddressClass, IpNet) {
    use AddressClass::*;
    let net4 =
        |bits: u32, len: u8| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(bits), len).unwrap_or_default());
    let net6 = |bits: u128, len: u8| {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).unwrap_or_default())
    };
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let a = u32::from(v4);
            for &(bits, len, class) in V4_BLOCKS {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                if a & mask == bits {
                    return (class, net4(bits, len));
                }
            }
            (Public, net4(0, 0))
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return (Special("unspecified"), net6(0, 128));
            }
            if v6.is_loopback() {
                return (Special("loopback"), net6(1, 128));
            }
            if let Some((v4, prefix, shift)) = embedded_ipv4_at(&v6) {
                let (class, block) = classify_block(IpAddr::V4(v4));
                let class = match class {
                    Public => Public,
                    Private => Special("translation of a private IPv4 address"),
                    Special(_) => Special("translation of a special-purpose IPv4 address"),
                };
                let IpNet::V4(b) = block else {
                    return (class, net6(0, 0));
                };
                let bits = prefix | (u128::from(u32::from(b.network())) << shift);
                let len = (128 - shift - 32) as u8 + b.prefix_len();
                return (class, net6(bits, len));
            }
            let a = u128::from(v6);
            for &(bits, len, class) in V6_BLOCKS {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                if a & mask == bits {
                    return (class, net6(bits, len));
                }
            }
            (Public, net6(0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use AddressClass::*;
        let table: &[(&str, AddressClass)] = &[
            ("8.8.8.8", Public),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("100.128.0.1", Public),
            ("::ffff:10.0.0.1", Private),
            ("fd00::1", Private),
            ("2600::1", Public),
        ];
        for (s, want) in table {
            assert_eq!(classify(s.parse().unwrap()), *want, "{s}");
        }
        for s in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "::ffff:127.0.0.1",
            "fec0::1",
        ] {
            assert!(matches!(classify(s.parse().unwrap()), Special(_)), "{s}");
        }
        assert_eq!(classify("64:ff9b::808:808".parse().unwrap()), Public);
    }
}
