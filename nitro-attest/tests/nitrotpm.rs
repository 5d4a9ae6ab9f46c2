//! Simulated NitroTPM attestation documents: they verify when NitroTPM documents are asked
//! for, are refused by the default policy, and behave like a TPM (24 PCRs, all extendable, none
//! lockable).

#![cfg(feature = "simulator")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use nitro_attest::{
    DocumentKind, Error, Nsm, NsmErrorCode, Policy, SimulatedNsm, Timestamp, UnverifiedDocument,
    Verifier,
};

fn tpm() -> SimulatedNsm {
    SimulatedNsm::builder()
        .seed(11)
        .nitrotpm()
        .fixed_time(Timestamp::from_unix_millis(1_760_000_000_000))
        .build()
        .unwrap()
}

#[test]
fn simulated_nitrotpm_documents_verify_when_asked_for() {
    let nsm = tpm();
    let now = Timestamp::from_unix_millis(1_760_000_001_000);
    assert_eq!(nsm.kind(), DocumentKind::NitroTpm);
    assert!(nsm.module_id().contains("-tpm"), "{}", nsm.module_id());
    let doc = nsm
        .attestation(Some(b"ud"), Some(b"nonce-7"), Some(b"pk"))
        .unwrap();
    // Same envelope as enclave documents, `nitrotpm_pcrs` instead of `pcrs`.
    let parsed = UnverifiedDocument::parse(&doc).unwrap();
    assert_eq!(parsed.kind(), DocumentKind::NitroTpm);
    assert_eq!(parsed.algorithm(), Some(-35));
    assert!(doc.windows(13).any(|w| w == b"nitrotpm_pcrs"));
    assert!(!doc.windows(5).any(|w| w == b"\x64pcrs"));
    let verifier = Verifier::new(nsm.trust_anchors().unwrap());
    let pcr7 = nsm.describe_pcr(7).unwrap().value;
    let policy = Policy::new()
        .accept_kinds([DocumentKind::NitroTpm])
        .expect_nonce(b"nonce-7")
        .expect_pcr(7, &pcr7);
    let v = verifier.verify(&doc, now, &policy).unwrap();
    assert_eq!(v.kind(), DocumentKind::NitroTpm);
    assert_eq!(v.pcrs.len(), 24);
    assert_eq!(v.user_data.as_deref(), Some(&b"ud"[..]));
    // Both kinds accepted: fine too.
    verifier
        .verify(
            &doc,
            now,
            &Policy::new().accept_kinds([DocumentKind::Enclave, DocumentKind::NitroTpm]),
        )
        .unwrap();
    // The default policy refuses it, after checking the signature and chain.
    let e = verifier.verify(&doc, now, &Policy::new()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::KindNotAccepted {
                kind: DocumentKind::NitroTpm
            }
        ),
        "{e}"
    );
    // The AWS root does not trust the simulator.
    let e = Verifier::aws().verify(&doc, now, &policy).unwrap_err();
    assert!(matches!(e, Error::UntrustedRoot { .. }), "{e}");
}

#[test]
fn simulated_nitrotpm_behaves_like_a_tpm() {
    let nsm = tpm();
    let d = nsm.describe_nsm().unwrap();
    assert_eq!(d.max_pcrs, 24);
    assert!(d.locked_pcrs.is_empty());
    // PCR0/1 (firmware) are set; extending an OS PCR shows in the next document.
    assert!(nsm.describe_pcr(0).unwrap().value.iter().any(|&b| b != 0));
    let v = nsm.extend_pcr(10, b"ima").unwrap();
    assert!(matches!(
        nsm.lock_pcr(10),
        Err(Error::Nsm(NsmErrorCode::InvalidOperation))
    ));
    assert!(matches!(
        nsm.lock_pcrs(16),
        Err(Error::Nsm(NsmErrorCode::InvalidOperation))
    ));
    assert!(matches!(
        nsm.describe_pcr(24),
        Err(Error::Nsm(NsmErrorCode::InvalidIndex))
    ));
    let doc = nsm.attestation(None, None, None).unwrap();
    let p = UnverifiedDocument::parse(&doc).unwrap().into_payload();
    assert_eq!(p.pcr(10), Some(&v[..]));
    assert!(!p.is_debug_mode());
    // Settings that make no sense for a TPM are refused.
    assert!(matches!(
        SimulatedNsm::builder().nitrotpm().debug_mode().build(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        SimulatedNsm::builder()
            .nitrotpm()
            .pcr(24, [0u8; 48])
            .build(),
        Err(Error::InvalidArgument(_))
    ));
}
