//! Time service: the parent tells the time, the enclave measures and bounds it.

use std::fmt;
use std::time::Duration;

/// A signed clock offset (reference minus local clock), in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClockOffset {
    nanos: i64,
}

impl ClockOffset {
    /// Zero offset.
    pub const ZERO: ClockOffset = ClockOffset { nanos: 0 };

    /// An offset of `nanos` nanoseconds (positive: the reference is ahead of the local clock).
    pub const fn from_nanos(nanos: i64) -> Self {
        ClockOffset { nanos }
    }

    /// The offset in nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// The offset in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// The offset's magnitude.
    pub fn abs(self) -> Duration {
        Duration::from_nanos(self.nanos.unsigned_abs())
    }

    /// Whether the reference is behind the local clock.
    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { '-' } else { '+' };
        let a = self.nanos.unsigned_abs();
        write!(f, "{sign}{}.{:09}s", a / 1_000_000_000, a % 1_000_000_000)
    }
}
