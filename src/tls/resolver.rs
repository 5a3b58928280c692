//! Which certificate a handshake gets: by the SNI name, matched against the names inside the
//! certificates (exact, then `*.example.com` for one label), the first listed certificate for
//! no name or an unknown one; among certificates for the same name, the first whose key the
//! client can verify (ECDSA before RSA). SIGHUP swaps the whole table at once.

use super::certificate::{Certificate, KeyKind};
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::CipherSuite;
use std::collections::HashMap;
use std::sync::Arc;

/// The TLS 1.2 suites an ECDSA key can serve (rustls's); a TLS 1.2-only client that offers none
/// of them needs the RSA certificate. TLS 1.3 suites do not depend on the key.
const TLS12_ECDSA_SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];
const TLS13_SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

type Keys = Vec<(KeyKind, Arc<CertifiedKey>)>;

/// Names to keys, built once per load.
#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Keys>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Keys>,
    default: Keys,
}

impl Table {
    fn new(certificates: &[Arc<Certificate>]) -> Table {
        let mut table = Table::default();
        for cert in certificates {
            let entry = (cert.kind, Arc::clone(&cert.key));
            for name in &cert.names {
                let keys = match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.entry(parent.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                keys.or_default().push(entry.clone());
            }
        }
        for keys in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            keys.sort_by_key(|(kind, _)| *kind); // stable: file order within a kind
        }
        if let Some(first) = certificates.first() {
            // The default is the first certificate, with any twin of another key type that
            // covers its first name.
            table.default = first
                .names
                .first()
                .and_then(|name| table.lookup(name))
                .cloned()
                .unwrap_or_else(|| vec![(first.kind, Arc::clone(&first.key))]);
        }
        table
    }

    fn lookup(&self, name: &str) -> Option<&Keys> {
        if let Some(keys) = self.exact.get(name) {
            return Some(keys);
        }
        let parent = name.split_once('.')?.1;
        self.wildcard.get(parent)
    }
}

/// rustls's certificate resolver for every TLS listener.
#[derive(Debug, Default)]
pub struct Resolver {
    table: RwLock<Arc<Table>>,
}

impl Resolver {
    /// From now on, handshakes choose among `certificates` (the first is the default).
    pub fn set(&self, certificates: &[Arc<Certificate>]) {
        *self.table.write() = Arc::new(Table::new(certificates));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = Arc::clone(&self.table.read());
        let name = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let keys = (name.as_deref())
            .and_then(|n| table.lookup(n))
            .unwrap_or(&table.default);
        let suites = hello.cipher_suites();
        let tls12_only = !suites.iter().any(|s| TLS13_SUITES.contains(s));
        let usable = |(kind, key): &&(KeyKind, Arc<CertifiedKey>)| {
            let suite_ok = !tls12_only
                || *kind != KeyKind::Ecdsa
                || suites.iter().any(|s| TLS12_ECDSA_SUITES.contains(s));
            suite_ok && key.key.choose_scheme(hello.signature_schemes()).is_some()
        };
        // None usable: the first, and rustls refuses the handshake with the right alert.
        let chosen = keys.iter().find(usable).or(keys.first())?;
        Some(Arc::clone(&chosen.1))
    }
}
