//! Connection and byte counters exposed to the application.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes moved through one connection (or a total), by direction.
#[derive(Debug, Default)]
pub(crate) struct ByteCounters {
    /// Towards the destination / the server side ("upstream").
    pub(crate) up: AtomicU64,
    /// Back towards the client ("downstream").
    pub(crate) down: AtomicU64,
}

/// Totals of a server or client.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes: ByteCounters,
    total: AtomicU64,
    active: AtomicU64,
    refused: AtomicU64,
    failed_handshakes: AtomicU64,
}

impl Counters {
    pub(crate) fn opened(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        // Saturating: never wraps even if called once too often.
        let _ = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed_handshake(&self) {
        self.failed_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            connections_total: self.total.load(Ordering::Relaxed),
            connections_active: self.active.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed_handshakes: self.failed_handshakes.load(Ordering::Relaxed),
            bytes_up: self.bytes.up.load(Ordering::Relaxed),
            bytes_down: self.bytes.down.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a server's or client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// Connections relayed since the start.
    pub connections_total: u64,
    /// Connections being relayed now.
    pub connections_active: u64,
    /// Requests refused (policy, resolution, connect failure, limits).
    pub refused: u64,
    /// Handshakes that failed (malformed request, timeout, peer gone).
    pub failed_handshakes: u64,
    /// Bytes sent towards the destination (enclave → parent → destination, or client → enclave
    /// for ingress).
    pub bytes_up: u64,
    /// Bytes sent back towards the initiator.
    pub bytes_down: u64,
}

/// One connection being relayed, as listed by a server's `connections()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Server-unique id (also in the log lines).
    pub id: u64,
    /// Who connected.
    pub peer: String,
    /// Where it is relayed to.
    pub target: String,
    /// Bytes sent towards the target so far.
    pub bytes_up: u64,
    /// Bytes sent back so far.
    pub bytes_down: u64,
    /// How long it has been open.
    pub age: Duration,
}

#[derive(Debug)]
pub(crate) struct ConnEntry {
    peer: String,
    target: String,
    started: Instant,
    pub(crate) bytes: Arc<ByteCounters>,
}

/// Per-connection counters of a server, plus its totals.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) counters: Counters,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, ConnEntry>>,
}

impl Registry {
    /// Registers an active connection; the guard unregisters it.
    pub(crate) fn register(self: &Arc<Self>, peer: String, target: String) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = Arc::new(ByteCounters::default());
        self.counters.opened();
        if let Ok(mut m) = self.conns.lock() {
            m.insert(
                id,
                ConnEntry {
                    peer,
                    target,
                    started: Instant::now(),
                    bytes: bytes.clone(),
                },
            );
        }
        ConnGuard {
            registry: self.clone(),
            id,
            bytes,
        }
    }

    pub(crate) fn connections(&self) -> Vec<ConnectionInfo> {
        let Ok(m) = self.conns.lock() else {
            return Vec::new();
        };
        let mut v: Vec<_> = m
            .iter()
            .map(|(id, e)| ConnectionInfo {
                id: *id,
                peer: e.peer.clone(),
                target: e.target.clone(),
                bytes_up: e.bytes.up.load(Ordering::Relaxed),
                bytes_down: e.bytes.down.load(Ordering::Relaxed),
                age: e.started.elapsed(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Keeps a connection registered while it lives.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    registry: Arc<Registry>,
    pub(crate) id: u64,
    pub(crate) bytes: Arc<ByteCounters>,
}

impl ConnGuard {
    /// Totals to update alongside this connection's counters.
    pub(crate) fn totals(&self) -> &ByteCounters {
        &self.registry.counters.bytes
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.conns.lock() {
            m.remove(&self.id);
        }
        self.registry.counters.closed();
    }
}

/// Decisions of a [`DnsServer`](crate::dns::DnsServer).
#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    pub(crate) queries: AtomicU64,
    pub(crate) synthetic: AtomicU64,
    pub(crate) no_data: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_failed: AtomicU64,
    pub(crate) malformed: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DnsCounters {
    pub(crate) fn snapshot(&self) -> DnsStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStats {
            queries: l(&self.queries),
            synthetic: l(&self.synthetic),
            no_data: l(&self.no_data),
            denied: l(&self.denied),
            forwarded: l(&self.forwarded),
            forward_failed: l(&self.forward_failed),
            malformed: l(&self.malformed),
        }
    }
}

/// A point-in-time copy of a DNS server's counters (one per decision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsStats {
    /// Queries received (UDP and TCP).
    pub queries: u64,
    /// `A`/`AAAA` questions answered with synthetic addresses.
    pub synthetic: u64,
    /// Questions answered with no record (`AAAA` with IPv6 off, `HTTPS`/`SVCB`, ...).
    pub no_data: u64,
    /// Questions for names the enclave policy denies (answered `REFUSED` or `NXDOMAIN`).
    pub denied: u64,
    /// Questions forwarded to the parent's resolver and answered.
    pub forwarded: u64,
    /// Forwarded questions the parent refused or failed (answered `SERVFAIL` or `REFUSED`).
    pub forward_failed: u64,
    /// Messages that were not a single well-formed question (answered `FORMERR`/`NOTIMP`, or
    /// dropped when not even the header was readable).
    pub malformed: u64,
}

/// Decisions of a [`TransparentProxy`](crate::transparent::TransparentProxy).
#[derive(Debug, Default)]
pub(crate) struct TransparentCounters {
    pub(crate) by_name: AtomicU64,
    pub(crate) by_address: AtomicU64,
    pub(crate) unknown_synthetic: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl TransparentCounters {
    pub(crate) fn snapshot(&self, relay: CountersSnapshot) -> TransparentStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransparentStats {
            by_name: l(&self.by_name),
            by_address: l(&self.by_address),
            unknown_synthetic: l(&self.unknown_synthetic),
            refused: l(&self.refused),
            failed: l(&self.failed),
            relay,
        }
    }
}

/// A point-in-time copy of a transparent listener's counters (one per decision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransparentStats {
    /// Connections to a synthetic address, forwarded by name.
    pub by_name: u64,
    /// Connections to a real address (an IP literal), forwarded by address.
    pub by_address: u64,
    /// Connections to a synthetic address no name stands behind (refused).
    pub unknown_synthetic: u64,
    /// Connections refused by the enclave policy or the parent.
    pub refused: u64,
    /// Connections that failed otherwise (no original destination, transport error, ...).
    pub failed: u64,
    /// Relay totals (connections and bytes) of the forwarded connections.
    pub relay: CountersSnapshot,
}
