//! etcd v3 over its JSON gateway (HTTP/1.1), for a thread of its own: blocking sockets, each
//! call bounded in time, no gRPC stack and no async runtime. `Client` makes the calls (range,
//! put, puts and deletes guarded by a key's revision, leases) over one kept-alive connection,
//! moving to the next member when one fails; `Watch` follows a prefix on a connection of its
//! own, one message at a time.

mod base64;
mod client;
mod connection;
mod error;
mod tls;
mod watch;
mod wire;

pub use client::{Client, Credentials, Lease, Options, Range};
pub use error::{Error, Why};
pub use tls::TlsFiles;
pub use watch::{Message, Watch};
pub use wire::{Event, Kv};
