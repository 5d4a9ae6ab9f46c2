//! What every server of this crate shares: limits, graceful shutdown, the accept loop,
//! counters.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::stats::{ConnectionInfo, CountersSnapshot, Registry};
use crate::{Addr, Error, Listener, PeerAddr, Stream};

/// The write cap to use under the emulator ([`Limits::max_write`],
/// [`ClientConfig::max_write`](crate::ClientConfig::max_write)): 16 KiB, well below the 32 KiB
/// above which the guest's virtio-vsock driver splits a packet over several descriptors, which
/// the emulator's vsock backend (vhost-device-vsock 0.3) drops. Real Nitro Enclaves need no cap.
pub const EMULATOR_MAX_WRITE: usize = 16 << 10;

/// Limits and timeouts of a server (egress, ingress, local proxies).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Connections relayed at the same time; beyond it new requests are refused (`Busy` for
    /// the tunnel, an error reply for the proxies, a close for ingress). Default 4096.
    pub max_connections: usize,
    /// Connections accepted but not yet through their handshake; when reached, the server
    /// stops accepting until one finishes (the kernel backlog holds the rest). Default 256.
    pub max_pending_handshakes: usize,
    /// Time allowed for the handshake (request, resolution and destination connect excluded).
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Time allowed to connect to a destination (egress) or to the enclave (ingress).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// A relayed connection with no byte in either direction for this long is closed.
    /// Default 1 hour; `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long in-flight connections may take to finish before they are cut.
    /// Default 30 s.
    pub shutdown_grace: Duration,
    /// Relay between two TCP or Unix sockets with `splice(2)` through a pipe (page references,
    /// no copy through user space) instead of read/write through a 64 KiB buffer. Default on;
    /// vsock streams always use the buffer.
    pub zero_copy: bool,
    /// Largest single write to any stream of this server (accepted connections, connections it
    /// opens, both directions of its relays, `splice(2)` included); `None` (default) means no
    /// cap. Set [`EMULATOR_MAX_WRITE`](crate::EMULATOR_MAX_WRITE) under the emulator, whose
    /// vsock backend drops packets above 32 KiB; real Nitro Enclaves need no cap.
    pub max_write: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_pending_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            shutdown_grace: Duration::from_secs(30),
            zero_copy: true,
            max_write: None,
        }
    }
}

/// A shutdown signal shared by servers: trigger it once, every server watching it stops
/// accepting and drains its connections.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A signal not triggered yet.
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Triggers it (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// A running server: its counters, its connections, and how to stop it.
///
/// # Dropping the handle stops the server
///
/// **`let _ = server.spawn(listener);` or a handle that goes out of scope shuts the server
/// down** at once: it stops accepting and drains its connections (as
/// [`shutdown`](ServerHandle::shutdown) does, without waiting). Keep the handle alive for as
/// long as the server should run, wait on it with [`join`](ServerHandle::join), or
/// [`detach`](ServerHandle::detach) it to let the server run on its own until its
/// [`Shutdown`] signal is triggered.
///
/// ```no_run
/// # async fn f(listener: nitro_net::Listener) -> Result<(), nitro_net::Error> {
/// use nitro_net::{EgressServer, Policy};
///
/// // Runs until the program ends or `stop.trigger()` is called.
/// let stop = EgressServer::new(Policy::deny_all()).spawn(listener).detach();
/// # stop.trigger();
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a ServerHandle shuts the server down at once: keep it, `.join().await` it or `.detach()` it"]
pub struct ServerHandle {
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    registry: Arc<Registry>,
    local: Addr,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn local_addr(&self) -> &Addr {
        &self.local
    }

    /// Totals: connections, refusals, bytes.
    pub fn stats(&self) -> CountersSnapshot {
        self.registry.counters.snapshot()
    }

    /// The connections being relayed now, with their byte counters.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.registry.connections()
    }

    /// The signal that stops this server (clone it to stop several servers together).
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Stops accepting, lets in-flight connections finish (up to the shutdown grace period,
    /// then cuts them) and returns when everything is closed.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.trigger();
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| Error::io("server task", std::io::Error::other(e)))?,
            None => Ok(()),
        }
    }

    /// Lets the server run without its handle: dropping the handle no longer stops it. It
    /// runs until the returned signal is triggered (or the runtime ends); its counters are no
    /// longer reachable.
    #[must_use = "the returned signal is the only way left to stop the server; `let _ =` it to run forever"]
    pub fn detach(mut self) -> Shutdown {
        // Without a task, `Drop` does not trigger the signal; the task keeps running.
        drop(self.task.take());
        self.shutdown.clone()
    }

    /// Waits until the server stops (after a shutdown signal, or a fatal listener error).
    pub async fn join(mut self) -> Result<(), Error> {
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| Error::io("server task", std::io::Error::other(e)))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.shutdown.trigger();
        }
    }
}

/// Per-connection context handed to a server's handler.
pub(crate) struct ConnCtx {
    /// Held during the handshake; drop it once the handshake is done.
    pub(crate) handshake: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) limits: Arc<Limits>,
}

impl ConnCtx {
    /// Ends the handshake phase (frees a pending-handshake slot).
    pub(crate) fn handshake_done(&mut self) {
        self.handshake = None;
    }

    /// Takes a connection slot, or `None` at the limit.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Starts the accept loop of a server on a task.
pub(crate) fn spawn_server<H, F>(
    name: &'static str,
    listener: Listener,
    limits: Limits,
    shutdown: Shutdown,
    handler: H,
) -> ServerHandle
where
    H: Fn(Stream, PeerAddr, ConnCtx) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let registry = Arc::new(Registry::default());
    let local = listener.local_addr().clone();
    let task = tokio::spawn(accept_loop(
        name,
        listener,
        Arc::new(limits),
        shutdown.clone(),
        registry.clone(),
        handler,
    ));
    ServerHandle {
        shutdown,
        task: Some(task),
        registry,
        local,
    }
}

async fn accept_loop<H, F>(
    name: &'static str,
    listener: Listener,
    limits: Arc<Limits>,
    shutdown: Shutdown,
    registry: Arc<Registry>,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Stream, PeerAddr, ConnCtx) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let pending = Arc::new(Semaphore::new(limits.max_pending_handshakes.max(1)));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tracing::info!(server = name, listen = %listener.local_addr(), "listening");
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        // Backpressure: accept only while a handshake slot is free.
        let permit = tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => { drop(permit); continue }
            a = listener.accept() => a,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                stream.limit_writes(limits.max_write);
                let ctx = ConnCtx {
                    handshake: Some(permit),
                    slots: slots.clone(),
                    registry: registry.clone(),
                    limits: limits.clone(),
                };
                tasks.spawn(handler(stream, peer, ctx));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning or dying.
                tracing::warn!(server = name, error = %crate::error::chain(&e), "accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Stop listening (a Unix socket file is removed), then drain.
    drop(listener);
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(server = name, in_flight, grace = ?limits.shutdown_grace, "shutting down: draining connections");
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                server = name,
                cut = tasks.len(),
                "shutdown grace period over: closing the remaining connections"
            );
            tasks.shutdown().await;
        }
    }
    tracing::info!(server = name, "stopped");
    Ok(())
}
