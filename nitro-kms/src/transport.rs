//! Where the bytes come from: a [`Connect`] implementation opens a byte stream to `host:port`;
//! TLS and HTTP run on top of it inside the caller's process (inside the enclave).

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A boxed future, as returned by the object-safe traits of this crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream (TCP, vsock, a nitro-net tunnel, an in-memory pipe, ...).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// A boxed [`AsyncStream`].
pub type BoxStream = Box<dyn AsyncStream>;

/// Opens byte streams to `host:port`.
///
/// Implemented for [`TcpConnector`], for any `Fn(String, u16) -> impl Future<Output =
/// io::Result<impl AsyncStream>>` closure, and (feature `nitro-net`) for
/// [`nitro_net::EgressClient`], whose streams run through the parent's egress tunnel.
///
/// ```
/// use nitro_kms::transport::{Connect, TcpConnector};
///
/// fn takes_connector(_: impl Connect) {}
/// takes_connector(TcpConnector);
/// // Any closure returning a stream works too, e.g. to pin an address in tests:
/// takes_connector(|_host: String, port: u16| async move {
///     tokio::net::TcpStream::connect(("127.0.0.1", port)).await
/// });
/// ```
pub trait Connect: Send + Sync + 'static {
    /// Opens a stream to `host:port`.
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>>;
}

impl<F, Fut, S> Connect for F
where
    F: Fn(String, u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncStream,
{
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        let fut = self(host.to_owned(), port);
        Box::pin(async move { Ok(Box::new(fut.await?) as BoxStream) })
    }
}

/// Plain TCP (outside an enclave: development, tests, the parent instance).
#[derive(Clone, Copy, Debug, Default)]
#[allow(clippy::exhaustive_structs)] // a unit struct: nothing to add later
pub struct TcpConnector;

impl Connect for TcpConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect((host, port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}

#[cfg(feature = "nitro-net")]
#[cfg_attr(docsrs, doc(cfg(feature = "nitro-net")))]
impl Connect for nitro_net::EgressClient {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = nitro_net::EgressClient::connect(self, host, port)
                .await
                .map_err(io::Error::other)?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}
