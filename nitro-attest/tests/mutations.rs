//! Property: mutated genuine documents (bit flips, truncations, insertions, field swaps) are
//! never accepted and never make the parser or verifier panic; and the certificate cache never
//! changes a verdict.
//!
//! The genuine documents are the AWS-signed fixtures (when `NITRO_FIXTURES` is available) and
//! simulated documents (always), each verified at its own timestamp.

#![cfg(feature = "simulator")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::{Arc, OnceLock};

use nitro_attest::{
    CertCache, CheckTime, Nsm, Policy, SimulatedNsm, Timestamp, TrustAnchors, UnverifiedDocument,
    Verifier,
};
use proptest::prelude::*;

struct Corpus {
    docs: Vec<Vec<u8>>,
    plain: Verifier,
    cached: Verifier,
}

fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| {
        let mut docs = Vec::new();
        let t = Timestamp::from_unix_millis(1_750_000_000_000);
        let definite = SimulatedNsm::builder()
            .seed(11)
            .fixed_time(t)
            .build()
            .unwrap();
        let indefinite = SimulatedNsm::builder()
            .seed(12)
            .fixed_time(t)
            .indefinite_length_payload(true)
            .build()
            .unwrap();
        docs.push(
            definite
                .attestation(Some(b"user"), Some(&[1; 32]), Some(b""))
                .unwrap(),
        );
        docs.push(indefinite.attestation(None, Some(&[2; 20]), None).unwrap());
        let anchors = TrustAnchors::aws()
            .with_non_aws_root_der(definite.root_certificate_der())
            .unwrap()
            .with_non_aws_root_der(indefinite.root_certificate_der())
            .unwrap();
        if let Some(fixtures) = common::attestation_fixtures() {
            docs.extend(
                fixtures
                    .into_iter()
                    .filter(|f| f.valid)
                    .map(|f| f.cose().to_vec()),
            );
        }
        let plain = Verifier::new(anchors.clone());
        let cached = Verifier::new(anchors).with_cache(Arc::new(CertCache::new(256)));
        for d in &docs {
            plain.verify(d, t, &policy()).unwrap();
            cached.verify(d, t, &policy()).unwrap();
        }
        Corpus {
            docs,
            plain,
            cached,
        }
    })
}

fn policy() -> Policy {
    Policy::new()
        .check_time(CheckTime::DocumentTimestamp)
        .allow_debug(true)
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip bits at (position, bit) pairs.
    Flip(Vec<(usize, u8)>),
    /// Keep only a prefix.
    Truncate(usize),
    /// Insert a byte.
    Insert(usize, u8),
    /// Remove a byte.
    Remove(usize),
    /// Swap two equal-length, non-overlapping byte ranges.
    SwapRanges(usize, usize, usize),
    /// Swap two payload keys of the same length (`module_id`, `timestamp`, `user_data`).
    SwapKeys(usize, usize),
    /// Swap the values of two PCRs.
    SwapPcrs(u16, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => prop::collection::vec((any::<usize>(), 0u8..8), 1..4).prop_map(Mutation::Flip),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        2 => (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(a, b, n)| Mutation::SwapRanges(a, b, n)),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::SwapKeys(a, b)),
        1 => (0u16..16, 0u16..16).prop_map(|(a, b)| Mutation::SwapPcrs(a, b)),
    ]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn apply(doc: &[u8], m: &Mutation) -> Vec<u8> {
    let mut d = doc.to_vec();
    let len = d.len();
    match *m {
        Mutation::Flip(ref flips) => {
            for &(p, bit) in flips {
                d[p % len] ^= 1 << bit;
            }
        }
        Mutation::Truncate(n) => d.truncate(n % len),
        Mutation::Insert(p, b) => d.insert(p % (len + 1), b),
        Mutation::Remove(p) => {
            d.remove(p % len);
        }
        Mutation::SwapRanges(a, b, n) => {
            let a = a % (len - n);
            let b = b % (len - n);
            if a + n <= b || b + n <= a {
                for i in 0..n {
                    d.swap(a + i, b + i);
                }
            }
        }
        Mutation::SwapKeys(a, b) => {
            let keys: [&[u8]; 3] = [b"\x69module_id", b"\x69timestamp", b"\x69user_data"];
            if let (Some(pa), Some(pb)) = (find(doc, keys[a]), find(doc, keys[b])) {
                d[pa..pa + 10].copy_from_slice(keys[b]);
                d[pb..pb + 10].copy_from_slice(keys[a]);
            }
        }
        Mutation::SwapPcrs(a, b) => {
            if let Ok(p) = UnverifiedDocument::parse(doc) {
                let (va, vb) = (p.payload().pcr(a), p.payload().pcr(b));
                if let (Some(va), Some(vb)) = (va, vb) {
                    // PCR values are 48-byte bstrs (`58 30 …`); find each occurrence.
                    let mut na = vec![0x58, 0x30];
                    na.extend_from_slice(va);
                    let mut nb = vec![0x58, 0x30];
                    nb.extend_from_slice(vb);
                    if let (Some(pa), Some(pb)) = (find(doc, &na), find(doc, &nb)) {
                        d[pa..pa + 50].copy_from_slice(&nb);
                        d[pb..pb + 50].copy_from_slice(&na);
                    }
                }
            }
        }
    }
    d
}

