//! TLS termination: rustls's sans-IO state machine inside each worker's event loop, between
//! the client socket and the pump's buffers (`TlsStream`, one of `Transport`'s kinds). One
//! `Server` holds what every worker shares: rustls's config (TLS 1.2 and 1.3, ALPN
//! `http/1.1`), the certificates chosen by SNI (`Resolver`), the ticket keys (`TicketKeys`)
//! and the TLS 1.2 session cache. SIGHUP reloads certificates and ticket keys in place, so
//! handshakes after it use the new ones and established connections carry on.

mod certificate;
mod client;
mod resolver;
mod stream;
mod tickets;

pub use certificate::{
    read_chain, read_key, read_roots, Certificate, KeyKind, EXPIRY_WARNING_DAYS,
};
pub use client::Client;
pub use stream::{Handshake, Session, TlsFailure, TlsStream};

use crate::config::{ClientVerify, Config};
use log::{error, info, warn};
use mio::net::TcpStream;
use parking_lot::RwLock;
use resolver::Resolver;
use rustls::server::{
    NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::ServerConfig;
use std::sync::Arc;
use tickets::TicketKeys;

/// What every worker's TLS listeners share.
pub struct Server {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    tickets: Arc<TicketKeys>,
    certificates: RwLock<Arc<[Arc<Certificate>]>>,
}

impl Server {
    /// Reads every certificate and the ticket keys; `None` without TLS listeners. Any file
    /// that cannot be used fails the whole start (or `--check`), naming its config line.
    pub fn load(config: &Config) -> Result<Option<Server>, String> {
        if config.lb.tls_listen.is_empty() {
            return Ok(None);
        }
        let mut certificates = Vec::new();
        for conf in &config.certificates {
            let cert = Certificate::load(conf)
                .map_err(|why| format!("{}: [certificates] {}: {why}", conf.origin, conf.name))?;
            certificates.push(Arc::new(cert));
        }
        let tickets = TicketKeys::new(config.tls.ticket_key_file.as_deref())
            .map_err(|why| format!("[tls] ticket_key_file: {why}"))?;
        let resolver = Arc::new(Resolver::default());
        resolver.set(&certificates);
        let tickets = Arc::new(tickets);
        let server_config = rustls_config(config, &resolver, &tickets)?;
        Ok(Some(Server {
            config: server_config,
            resolver,
            tickets,
            certificates: RwLock::new(certificates.into()),
        }))
    }

    /// SIGHUP: certificates and ticket keys from `config`'s files. An entry whose files
    /// cannot be used keeps the certificate it had (a new entry is left out), and says why;
    /// a bad ticket key file keeps the old keys.
    pub fn reload(&self, config: &Config) {
        if let Err(why) = (self.tickets).reload(config.tls.ticket_key_file.as_deref()) {
            error!("reload: [tls] ticket_key_file: {why}; the old keys stay");
        }
        let old = self.certificates();
        let mut certificates = Vec::new();
        for conf in &config.certificates {
            match Certificate::load(conf) {
                Ok(cert) => certificates.push(Arc::new(cert)),
                Err(why) => {
                    let kept = old.iter().find(|c| c.conf.name == conf.name);
                    let outcome = match kept {
                        Some(_) => "the old certificate stays",
                        None => "left out",
                    };
                    error!("reload: [certificates] {}: {why}; {outcome}", conf.name);
                    certificates.extend(kept.cloned());
                }
            }
        }
        if certificates.is_empty() {
            error!("reload: no certificate could be loaded; the old ones stay");
            return;
        }
        for warning in certificates.iter().filter_map(|c| c.expiry_warning()) {
            warn!("{warning}");
        }
        self.resolver.set(&certificates);
        info!("reload: {} certificates", certificates.len());
        *self.certificates.write() = certificates.into();
    }

    /// A new client connection's TLS side.
    pub fn accept(&self, tcp: TcpStream) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream::server(tcp, self.connection()?))
    }

    /// rustls's side of a new client connection, with every setting and the certificates of
    /// now (also what the `tls_handshake` fuzz target feeds).
    pub fn connection(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(Arc::clone(&self.config))
    }

    /// The certificates served now, in config order.
    pub fn certificates(&self) -> Arc<[Arc<Certificate>]> {
        Arc::clone(&self.certificates.read())
    }

    /// Warnings for certificates that expired or expire soon.
    pub fn expiry_warnings(&self) -> Vec<String> {
        let certificates = self.certificates();
        certificates
            .iter()
            .filter_map(|c| c.expiry_warning())
            .collect()
    }
}

/// TLS 1.2 and 1.3 with rustls's safe defaults (aws-lc-rs: AES-GCM and ChaCha20-Poly1305,
/// ECDHE key exchange only), ALPN `http/1.1`, our resolver and ticket keys.
fn rustls_config(
    config: &Config,
    resolver: &Arc<Resolver>,
    tickets: &Arc<TicketKeys>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &config.tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_roots(path).map_err(|why| format!("[tls] client_ca: {why}"))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match config.tls.client_verify {
                ClientVerify::Required => verifier,
                ClientVerify::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("[tls] client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::clone(resolver) as _);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our order, not the client's (rustls's: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305), as
    // scanners expect of a server; every suite on offer is AEAD with forward secrecy anyway.
    server.ignore_client_order = true;
    server.ticketer = Arc::clone(tickets) as _;
    server.session_storage = match config.tls.session_cache {
        0 => Arc::new(NoServerSessionStorage {}) as Arc<dyn StoresServerSessions>,
        n => ServerSessionMemoryCache::new(n),
    };
    Ok(Arc::new(server))
}
