//! The egress policy: host canonicalisation (`host.rs`), address classes (`class.rs`), the
//! TOML schema (`schema.rs`), matching and the builder (here). The format is documented on
//! [`Policy`].

mod class;
mod host;
mod schema;

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use crate::{PolicyError, Refusal, RefusalCode};

pub use class::{AddressClass, classify, is_unspecified_destination};
use class::{classify_block, embedded_ipv4};
pub use host::{Host, canonical_ip, normalize_host, parse_ipv4_spelling};
use schema::RawPolicy;

/// A set of ports: empty means every port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Ports(Vec<RangeInclusive<u16>>);

impl Ports {
    fn contains(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.contains(&port))
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "\"{}-{}\"", r.start(), r.end())?;
            }
        }
        f.write_str("]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    AnyName,
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
    Cidr(IpNet),
}

/// One `allow` or `deny` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    ports: Ports,
    private: bool,
    /// `allow[0] (host = "*.amazonaws.com", ports = [443])`, for refusal reasons and logs.
    label: String,
}

impl Rule {
    fn matches_name(&self, name: &str, port: u16) -> bool {
        let hit = match &self.target {
            Target::AnyName => true,
            Target::Exact(n) => n == name,
            Target::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            Target::Cidr(_) => false,
        };
        hit && self.ports.contains(port)
    }

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        match &self.target {
            Target::Cidr(net) => net.contains(&ip) && self.ports.contains(port),
            _ => false,
        }
    }

    fn is_cidr(&self) -> bool {
        matches!(self.target, Target::Cidr(_))
    }
}

/// The egress policy. Build it with [`Policy::builder`] or parse it with [`Policy::from_toml`].
///
/// The parent-side egress policy: which destinations the enclave may reach.
///
/// # Rules
///
/// A policy is two ordered lists of rules, `allow` and `deny`. Each rule names either a host
/// pattern or a CIDR block, optionally restricted to ports:
///
/// ```toml
/// [[allow]]
/// host = "kms.us-east-1.amazonaws.com"   # exact name
/// ports = [443]
///
/// [[allow]]
/// host = "*.amazonaws.com"               # any name below amazonaws.com (any depth), not amazonaws.com itself
/// ports = [443, "8000-8100"]
///
/// [[allow]]
/// cidr = "10.0.0.0/8"                    # IPv4 or IPv6 block
///
/// [[deny]]
/// cidr = "169.254.169.254/32"
/// ```
///
/// - **Default deny**: what no `allow` rule admits is refused.
/// - **Deny wins**: a destination matched by any `deny` rule is refused, whatever allows it.
/// - **Names are normalised** before matching, in requests and in rules alike: case folded,
///   one trailing dot dropped, internationalised names converted to their ASCII (IDNA/UTS 46)
///   form. Host patterns are `name`, `*.name` (label boundary: `*.example.com` does not match
///   `evilexample.com`) or `*` (any name).
/// - **Addresses are canonicalised** before matching: IPv4 written in decimal
///   (`2130706433`), octal (`0177.0.0.1`), hexadecimal (`0x7f.1`) or short forms (`127.1`), and
///   IPv4-mapped (`::ffff:127.0.0.1`) or IPv4-compatible (`::127.0.0.1`) IPv6 literals all become
///   the plain IPv4 address. A NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address is also
///   checked against the `deny` rules through the IPv4 address it embeds.
/// - **IP literals need a `cidr` rule**; host rules only match names.
/// - **Every resolved address is re-checked** (DNS rebinding): a name admitted by a host rule
///   may only lead to *public* addresses, unless a `cidr` rule allows the address, or the
///   host rule says `private = true` (then RFC 1918, CGNAT and IPv6 ULA addresses are also
///   admitted, for VPC endpoints). Loopback, link-local (including the instance metadata
///   service `169.254.169.254` and its IPv6 twin `fd00:ec2::254`, with EC2's DNS and NTP
///   addresses), multicast, documentation and other special-purpose ranges are only ever
///   reachable through an explicit `cidr` allow rule lying within that range: a wider block
///   such as `0.0.0.0/0` does not admit them, for names or IP literals. Addresses refused this
///   way are dropped; the request is refused when none is left.
/// - **Unspecified addresses are never destinations**: `0.0.0.0/8` and `::` (in any spelling,
///   or as a resolved address) are refused whatever the rules say; Linux connects them to the
///   local host.
///
/// Everything here is pure: [`Policy::check_name`] and [`Policy::check_addresses`] take the
/// request and the resolved addresses and return the verdict, so the decisions are tested
/// without any network.
///
///
/// ```
/// use nitro_net::Policy;
///
/// let policy = Policy::from_toml(r#"
///     [[allow]]
///     host = "*.amazonaws.com"
///     ports = [443]
///     [[deny]]
///     host = "evil.amazonaws.com"
/// "#)?;
/// assert!(policy.check_name("kms.us-east-1.amazonaws.com", 443).is_ok());
/// let refusal = policy.check_name("evil.amazonaws.com", 443).unwrap_err();
/// assert!(refusal.message.contains("deny[0]"));
/// assert!(policy.check_name("kms.us-east-1.amazonaws.com", 80).is_err());
/// # Ok::<(), nitro_net::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// What [`Policy::check_name`] decided before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameVerdict {
    /// An IP literal, allowed: connect to it.
    Ip(IpAddr),
    /// A name to resolve; its addresses then go through [`Policy::check_addresses`].
    Name {
        /// The normalised name to resolve.
        name: String,
        /// Label of the host rule that admitted the name, if one did (else only `cidr` rules
        /// can admit its addresses).
        allowed_by: Option<String>,
        /// Whether that host rule also admits private addresses.
        private: bool,
    },
}

