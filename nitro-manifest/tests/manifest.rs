//! The manifest schema: the documented example, every refusal with its field, hostile text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on failure by design.

use nitro_manifest::{EgressMode, Error, ImageSource, Manifest, SecretTarget};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../enclave.example.toml");

const MINIMAL: &str = r#"
version = 1
name = "m"
[image]
oci = "layout"
"#;

#[test]
fn the_documented_example_parses_with_every_section() {
    let m = Manifest::from_toml(EXAMPLE).unwrap();
    assert_eq!(m.name, "hello-python");
    assert_eq!(m.image.source(), ImageSource::Oci("build/hello-oci:latest"));
    assert_eq!(m.egress.mode, EgressMode::Transparent);
    assert_eq!(m.ingress[0].vsock_port(), 8080);
    assert_eq!(m.volumes[0].size.bytes(), 1 << 30);
    assert_eq!(
        m.secrets[1].target(),
        SecretTarget::File("/run/secrets/tls-key.pem")
    );
    assert_eq!(m.resources.memory_mib, 2048);
    let p = m.egress_policy().unwrap();
    assert!(p.check_name_any_port("kms.eu-west-1.amazonaws.com").is_ok());
    assert!(p.check_name_any_port("evil.example.net").is_err());
    let env = m.app_environment();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("AWS_ENDPOINT_URL_KMS"), Some("http://127.0.0.1:4000"));
    assert_eq!(get("AWS_REGION"), Some("eu-west-1"));
    assert_eq!(
        get("NITRO_ATTESTATION_URL"),
        Some("http://127.0.0.1:4001/v1/attestation")
    );
    assert_eq!(get("LOG_LEVEL"), Some("info"));
    assert_eq!(
        get("HTTPS_PROXY"),
        None,
        "transparent mode sets no proxy variables"
    );
    let ports: Vec<u16> = m.service_ports().into_iter().map(|(p, _)| p).collect();
    assert_eq!(ports, [53, 15001, 4000, 4001]);
    assert_eq!(m.volume_ports()[0].1, 9100);
    assert_eq!(m.parent.log_vsock_port, 8005);
    assert_eq!(m.parent.secrets_vsock_port, 8004);
}

#[test]
fn defaults_of_a_minimal_manifest() {
    let m = Manifest::from_toml(MINIMAL).unwrap();
    assert_eq!(m.egress.mode, EgressMode::None);
    assert!(m.ingress.is_empty() && m.volumes.is_empty() && m.secrets.is_empty());
    assert!(m.clock.sync);
    assert_eq!((m.resources.cpus, m.resources.memory_mib), (2, 1024));
    assert!(m.app_environment().is_empty());
    assert!(m.service_ports().is_empty());
}

#[test]
fn proxy_mode_sets_the_proxy_variables() {
    let m = Manifest::from_toml(&format!(
        "{MINIMAL}[egress]\nmode = \"proxy\"\n[[egress.allow]]\nhost = \"a.example\"\n"
    ))
    .unwrap();
    let env = m.app_environment();
    assert!(env.contains(&("HTTPS_PROXY".into(), "http://127.0.0.1:3128".into())));
    assert!(env.contains(&("ALL_PROXY".into(), "socks5h://127.0.0.1:1080".into())));
}

fn field_of(text: &str) -> String {
    match Manifest::from_toml(text) {
        Err(Error::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}\n{text}"),
    }
}

