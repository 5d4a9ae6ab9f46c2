//! Property: any truncation or single bit flip of a valid EIF is an error: never a panic, and
//! never a wrong PCR presented with a good CRC (or a good signature).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;
use std::sync::OnceLock;

use nitro_eif::{EifReader, Measurements};
use proptest::prelude::*;

struct Fixture {
    bytes: Vec<u8>,
    measurements: Measurements,
}

fn fixture(signed: bool) -> &'static Fixture {
    static UNSIGNED: OnceLock<Fixture> = OnceLock::new();
    static SIGNED: OnceLock<Fixture> = OnceLock::new();
    let cell = if signed { &SIGNED } else { &UNSIGNED };
    cell.get_or_init(|| {
        let bytes = common::small_eif(signed);
        let measurements = EifReader::new(Cursor::new(bytes.clone()))
            .unwrap()
            .verify()
            .unwrap();
        Fixture {
            bytes,
            measurements,
        }
    })
}

/// Reads a corrupted image the way a user would; must not panic. Returns whether it was
/// accepted by `verify`, and checks that `describe` never claims a good CRC with wrong PCRs.
fn accepted(bytes: Vec<u8>, original: &Measurements) -> bool {
    let Ok(mut r) = EifReader::new(Cursor::new(bytes)) else {
        return false;
    };
    if let Ok(d) = r.describe()
        && d.check_crc
        && d.signature_check != Some(false)
    {
        assert_eq!(&d.measurements, original, "good CRC with different PCRs");
    }
    r.verify().is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn truncations_are_errors(signed in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let f = fixture(signed);
        let len = cut.index(f.bytes.len());
        prop_assert!(!accepted(f.bytes[..len].to_vec(), &f.measurements));
    }

    #[test]
    fn bit_flips_are_errors(signed in any::<bool>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = fixture(signed);
        let mut b = f.bytes.clone();
        let i = at.index(b.len());
        b[i] ^= 1 << bit;
        prop_assert!(!accepted(b, &f.measurements));
    }
}

/// Exhaustive over the header and every section header (where the structural checks live).
#[test]
fn every_bit_of_the_header_and_section_headers() {
    for signed in [false, true] {
        let f = fixture(signed);
        let r = EifReader::new(Cursor::new(f.bytes.clone())).unwrap();
        let mut spots: Vec<usize> = (0..548).collect();
        for s in r.sections() {
            spots.extend(s.offset as usize..s.offset as usize + 12);
        }
        for i in spots {
            for bit in 0..8 {
                let mut b = f.bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    !accepted(b, &f.measurements),
                    "flip at {i} bit {bit} accepted"
                );
            }
        }
    }
}
