//! The parent instance's side of an emulated enclave: the services an enclave application
//! reaches over vsock, served on the hybrid Unix-socket transport of vhost-device-vsock.
//!
//! [`ParentServices::start`] binds, in a run directory, before the guest boots:
//!
//! | vsock port (guest connects to CID 2) | service |
//! |---|---|
//! | [`EGRESS_PORT`] 8000 | nitro-net's egress server with the parent's policy (and its time service) |
//! | [`CREDENTIALS_PORT`] 8001 | nitro-kms's credentials protocol: the local KMS's credentials |
//! | [`INFO_PORT`] 9001 | [`EmulatorInfo`] as JSON: where the local KMS is, its key, the NBD exports |
//! | [`NBD_PORT`] 10809 | nitro-fs's NBD server with the given exports (files on the parent) |
//!
//! plus TCP listeners on the parent forwarded to enclave ports (nitro-net ingress, through the
//! hybrid socket's `CONNECT <port>`), and the local KMS itself (nitro-kms, HTTPS on
//! `127.0.0.1`, reached by the enclave through the egress tunnel, which the policy is extended
//! to allow). The local KMS runs in
//! [`AttestationTrust::DangerousUnsignedEmulator`] mode: QEMU's emulated NSM signs nothing,
//! so any PCR values could be forged by anyone able to talk to it; the key policy still
//! checks them. It is a development tool, never a security boundary.
//!
//! Enclave applications find the services with [`EmulatorInfo::fetch`]; real parents need not
//! offer [`INFO_PORT`] (applications configure endpoints and key ids themselves in
//! production).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nitro_fs::{Export, FileDevice, Server};
use nitro_kms::credentials::serve_credentials;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::{CreateKeyRequest, ListKeysRequest};
use nitro_kms::{Credentials, KmsClient, TlsRoots};
use nitro_net::{Addr, EgressServer, IngressServer, Policy, ServerHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::{Error, hybrid_uds};

/// vsock port of the egress tunnel (nitro-net `EgressServer`, with the time service).
pub const EGRESS_PORT: u32 = 8000;
/// vsock port where the parent hands out the local KMS's credentials (nitro-kms protocol).
pub const CREDENTIALS_PORT: u32 = 8001;
/// vsock port of the emulator's discovery document ([`EmulatorInfo`]).
pub const INFO_PORT: u32 = 9001;
/// vsock port of the NBD server (the IANA NBD port).
pub const NBD_PORT: u32 = 10809;
/// Largest [`EmulatorInfo`] document an enclave accepts.
pub const MAX_INFO: usize = 64 << 10;
/// [`EmulatorInfo::format`] of this version.
pub const INFO_FORMAT: u32 = 1;
/// Region of the local KMS unless configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What the emulator tells the enclave about the parent's services (JSON on [`INFO_PORT`]).
///
/// It comes from the parent, which an enclave must not trust: in particular the KMS CA
/// certificate is only acceptable because this is a development emulator. A production
/// application embeds its endpoints and trusts the public roots for `kms.<region>.amazonaws.com`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EmulatorInfo {
    /// [`INFO_FORMAT`].
    pub format: u32,
    /// vsock port of the egress tunnel.
    pub egress_port: u32,
    /// The image's measurements as nitro-eif computed them on the parent (lowercase hex).
    pub measurements: Option<ImageMeasurements>,
    /// The local KMS, when running.
    pub kms: Option<KmsInfo>,
    /// The NBD server, when it has exports.
    pub nbd: Option<NbdInfo>,
}

/// PCRs of the EIF (lowercase hex), from nitro-eif.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageMeasurements {
    /// PCR0.
    pub pcr0: String,
    /// PCR1.
    pub pcr1: String,
    /// PCR2.
    pub pcr2: String,
    /// PCR8 (signed images).
    pub pcr8: Option<String>,
}

impl From<&nitro_eif::Measurements> for ImageMeasurements {
    fn from(m: &nitro_eif::Measurements) -> Self {
        Self {
            pcr0: m.pcr0.to_hex(),
            pcr1: m.pcr1.to_hex(),
            pcr2: m.pcr2.to_hex(),
            pcr8: m.pcr8.as_ref().map(nitro_eif::Pcr::to_hex),
        }
    }
}

