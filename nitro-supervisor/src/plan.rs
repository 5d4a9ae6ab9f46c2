//! The start plan: what the supervisor does, in order, for one manifest (pure, no IO).

use std::time::Duration;

use nitro_manifest::{EgressMode, Manifest, SecretTarget};

use crate::{Error, Result};

/// The default time between SIGTERM and SIGKILL when the application is stopped.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The DNS server's port in transparent mode.
pub const DNS_PORT: u16 = 53;

/// One step of the plan, in the order the supervisor runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Bring up `lo`.
    Loopback,
    /// Synchronise the clock with the parent's time service (step allowed), then again every
    /// `interval` while the application runs.
    ClockSync {
        /// The parent's vsock port (`clock.vsock_port`).
        vsock_port: u32,
        /// `clock.interval_secs`.
        interval: Duration,
    },
    /// Transparent egress: the transparent listener, the iptables `REDIRECT` rules, the DNS
    /// server on 127.0.0.1:53 and `/etc/resolv.conf`.
    TransparentEgress {
        /// The parent's egress port (`egress.vsock_port`).
        vsock_port: u32,
        /// The transparent listener's loopback port (`egress.transparent_port`).
        listen_port: u16,
    },
    /// Proxy egress: HTTP CONNECT and SOCKS5 proxies on loopback.
    ProxyEgress {
        /// The parent's egress port (`egress.vsock_port`).
        vsock_port: u32,
        /// `egress.http_proxy_port`.
        http_port: u16,
        /// `egress.socks_port`.
        socks_port: u16,
    },
    /// The attesting KMS proxy on loopback.
    KmsProxy {
        /// `kms.proxy_port`.
        port: u16,
    },
    /// The attestation API on loopback.
    AttestationApi {
        /// `attestation.api_port`.
        port: u16,
    },
    /// Fetch, unseal and deliver a secret.
    Secret {
        /// The secret's name (asked from the parent by it).
        name: String,
        /// Where it goes.
        target: SecretDelivery,
    },
    /// Attach a sealed volume through the kernel's NBD driver and mount it.
    Volume {
        /// The volume's name (the parent's export).
        name: String,
        /// The parent's NBD vsock port.
        vsock_port: u32,
        /// The KMS key wrapping its data key.
        key: String,
        /// Its mount point.
        mount: String,
        /// Its file system.
        fs: String,
        /// The kernel NBD device it is attached to (`/dev/nbd<index>`).
        device: String,
    },
    /// Listen on a vsock port and forward to the application's loopback port.
    Ingress {
        /// The vsock port the parent connects to.
        vsock_port: u32,
        /// The application's TCP port on 127.0.0.1.
        port: u16,
    },
    /// Start the application and forward its output to the parent's log sink.
    App(AppPlan),
}

/// Where a secret is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretDelivery {
    /// A file (mode 0400, written atomically, parent directories created).
    File(String),
    /// An environment variable of the application.
    Env(String),
}

/// How the application is started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppPlan {
    /// The command line (`argv[0]` is searched in `PATH` when it has no `/`).
    pub argv: Vec<String>,
    /// The environment on top of the supervisor's own (`Manifest::app_environment`); the
    /// secrets delivered by environment are added at start.
    pub env: Vec<(String, String)>,
    /// The working directory (`None`: the supervisor's).
    pub workdir: Option<String>,
    /// Time between SIGTERM and SIGKILL when the application is stopped.
    pub stop_timeout: Duration,
    /// The parent's log sink vsock port.
    pub log_vsock_port: u32,
}

/// The KMS client the supervisor needs (for the proxy, the secrets and the volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsPlan {
    /// The region (`kms.region`).
    pub region: String,
    /// The parent's credentials vsock port.
    pub credentials_vsock_port: u32,
    /// The parent's egress vsock port, through which KMS is reached.
    pub egress_vsock_port: u32,
    /// The endpoint (`kms.endpoint`; default `https://kms.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    /// Extra trust roots for it, a PEM file in the image (`kms.ca_file`).
    pub ca_file: Option<String>,
}

