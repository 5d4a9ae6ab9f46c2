//! A small, strict, bounds-checked CBOR (RFC 8949) reader and writer for exactly what attestation
//! documents use: unsigned and negative integers, byte and text strings (definite and
//! indefinite length), arrays and maps (definite and indefinite length), tags, `null`,
//! booleans.
//!
//! The reader borrows from the input; it never allocates a length read from the input (lengths
//! are checked against the remaining bytes first), never recurses deeper than [`MAX_DEPTH`], and
//! reports errors with the byte offset.

use crate::error::Error;

/// Maximum nesting of arrays, maps and tags the reader accepts while skipping values.
pub(crate) const MAX_DEPTH: usize = 16;

/// CBOR major types.
pub(crate) const MAJOR_UINT: u8 = 0;
pub(crate) const MAJOR_NINT: u8 = 1;
pub(crate) const MAJOR_BYTES: u8 = 2;
pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
pub(crate) const MAJOR_TAG: u8 = 6;
pub(crate) const MAJOR_SIMPLE: u8 = 7;

const BREAK: u8 = 0xff;
const NULL: u8 = 0xf6;

/// The head of a data item: major type and argument (`None` = indefinite length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) major: u8,
    /// Additional information (low five bits).
    pub(crate) info: u8,
    /// The argument; `None` for indefinite length (info 31).
    pub(crate) arg: Option<u64>,
}

/// A byte or text string, borrowed when definite, concatenated when indefinite.
pub(crate) type Str<'a> = std::borrow::Cow<'a, [u8]>;