fn denied(reason: String) -> Refusal {
    Refusal::new(RefusalCode::DeniedByPolicy, reason)
}

impl Policy {
    /// A policy builder (default deny; add rules).
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A policy that refuses everything (for a parent that only serves time).
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    /// Parses a TOML policy (see [`Policy`] for the format).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        let mut b = PolicyBuilder::default();
        for (section, rules) in [("allow", raw.allow), ("deny", raw.deny)] {
            for (index, r) in rules.into_iter().enumerate() {
                let rule_err = |reason: String| PolicyError::Rule {
                    section,
                    index,
                    reason,
                };
                let ports = match r.ports {
                    None => Ports::default(),
                    Some(list) => {
                        if list.is_empty() {
                            return Err(rule_err("`ports = []` matches nothing; leave `ports` out to match every port".into()));
                        }
                        let mut v = Vec::with_capacity(list.len());
                        for p in list {
                            v.push(p.range().map_err(|e| rule_err(e.to_string()))?);
                        }
                        Ports(v)
                    }
                };
                let spec = match (r.host, r.cidr) {
                    (Some(h), None) => RuleSpec::Host(h),
                    (None, Some(c)) => RuleSpec::Cidr(c),
                    _ => return Err(rule_err("needs exactly one of `host` or `cidr`".into())),
                };
                let private = r.private.unwrap_or(false);
                b.push(section == "deny", spec, ports, private)
                    .map_err(|e| match e {
                        PolicyError::Rule { .. } => e,
                        other => rule_err(other.to_string()),
                    })?;
            }
        }
        Ok(Policy {
            allow: b.allow,
            deny: b.deny,
        })
    }

    /// Reads and parses a TOML policy file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Toml(format!("{}: {e}", path.display())))?;
        Policy::from_toml(&text)
    }

    /// Number of `allow` and `deny` rules.
    pub fn len(&self) -> (usize, usize) {
        (self.allow.len(), self.deny.len())
    }

    /// Whether the policy has no rule at all (refuses everything).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// First step of a decision, before any name resolution: normalises `host` and checks it
    /// (and, for an IP literal, the address) against the rules. A refusal carries
    /// [`RefusalCode::DeniedByPolicy`] with the deciding rule, or [`RefusalCode::BadRequest`]
    /// for an invalid host or port 0.
    pub fn check_name(&self, host: &str, port: u16) -> Result<NameVerdict, Refusal> {
        if port == 0 {
            return Err(Refusal::new(RefusalCode::BadRequest, "port 0"));
        }
        let host = normalize_host(host)
            .map_err(|e| Refusal::new(RefusalCode::BadRequest, e.to_string()))?;
        match host {
            Host::Ip(ip) => {
                self.check_ip(ip, port, None)?;
                Ok(NameVerdict::Ip(ip))
            }
            Host::Name(name) => {
                if let Some(r) = self.deny.iter().find(|r| r.matches_name(&name, port)) {
                    return Err(denied(format!("{name}:{port} is denied by {}", r.label)));
                }
                if let Some(r) = self.allow.iter().find(|r| r.matches_name(&name, port)) {
                    return Ok(NameVerdict::Name {
                        name,
                        allowed_by: Some(r.label.clone()),
                        private: r.private,
                    });
                }
                if self
                    .allow
                    .iter()
                    .any(|r| r.is_cidr() && r.ports.contains(port))
                {
                    return Ok(NameVerdict::Name {
                        name,
                        allowed_by: None,
                        private: false,
                    });
                }
                Err(denied(format!(
                    "no allow rule matches {name}:{port} (default deny)"
                )))
            }
        }
    }

    /// Whether [`Policy::check_name`] admits `host` on *some* port (what a DNS server can
    /// decide, before the port is known). Returns the normalised name, or the refusal for the
    /// lowest port (all ports refuse). The decision only changes at rule port boundaries, so
    /// only those ports are checked.
    ///
    /// ```
    /// use nitro_net::Policy;
    ///
    /// let p = Policy::builder().allow_host("api.example.com", &[443]).build()?;
    /// assert_eq!(p.check_name_any_port("API.example.com.").unwrap(), "api.example.com");
    /// assert!(p.check_name_any_port("other.example.com").is_err());
    /// # Ok::<(), nitro_net::PolicyError>(())
    /// ```
    pub fn check_name_any_port(&self, host: &str) -> Result<String, Refusal> {
        let mut ports = vec![1u16];
        for r in self.allow.iter().chain(&self.deny) {
            for range in &r.ports.0 {
                ports.push(*range.start());
                ports.extend(range.end().checked_add(1));
            }
        }
        ports.sort_unstable();
        ports.dedup();
        let mut first = None;
        for p in ports {
            match self.check_name(host, p) {
                Ok(NameVerdict::Name { name, .. }) => return Ok(name),
                Ok(NameVerdict::Ip(ip)) => return Ok(ip.to_string()),
                Err(r) if r.code == RefusalCode::BadRequest => return Err(r),
                Err(r) => {
                    first.get_or_insert(r);
                }
            }
        }
        Err(first.unwrap_or_else(|| denied(format!("{host}: no port admitted"))))
    }

    /// Checks one address. `name` gives the host rule context for resolved addresses.
    fn check_ip(&self, ip: IpAddr, port: u16, name: Option<(&str, bool)>) -> Result<(), Refusal> {
        let ip = canonical_ip(ip);
        let shown = Host::Ip(ip);
        if is_unspecified_destination(ip) {
            let what = "an unspecified address, which Linux connects to the local host; never a destination";
            return Err(denied(match name {
                Some((n, _)) => format!("{n} resolved to {shown}, {what}"),
                None => format!("{shown}:{port} is {what}"),
            }));
        }
        let candidates = [Some(ip), embedded_ipv4(&ip).map(IpAddr::V4)];
        for cand in candidates.into_iter().flatten() {
            if let Some(r) = self.deny.iter().find(|r| r.matches_ip(cand, port)) {
                return Err(denied(match name {
                    Some((n, _)) => {
                        format!("{n} resolved to {shown}, which is denied by {}", r.label)
                    }
                    None => format!("{shown}:{port} is denied by {}", r.label),
                }));
            }
        }
        let (class, block) = classify_block(ip);
        // A cidr rule admits a special-purpose address only when it lies within that
        // special-purpose block (`cidr = "169.254.169.254/32"`): a catch-all such as
        // `0.0.0.0/0` does not reach loopback or the metadata service.
        let explicit = |r: &Rule| match (&r.target, class) {
            (Target::Cidr(net), AddressClass::Special(_)) => block.contains(net),
            _ => true,
        };
        if self
            .allow
            .iter()
            .any(|r| r.matches_ip(ip, port) && explicit(r))
        {
            return Ok(());
        }
        if let (AddressClass::Special(s), Some(r)) =
            (class, self.allow.iter().find(|r| r.matches_ip(ip, port)))
        {
            let prefix = match name {
                Some((n, _)) => format!("{n} resolved to {shown},"),
                None => format!("{shown}:{port} is"),
            };
            return Err(denied(format!(
                "{prefix} a special-purpose address ({s}) that {} covers only as part of a wider block; allow it with a cidr rule within {block}",
                r.label
            )));
        }
        match (name, class) {
            (Some(_), AddressClass::Public) => Ok(()),
            (Some((_, true)), AddressClass::Private) => Ok(()),
            (Some((n, _)), class) => {
                let what = match class {
                    AddressClass::Private => "a private address".to_owned(),
                    AddressClass::Special(s) => format!("a special-purpose address ({s})"),
                    AddressClass::Public => "an address".to_owned(),
                };
                Err(denied(format!(
                    "{n} resolved to {shown}, {what}, which host rules do not admit; allow it with a cidr rule"
                )))
            }
            (None, _) => Err(denied(format!(
                "no allow rule matches {shown}:{port} (default deny; IP literals need a cidr rule)"
            ))),
        }
    }

    /// Second step: filters the addresses `verdict`'s name resolved to. Returns the admitted
    /// addresses (canonical form, order kept) or, when none is left, the reason for the
    /// first refused one.
    pub fn check_addresses(
        &self,
        verdict: &NameVerdict,
        port: u16,
        addrs: &[IpAddr],
    ) -> Result<Vec<IpAddr>, Refusal> {
        match verdict {
            NameVerdict::Ip(ip) => Ok(vec![*ip]),
            NameVerdict::Name {
                name,
                allowed_by,
                private,
            } => {
                let ctx = allowed_by.as_ref().map(|_| (name.as_str(), *private));
                let mut ok = Vec::with_capacity(addrs.len());
                let mut first_refusal = None;
                for &a in addrs {
                    let r = match ctx {
                        Some(c) => self.check_ip(a, port, Some(c)),
                        // Not admitted by name: the address itself must be allowed.
                        None => self.check_ip(a, port, None).map_err(|e| {
                            denied(format!(
                                "{name} resolved to {}: {}",
                                Host::Ip(canonical_ip(a)),
                                e.message
                            ))
                        }),
                    };
                    match r {
                        Ok(()) => {
                            let c = canonical_ip(a);
                            if !ok.contains(&c) {
                                ok.push(c);
                            }
                        }
                        Err(e) => {
                            first_refusal.get_or_insert(e);
                        }
                    }
                }
                if ok.is_empty() {
                    Err(first_refusal.unwrap_or_else(|| {
                        Refusal::new(RefusalCode::ResolveFailed, format!("{name} has no address"))
                    }))
                } else {
                    Ok(ok)
                }
            }
        }
    }

    /// Both steps at once, with the addresses a resolver returned for the name (ignored for IP
    /// literals). Convenient for tests and dry runs.
    pub fn check(
        &self,
        host: &str,
        port: u16,
        resolved: &[IpAddr],
    ) -> Result<Vec<IpAddr>, Refusal> {
        let v = self.check_name(host, port)?;
        self.check_addresses(&v, port, resolved)
    }
}

