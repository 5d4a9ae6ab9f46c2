#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod device;
mod error;
mod file;
#[doc(hidden)]
pub mod internal;
#[cfg(target_os = "linux")]
pub mod kernel;
pub mod sealed;
mod server;
mod sync;

pub use client::{ClientConfig, ExportInfo, NbdClient, ReconnectPolicy, list_exports, negotiate};
pub use device::{BlockDevice, MemDevice};
pub use error::{
    BoxError, Error, IntegrityError, NbdCommand, NbdErrno, NbdOption, NbdReplyType, ProtocolError,
    Result,
};
pub use file::FileDevice;
pub use server::{Export, Server, ServerConfig};