/// A mutation that is a known-equivalent encoding rather than a change: tag 18 in front.
fn equivalent(original: &[u8], mutated: &[u8]) -> bool {
    mutated.len() == original.len() + 1 && mutated[0] == 0xd2 && &mutated[1..] == original
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_documents_are_never_accepted(idx in any::<usize>(), m in mutation()) {
        let c = corpus();
        let doc = &c.docs[idx % c.docs.len()];
        let mutated = apply(doc, &m);
        prop_assume!(&mutated != doc && !equivalent(doc, &mutated));
        let now = Timestamp::from_unix_millis(1_750_000_000_000);
        let plain = c.plain.verify(&mutated, now, &policy());
        prop_assert!(plain.is_err(), "accepted after {:?}", m);
        let cached = c.cached.verify(&mutated, now, &policy());
        prop_assert_eq!(
            plain.err().map(|e| e.to_string()),
            cached.err().map(|e| e.to_string()),
            "the cache changed the verdict after {:?}", m
        );
        // The unsigned path may accept a mutated payload (it checks no signature) but must not
        // panic either.
        let _ = nitro_attest::dangerous::check_policy_without_signature(&mutated, now, &policy());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = nitro_attest::internal::fuzz_document(&data);
        let _ = nitro_attest::decode_input(&data);
    }
}

#[test]
fn every_mutation_kind_is_exercised_on_every_document() {
    // A deterministic sweep complementing the random cases: each single-bit flip at a stride
    // through each document, and every truncation length at a stride.
    let c = corpus();
    let now = Timestamp::from_unix_millis(1_750_000_000_000);
    for doc in &c.docs {
        for p in (0..doc.len()).step_by(97) {
            let m = apply(doc, &Mutation::Flip(vec![(p, (p % 8) as u8)]));
            assert!(c.plain.verify(&m, now, &policy()).is_err(), "flip at {p}");
        }
        for n in (0..doc.len()).step_by(211) {
            assert!(
                c.plain.verify(&doc[..n], now, &policy()).is_err(),
                "truncate {n}"
            );
        }
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let m = apply(doc, &Mutation::SwapKeys(a, b));
            assert_ne!(&m, doc);
            assert!(
                c.plain.verify(&m, now, &policy()).is_err(),
                "swap keys {a} {b}"
            );
        }
    }
}

/// The committed fuzz seeds (`fuzz/seeds/attest_document/`) replay through the fuzz entry point
/// without panics, and each parses as what its name says.
#[test]
fn committed_fuzz_seeds_replay() {
    use nitro_attest::{DocumentKind, Error, UnverifiedDocument};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/attest_document");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".cbor") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let _ = nitro_attest::internal::fuzz_document(&data);
        let parsed = UnverifiedDocument::parse(&data);
        if name.contains("trailer") {
            assert!(matches!(parsed, Err(Error::TrailingBytes { .. })), "{name}");
            let (doc, len) = UnverifiedDocument::parse_prefix(&data).unwrap();
            assert!(
                len < data.len() && doc.kind() == DocumentKind::Enclave,
                "{name}"
            );
        } else {
            let kind = parsed.unwrap_or_else(|e| panic!("{name}: {e}")).kind();
            let expected = if name.contains("nitrotpm") {
                DocumentKind::NitroTpm
            } else {
                DocumentKind::Enclave
            };
            assert_eq!(kind, expected, "{name}");
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} seeds in {dir}");
}