#[test]
fn invalid_values_name_their_field() {
    let cases: &[(&str, &str)] = &[
        (
            "version = 1\nname = \"Bad_Name\"\n[image]\noci = \"x\"\n",
            "name",
        ),
        ("version = 1\nname = \"-x\"\n[image]\noci = \"x\"\n", "name"),
        ("version = 1\nname = \"x\"\n[image]\n", "image"),
        (
            "version = 1\nname = \"x\"\n[image]\noci = \"x\"\nreference = \"r/x:1\"\n",
            "image",
        ),
        (
            "version = 1\nname = \"x\"\n[image]\nreference = \"a b\"\n",
            "image.reference",
        ),
        (
            "version = 1\nname = \"x\"\n[image]\noci = \"x\"\nplatform = \"windows/amd64\"\n",
            "image.platform",
        ),
        (
            &format!("{MINIMAL}[app]\nentrypoint = []\n"),
            "app.entrypoint",
        ),
        (
            &format!("{MINIMAL}[app]\nworkdir = \"app\"\n"),
            "app.workdir",
        ),
        (
            &format!("{MINIMAL}[app]\nworkdir = \"/a/../b\"\n"),
            "app.workdir",
        ),
        (
            &format!("{MINIMAL}[app]\nenv = {{ \"1X\" = \"v\" }}\n"),
            "app.env.1X",
        ),
        (
            &format!("{MINIMAL}[egress]\nmode = \"transparent\"\n"),
            "egress.allow",
        ),
        (
            &format!("{MINIMAL}[kms]\nproxy_port = 4000\n[attestation]\napi_port = 4000\n"),
            "attestation.api_port",
        ),
        (
            &format!("{MINIMAL}[kms]\nproxy_port = 0\n"),
            "kms.proxy_port",
        ),
        (
            &format!("{MINIMAL}[kms]\nproxy_port = 8080\n[[ingress]]\nport = 8080\n"),
            "ingress[0].port",
        ),
        (
            &format!("{MINIMAL}[[ingress]]\nport = 80\n[[ingress]]\nport = 81\nvsock_port = 80\n"),
            "ingress[1].vsock_port",
        ),
        (
            &format!(
                "{MINIMAL}[egress]\nmode = \"transparent\"\ntransparent_port = 53\n[[egress.allow]]\nhost = \"a\"\n"
            ),
            "egress.transparent_port",
        ),
        (
            &format!("{MINIMAL}[kms]\nregion = \"EU West\"\n"),
            "kms.region",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"http://kms.local\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://u@kms.local\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://kms.local/path\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://kms.local:0\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://kms.local:99999\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://[::1\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://[zz]:443\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nendpoint = \"https://kms local\"\n"),
            "kms.endpoint",
        ),
        (
            &format!("{MINIMAL}[kms]\nca_file = \"ca.pem\"\n"),
            "kms.ca_file",
        ),
        (
            &format!("{MINIMAL}[clock]\ninterval_secs = 5\n"),
            "clock.interval_secs",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1000\"\nmount = \"/d\"\nkey = \"k\"\n"
            ),
            "volume[0].size",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/\"\nkey = \"k\"\n"
            ),
            "volume[0].mount",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"k\"\nfs = \"ntfs\"\n"
            ),
            "volume[0].fs",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"\"\n"
            ),
            "volume[0].key",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"k\"\n[[volume]]\nname = \"e\"\nsize = \"1GiB\"\nmount = \"/d/e\"\nkey = \"k\"\n"
            ),
            "volume[1].mount",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"k\"\n[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/e\"\nkey = \"k\"\n"
            ),
            "volume[1].name",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"k\"\nvsock_port = 8003\n"
            ),
            "volume[0].vsock_port",
        ),
        (
            &format!(
                "{MINIMAL}[[volume]]\nname = \"d\"\nsize = \"1GiB\"\nmount = \"/d\"\nkey = \"k\"\nvsock_port = 9000\n"
            ),
            "volume[0].vsock_port",
        ),
        (
            &format!("{MINIMAL}[parent]\nlog_vsock_port = 9999\n"),
            "parent.log_vsock_port",
        ),
        (
            &format!(
                "{MINIMAL}[parent]\nsecrets_vsock_port = 8005\n[[secret]]\nname = \"s\"\nenv = \"S\"\n"
            ),
            "parent.secrets_vsock_port",
        ),
        (&format!("{MINIMAL}[[secret]]\nname = \"s\"\n"), "secret[0]"),
        (
            &format!("{MINIMAL}[[secret]]\nname = \"s\"\nfile = \"/f\"\nenv = \"E\"\n"),
            "secret[0]",
        ),
        (
            &format!("{MINIMAL}[[secret]]\nname = \"s\"\nfile = \"rel\"\n"),
            "secret[0].file",
        ),
        (
            &format!(
                "{MINIMAL}[app]\nenv = {{ E = \"x\" }}\n[[secret]]\nname = \"s\"\nenv = \"E\"\n"
            ),
            "secret[0].env",
        ),
        (
            &format!(
                "{MINIMAL}[[secret]]\nname = \"s\"\nenv = \"E\"\n[[secret]]\nname = \"t\"\nenv = \"E\"\n"
            ),
            "secret[1].env",
        ),
        (
            &format!("{MINIMAL}[resources]\nmemory_mib = 32\n"),
            "resources.memory_mib",
        ),
        (
            &format!("{MINIMAL}[resources]\ncpus = 0\n"),
            "resources.cpus",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(field_of(text), *field, "{text}");
    }
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = format!("{MINIMAL}[app]\nentrypoint = [\"x\"]\nentry_point = [\"y\"]\n");
    match Manifest::from_toml(&text) {
        Err(e @ Error::Schema { line: Some(8), .. }) => {
            assert!(e.to_string().contains("entry_point"), "{e}");
            assert!(e.to_string().starts_with("line 8"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Manifest::from_toml(&format!("{MINIMAL}[network]\n")),
        Err(Error::Schema { .. })
    ));
    assert!(
        matches!(
            Manifest::from_toml("name = \"x\"\n[image]\noci = \"x\"\n"),
            Err(Error::Schema { .. })
        ),
        "version is required"
    );
}

#[test]
fn a_newer_version_is_refused_for_its_version() {
    let e =
        Manifest::from_toml("version = 2\nname = \"x\"\n[image]\noci = \"x\"\n[future]\nkey = 1\n")
            .unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_bad_egress_rule_is_a_policy_error() {
    let text = format!(
        "{MINIMAL}[egress]\nmode = \"transparent\"\n[[egress.allow]]\ncidr = \"10.0.0.0/33\"\n"
    );
    assert!(matches!(Manifest::from_toml(&text), Err(Error::Policy(_))));
    let text = format!("{MINIMAL}[[egress.allow]]\nhost = \"a\"\nport = 443\n");
    assert!(
        matches!(Manifest::from_toml(&text), Err(Error::Policy(_))),
        "unknown rule key"
    );
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    let text = format!(
        "{MINIMAL}#{}\n",
        "x".repeat(nitro_manifest::MAX_MANIFEST_LEN)
    );
    assert!(matches!(
        Manifest::from_toml(&text),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let dir = std::env::temp_dir().join(format!("nitro-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("enclave.toml");
    std::fs::write(&p, EXAMPLE).unwrap();
    assert_eq!(Manifest::load(&p).unwrap().name, "hello-python");
    let e = Manifest::load(dir.join("missing.toml")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(std::error::Error::source(&e).is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        let _ = Manifest::from_toml(&s);
    }

    #[test]
    fn mutated_example_never_panics(cut in 0usize..EXAMPLE.len(), insert in ".{0,20}") {
        let mut t = EXAMPLE.to_owned();
        let cut = (0..=cut).rev().find(|&i| t.is_char_boundary(i)).unwrap_or(0);
        t.insert_str(cut, &insert);
        let _ = Manifest::from_toml(&t);
    }

    #[test]
    fn sizes_round_trip(n in 1u64..(1 << 24), shift in prop::sample::select(vec![0u32, 10, 20, 30])) {
        let s = nitro_manifest::Size::from_bytes(n << shift);
        prop_assert_eq!(s.to_string().parse::<nitro_manifest::Size>().unwrap(), s);
    }
}

#[test]
fn kms_endpoint_forms() {
    for ok in [
        "https://kms.eu-west-1.amazonaws.com",
        "https://vpce-0abc-kms.eu-west-1.vpce.amazonaws.com/",
        "https://kms.local.test:8443",
        "https://127.0.0.1:4443",
        "https://[::1]:4443",
    ] {
        let m = Manifest::from_toml(&format!(
            "{MINIMAL}[kms]\nendpoint = \"{ok}\"\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n"
        ))
        .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(m.kms.endpoint.as_deref(), Some(ok));
    }
}
