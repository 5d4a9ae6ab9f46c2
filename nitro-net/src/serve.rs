//! `axum::serve` on nitro-net listeners (feature `axum`): [`Listener`] (vsock, Unix socket,
//! TCP) and [`IngressListener`] (the enclave side of ingress, with the client address from the
//! PROXY header) implement `axum::serve::Listener`, with [`PeerAddr`] as the address type.
//!
//! Accept errors (too many open files, ...) are logged and retried after a short pause, as
//! axum asks of a listener; a connection whose PROXY header is malformed or late is dropped by
//! [`IngressListener::accept`] and never reaches axum.

use std::io;
use std::time::Duration;

use crate::{Addr, IngressListener, Listener, PeerAddr, Stream};

/// Pause after a failed accept (for example `EMFILE`), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The local address of a listener as a [`PeerAddr`] (what axum reports).
fn local_peer_addr(listener: &Listener) -> PeerAddr {
    if let Some(a) = listener.local_tcp_addr() {
        return PeerAddr::Tcp(a);
    }
    match listener.local_addr() {
        Addr::Vsock { cid, port } => PeerAddr::Vsock {
            cid: cid.unwrap_or(u32::MAX),
            port: *port,
        },
        Addr::Hybrid { .. } | Addr::UnixDir { .. } | Addr::Unix { .. } => PeerAddr::Unix,
        _ => PeerAddr::Unknown,
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Stream, PeerAddr) {
        loop {
            match Listener::accept(self).await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::warn!(listen = %self.local_addr(), error = %crate::error::chain(&e), "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(local_peer_addr(self))
    }
}

/// The address axum sees is the client's, from the PROXY header, when the parent sends one;
/// else the transport peer (the parent).
impl axum::serve::Listener for IngressListener {
    type Io = Stream;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Stream, PeerAddr) {
        loop {
            match IngressListener::accept(self).await {
                Ok(c) => {
                    let addr = c.client.map_or(c.transport_peer, PeerAddr::Tcp);
                    return (c.stream, addr);
                }
                Err(e) => {
                    tracing::warn!(listen = %self.local_addr(), error = %crate::error::chain(&e), "ingress: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(local_peer_addr(self.listener()))
    }
}

/// `Router::into_make_service_with_connect_info::<PeerAddr>()`: handlers get the peer with
/// `ConnectInfo<PeerAddr>`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// `Router::into_make_service_with_connect_info::<PeerAddr>()`: handlers get the client's
/// address (from the PROXY header) with `ConnectInfo<PeerAddr>`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, IngressListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, IngressListener>) -> Self {
        stream.remote_addr().clone()
    }
}
