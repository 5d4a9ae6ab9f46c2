#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

// One path per public item: the types most programs use are re-exported here from private
// modules; the feature areas with many items of their own (`dns`, `synthetic`, `time`,
// `transparent`, `netlink`, `connector`) are public modules and the only path to their items.
// Wire-level codecs live under the hidden `internal` module (for the fuzz targets and tests).

mod addr;
mod client;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod connector;
pub mod dns;
mod egress;
mod error;
mod ingress;
#[doc(hidden)]
pub mod internal;
pub mod netlink;
mod policy;
mod proxy;
mod relay;
#[cfg(feature = "axum")]
mod serve;
mod server;
mod stats;
pub mod synthetic;
pub mod time;
pub mod transparent;
mod transport;

// The tunnel codec keeps its short crate-internal path.
use internal::protocol;

pub use addr::{Addr, NITRO_PARENT_CID, PARENT_CID_VAR, parent_cid, parent_cid_from_cmdline};
pub use client::{ClientConfig, EgressClient, TunnelStream};
pub use egress::{EgressServer, Resolve, StaticResolver, SystemResolver};
pub use error::{Error, PolicyError, ProtocolError, Refusal, RefusalCode, TimeError};
pub use ingress::{IngressConnection, IngressForward, IngressListener, IngressServer};
pub use policy::{NameVerdict, Policy, PolicyBuilder};
pub use proxy::{LocalProxy, ProxyKind};
pub use relay::{BUFFER_SIZE, RelayTotals, relay};
pub use server::{EMULATOR_MAX_WRITE, Limits, ServerHandle, Shutdown};
pub use stats::{ConnectionInfo, CountersSnapshot};
pub use transport::{DEFAULT_CONNECT_TIMEOUT, Listener, PeerAddr, Stream};
