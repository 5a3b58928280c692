//! One `[certificates]` entry read from its files: the chain and key rustls serves, and what an
//! operator must see of it (the names it covers, when it expires, its key type).

use crate::config::CertConf;
use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;

/// Certificates that expire within this many days are warned about (and marked on the status
/// page): time enough to renew one by hand.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The key's algorithm, as operators name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    /// Listed first: where a client takes either, ECDSA is the cheaper handshake.
    Ecdsa,
    Ed25519,
    Rsa,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ecdsa => "ECDSA",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Rsa => "RSA",
        }
    }
}

/// A loaded certificate.
#[derive(Debug)]
pub struct Certificate {
    pub conf: CertConf,
    /// The DNS names it covers (subjectAltName, or the common name when it has none), lower
    /// case; a wildcard as `*.example.com`.
    pub names: Vec<String>,
    /// notAfter, as a Unix timestamp.
    pub not_after: i64,
    pub kind: KeyKind,
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Reads the entry's files; the error names the file and the reason.
    pub fn load(conf: &CertConf) -> Result<Certificate, String> {
        let chain = read_chain(&conf.chain)?;
        let key = read_key(&conf.key)?;
        let key = any_supported_type(&key)
            .map_err(|e| format!("{}: unusable private key: {e}", conf.key.display()))?;
        let kind = match key.algorithm() {
            SignatureAlgorithm::ECDSA => KeyKind::Ecdsa,
            SignatureAlgorithm::ED25519 => KeyKind::Ed25519,
            _ => KeyKind::Rsa,
        };
        let (names, not_after) =
            describe(&chain[0]).map_err(|why| format!("{}: {why}", conf.chain.display()))?;
        let key = CertifiedKey::new(chain, key);
        key.keys_match().map_err(|_| {
            format!(
                "{}: the key does not match the certificate in {}",
                conf.key.display(),
                conf.chain.display()
            )
        })?;
        Ok(Certificate {
            conf: conf.clone(),
            names,
            not_after,
            kind,
            key: Arc::new(key),
        })
    }

    /// Whole days until it expires (negative once expired).
    pub fn days_left(&self) -> i64 {
        (self.not_after - unix_now()).div_euclid(86_400)
    }

    /// A warning for a certificate that expired or expires within `EXPIRY_WARNING_DAYS`.
    pub fn expiry_warning(&self) -> Option<String> {
        let days = self.days_left();
        let what = match days {
            ..0 => "has EXPIRED: clients refuse it".to_string(),
            0..EXPIRY_WARNING_DAYS => format!("expires in {days} days"),
            _ => return None,
        };
        Some(format!(
            "{}: [certificates] {} ({}) {what}; renew {}",
            self.conf.origin,
            self.conf.name,
            self.names.join(", "),
            self.conf.chain.display()
        ))
    }
}

/// The certificates of a PEM file, leaf first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_reason(e)))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(chain)
}

/// The first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {}", path.display(), pem_reason(e)))
}

/// The CA certificates of a PEM bundle, for checking backends' or clients' certificates.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_reason(e)))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no CA certificate in the file", path.display()));
    }
    Ok(roots)
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read: {e}"),
        Error::NoItemsFound => "no PEM item of the expected kind in the file".to_string(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The names and notAfter of the leaf certificate.
fn describe(der: &CertificateDer) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        let cn = cert.subject().iter_common_name().next();
        if let Some(cn) = cn.and_then(|cn| cn.as_str().ok()) {
            names.push(cn.to_ascii_lowercase());
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
