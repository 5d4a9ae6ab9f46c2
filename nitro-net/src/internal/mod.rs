//! Wire-level codecs and pure parsers, public only for the fuzz targets and the tests.
//!
//! Not a stable API: nothing here follows semantic versioning, and everything may change or
//! go away in any release. Applications use the crate root and its public modules.

pub mod netlink;
pub mod protocol;

pub use crate::ingress::{
    PROXY_V2_MAX, PROXY_V2_SIGNATURE, ProxyHeader, encode_proxy_v2, parse_proxy_v2,
};
pub use crate::policy::{
    AddressClass, Host, canonical_ip, classify, is_unspecified_destination, normalize_host,
    parse_ipv4_spelling,
};
pub use crate::proxy::{
    HttpConnect, MAX_HTTP_HEAD, Socks5Request, parse_http_connect, parse_socks5_greeting,
    parse_socks5_request,
};

use crate::Addr;
use crate::Policy;
use protocol::{Request, Response, parse_hybrid_connect, parse_hybrid_ok};

/// Runs the parser selected by `data[0]` on the rest; panics only on a broken invariant
/// (a decoded message that does not re-encode to the same bytes).
pub fn fuzz_protocol(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if sel >= 250 {
        fuzz_dns(rest);
        return;
    }
    match sel % 12 {
        0 => {
            if let Ok(Some((req, used))) = Request::decode(rest) {
                let again = req.encode().unwrap_or_default();
                assert_eq!(again, rest[..used], "request re-encoding differs");
            }
        }
        1 => {
            if let Ok(Some((resp, used))) = Response::decode(rest) {
                // Refusal reasons are decoded lossily, so only the rest must round-trip.
                if !matches!(resp, Response::Refused { .. }) {
                    assert_eq!(resp.encode(), rest[..used], "response re-encoding differs");
                }
                let _ = Response::decode(&resp.encode());
                if let Response::Time {
                    unix_seconds,
                    nanos,
                    ..
                } = resp
                    && let Some(t) = crate::egress::from_unix_parts(unix_seconds, nanos)
                {
                    // What the time client does with an answer: no overflow anywhere.
                    let now = std::time::Instant::now();
                    let s = crate::time::sample_from(std::time::SystemTime::now(), now, now, t);
                    let _ = s.offset.apply(std::time::SystemTime::now());
                    let obs = crate::time::TrustedObservation::new(
                        std::time::SystemTime::now(),
                        now,
                        std::time::Duration::from_secs(1),
                    );
                    let _ = crate::time::trusted_disagreement(&s, &obs, 200);
                }
            }
        }
        2 => {
            let _ = parse_hybrid_ok(rest);
            let _ = parse_hybrid_connect(rest);
        }
        3 => {
            let _ = parse_http_connect(rest);
        }
        4 => {
            let _ = parse_socks5_greeting(rest);
            let _ = parse_socks5_request(rest);
        }
        5 => {
            if let Ok(Some((h, used))) = parse_proxy_v2(rest) {
                assert!(used <= rest.len());
                let _ = h;
            }
        }
        6 => {
            let seq = rest.first().copied().map_or(0, u32::from);
            let _ = netlink::parse_link_reply(rest, seq);
        }
        7 => {
            if let Ok(p) = Policy::from_toml(&text) {
                // The printed policy parses back to the same policy.
                let again = Policy::from_toml(&p.to_string());
                assert_eq!(again.as_ref().ok(), Some(&p), "policy display round trip");
                let _ = p.check("example.com", 443, &[]);
            }
        }
        8 => {
            if let Ok(Host::Name(n)) = normalize_host(&text) {
                // Normalisation is idempotent.
                assert_eq!(
                    normalize_host(&n).ok(),
                    Some(Host::Name(n.clone())),
                    "normalisation not idempotent"
                );
            }
            let _ = parse_ipv4_spelling(&text);
        }
        9 => {
            if let Ok(a) = text.parse::<Addr>() {
                assert_eq!(
                    a.to_string().parse::<Addr>().ok(),
                    Some(a),
                    "address display round trip"
                );
            }
        }
        10 => {
            // A fixed policy against arbitrary destinations and resolved addresses.
            let p = Policy::builder()
                .allow_host("*.example.com", &[443])
                .allow_cidr("10.0.0.0/8", &[])
                .deny_cidr("169.254.0.0/16", &[])
                .build();
            if let Ok(p) = p {
                let (host, addrs) = text.split_once('\n').unwrap_or((&text, ""));
                let resolved: Vec<std::net::IpAddr> = addrs
                    .split(',')
                    .filter_map(|a| a.trim().parse().ok())
                    .collect();
                if let Ok(ok) = p.check(host, 443, &resolved) {
                    for ip in ok {
                        // Nothing admitted may be in the denied block.
                        assert!(
                            !matches!(canonical_ip(ip), std::net::IpAddr::V4(v4) if v4.octets()[..2] == [169, 254])
                        );
                    }
                }
            }
        }
        _ => {
            let _ = parse_http_connect(rest);
            let _ = parse_proxy_v2(rest);
        }
    }
}

/// The in-enclave DNS server's decision on an arbitrary message, and the check of a
/// forwarded answer (the parent's bytes) against the question: never a panic, every answer
/// parses, and a checked answer is a response to the question.
fn fuzz_dns(data: &[u8]) {
    use crate::dns::{DnsConfig, DnsOutcome, check_forwarded_answer, decide};
    use crate::synthetic::{SyntheticConfig, SyntheticNames};
    let Ok(policy) = Policy::builder()
        .allow_host("*.example.com", &[443])
        .deny_host("bad.example.com", &[])
        .build()
    else {
        return;
    };
    let Ok(names) = SyntheticNames::new(SyntheticConfig {
        capacity: 4,
        ..SyntheticConfig::default()
    }) else {
        return;
    };
    // The first half is the query, the rest the parent's answer to it.
    let (query, answer) = data.split_at(data.len() / 2);
    for cfg in [
        DnsConfig::default(),
        DnsConfig {
            ipv6: false,
            deny_nxdomain: true,
            ..DnsConfig::default()
        },
    ] {
        match decide(query, Some(&policy), &names, &cfg) {
            DnsOutcome::Reply { message, .. } => {
                assert!(message.len() >= 12, "answer shorter than a header");
            }
            DnsOutcome::Forward(q) => {
                if let Ok(a) = check_forwarded_answer(&q, answer, 512) {
                    assert!(a.len() >= 12 && a[..2] == q.id.to_be_bytes());
                }
            }
            _ => {}
        }
    }
    // Whatever the address, the transparent listener's decision is total.
    if data.len() >= 18 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&data[..16]);
        let port = u16::from_be_bytes([data[16], data[17]]);
        let dst = std::net::SocketAddr::new(std::net::Ipv6Addr::from(o).into(), port);
        let _ = crate::transparent::target(&names, dst, "[::1]:15001".parse().unwrap_or(dst));
    }
}

#[cfg(test)]
mod tests {
    /// The committed fuzz seeds replay without panics (the fuzz target's invariants hold).
    #[test]
    fn replay_fuzz_seeds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/net_protocol");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            super::fuzz_protocol(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
        assert!(n >= 10, "only {n} seeds in {dir}");
    }

    proptest::proptest! {
        /// The DNS entry point holds its invariants on arbitrary bytes (a short stand-in for
        /// the fuzzer, run with every test).
        #[test]
        fn dns_entry_point_is_total(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut data = vec![250u8];
            data.extend_from_slice(&b);
            super::fuzz_protocol(&data);
        }
    }
}