/// How the enclave reaches the local KMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KmsInfo {
    /// `https://127.0.0.1:PORT`: connect through the egress tunnel.
    pub endpoint: String,
    /// Region the requests must be signed for.
    pub region: String,
    /// The key whose policy admits this image (`kms:RecipientAttestation:ImageSha384` = PCR0).
    pub key_id: String,
    /// Its ARN.
    pub key_arn: String,
    /// The CA certificate (PEM) of the local KMS's TLS certificate.
    pub ca_pem: String,
    /// vsock port of the credentials service.
    pub credentials_port: u32,
}

/// The NBD server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NbdInfo {
    /// vsock port.
    pub port: u32,
    /// Export names and sizes in bytes.
    pub exports: Vec<(String, u64)>,
}

impl EmulatorInfo {
    /// Enclave side: reads the document from the parent's [`INFO_PORT`] on `transport` (e.g.
    /// `vsock:9001`; the parent CID comes from `nitro_parent_cid`). The input is bounded by
    /// [`MAX_INFO`] and must be valid JSON of this shape.
    pub async fn fetch(addr: &Addr) -> Result<Self, Error> {
        let mut stream = tokio::time::timeout(Duration::from_secs(10), addr.connect())
            .await
            .map_err(|_| Error::Failed(format!("connecting to {addr}: timed out")))?
            .map_err(Error::service(format!("connecting to {addr}")))?;
        let mut buf = Vec::new();
        let mut limited = (&mut stream).take(MAX_INFO as u64 + 1);
        tokio::time::timeout(Duration::from_secs(10), limited.read_to_end(&mut buf))
            .await
            .map_err(|_| Error::Failed(format!("reading from {addr}: timed out")))?
            .map_err(Error::io(format!("reading from {addr}")))?;
        Self::parse(&buf)
    }

    /// Parses the JSON document (pure; bounded by [`MAX_INFO`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_INFO {
            return Err(Error::Protocol(format!(
                "emulator info larger than {MAX_INFO} bytes"
            )));
        }
        let info: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Protocol(format!("emulator info: {e}")))?;
        if info.format != INFO_FORMAT {
            return Err(Error::Protocol(format!(
                "emulator info format {}, expected {INFO_FORMAT}",
                info.format
            )));
        }
        Ok(info)
    }
}

/// One NBD export: `NAME=FILE[:SIZE]` (the file is created with SIZE when missing).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NbdExport {
    /// Export name (`disk` when the spec has no `NAME=`).
    pub name: String,
    /// The file on the parent.
    pub path: PathBuf,
    /// Size for a new file.
    pub size: Option<u64>,
}

impl std::str::FromStr for NbdExport {
    type Err = Error;

    /// `FILE`, `NAME=FILE`, `FILE:SIZE` or `NAME=FILE:SIZE`; SIZE in bytes or with a `K`, `M`,
    /// `G` suffix (powers of 1024).
    fn from_str(spec: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Failed(format!("--nbd {spec:?}: {why}"));
        let (name, rest) = match spec.split_once('=') {
            Some((name, rest)) => (name.to_owned(), rest),
            None => ("disk".to_owned(), spec),
        };
        if name.is_empty() || name.len() > 4096 {
            return Err(bad("empty or overlong export name"));
        }
        let (path, size) = match rest.rsplit_once(':') {
            Some((path, size))
                if !size.is_empty() && size.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                (
                    path,
                    Some(parse_size(size).ok_or_else(|| bad("invalid size"))?),
                )
            }
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("empty file name"));
        }
        Ok(Self {
            name,
            path: PathBuf::from(path),
            size,
        })
    }
}

/// `123`, `64K`, `16M`, `1G` (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The local KMS's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KmsSettings {
    /// Keep keys in this file across runs (so a second boot can unwrap what the first one
    /// wrapped); `None` = in memory.
    pub state_file: Option<PathBuf>,
    /// Region (default [`DEFAULT_REGION`]).
    pub region: String,
}

impl Default for KmsSettings {
    fn default() -> Self {
        Self {
            state_file: None,
            region: DEFAULT_REGION.to_owned(),
        }
    }
}

