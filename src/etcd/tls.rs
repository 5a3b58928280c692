//! TLS to etcd: members' certificates checked against a CA file, and a client certificate
//! for clusters that ask for one (`--client-cert-auth`).

use crate::tls::{read_chain, read_key, read_roots};
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// The PEM files of TLS to etcd.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA bundle that members' certificates must chain to.
    pub ca: PathBuf,
    /// A client certificate chain and its key, both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// rustls's client config for `files`; the error names the file at fault.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(read_roots(&files.ca)?);
    let mut config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_chain(cert)?, read_key(key)?)
            .map_err(|e| format!("{}: {e}", key.display()))?,
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
