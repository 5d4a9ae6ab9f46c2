//! The `kms` example CLI end to end: `emulator` trusting simulator roots from a watched file,
//! `create-key` with a PCR0 policy, `encrypt`, attested `decrypt` / `generate-data-key` /
//! `generate-random` (admitted and refused), `seal` / `unseal`, `call` (a P-384 signing key
//! behind an alias: `CreateKey`, `CreateAlias`, `Sign`, `Verify`), `cms-open` on the real KMS
//! vector, and `proxy` (the CLI's plain decrypt through it). Runs the binary `cargo test` builds
//! for the example.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDCLITEST")
        .env("AWS_SECRET_ACCESS_KEY", "cli-test-secret")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_REGION", "eu-west-3")
        .env("RUST_BACKTRACE", "0")
}

/// Runs the CLI; `Ok(json)` on success, `Err(stderr)` on failure.
fn kms(bin: &PathBuf, args: &[&str]) -> Result<Value, String> {
    let out = env(&mut Command::new(bin)).args(args).output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout))))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

#[test]
fn cli_end_to_end() {
    let Some(bin) = nitro_test_support::example("kms") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    let roots_s = roots.to_str().unwrap();

    let mut emulator = Killed(
        env(&mut Command::new(&bin))
            .args([
                "emulator",
                "--listen",
                "tcp:127.0.0.1:0",
                "--root-simulator",
                roots_s,
            ])
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(emulator.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started: Value = serde_json::from_str(&line).unwrap();
    let endpoint = s(&started, "Endpoint");
    let ep = endpoint.as_str();

    let good = "ab".repeat(48);
    let bad = "cd".repeat(48);
    let policy = serde_json::json!({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": ["kms:CreateKey", "kms:Encrypt", "kms:GenerateDataKey"], "Resource": "*"},
        {"Effect": "Allow", "Principal": "*", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": good}}}]});
    let policy_file = dir.path().join("policy.json");
    std::fs::write(&policy_file, policy.to_string()).unwrap();

    let key = kms(
        &bin,
        &[
            "create-key",
            "--endpoint",
            ep,
            "--policy",
            policy_file.to_str().unwrap(),
        ],
    )
    .unwrap();
    let key_id = s(&key["KeyMetadata"], "KeyId");
    let enc = kms(
        &bin,
        &[
            "encrypt",
            "--endpoint",
            ep,
            "--key-id",
            &key_id,
            "--plaintext-b64",
            "czNjcjN0",
            "--context",
            "app=cli",
        ],
    )
    .unwrap();
    let blob = s(&enc, "CiphertextBlob");

    let sim = |pcr: &str| -> Vec<String> {
        [
            "--recipient",
            "sim",
            "--sim-pcr",
            &format!("0={pcr}"),
            "--sim-root",
            roots_s,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let with = |base: &[&str], extra: &[String]| -> Vec<String> {
        base.iter()
            .map(|a| (*a).to_owned())
            .chain(extra.iter().cloned())
            .collect()
    };
    let run = |args: Vec<String>| kms(&bin, &args.iter().map(String::as_str).collect::<Vec<_>>());

    let dec = run(with(
        &[
            "decrypt",
            "--endpoint",
            ep,
            "--ciphertext-b64",
            &blob,
            "--context",
            "app=cli",
        ],
        &sim(&good),
    ))
    .unwrap();
    assert_eq!(s(&dec, "Plaintext"), "czNjcjN0");
    assert!(dec["CiphertextForRecipient"].is_string(), "{dec}");
    let refused = run(with(
        &[
            "decrypt",
            "--endpoint",
            ep,
            "--ciphertext-b64",
            &blob,
            "--context",
            "app=cli",
        ],
        &sim(&bad),
    ))
    .unwrap_err();
    assert!(refused.contains("AccessDeniedException"), "{refused}");

    // `kms proxy` (a simulated NSM with the admitted PCR0): the CLI's own decrypt, without
    // --recipient, through the proxy gets the plaintext; the proxy attested the call.
    let mut proxy = Killed(
        env(&mut Command::new(&bin))
            .args(with(
                &["proxy", "--listen", "127.0.0.1:0", "--endpoint", ep],
                &sim(&good),
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(proxy.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proxy_url = s(&serde_json::from_str(&line).unwrap(), "Listening");
    let via_proxy = kms(
        &bin,
        &[
            "decrypt",
            "--endpoint",
            &proxy_url,
            "--ciphertext-b64",
            &blob,
            "--context",
            "app=cli",
        ],
    )
    .unwrap();
    assert_eq!(s(&via_proxy, "Plaintext"), "czNjcjN0");
    assert!(
        via_proxy.get("CiphertextForRecipient").is_none(),
        "{via_proxy}"
    );
    drop(proxy);

    let dk = run(with(
        &["generate-data-key", "--endpoint", ep, "--key-id", &key_id],
        &sim(&good),
    ))
    .unwrap();
    assert_eq!(base64_len(&s(&dk, "Plaintext")), 32);
    let random = run(with(
        &["generate-random", "--endpoint", ep, "--bytes", "24"],
        &sim(&bad),
    ))
    .unwrap();
    assert_eq!(base64_len(&s(&random, "Plaintext")), 24);

    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"correct horse battery staple").unwrap();
    let sealed = dir.path().join("secret.sealed");
    kms(
        &bin,
        &[
            "seal",
            "--endpoint",
            ep,
            "--key-id",
            &key_id,
            "--context",
            "app=cli",
            "--in",
            secret.to_str().unwrap(),
            "--out",
            sealed.to_str().unwrap(),
        ],
    )
    .unwrap();
    let unsealed = run(with(
        &[
            "unseal",
            "--endpoint",
            ep,
            "--in",
            sealed.to_str().unwrap(),
            "--context",
            "app=cli",
        ],
        &sim(&good),
    ))
    .unwrap();
    assert_eq!(
        s(&unsealed, "Plaintext"),
        "Y29ycmVjdCBob3JzZSBiYXR0ZXJ5IHN0YXBsZQ=="
    );
    let wrong_context = run(with(
        &[
            "unseal",
            "--endpoint",
            ep,
            "--in",
            sealed.to_str().unwrap(),
            "--context",
            "app=other",
        ],
        &sim(&good),
    ))
    .unwrap_err();
    assert!(
        wrong_context.contains("encryption context"),
        "{wrong_context}"
    );
    let no_recipient = kms(
        &bin,
        &[
            "unseal",
            "--endpoint",
            ep,
            "--in",
            sealed.to_str().unwrap(),
            "--context",
            "app=cli",
        ],
    )
    .unwrap_err();
    // Without --recipient, unseal uses /dev/nsm (absent here): never a plaintext Decrypt.
    assert!(no_recipient.contains("/dev/nsm"), "{no_recipient}");

    // `call`: any operation as raw JSON, here an EIF-signing style P-384 key behind an alias.
    let signer = kms(
        &bin,
        &[
            "call",
            "CreateKey",
            "--endpoint",
            ep,
            "--json",
            r#"{"KeySpec":"ECC_NIST_P384","KeyUsage":"SIGN_VERIFY"}"#,
        ],
    )
    .unwrap();
    let signer_id = s(&signer["KeyMetadata"], "KeyId");
    let alias = serde_json::json!({"AliasName": "alias/cli-signer", "TargetKeyId": signer_id});
    kms(
        &bin,
        &[
            "call",
            "CreateAlias",
            "--endpoint",
            ep,
            "--json",
            &alias.to_string(),
        ],
    )
    .unwrap();
    let sign =
        r#"{"KeyId":"alias/cli-signer","Message":"aGk=","SigningAlgorithm":"ECDSA_SHA_384"}"#;
    let signed = kms(&bin, &["call", "Sign", "--endpoint", ep, "--json", sign]).unwrap();
    let verify = serde_json::json!({"KeyId": "alias/cli-signer", "Message": "aGk=",
        "SigningAlgorithm": "ECDSA_SHA_384", "Signature": s(&signed, "Signature")});
    let verified = kms(
        &bin,
        &[
            "call",
            "Verify",
            "--endpoint",
            ep,
            "--json",
            &verify.to_string(),
        ],
    )
    .unwrap();
    assert_eq!(verified["SignatureValid"], true);
    let e = kms(&bin, &["call", "NoSuchOperation", "--endpoint", ep]).unwrap_err();
    assert!(e.contains("UnknownOperationException"), "{e}");

    let fixtures = nitro_test_support::fixtures_dir();
    let cms = fixtures.join("cms");
    if cms.is_dir() {
        let opened = kms(
            &bin,
            &[
                "cms-open",
                "--key",
                cms.join("enclaver__pkcs7_tests_PRIVATE_KEY.pk8.der")
                    .to_str()
                    .unwrap(),
                cms.join("enclaver__pkcs7_tests_INPUT.ber")
                    .to_str()
                    .unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(s(&opened, "Plaintext"), "SGVsbG8sIFdvcmxk"); // "Hello, World"
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "fixtures missing"
        );
        eprintln!(
            "SKIPPED cms-open: fixtures not found at {}",
            fixtures.display()
        );
    }
}

fn base64_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|b| *b == b'=').count();
    b64.len() / 4 * 3 - pad
}

/// `serve-credentials` answers the enclave's credentials protocol from the environment and, when
/// built with feature `aws-config`, from aws-config's default chain (here: its environment
/// source, with IMDS disabled so that nothing else is asked).
#[tokio::test]
async fn serve_credentials_sources() {
    let Some(bin) = nitro_test_support::example("kms") else {
        return;
    };
    let mut sources = vec!["env"];
    if cfg!(feature = "aws-config") {
        sources.push("default-chain");
    }
    for source in sources {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("uds:{}:8001", dir.path().display());
        let mut server = Killed(
            env(&mut Command::new(&bin))
                .args(["serve-credentials", "--listen", &listen, "--source", source])
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_CONFIG_FILE", dir.path().join("none"))
                .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(server.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("Listening"), "{source}: {line}");
        let addr: nitro_net::Addr = listen.parse().unwrap();
        let mut stream = addr.connect().await.unwrap();
        let creds = nitro_kms::credentials::request_credentials(&mut stream)
            .await
            .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDCLITEST", "{source}");
        assert_eq!(
            creds.secret_access_key().expose(),
            "cli-test-secret",
            "{source}"
        );
    }
    // Without the feature the source does not exist: refused at parse time.
    if !cfg!(feature = "aws-config") {
        let e = kms(
            &bin,
            &[
                "serve-credentials",
                "--listen",
                "tcp:127.0.0.1:0",
                "--source",
                "default-chain",
            ],
        )
        .unwrap_err();
        assert!(e.contains("default-chain"), "{e}");
    }
}
