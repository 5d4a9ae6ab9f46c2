//! Synthetic addresses: the in-enclave DNS server answers a name the policy admits with an
//! address from a reserved range, and the transparent listener turns a connection to that
//! address back into the *name*, which goes to the parent in a name-based tunnel request.
//!
//! [`SyntheticMap`] is the pure, bounded name ↔ address table (no IO, no clock: recency is a
//! counter). [`SyntheticNames`] is the shared handle the DNS server and the transparent
//! listener hold.
//!
//! Each name gets one index `i`; its IPv4 address is `v4 network + 1 + i` and its IPv6 address
//! `v6 network + 1 + i`. Indices are handed out cyclically over the whole range, so an address
//! is reused for another name only after every other free index was used once; when the table
//! is full, the least recently used name is evicted.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::Error;

/// Settings of a [`SyntheticMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyntheticConfig {
    /// IPv4 range for `A` answers (default `198.18.0.0/15`, reserved for benchmarking and never
    /// routed on the Internet).
    pub v4: Ipv4Net,
    /// IPv6 range for `AAAA` answers (default the unique-local `fd6e:6974:726f::/64`).
    pub v6: Ipv6Net,
    /// Names remembered at most (default 65 536); beyond it the least recently used is
    /// forgotten and a connection to its address is refused.
    pub capacity: usize,
    /// TTL of synthetic answers, in seconds (default 60). Addresses stay valid as long as the
    /// name is remembered, so the TTL only bounds how long resolvers cache a denied change.
    pub ttl: u32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            v4: Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
            v6: Ipv6Net::new_assert(Ipv6Addr::new(0xfd6e, 0x6974, 0x726f, 0, 0, 0, 0, 0), 64),
            capacity: 65_536,
            ttl: 60,
        }
    }
}

impl SyntheticConfig {
    /// Number of usable indices: the smaller range's size less its network and last address
    /// (capped at `u32::MAX`).
    fn slots(&self) -> u64 {
        let bits = |host_bits: u8| -> u64 {
            if host_bits >= 32 {
                u64::from(u32::MAX)
            } else {
                (1u64 << host_bits).saturating_sub(2)
            }
        };
        let v4 = bits(32 - self.v4.prefix_len());
        let v6 = bits(128 - self.v6.prefix_len());
        v4.min(v6)
    }
}

/// What an address is, according to a [`SyntheticMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyntheticLookup {
    /// A synthetic address currently standing for this name.
    Name(String),
    /// In a synthetic range, but no name stands behind it (never handed out, or forgotten).
    Unknown,
    /// Not a synthetic address: a real destination (an IP literal the application used).
    NotSynthetic,
}

#[derive(Debug)]
struct Entry {
    index: u32,
    used: u64,
}

/// The bounded name ↔ synthetic address table (pure logic).
///
/// ```
/// use nitro_net::synthetic::{SyntheticConfig, SyntheticLookup, SyntheticMap};
///
/// let mut map = SyntheticMap::new(SyntheticConfig::default())?;
/// let (v4, v6) = map.assign("api.example.com");
/// assert_eq!(v4.to_string(), "198.18.0.1");
/// assert_eq!(map.lookup(v6.into()), SyntheticLookup::Name("api.example.com".into()));
/// assert_eq!(map.lookup("198.18.0.9".parse()?), SyntheticLookup::Unknown);
/// assert_eq!(map.lookup("127.0.0.1".parse()?), SyntheticLookup::NotSynthetic);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SyntheticMap {
    config: SyntheticConfig,
    slots: u32,
    by_name: HashMap<String, Entry>,
    by_index: HashMap<u32, String>,
    /// Recency → index, oldest first.
    lru: BTreeMap<u64, u32>,
    cursor: u32,
    tick: u64,
    evictions: u64,
}

