//! lb-mio: a thread-per-core HTTP/1.1 load balancer on `mio`.
//!
//! The modules follow the data path: a `worker` accepts and runs connections (`conn`) that
//! read and write their client through a `transport`, parse and frame HTTP (`http`) in buffers
//! from a buffer pool (`buffer`), choose a backend (`balance`) from the shared backend set
//! (`backend`, which owns membership: every source of backends adds and removes them through
//! it), reuse idle upstream connections (`upstream`) and end every request with one line in the
//! `access_log`; `health` probes backends and `discovery` finds those that `[backends]` names
//! by host, asking DNS (`dns`). Pools and routes are written as JSON `document`s to the admin API
//! and to etcd, where a `fleet` of instances shares them (through the `etcd` client).

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balance;
pub mod buffer;
pub mod config;
pub mod conn;
pub mod deadlines;
pub mod demo;
pub mod discovery;
pub mod dns;
pub mod document;
pub mod etcd;
pub mod fleet;
pub mod hash;
pub mod health;
pub mod http;
pub mod listen;
pub mod manual;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod pipe;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod reload;
pub mod request_id;
pub mod retry;
pub mod route;
pub mod server;
pub mod shared;
pub mod state_file;
pub mod tls;
pub mod token;
pub mod transport;
pub mod upgrade;
pub mod upstream;
pub mod worker;