impl fmt::Display for Policy {
    /// The policy as TOML (normalised).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (section, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for r in rules {
                writeln!(f, "[[{section}]]")?;
                match &r.target {
                    Target::AnyName => writeln!(f, "host = \"*\"")?,
                    Target::Exact(n) => writeln!(f, "host = {n:?}")?,
                    Target::Suffix(s) => writeln!(f, "host = \"*{s}\"")?,
                    Target::Cidr(c) => writeln!(f, "cidr = \"{c}\"")?,
                }
                if !r.ports.0.is_empty() {
                    writeln!(f, "ports = {}", r.ports)?;
                }
                if r.private {
                    writeln!(f, "private = true")?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

enum RuleSpec {
    Host(String),
    Cidr(String),
}

/// Builds a [`Policy`] in Rust.
///
/// ```
/// use nitro_net::Policy;
///
/// let policy = Policy::builder()
///     .allow_host("*.amazonaws.com", &[443])
///     .allow_cidr("10.0.0.0/8", &[])
///     .deny_cidr("169.254.0.0/16", &[])
///     .build()?;
/// assert!(policy.check("10.1.2.3", 22, &[]).is_ok());
/// assert!(policy.check("169.254.169.254", 80, &[]).is_err());
/// # Ok::<(), nitro_net::PolicyError>(())
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct PolicyBuilder {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    pending: Vec<(bool, RuleSpec, Ports, bool)>,
}

impl fmt::Debug for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSpec::Host(h) => write!(f, "host {h:?}"),
            RuleSpec::Cidr(c) => write!(f, "cidr {c:?}"),
        }
    }
}

