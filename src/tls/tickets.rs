//! Session ticket keys, shared by every worker, so any worker resumes a session another began.
//!
//! Without `[tls] ticket_key_file` lb-mio makes a key at start and a new one every
//! `ROTATION`, keeping the one before to decrypt tickets it issued: a ticket lives at most two
//! periods, and SIGHUP keeps the keys. With a key file, the keys are the operator's: the
//! first line encrypts, every line decrypts, and the file is read again on SIGHUP, so several
//! processes (a zero-downtime upgrade, a fleet behind one name) resume each other's sessions.
//!
//! A ticket is `key name (4) | nonce (12) | AES-256-GCM(session state) | tag (16)`; the key
//! name is the start of the key's SHA-256, the authenticated data of the seal.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};
use parking_lot::RwLock;
use rustls::server::ProducesTickets;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often lb-mio's own keys change.
pub const ROTATION: Duration = Duration::from_secs(6 * 3600);
const NAME_LEN: usize = 4;
const KEY_LEN: usize = 32;

struct Key {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Key {
        let mut name = [0; NAME_LEN];
        name.copy_from_slice(&digest(&SHA256, bytes).as_ref()[..NAME_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key");
        Key {
            name,
            key: LessSafeKey::new(key),
        }
    }

    fn random() -> Key {
        let mut bytes = [0; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source");
        Key::new(&bytes)
    }
}

struct Keys {
    /// The first encrypts; all decrypt.
    list: Vec<Key>,
    /// When lb-mio made the first; `None` for an operator's file (never rotated here).
    made: Option<Instant>,
}

/// rustls's ticketer for every TLS listener.
pub struct TicketKeys {
    keys: RwLock<Keys>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TicketKeys({} keys)", self.keys.read().list.len())
    }
}

impl TicketKeys {
    /// Keys from `file`, or lb-mio's own.
    pub fn new(file: Option<&Path>) -> Result<TicketKeys, String> {
        let keys = match file {
            Some(path) => read_file(path)?,
            None => own_keys(),
        };
        Ok(TicketKeys {
            keys: RwLock::new(keys),
        })
    }

    /// SIGHUP: the file's keys again (or lb-mio's own, kept as they are, when there is none);
    /// a bad file leaves the keys as they were.
    pub fn reload(&self, file: Option<&Path>) -> Result<(), String> {
        match file {
            Some(path) => *self.keys.write() = read_file(path)?,
            None if self.keys.read().made.is_none() => *self.keys.write() = own_keys(),
            None => {}
        }
        Ok(())
    }

    /// lb-mio's own keys turn over every `ROTATION`; the previous one still decrypts.
    fn rotate_if_due(&self) {
        let due = |keys: &Keys| keys.made.is_some_and(|made| made.elapsed() >= ROTATION);
        if !due(&self.keys.read()) {
            return;
        }
        let mut keys = self.keys.write();
        if due(&keys) {
            keys.list.truncate(1);
            keys.list.insert(0, Key::random());
            keys.made = Some(Instant::now());
        }
    }
}

fn own_keys() -> Keys {
    Keys {
        list: vec![Key::random()],
        made: Some(Instant::now()),
    }
}

/// One key per line, 64 hex digits (`openssl rand -hex 32`); blank lines and `#` comments are
/// skipped.
fn read_file(path: &Path) -> Result<Keys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = decode_hex(line).ok_or_else(|| {
            format!(
                "{} line {}: expected a key of 64 hex digits (openssl rand -hex 32)",
                path.display(),
                i + 1
            )
        })?;
        list.push(Key::new(&bytes));
    }
    if list.is_empty() {
        return Err(format!("{}: no key in the file", path.display()));
    }
    Ok(Keys { list, made: None })
}

fn decode_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != 2 * KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATION.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let keys = self.keys.read();
        let key = keys.list.first()?;
        let mut nonce = [0; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let name = ticket.get(..NAME_LEN)?;
        let nonce = ticket.get(NAME_LEN..NAME_LEN + NONCE_LEN)?;
        let sealed = ticket.get(NAME_LEN + NONCE_LEN..)?;
        let keys = self.keys.read();
        let key = keys.list.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key.name), &mut opened)
            .ok()?;
        let len = plain.len();
        opened.truncate(len);
        Some(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A key file in the system's temporary directory, removed on drop.
    struct KeyFile(PathBuf);

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn key_file(lines: &[&str]) -> KeyFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("lbmio-tickets-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        KeyFile(path)
    }

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn a_ticket_opens_with_the_same_keys_and_not_with_others() {
        let a = key_file(&[A]);
        let one = TicketKeys::new(Some(&a.0)).unwrap();
        let ticket = one.encrypt(b"session state").unwrap();
        assert_ne!(&ticket[NAME_LEN + NONCE_LEN..][..13], b"session state");
        // Another process reading the same file.
        let two = TicketKeys::new(Some(&a.0)).unwrap();
        assert_eq!(two.decrypt(&ticket).unwrap(), b"session state");
        let b = key_file(&[B]);
        let other = TicketKeys::new(Some(&b.0)).unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(two.decrypt(&forged), None);
        assert_eq!(two.decrypt(&ticket[..10]), None);
    }

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let old = key_file(&[A]);
        let issued = TicketKeys::new(Some(&old.0))
            .unwrap()
            .encrypt(b"x")
            .unwrap();
        let rotated = key_file(&["# new key first", B, "", A]);
        let keys = TicketKeys::new(Some(&rotated.0)).unwrap();
        assert_eq!(keys.decrypt(&issued).unwrap(), b"x");
        let fresh = keys.encrypt(b"y").unwrap();
        let only_b = key_file(&[B]);
        assert_eq!(
            TicketKeys::new(Some(&only_b.0))
                .unwrap()
                .decrypt(&fresh)
                .unwrap(),
            b"y"
        );
    }

    #[test]
    fn a_bad_key_file_is_refused_with_its_line_and_the_old_keys_stay() {
        let bad = key_file(&[A, "not hex"]);
        let err = TicketKeys::new(Some(&bad.0)).unwrap_err();
        assert!(
            err.contains("line 2: expected a key of 64 hex digits"),
            "{err}"
        );
        let empty = key_file(&["# nothing"]);
        assert!(TicketKeys::new(Some(&empty.0))
            .unwrap_err()
            .contains("no key"));
        let good = key_file(&[A]);
        let keys = TicketKeys::new(Some(&good.0)).unwrap();
        let ticket = keys.encrypt(b"z").unwrap();
        assert!(keys.reload(Some(&bad.0)).is_err());
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"z");
    }

    #[test]
    fn own_keys_survive_a_reload_without_a_file() {
        let keys = TicketKeys::new(None).unwrap();
        let ticket = keys.encrypt(b"s").unwrap();
        keys.reload(None).unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"s");
    }
}
