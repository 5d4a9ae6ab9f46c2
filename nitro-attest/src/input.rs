//! Detecting how a document was stored: raw CBOR, hex or base64.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};

use crate::document::MAX_DOCUMENT_SIZE;
use crate::error::{Error, Result};

/// Returns the raw COSE_Sign1 bytes of a document stored as raw CBOR, hex text or base64 text
/// (standard or URL-safe alphabet, padded or not; whitespace and line breaks are ignored).
///
/// Raw CBOR is recognised by its first byte (`0x84` untagged array of four, `0x9f` indefinite
/// array, `0xd2` tag 18). Text longer than four times [`MAX_DOCUMENT_SIZE`] is rejected before
/// decoding.
///
/// ```
/// # fn main() -> Result<(), nitro_attest::Error> {
/// let raw = [0x84u8, 0x40, 0xa0, 0x40, 0x40];
/// assert_eq!(&*nitro_attest::decode_input(&raw)?, &raw);
/// assert_eq!(&*nitro_attest::decode_input(b"8440a04040\n")?, &raw);
/// assert_eq!(&*nitro_attest::decode_input(b"hECgQEA=")?, &raw);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::DocumentTooLarge`] for oversized input, [`Error::InputEncoding`] when the input is
/// neither raw CBOR nor valid hex or base64.
pub fn decode_input(input: &[u8]) -> Result<Cow<'_, [u8]>> {
    match input.first() {
        None => return Err(Error::InputEncoding("empty input".to_owned())),
        Some(0x84 | 0x9f | 0xd2) => return Ok(Cow::Borrowed(input)),
        Some(_) => {}
    }
    let limit = 4 * MAX_DOCUMENT_SIZE;
    if input.len() > limit {
        return Err(Error::DocumentTooLarge {
            size: input.len(),
            limit,
        });
    }
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let hex_body = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(&text);
    if !hex_body.is_empty()
        && hex_body.len().is_multiple_of(2)
        && hex_body.iter().all(u8::is_ascii_hexdigit)
    {
        return hex::decode(hex_body)
            .map(Cow::Owned)
            .map_err(|e| Error::InputEncoding(format!("hex: {e}")));
    }
    STANDARD_PAD_INDIFFERENT
        .decode(&text)
        .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(&text))
        .map(Cow::Owned)
        .map_err(|e| Error::InputEncoding(format!("neither raw CBOR, hex nor base64 ({e})")))
}
