//! The running services of every enclave of a [`Plan`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nitro_kms::ProvideCredentials;
use nitro_net::{
    EgressServer, IngressForward, Limits, Listener, Policy, ServerHandle, Shutdown, Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::CredentialsSource;
use crate::error::Error;
use crate::logsink::{LogOutput, serve_log};
use crate::plan::{EnclavePlan, LogDestination, Plan, SecretPlan, ServiceKind};

/// Connections one service of one enclave handles at the same time (credentials, secrets,
/// volumes, logs, exit report); more are closed at once.
pub const MAX_SERVICE_CONNECTIONS: usize = 64;

/// How to run the services.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Every enclave's log lines go here instead of their configured destination (tests).
    pub log_output: Option<LogOutput>,
    /// Listen for the init's exit report on [`nitro_init::DEFAULT_EXIT_PORT`] (emulator
    /// launches).
    pub exit_report: bool,
    /// Cap on single writes to the enclave ([`nitro_net::EMULATOR_MAX_WRITE`] under the
    /// emulator).
    pub max_write: Option<usize>,
}

impl RunOptions {
    /// Defaults: configured log destinations, no exit report, no write cap.
    pub fn new() -> Self {
        RunOptions::default()
    }

    /// Sends every log line to `out`.
    #[must_use]
    pub fn log_output(mut self, out: LogOutput) -> Self {
        self.log_output = Some(out);
        self
    }

    /// Listens for exit reports.
    #[must_use]
    pub fn exit_report(mut self, on: bool) -> Self {
        self.exit_report = on;
        self
    }

    /// Caps single writes.
    #[must_use]
    pub fn max_write(mut self, max: Option<usize>) -> Self {
        self.max_write = max;
        self
    }
}

/// The daemon's services, running.
#[derive(Debug)]
pub struct Daemon {
    shutdown: Shutdown,
    servers: Vec<ServerHandle>,
    tasks: Vec<JoinHandle<()>>,
    limits: Limits,
    enclaves: BTreeMap<String, EnclavePlan>,
    ingress: Vec<(String, u16, SocketAddr)>,
    exits: mpsc::UnboundedReceiver<(String, u8)>,
    /// Per enclave: its CID once known (0 = not yet); vsock peers with another CID are refused.
    cids: BTreeMap<String, Arc<AtomicU32>>,
}

impl Daemon {
    /// Binds and starts every enclave's parent-side services (everything but ingress, which
    /// needs the enclave's CID: see [`attach`](Daemon::attach)).
    pub async fn start(plan: &Plan, opts: RunOptions) -> Result<Daemon, Error> {
        let shutdown = Shutdown::new();
        let mut limits = Limits::default();
        limits.shutdown_grace = plan.shutdown_grace;
        limits.max_write = opts.max_write;
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let mut d = Daemon {
            shutdown,
            servers: Vec::new(),
            tasks: Vec::new(),
            limits,
            enclaves: BTreeMap::new(),
            ingress: Vec::new(),
            exits,
            cids: BTreeMap::new(),
        };
        let mut outputs: BTreeMap<String, LogOutput> = BTreeMap::new();
        for e in &plan.enclaves {
            let out = match (&opts.log_output, &e.log) {
                (Some(o), _) => o.clone(),
                (None, dest) => {
                    let key = format!("{dest:?}");
                    match outputs.get(&key) {
                        Some(o) => o.clone(),
                        None => {
                            let o = open_log(dest)?;
                            outputs.insert(key, o.clone());
                            o
                        }
                    }
                }
            };
            d.start_enclave(e, out, &opts, &exit_tx).await?;
            d.enclaves.insert(e.name.clone(), e.clone());
        }
        Ok(d)
    }

