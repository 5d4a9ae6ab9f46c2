//! Parent-side credentials from `aws-config` (feature `aws-config`), served to the enclave over
//! the credentials protocol:
//!
//! - the instance role through IMDSv2: a real IMDSv2 HTTP server (token `PUT`, then
//!   role-name and credential `GET`s carrying the token; requests without a valid token get
//!   401) on loopback, found through `AWS_EC2_METADATA_SERVICE_ENDPOINT`, reached by
//!   `aws-config`'s providers through this crate's HTTP client; the credentials are refreshed
//!   before they expire, and the parent's cache spares IMDS a request per enclave call;
//! - the default chain's environment and profile-file sources (temporary `AWS_CONFIG_FILE`
//!   and `AWS_SHARED_CREDENTIALS_FILE`).
//!
//! The chain reads process-wide environment variables, so each case runs in a child process
//! (this test binary again, running the ignored `child` test with its own environment).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use nitro_kms::ProvideCredentials;
use nitro_kms::credentials::{
    RefreshingCredentials, default_chain, instance_role, request_credentials, serve_credentials,
};

const ROLE: &str = "nitro-parent-role";
const TOKEN: &str = "imds-session-token-0123456789";

/// What the IMDS server saw.
#[derive(Default)]
struct ImdsLog {
    token_puts: u32,
    credential_gets: u32,
    unauthorised: u32,
}

/// A minimal IMDSv2 server: session tokens, the role name, and credentials that live
/// `lifetime` with a new access key id on every fetch.
async fn imds_server(lifetime: Duration) -> (u16, Arc<Mutex<ImdsLog>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(ImdsLog::default()));
    let state = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(imds(&state, &req, lifetime)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, log)
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn imds<B>(log: &Mutex<ImdsLog>, req: &Request<B>, lifetime: Duration) -> Response<Full<Bytes>> {
    let mut log = log.lock().unwrap();
    let path = req.uri().path();
    if req.method() == hyper::Method::PUT && path == "/latest/api/token" {
        let Some(ttl) = req.headers().get("x-aws-ec2-metadata-token-ttl-seconds") else {
            return reply(StatusCode::BAD_REQUEST, "missing TTL");
        };
        log.token_puts += 1;
        let mut r = reply(StatusCode::OK, TOKEN);
        r.headers_mut()
            .insert("x-aws-ec2-metadata-token-ttl-seconds", ttl.clone());
        return r;
    }
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    if req
        .headers()
        .get("x-aws-ec2-metadata-token")
        .is_none_or(|t| t.as_bytes() != TOKEN.as_bytes())
    {
        log.unauthorised += 1;
        return reply(StatusCode::UNAUTHORIZED, "");
    }
    match path.strip_prefix("/latest/meta-data/iam/security-credentials/") {
        Some("") => reply(StatusCode::OK, ROLE),
        Some(ROLE) => {
            log.credential_gets += 1;
            let expiration = time::OffsetDateTime::from(SystemTime::now() + lifetime)
                .replace_nanosecond(0)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": "2026-01-01T00:00:00Z",
                "Type": "AWS-HMAC",
                "AccessKeyId": format!("ASIAIMDS{}", log.credential_gets),
                "SecretAccessKey": "imds-secret",
                "Token": "imds-session",
                "Expiration": expiration,
            });
            reply(StatusCode::OK, body.to_string())
        }
        _ => reply(StatusCode::NOT_FOUND, ""),
    }
}

/// Runs the `child` test in a child process with `vars` set, and every AWS variable that
/// could select another source removed. Panics (with its output) when the child fails.
async fn run_child(vars: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_REGION", "eu-west-1")
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-credentials"),
        )
        .env("NITRO_TEST_CHILD", "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("child finished in time")
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("CHILD OK"), "child did not run:\n{text}");
}

#[tokio::test]
async fn instance_role_through_imdsv2_refreshed_before_expiry_and_served_to_the_enclave() {
    let (port, log) = imds_server(Duration::from_secs(60)).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    for mode in ["default-chain", "instance-role"] {
        *log.lock().unwrap() = ImdsLog::default();
        run_child(&[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.clone()),
            ("NITRO_TEST_MODE", mode.to_owned()),
            ("NITRO_TEST_EXPECT", "ASIAIMDS".to_owned()),
            ("NITRO_TEST_REFRESH", "1".to_owned()),
        ])
        .await;
        let log = log.lock().unwrap();
        // IMDSv2: a session token first; two credential fetches (the first, and the refresh
        // shortly before expiry), not one per enclave request.
        assert!(log.token_puts >= 1, "{mode}: no token PUT");
        assert_eq!(log.credential_gets, 2, "{mode}");
        assert_eq!(log.unauthorised, 0, "{mode}: requests without the token");
    }
}

