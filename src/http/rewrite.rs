//! What a route changes in a request on its way to the backend, and in the response on its way
//! back: a path prefix taken off and another put on, and header rules. Rewrites apply to the
//! path as the client sent it (matching used the normalised path; the backend gets the sent
//! bytes unless a rewrite says otherwise).

use super::head::{self, HeadError};
use crate::buffer::Buffer;

/// Header rules for one direction: `set` replaces every copy, `add` appends one more, `remove`
/// drops every copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The header called `name` does not go on as it came: it is removed, or set anew.
    pub fn drops(&self, name: &[u8]) -> bool {
        let named = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        self.remove.iter().any(|n| named(n)) || self.set.iter().any(|(n, _)| named(n))
    }

    /// Writes the headers these rules put in.
    pub fn put(&self, out: &mut Buffer) -> Result<(), HeadError> {
        for (name, value) in self.set.iter().chain(&self.add) {
            head::put_header(out, name.as_bytes(), value.as_bytes())?;
        }
        Ok(())
    }
}

/// A route's changes to what passes through it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Taken off the front of the path as sent, when it starts with it.
    pub strip_prefix: Option<String>,
    /// Put on the front of the path (without a trailing `/`).
    pub add_prefix: Option<String>,
    pub request: HeaderRules,
    pub response: HeaderRules,
}

impl Rewrite {
    pub fn changes_path(&self) -> bool {
        self.strip_prefix.is_some() || self.add_prefix.is_some()
    }

    /// The path after the prefix rules, as the pieces to write in order. The prefix comes off
    /// only at a segment's end (`/api` off `/api/x` or `/api`, not off `/api../x`, which would
    /// leave a `..` the route never saw); the rest always begins with `/`.
    pub fn path<'a>(&'a self, sent: &'a [u8]) -> [&'a [u8]; 3] {
        let add = self.add_prefix.as_deref().unwrap_or_default().as_bytes();
        let strip = self.strip_prefix.as_deref().unwrap_or_default().as_bytes();
        let rest = match sent.strip_prefix(strip) {
            Some(rest) if rest.is_empty() || rest.starts_with(b"/") || strip.ends_with(b"/") => {
                rest
            }
            _ => sent,
        };
        let slash: &[u8] = if rest.first() == Some(&b'/') {
            b""
        } else {
            b"/"
        };
        [add, slash, rest]
    }
}

/// Writes `METHOD SP target SP version` with the target's path rewritten: the scheme and
/// authority of an absolute-form target and the query stay as sent.
pub fn put_request_line(
    out: &mut Buffer,
    line: &[u8],
    path_at: (usize, usize),
    rewrite: &Rewrite,
) -> Result<(), HeadError> {
    let (start, end) = path_at;
    head::put_all(out, &line[..start])?;
    for piece in rewrite.path(&line[start..end]) {
        head::put_all(out, piece)?;
    }
    head::put_all(out, &line[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(strip: Option<&str>, add: Option<&str>) -> Rewrite {
        Rewrite {
            strip_prefix: strip.map(Into::into),
            add_prefix: add.map(Into::into),
            ..Rewrite::default()
        }
    }

    fn path(r: &Rewrite, sent: &str) -> String {
        let pieces = r.path(sent.as_bytes());
        String::from_utf8(pieces.concat()).unwrap()
    }

    #[test]
    fn prefixes_come_off_and_go_on_the_path_as_sent() {
        let strip = rewrite(Some("/api"), None);
        assert_eq!(path(&strip, "/api/users"), "/users");
        assert_eq!(path(&strip, "/api"), "/");
        assert_eq!(
            path(&strip, "/other"),
            "/other",
            "not its prefix: unchanged"
        );
        // Sent encoded, the prefix is not what the client sent: the path goes on as sent.
        assert_eq!(path(&strip, "/%61pi/users"), "/%61pi/users");

        let both = rewrite(Some("/api"), Some("/v2"));
        assert_eq!(path(&both, "/api/users"), "/v2/users");
        assert_eq!(path(&rewrite(None, Some("/v2")), "/x"), "/v2/x");
    }

    #[test]
    fn the_request_line_keeps_method_authority_query_and_version() {
        let r = rewrite(Some("/api"), Some("/v2"));
        for (line, start, end, want) in [
            ("GET /api/x?q=1 HTTP/1.1", 4, 10, "GET /v2/x?q=1 HTTP/1.1"),
            (
                "GET http://h:8/api/x HTTP/1.1",
                14,
                20,
                "GET http://h:8/v2/x HTTP/1.1",
            ),
        ] {
            let mut out = crate::buffer::BufferPool::new(0).take();
            put_request_line(&mut out, line.as_bytes(), (start, end), &r).unwrap();
            assert_eq!(out.data(), want.as_bytes());
        }
    }

    #[test]
    fn header_rules_drop_what_they_set_or_remove() {
        let rules = HeaderRules {
            set: vec![("X-Env".into(), "prod".into())],
            add: vec![("X-Via".into(), "lb".into())],
            remove: vec!["Cookie2".into()],
        };
        assert!(rules.drops(b"x-env") && rules.drops(b"COOKIE2"));
        assert!(!rules.drops(b"X-Via"), "add keeps the client's copies");
        let mut out = crate::buffer::BufferPool::new(0).take();
        rules.put(&mut out).unwrap();
        assert_eq!(out.data(), b"X-Env: prod\r\nX-Via: lb\r\n");
    }
}
