//! The `308` that sends a plain-HTTP request to the same host and target over https
//! (`[tls] redirect_http`), built from the request head the parser already accepted.

use super::head;
use std::borrow::Cow;
use std::io::Write;

/// Longest `Location` header lb-mio writes; a request whose target would not fit gets 414.
pub const MAX_LOCATION: usize = 1536;

/// The `Host` header's host, without its port (`[::1]` stays bracketed).
pub fn host(head: &[u8]) -> Option<&[u8]> {
    let value = head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        name.eq_ignore_ascii_case(b"host")
            .then(|| value[1..].trim_ascii())
    })?;
    let host = match value.iter().rposition(|&b| b == b':') {
        Some(colon) if !value[colon..].contains(&b']') => &value[..colon],
        _ => value,
    };
    (!host.is_empty()).then_some(host)
}

/// The request target as a path: origin-form as sent, the path and query of an absolute-form
/// target (its authority ends at `/`, `?` or `#`), `/` for the others.
fn path(head: &[u8]) -> Cow<'_, [u8]> {
    // The parser lets empty lines come before the request line (RFC 9112 §2.2).
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let head = &head[start..];
    let line = &head[..head::first_line_len(head)];
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
    if target.starts_with(b"/") {
        return Cow::Borrowed(target);
    }
    let Some(at) = target.windows(3).position(|w| w == b"://") else {
        return Cow::Borrowed(b"/");
    };
    let authority_and_rest = &target[at + 3..];
    let rest = match authority_and_rest.iter().position(|b| b"/?#".contains(b)) {
        Some(end) => &authority_and_rest[end..],
        None => b"",
    };
    match rest.first() {
        Some(b'/') => Cow::Borrowed(rest),
        _ => Cow::Owned([b"/", rest].concat()),
    }
}

/// Writes `Location: https://HOST[:PORT]PATH\r\n` into `out` (the port left out when 443);
/// its length, or `None` without a host or when it does not fit.
pub fn location_header(head: &[u8], port: u16, out: &mut [u8; MAX_LOCATION]) -> Option<usize> {
    let host = host(head)?;
    let mut rest = &mut out[..];
    let mut write = || -> std::io::Result<()> {
        rest.write_all(b"Location: https://")?;
        rest.write_all(host)?;
        if port != 443 {
            write!(rest, ":{port}")?;
        }
        rest.write_all(&path(head))?;
        rest.write_all(b"\r\n")
    };
    write().ok()?;
    Some(MAX_LOCATION - rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(head: &str, port: u16) -> Option<String> {
        let mut out = [0; MAX_LOCATION];
        let len = location_header(head.as_bytes(), port, &mut out)?;
        Some(String::from_utf8(out[..len].to_vec()).unwrap())
    }

    #[test]
    fn the_same_host_and_target_over_https() {
        let head = "GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n";
        assert_eq!(
            location(head, 443).unwrap(),
            "Location: https://example.com/a/b?c=d\r\n"
        );
        assert_eq!(
            location(head, 8443).unwrap(),
            "Location: https://example.com:8443/a/b?c=d\r\n"
        );
        let v6 = "GET / HTTP/1.1\r\nhost: [::1]:80\r\n\r\n";
        assert_eq!(location(v6, 443).unwrap(), "Location: https://[::1]/\r\n");
        let absolute = "GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(
            location(absolute, 443).unwrap(),
            "Location: https://example.com/x\r\n"
        );
    }

    #[test]
    fn an_absolute_target_keeps_its_path_and_query_and_a_leading_empty_line_is_skipped() {
        let query = "GET http://example.com?next=/evil HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(
            location(query, 443).unwrap(),
            "Location: https://example.com/?next=/evil\r\n"
        );
        let bare = "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(
            location(bare, 443).unwrap(),
            "Location: https://example.com/\r\n"
        );
        let leading = "\r\nGET /a?b HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(
            location(leading, 443).unwrap(),
            "Location: https://example.com/a?b\r\n"
        );
    }

    #[test]
    fn no_host_or_no_room_is_none() {
        assert_eq!(location("GET / HTTP/1.0\r\n\r\n", 443), None);
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "x".repeat(MAX_LOCATION)
        );
        assert_eq!(location(&long, 443), None);
    }
}