/// What [`ParentServices::start`] runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ParentConfig {
    /// The egress policy as TOML (nitro-net's format); `None` denies everything. When the
    /// local KMS runs, a rule allowing `127.0.0.1:<its port>` is appended.
    pub policy_toml: Option<String>,
    /// The image's measurements (the local KMS key admits `pcr0`; also in [`EmulatorInfo`]).
    pub measurements: Option<nitro_eif::Measurements>,
    /// Run the local KMS.
    pub kms: Option<KmsSettings>,
    /// NBD exports.
    pub nbd: Vec<NbdExport>,
    /// TCP listen address on the parent → enclave vsock port (e.g. `127.0.0.1:8443` → 443;
    /// port 0 picks a free port, see [`ParentServices::forwards`]).
    pub forwards: Vec<(String, u32)>,
}

/// The running parent services; dropping it stops them.
#[derive(Debug)]
pub struct ParentServices {
    info: EmulatorInfo,
    egress: Option<ServerHandle>,
    ingress: Vec<ServerHandle>,
    forwards: Vec<(String, u32)>,
    tasks: JoinSet<()>,
    _kms: Option<server::RunningServer>,
}

impl ParentServices {
    /// Starts every service, listening in `run_dir` (the [`crate::EnclaveConfig::run_dir`] of
    /// the enclave to boot next). Call before [`crate::Enclave::start`].
    pub async fn start(run_dir: &Path, config: ParentConfig) -> Result<Self, Error> {
        let uds = hybrid_uds(run_dir);
        let hybrid = |port: u32| Addr::Hybrid {
            uds: uds.clone(),
            port,
        };
        let failed = |what: &str| Error::service::<nitro_net::Error>(what.to_owned());
        let mut tasks = JoinSet::new();
        let mut policy_toml = config.policy_toml.clone().unwrap_or_default();

        // The local KMS (HTTPS on loopback) and its credentials.
        let mut kms_info = None;
        let mut kms_server = None;
        if let Some(settings) = &config.kms {
            let (info, running, credentials) =
                start_kms(settings, config.measurements.as_ref()).await?;
            policy_toml.push_str(&format!(
                "\n# Added by the emulator: the local KMS.\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
                running.local_addr().port()
            ));
            let listener = hybrid(CREDENTIALS_PORT)
                .bind()
                .await
                .map_err(failed("credentials listener"))?;
            tasks.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let credentials = credentials.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_credentials(stream, &credentials).await {
                            tracing::debug!(error = &e as &dyn std::error::Error, "credentials");
                        }
                    });
                }
            });
            kms_info = Some(info);
            kms_server = Some(running);
        }

        // Egress, with the time service.
        let policy = Policy::from_toml(&policy_toml).map_err(Error::service("egress policy"))?;
        let listener = hybrid(EGRESS_PORT)
            .bind()
            .await
            .map_err(failed("egress listener"))?;
        let egress = EgressServer::new(policy).spawn(listener);

        // NBD.
        let mut nbd_info = None;
        if !config.nbd.is_empty() {
            let mut exports = Vec::new();
            let mut sizes = Vec::new();
            for e in &config.nbd {
                let device = match (e.path.exists(), e.size) {
                    (false, Some(size)) => FileDevice::create(&e.path, size),
                    _ => FileDevice::open(&e.path),
                }
                .map_err(|err| Error::Failed(format!("NBD export {}: {err}", e.path.display())))?;
                let export = Export::new(&e.name, device);
                sizes.push((e.name.clone(), export.size()));
                exports.push(export);
            }
            let server = Server::new(exports).map_err(Error::service("NBD server"))?;
            let listener = hybrid(NBD_PORT)
                .bind()
                .await
                .map_err(failed("NBD listener"))?;
            tasks.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.serve(stream).await {
                            tracing::debug!(error = &e as &dyn std::error::Error, "NBD session");
                        }
                    });
                }
            });
            nbd_info = Some(NbdInfo {
                port: NBD_PORT,
                exports: sizes,
            });
        }

        // Ingress: parent TCP → enclave port.
        let mut ingress = Vec::new();
        let mut forwards = Vec::new();
        for (listen, port) in &config.forwards {
            let addr = Addr::Tcp {
                addr: listen.clone(),
            };
            let listener = addr.bind().await.map_err(failed("ingress listener"))?;
            let bound = listener
                .local_tcp_addr()
                .map_or_else(|| listen.clone(), |a| a.to_string());
            ingress.push(IngressServer::new(hybrid(*port)).spawn(listener));
            forwards.push((bound, *port));
        }

        // Discovery.
        let info = EmulatorInfo {
            format: INFO_FORMAT,
            egress_port: EGRESS_PORT,
            measurements: config.measurements.as_ref().map(ImageMeasurements::from),
            kms: kms_info,
            nbd: nbd_info,
        };
        let json = serde_json::to_vec(&info)
            .map_err(|e| Error::Failed(format!("encoding the emulator info: {e}")))?;
        let listener = hybrid(INFO_PORT)
            .bind()
            .await
            .map_err(failed("info listener"))?;
        let json = Arc::new(json);
        tasks.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let json = json.clone();
                tokio::spawn(async move {
                    let _ = stream.write_all(&json).await;
                    let _ = stream.shutdown().await;
                    // Wait for the guest to close (vhost-device-vsock drops data on early close).
                    let mut sink = [0u8; 64];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut sink)).await;
                });
            }
        });

        Ok(Self {
            info,
            egress: Some(egress),
            ingress,
            forwards,
            tasks,
            _kms: kms_server,
        })
    }

    /// What the enclave is told ([`INFO_PORT`]).
    pub fn info(&self) -> &EmulatorInfo {
        &self.info
    }

    /// The ingress forwards as bound (`ip:port` on the parent → enclave vsock port).
    pub fn forwards(&self) -> &[(String, u32)] {
        &self.forwards
    }

    /// Egress statistics so far.
    pub fn egress_stats(&self) -> Option<nitro_net::CountersSnapshot> {
        self.egress.as_ref().map(ServerHandle::stats)
    }

    /// Stops every service.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        for handle in self.ingress.drain(..).chain(self.egress.take()) {
            let _ = tokio::time::timeout(Duration::from_secs(2), handle.shutdown()).await;
        }
    }
}

