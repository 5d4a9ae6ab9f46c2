//! A small, bounded BER reader and writer: just what CMS `EnvelopedData` needs.
//!
//! Why purpose-built: AWS KMS encodes `CiphertextForRecipient` in BER with indefinite lengths and
//! (sometimes) chunked constructed strings, which DER-only parsers reject, and the one BER-capable
//! RustCrypto release is a pre-release. The subset here is small and every path is bounded:
//!
//! - tags: low-tag-number form only (tag numbers 0..=30; CMS needs nothing else);
//! - lengths: short form, long form of at most 4 length octets (non-minimal encodings are
//!   accepted, as BER allows), and the indefinite form for constructed encodings only;
//! - nesting depth limited to [`MAX_DEPTH`]; every length is checked against the bytes remaining
//!   before anything is sliced, so nothing is ever allocated from a length read from the input.
//!
//! The reader never panics: all indexing goes through `get`, all arithmetic is checked.

use crate::error::CmsError;

/// Deepest nesting the reader follows (CMS `EnvelopedData` needs 11 levels).
pub(crate) const MAX_DEPTH: usize = 24;

/// Tag class bits.
pub(crate) const CLASS_UNIVERSAL: u8 = 0x00;
pub(crate) const CLASS_CONTEXT: u8 = 0x80;

/// Universal tag numbers used by CMS.
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x10;
pub(crate) const TAG_SET: u8 = 0x11;

/// An identifier octet, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Class bits (`0x00` universal, `0x40` application, `0x80` context, `0xC0` private).
    pub(crate) class: u8,
    /// Constructed (`true`) or primitive encoding.
    pub(crate) constructed: bool,
    /// Tag number (0..=30).
    pub(crate) number: u8,
}

impl Tag {
    pub(crate) const fn universal(number: u8, constructed: bool) -> Self {
        Self {
            class: CLASS_UNIVERSAL,
            constructed,
            number,
        }
    }

    pub(crate) const fn context(number: u8, constructed: bool) -> Self {
        Self {
            class: CLASS_CONTEXT,
            constructed,
            number,
        }
    }

    /// The identifier octet.
    pub(crate) const fn byte(self) -> u8 {
        self.class | if self.constructed { 0x20 } else { 0 } | self.number
    }

    fn from_byte(b: u8) -> Self {
        Self {
            class: b & 0xC0,
            constructed: b & 0x20 != 0,
            number: b & 0x1F,
        }
    }
}

/// One element: its tag and its content octets (for indefinite lengths, without the
/// end-of-contents marker).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Element<'a> {
    pub(crate) tag: Tag,
    pub(crate) content: &'a [u8],
    depth: usize,
}

impl<'a> Element<'a> {
    /// A reader over the children of a constructed element.
    pub(crate) fn children(&self) -> Result<Reader<'a>, CmsError> {
        if !self.tag.constructed {
            return Err(CmsError::Malformed("expected a constructed encoding"));
        }
        Ok(Reader {
            input: self.content,
            pos: 0,
            depth: self.depth + 1,
        })
    }

    /// The bytes of an OCTET STRING (or an implicitly tagged one), primitive or constructed
    /// (chunks concatenated, nested chunks allowed). The result is never longer than the input.
    pub(crate) fn octets(&self) -> Result<Vec<u8>, CmsError> {
        if !self.tag.constructed {
            return Ok(self.content.to_vec());
        }
        let mut out = Vec::with_capacity(self.content.len());
        self.append_octets(&mut out)?;
        Ok(out)
    }

    fn append_octets(&self, out: &mut Vec<u8>) -> Result<(), CmsError> {
        if !self.tag.constructed {
            out.extend_from_slice(self.content);
            return Ok(());
        }
        let mut children = self.children()?;
        while let Some(chunk) = children.next()? {
            // Chunks of a constructed string are OCTET STRINGs (universal 4), whatever the outer tag.
            if chunk.tag.class != CLASS_UNIVERSAL || chunk.tag.number != TAG_OCTET_STRING {
                return Err(CmsError::UnexpectedTag {
                    field: "octet string chunk",
                    found: chunk.tag.byte(),
                });
            }
            chunk.append_octets(out)?;
        }
        Ok(())
    }

    /// A small non-negative INTEGER (at most 4 content octets).
    pub(crate) fn small_uint(&self) -> Result<u32, CmsError> {
        if self.tag.constructed || self.content.is_empty() || self.content.len() > 5 {
            return Err(CmsError::Malformed("bad INTEGER"));
        }
        let first = self.content.first().copied().unwrap_or(0);
        if first & 0x80 != 0 {
            return Err(CmsError::Malformed("negative INTEGER"));
        }
        let mut v: u64 = 0;
        for b in self.content {
            v = (v << 8) | u64::from(*b);
        }
        u32::try_from(v).map_err(|_| CmsError::Malformed("INTEGER too large"))
    }
}