impl SyntheticMap {
    /// An empty table. Fails when `capacity` is 0 or larger than the ranges hold.
    pub fn new(config: SyntheticConfig) -> Result<Self, Error> {
        let slots = config.slots();
        if config.capacity == 0 || config.capacity as u64 > slots {
            return Err(Error::InvalidArgument(format!(
                "synthetic capacity {} must be between 1 and {slots} (the usable size of {} and {})",
                config.capacity, config.v4, config.v6
            )));
        }
        Ok(SyntheticMap {
            slots: u32::try_from(slots).unwrap_or(u32::MAX),
            config,
            by_name: HashMap::new(),
            by_index: HashMap::new(),
            lru: BTreeMap::new(),
            cursor: 0,
            tick: 0,
            evictions: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// Names remembered now.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Names forgotten so far to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn addrs(&self, index: u32) -> (Ipv4Addr, Ipv6Addr) {
        let off = index.saturating_add(1);
        let v4 = Ipv4Addr::from(u32::from(self.config.v4.network()).wrapping_add(off));
        let v6 = Ipv6Addr::from(u128::from(self.config.v6.network()).wrapping_add(u128::from(off)));
        (v4, v6)
    }

    fn index_of(&self, ip: IpAddr) -> Option<u32> {
        let off = match ip {
            IpAddr::V4(a) if self.config.v4.contains(&a) => {
                u64::from(u32::from(a).wrapping_sub(u32::from(self.config.v4.network())))
            }
            IpAddr::V6(a) if self.config.v6.contains(&a) => {
                let d = u128::from(a).wrapping_sub(u128::from(self.config.v6.network()));
                u64::try_from(d).unwrap_or(u64::MAX)
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => return self.index_of(IpAddr::V4(v4)),
                None => return None,
            },
            IpAddr::V4(_) => return None,
        };
        // Offset 0 (the network) and offsets past the slots map to no index.
        Some(
            off.checked_sub(1)
                .filter(|i| *i < u64::from(self.slots))
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(u32::MAX),
        )
    }

    /// Whether `ip` lies in one of the synthetic ranges.
    pub fn is_synthetic(&self, ip: IpAddr) -> bool {
        self.index_of(ip).is_some()
    }

    /// The addresses standing for `name` (a normalised name), allocating them if needed, and
    /// marks the name as recently used.
    pub fn assign(&mut self, name: &str) -> (Ipv4Addr, Ipv6Addr) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.by_name.get_mut(name) {
            self.lru.remove(&e.used);
            e.used = tick;
            let index = e.index;
            self.lru.insert(tick, index);
            return self.addrs(index);
        }
        if self.by_name.len() >= self.config.capacity
            && let Some((_, old)) = self.lru.pop_first()
            && let Some(n) = self.by_index.remove(&old)
        {
            self.by_name.remove(&n);
            self.evictions += 1;
        }
        // A free index exists: fewer names than slots. Scan cyclically from the cursor.
        let mut index = self.cursor;
        while self.by_index.contains_key(&index) {
            index = (index + 1) % self.slots;
        }
        self.cursor = (index + 1) % self.slots;
        self.by_index.insert(index, name.to_owned());
        self.by_name
            .insert(name.to_owned(), Entry { index, used: tick });
        self.lru.insert(tick, index);
        self.addrs(index)
    }

    /// What `ip` stands for (does not change recency).
    pub fn lookup(&self, ip: IpAddr) -> SyntheticLookup {
        match self.index_of(ip) {
            None => SyntheticLookup::NotSynthetic,
            Some(i) => match self.by_index.get(&i) {
                Some(n) => SyntheticLookup::Name(n.clone()),
                None => SyntheticLookup::Unknown,
            },
        }
    }
}

/// A [`SyntheticMap`] shared by the DNS server and the transparent listener (cheap to clone).
#[derive(Debug, Clone)]
pub struct SyntheticNames {
    inner: Arc<Mutex<SyntheticMap>>,
    ttl: u32,
}

impl SyntheticNames {
    /// A shared, empty table.
    pub fn new(config: SyntheticConfig) -> Result<Self, Error> {
        let ttl = config.ttl;
        Ok(SyntheticNames {
            inner: Arc::new(Mutex::new(SyntheticMap::new(config)?)),
            ttl,
        })
    }

