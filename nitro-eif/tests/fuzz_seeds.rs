//! Replays the committed fuzz seeds (`fuzz/seeds/eif_reader/`): each is a valid EIF that must
//! read, measure and verify, and must stay valid as the crate evolves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn committed_seeds_verify() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/eif_reader");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("eif") {
            continue;
        }
        let mut r = nitro_eif::EifReader::open(&p).unwrap();
        r.verify()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // The fuzz target's code path on the seed (it must not panic).
        nitro_eif::internal::fuzz_reader(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n >= 3, "expected the committed seeds in {}", dir.display());
}
