//! A connector for hyper-util's client (feature `hyper`): HTTP from inside the enclave through
//! the egress tunnel, with TLS kept inside the enclave.
//!
//! [`EgressConnector`] is a `tower::Service<http::Uri>` that opens an [`EgressClient`] tunnel
//! to the URI's host and port (the parent resolves the name and applies its policy; the
//! enclave's [`ClientConfig::policy`](crate::ClientConfig::policy) applies first) and returns
//! the plain byte stream ([`EgressIo`]). It is what hyper-util's legacy `Client` and
//! hyper-rustls's `HttpsConnector` expect: put hyper-rustls on top for `https://` URIs, so the
//! TLS session runs between the enclave and the destination and the parent only relays
//! ciphertext.
//!
//! reqwest cannot take a custom transport (its `ClientBuilder::connector_layer` only wraps its
//! own connector: the connection type is private); point it at a [`LocalProxy`] instead (see
//! the crate documentation).
//!
//! [`LocalProxy`]: crate::LocalProxy

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use crate::{EgressClient, Error, TunnelStream};

/// A `tower::Service<http::Uri>` opening tunnels through an [`EgressClient`]: the connector of
/// hyper-util's legacy `Client`, alone (`http://`) or under hyper-rustls (`https://`).
///
/// The port is the URI's, else 80 for `http` and 443 for `https` (other schemes without a port
/// are refused with [`Error::InvalidArgument`]). Refusals by either policy come back as
/// [`Error::Refused`] (hyper wraps the error; find it with `std::error::Error::source`).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::{BodyExt, Empty};
/// use hyper::body::Bytes;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use nitro_net::{EgressClient, connector::EgressConnector};
///
/// let egress = EgressClient::new("vsock:3:8000".parse()?);
/// let client: Client<_, Empty<Bytes>> =
///     Client::builder(TokioExecutor::new()).build(EgressConnector::new(egress));
/// let resp = client.get("http://example.com/".parse()?).await?;
/// let body = resp.into_body().collect().await?.to_bytes();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EgressConnector {
    egress: EgressClient,
}

impl EgressConnector {
    /// A connector opening its tunnels through `egress`.
    pub fn new(egress: EgressClient) -> Self {
        EgressConnector { egress }
    }

    /// The client the tunnels go through.
    pub fn egress(&self) -> &EgressClient {
        &self.egress
    }
}

/// Host and port a URI asks to connect to.
fn target(uri: &http::Uri) -> Result<(String, u16), Error> {
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::InvalidArgument(format!("no host in URI {uri}")))?;
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(p), _) => p,
        (None, Some("http")) => 80,
        (None, Some("https")) => 443,
        (None, s) => {
            return Err(Error::InvalidArgument(format!(
                "no port in URI {uri} and no default for scheme {s:?}"
            )));
        }
    };
    Ok((host.to_owned(), port))
}

impl tower_service::Service<http::Uri> for EgressConnector {
    type Response = EgressIo;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<EgressIo, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let egress = self.egress.clone();
        Box::pin(async move {
            let (host, port) = target(&uri)?;
            let stream = egress.connect(&host, port).await?;
            Ok(EgressIo {
                io: TokioIo::new(stream),
            })
        })
    }
}

/// A tunnel as hyper sees it (`hyper::rt::Read + Write`, hyper-util `Connection`): what
/// [`EgressConnector`] returns.
#[derive(Debug)]
pub struct EgressIo {
    io: TokioIo<TunnelStream>,
}

impl EgressIo {
    /// The tunnel.
    pub fn tunnel(&self) -> &TunnelStream {
        self.io.inner()
    }

    /// The tunnel, for use without hyper.
    pub fn into_tunnel(self) -> TunnelStream {
        self.io.into_inner()
    }

    /// The destination address the parent connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.io.inner().peer_addr()
    }
}

impl Connection for EgressIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for EgressIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let ok = |u: &str| target(&u.parse().unwrap()).unwrap();
        assert_eq!(ok("http://example.com/x"), ("example.com".into(), 80));
        assert_eq!(ok("https://example.com"), ("example.com".into(), 443));
        assert_eq!(
            ok("https://example.com:8443/"),
            ("example.com".into(), 8443)
        );
        assert_eq!(ok("http://[::1]:81/"), ("[::1]".into(), 81));
        assert_eq!(ok("ftp://h:21"), ("h".into(), 21));
        for bad in ["/just/a/path", "ftp://h/"] {
            assert!(target(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
