//! The checks a parsed manifest must pass (pure).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::invalid;
use crate::schema::{EgressMode, Manifest};
use crate::{Error, VERSION};

const MIN_VOLUME: u64 = 1 << 20;
const MAX_VOLUME: u64 = 16 << 40;
const FILE_SYSTEMS: &[&str] = &["ext4", "ext3", "ext2", "xfs"];
const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64", "linux/arm64/v8"];
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 4096;
const MAX_LIST: usize = 256;

pub(crate) fn manifest(m: &Manifest) -> Result<(), Error> {
    if m.version != VERSION {
        return Err(Error::UnsupportedVersion {
            found: m.version,
            supported: VERSION,
        });
    }
    name("name", &m.name)?;
    image(m)?;
    app(m)?;
    egress(m)?;
    ports(m)?;
    volumes(m)?;
    secrets(m)?;
    // Checked after the volumes and secrets themselves, so that their own errors come first.
    let uses_kms = m.kms.proxy_port.is_some() || !m.volumes.is_empty() || !m.secrets.is_empty();
    if uses_kms && m.kms.region.is_none() {
        return Err(invalid(
            "kms.region",
            "required when the KMS proxy, volumes or secrets are used",
        ));
    }
    if m.resources.cpus == 0 || m.resources.cpus > 1024 {
        return Err(invalid("resources.cpus", "must be between 1 and 1024"));
    }
    if m.resources.memory_mib < 64 {
        return Err(invalid(
            "resources.memory_mib",
            "must be at least 64 (the smallest enclave Nitro runs)",
        ));
    }
    Ok(())
}

/// Names of the enclave, volumes and secrets: DNS-label-like.
fn name(field: &str, s: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{:?} is not a name (1 to 63 of a-z, 0-9 and '-', not starting or ending with '-')",
                short(s)
            ),
        ))
    }
}

/// An absolute, normalised path: `/a/b`, no `.`/`..`/empty components, no NUL.
fn abs_path(field: &str, p: &str) -> Result<(), Error> {
    let normal = p.starts_with('/')
        && p.len() <= 4096
        && !p.contains('\0')
        && (p == "/"
            || p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."));
    if normal {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{:?} is not an absolute, normalised path (no '.', '..', '//' or trailing '/')",
                short(p)
            ),
        ))
    }
}

fn env_name(field: &str, k: &str) -> Result<(), Error> {
    let mut b = k.bytes();
    let ok = k.len() <= 256
        && b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{:?} is not an environment variable name", short(k)),
        ))
    }
}