/// A cursor over a sequence of BER elements.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a whole input.
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            depth: 0,
        }
    }

    /// Whether all input has been consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.input.len()
    }

    /// The next element, or `None` at the end of the input.
    pub(crate) fn next(&mut self) -> Result<Option<Element<'a>>, CmsError> {
        if self.is_empty() {
            return Ok(None);
        }
        let (element, consumed) = parse_element(rest(self.input, self.pos), self.depth)?;
        self.pos = self
            .pos
            .checked_add(consumed)
            .ok_or(CmsError::Malformed("length overflow"))?;
        Ok(Some(element))
    }

    /// The next element, which must exist and carry `tag`.
    pub(crate) fn expect(
        &mut self,
        tag: Tag,
        field: &'static str,
    ) -> Result<Element<'a>, CmsError> {
        let element = self.next()?.ok_or(CmsError::Missing(field))?;
        if element.tag != tag {
            return Err(CmsError::UnexpectedTag {
                field,
                found: element.tag.byte(),
            });
        }
        Ok(element)
    }

    /// The next element with `tag` in either encoding (primitive or constructed), as BER allows
    /// for strings.
    pub(crate) fn expect_string(
        &mut self,
        class: u8,
        number: u8,
        field: &'static str,
    ) -> Result<Element<'a>, CmsError> {
        let element = self.next()?.ok_or(CmsError::Missing(field))?;
        if element.tag.class != class || element.tag.number != number {
            return Err(CmsError::UnexpectedTag {
                field,
                found: element.tag.byte(),
            });
        }
        Ok(element)
    }

    /// The tag of the next element, without consuming it.
    pub(crate) fn peek_tag(&self) -> Option<Tag> {
        self.input.get(self.pos).map(|b| Tag::from_byte(*b))
    }

    /// Fails unless everything was consumed.
    pub(crate) fn finish(&self, field: &'static str) -> Result<(), CmsError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(CmsError::TrailingData(field))
        }
    }
}

fn rest(input: &[u8], pos: usize) -> &[u8] {
    input.get(pos..).unwrap_or(&[])
}

/// Parses one element at the start of `input`; returns it and the number of bytes it occupies
/// (including an indefinite length's end-of-contents marker).
fn parse_element(input: &[u8], depth: usize) -> Result<(Element<'_>, usize), CmsError> {
    if depth > MAX_DEPTH {
        return Err(CmsError::TooDeep);
    }
    let (&id, after_id) = input.split_first().ok_or(CmsError::Truncated)?;
    if id & 0x1F == 0x1F {
        return Err(CmsError::Malformed("high tag numbers are not supported"));
    }
    let tag = Tag::from_byte(id);
    if id == 0 {
        return Err(CmsError::Malformed("unexpected end-of-contents marker"));
    }
    let (&first, mut after_len) = after_id.split_first().ok_or(CmsError::Truncated)?;
    let header_len;
    let length = if first < 0x80 {
        header_len = 2;
        Some(usize::from(first))
    } else if first == 0x80 {
        if !tag.constructed {
            return Err(CmsError::Malformed(
                "indefinite length on a primitive encoding",
            ));
        }
        header_len = 2;
        None
    } else if first == 0xFF {
        return Err(CmsError::Malformed("reserved length octet 0xFF"));
    } else {
        let n = usize::from(first & 0x7F);
        if n > 4 {
            return Err(CmsError::TooLarge);
        }
        let bytes = after_len.get(..n).ok_or(CmsError::Truncated)?;
        let mut len: usize = 0;
        for b in bytes {
            len = (len << 8) | usize::from(*b);
        }
        after_len = after_len.get(n..).ok_or(CmsError::Truncated)?;
        header_len = 2 + n;
        Some(len)
    };
    match length {
        Some(len) => {
            let content = after_len.get(..len).ok_or(CmsError::Truncated)?;
            Ok((
                Element {
                    tag,
                    content,
                    depth,
                },
                header_len + len,
            ))
        }
        None => {
            // Walk the children until the end-of-contents marker.
            let mut pos = 0usize;
            loop {
                let remaining = rest(after_len, pos);
                match remaining {
                    [0, 0, ..] => break,
                    [0] | [] => return Err(CmsError::Truncated),
                    [0, _, ..] => {
                        return Err(CmsError::Malformed(
                            "end-of-contents with a non-zero length",
                        ));
                    }
                    _ => {}
                }
                let (_, used) = parse_element(remaining, depth + 1)?;
                pos = pos.checked_add(used).ok_or(CmsError::TooLarge)?;
            }
            let content = after_len.get(..pos).ok_or(CmsError::Truncated)?;
            Ok((
                Element {
                    tag,
                    content,
                    depth,
                },
                header_len + pos + 2,
            ))
        }
    }
}