    async fn start_enclave(
        &mut self,
        e: &EnclavePlan,
        out: LogOutput,
        opts: &RunOptions,
        exit_tx: &mpsc::UnboundedSender<(String, u8)>,
    ) -> Result<(), Error> {
        let cid = Arc::new(AtomicU32::new(0));
        self.cids.insert(e.name.clone(), cid.clone());
        let mut services: Vec<(u32, ServiceKind)> =
            e.services.iter().map(|(p, k)| (*p, k.clone())).collect();
        if opts.exit_report {
            services.push((nitro_init::DEFAULT_EXIT_PORT, ServiceKind::ExitReport));
        }
        let credentials: Option<Arc<dyn ProvideCredentials>> =
            if services.iter().any(|(_, k)| *k == ServiceKind::Credentials)
                || e.secrets
                    .values()
                    .any(|s| matches!(s, SecretPlan::S3 { .. }))
            {
                Some(credentials_source(e).await?)
            } else {
                None
            };
        for (port, kind) in services {
            let addr = e.transport.parent_listen(port);
            let listener = addr
                .bind()
                .await
                .map_err(|s| Error::net(format!("{}: binding the {kind} on {addr}", e.name), s))?;
            let name = e.name.clone();
            match kind {
                ServiceKind::Egress { time } => {
                    let h = EgressServer::new(e.egress_policy.clone())
                        .resolver(PinnedHosts(e.hosts.clone(), Default::default()))
                        .limits(self.limits.clone())
                        .time_service(time)
                        .spawn_with_shutdown(listener, self.shutdown.clone());
                    self.servers.push(h);
                }
                ServiceKind::Time => {
                    let h = EgressServer::new(Policy::deny_all())
                        .limits(self.limits.clone())
                        .time_service(true)
                        .spawn_with_shutdown(listener, self.shutdown.clone());
                    self.servers.push(h);
                }
                ServiceKind::Credentials => {
                    let Some(src) = credentials.clone() else {
                        continue;
                    };
                    self.service(listener, cid.clone(), "credentials", move |s| {
                        let src = src.clone();
                        let name = name.clone();
                        async move {
                            if let Err(err) =
                                nitro_kms::credentials::serve_credentials(s, &*src).await
                            {
                                tracing::warn!(enclave = %name, error = %chain(&err), "credentials connection");
                            }
                        }
                    });
                }
                ServiceKind::Secrets => {
                    let fetched = Arc::new(fetch_s3_secrets(e, credentials.clone()).await?);
                    let sources = Arc::new(e.secrets.clone());
                    self.service(listener, cid.clone(), "sealed secrets", move |s| {
                        let (sources, fetched) = (sources.clone(), fetched.clone());
                        let name = name.clone();
                        async move {
                            let lookup = |secret: &str| match sources.get(secret) {
                                Some(SecretPlan::Dir(dir)) => {
                                    nitro_kms::sealed::directory_lookup(dir.clone())(secret)
                                }
                                Some(_) => fetched
                                    .get(secret)
                                    .cloned()
                                    .ok_or_else(|| format!("secret {secret:?} was not fetched")),
                                None => Err(format!("no secret named {secret:?} for this enclave")),
                            };
                            if let Err(err) = nitro_kms::sealed::serve_sealed(s, lookup).await {
                                tracing::warn!(enclave = %name, error = %chain(&err), "sealed-secret connection");
                            }
                        }
                    });
                }
                ServiceKind::Volume(vol) => {
                    let Some(v) = e.volumes.iter().find(|v| v.name == vol) else {
                        continue;
                    };
                    let server = Arc::new(open_volume(&v.name, &v.file, v.size)?);
                    self.service(listener, cid.clone(), "volume", move |s| {
                        let server = server.clone();
                        let name = name.clone();
                        async move {
                            if let Err(err) = server.serve(s).await {
                                tracing::warn!(enclave = %name, error = %chain(&err), "NBD connection");
                            }
                        }
                    });
                }
                ServiceKind::Log => {
                    let out = out.clone();
                    self.service(listener, cid.clone(), "log sink", move |s| {
                        let out = out.clone();
                        let name = name.clone();
                        async move {
                            if let Err(why) = serve_log(s, &name, &out).await {
                                tracing::warn!(enclave = %name, "log connection: {why}");
                            }
                        }
                    });
                }
                ServiceKind::ExitReport => {
                    let tx = exit_tx.clone();
                    self.service(listener, cid.clone(), "exit report", move |s| {
                        let tx = tx.clone();
                        let name = name.clone();
                        async move {
                            match read_exit_report(s).await {
                                Ok(status) => {
                                    let _ = tx.send((name, status));
                                }
                                Err(why) => tracing::warn!(enclave = %name, "exit report: {why}"),
                            }
                        }
                    });
                }
            }
        }
        Ok(())
    }

