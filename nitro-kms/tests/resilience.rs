//! Client behaviour on a misbehaving network: retries with backoff after throttling and 5xx,
//! no retry on client errors, timeouts on a server that never answers, and bounded responses.
//! The "server" here is a scripted HTTP/1.1 responder: it tests the client's reaction to
//! specific answers, which no real KMS produces on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nitro_kms::model::GenerateRandomRequest;
use nitro_kms::{Credentials, Error, KmsClient, RetryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `answers[i]` (status, body) to the i-th request (the last one repeats); `None`
/// means: read the request and never answer.
async fn scripted(answers: Vec<Option<(u16, String)>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (seen, answers) = (seen.clone(), answers.clone());
            tokio::spawn(async move {
                loop {
                    // Read one request: headers, then Content-Length bytes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let i = seen.fetch_add(1, Ordering::SeqCst);
                    match &answers[i.min(answers.len() - 1)] {
                        None => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Some((status, body)) => {
                            let resp = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (url, count)
}

fn client(url: &str, attempts: u32) -> KmsClient {
    let mut retry = RetryConfig::new(attempts);
    retry.initial_backoff = Duration::from_millis(10);
    KmsClient::builder("us-east-1")
        .endpoint(url)
        .dangerous_allow_plain_http()
        .credentials(Credentials::new("AKID", "secret", None, None))
        .retry(retry)
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

const OK: &str = r#"{"Plaintext":"aGVsbG8="}"#;

#[tokio::test]
async fn retries_throttling_and_server_errors() {
    let throttled = Some((
        400,
        r#"{"__type":"ThrottlingException","message":"slow down"}"#.to_owned(),
    ));
    let unavailable = Some((503, "<html>busy</html>".to_owned()));
    let (url, count) = scripted(vec![throttled.clone(), unavailable, Some((200, OK.into()))]).await;
    let r = client(&url, 3)
        .generate_random(GenerateRandomRequest::new(5))
        .await
        .unwrap();
    assert_eq!(r.plaintext.as_bytes(), b"hello");
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // Out of attempts: the last error is returned, typed.
    let (url, count) = scripted(vec![throttled]).await;
    let e = client(&url, 2)
        .generate_random(GenerateRandomRequest::new(5))
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("ThrottlingException"));
    assert!(e.is_retryable());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let denied = Some((
        400,
        r#"{"__type":"AccessDeniedException","Message":"no"}"#.to_owned(),
    ));
    let (url, count) = scripted(vec![denied]).await;
    let e = client(&url, 5)
        .generate_random(GenerateRandomRequest::new(5))
        .await
        .unwrap_err();
    assert_eq!(e.service_code(), Some("AccessDeniedException"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (url, count) = scripted(vec![None]).await;
    let t = Instant::now();
    let e = client(&url, 2)
        .generate_random(GenerateRandomRequest::new(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "request",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn malformed_and_oversized_responses() {
    for (status, body) in [
        (200, "not json".to_owned()),
        (200, r#"{"Plaintext": 5}"#.to_owned()),
        (200, r#"{"Plaintext":"!!!"}"#.to_owned()),
        (
            200,
            format!(r#"{{"Plaintext":"{}"}}"#, "A".repeat(2 * 1024 * 1024)),
        ),
    ] {
        let (url, _) = scripted(vec![Some((status, body))]).await;
        let e = client(&url, 1)
            .generate_random(GenerateRandomRequest::new(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidResponse { .. } | Error::Http(_)),
            "{e}"
        );
    }
    // Nothing listening: a connection error, retryable.
    let e = client("http://127.0.0.1:1", 1)
        .generate_random(GenerateRandomRequest::new(5))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.is_retryable(), "{e}");
}
