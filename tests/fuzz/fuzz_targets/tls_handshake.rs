//! `tls_handshake`: arbitrary bytes from a client into lb-mio's TLS server side: rustls's
//! state machine with lb-mio's certificate resolver (the SNI table, wildcards, the default),
//! its ticket keys (a PSK identity is a ticket to open) and its TLS 1.2 session cache, in
//! records split at arbitrary points.
//!
//! Beyond "never panics": whatever the bytes, what lb-mio sends back stays bounded (a
//! ServerHello flight and an alert at most), so no input turns a handshake into a flood.

#![no_main]

use lb_mio::config::Config;
use lb_mio::tls::Server;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A throwaway self-signed ECDSA certificate and key for `fuzz.test` and `*.fuzz.test`,
/// for this target only: they protect nothing.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBojCCAUigAwIBAgIUWotzs22xGahvIBfk5xQ+EvZdPHQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJZnV6ei50ZXN0MCAXDTI2MTIwNTA3NDg1OFoYDzIxMjYxMTEx
MDc0ODU4WjAUMRIwEAYDVQQDDAlmdXp6LnRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAT4oJVJKBH1515fTYymeLbEzlZdoTYn93a7mp8ohopdCnRt0HUQFTSy
q3uSvAk8b6vIXMW9T3qHYptUD1yUfSDYo3YwdDAdBgNVHQ4EFgQUVi7ze2qAI01Z
UKue/trCs43aUngwHwYDVR0jBBgwFoAUVi7ze2qAI01ZUKue/trCs43aUngwDwYD
VR0TAQH/BAUwAwEB/zAhBgNVHREEGjAYgglmdXp6LnRlc3SCCyouZnV6ei50ZXN0
MAoGCCqGSM49BAMCA0gAMEUCIQC3Dz8ROUiWgjjEebTQz2gs/kzFm5neQZYhBkXP
ELQU6AIgGQq8w43m2BprA2zskEFS9aUztUESE3u/trHmL+4vX6A=
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdgP4Uvifg8yxIOcg
LCfVZbPfZI1j7EYceWYmrtNRX4yhRANCAAT4oJVJKBH1515fTYymeLbEzlZdoTYn
93a7mp8ohopdCnRt0HUQFTSyq3uSvAk8b6vIXMW9T3qHYptUD1yUfSDY
-----END PRIVATE KEY-----
";

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lb-mio-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, CERT).expect("write cert");
        std::fs::write(&key, KEY).expect("write key");
        let text = format!(
            "[lb]\ntls_listen = 127.0.0.1:0\n[certificates]\nfuzz = {} {}\n[backends]\ns1 = 127.0.0.1:1\n",
            cert.display(),
            key.display()
        );
        let config = Config::parse(&text, "fuzz.ini").expect("config");
        Server::load(&config).expect("TLS setup").expect("a TLS listener")
    })
}

fuzz_target!(|input: &[u8]| {
    let mut tls = server().connection().expect("a connection");
    // The first byte says where the input is cut in two reads, as a socket may deliver it.
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let mut answered = 0;
    for mut part in [&data[..cut], &data[cut..]] {
        while !part.is_empty() {
            match tls.read_tls(&mut part) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let failed = tls.process_new_packets().is_err();
            let mut out = Vec::new();
            while tls.wants_write() && tls.write_tls(&mut out).is_ok_and(|n| n > 0) {}
            // What a client gets for its bytes (a ServerHello flight, an alert) is bounded.
            answered += out.len();
            assert!(answered < 64 * 1024, "{answered} bytes of answer");
            if failed {
                return;
            }
        }
    }
});