    /// Accept loop of one of our own services: bounded connections, drained on shutdown.
    fn service<H, F>(
        &mut self,
        listener: Listener,
        cid: Arc<AtomicU32>,
        what: &'static str,
        handler: H,
    ) where
        H: Fn(Stream) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let grace = self.limits.shutdown_grace;
        let max_write = self.limits.max_write;
        self.tasks.push(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    () = shutdown.wait() => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    r = listener.accept() => match r {
                        Ok((mut s, peer)) => {
                            if conns.len() >= MAX_SERVICE_CONNECTIONS {
                                tracing::warn!(%peer, "{what}: too many connections, closing");
                                continue;
                            }
                            let expected = cid.load(Ordering::Relaxed);
                            if let nitro_net::PeerAddr::Vsock { cid: from, .. } = peer
                                && expected != 0
                                && from != expected
                            {
                                tracing::warn!(%peer, "{what}: not this enclave's CID {expected}, closing");
                                continue;
                            }
                            s.limit_writes(max_write);
                            conns.spawn(handler(s));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "{what}: accept");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            drop(listener);
            let drained =
                tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tracing::warn!(
                    "{what}: {} connections cut after the grace period",
                    conns.len()
                );
                conns.abort_all();
            }
        }));
    }

    /// Starts the ingress listeners of enclave `name`, now that its CID is known (`None` for
    /// transports that need none). From then on, vsock connections to the daemon's own
    /// services of this enclave (credentials, secrets, volumes, logs) from another CID are
    /// closed; the nitro-net servers (egress, time) do not check it.
    pub async fn attach(&mut self, name: &str, cid: Option<u32>) -> Result<(), Error> {
        let Some(e) = self.enclaves.get(name) else {
            return Err(crate::error::invalid(name, "no such enclave"));
        };
        if let (Some(c), Some(slot)) = (cid, self.cids.get(name)) {
            slot.store(c, Ordering::Relaxed);
        }
        let mut started = Vec::new();
        for i in &e.ingress {
            let Some(target) = e.transport.enclave_connect(cid, i.vsock_port) else {
                return Err(crate::error::invalid(
                    format!("{name}.cid"),
                    "the enclave's CID is not known",
                ));
            };
            let listener = nitro_net::Addr::Tcp {
                addr: i.listen.to_string(),
            }
            .bind()
            .await
            .map_err(|s| Error::net(format!("{name}: binding ingress {}", i.listen), s))?;
            let local = listener.local_tcp_addr().unwrap_or(i.listen);
            let h = IngressForward::new(target)
                .limits(self.limits.clone())
                .spawn_with_shutdown(listener, self.shutdown.clone());
            started.push(h);
            self.ingress.push((name.to_owned(), i.port, local));
        }
        self.servers.extend(started);
        Ok(())
    }

    /// The bound ingress listeners: (enclave, application port, TCP address).
    pub fn ingress_addrs(&self) -> &[(String, u16, SocketAddr)] {
        &self.ingress
    }

    /// The next exit report: (enclave, application exit status).
    pub async fn next_exit(&mut self) -> Option<(String, u8)> {
        self.exits.recv().await
    }

    /// The signal that stops every service (trigger it to start the drain).
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Stops accepting everywhere, lets open connections finish (up to the grace period) and
    /// returns when everything is closed.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        for h in self.servers {
            if let Err(e) = h.join().await {
                tracing::warn!(error = %chain(&e), "server stopped with an error");
            }
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn credentials_source(e: &EnclavePlan) -> Result<Arc<dyn ProvideCredentials>, Error> {
    let c = &e.credentials;
    let kms = |context: &str, source| Error::Kms {
        context: format!("{}: {context}", e.name),
        source,
    };
    Ok(match c.source {
        CredentialsSource::Static => Arc::new(nitro_kms::Credentials::new(
            c.access_key_id.clone().unwrap_or_default(),
            nitro_kms::SecretString::new(c.secret_access_key.clone().unwrap_or_default()),
            c.session_token.clone().map(nitro_kms::SecretString::new),
            None,
        )),
        CredentialsSource::Environment => Arc::new(nitro_kms::credentials::EnvironmentCredentials),
        CredentialsSource::InstanceRole => {
            Arc::new(nitro_kms::credentials::RefreshingCredentials::new(
                nitro_kms::credentials::instance_role()
                    .map_err(|s| kms("the instance-role credentials provider", s))?,
            ))
        }
        CredentialsSource::DefaultChain => {
            Arc::new(nitro_kms::credentials::RefreshingCredentials::new(
                nitro_kms::credentials::default_chain()
                    .await
                    .map_err(|s| kms("the default credentials chain", s))?,
            ))
        }
    })
}

