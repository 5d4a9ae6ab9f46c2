//! Standard AWS tooling against the local KMS: boto3/botocore (installed with moto) signs with
//! its own SigV4 implementation and speaks the JSON protocol as AWS SDKs do; the local KMS must
//! verify its signatures and answer in shapes botocore parses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

mod common;

use std::process::Command;
use std::sync::Arc;

use nitro_kms::Credentials;
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};

const SCRIPT: &str = r#"
import base64, json, sys
import boto3, botocore

url, region = sys.argv[1], sys.argv[2]
kms = boto3.client("kms", endpoint_url=url, region_name=region,
                   aws_access_key_id="AKIDBOTO", aws_secret_access_key="boto/secret+key",
                   aws_session_token="boto-session")
key = kms.create_key(Description="from boto3")["KeyMetadata"]
kid = key["KeyId"]
assert key["KeySpec"] == "SYMMETRIC_DEFAULT", key
kms.put_key_policy(KeyId=kid, PolicyName="default", Policy=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"}]}))
assert "kms:*" in kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"]
assert any(k["KeyId"] == kid for k in kms.list_keys()["Keys"])
assert kms.describe_key(KeyId=key["Arn"])["KeyMetadata"]["KeyId"] == kid
ct = kms.encrypt(KeyId=kid, Plaintext=b"from botocore", EncryptionContext={"a": "b"})["CiphertextBlob"]
assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"a": "b"})["Plaintext"] == b"from botocore"
dk = kms.generate_data_key(KeyId=kid, KeySpec="AES_256")
assert len(dk["Plaintext"]) == 32
assert len(kms.generate_random(NumberOfBytes=10)["Plaintext"]) == 10
try:
    kms.decrypt(CiphertextBlob=ct, EncryptionContext={"a": "c"})
    raise SystemExit("wrong context accepted")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidCiphertextException", e.response
bad = boto3.client("kms", endpoint_url=url, region_name=region,
                   aws_access_key_id="AKIDBOTO", aws_secret_access_key="wrong",
                   aws_session_token="boto-session")
try:
    bad.list_keys()
    raise SystemExit("bad signature accepted")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response
print("ok")
"#;

/// The venv's Python (it has boto3 and cryptography through moto), or `None` (skipped).
fn python() -> Option<std::path::PathBuf> {
    let python = common::tool("python3")?;
    // Prefer the venv's interpreter (it has boto3 via moto).
    let python = common::tool("moto_server")
        .and_then(|m| m.parent().map(|d| d.join("python3")))
        .filter(|p| p.is_file())
        .unwrap_or(python);
    let has_boto3 = Command::new(&python)
        .args(["-c", "import boto3, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_boto3 {
        return common::skip("boto3 is not importable (installed with moto[server])");
    }
    Some(python)
}

async fn run_python(python: std::path::PathBuf, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_against_local_kms() {
    let Some(python) = python() else {
        return;
    };
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::aws())
            .region("ap-southeast-2")
            .credentials(Credentials::new(
                "AKIDBOTO",
                "boto/secret+key",
                Some("boto-session".into()),
                None,
            )),
    )
    .unwrap();
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let out = run_python(
        python,
        vec!["-c".into(), SCRIPT.into(), url, "ap-southeast-2".into()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// `tests/kms_conformance.py`: every operation of issue 19 through boto3, each outcome compared
/// with the documented AWS outcome (error code and HTTP status). With
/// `NITRO_KMS_COMPARE_MOTO=1` the same table then runs against moto and moto's differences are
/// printed, not failed on (AWS's documentation is the reference, not moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_conformance_table() {
    let Some(python) = python() else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_conformance.py");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::aws())
            .region("eu-central-1")
            .state_file(&state)
            .credentials(Credentials::new("AKIDTABLE", "table-secret", None, None)),
    )
    .unwrap();
    let server = server::spawn(Arc::new(kms), "127.0.0.1:0", None)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let args = |url: &str, region: &str, akid: &str, secret: &str, extra: &str| -> Vec<String> {
        [script, url, region, akid, secret, extra]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    let out = run_python(
        python.clone(),
        args(
            &url,
            "eu-central-1",
            "AKIDTABLE",
            "table-secret",
            "--local-only-checks",
        ),
    )
    .await;
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(", 0 differ"), "{report}");
    drop(server);

    // Every key type the table created survives a restart from the state file.
    let reloaded = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::aws())
            .region("eu-central-1")
            .state_file(&state)
            .credentials(Credentials::new("AKIDTABLE", "table-secret", None, None)),
    )
    .unwrap();
    let (_, caller) = reloaded.caller("AKIDTABLE").unwrap();
    let now = std::time::SystemTime::now();
    let signed = reloaded
        .handle(
            "Sign",
            br#"{"KeyId":"alias/eif-signer","Message":"aGk=","SigningAlgorithm":"ECDSA_SHA_384"}"#,
            &caller,
            now,
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&signed).contains("Signature"));
    let aliases = reloaded.handle("ListAliases", b"{}", &caller, now).unwrap();
    assert!(String::from_utf8_lossy(&aliases).contains("alias/dest"));

    if std::env::var("NITRO_KMS_COMPARE_MOTO").is_ok_and(|v| v == "1")
        && let Some(moto) = common::Moto::start()
    {
        let out = run_python(
            python,
            args(&moto.url, "us-east-1", "testing", "testing", "--lenient"),
        )
        .await;
        println!(
            "moto against the same table (differences are moto's, not failures):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