/// The ordered start plan of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The KMS client, when a step needs one.
    pub kms: Option<KmsPlan>,
    /// The secrets vsock port of the parent.
    pub secrets_vsock_port: u32,
}

impl Plan {
    /// The plan for `manifest`. `image_argv` is the image's own command (its `ENTRYPOINT`
    /// and `CMD`, given to the supervisor after `--`), used when the manifest overrides
    /// neither.
    ///
    /// Order: loopback, clock, egress, KMS proxy, attestation API, secrets, volumes, ingress,
    /// the application; the services the application uses are up before it starts.
    ///
    /// ```
    /// use nitro_manifest::Manifest;
    /// use nitro_supervisor::plan::{Plan, Step};
    ///
    /// let m = Manifest::from_toml(r#"
    ///     version = 1
    ///     name = "hello"
    ///     [image]
    ///     oci = "build/hello"
    ///     [app]
    ///     entrypoint = ["/bin/hello"]
    ///     [clock]
    ///     sync = false
    /// "#)?;
    /// let plan = Plan::new(&m, &[])?;
    /// assert_eq!(plan.steps[0], Step::Loopback);
    /// assert!(matches!(plan.steps.last(), Some(Step::App(app)) if app.argv == ["/bin/hello"]));
    /// # Ok::<(), nitro_supervisor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Plan`] naming the manifest field: no command (`app.entrypoint`), a KMS
    /// client needed without `kms.region`, `egress.synthetic_dns = false` in transparent mode
    /// (not supported), or an invalid policy (`egress.allow`).
    pub fn new(manifest: &Manifest, image_argv: &[String]) -> Result<Plan> {
        let mut steps = vec![Step::Loopback];
        if manifest.clock.sync {
            steps.push(Step::ClockSync {
                vsock_port: manifest.clock.vsock_port,
                interval: Duration::from_secs(u64::from(manifest.clock.interval_secs)),
            });
        }
        let eg = &manifest.egress;
        if eg.mode != EgressMode::None {
            manifest
                .egress_policy()
                .map_err(|e| Error::plan("egress.allow", format!("{e}")))?;
        }
        match eg.mode {
            EgressMode::Transparent => {
                if !eg.synthetic_dns {
                    return Err(Error::plan(
                        "egress.synthetic_dns",
                        "`false` is not supported: the in-enclave DNS server answers admitted \
                         names with synthetic addresses",
                    ));
                }
                steps.push(Step::TransparentEgress {
                    vsock_port: eg.vsock_port,
                    listen_port: eg.transparent_port,
                });
            }
            EgressMode::Proxy => steps.push(Step::ProxyEgress {
                vsock_port: eg.vsock_port,
                http_port: eg.http_proxy_port,
                socks_port: eg.socks_port,
            }),
            _ => {}
        }
        if let Some(port) = manifest.kms.proxy_port {
            steps.push(Step::KmsProxy { port });
        }
        if let Some(port) = manifest.attestation.api_port {
            steps.push(Step::AttestationApi { port });
        }
        for s in &manifest.secrets {
            let target = match s.target() {
                SecretTarget::File(f) => SecretDelivery::File(f.to_owned()),
                SecretTarget::Env(e) if !e.is_empty() => SecretDelivery::Env(e.to_owned()),
                _ => {
                    return Err(Error::plan(
                        format!("secret.{}", s.name),
                        "neither `file` nor `env` is set",
                    ));
                }
            };
            steps.push(Step::Secret {
                name: s.name.clone(),
                target,
            });
        }
        for (i, (v, port)) in manifest.volume_ports().into_iter().enumerate() {
            steps.push(Step::Volume {
                name: v.name.clone(),
                vsock_port: port,
                key: v.key.clone(),
                mount: v.mount.clone(),
                fs: v.fs.clone(),
                device: format!("/dev/nbd{i}"),
            });
        }
        for ing in &manifest.ingress {
            steps.push(Step::Ingress {
                vsock_port: ing.vsock_port(),
                port: ing.port,
            });
        }
        let needs_kms = manifest.kms.proxy_port.is_some()
            || !manifest.secrets.is_empty()
            || !manifest.volumes.is_empty();
        let kms = if needs_kms {
            let why = if manifest.kms.proxy_port.is_some() {
                "the KMS proxy"
            } else if !manifest.secrets.is_empty() {
                "the sealed secrets"
            } else {
                "the sealed volumes"
            };
            let region = manifest.kms.region.clone().ok_or_else(|| {
                Error::plan(
                    "kms.region",
                    format!("required: {why} need KMS, and the parent does not send a region"),
                )
            })?;
            Some(KmsPlan {
                region,
                credentials_vsock_port: manifest.kms.credentials_port(),
                egress_vsock_port: eg.vsock_port,
                endpoint: manifest.kms.endpoint.clone(),
                ca_file: manifest.kms.ca_file.clone(),
            })
        } else {
            None
        };
        let app = &manifest.app;
        let argv = match (&app.entrypoint, &app.cmd) {
            (Some(e), cmd) => e.iter().chain(cmd.iter().flatten()).cloned().collect(),
            (None, Some(cmd)) => cmd.clone(),
            (None, None) => image_argv.to_vec(),
        };
        if argv.first().is_none_or(String::is_empty) {
            return Err(Error::plan(
                "app.entrypoint",
                "no command: the manifest sets neither `app.entrypoint` nor `app.cmd`, and the \
                 image's command was not given (after `--`)",
            ));
        }
        steps.push(Step::App(AppPlan {
            argv,
            env: manifest.app_environment(),
            workdir: app.workdir.clone(),
            stop_timeout: app
                .stop_timeout_secs
                .map_or(DEFAULT_STOP_TIMEOUT, |s| Duration::from_secs(u64::from(s))),
            log_vsock_port: manifest.parent.log_vsock_port,
        }));
        Ok(Plan {
            steps,
            kms,
            secrets_vsock_port: manifest.parent.secrets_vsock_port,
        })
    }