fn ports_of(ports: &[u16]) -> Ports {
    Ports(ports.iter().map(|&p| p..=p).collect())
}

impl PolicyBuilder {
    /// Allows a host pattern (`name`, `*.name`, `*`) on `ports` (empty: every port).
    pub fn allow_host(mut self, pattern: &str, ports: &[u16]) -> Self {
        self.pending.push((
            false,
            RuleSpec::Host(pattern.into()),
            ports_of(ports),
            false,
        ));
        self
    }

    /// Like [`allow_host`](Self::allow_host), also admitting private addresses (RFC 1918,
    /// CGNAT, IPv6 ULA) the name resolves to: for VPC endpoints.
    pub fn allow_host_private(mut self, pattern: &str, ports: &[u16]) -> Self {
        self.pending
            .push((false, RuleSpec::Host(pattern.into()), ports_of(ports), true));
        self
    }

    /// Allows a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, or one address) on `ports`.
    pub fn allow_cidr(mut self, cidr: &str, ports: &[u16]) -> Self {
        self.pending
            .push((false, RuleSpec::Cidr(cidr.into()), ports_of(ports), false));
        self
    }

    /// Denies a host pattern on `ports` (empty: every port).
    pub fn deny_host(mut self, pattern: &str, ports: &[u16]) -> Self {
        self.pending
            .push((true, RuleSpec::Host(pattern.into()), ports_of(ports), false));
        self
    }

    /// Denies a CIDR block on `ports` (empty: every port).
    pub fn deny_cidr(mut self, cidr: &str, ports: &[u16]) -> Self {
        self.pending
            .push((true, RuleSpec::Cidr(cidr.into()), ports_of(ports), false));
        self
    }

    /// Validates every rule and returns the policy.
    pub fn build(mut self) -> Result<Policy, PolicyError> {
        for (deny, spec, ports, private) in std::mem::take(&mut self.pending) {
            self.push(deny, spec, ports, private)?;
        }
        Ok(Policy {
            allow: self.allow,
            deny: self.deny,
        })
    }