/// The local KMS: TLS material, credentials, the image key. Returns what the enclave needs,
/// the running server, and the credentials to hand out.
async fn start_kms(
    settings: &KmsSettings,
    measurements: Option<&nitro_eif::Measurements>,
) -> Result<(KmsInfo, server::RunningServer, Credentials), Error> {
    let kms_err = |what: &str| Error::service::<nitro_kms::Error>(format!("local KMS: {what}"));
    let pcr0 = measurements
        .map(|m| m.pcr0.to_hex())
        .ok_or_else(|| Error::Failed("local KMS: the image's PCR0 is needed for its key".into()))?;
    let (ca_pem, cert_pem, key_pem) =
        nitro_test_support::try_tls_material("nitro emulator local KMS CA")
            .map_err(|e| Error::Failed(format!("generating TLS material: {e}")))?
            .into_parts();
    let credentials = Credentials::new(
        "AKIDNITROEMULATOR",
        hex::encode(random_bytes::<20>()?),
        None,
        None,
    );
    let mut config = LocalKmsConfig::new(AttestationTrust::dangerous_unsigned_emulator())
        .region(&settings.region)
        .credentials(credentials.clone());
    if let Some(path) = &settings.state_file {
        config = config.state_file(path);
    }
    let kms = LocalKms::new(config).map_err(kms_err("starting"))?;
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes())
        .map_err(kms_err("TLS configuration"))?;
    let running = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls))
        .await
        .map_err(kms_err("binding"))?;
    let endpoint = format!("https://127.0.0.1:{}", running.local_addr().port());

    // The operator: reuse the image key of an earlier run (state file), else create it.
    let operator = KmsClient::builder(&settings.region)
        .endpoint(&endpoint)
        .tls_roots(TlsRoots::from_pem(ca_pem.as_bytes()).map_err(kms_err("CA"))?)
        .credentials(credentials.clone())
        .build()
        .map_err(kms_err("client"))?;
    let description = image_key_description(&pcr0);
    let mut existing = None;
    let mut marker = None;
    'pages: loop {
        let mut request = ListKeysRequest::new();
        request.marker = marker.take();
        let page = operator
            .list_keys(request)
            .await
            .map_err(kms_err("ListKeys"))?;
        for key in &page.keys {
            let meta = operator
                .describe_key(&key.key_id)
                .await
                .map_err(kms_err("DescribeKey"))?
                .key_metadata;
            if meta.description.as_deref() == Some(description.as_str()) {
                existing = Some(meta);
                break 'pages;
            }
        }
        match (page.truncated, page.next_marker) {
            (true, Some(next)) => marker = Some(next),
            _ => break,
        }
    }
    let meta = match existing {
        Some(meta) => meta,
        None => {
            operator
                .create_key(
                    CreateKeyRequest::new()
                        .description(description)
                        .policy(image_key_policy(&pcr0).to_string()),
                )
                .await
                .map_err(kms_err("CreateKey"))?
                .key_metadata
        }
    };
    let info = KmsInfo {
        endpoint,
        region: settings.region.clone(),
        key_arn: meta.arn.clone().unwrap_or_default(),
        key_id: meta.key_id,
        ca_pem,
        credentials_port: CREDENTIALS_PORT,
    };
    Ok((info, running, credentials))
}