fn no_nul(field: &str, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        Err(invalid(field, "contains a NUL byte"))
    } else {
        Ok(())
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn image(m: &Manifest) -> Result<(), Error> {
    let i = &m.image;
    let given = [&i.oci, &i.docker_archive, &i.reference]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given != 1 {
        return Err(invalid(
            "image",
            "give exactly one of `oci`, `docker_archive` and `reference`",
        ));
    }
    for (f, v) in [
        ("image.oci", &i.oci),
        ("image.docker_archive", &i.docker_archive),
        ("image.reference", &i.reference),
    ] {
        if let Some(v) = v {
            if v.trim().is_empty() {
                return Err(invalid(f, "is empty"));
            }
            no_nul(f, v)?;
        }
    }
    if let Some(r) = &i.reference
        && (r.chars().any(char::is_whitespace) || r.len() > 1024)
    {
        return Err(invalid(
            "image.reference",
            format!("{:?} is not an image reference", short(r)),
        ));
    }
    if let Some(p) = &i.platform
        && !PLATFORMS.contains(&p.as_str())
    {
        return Err(invalid(
            "image.platform",
            format!("{:?} is not one of {}", short(p), PLATFORMS.join(", ")),
        ));
    }
    Ok(())
}

fn app(m: &Manifest) -> Result<(), Error> {
    for (f, v) in [
        ("app.entrypoint", &m.app.entrypoint),
        ("app.cmd", &m.app.cmd),
    ] {
        if let Some(args) = v {
            if args.len() > MAX_ARGS {
                return Err(invalid(f, format!("more than {MAX_ARGS} arguments")));
            }
            if f == "app.entrypoint" && args.first().is_none_or(|a| a.is_empty()) {
                return Err(invalid(f, "needs a program as its first element"));
            }
            for a in args {
                no_nul(f, a)?;
            }
        }
    }
    if m.app.env.len() > MAX_ENV {
        return Err(invalid("app.env", format!("more than {MAX_ENV} variables")));
    }
    for (k, v) in &m.app.env {
        env_name(&format!("app.env.{}", short(k)), k)?;
        no_nul(&format!("app.env.{k}"), v)?;
    }
    if let Some(w) = &m.app.workdir {
        abs_path("app.workdir", w)?;
    }
    if m.app.stop_timeout_secs.is_some_and(|s| s > 3600) {
        return Err(invalid("app.stop_timeout_secs", "at most 3600"));
    }
    Ok(())
}

fn egress(m: &Manifest) -> Result<(), Error> {
    let e = &m.egress;
    if e.allow.len() + e.deny.len() > 4096 {
        return Err(invalid("egress", "more than 4096 rules"));
    }
    nitro_net::Policy::from_toml(&e.policy_toml()).map_err(Error::Policy)?;
    if e.mode != EgressMode::None && e.allow.is_empty() {
        return Err(invalid(
            "egress.allow",
            "egress is enabled but no rule allows anything (add [[egress.allow]] rules or set mode = \"none\")",
        ));
    }
    Ok(())
}

/// Loopback TCP ports (the supervisor's services and the application's ingress ports) and the
/// parent-side vsock ports must all be distinct and non-zero.
fn ports(m: &Manifest) -> Result<(), Error> {
    let mut tcp: BTreeMap<u16, String> = BTreeMap::new();
    let mut claim_tcp = |port: u16, what: String| -> Result<(), Error> {
        if port == 0 {
            return Err(invalid(what, "port 0"));
        }
        if let Some(other) = tcp.insert(port, what.clone()) {
            return Err(invalid(
                what,
                format!("port {port} is already used by {other}"),
            ));
        }
        Ok(())
    };
    for (p, what) in m.service_ports() {
        claim_tcp(p, what.to_owned())?;
    }
    if m.ingress.len() > MAX_LIST {
        return Err(invalid("ingress", format!("more than {MAX_LIST} entries")));
    }
    let mut enclave_vsock = BTreeSet::new();
    for (i, g) in m.ingress.iter().enumerate() {
        claim_tcp(g.port, format!("ingress[{i}].port"))?;
        let v = g.vsock_port();
        vsock_ok(&format!("ingress[{i}].vsock_port"), v)?;
        if !enclave_vsock.insert(v) {
            return Err(invalid(
                format!("ingress[{i}].vsock_port"),
                format!("vsock port {v} is used twice"),
            ));
        }
    }

    // The parent's services the enclave connects to.
    let mut parent: BTreeMap<u32, String> = crate::RESERVED_VSOCK_PORTS
        .iter()
        .map(|(port, what)| (*port, (*what).to_owned()))
        .collect();
    let mut claim_parent = |port: u32, what: String| -> Result<(), Error> {
        vsock_ok(&what, port)?;
        if let Some(other) = parent.insert(port, what.clone()) {
            return Err(invalid(
                what,
                format!("vsock port {port} is already used by {other}"),
            ));
        }
        Ok(())
    };
    claim_parent(m.parent.log_vsock_port, "parent.log_vsock_port".into())?;
    if !m.secrets.is_empty() {
        claim_parent(
            m.parent.secrets_vsock_port,
            "parent.secrets_vsock_port".into(),
        )?;
    }
    if m.egress.mode != EgressMode::None {
        claim_parent(m.egress.vsock_port, "egress.vsock_port".into())?;
    }
    if !(10..=86_400).contains(&m.clock.interval_secs) {
        return Err(invalid(
            "clock.interval_secs",
            "must be between 10 and 86400 seconds",
        ));
    }
    if m.clock.sync {
        claim_parent(m.clock.vsock_port, "clock.vsock_port".into())?;
    }
    if m.kms.proxy_port.is_some() || !m.volumes.is_empty() || !m.secrets.is_empty() {
        claim_parent(
            m.kms.credentials_port(),
            "kms.credentials_vsock_port".into(),
        )?;
    }
    for (i, (_, port)) in m.volume_ports().into_iter().enumerate() {
        claim_parent(port, format!("volume[{i}].vsock_port"))?;
    }
    if let Some(e) = &m.kms.endpoint {
        kms_endpoint(e)?;
    }
    if let Some(f) = &m.kms.ca_file
        && !(f.starts_with('/') && f.len() <= 4096 && !f.contains('\0'))
    {
        return Err(invalid(
            "kms.ca_file",
            format!("{:?} is not an absolute path in the image", short(f)),
        ));
    }
    if let Some(r) = &m.kms.region {
        let ok = !r.is_empty()
            && r.len() <= 64
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(invalid(
                "kms.region",
                format!("{:?} is not a region", short(r)),
            ));
        }
    }
    Ok(())
}

