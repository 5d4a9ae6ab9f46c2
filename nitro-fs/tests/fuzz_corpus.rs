//! Replays the committed fuzz seeds (and any crash reproducers) for the `nbd_messages` fuzz
//! target, so that the corpus keeps passing without nightly or cargo-fuzz.

#[test]
fn nbd_messages_seeds_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/nbd_messages");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed directory") {
        let path = entry.expect("seed entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("seed");
            nitro_fs::internal::fuzzing::nbd_messages(&data);
            n += 1;
        }
    }
    assert!(n >= 5, "expected the committed seeds in {dir}");
}