    /// TTL of the answers.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// [`SyntheticMap::assign`] on the shared table.
    pub fn assign(&self, name: &str) -> (Ipv4Addr, Ipv6Addr) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.assign(name)
    }

    /// [`SyntheticMap::lookup`] on the shared table.
    pub fn lookup(&self, ip: IpAddr) -> SyntheticLookup {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.lookup(ip)
    }

    /// Names remembered now and names forgotten so far.
    pub fn usage(&self) -> (usize, u64) {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (m.len(), m.evictions())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(capacity: usize, v4_prefix: u8) -> SyntheticMap {
        SyntheticMap::new(SyntheticConfig {
            v4: Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), v4_prefix),
            capacity,
            ..SyntheticConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn addresses_and_lookup() {
        let mut m = small(4, 29); // 6 slots
        let (a4, a6) = m.assign("a");
        assert_eq!(a4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(a6, "fd6e:6974:726f::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(m.assign("a"), (a4, a6));
        assert_eq!(m.lookup(a4.into()), SyntheticLookup::Name("a".into()));
        let mapped = IpAddr::V6(a4.to_ipv6_mapped());
        assert_eq!(m.lookup(mapped), SyntheticLookup::Name("a".into()));
        assert_eq!(
            m.lookup("198.18.0.0".parse().unwrap()),
            SyntheticLookup::Unknown
        );
        assert_eq!(
            m.lookup("198.18.0.7".parse().unwrap()),
            SyntheticLookup::Unknown
        );
        assert_eq!(
            m.lookup("198.18.0.8".parse().unwrap()),
            SyntheticLookup::NotSynthetic
        );
        assert_eq!(
            m.lookup("fd6e:6974:726f::ffff:ffff".parse().unwrap()),
            SyntheticLookup::Unknown
        );
    }

    #[test]
    fn bounded_with_lru_eviction_and_cyclic_reuse() {
        let mut m = small(3, 29); // 6 slots, 3 names
        let a = m.assign("a").0;
        let b = m.assign("b").0;
        m.assign("c");
        m.assign("a"); // a is now the most recent; b the oldest
        let d = m.assign("d").0;
        assert_eq!(m.len(), 3);
        assert_eq!(m.evictions(), 1);
        assert_eq!(m.lookup(b.into()), SyntheticLookup::Unknown);
        assert_eq!(m.lookup(a.into()), SyntheticLookup::Name("a".into()));
        // d got a fresh index, not b's.
        assert_ne!(d, b);
        for i in 0..100 {
            m.assign(&format!("n{i}"));
            assert!(m.len() <= 3);
        }
    }

    #[test]
    fn bad_capacity() {
        assert!(
            SyntheticMap::new(SyntheticConfig {
                capacity: 0,
                ..SyntheticConfig::default()
            })
            .is_err()
        );
        let c = SyntheticConfig {
            v4: Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 30),
            capacity: 3,
            ..SyntheticConfig::default()
        };
        assert!(SyntheticMap::new(c).is_err());
    }

    proptest::proptest! {
        /// Whatever the sequence of names, the table stays bounded and every remembered name
        /// maps to addresses that map back to it.
        #[test]
        fn consistent(names in proptest::collection::vec(0u8..20, 0..200)) {
            let mut m = small(5, 28);
            for n in names {
                let name = format!("h{n}");
                let (v4, v6) = m.assign(&name);
                proptest::prop_assert!(m.len() <= 5);
                proptest::prop_assert_eq!(m.lookup(v4.into()), SyntheticLookup::Name(name.clone()));
                proptest::prop_assert_eq!(m.lookup(v6.into()), SyntheticLookup::Name(name));
            }
        }
    }
}