    /// The application step.
    pub fn app(&self) -> Option<&AppPlan> {
        self.steps.iter().find_map(|s| match s {
            Step::App(a) => Some(a),
            _ => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::from_toml(&format!(
            "version = 1\nname = \"t\"\n[image]\noci = \"x\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn order_and_fields() {
        let m = manifest(
            r#"
            [app]
            entrypoint = ["/bin/sh", "-c"]
            cmd = ["exit 0"]
            stop_timeout_secs = 3
            [egress]
            mode = "transparent"
            [[egress.allow]]
            host = "example.com"
            ports = [443]
            [kms]
            proxy_port = 4000
            region = "eu-west-1"
            [attestation]
            api_port = 4001
            [[ingress]]
            port = 8080
            [[volume]]
            name = "data"
            size = "1MiB"
            mount = "/data"
            key = "alias/v"
            [[volume]]
            name = "logs"
            size = "1MiB"
            mount = "/logs"
            key = "alias/v"
            fs = "ext2"
            vsock_port = 9200
            [[secret]]
            name = "pw"
            env = "PW"
            [[secret]]
            name = "tls"
            file = "/run/secrets/tls.key"
        "#,
        );
        let plan = Plan::new(&m, &[]).unwrap();
        let kinds: Vec<&str> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Loopback => "lo",
                Step::ClockSync { .. } => "clock",
                Step::TransparentEgress { .. } => "transparent",
                Step::ProxyEgress { .. } => "proxy",
                Step::KmsProxy { .. } => "kms",
                Step::AttestationApi { .. } => "attest",
                Step::Secret { .. } => "secret",
                Step::Volume { .. } => "volume",
                Step::Ingress { .. } => "ingress",
                Step::App(_) => "app",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "lo",
                "clock",
                "transparent",
                "kms",
                "attest",
                "secret",
                "secret",
                "volume",
                "volume",
                "ingress",
                "app"
            ]
        );
        assert!(plan.steps.contains(&Step::TransparentEgress {
            vsock_port: 8000,
            listen_port: 15001
        }));
        assert!(plan.steps.contains(&Step::ClockSync {
            vsock_port: 8003,
            interval: Duration::from_secs(600)
        }));
        assert!(plan.steps.contains(&Step::Volume {
            name: "data".into(),
            vsock_port: 9100,
            key: "alias/v".into(),
            mount: "/data".into(),
            fs: "ext4".into(),
            device: "/dev/nbd0".into(),
        }));
        assert!(plan.steps.contains(&Step::Volume {
            name: "logs".into(),
            vsock_port: 9200,
            key: "alias/v".into(),
            mount: "/logs".into(),
            fs: "ext2".into(),
            device: "/dev/nbd1".into(),
        }));
        assert!(plan.steps.contains(&Step::Secret {
            name: "tls".into(),
            target: SecretDelivery::File("/run/secrets/tls.key".into())
        }));
        assert!(plan.steps.contains(&Step::Ingress {
            vsock_port: 8080,
            port: 8080
        }));
        let app = plan.app().unwrap();
        assert_eq!(app.argv, ["/bin/sh", "-c", "exit 0"]);
        assert_eq!(app.stop_timeout, Duration::from_secs(3));
        assert_eq!(app.log_vsock_port, 8005);
        assert!(app.env.contains(&(
            "AWS_ENDPOINT_URL_KMS".into(),
            "http://127.0.0.1:4000".into()
        )));
        assert_eq!(
            plan.kms,
            Some(KmsPlan {
                region: "eu-west-1".into(),
                credentials_vsock_port: nitro_manifest::DEFAULT_CREDENTIALS_VSOCK_PORT,
                egress_vsock_port: 8000,
                endpoint: None,
                ca_file: None,
            })
        );
        assert_eq!(plan.secrets_vsock_port, 8004);
    }

    #[test]
    fn proxy_mode_and_image_command() {
        let m = manifest(
            "[egress]\nmode = \"proxy\"\n[[egress.allow]]\nhost = \"a.example\"\n[clock]\nsync = false\n",
        );
        let plan = Plan::new(&m, &["/app".into(), "serve".into()]).unwrap();
        assert_eq!(plan.steps[0], Step::Loopback);
        assert_eq!(
            plan.steps[1],
            Step::ProxyEgress {
                vsock_port: 8000,
                http_port: 3128,
                socks_port: 1080
            }
        );
        assert_eq!(plan.app().unwrap().argv, ["/app", "serve"]);
        assert_eq!(plan.app().unwrap().stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert!(plan.kms.is_none());
    }

    #[test]
    fn fails_fast_naming_the_field() {
        let no_cmd = manifest("");
        let e = Plan::new(&no_cmd, &[]).unwrap_err();
        assert!(
            matches!(&e, Error::Plan { field, .. } if field == "app.entrypoint"),
            "{e}"
        );

        // A manifest that uses KMS without a region is refused by nitro-manifest already.
        let no_region = Manifest::from_toml(
            "version = 1\nname = \"t\"\n[image]\noci = \"x\"\n[app]\nentrypoint = [\"/a\"]\n[[secret]]\nname = \"pw\"\nenv = \"PW\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(&no_region, nitro_manifest::Error::InvalidArgument { field, .. } if field == "kms.region"),
            "{no_region}"
        );

        let no_synth = manifest(
            "[app]\nentrypoint = [\"/a\"]\n[egress]\nmode = \"transparent\"\nsynthetic_dns = false\n[[egress.allow]]\nhost = \"a.example\"\n",
        );
        let e = Plan::new(&no_synth, &[]).unwrap_err();
        assert!(
            matches!(&e, Error::Plan { field, .. } if field == "egress.synthetic_dns"),
            "{e}"
        );
    }
}