    fn push(
        &mut self,
        deny: bool,
        spec: RuleSpec,
        ports: Ports,
        private: bool,
    ) -> Result<(), PolicyError> {
        let section = if deny { "deny" } else { "allow" };
        let index = if deny {
            self.deny.len()
        } else {
            self.allow.len()
        };
        let rule_err = |reason: String| PolicyError::Rule {
            section,
            index,
            reason,
        };
        let target = match spec {
            RuleSpec::Host(h) => parse_host_pattern(&h)?,
            RuleSpec::Cidr(c) => Target::Cidr(parse_cidr(&c)?),
        };
        let text = match &target {
            Target::AnyName => "host = \"*\"".to_owned(),
            Target::Exact(n) => format!("host = {n:?}"),
            Target::Suffix(s) => format!("host = \"*{s}\""),
            Target::Cidr(c) => format!("cidr = \"{c}\""),
        };
        if private && (deny || matches!(target, Target::Cidr(_))) {
            return Err(rule_err(
                "`private = true` only applies to allow rules with a `host`".into(),
            ));
        }
        let mut label = format!("{section}[{index}] ({text}");
        if !ports.0.is_empty() {
            label.push_str(&format!(", ports = {ports}"));
        }
        label.push(')');
        let rule = Rule {
            target,
            ports,
            private,
            label,
        };
        if deny {
            self.deny.push(rule);
        } else {
            self.allow.push(rule);
        }
        Ok(())
    }
}

fn parse_host_pattern(p: &str) -> Result<Target, PolicyError> {
    let err = |reason: &str| PolicyError::InvalidHost {
        pattern: p.to_owned(),
        reason: reason.to_owned(),
    };
    if p == "*" {
        return Ok(Target::AnyName);
    }
    let (wild, rest) = match p.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    if rest.contains('*') {
        return Err(err(
            "`*` is only allowed as a whole first label (`*.example.com`) or alone",
        ));
    }
    match normalize_host(rest)? {
        Host::Name(n) if wild => Ok(Target::Suffix(format!(".{n}"))),
        Host::Name(n) => Ok(Target::Exact(n)),
        Host::Ip(ip) => Err(err(&format!(
            "is an IP address ({ip}); use `cidr = \"{ip}\"` instead"
        ))),
    }
}