/// `https://HOST[:PORT]`, optionally with a trailing `/`: no user, path, query or fragment.
fn kms_endpoint(e: &str) -> Result<(), Error> {
    let bad = |why: &str| invalid("kms.endpoint", format!("{:?}: {why}", short(e)));
    let rest = e
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https:// (TLS ends in the enclave)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("must be https://HOST[:PORT] only"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[addr]` or `[addr]:port`.
        Some(v6) => {
            let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("no valid IPv6 address in brackets"));
            }
            match tail {
                "" => (h, None),
                t => (
                    h,
                    Some(t.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if let Some(p) = port
        && p.parse::<u16>().ok().is_none_or(|p| p == 0)
    {
        return Err(bad("the port must be 1-65535"));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    if !host_ok {
        return Err(bad("no valid host name"));
    }
    Ok(())
}

fn vsock_ok(field: &str, port: u32) -> Result<(), Error> {
    if port == 0 || port == u32::MAX {
        Err(invalid(field, format!("vsock port {port} cannot be used")))
    } else {
        Ok(())
    }
}

fn volumes(m: &Manifest) -> Result<(), Error> {
    if m.volumes.len() > MAX_LIST {
        return Err(invalid("volume", format!("more than {MAX_LIST} volumes")));
    }
    let mut names = BTreeSet::new();
    let mut mounts: Vec<&str> = Vec::new();
    for (i, v) in m.volumes.iter().enumerate() {
        let f = |k: &str| format!("volume[{i}].{k}");
        name(&f("name"), &v.name)?;
        if !names.insert(v.name.as_str()) {
            return Err(invalid(
                f("name"),
                format!("volume {:?} is declared twice", v.name),
            ));
        }
        let size = v.size.bytes();
        if !(MIN_VOLUME..=MAX_VOLUME).contains(&size) || !size.is_multiple_of(4096) {
            return Err(invalid(
                f("size"),
                format!(
                    "{} must be a multiple of 4 KiB between 1 MiB and 16 TiB",
                    v.size
                ),
            ));
        }
        abs_path(&f("mount"), &v.mount)?;
        if v.mount == "/" {
            return Err(invalid(f("mount"), "cannot be the root directory"));
        }
        for other in &mounts {
            let nested = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if nested(&v.mount, other) || nested(other, &v.mount) {
                return Err(invalid(
                    f("mount"),
                    format!("{} overlaps the mount point {other}", v.mount),
                ));
            }
        }
        mounts.push(&v.mount);
        if v.key.is_empty() || v.key.len() > 2048 || v.key.chars().any(char::is_whitespace) {
            return Err(invalid(f("key"), "is not a KMS key id, ARN or alias"));
        }
        if !FILE_SYSTEMS.contains(&v.fs.as_str()) {
            return Err(invalid(
                f("fs"),
                format!(
                    "{:?} is not one of {}",
                    short(&v.fs),
                    FILE_SYSTEMS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn secrets(m: &Manifest) -> Result<(), Error> {
    if m.secrets.len() > MAX_LIST {
        return Err(invalid("secret", format!("more than {MAX_LIST} secrets")));
    }
    let mut names = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for (i, s) in m.secrets.iter().enumerate() {
        let f = |k: &str| format!("secret[{i}].{k}");
        name(&f("name"), &s.name)?;
        if !names.insert(s.name.as_str()) {
            return Err(invalid(
                f("name"),
                format!("secret {:?} is declared twice", s.name),
            ));
        }
        match (&s.file, &s.env) {
            (Some(p), None) => {
                abs_path(&f("file"), p)?;
                if p == "/" {
                    return Err(invalid(f("file"), "cannot be the root directory"));
                }
                if !targets.insert(format!("file {p}")) {
                    return Err(invalid(f("file"), format!("{p} receives two secrets")));
                }
            }
            (None, Some(e)) => {
                env_name(&f("env"), e)?;
                if m.app.env.contains_key(e) {
                    return Err(invalid(
                        f("env"),
                        format!("{e} is also set in app.env; the secret would be overwritten"),
                    ));
                }
                if !targets.insert(format!("env {e}")) {
                    return Err(invalid(f("env"), format!("{e} receives two secrets")));
                }
            }
            _ => {
                return Err(invalid(
                    format!("secret[{i}]"),
                    "give exactly one of `file` and `env`",
                ));
            }
        }
    }
    Ok(())
}