#[tokio::test]
async fn default_chain_environment_and_profile_files() {
    // Environment variables come first.
    run_child(&[
        ("AWS_ACCESS_KEY_ID", "AKIDFROMENV".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret".to_owned()),
        ("AWS_SESSION_TOKEN", "env-token".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("NITRO_TEST_MODE", "default-chain".to_owned()),
        ("NITRO_TEST_EXPECT", "AKIDFROMENV".to_owned()),
    ])
    .await;

    // Then the shared credentials file, for the profile AWS_PROFILE names.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let credentials = dir.path().join("credentials");
    std::fs::write(&config, "[profile enclave-parent]\nregion = eu-west-1\n").unwrap();
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDDEFAULTPROFILE\naws_secret_access_key = no\n\n\
         [enclave-parent]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    run_child(&[
        ("AWS_CONFIG_FILE", config.display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.display().to_string(),
        ),
        ("AWS_PROFILE", "enclave-parent".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("NITRO_TEST_MODE", "default-chain".to_owned()),
        ("NITRO_TEST_EXPECT", "AKIDFROMPROFILE".to_owned()),
    ])
    .await;

    // Nothing configured and IMDS disabled: an error answer reaches the enclave.
    run_child(&[
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("NITRO_TEST_MODE", "default-chain".to_owned()),
        ("NITRO_TEST_EXPECT", "ERROR".to_owned()),
    ])
    .await;
}

/// The child side: builds the source `NITRO_TEST_MODE` names, serves it as the parent does
/// (`kms serve-credentials`) and asks for credentials as the enclave does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the other tests in a child process, with its own environment"]
async fn child() {
    if std::env::var_os("NITRO_TEST_CHILD").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let sdk = match var("NITRO_TEST_MODE").as_str() {
        "default-chain" => default_chain().await.unwrap(),
        "instance-role" => instance_role().unwrap(),
        other => panic!("unknown mode {other:?}"),
    };
    let expect = var("NITRO_TEST_EXPECT");
    let margin = Duration::from_secs(5);
    let parent = Arc::new(RefreshingCredentials::new(sdk).refresh_margin(margin));

    // The parent serves its cache over a Unix socket (vsock in production).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let served = parent.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move { serve_credentials(stream, &*served).await });
        }
    });
    let mut enclave = tokio::net::UnixStream::connect(&path).await.unwrap();

    if expect == "ERROR" {
        let e = request_credentials(&mut enclave).await.unwrap_err();
        assert!(
            e.to_string().contains("could not provide credentials"),
            "{e}"
        );
        println!("CHILD OK: {e}");
        return;
    }
    let first = request_credentials(&mut enclave).await.unwrap();
    assert!(first.access_key_id().starts_with(&expect), "{first:?}");
    // Served from the parent's cache on the next enclave request.
    let again = request_credentials(&mut enclave).await.unwrap();
    assert_eq!(again.access_key_id(), first.access_key_id());

    if var("NITRO_TEST_REFRESH") == "1" {
        // Short-lived (60 s) credentials: still cached 50 s later, refreshed within the margin
        // (at 56 s), without waiting: the cache takes the time as an argument.
        let expiry = first.expiration().expect("IMDS credentials expire");
        let now = SystemTime::now();
        let lifetime = expiry.duration_since(now).unwrap();
        assert!(lifetime <= Duration::from_secs(60), "{lifetime:?}");
        let before = expiry - margin - Duration::from_secs(1);
        let within = expiry - margin + Duration::from_secs(1);
        assert_eq!(
            parent.credentials_at(before).await.unwrap().access_key_id(),
            first.access_key_id()
        );
        let refreshed = parent.credentials_at(within).await.unwrap();
        assert_ne!(refreshed.access_key_id(), first.access_key_id());
        assert!(refreshed.expiration().unwrap() > within);
        // The enclave now gets the refreshed credentials.
        let served = request_credentials(&mut enclave).await.unwrap();
        assert_eq!(served.access_key_id(), refreshed.access_key_id());
        // The SDK provider itself is asked through our trait too.
        let _ = parent.provide_credentials().await.unwrap();
    }
    println!("CHILD OK: {}", first.access_key_id());
}