fn parse_cidr(c: &str) -> Result<IpNet, PolicyError> {
    let bad = || PolicyError::InvalidCidr(c.to_owned());
    // The standard parser is strict (no octal-looking leading zeros, no short forms), which is
    // what a policy wants: one spelling per address.
    let (ip, prefix) = match c.split_once('/') {
        Some((ip, p)) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (ip, Some(p.parse::<u8>().map_err(|_| bad())?))
        }
        None => (c, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let net = match prefix {
        Some(p) => IpNet::new(ip, p).map_err(|_| bad())?,
        None => IpNet::from(ip),
    };
    let net = net.trunc();
    // An IPv4-mapped IPv6 block means the IPv4 block (addresses are canonicalised the same way).
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(n4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return Ok(IpNet::V4(n4));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn sample() -> Policy {
        Policy::from_toml(
            r#"
            [[allow]]
            host = "kms.us-east-1.amazonaws.com"
            ports = [443]
            [[allow]]
            host = "*.example.com"
            [[allow]]
            host = "*.vpc.internal"
            ports = [443]
            private = true
            [[allow]]
            cidr = "10.0.0.0/8"
            ports = ["8000-8100"]
            [[allow]]
            cidr = "2001:db8:1::/48"
            [[allow]]
            cidr = "127.0.0.1/32"
            ports = [9999]
            [[deny]]
            host = "bad.example.com"
            [[deny]]
            cidr = "10.66.0.0/16"
            [[deny]]
            cidr = "169.254.0.0/16"
            [[deny]]
            cidr = "::ffff:192.0.2.0/120"
            "#,
        )
        .unwrap()
    }

    /// (host, port, resolved, expected: Ok(admitted) / Err(substring of the reason))
    #[test]
    fn decisions() {
        let p = sample();
        let pub1 = v4("93.184.216.34");
        type Case = (
            &'static str,
            u16,
            Vec<IpAddr>,
            Result<Vec<IpAddr>, &'static str>,
        );
        let table: Vec<Case> = vec![
            (
                "kms.us-east-1.amazonaws.com",
                443,
                vec![pub1],
                Ok(vec![pub1]),
            ),
            (
                "KMS.US-EAST-1.AMAZONAWS.COM.",
                443,
                vec![pub1],
                Ok(vec![pub1]),
            ),
            (
                "kms.us-east-1.amazonaws.com",
                80,
                vec![pub1],
                Err("default deny"),
            ),
            (
                "kms.us-west-2.amazonaws.com",
                443,
                vec![pub1],
                Err("default deny"),
            ),
            ("www.example.com", 80, vec![pub1], Ok(vec![pub1])),
            ("a.b.c.example.com", 1, vec![pub1], Ok(vec![pub1])),
            ("example.com", 80, vec![pub1], Err("default deny")),
            ("evilexample.com", 80, vec![pub1], Err("default deny")),
            ("bad.example.com", 80, vec![pub1], Err("deny[0]")),
            ("BAD.example.com.", 80, vec![pub1], Err("deny[0]")),
            // DNS rebinding: an allowed name resolving to special or denied addresses.
            (
                "www.example.com",
                80,
                vec![v4("169.254.169.254")],
                Err("deny[2]"),
            ),
            (
                "www.example.com",
                80,
                vec![v4("127.0.0.1")],
                Err("loopback"),
            ),
            (
                "www.example.com",
                80,
                vec!["::ffff:127.0.0.1".parse().unwrap()],
                Err("loopback"),
            ),
            (
                "www.example.com",
                80,
                vec!["::1".parse().unwrap()],
                Err("loopback"),
            ),
            ("www.example.com", 80, vec![v4("10.1.1.1")], Err("private")),
            (
                "www.example.com",
                80,
                vec!["64:ff9b::a9fe:a9fe".parse().unwrap()],
                Err("deny[2]"),
            ),
            (
                "www.example.com",
                80,
                vec!["2002:a9fe:a9fe::1".parse().unwrap()],
                Err("deny[2]"),
            ),
            ("www.example.com", 80, vec![v4("192.0.2.7")], Err("deny[3]")),
            // Mixed answers: the bad address is dropped, the good one kept.
            (
                "www.example.com",
                80,
                vec![v4("127.0.0.1"), pub1],
                Ok(vec![pub1]),
            ),
            ("www.example.com", 80, vec![], Err("no address")),
            // private = true admits RFC 1918 for that rule, never loopback/link-local.
            (
                "kms.vpc.internal",
                443,
                vec![v4("10.1.2.3")],
                Ok(vec![v4("10.1.2.3")]),
            ),
            (
                "kms.vpc.internal",
                443,
                vec![v4("10.66.0.1")],
                Err("deny[1]"),
            ),
            (
                "kms.vpc.internal",
                443,
                vec![v4("127.0.0.1")],
                Err("loopback"),
            ),
            (
                "kms.vpc.internal",
                443,
                vec![v4("169.254.169.254")],
                Err("deny[2]"),
            ),
            // Names not admitted by a host rule: only the cidr rules can admit their addresses.
            (
                "db.corp",
                8080,
                vec![v4("10.2.3.4")],
                Ok(vec![v4("10.2.3.4")]),
            ),
            (
                "db.corp",
                8080,
                vec![pub1],
                Err("no allow rule matches 93.184.216.34:8080"),
            ),
            ("db.corp", 22, vec![v4("10.2.3.4")], Err("default deny")),
            // IP literals in every spelling.
            ("10.1.2.3", 8000, vec![], Ok(vec![v4("10.1.2.3")])),
            ("10.1.2.3", 22, vec![], Err("IP literals need a cidr rule")),
            ("167838211", 8000, vec![], Ok(vec![v4("10.1.2.3")])),
            ("012.1.2.3", 8000, vec![], Ok(vec![v4("10.1.2.3")])),
            ("10.66.1.1", 8000, vec![], Err("deny[1]")),
            ("0xa.0x42.1.1", 8000, vec![], Err("deny[1]")),
            ("169.254.169.254", 80, vec![], Err("deny[2]")),
            ("2852039166", 80, vec![], Err("deny[2]")),
            ("0251.0376.0251.0376", 80, vec![], Err("deny[2]")),
            ("0xa9.0xfe.0xa9.0xfe", 80, vec![], Err("deny[2]")),
            ("169.254.43518", 80, vec![], Err("deny[2]")),
            ("[::ffff:169.254.169.254]", 80, vec![], Err("deny[2]")),
            ("::ffff:a9fe:a9fe", 80, vec![], Err("deny[2]")),
            ("::169.254.169.254", 80, vec![], Err("deny[2]")),
            ("[64:ff9b::a9fe:a9fe]", 80, vec![], Err("deny[2]")),
            ("127.0.0.1", 9999, vec![], Ok(vec![v4("127.0.0.1")])),
            ("127.1", 9999, vec![], Ok(vec![v4("127.0.0.1")])),
            ("::ffff:127.0.0.1", 9999, vec![], Ok(vec![v4("127.0.0.1")])),
            ("127.0.0.1", 9998, vec![], Err("default deny")),
            (
                "2001:db8:1::5",
                1,
                vec![],
                Ok(vec!["2001:db8:1::5".parse().unwrap()]),
            ),
            ("2001:db8:2::5", 1, vec![], Err("default deny")),
            // Bad requests.
            ("www.example.com", 0, vec![pub1], Err("port 0")),
            ("www.example.com/x", 80, vec![pub1], Err("invalid host")),
            ("1.2.3.999", 80, vec![], Err("invalid host")),
        ];
        for (host, port, resolved, want) in table {
            let got = p.check(host, port, &resolved);
            match (&got, &want) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{host}:{port}"),
                (Err(r), Err(s)) => assert!(
                    r.message.contains(s),
                    "{host}:{port}: reason {:?} does not contain {s:?}",
                    r.message
                ),
                _ => panic!("{host}:{port} {resolved:?}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(
            p.check("www.example.com", 0, &[]).unwrap_err().code,
            RefusalCode::BadRequest
        );
        assert_eq!(
            p.check("bad.example.com", 1, &[]).unwrap_err().code,
            RefusalCode::DeniedByPolicy
        );
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = Policy::deny_all();
        assert!(p.check("example.com", 443, &[v4("1.1.1.1")]).is_err());
        assert!(p.check("1.1.1.1", 443, &[]).is_err());
        // A name is refused before any resolution when no rule could admit it.
        assert!(p.check_name("example.com", 443).is_err());
    }

    #[test]
    fn wildcard_any_name_still_protects_special_addresses() {
        let p = Policy::builder().allow_host("*", &[]).build().unwrap();
        assert!(p.check("anything.org", 80, &[v4("1.1.1.1")]).is_ok());
        assert!(
            p.check("anything.org", 80, &[v4("169.254.169.254")])
                .is_err()
        );
        assert!(
            p.check("1.1.1.1", 80, &[]).is_err(),
            "IP literals need cidr rules"
        );
    }

    #[test]
    fn invalid_policies() {
        for (toml, want) in [
            (
                "[[allow]]\nhost = \"a\"\ncidr = \"1.0.0.0/8\"",
                "exactly one",
            ),
            ("[[allow]]\nports = [1]", "exactly one"),
            ("[[allow]]\nhost = \"a.*.b\"", "only allowed"),
            ("[[allow]]\nhost = \"**.b\"", "only allowed"),
            ("[[allow]]\nhost = \"1.2.3.4\"", "use `cidr"),
            ("[[allow]]\nhost = \"a b\"", "invalid host pattern"),
            ("[[allow]]\nhost = \"a_b!\"", "not allowed"),
            ("[[allow]]\ncidr = \"10.0.0.0/33\"", "invalid CIDR"),
            ("[[allow]]\ncidr = \"010.0.0.0/8\"", "invalid CIDR"),
            ("[[allow]]\nhost = \"a\"\nports = [0]", "invalid port"),
            ("[[allow]]\nhost = \"a\"\nports = [70000]", "invalid port"),
            ("[[allow]]\nhost = \"a\"\nports = [\"9-8\"]", "invalid port"),
            ("[[allow]]\nhost = \"a\"\nports = [\"x\"]", "invalid port"),
            ("[[allow]]\nhost = \"a\"\nports = []", "matches nothing"),
            ("[[allow]]\nhost = \"a\"\nport = [1]", "unknown field"),
            ("[[deny]]\nhost = \"a\"\nprivate = true", "only applies"),
            (
                "[[allow]]\ncidr = \"10.0.0.0/8\"\nprivate = true",
                "only applies",
            ),
            ("[allow]\nhost = \"a\"", "policy file"),
            ("[[permit]]\nhost = \"a\"", "unknown field"),
            ("not toml", "policy file"),
        ] {
            let e = Policy::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(want), "{toml:?}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        let p = sample();
        let again = Policy::from_toml(&p.to_string()).unwrap();
        assert_eq!(again, p);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Every spelling of an IPv4 address gets the same decision as its dotted form.
        #[test]
        fn every_ipv4_spelling_gets_the_same_decision(v in proptest::prelude::any::<u32>(), port in 1u16..) {
            let p = sample();
            let ip = Ipv4Addr::from(v);
            let o = ip.octets();
            let want = p.check(&ip.to_string(), port, &[]);
            let spellings = [
                v.to_string(),
                format!("{v:#x}"),
                format!("0{v:o}"),
                format!("{}.{}", o[0], u32::from_be_bytes([0, o[1], o[2], o[3]])),
                format!("{}.{}.{}", o[0], o[1], u16::from_be_bytes([o[2], o[3]])),
                format!("0x{:x}.0{:o}.{}.0x{:X}", o[0], o[1], o[2], o[3]),
                format!("::ffff:{ip}"),
                format!("[::ffff:{:x}:{:x}]", u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]])),
                format!("{ip}."),
            ];
            for s in spellings {
                let got = p.check(&s, port, &[]);
                proptest::prop_assert_eq!(got.is_ok(), want.is_ok(), "{} vs {}", s, ip);
            }
        }

        /// Normalisation never panics and is idempotent.
        #[test]
        fn normalisation_is_idempotent(s in "[a-zA-Z0-9.\\-_*\u{e0}-\u{ff}]{0,40}") {
            if let Ok(Host::Name(n)) = normalize_host(&s) {
                proptest::prop_assert_eq!(normalize_host(&n), Ok(Host::Name(n.clone())));
            }
        }
    }

    /// Issue 20.1: the unspecified addresses reach the parent's own loopback services.
    #[test]
    fn unspecified_addresses_are_never_destinations() {
        let p = Policy::from_toml(
            r#"
            [[allow]]
            cidr = "0.0.0.0/0"
            [[allow]]
            cidr = "::/0"
            [[allow]]
            cidr = "0.0.0.0/8"
            [[allow]]
            cidr = "::/128"
            [[allow]]
            host = "*"
            [[deny]]
            cidr = "127.0.0.0/8"
            [[deny]]
            cidr = "::1/128"
            "#,
        )
        .unwrap();
        for host in [
            "0.0.0.0",
            "0",
            "0x0",
            "00",
            "0.0",
            "0.1.2.3",
            "::",
            "[::]",
            "0:0:0:0:0:0:0:0",
            "::ffff:0.0.0.0",
            "[::ffff:0:0]",
            "::0.0.0.7",
        ] {
            let r = p.check(host, 80, &[]).unwrap_err();
            assert!(r.message.contains("unspecified"), "{host}: {r:?}");
            assert_eq!(r.code, RefusalCode::DeniedByPolicy);
        }
        for resolved in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            let r = p
                .check("rebind.example", 80, &[resolved.parse().unwrap()])
                .unwrap_err();
            assert!(r.message.contains("unspecified"), "{resolved}: {r:?}");
        }
        // Only the unspecified addresses are dropped from an answer.
        assert_eq!(
            p.check("mixed.example", 80, &[v4("0.0.0.0"), v4("8.8.8.8")]),
            Ok(vec![v4("8.8.8.8")])
        );
        assert!(p.check("8.8.8.8", 80, &[]).is_ok());
    }

    /// Issue 20.1: an allow-cidr match does not skip the special-address classification.
    #[test]
    fn catch_all_cidr_does_not_admit_special_addresses() {
        let p = Policy::builder()
            .allow_cidr("0.0.0.0/0", &[])
            .allow_cidr("::/0", &[])
            .allow_cidr("10.0.0.0/8", &[])
            .build()
            .unwrap();
        for host in [
            "127.0.0.1",
            "169.254.169.254",
            "[::1]",
            "[fe80::1]",
            "224.0.0.1",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:7f00:1::1]",
        ] {
            let r = p.check(host, 80, &[]).unwrap_err();
            assert!(r.message.contains("special-purpose"), "{host}: {r:?}");
            assert!(r.message.contains("allow[0]") || r.message.contains("allow[1]"));
        }
        let r = p
            .check("meta.example", 80, &[v4("169.254.169.254")])
            .unwrap_err();
        assert!(r.message.contains("special-purpose"), "{r:?}");
        // Public and private addresses stay admitted by the wide blocks.
        assert!(p.check("8.8.8.8", 80, &[]).is_ok());
        assert!(p.check("10.1.1.1", 80, &[]).is_ok());
        assert!(p.check("[2600::1]", 80, &[]).is_ok());
        assert!(p.check("[64:ff9b::808:808]", 80, &[]).is_ok());
        // A rule within the special block is explicit.
        let p = Policy::builder()
            .allow_cidr("169.254.169.254/32", &[80])
            .allow_cidr("127.0.0.0/8", &[])
            .allow_cidr("::1/128", &[])
            .allow_cidr("64:ff9b::a9fe:a9fe/128", &[])
            .build()
            .unwrap();
        for host in [
            "169.254.169.254",
            "127.0.0.1",
            "127.9.9.9",
            "[::1]",
            "[64:ff9b::a9fe:a9fe]",
        ] {
            assert!(p.check(host, 80, &[]).is_ok(), "{host}");
        }
        assert!(p.check("169.254.169.253", 80, &[]).is_err());
    }

    /// Issue 20.4: EC2's IPv6 metadata, DNS and NTP addresses are special, not private.
    #[test]
    fn ec2_ipv6_services_are_special() {
        for s in ["fd00:ec2::254", "fd00:ec2::253", "fd00:ec2::123"] {
            let ip: IpAddr = s.parse().unwrap();
            assert!(matches!(classify(ip), AddressClass::Special(_)), "{s}");
        }
        assert_eq!(
            classify("fd00:ec2::252".parse().unwrap()),
            AddressClass::Private
        );
        let p = Policy::builder()
            .allow_host_private("*.vpc.internal", &[])
            .allow_cidr("fd00::/8", &[])
            .build()
            .unwrap();
        let meta: IpAddr = "fd00:ec2::254".parse().unwrap();
        let ula: IpAddr = "fd00::5".parse().unwrap();
        let r = p.check("kms.vpc.internal", 80, &[meta]).unwrap_err();
        assert!(r.message.contains("instance metadata"), "{r:?}");
        assert_eq!(p.check("kms.vpc.internal", 80, &[ula]), Ok(vec![ula]));
        assert!(p.check("[fd00:ec2::254]", 80, &[]).is_err());
        assert!(p.check("[fd00:ec2::123]", 123, &[]).is_err());
        assert!(p.check("[fd00::5]", 80, &[]).is_ok());
        let p = Policy::builder()
            .allow_cidr("fd00:ec2::254/128", &[80])
            .build()
            .unwrap();
        assert!(p.check("[fd00:ec2::254]", 80, &[]).is_ok());
    }

    #[test]
    fn mapped_cidr_is_ipv4() {
        let p = Policy::builder()
            .allow_cidr("::ffff:10.0.0.0/104", &[])
            .build()
            .unwrap();
        assert!(p.check("10.9.9.9", 1, &[]).is_ok());
    }
}
