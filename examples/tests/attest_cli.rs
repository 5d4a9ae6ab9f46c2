//! The `attest` example CLI end to end: `sim` → `verify` / `inspect` / `bench`, text encodings,
//! exit statuses, and the genuine fixtures.

use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running attest: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn sim_verify_inspect_bench() {
    let Some(bin) = nitro_test_support::example("attest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.cbor");
    let root = dir.path().join("root.pem");
    let pk = dir.path().join("pk.bin");
    std::fs::write(&pk, b"public key bytes").unwrap();
    let pcr16 = "ab".repeat(48);
    let o = run(
        &bin,
        &[
            "sim",
            "--out",
            doc.to_str().unwrap(),
            "--root-out",
            root.to_str().unwrap(),
            "--seed",
            "3",
            "--pcr",
            &format!("16={pcr16}"),
            "--user-data",
            "68656c6c6f",
            "--nonce",
            "0011",
            "--public-key",
            pk.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let root_s = root.to_str().unwrap();
    let doc_s = doc.to_str().unwrap();

    // Valid with the simulator root and matching expectations.
    let o = run(
        &bin,
        &[
            "verify",
            "--root",
            root_s,
            "--nonce",
            "0011",
            "--user-data",
            "68656c6c6f",
            "--pcr",
            &format!("16={pcr16}"),
            "--max-age",
            "600",
            doc_s,
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["file"], doc_s);
    assert_eq!(lines[0]["valid"], true);
    assert!(lines[0]["error"].is_null());

    // Wrong nonce, or the AWS root: invalid, exit status 1, a precise error.
    let o = run(
        &bin,
        &["verify", "--root", root_s, "--nonce", "0012", doc_s],
    );
    assert_eq!(o.status.code(), Some(1));
    let l = &json_lines(&o)[0];
    assert_eq!(l["valid"], false);
    assert!(
        l["error"].as_str().unwrap().contains("nonce mismatch"),
        "{l}"
    );
    let o = run(&bin, &["verify", doc_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        json_lines(&o)[0]["error"]
            .as_str()
            .unwrap()
            .contains("untrusted root")
    );

    // Hex and base64 encodings of the same document are detected; one bad file fails the run.
    let raw = std::fs::read(&doc).unwrap();
    let hex_file = dir.path().join("doc.hex");
    std::fs::write(&hex_file, hex::encode(&raw) + "\n").unwrap();
    let b64_file = dir.path().join("doc.b64");
    use base64::Engine as _;
    std::fs::write(
        &b64_file,
        base64::engine::general_purpose::STANDARD.encode(&raw),
    )
    .unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x00\x01not a document").unwrap();
    let o = run(
        &bin,
        &[
            "verify",
            "--root",
            root_s,
            hex_file.to_str().unwrap(),
            b64_file.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(json_lines(&o).iter().all(|l| l["valid"] == true));
    let o = run(
        &bin,
        &["verify", "--root", root_s, doc_s, junk.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let lines = json_lines(&o);
    assert_eq!(
        (lines[0]["valid"].clone(), lines[1]["valid"].clone()),
        (true.into(), false.into())
    );

    // Inspect: fields as JSON, byte fields as hex, timestamp as RFC 3339 too.
    let o = run(&bin, &["inspect", doc_s]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pcrs"].as_object().unwrap().len(), 17);
    assert_eq!(v["pcrs"]["16"], pcr16);
    assert_eq!(v["nonce"], "0011");
    assert_eq!(v["user_data"], "68656c6c6f");
    assert_eq!(v["public_key"], hex::encode(b"public key bytes"));
    assert!(v["timestamp_rfc3339"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["cose"]["algorithm"], -35);
    assert_eq!(v["cabundle"].as_array().unwrap().len(), 4);

    // Bench: the last line is `docs_per_s <float>`.
    for extra in [&[][..], &["--cache"][..]] {
        let mut args = vec!["bench", "--root", root_s, "--iterations", "20"];
        args.extend_from_slice(extra);
        args.push(doc_s);
        let o = run(&bin, &args);
        assert!(o.status.success(), "{o:?}");
        let out = stdout(&o);
        let last = out.lines().last().unwrap();
        let rate: f64 = last.strip_prefix("docs_per_s ").unwrap().parse().unwrap();
        assert!(rate > 0.0);
        assert!(out.contains("ecdsa_p384_verify_per_s "));
    }
}

#[test]
fn genuine_fixtures() {
    let dir = nitro_test_support::fixtures_dir();
    if !dir.join("manifest.json").is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no fixtures"
        );
        eprintln!("SKIPPED: fixtures not found at {}", dir.display());
        return;
    }
    let Some(bin) = nitro_test_support::example("attest") else {
        return;
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    for e in manifest.as_array().unwrap() {
        let path = dir
            .join(e["file"].as_str().unwrap())
            .to_str()
            .unwrap()
            .to_owned();
        if e["expected"].as_str().unwrap().starts_with("VALID") {
            valid.push(path);
        } else {
            invalid.push(path);
        }
    }
    // Strict by default: the three dstack documents carry a trailer after the COSE_Sign1.
    let mut args = vec!["verify", "--at", "doc", "--allow-debug"];
    args.extend(valid.iter().map(String::as_str));
    let o = run(&bin, &args);
    assert_eq!(o.status.code(), Some(1));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 16);
    for l in &lines {
        let dstack = l["file"].as_str().unwrap().contains("dstack__");
        assert_eq!(l["valid"] == false, dstack, "{l}");
        if dstack {
            assert!(
                l["error"].as_str().unwrap().contains("trailing bytes"),
                "{l}"
            );
            assert!(l["trailing_bytes"].as_u64().unwrap() > 0, "{l}");
        }
    }
    // Opted in: all valid, all enclave documents.
    let mut args = vec![
        "verify",
        "--at",
        "doc",
        "--allow-debug",
        "--allow-trailing-bytes",
    ];
    args.extend(valid.iter().map(String::as_str));
    let o = run(&bin, &args);
    assert!(o.status.success(), "{}", stdout(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 16);
    assert!(
        lines.iter().all(|l| l["kind"] == "enclave"),
        "{}",
        stdout(&o)
    );
    // Asked for NitroTPM documents only: all refused.
    let mut args = vec![
        "verify",
        "--at",
        "doc",
        "--allow-debug",
        "--allow-trailing-bytes",
        "--kind",
        "nitrotpm",
    ];
    args.extend(valid.iter().map(String::as_str));
    let o = run(&bin, &args);
    assert_eq!(o.status.code(), Some(1));
    for l in json_lines(&o) {
        assert!(
            l["error"]
                .as_str()
                .unwrap()
                .contains("enclave attestation documents are not accepted"),
            "{l}"
        );
        assert_eq!(l["kind"], "enclave");
    }

    let mut args = vec!["verify", "--at", "doc", "--allow-debug"];
    args.extend(invalid.iter().map(String::as_str));
    let o = run(&bin, &args);
    assert_eq!(o.status.code(), Some(1));
    assert!(json_lines(&o).iter().all(|l| l["valid"] == false));

    // At the current time every document fails (expired leaf).
    let mut args = vec!["verify", "--allow-debug", "--allow-trailing-bytes"];
    args.extend(valid.iter().map(String::as_str));
    let o = run(&bin, &args);
    assert_eq!(o.status.code(), Some(1));
    for l in json_lines(&o) {
        assert!(
            l["error"]
                .as_str()
                .unwrap()
                .contains("certificate (leaf): expired"),
            "{l}"
        );
    }
}

#[test]
fn sim_runs_sharing_a_pki_file_verify_against_one_root() {
    let Some(bin) = nitro_test_support::example("attest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("sim-pki.pem");
    let pki_s = pki.to_str().unwrap();
    // Two processes: the first creates the PKI file, the second reuses it.
    let mut docs = Vec::new();
    let mut roots = Vec::new();
    for (name, seed) in [("a", "1"), ("b", "2")] {
        let doc = dir.path().join(format!("{name}.cbor"));
        let root = dir.path().join(format!("{name}-root.pem"));
        let o = run(
            &bin,
            &[
                "sim",
                "--pki",
                pki_s,
                "--seed",
                seed,
                "--out",
                doc.to_str().unwrap(),
                "--root-out",
                root.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{o:?}");
        assert_eq!(json_lines(&o)[0]["pki"], pki_s);
        docs.push(doc.to_str().unwrap().to_owned());
        roots.push(std::fs::read(&root).unwrap());
    }
    assert_eq!(roots[0], roots[1], "both runs wrote the same root");
    // The PKI file doubles as the root PEM: both documents verify in one run.
    let o = run(&bin, &["verify", "--root", pki_s, &docs[0], &docs[1]]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(json_lines(&o).iter().all(|l| l["valid"] == true));
    // Without the file, a seeded run has another root (randomised signatures): untrusted.
    let other = dir.path().join("c.cbor");
    let other_root = dir.path().join("c-root.pem");
    let o = run(
        &bin,
        &[
            "sim",
            "--seed",
            "1",
            "--out",
            other.to_str().unwrap(),
            "--root-out",
            other_root.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let o = run(&bin, &["verify", "--root", pki_s, other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        json_lines(&o)[0]["error"]
            .as_str()
            .unwrap()
            .contains("untrusted root"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn nitrotpm_documents_need_the_kind_option() {
    let Some(bin) = nitro_test_support::example("attest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (tpm, enc, root) = (d("tpm.cbor"), d("enc.cbor"), d("root.pem"));
    let pki = d("pki.pem");
    for (out, kind) in [(&tpm, "nitrotpm"), (&enc, "enclave")] {
        let o = run(
            &bin,
            &[
                "sim",
                "--pki",
                &pki,
                "--seed",
                "3",
                "--kind",
                kind,
                "--out",
                out,
                "--root-out",
                &root,
                "--nonce",
                "0a0b",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(json_lines(&o)[0]["kind"], kind);
    }
    let verify = |extra: &[&str], files: &[&str]| {
        let mut args = vec!["verify", "--root", &root, "--nonce", "0a0b"];
        args.extend_from_slice(extra);
        args.extend_from_slice(files);
        run(&bin, &args)
    };
    // Default: enclave only.
    let o = verify(&[], &[&enc, &tpm]);
    assert_eq!(o.status.code(), Some(1));
    let l = json_lines(&o);
    assert_eq!(
        (l[0]["valid"].clone(), l[0]["kind"].clone()),
        (true.into(), "enclave".into())
    );
    assert_eq!(l[1]["valid"], false);
    assert_eq!(l[1]["kind"], "nitrotpm");
    assert!(
        l[1]["error"]
            .as_str()
            .unwrap()
            .contains("nitrotpm attestation documents are not accepted"),
        "{}",
        l[1]
    );
    // --kind nitrotpm: the reverse.
    let o = verify(&["--kind", "nitrotpm"], &[&enc, &tpm]);
    let l = json_lines(&o);
    assert_eq!(l[0]["valid"], false);
    assert_eq!(l[1]["valid"], true);
    assert_eq!(l[1]["kind"], "nitrotpm");
    // --kind any: both.
    let o = verify(&["--kind", "any"], &[&enc, &tpm]);
    assert!(o.status.success(), "{}", stdout(&o));
    // inspect prints the kind and all 24 PCRs of the TPM.
    let o = run(&bin, &["inspect", &tpm]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["kind"], "nitrotpm");
    assert_eq!(v["pcrs"].as_object().unwrap().len(), 24);
    // A trailer is refused unless --allow-trailing-bytes.
    let mut bytes = std::fs::read(&tpm).unwrap();
    bytes.extend_from_slice(b"trailer");
    let trailed = d("trailed.cbor");
    std::fs::write(&trailed, &bytes).unwrap();
    let o = verify(&["--kind", "nitrotpm"], &[&trailed]);
    let l = &json_lines(&o)[0];
    assert_eq!(o.status.code(), Some(1));
    assert!(
        l["error"].as_str().unwrap().contains("7 trailing bytes"),
        "{l}"
    );
    let o = verify(
        &["--kind", "nitrotpm", "--allow-trailing-bytes"],
        &[&trailed],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(json_lines(&o)[0]["trailing_bytes"], 7);
}

#[test]
fn serve_answers_curl_with_documents_that_verify() {
    let Some(bin) = nitro_test_support::example("attest") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki.pem");
    let pki = pki.to_str().unwrap();
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pki",
            pki,
            "--seed",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = format!(
        "http://{}/v1/attestation",
        ready["listening"].as_str().unwrap()
    );
    let doc = dir.path().join("doc.cbor");
    let o = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "POST",
            "--data",
            r#"{"nonce":"AAEC"}"#,
            "-o",
        ])
        .arg(&doc)
        .arg(&url)
        .output()
        .unwrap();
    // Non-loopback listen addresses are refused.
    let refused = run(&bin, &["serve", "--listen", "0.0.0.0:0"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!refused.status.success());
    let o = run(
        &bin,
        &[
            "verify",
            "--root",
            pki,
            "--nonce",
            "000102",
            doc.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stdout(&o));
}
