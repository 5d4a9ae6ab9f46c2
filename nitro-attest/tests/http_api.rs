//! The attestation HTTP API against the real `curl` binary: documents returned as CBOR or
//! base64 JSON verify with nitro-attest and carry the request's nonce, user data and public
//! key; errors are JSON with proper statuses; non-loopback peers are refused; the same API
//! serves a Unix socket (any accepted stream).

#![cfg(all(feature = "http-api", feature = "simulator"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: failing loudly is the point

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use nitro_attest::{AttestationApi, Nsm, Policy, SimulatedNsm, Timestamp, Verifier};

/// One curl exchange: exit status, HTTP status, content type, body.
struct Reply {
    curl_ok: bool,
    status: u16,
    content_type: String,
    body: Vec<u8>,
    headers: String,
}

fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code} %{content_type}"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the curl binary is required: {e}"));
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, ct) = w.split_once(' ').unwrap_or((&w, ""));
    Reply {
        curl_ok: out.status.success(),
        status: status.parse().unwrap_or(0),
        content_type: ct.to_owned(),
        body: std::fs::read(&body).unwrap_or_default(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

fn post(url: &str, body: &str, extra: &[&str]) -> Reply {
    let mut args = vec!["-X", "POST", "--data-binary", body];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args)
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

fn error_code(r: &Reply) -> String {
    assert_eq!(r.content_type, "application/json");
    json(r)["error"]["code"].as_str().unwrap().to_owned()
}

async fn start(nsm: Arc<SimulatedNsm>, bind: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = AttestationApi::new(nsm);
    tokio::spawn(async move { api.serve(listener).await });
    addr
}

fn sim() -> Arc<SimulatedNsm> {
    Arc::new(SimulatedNsm::builder().seed(21).build().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_documents_that_verify_and_carry_the_nonce() {
    let nsm = sim();
    let addr = start(nsm.clone(), "127.0.0.1:0").await;
    let url = format!("http://{addr}/v1/attestation");
    let verifier = Verifier::new(nsm.trust_anchors().unwrap());
    let nonce = b"curl nonce \x00\xff";
    let body = format!(
        r#"{{"nonce":"{}","user_data":"{}","public_key":"{}"}}"#,
        STANDARD.encode(nonce),
        STANDARD.encode(b"hello"),
        STANDARD.encode(b"pk")
    );
    let r = tokio::task::spawn_blocking({
        let (url, body) = (url.clone(), body.clone());
        move || post(&url, &body, &["-H", "Content-Type: application/json"])
    })
    .await
    .unwrap();
    assert!(r.curl_ok);
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/cbor")
    );
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    let policy = Policy::new()
        .expect_nonce(nonce)
        .expect_user_data(b"hello")
        .expect_public_key(b"pk")
        .expect_pcr(0, nsm.describe_pcr(0).unwrap().value);
    let v = verifier.verify(&r.body, Timestamp::now(), &policy).unwrap();
    assert_eq!(v.nonce.as_deref(), Some(&nonce[..]));

    // Base64 JSON when asked for; unpadded base64 in the request is fine.
    let r = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            post(
                &url,
                r#"{"nonce":"bm9uY2UtMg"}"#,
                &["-H", "Accept: application/json"],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.content_type.as_str()),
        (200, "application/json")
    );
    let doc = STANDARD
        .decode(json(&r)["document"].as_str().unwrap())
        .unwrap();
    let v = verifier
        .verify(
            &doc,
            Timestamp::now(),
            &Policy::new().expect_nonce(b"nonce-2"),
        )
        .unwrap();
    assert_eq!(v.user_data, None);

    // No body at all: a document without optional fields.
    let r = tokio::task::spawn_blocking({
        let url = url.clone();
        move || curl(&["-X", "POST", &url])
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let v = verifier
        .verify(&r.body, Timestamp::now(), &Policy::new())
        .unwrap();
    assert_eq!((v.nonce.clone(), v.public_key.clone()), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_proper_statuses() {
    let addr = start(sim(), "127.0.0.1:0").await;
    let url = format!("http://{addr}/v1/attestation");
    let big_field = format!(r#"{{"user_data":"{}"}}"#, STANDARD.encode(vec![7u8; 1025]));
    let max_fields = format!(
        r#"{{"user_data":"{0}","nonce":"{0}","public_key":"{0}"}}"#,
        STANDARD.encode(vec![7u8; 1024])
    );
    let huge_body = format!(r#"{{"nonce":"AA=="{}}}"#, " ".repeat(9000));
    let replies = tokio::task::spawn_blocking(move || {
        vec![
            (
                "bad base64",
                post(&url, r#"{"nonce":"***"}"#, &[]),
                400,
                "bad_request",
            ),
            ("bad JSON", post(&url, "{nonce", &[]), 400, "bad_request"),
            (
                "unknown field",
                post(&url, r#"{"nonse":"AA=="}"#, &[]),
                400,
                "bad_request",
            ),
            (
                "field over 1 KiB",
                post(&url, &big_field, &[]),
                413,
                "too_large",
            ),
            (
                "body over the limit",
                post(&url, &huge_body, &[]),
                413,
                "too_large",
            ),
            (
                "text content type",
                post(&url, "{}", &["-H", "Content-Type: text/plain"]),
                415,
                "unsupported_media_type",
            ),
            (
                "HTML only",
                post(&url, "{}", &["-H", "Accept: text/html"]),
                406,
                "not_acceptable",
            ),
            ("GET", curl(&[&url]), 405, "method_not_allowed"),
            (
                "other path",
                post(&url.replace("/v1/attestation", "/v1/other"), "{}", &[]),
                404,
                "not_found",
            ),
            // Three maximal fields still fit one NSM request (4 KiB).
            (
                "three maximal fields",
                post(&url, &max_fields, &[]),
                200,
                "",
            ),
        ]
    })
    .await
    .unwrap();
    for (what, r, status, code) in replies {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if status == 200 {
            let doc = nitro_attest::UnverifiedDocument::parse(&r.body).unwrap();
            assert_eq!(doc.payload().nonce.as_ref().map(Vec::len), Some(1024));
        } else {
            assert_eq!(error_code(&r), code, "{what}");
            assert!(json(&r)["error"]["message"].as_str().is_some(), "{what}");
        }
        if status == 405 {
            assert!(r.headers.contains("allow: POST"), "{}", r.headers);
        }
    }
}

/// A local address that is not loopback, if the machine has one (the interface of the
/// default route; no packet is sent).
fn non_loopback_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_are_not_loopback_are_refused() {
    // Binding elsewhere than loopback is refused outright...
    assert!(matches!(
        AttestationApi::<SimulatedNsm>::bind_loopback("0.0.0.0:0".parse().unwrap()).await,
        Err(nitro_attest::Error::InvalidArgument(_))
    ));
    // ...and a listener bound to all addresses by the caller still serves loopback only.
    let addr = start(sim(), "0.0.0.0:0").await;
    let port = addr.port();
    let local = tokio::task::spawn_blocking(move || {
        post(
            &format!("http://127.0.0.1:{port}/v1/attestation"),
            "{}",
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(local.status, 200);
    let Some(ip) = non_loopback_address() else {
        eprintln!("SKIPPED (partly): this machine has no non-loopback address");
        return;
    };
    let url = format!("http://{}/v1/attestation", SocketAddr::new(ip, port));
    let remote = tokio::task::spawn_blocking(move || post(&url, "{}", &[]))
        .await
        .unwrap();
    assert!(!remote.curl_ok, "served a peer at {ip}");
    assert_eq!(remote.status, 0, "answered a peer at {ip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_accepted_stream_a_unix_socket() {
    let nsm = sim();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attest.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let api = AttestationApi::new(nsm.clone() as Arc<dyn Nsm>);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let api = api.clone();
            tokio::spawn(async move { api.serve_connection(stream).await });
        }
    });
    let sock = path.to_str().unwrap().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        post(
            "http://localhost/v1/attestation",
            r#"{"nonce":"dW5peA=="}"#,
            &["--unix-socket", &sock],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    Verifier::new(nsm.trust_anchors().unwrap())
        .verify(
            &r.body,
            Timestamp::now(),
            &Policy::new().expect_nonce(b"unix"),
        )
        .unwrap();
}
