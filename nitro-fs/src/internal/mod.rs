//! Wire-level items for fuzz targets, tests and benchmarks: **not part of the stable API**.
//!
//! Nothing here follows semantic versioning; it may change in any release. Applications use
//! the items at the crate root and in [`sealed`](crate::sealed) and `kernel`.

pub mod bench;
pub mod fuzzing;
pub mod proto;

/// Breaks `client`'s current connection as if the network failed, so that tests can exercise
/// reconnection. The next request reconnects through the client's connector.
pub fn break_connection(client: &crate::NbdClient) {
    client.break_connection();
}
