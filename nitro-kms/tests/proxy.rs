//! The attesting KMS proxy with unmodified AWS tooling: boto3 and the `aws` CLI, pointed at the
//! proxy only through `AWS_ENDPOINT_URL_KMS`, with dummy credentials. Behind the proxy: a
//! `KmsClient` with a `Recipient` (simulated NSM) over a Unix-socket transport, TLS to the
//! local KMS, whose key policy admits one PCR0.
//!
//! Checked: Decrypt / GenerateDataKey / GenerateDataKeyPair / DeriveSharedSecret succeed for the
//! admitted PCR0 and fail with `AccessDeniedException` for another; Encrypt and GenerateRandom (no key policy
//! can name an attestation for them: Encrypt takes no `Recipient`, GenerateRandom uses no key)
//! succeed for both; no response ever carries `CiphertextForRecipient`; KMS errors pass
//! through; a `Recipient` from the caller is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nitro_attest::SimulatedNsm;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::*;
use nitro_kms::proxy::{KmsProxy, RunningProxy};
use nitro_kms::{Credentials, KmsClient, Recipient, RetryConfig, TlsRoots};

const REGION: &str = "eu-west-1";
const PCR0_GOOD: [u8; 48] = [0x11; 48];
const PCR0_BAD: [u8; 48] = [0x22; 48];

fn creds() -> Credentials {
    Credentials::new("AKIDENCLAVE", "enclave-secret-key", None, None)
}

fn nsm(seed: u64, pcr0: &[u8]) -> Arc<SimulatedNsm> {
    Arc::new(
        SimulatedNsm::builder()
            .seed(seed)
            .pcr(0, pcr0)
            .build()
            .unwrap(),
    )
}

struct Env {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    ca_pem: String,
}

/// The local KMS over TLS on a Unix socket, trusting the simulators' roots.
async fn local_kms(nsms: &[&SimulatedNsm]) -> Env {
    let roots: Vec<Vec<u8>> = nsms
        .iter()
        .map(|n| n.root_certificate_der().to_vec())
        .collect();
    let kms = Arc::new(
        LocalKms::new(
            LocalKmsConfig::new(
                AttestationTrust::roots_der(roots.iter().map(Vec::as_slice)).unwrap(),
            )
            .region(REGION)
            .credentials(creds()),
        )
        .unwrap(),
    );
    let (ca_pem, cert_pem, key_pem) = nitro_test_support::tls_material();
    let tls = server::tls_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (kms, tls) = (kms.clone(), tls.clone());
            tokio::spawn(server::serve_connection(kms, stream, Some(tls)));
        }
    });
    Env {
        _dir: dir,
        socket,
        ca_pem,
    }
}

/// A client of the local KMS whose streams are Unix-socket connections (what a vsock or
/// nitro-net tunnel looks like to the client: a byte stream, TLS inside).
fn client(env: &Env, recipient: Option<Recipient>) -> KmsClient {
    let socket = env.socket.clone();
    let mut b = KmsClient::builder(REGION)
        .endpoint("https://localhost")
        .connector(move |_host: String, _port: u16| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await }
        })
        .tls_roots(TlsRoots::from_pem(env.ca_pem.as_bytes()).unwrap())
        .credentials(creds())
        .retry(RetryConfig::new(1));
    if let Some(r) = recipient {
        b = b.recipient(r);
    }
    b.build().unwrap()
}

async fn proxy(env: &Env, nsm: Arc<SimulatedNsm>) -> RunningProxy {
    KmsProxy::new(client(env, Some(Recipient::new(nsm))))
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

fn pcr0_policy(pcr0: &[u8]) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*", "kms:Encrypt", "kms:List*"], "Resource": "*"},
            {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:DeriveSharedSecret"], "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": hex::encode(pcr0)}}}
        ]
    })
    .to_string()
}

/// The venv's Python (it has boto3, installed with moto) or `None` (skipped outside CI).
fn python_with_boto3() -> Option<PathBuf> {
    let python = common::tool("moto_server")
        .and_then(|m| m.parent().map(|d| d.join("python3")))
        .filter(|p| p.is_file())
        .or_else(|| common::tool("python3"))?;
    let ok = Command::new(&python)
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else {
        common::skip("boto3 is not importable (installed with moto[server])")
    }
}

