//! TLS to backends (`s1 = 10.0.0.7:443 tls`): one rustls client config for every worker and
//! the health probes, trusting `[tls] backend_ca` and checking each backend's certificate
//! against its name (or its IP address), unless `backend_verify = false`.

use super::certificate::read_roots;
use super::TlsStream;
use crate::config::Config;
use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct};
use std::path::Path;
use std::sync::Arc;

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const DEFAULT_BACKEND_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What TLS connections to backends share.
pub struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    /// The client config for `config`'s `[tls] backend_ca` and `backend_verify`; `None` when no
    /// backend asks for TLS and the CA file cannot be read (nothing needs it then).
    pub fn load(config: &Config) -> Result<Option<Client>, String> {
        let needed = config.backends.iter().any(|b| b.tls.is_some())
            || config.discover.iter().any(|d| d.tls.is_some());
        let path = (config.tls.backend_ca.as_deref()).unwrap_or(Path::new(DEFAULT_BACKEND_CA));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = if config.tls.backend_verify {
            match read_roots(path) {
                Ok(roots) => builder.with_root_certificates(roots),
                Err(why) if needed => return Err(format!("[tls] backend_ca: {why}")),
                Err(_) => return Ok(None),
            }
        } else {
            let verifier = Arc::new(Unverified(provider));
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
        };
        let mut client = builder.with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Client {
            config: Arc::new(client),
        }))
    }

    /// A new connection to a backend named `name` (a DNS name or an IP address).
    pub fn connect(&self, tcp: TcpStream, name: &str) -> Result<TlsStream, String> {
        Ok(TlsStream::client(tcp, self.connection(name)?))
    }

    /// rustls's side of a connection to `name`, for a health probe too.
    pub fn connection(&self, name: &str) -> Result<ClientConnection, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("{name:?} is no DNS name or IP address"))?;
        ClientConnection::new(Arc::clone(&self.config), name).map_err(|e| e.to_string())
    }
}

/// `backend_verify = false`: any certificate is taken (the handshake's signatures are still
/// checked, so the connection is encrypted, to whoever answers).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
