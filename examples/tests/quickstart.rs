//! The README's first command, `cargo run --release --example quickstart`: runs the example
//! binary as a user would (no root, no AWS, nothing but the binary) and checks that every step
//! ran and reported what it demonstrates.

use std::process::Command;

#[test]
fn quickstart_runs_every_step() -> anyhow::Result<()> {
    let exe = nitro_emulator::build_example("quickstart")?;
    let out = Command::new(&exe)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for (n, what) in [
        (1, "attestation"),
        (2, "EIF"),
        (3, "networking"),
        (4, "KMS"),
        (5, "storage"),
        (6, "transparent egress"),
    ] {
        assert!(
            stdout.contains(&format!("\n[{n}] {what}")),
            "step {n} missing:\n{stdout}"
        );
    }
    for expected in [
        "nonce matches",
        "rebuilt: byte-identical",
        "refused (denied by policy)",
        "parent clock offset",
        "(the EIF of step 2)",
        "unsealed the operator's secret",
        "boto3 through the KMS proxy",
        "refused: KMS error AccessDeniedException",
        "read back \"order #1042",
        "integrity check failed",
        "rollback detected",
        "all steps done",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // CI installs boto3 (scripts/install.sh): there the proxy step must run, not skip.
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(
            stdout.contains("Decrypt returned the 32-byte data key"),
            "{stdout}"
        );
    }
    // Step 6 runs as root (in a network namespace), and says why it is skipped otherwise.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    });
    let step6 = if root {
        "-> hello, unmodified application"
    } else {
        "skipped: needs root"
    };
    assert!(stdout.contains(step6), "{step6:?} missing:\n{stdout}");
    // The KMS key admits exactly the PCR0 the EIF step printed.
    let pcr0 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("PCR0 "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the EIF step prints PCR0");
    assert!(
        stdout.contains(&format!("admits PCR0 {}..", &pcr0[..12])),
        "{stdout}"
    );
    Ok(())
}