/// Fetches the enclave's S3-held sealed secrets (the documents stay sealed: the daemon only
/// carries them).
async fn fetch_s3_secrets(
    e: &EnclavePlan,
    credentials: Option<Arc<dyn ProvideCredentials>>,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let mut fetched = BTreeMap::new();
    for (secret, src) in &e.secrets {
        let SecretPlan::S3 {
            location,
            region,
            endpoint,
        } = src
        else {
            continue;
        };
        let kms = |context: String, source| Error::Kms {
            context: format!("{}: secret {secret}: {context}", e.name),
            source,
        };
        let mut builder = nitro_kms::S3Client::builder(region.clone());
        if let Some(url) = endpoint {
            builder = builder.endpoint(url.clone());
            if url.starts_with("http://") {
                // The daemon carries sealed documents only (their plaintext never leaves the
                // enclave), so a plain-HTTP store (a test or S3-compatible one) exposes no
                // secret; say it anyway.
                tracing::warn!(enclave = %e.name, secret = %secret, endpoint = %url, "fetching a sealed secret over plain HTTP");
                builder = builder.dangerous_allow_plain_http();
            }
        }
        if let Some(c) = &credentials {
            builder = builder.credentials(c.clone());
        }
        let client = builder
            .build()
            .map_err(|s| kms("the S3 client".into(), s))?;
        let doc = client
            .get_object(location)
            .await
            .map_err(|s| kms(format!("fetching {location}"), s))?;
        tracing::info!(enclave = %e.name, secret = %secret, bytes = doc.len(), "sealed secret fetched from S3");
        fetched.insert(secret.clone(), doc);
    }
    Ok(fetched)
}

fn open_volume(name: &str, file: &Path, size: u64) -> Result<nitro_fs::Server, Error> {
    let ctx = || format!("volume {name}: {}", file.display());
    let dev = nitro_fs::FileDevice::create(file, size).map_err(|source| Error::Volume {
        context: ctx(),
        source,
    })?;
    nitro_fs::Server::new(vec![nitro_fs::Export::new(name, dev)]).map_err(|source| Error::Volume {
        context: ctx(),
        source,
    })
}

fn open_log(dest: &LogDestination) -> Result<LogOutput, Error> {
    Ok(match dest {
        LogDestination::Stdout => LogOutput::new(std::io::stdout()),
        LogDestination::Stderr => LogOutput::new(std::io::stderr()),
        LogDestination::File(p) => LogOutput::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(format!("opening the log file {}", p.display()), e))?,
        ),
    })
}

async fn read_exit_report(mut s: Stream) -> Result<u8, String> {
    let mut msg = Vec::new();
    let mut byte = [0u8; 1];
    while msg.len() < nitro_init::MAX_EXIT_MESSAGE {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {
                msg.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        }
    }
    let status = nitro_init::parse_exit_message(&msg).map_err(|e| e.to_string())?;
    let _ = s.write_all(&[nitro_init::EXIT_ACK]).await;
    Ok(status)
}

/// An error and its causes, `: `-separated (for log lines).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The egress resolver: the configuration's pinned names, then the system's.
struct PinnedHosts(
    BTreeMap<String, Vec<std::net::IpAddr>>,
    nitro_net::SystemResolver,
);

impl nitro_net::Resolve for PinnedHosts {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send + 'a>>
    {
        match self.0.get(name) {
            Some(addrs) => Box::pin(std::future::ready(Ok(addrs.clone()))),
            None => self.1.resolve(name, port),
        }
    }
}
