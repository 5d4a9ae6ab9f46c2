//! The `eif` example CLI's signing commands with nitro-cli's flag spellings: `build
//! --private-key --signing-certificate --output-file`, `sign-request` signed by the real
//! `openssl` binary then `attach-signature`, `sign` (re-sign), `describe-eif --eif-path`, and
//! `--private-key` given a KMS key ARN (moto's KMS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nitro_test_support::{example, tool};

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn describe(eif: &Path, path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(Command::new(eif)
        .args(["describe-eif", "--eif-path"])
        .arg(path)))
    .unwrap()
}

fn fake_bzimage() -> Vec<u8> {
    let mut k: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

struct Setup {
    dir: tempfile::TempDir,
    eif: PathBuf,
    openssl: PathBuf,
}

fn setup() -> Option<Setup> {
    let eif = example("eif")?;
    let openssl = tool("openssl")?;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("bzImage"), fake_bzimage()).unwrap();
    std::fs::write(p("r0.cpio"), vec![1; 3000]).unwrap();
    std::fs::write(p("r1.cpio"), vec![2; 5000]).unwrap();
    for name in ["a", "b"] {
        ok(Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ])
            .args(["-nodes", "-days", "2", "-sha384", "-subj"])
            .arg(format!("/CN=signer {name}"))
            .arg("-keyout")
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.pem"))));
    }
    Some(Setup { dir, eif, openssl })
}

fn build(s: &Setup, out: &str, extra: &[&str]) -> serde_json::Value {
    let p = |n: &str| s.dir.path().join(n);
    serde_json::from_str(&ok(Command::new(&s.eif)
        .arg("build")
        .arg("--kernel")
        .arg(p("bzImage"))
        .args(["--cmdline", "console=ttyS0"])
        .arg("--ramdisk")
        .arg(p("r0.cpio"))
        .arg("--ramdisk")
        .arg(p("r1.cpio"))
        .args(extra)
        .arg("--output-file")
        .arg(p(out))))
    .unwrap()
}