/// A BER/DER writer for the envelope the local KMS produces.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    /// Writes a definite-length element.
    pub(crate) fn definite(&mut self, tag: Tag, content: &[u8]) {
        self.out.push(tag.byte());
        push_length(&mut self.out, content.len());
        self.out.extend_from_slice(content);
    }

    /// Opens an indefinite-length constructed element; close it with [`Writer::end`].
    pub(crate) fn open_indefinite(&mut self, tag: Tag) {
        self.out.push(tag.byte() | 0x20);
        self.out.push(0x80);
    }

    /// Writes an end-of-contents marker.
    pub(crate) fn end(&mut self) {
        self.out.extend_from_slice(&[0, 0]);
    }

    /// Appends already-encoded bytes.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}

/// Encodes one definite-length element into a fresh vector.
pub(crate) fn tlv(tag: Tag, content: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.definite(tag, content);
    w.out
}

/// DER length octets.
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = bytes.get(skip..).unwrap_or(&[]);
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_indefinite() {
        // SEQUENCE (indefinite) { INTEGER 2, OCTET STRING constructed { "ab", "c" } }
        let input = [
            0x30, 0x80, 0x02, 0x01, 0x02, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c',
            0x00, 0x00, 0x00, 0x00,
        ];
        let mut r = Reader::new(&input);
        let seq = r.expect(Tag::universal(TAG_SEQUENCE, true), "seq").unwrap();
        r.finish("top").unwrap();
        let mut c = seq.children().unwrap();
        assert_eq!(
            c.expect(Tag::universal(TAG_INTEGER, false), "v")
                .unwrap()
                .small_uint()
                .unwrap(),
            2
        );
        let s = c
            .expect_string(CLASS_UNIVERSAL, TAG_OCTET_STRING, "s")
            .unwrap();
        assert_eq!(s.octets().unwrap(), b"abc");
        c.finish("seq").unwrap();
    }

    #[test]
    fn long_form_and_non_minimal_lengths() {
        let mut input = vec![0x04, 0x82, 0x01, 0x00];
        input.extend(std::iter::repeat_n(7u8, 256));
        let e = Reader::new(&input).next().unwrap().unwrap();
        assert_eq!(e.content.len(), 256);
        // Non-minimal long form is valid BER.
        let input = [0x04, 0x81, 0x01, 0xAA];
        let e = Reader::new(&input).next().unwrap().unwrap();
        assert_eq!(e.content, &[0xAA]);
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let cases: &[&[u8]] = &[
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x80, 0x00],
            &[0x30, 0x80, 0x00, 0x01],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x04, 0x85, 1, 2, 3, 4, 5],
            &[0x04, 0x84, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0x04, 0xFF],
            &[0x1F, 0x01, 0x00],
            &[0x00, 0x00],
            &[0x04, 0x05, 1, 2],
        ];
        for case in cases {
            assert!(Reader::new(case).next().is_err(), "{case:02x?}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(&[0x30, 0x80]);
        }
        for _ in 0..100 {
            input.extend_from_slice(&[0, 0]);
        }
        assert!(matches!(Reader::new(&input).next(), Err(CmsError::TooDeep)));
    }

    #[test]
    fn writer_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536] {
            let content = vec![0u8; len];
            let enc = tlv(Tag::universal(TAG_OCTET_STRING, false), &content);
            let e = Reader::new(&enc).next().unwrap().unwrap();
            assert_eq!(e.content.len(), len);
        }
    }
}