/// Description of the key created for an image (how a later run finds it again).
pub fn image_key_description(pcr0_hex: &str) -> String {
    format!("nitro emulator image key, PCR0 {pcr0_hex}")
}

/// The policy of the image key: the operator (the account) may manage it and encrypt; only a
/// caller presenting `Recipient` with an attestation document whose PCR0 is `pcr0_hex` may
/// decrypt or generate data keys, random bytes or key pairs with it.
pub fn image_key_policy(pcr0_hex: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "operator",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{}:root", nitro_kms::local::DEFAULT_ACCOUNT_ID)},
                "Action": ["kms:CreateKey", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                           "kms:ListKeys", "kms:Encrypt", "kms:EnableKey", "kms:DisableKey"],
                "Resource": "*"
            },
            {
                "Sid": "the enclave image, attested",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"],
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}}
            }
        ]
    })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Failed("random number generator failed".into()))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_export_specs() -> Result<(), Error> {
        let e: NbdExport = "data=/tmp/d.img:16M".parse()?;
        assert_eq!(
            (e.name.as_str(), e.path.as_path(), e.size),
            ("data", Path::new("/tmp/d.img"), Some(16 << 20))
        );
        let e: NbdExport = "/tmp/disk.img".parse()?;
        assert_eq!((e.name.as_str(), e.size), ("disk", None));
        let e: NbdExport = "x=/a:b/c.img".parse()?;
        assert_eq!((e.path.as_path(), e.size), (Path::new("/a:b/c.img"), None));
        assert_eq!("d.img:1G".parse::<NbdExport>()?.size, Some(1 << 30));
        assert_eq!("d.img:4096".parse::<NbdExport>()?.size, Some(4096));
        for bad in ["=x.img", "x=", "x=:1M", "d.img:12Q", "d.img:99999999999G"] {
            assert!(bad.parse::<NbdExport>().is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn info_round_trip_and_hostile_input() -> Result<(), Error> {
        let info = EmulatorInfo {
            format: INFO_FORMAT,
            egress_port: EGRESS_PORT,
            measurements: None,
            kms: Some(KmsInfo {
                endpoint: "https://127.0.0.1:1".into(),
                region: "us-east-1".into(),
                key_id: "k".into(),
                key_arn: "arn".into(),
                ca_pem: "pem".into(),
                credentials_port: CREDENTIALS_PORT,
            }),
            nbd: Some(NbdInfo {
                port: NBD_PORT,
                exports: vec![("data".into(), 4096)],
            }),
        };
        let json = serde_json::to_vec(&info).map_err(|e| Error::Failed(e.to_string()))?;
        assert_eq!(EmulatorInfo::parse(&json)?, info);
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"format\":2,\"egress_port\":8000,\"measurements\":null,\"kms\":null,\"nbd\":null}",
            b"{\"format\":1,\"egress_port\":-1,\"measurements\":null,\"kms\":null,\"nbd\":null}",
        ] {
            assert!(EmulatorInfo::parse(bad).is_err());
        }
        assert!(EmulatorInfo::parse(&vec![b' '; MAX_INFO + 1]).is_err());
        Ok(())
    }

    #[test]
    fn image_key_policy_pins_pcr0_for_secret_operations_only() {
        let p = image_key_policy("ab");
        let statements = p["Statement"].as_array().cloned().unwrap_or_default();
        assert_eq!(statements.len(), 2);
        let operator: Vec<&str> = statements[0]["Action"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(!operator.contains(&"kms:Decrypt") && !operator.contains(&"kms:GenerateDataKey"));
        assert_eq!(
            statements[1]["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"],
            "ab"
        );
    }
}