#[test]
fn detached_signing_with_openssl_and_re_signing() {
    let Some(s) = setup() else { return };
    let p = |n: &str| s.dir.path().join(n);
    let pstr = |n: &str| p(n).to_str().unwrap().to_owned();
    let unsigned = build(&s, "app.eif", &[]);
    assert_eq!(unsigned["IsSigned"], false);

    // sign-request -> openssl -> attach-signature (in place).
    ok(Command::new(&s.eif)
        .args(["sign-request", "--eif-path", &pstr("app.eif")])
        .args([
            "--signing-certificate",
            &pstr("a.pem"),
            "-o",
            &pstr("tbs.bin"),
        ]));
    ok(Command::new(&s.openssl)
        .args([
            "dgst",
            "-sha384",
            "-sign",
            &pstr("a.key"),
            "-out",
            &pstr("sig.der"),
        ])
        .arg(p("tbs.bin")));
    ok(Command::new(&s.eif)
        .args(["attach-signature", "--eif-path", &pstr("app.eif")])
        .args([
            "--signing-certificate",
            &pstr("a.pem"),
            "--signature",
            &pstr("sig.der"),
        ]));
    let signed = describe(&s.eif, &p("app.eif"));
    assert_eq!(signed["IsSigned"], true);
    assert_eq!(signed["CheckCRC"], true);
    assert_eq!(signed["SignatureCheck"], true);
    for pcr in ["PCR0", "PCR1", "PCR2"] {
        assert_eq!(signed["Measurements"][pcr], unsigned["Measurements"][pcr]);
    }
    let pcr8 = ok(Command::new(&s.eif).args(["pcr", "--signing-certificate", &pstr("a.pem")]));
    let pcr8: serde_json::Value = serde_json::from_str(&pcr8).unwrap();
    assert_eq!(signed["Measurements"]["PCR8"], pcr8["PCR8"]);

    // The same image built with --private-key/--signing-certificate (nitro-cli spelling) gets
    // the same PCRs; the short aliases still work.
    let built = build(
        &s,
        "built.eif",
        &[
            "--private-key",
            &pstr("a.key"),
            "--signing-certificate",
            &pstr("a.pem"),
        ],
    );
    assert_eq!(built["Measurements"], signed["Measurements"]);
    let aliased = build(
        &s,
        "aliased.eif",
        &["--sign-key", &pstr("a.key"), "--sign-cert", &pstr("a.pem")],
    );
    assert_eq!(aliased["Measurements"], signed["Measurements"]);

    // Re-sign with key b into a new file: PCR8 changes, PCR0-2 do not.
    ok(Command::new(&s.eif)
        .args([
            "sign",
            "--eif-path",
            &pstr("app.eif"),
            "--private-key",
            &pstr("b.key"),
        ])
        .args([
            "--signing-certificate",
            &pstr("b.pem"),
            "--output-file",
            &pstr("b.eif"),
        ]));
    let b = describe(&s.eif, &p("b.eif"));
    assert_eq!(b["SignatureCheck"], true);
    assert_ne!(b["Measurements"]["PCR8"], signed["Measurements"]["PCR8"]);
    assert_eq!(b["Measurements"]["PCR0"], signed["Measurements"]["PCR0"]);

    // A signature by the wrong key is refused and the image is left as it was.
    let before = std::fs::read(p("app.eif")).unwrap();
    let out = Command::new(&s.eif)
        .args(["attach-signature", "--eif-path", &pstr("app.eif")])
        .args([
            "--signing-certificate",
            &pstr("b.pem"),
            "--signature",
            &pstr("sig.der"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
    assert_eq!(std::fs::read(p("app.eif")).unwrap(), before);
}

#[tokio::test]
async fn private_key_takes_a_kms_key_arn() {
    let Some(s) = setup() else { return };
    let Some(moto) = nitro_test_support::Moto::start() else {
        return;
    };
    let url = moto.url.clone();
    let result = async {
        let kms = nitro_kms::KmsClient::builder("us-east-1")
            .endpoint(&url)
            .dangerous_allow_plain_http()
            .credentials(nitro_kms::Credentials::new(
                "testing", "testing", None, None,
            ))
            .build()
            .unwrap();
        let created = kms
            .call_json(
                "CreateKey",
                &serde_json::json!({"KeySpec": "ECC_NIST_P384", "KeyUsage": "SIGN_VERIFY"}),
            )
            .await
            .unwrap();
        let arn = created["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        let public = kms
            .call_json("GetPublicKey", &serde_json::json!({"KeyId": arn}))
            .await
            .unwrap();
        (arn, public["PublicKey"].as_str().unwrap().to_owned())
    }
    .await;
    let (arn, public_b64) = result;
    let p = |n: &str| s.dir.path().join(n);
    let pstr = |n: &str| p(n).to_str().unwrap().to_owned();
    std::fs::write(p("kms.b64"), public_b64).unwrap();
    ok(Command::new(&s.openssl).args([
        "base64",
        "-d",
        "-A",
        "-in",
        &pstr("kms.b64"),
        "-out",
        &pstr("kms.der"),
    ]));
    ok(Command::new(&s.openssl).args([
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        &pstr("kms.der"),
        "-out",
        &pstr("kms.pub"),
    ]));
    ok(Command::new(&s.openssl)
        .args([
            "x509",
            "-new",
            "-days",
            "2",
            "-sha384",
            "-subj",
            "/CN=KMS signer",
        ])
        .args([
            "-force_pubkey",
            &pstr("kms.pub"),
            "-CA",
            &pstr("a.pem"),
            "-CAkey",
            &pstr("a.key"),
        ])
        .args(["-out", &pstr("kms.pem")]));
    let with = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_ENDPOINT_URL_KMS", &url)
            // moto implements MessageType RAW only.
            .env("NITRO_EIF_KMS_MESSAGE_TYPE", "RAW");
    };
    let unsigned = build(&s, "app.eif", &[]);
    let mut cmd = Command::new(&s.eif);
    cmd.args([
        "sign",
        "--eif-path",
        &pstr("app.eif"),
        "--private-key",
        &arn,
    ])
    .args(["--signing-certificate", &pstr("kms.pem")]);
    with(&mut cmd);
    let signed: serde_json::Value = serde_json::from_str(&ok(&mut cmd)).unwrap();
    assert_eq!(signed["SignatureCheck"], true);
    assert_eq!(
        signed["Measurements"]["PCR0"],
        unsigned["Measurements"]["PCR0"]
    );
    let pcr8: serde_json::Value = serde_json::from_str(&ok(Command::new(&s.eif).args([
        "pcr",
        "--signing-certificate",
        &pstr("kms.pem"),
    ])))
    .unwrap();
    assert_eq!(signed["Measurements"]["PCR8"], pcr8["PCR8"]);
    drop(moto);
}