/// A cursor over CBOR input.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn err(&self, reason: &'static str) -> Error {
        Error::Cbor {
            offset: self.pos,
            reason,
        }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = self
            .data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(self.err("length exceeds the remaining input"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads the head of the next item.
    pub(crate) fn head(&mut self) -> Result<Head, Error> {
        let start = self.pos;
        let b = self.byte()?;
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24 => Some(u64::from(self.byte()?)),
            25 => Some(u64::from(u16::from_be_bytes(self.array::<2>()?))),
            26 => Some(u64::from(u32::from_be_bytes(self.array::<4>()?))),
            27 => Some(u64::from_be_bytes(self.array::<8>()?)),
            31 if matches!(
                major,
                MAJOR_BYTES | MAJOR_TEXT | MAJOR_ARRAY | MAJOR_MAP | MAJOR_SIMPLE
            ) =>
            {
                None
            }
            _ => {
                self.pos = start;
                return Err(self.err("reserved or invalid additional information"));
            }
        };
        if major == MAJOR_SIMPLE && info == 31 {
            // A break outside an indefinite-length item.
            self.pos = start;
            return Err(self.err("unexpected break"));
        }
        Ok(Head { major, info, arg })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Consumes a break byte if the next byte is one.
    pub(crate) fn take_break(&mut self) -> bool {
        if self.peek() == Some(BREAK) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `null` if it is next.
    pub(crate) fn take_null(&mut self) -> bool {
        if self.peek() == Some(NULL) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn len_of(&self, arg: u64) -> Result<usize, Error> {
        let n = usize::try_from(arg).map_err(|_| self.err("length too large"))?;
        if n > self.remaining() {
            return Err(self.err("length exceeds the remaining input"));
        }
        Ok(n)
    }

    /// Reads a byte string (major 2) or text string (major 3) of the given major type.
    /// Indefinite-length strings are concatenated from their definite chunks.
    pub(crate) fn string(&mut self, major: u8) -> Result<Str<'a>, Error> {
        let start = self.pos;
        let h = self.head()?;
        if h.major != major {
            self.pos = start;
            return Err(self.err(if major == MAJOR_BYTES {
                "expected a byte string"
            } else {
                "expected a text string"
            }));
        }
        self.string_body(h)
    }

    fn string_body(&mut self, h: Head) -> Result<Str<'a>, Error> {
        match h.arg {
            Some(n) => {
                let n = self.len_of(n)?;
                Ok(Str::Borrowed(self.take(n)?))
            }
            None => {
                // The total is bounded by the input size, so this cannot grow unboundedly.
                let mut out = Vec::new();
                loop {
                    if self.take_break() {
                        return Ok(Str::Owned(out));
                    }
                    let c = self.head()?;
                    if c.major != h.major || c.arg.is_none() {
                        return Err(self.err("invalid chunk in an indefinite-length string"));
                    }
                    let n = self.len_of(c.arg.unwrap_or(0))?;
                    out.extend_from_slice(self.take(n)?);
                }
            }
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<Str<'a>, Error> {
        self.string(MAJOR_BYTES)
    }

    pub(crate) fn text(&mut self) -> Result<String, Error> {
        let at = self.pos;
        let s = self.string(MAJOR_TEXT)?;
        String::from_utf8(s.into_owned()).map_err(|_| Error::Cbor {
            offset: at,
            reason: "text string is not UTF-8",
        })
    }

    /// Reads an unsigned integer.
    pub(crate) fn uint(&mut self) -> Result<u64, Error> {
        let start = self.pos;
        let h = self.head()?;
        match (h.major, h.arg) {
            (MAJOR_UINT, Some(v)) => Ok(v),
            _ => {
                self.pos = start;
                Err(self.err("expected an unsigned integer"))
            }
        }
    }

    /// Reads a signed integer (major 0 or 1) that fits an `i64`.
    pub(crate) fn int(&mut self) -> Result<i64, Error> {
        let start = self.pos;
        let h = self.head()?;
        let r = match (h.major, h.arg) {
            (MAJOR_UINT, Some(v)) => i64::try_from(v).ok(),
            (MAJOR_NINT, Some(v)) => i64::try_from(v).ok().map(|v| -1 - v),
            _ => None,
        };
        r.ok_or_else(|| {
            self.pos = start;
            self.err("expected an integer in i64 range")
        })
    }

    /// Reads the head of a map or array of the given major type; returns its length (`None` for
    /// indefinite). The length is checked against the remaining input (each entry takes at
    /// least one byte per element) so a hostile length cannot cause a large loop.
    pub(crate) fn container(&mut self, major: u8) -> Result<Option<usize>, Error> {
        let start = self.pos;
        let h = self.head()?;
        if h.major != major {
            self.pos = start;
            return Err(self.err(if major == MAJOR_MAP {
                "expected a map"
            } else {
                "expected an array"
            }));
        }
        self.container_len(h)
    }

    fn container_len(&self, h: Head) -> Result<Option<usize>, Error> {
        match h.arg {
            None => Ok(None),
            Some(n) => {
                let per = if h.major == MAJOR_MAP { 2 } else { 1 };
                let n = usize::try_from(n).map_err(|_| self.err("length too large"))?;
                if n.checked_mul(per).is_none_or(|m| m > self.remaining()) {
                    return Err(self.err("element count exceeds the remaining input"));
                }
                Ok(Some(n))
            }
        }
    }

    /// Skips one complete data item of any type.
    pub(crate) fn skip(&mut self) -> Result<(), Error> {
        self.skip_depth(0)
    }

    fn skip_depth(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        let h = self.head()?;
        match h.major {
            MAJOR_UINT | MAJOR_NINT => Ok(()),
            MAJOR_BYTES | MAJOR_TEXT => self.string_body(h).map(drop),
            MAJOR_ARRAY | MAJOR_MAP => {
                let per = if h.major == MAJOR_MAP { 2 } else { 1 };
                match self.container_len(h)? {
                    Some(n) => {
                        for _ in 0..n * per {
                            self.skip_depth(depth + 1)?;
                        }
                    }
                    None => {
                        while !self.take_break() {
                            for _ in 0..per {
                                self.skip_depth(depth + 1)?;
                            }
                        }
                    }
                }
                Ok(())
            }
            MAJOR_TAG => self.skip_depth(depth + 1),
            _ => {
                // Simple values and floats: the head already consumed the argument bytes.
                if h.major == MAJOR_SIMPLE && h.info == 24 && h.arg.is_some_and(|v| v < 32) {
                    return Err(self.err("invalid two-byte simple value"));
                }
                Ok(())
            }
        }
    }

    /// Iterates over the entries of a map or elements of an array whose head has been read:
    /// returns `true` if another element follows.
    pub(crate) fn has_next(&mut self, remaining: &mut Option<usize>) -> bool {
        match remaining {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => !self.take_break(),
        }
    }
}

/// Appends the head of an item with a definite argument, in the shortest form.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if let Ok(v) = u8::try_from(arg) {
        out.push(m | 24);
        out.push(v);
    } else if let Ok(v) = u16::try_from(arg) {
        out.push(m | 25);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = u32::try_from(arg) {
        out.push(m | 26);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Appends a definite-length byte string.
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a definite-length text string.
pub(crate) fn write_text(out: &mut Vec<u8>, s: &str) {
    write_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `null`.
pub(crate) fn write_null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// Appends a signed integer.
#[cfg(test)]
pub(crate) fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_head(out, MAJOR_UINT, v.unsigned_abs());
    } else {
        write_head(out, MAJOR_NINT, (-1 - v).unsigned_abs());
    }
}

/// Appends the head of an indefinite-length map.
#[cfg_attr(not(feature = "simulator"), allow(dead_code))]
pub(crate) fn write_indefinite_map(out: &mut Vec<u8>) {
    out.push((MAJOR_MAP << 5) | 31);
}

/// Appends a break.
#[cfg_attr(not(feature = "simulator"), allow(dead_code))]
pub(crate) fn write_break(out: &mut Vec<u8>) {
    out.push(BREAK);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_ints() {
        let mut out = Vec::new();
        for v in [
            0i64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            -1,
            -24,
            -25,
            -35,
            i64::MIN,
            i64::MAX,
        ] {
            out.clear();
            write_int(&mut out, v);
            assert_eq!(Reader::new(&out).int().unwrap(), v, "{v}");
        }
        // Non-shortest forms are accepted (the NSM's encoder is not canonical by contract).
        assert_eq!(Reader::new(&[0x19, 0x00, 0x05]).uint().unwrap(), 5);
        // -35 is 0x38 0x22.
        assert_eq!(Reader::new(&[0x38, 0x22]).int().unwrap(), -35);
        assert!(Reader::new(&[0x1c]).uint().is_err());
        assert!(Reader::new(&[0x1f]).uint().is_err());
        assert!(
            Reader::new(&[0x3b, 0xff, 0, 0, 0, 0, 0, 0, 0])
                .int()
                .is_err()
        );
    }

    #[test]
    fn strings_definite_and_indefinite() {
        assert_eq!(&*Reader::new(&[0x43, 1, 2, 3]).bytes().unwrap(), &[1, 2, 3]);
        let indef = [0x5f, 0x41, 1, 0x42, 2, 3, 0xff];
        assert_eq!(&*Reader::new(&indef).bytes().unwrap(), &[1, 2, 3]);
        // Chunk of the wrong type.
        assert!(Reader::new(&[0x5f, 0x61, b'a', 0xff]).bytes().is_err());
        // Nested indefinite chunk.
        assert!(Reader::new(&[0x5f, 0x5f, 0xff, 0xff]).bytes().is_err());
        // Length beyond input: no allocation, an error.
        assert!(
            Reader::new(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .bytes()
                .is_err()
        );
        assert_eq!(Reader::new(&[0x62, b'h', b'i']).text().unwrap(), "hi");
        assert!(Reader::new(&[0x62, 0xff, 0xfe]).text().is_err());
    }

    #[test]
    fn containers_and_skip() {
        // {1: [h'00', {}], "k": null}
        let data = [0xa2, 0x01, 0x82, 0x41, 0x00, 0xa0, 0x61, b'k', 0xf6];
        let mut r = Reader::new(&data);
        r.skip().unwrap();
        assert!(r.is_empty());
        // Indefinite map with an indefinite array inside.
        let data = [0xbf, 0x01, 0x9f, 0x01, 0x02, 0xff, 0xff];
        let mut r = Reader::new(&data);
        r.skip().unwrap();
        assert!(r.is_empty());
        // Hostile element counts fail fast.
        assert!(
            Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .skip()
                .is_err()
        );
        assert!(
            Reader::new(&[0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .skip()
                .is_err()
        );
        // Deep nesting is bounded.
        let deep = vec![0x81u8; 10_000];
        assert!(Reader::new(&deep).skip().is_err());
        let tags = vec![0xc1u8; 10_000];
        assert!(Reader::new(&tags).skip().is_err());
        // Stray break.
        assert!(Reader::new(&[0xff]).skip().is_err());
    }
}
