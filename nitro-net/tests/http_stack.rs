//! The `hyper` and `axum` features with the real stacks: hyper-util's legacy client (plain and
//! under hyper-rustls, TLS ending in the test's "enclave") over `EgressConnector`, reqwest
//! through the enclave's SOCKS5 proxy, and `axum::serve` on an `IngressListener` (client
//! address from the PROXY header) and on a plain transport `Listener`, all through a real
//! parent egress / ingress server over the Unix-socket transport.

#![cfg(all(feature = "hyper", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nitro_net::connector::EgressConnector;
use nitro_net::{
    Addr, EgressServer, Error, IngressListener, IngressServer, LocalProxy, PeerAddr, RefusalCode,
    StaticResolver,
};

/// An axum destination server on loopback answering `/hello` with `hello from <path>`.
async fn web_server() -> u16 {
    let (l, port) = destination().await;
    let app = Router::new().route(
        "/{name}",
        get(|p: axum::extract::Path<String>| async move { format!("hello from /{}", p.0) }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

/// The parent's egress server admitting loopback, resolving `web.test` to it.
async fn parent() -> Chain {
    let resolver = StaticResolver::new().with("web.test", ["127.0.0.1".parse().unwrap()]);
    chain_with(
        EgressServer::new(loopback_policy())
            .limits(test_limits())
            .resolver(resolver),
    )
    .await
}

/// The refusal in an error's source chain.
fn refusal_code(e: &(dyn std::error::Error + 'static)) -> Option<RefusalCode> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(Error::Refused(r)) = e.downcast_ref::<Error>() {
            return Some(r.code);
        }
        cur = e.source();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_over_the_egress_connector() {
    let port = web_server().await;
    let c = parent().await;
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(EgressConnector::new(c.client.clone()));
    for host in ["127.0.0.1", "web.test"] {
        let resp = client
            .get(format!("http://{host}:{port}/hello").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello from /hello");
    }
    // The pooled connection is reused: a single tunnel per host so far.
    assert_eq!(c.server.stats().connections_total, 2);
    // A policy refusal reaches the caller through hyper's error.
    let e = client
        .get("http://169.254.169.254/latest".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(refusal_code(&e), Some(RefusalCode::DeniedByPolicy), "{e:?}");
}

/// A TLS destination server on loopback for `web.test` (hyper over tokio-rustls), answering
/// `secret for <path>`; the certificate to trust.
async fn tls_server() -> (u16, rustls::pki_types::CertificateDer<'static>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["web.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let der = cert.cert.der().clone();
    let server_cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let (l, port) = destination().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake early.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let body = format!("secret for {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, der)
}

fn client_tls(trust: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust).unwrap();
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// TLS between the enclave (hyper-rustls over the connector) and the destination: the parent
/// relays ciphertext only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_hyper_rustls_on_top_of_the_connector() {
    let (port, cert) = tls_server().await;
    let c = parent().await;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(cert))
        .https_only()
        .enable_http1()
        .wrap_connector(EgressConnector::new(c.client.clone()));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let resp = client
        .get(format!("https://web.test:{port}/s").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"secret for /s");
    // The certificate names web.test, not 127.0.0.1: verification really happens.
    let e = client
        .get(format!("https://127.0.0.1:{port}/s").parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
}

/// reqwest cannot take a custom transport (its `connector_layer` only wraps its own
/// connector): it goes through the enclave's local proxies, TLS still end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_through_the_local_proxies() {
    let port = web_server().await;
    let (tls_port, cert) = tls_server().await;
    let c = parent().await;
    let bind = || async {
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap()
    };
    let socks = LocalProxy::socks5(c.client.clone())
        .limits(test_limits())
        .spawn(bind().await);
    let connect = LocalProxy::http_connect(c.client.clone())
        .limits(test_limits())
        .spawn(bind().await);
    let at = |h: &nitro_net::ServerHandle| h.local_addr().to_string().replace("tcp:", "");
    let client = reqwest::Client::builder()
        // http:// through SOCKS5 (names resolved by the parent), https:// through CONNECT.
        .proxy(reqwest::Proxy::http(format!("socks5h://{}", at(&socks))).unwrap())
        .proxy(reqwest::Proxy::https(format!("http://{}", at(&connect))).unwrap())
        .tls_backend_preconfigured(client_tls(cert))
        .build()
        .unwrap();
    let get = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
    };
    assert_eq!(
        get(format!("http://web.test:{port}/r")).await.unwrap(),
        "hello from /r"
    );
    assert_eq!(
        get(format!("https://web.test:{tls_port}/t")).await.unwrap(),
        "secret for /t"
    );
    assert_eq!(socks.stats().connections_total, 1);
    assert_eq!(connect.stats().connections_total, 1);
    // Refused by the parent (a name it cannot resolve): both proxies refuse, reqwest errs.
    let refused = c.server.stats().refused;
    assert!(get("http://denied.test/".into()).await.is_err());
    assert!(get("https://denied.test/".into()).await.is_err());
    assert_eq!(c.server.stats().refused, refused + 2);
}

async fn client_of(ConnectInfo(peer): ConnectInfo<PeerAddr>) -> String {
    peer.to_string()
}

/// axum on the enclave side of ingress: the client address comes from the PROXY header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_serves_an_ingress_listener() {
    let dir = tempfile::tempdir().unwrap();
    let enclave: Addr = format!("uds:{}:9000", dir.path().display())
        .parse()
        .unwrap();
    let listener = IngressListener::new(enclave.bind().await.unwrap(), true);
    let app = Router::new().route("/", get(client_of));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .await
        .unwrap()
    });
    let parent = IngressServer::new(enclave)
        .proxy_protocol(true)
        .limits(test_limits())
        .spawn(
            "tcp:127.0.0.1:0"
                .parse::<Addr>()
                .unwrap()
                .bind()
                .await
                .unwrap(),
        );
    let at = parent.local_addr().to_string();
    let at = at.strip_prefix("tcp:").unwrap().to_owned();
    // A real client on the parent's network: its own address comes back.
    let tcp = tokio::net::TcpStream::connect(&at).await.unwrap();
    let mine = tcp.local_addr().unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            hyper::Request::get(format!("http://{at}/"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), format!("tcp:{mine}"));
}

/// axum directly on a transport listener (here a Unix socket; `vsock:PORT` in an enclave).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_serves_a_transport_listener() {
    let dir = tempfile::tempdir().unwrap();
    let addr: Addr = format!("uds:{}:9001", dir.path().display())
        .parse()
        .unwrap();
    let app = Router::new().route("/", get(client_of));
    let listener = addr.bind().await.unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .await
        .unwrap()
    });
    // Through the parent's ingress server, without a PROXY header.
    let parent = IngressServer::new(addr).limits(test_limits()).spawn(
        "tcp:127.0.0.1:0"
            .parse::<Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap(),
    );
    let at = parent.local_addr().to_string();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = client
        .get(format!("http://{}/", at.strip_prefix("tcp:").unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, PeerAddr::Unix.to_string());
}
