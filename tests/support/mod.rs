//! Shared test harness for lb-mio integration tests: run the real binary, scripted mock
//! backends, raw HTTP/1.1 clients and config builders. Loopback only, std (and socket2) only,
//! every wait bounded by a deadline and every socket by a timeout.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! let a = Backend::start("a", |_req| Response::ok("from a"));
//! let lb = Lb::start(&ini(&[("a", a.addr)], ""));
//! let resp = get(lb.addr, "/");
//! assert_eq!(resp.body_str(), "from a");
//! ```
//!
//! The vocabulary, by file:
//!
//! - `lb`: [`Lb`] is a running `lb-mio CONFIG` (its log, its pid, stopped on drop); [`ini`]
//!   builds a config for some backends; [`run_cli`] runs the binary once to its end.
//! - `backend`: [`Backend`] is a scripted HTTP/1.1 server that records each [`Request`] it
//!   receives and answers with the [`Response`] its handler builds (or raw [`Step`]s).
//! - `raw_backend`: [`RawBackend`] hands each connection to the test as a socket, for
//!   backends that misbehave below HTTP; `Backend` runs on it.
//! - `client`: [`connect`], [`send`] and the `read_*` functions speak raw HTTP/1.1 from the
//!   client side; a [`Resp`] is a response exactly as received.
//! - `admin`: [`admin_request`] and [`api_backends`] speak to lb-mio's admin listener.
//! - `load`: [`Load`] keeps requests going from client threads while a test changes things.
//! - `process`: [`Process`] is a child beside the test (its output gathered by line, killed on
//!   drop); [`run_within`] runs one to its end within a time limit ([`run_with_input`] with
//!   bytes on its stdin).
//! - `procfs`: what a process holds, from /proc (RSS, descriptors, threads, CPU time).
//! - `etcd`: [`Etcd`] is a real etcd on loopback (data on tmpfs, killed on drop), which can
//!   be killed and restarted on its data; [`Etcd::ctl`] runs `etcdctl` against it.
//! - `relay`: [`Relay`] is a TCP relay on loopback that a test cuts and restores (a network
//!   partition between two processes that keep running).
//! - `http`: what the backend and the client share ([`Message`] for header lookup, reason
//!   phrases, chunked coding) and what lb-mio rewrites ([`HOP_BY_HOP`], [`X_FORWARDED`]).
//! - `tls`: a throwaway PKI made with the `openssl` CLI ([`Pki`], [`Leaf`]), `curl` and
//!   `openssl s_client` bounded in time ([`curl`], [`s_client`], [`SClient`]), a ClientHello
//!   read apart ([`ClientHello`]), and a small rustls client for what the CLIs cannot do.
//! - `util`: bounded waits, test data, byte comparison, [`Gate`], [`TempFile`], [`TempDir`],
//!   [`reset`] (close with a RST).
#![allow(dead_code)]

mod admin;
mod backend;
mod client;
mod etcd;
mod http;
mod lb;
mod load;
mod process;
mod procfs;
mod raw_backend;
mod relay;
mod tls;
mod util;

// Each test file uses only part of the harness: what it leaves unused is no warning.
#[allow(unused_imports)]
pub use {
    admin::*, backend::*, client::*, etcd::*, http::*, lb::*, load::*, process::*, procfs::*,
    raw_backend::*, relay::*, tls::*, util::*,
};

use std::time::Duration;

/// Read/write timeout on every socket the harness opens (clients and backend connections).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest head (request or response) the harness reads.
const MAX_HEAD: usize = 64 * 1024;