/// Runs `cmd` with only the standard AWS variables pointing it at the proxy.
async fn run(mut cmd: Command, proxy: &RunningProxy) -> std::process::Output {
    cmd.env("AWS_ENDPOINT_URL_KMS", proxy.url())
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "ignored-by-the-proxy")
        .env("AWS_SECRET_ACCESS_KEY", "ignored-by-the-proxy")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

const BOTO3: &str = r#"
import base64, sys
import boto3, botocore
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

mode, key_id, sealed_b64, ecc_key_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sealed = base64.b64decode(sealed_b64)
kms = boto3.client("kms")  # endpoint, region and (dummy) credentials from the environment
raw = []
kms.meta.events.register("after-call.kms", lambda http_response, **kw: raw.append(http_response.content))

def denied(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "AccessDeniedException", e.response
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, e.response
        return
    raise SystemExit("allowed for the wrong PCR0")

# Not attestation-gated: Encrypt carries no Recipient, GenerateRandom uses no key.
ct = kms.encrypt(KeyId=key_id, Plaintext=b"via the proxy", EncryptionContext={"app": "proxy"})["CiphertextBlob"]
rnd = kms.generate_random(NumberOfBytes=24)
assert len(rnd["Plaintext"]) == 24, rnd
assert "CiphertextForRecipient" not in rnd

if mode == "good":
    out = kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "proxy"})
    assert out["Plaintext"] == b"via the proxy", out
    assert out["KeyId"].endswith(key_id), out
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT", out
    assert "CiphertextForRecipient" not in out
    assert kms.decrypt(CiphertextBlob=sealed, EncryptionContext={"app": "x"})["Plaintext"] == b"sealed by the operator"
    dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"app": "proxy"})
    assert len(dk["Plaintext"]) == 32 and len(dk["CiphertextBlob"]) > 32, dk
    assert "CiphertextForRecipient" not in dk
    again = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"app": "proxy"})
    assert again["Plaintext"] == dk["Plaintext"]
    kp = kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
    assert kp["KeyPairSpec"] == "ECC_NIST_P256", kp
    assert len(kp["PrivateKeyPlaintext"]) > 32 and len(kp["PublicKey"]) > 32, kp
    assert "CiphertextForRecipient" not in kp
    # ECDH with a KEY_AGREEMENT key: the shared secret matches one computed locally.
    mine = ec.generate_private_key(ec.SECP256R1())
    mine_der = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = serialization.load_der_public_key(kms.get_public_key(KeyId=ecc_key_id)["PublicKey"])
    shared = kms.derive_shared_secret(KeyId=ecc_key_id, KeyAgreementAlgorithm="ECDH", PublicKey=mine_der)
    assert shared["SharedSecret"] == mine.exchange(ec.ECDH(), theirs), shared
    assert shared["KeyAgreementAlgorithm"] == "ECDH", shared
    assert "CiphertextForRecipient" not in shared
    # KMS errors pass through with their code.
    try:
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "other"})
        raise SystemExit("wrong context accepted")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidCiphertextException", e.response
else:
    denied(lambda: kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "proxy"}))
    denied(lambda: kms.decrypt(CiphertextBlob=sealed, EncryptionContext={"app": "x"}))
    denied(lambda: kms.generate_data_key(KeyId=key_id, KeySpec="AES_256"))
    denied(lambda: kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="RSA_2048"))
    mine = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    denied(lambda: kms.derive_shared_secret(KeyId=ecc_key_id, KeyAgreementAlgorithm="ECDH", PublicKey=mine))

assert raw, "no response seen"
for body in raw:
    assert b"CiphertextForRecipient" not in body, body
