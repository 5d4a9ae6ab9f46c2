#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

mod addr;
mod client;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod connector;
pub mod dns;
mod egress;
mod error;
pub mod ingress;
#[doc(hidden)]
pub mod internal;
pub mod netlink;
pub mod policy;
pub mod protocol;
pub mod proxy;
mod relay;
#[cfg(feature = "axum")]
mod serve;
mod server;
mod stats;
pub mod synthetic;
pub mod time;
pub mod transparent;
mod transport;

pub use addr::{Addr, NITRO_PARENT_CID, PARENT_CID_VAR, parent_cid, parent_cid_from_cmdline};
pub use client::{ClientConfig, EgressClient, TunnelStream};
pub use egress::{EgressServer, Resolve, StaticResolver, SystemResolver};
pub use error::{Error, PolicyError, ProtocolError, Refusal, RefusalCode, TimeError};
pub use ingress::{IngressConnection, IngressForward, IngressListener, IngressServer};
pub use policy::Policy;
pub use proxy::{LocalProxy, ProxyKind};
pub use relay::{BUFFER_SIZE, RelayTotals, relay};
pub use server::{EMULATOR_MAX_WRITE, Limits, ServerHandle, Shutdown};
pub use stats::{ConnectionInfo, CountersSnapshot, DnsStats, TransparentStats};
pub use time::{ClockOffset, TimeClient, TimeConfig, TimeSync};
pub use transport::{DEFAULT_CONNECT_TIMEOUT, Listener, PeerAddr, Stream};
