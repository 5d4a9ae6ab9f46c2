//! Byte sizes written as `"512MiB"`, `"1GiB"`, `"4096"` or a TOML integer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A size in bytes.
///
/// ```
/// use nitro_manifest::Size;
///
/// assert_eq!("1GiB".parse::<Size>().unwrap().bytes(), 1 << 30);
/// assert_eq!("512 MiB".parse::<Size>().unwrap().bytes(), 512 << 20);
/// assert_eq!("4096".parse::<Size>().unwrap().bytes(), 4096);
/// assert!("1GB".parse::<Size>().is_err()); // decimal units are ambiguous: refused
/// assert!("99999999TiB".parse::<Size>().is_err()); // overflow
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    /// A size of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Size {
        Size(bytes)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSizeError(String);

impl fmt::Display for ParseSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a size (a number of bytes, or a number followed by KiB, MiB, GiB or TiB)",
            self.0
        )
    }
}

impl std::error::Error for ParseSizeError {}

impl FromStr for Size {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Size, ParseSizeError> {
        let bad = || ParseSizeError(s.chars().take(64).collect());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() || num.len() > 20 {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "KiB" => 10,
            "MiB" => 20,
            "GiB" => 30,
            "TiB" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(bad)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => u64::try_from(n)
                .map(Size)
                .map_err(|_| serde::de::Error::custom("a size cannot be negative")),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}
