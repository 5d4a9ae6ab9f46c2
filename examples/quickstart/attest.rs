//! Quickstart step 1: a simulated NSM issues an attestation document bound to a fresh nonce; the
//! verifier checks it against the simulator's root (an explicit opt-in: the default trust anchor
//! is AWS's root) and the expected PCRs.

use std::time::Duration;

use anyhow::{Context as _, bail};
use nitro_attest::{Nsm, Policy, SimulatedNsm, Timestamp, TrustAnchors, Verifier};

use crate::Context;

pub(crate) async fn run(_ctx: &mut Context) -> anyhow::Result<()> {
    // The enclave side: a simulated NSM with its own P-384 PKI (root → regional → zonal →
    // instance → leaf), PCR0-15 locked at boot.
    let nsm = SimulatedNsm::new()?;
    let root_sha256 = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        nsm.root_certificate_der(),
    ));
    println!(
        "    simulated NSM {} (root certificate SHA-256 {}…)",
        nsm.module_id(),
        &root_sha256[..16]
    );
    // The application measures its configuration into user PCR16 and locks it.
    let pcr16 = nsm.extend_pcr(16, b"quickstart configuration v1")?;
    nsm.lock_pcr(16)?;
    println!(
        "    PCR16 = SHA384(0^48 || config) = {}…, locked",
        &hex::encode(&pcr16)[..16]
    );

    // The relying party sends a fresh nonce; the enclave asks its NSM for a document with it.
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce).context("random nonce")?;
    let document = nsm.attestation(None, Some(&nonce), None)?;
    println!(
        "    NSM issued a {}-byte COSE_Sign1 document (ES384) with nonce {}…",
        document.len(),
        &hex::encode(nonce)[..16]
    );

    // The relying party verifies: chain to the simulator root, signature, PCRs, nonce, age.
    let expected_pcr0 = nsm.describe_pcr(0)?.value;
    let policy = Policy::new()
        .expect_pcr(0, &expected_pcr0)
        .expect_pcr(16, &pcr16)
        .expect_nonce(nonce)
        .max_age(Duration::from_secs(60));
    let verifier = Verifier::new(TrustAnchors::non_aws_root_der(nsm.root_certificate_der())?);
    let verified = verifier.verify(&document, Timestamp::now(), &policy)?;
    println!(
        "    verified at {}: chain of {} certificates to the simulator root, PCR0 {}… and PCR16 match, nonce matches",
        verified.checked_at(),
        verified.cabundle.len() + 1,
        &hex::encode(&expected_pcr0)[..16]
    );

    // The same document is rejected by the default (AWS) trust anchor and for a stale nonce.
    match Verifier::aws().verify(&document, Timestamp::now(), &policy) {
        Err(e) => println!(
            "    with the AWS root instead: rejected ({})",
            short(&e.to_string())
        ),
        Ok(_) => bail!("the AWS root accepted a simulated document"),
    }
    match verifier.verify(
        &document,
        Timestamp::now(),
        &policy.clone().expect_nonce(b"an old nonce"),
    ) {
        Err(e) => println!(
            "    with another nonce: rejected ({})",
            short(&e.to_string())
        ),
        Ok(_) => bail!("a wrong nonce was accepted"),
    }
    Ok(())
}

fn short(s: &str) -> String {
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s.to_owned()
    }
}