print("ok", len(raw))
"#;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_aws_cli_through_the_proxy() {
    let Some(python) = python_with_boto3() else {
        return;
    };
    let good = nsm(41, &PCR0_GOOD);
    let bad = nsm(42, &PCR0_BAD);
    let env = local_kms(&[&good, &bad]).await;
    let admin = client(&env, None);
    let key_id = admin
        .create_key(CreateKeyRequest::new().policy(pcr0_policy(&PCR0_GOOD)))
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let sealed = admin
        .encrypt(
            EncryptRequest::new(&key_id, b"sealed by the operator".to_vec()).context("app", "x"),
        )
        .await
        .unwrap()
        .ciphertext_blob;
    let ecc_key_id = admin
        .create_key(
            CreateKeyRequest::new()
                .policy(pcr0_policy(&PCR0_GOOD))
                .key_spec(KeySpec::EccNistP256)
                .key_usage(KeyUsage::KeyAgreement),
        )
        .await
        .unwrap()
        .key_metadata
        .key_id;
    let good_proxy = proxy(&env, good).await;
    let bad_proxy = proxy(&env, bad).await;

    for (mode, proxy) in [("good", &good_proxy), ("bad", &bad_proxy)] {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", BOTO3, mode, &key_id, &b64(&sealed), &ecc_key_id]);
        let out = run(cmd, proxy).await;
        assert!(
            out.status.success() && out.stdout.starts_with(b"ok"),
            "boto3 ({mode} PCR0):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The aws CLI (botocore underneath, its own argument handling and output).
    let Some(aws) = python
        .parent()
        .map(|d| d.join("aws"))
        .filter(|p| p.is_file())
        .or_else(|| common::tool("aws"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("sealed.bin");
    std::fs::write(&blob, &sealed).unwrap();
    let aws_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&aws);
        cmd.args(["kms"]).args(args).args(["--output", "json"]);
        cmd
    };
    let decrypt = |blob: &Path| {
        aws_cmd(&[
            "decrypt",
            "--ciphertext-blob",
            &format!("fileb://{}", blob.display()),
            "--encryption-context",
            "app=x",
        ])
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "aws: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("CiphertextForRecipient"), "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let out = json(&run(decrypt(&blob), &good_proxy).await);
    assert_eq!(
        out["Plaintext"].as_str().unwrap(),
        b64(b"sealed by the operator")
    );
    let out = json(
        &run(
            aws_cmd(&["generate-random", "--number-of-bytes", "16"]),
            &good_proxy,
        )
        .await,
    );
    assert_eq!(out["Plaintext"].as_str().unwrap().len(), 24); // 16 bytes in base64
    let out = json(
        &run(
            aws_cmd(&[
                "generate-data-key",
                "--key-id",
                &key_id,
                "--key-spec",
                "AES_128",
            ]),
            &good_proxy,
        )
        .await,
    );
    assert_eq!(out["Plaintext"].as_str().unwrap().len(), 24);
    let out = json(
        &run(
            aws_cmd(&[
                "generate-data-key-pair",
                "--key-id",
                &key_id,
                "--key-pair-spec",
                "ECC_NIST_P256",
            ]),
            &good_proxy,
        )
        .await,
    );
    assert!(out["PrivateKeyPlaintext"].as_str().unwrap().len() > 40);
    let out = json(
        &run(
            aws_cmd(&["encrypt", "--key-id", &key_id, "--plaintext", &b64(b"cli")]),
            &bad_proxy,
        )
        .await,
    );
    assert!(out["CiphertextBlob"].is_string());

    let out = run(decrypt(&blob), &bad_proxy).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
}

/// Raw HTTP against the proxy: what an SDK never sends, and error pass-through.
#[tokio::test]
async fn protocol_edges() {
    let good = nsm(43, &PCR0_GOOD);
    let env = local_kms(&[&good]).await;
    let running = proxy(&env, good.clone()).await;

    // A caller's own Recipient is refused: it would expect CiphertextForRecipient back.
    let (status, body) = post(
        &running,
        "TrentService.Decrypt",
        r#"{"CiphertextBlob":"AQ==","Recipient":{"AttestationDocument":"AQ==","KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "ValidationException", "{body}");

    // KMS errors pass through (status, code, message), for attested and plain operations.
    for target in ["TrentService.GenerateDataKey", "TrentService.DescribeKey"] {
        let (status, body) = post(
            &running,
            target,
            r#"{"KeyId":"alias/none","KeySpec":"AES_256"}"#,
        )
        .await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body["__type"], "NotFoundException", "{target}: {body}");
    }
    let (status, body) = post(&running, "TrentService.Decrypt", "not json").await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "SerializationException");
    let (status, body) = post(&running, "Foreign.Operation", "{}").await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "UnknownOperationException");

    // Listening anywhere but loopback is refused; a client without Recipient is refused.
    assert!(KmsProxy::bind("0.0.0.0:0").await.is_err());
    assert!(KmsProxy::new(client(&env, None)).is_err());
}

/// Posts one KMS request to the proxy with a minimal HTTP/1.1 client (hyper).
async fn post(
    running: &RunningProxy,
    target: &str,
    body: &'static str,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let addr = running.local_addr();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/")
        .header("host", addr.to_string())
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.windows(22).any(|w| w == b"CiphertextForRecipient"));
    (status, serde_json::from_slice(&body).unwrap())
}
