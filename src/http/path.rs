//! The path a route matches: the request's path in the one reading every common backend
//! shares, or a refusal where backends would read it differently.
//!
//! A route that guards `/admin/` is only as good as the agreement between lb-mio's reading
//! of a path and the backend's, and backends differ: nginx decodes escapes before resolving
//! `..`, Go resolves `..` before decoding, Tomcat drops `;params` from every segment, IIS
//! takes `\` for `/`. The normalised path is for matching only (the backend gets the target
//! as sent) and is built thus:
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, the others kept
//!   with upper-case hex;
//! - `;params` are dropped from each segment, as Tomcat does (`/admin;x/` reaches `/admin/`);
//! - repeated slashes merge, and `.` segments are removed.
//!
//! Refused (400), because some backend would read it otherwise: a `#`; `%2F`, `%5C` or a raw
//! `\` (a separator to some, not to others); an encoded control; a bad escape; any `..`
//! segment (nginx resolves `/admin/../x` to `/x`, while a router that matches the raw path,
//! Express's or Flask's, serves it from `/admin`; and `/admin//../x` is `/x` once slashes
//! merge but `/admin/x` by RFC 3986); a dot segment spelled with an escape (`%2e%2e`); a `;`
//! after a segment name that is `.` or `..` (`..;/`, the Tomcat bypass), or empty with more
//! path after it (`/;x/../`). Browsers resolve dot segments before they send a request, so
//! the `..` a balancer sees comes from tools or from someone probing it.
//!
//! Nothing allocates: the result is written into the caller's buffer and is never longer
//! than the input.

/// Why a path was refused; `why()` is the text for the 400's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `#`: a request target never carries a fragment (RFC 9112 §3.2).
    Fragment,
    /// Neither `*` nor a path starting with `/`.
    NotAbsolute,
    /// The caller's buffer is shorter than the path.
    TooLong,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`: some backends decode it into a separator.
    EncodedSlash,
    /// `%5C`: a separator once decoded, to IIS and Windows.
    EncodedBackslash,
    /// A raw `\`: a separator to IIS and Windows only.
    Backslash,
    /// `%00`-`%1F` or `%7F`.
    EncodedControl,
    /// A segment that is `.` or `..` only once decoded.
    EncodedDot,
    /// A `;` after a segment name that is `.`, `..`, or empty with more path after it.
    DotParameter,
    /// A `..` segment: backends resolve it differently, or not at all.
    DotDot,
}

impl PathError {
    pub fn why(&self) -> &'static str {
        match self {
            PathError::Fragment => "fragment in the request target",
            PathError::NotAbsolute => "path does not start with /",
            PathError::TooLong => "path longer than the normalising buffer",
            PathError::BadEscape => "bad percent escape in the path",
            PathError::EncodedSlash => "encoded slash in the path",
            PathError::EncodedBackslash => "encoded backslash in the path",
            PathError::Backslash => "backslash in the path",
            PathError::EncodedControl => "encoded control character in the path",
            PathError::EncodedDot => "percent-encoded dot segment in the path",
            PathError::DotParameter => "parameter on a dot or empty path segment",
            PathError::DotDot => "dot-dot segment in the path",
        }
    }
}

/// The path and the query (without its `?`) of a request target the head parser accepted:
/// origin-form, absolute-form (the path after the authority: empty, right after it, when the
/// target has none; routes then see `/`) or `*`. Both are slices of `target`, so a rewrite
/// knows where the path is. `None` for a target with a `#` (answered with
/// [`PathError::Fragment`]) or of no such form.
pub fn split_target(target: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if target.contains(&b'#') {
        return None;
    }
    if target == b"*" {
        return Some((target, None));
    }
    let rest = if target.starts_with(b"/") {
        target
    } else {
        after_authority(target)?
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    Some((path, query))
}

/// What follows `scheme://authority` in an absolute-form target.
fn after_authority(target: &[u8]) -> Option<&[u8]> {
    let at = target.windows(3).position(|w| w == b"://")?;
    let rest = &target[at + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    Some(&rest[end..])
}

/// Whether `path` is normal already: `/` first, and no escape, `;`, `\\`, `#`, `//` or dot
/// segment; `normalise` would return it unchanged. Most paths are, and this scan is cheaper
/// than the copy.
pub fn is_normal(path: &[u8]) -> bool {
    let plain = |b: &u8| !matches!(b, b'%' | b';' | b'\\' | b'#');
    let dot_segment = |seg: &[u8]| seg == b"." || seg == b"..";
    path.first() == Some(&b'/')
        && path.iter().all(plain)
        && !path.windows(2).any(|w| w == b"//")
        && !path[1..].split(|&b| b == b'/').any(dot_segment)
}

/// `path` normalised into `out` (see the module's rule), or why it cannot be.
pub fn normalise<'b>(path: &[u8], out: &'b mut [u8]) -> Result<&'b [u8], PathError> {
    if path.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    if out.len() < path.len() {
        return Err(PathError::TooLong);
    }
    if path == b"*" {
        out[0] = b'*';
        return Ok(&out[..1]);
    }
    let rest = path.strip_prefix(b"/").ok_or(PathError::NotAbsolute)?;
    out[0] = b'/';
    let mut len = 1;
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(raw) = segments.next() {
        len = push_segment(raw, segments.peek().is_none(), out, len)?;
    }
    Ok(&out[..len])
}

/// Appends one raw segment to `out[..len]` (which ends in `/`); the new length. A segment
/// other than the last is followed by a `/`, so the output keeps pace with the input.
fn push_segment(raw: &[u8], last: bool, out: &mut [u8], len: usize) -> Result<usize, PathError> {
    let decoded = decode(raw, &mut out[len..])?;
    let segment = &out[len..len + decoded];
    let params = segment.iter().position(|&b| b == b';');
    let name = &segment[..params.unwrap_or(segment.len())];
    let dot = matches!(name, b"." | b"..");
    if params.is_some() && (dot || (name.is_empty() && !last)) {
        return Err(PathError::DotParameter);
    }
    if dot && !raw.starts_with(name) {
        return Err(PathError::EncodedDot);
    }
    match name {
        b"" | b"." => Ok(len),
        b".." => Err(PathError::DotDot),
        _ => {
            let end = len + name.len();
            if last {
                return Ok(end);
            }
            out[end] = b'/';
            Ok(end + 1)
        }
    }
}

/// Decodes one segment's escapes into `out` under the module's rule; the length written,
/// never more than `raw.len()`.
fn decode(raw: &[u8], out: &mut [u8]) -> Result<usize, PathError> {
    let (mut read, mut written) = (0, 0);
    while read < raw.len() {
        let (spelled, width, used) = match raw[read] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (spelled, width) = spelling(escaped(raw.get(read + 1..read + 3))?);
                (spelled, width, 3)
            }
            byte => ([byte, 0, 0], 1, 1),
        };
        out[written..written + width].copy_from_slice(&spelled[..width]);
        written += width;
        read += used;
    }
    Ok(written)
}

/// How the normalised path spells an escaped byte: itself when unreserved, else the escape
/// with upper-case hex, so that `%c3` and `%C3` cannot make one path two.
fn spelling(byte: u8) -> ([u8; 3], usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if is_unreserved(byte) {
        return ([byte, 0, 0], 1);
    }
    let escape = [
        b'%',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 15)],
    ];
    (escape, 3)
}

/// The byte the two hex digits after a `%` stand for, when lb-mio can keep it in a path.
fn escaped(digits: Option<&[u8]>) -> Result<u8, PathError> {
    let hex = |d: u8| char::from(d).to_digit(16);
    let Some(&[high, low]) = digits else {
        return Err(PathError::BadEscape);
    };
    let (Some(high), Some(low)) = (hex(high), hex(low)) else {
        return Err(PathError::BadEscape);
    };
    let byte = (high * 16 + low) as u8;
    match byte {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::EncodedBackslash),
        0x00..=0x1f | 0x7f => Err(PathError::EncodedControl),
        _ => Ok(byte),
    }
}

/// RFC 3986 §2.3: characters whose escapes mean the same as the characters themselves.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::show;
    use proptest::prelude::*;
    use PathError::*;

    fn normalised(path: &[u8]) -> Result<Vec<u8>, PathError> {
        let mut out = vec![0; path.len()];
        normalise(path, &mut out).map(<[u8]>::to_vec)
    }

    fn check(rows: &[(&str, Result<&str, PathError>)]) {
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|&(input, want)| {
                let got = normalised(input.as_bytes());
                let want = want.map(|w| w.as_bytes().to_vec());
                (got != want).then(|| format!("{input:?}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn ordinary_paths_pass_unchanged() {
        check(&[
            ("/", Ok("/")),
            ("/admin", Ok("/admin")),
            ("/admin/", Ok("/admin/")),
            ("/a/b/c/", Ok("/a/b/c/")),
            ("/ADMIN", Ok("/ADMIN")),
            ("/a-b_c.d~e/f.html", Ok("/a-b_c.d~e/f.html")),
            ("/a..b/.../.x/x.", Ok("/a..b/.../.x/x.")),
            ("/x%20y/%25", Ok("/x%20y/%25")),
            ("/a%3Bb", Ok("/a%3Bb")),
            ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
            ("*", Ok("*")),
        ]);
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_the_others_upper_cased() {
        check(&[
            ("/%61dmin", Ok("/admin")),
            ("/%41%44%4d%49%4E", Ok("/ADMIN")),
            ("/%7e%7Euser/%2D%5f%30", Ok("/~~user/-_0")),
            ("/a%2eb/%2e%2e%2e", Ok("/a.b/...")),
            ("/x%c3%a9", Ok("/x%C3%A9")),
            ("/x%Aa%aA", Ok("/x%AA%AA")),
            ("/a%3bb", Ok("/a%3Bb")),
            ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
            (
                "/public/%c0%ae%c0%ae/admin",
                Ok("/public/%C0%AE%C0%AE/admin"),
            ),
            ("/x%20", Ok("/x%20")),
            ("/x%80%ff", Ok("/x%80%FF")),
        ]);
    }

    #[test]
    fn slashes_merge_and_dot_segments_go() {
        check(&[
            ("//admin", Ok("/admin")),
            ("///admin//x//", Ok("/admin/x/")),
            ("/public/../admin", Err(DotDot)),
            ("/public/x/../../admin/", Err(DotDot)),
            ("/./admin", Ok("/admin")),
            ("/a/./b", Ok("/a/b")),
            ("/a/..", Err(DotDot)),
            ("/a/.", Ok("/a/")),
            ("/a/b/..", Err(DotDot)),
            ("/a/b/../", Err(DotDot)),
            ("/.", Ok("/")),
            ("/public//../admin", Err(DotDot)),
        ]);
    }

    #[test]
    fn params_are_dropped_from_segments() {
        check(&[
            ("/admin;x", Ok("/admin")),
            ("/admin;jsessionid=1/secret", Ok("/admin/secret")),
            ("/public;x/../admin", Err(DotDot)),
            ("/admin;a;b=c/", Ok("/admin/")),
            ("/admin/;x", Ok("/admin/")),
            ("/;jsessionid=ABC", Ok("/")),
        ]);
    }

    #[test]
    fn paths_backends_read_differently_are_refused() {
        check(&[
            ("/admin#x", Err(Fragment)),
            ("/#", Err(Fragment)),
            ("/public%2f..%2fadmin", Err(EncodedSlash)),
            ("/%2Fadmin", Err(EncodedSlash)),
            ("/admin\\x", Err(Backslash)),
            ("/public/..\\admin", Err(Backslash)),
            ("/public/..%5cadmin", Err(EncodedBackslash)),
            ("/x%00", Err(EncodedControl)),
            ("/x%0a/", Err(EncodedControl)),
            ("/x%1F", Err(EncodedControl)),
            ("/x%7f", Err(EncodedControl)),
            ("/x%", Err(BadEscape)),
            ("/x%4", Err(BadEscape)),
            ("/x%zz", Err(BadEscape)),
            ("/x%4g/", Err(BadEscape)),
            ("/x%%34%31", Err(BadEscape)),
            ("/x%u002e", Err(BadEscape)),
            ("/public/%2e%2e/admin", Err(EncodedDot)),
            ("/public/.%2e/admin", Err(EncodedDot)),
            ("/a/%2E%2E", Err(EncodedDot)),
            ("/a/%2e/b", Err(EncodedDot)),
            ("/public/..;/admin", Err(DotParameter)),
            ("/..;/admin", Err(DotParameter)),
            ("/.;/admin", Err(DotParameter)),
            ("/a/%2e%2e;x/admin", Err(DotParameter)),
            ("/;/admin", Err(DotParameter)),
            ("/admin/;x/../secret", Err(DotParameter)),
            ("/..", Err(DotDot)),
            ("/../admin", Err(DotDot)),
            ("/a/../..", Err(DotDot)),
            ("/%2e%2e/admin", Err(EncodedDot)),
            ("admin", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("**", Err(NotAbsolute)),
        ]);
    }

    #[test]
    fn a_short_buffer_is_an_error_not_a_panic() {
        assert_eq!(normalise(b"/admin", &mut [0; 5]), Err(TooLong));
        assert_eq!(normalise(b"/", &mut [0; 1]), Ok(&b"/"[..]));
    }

    #[test]
    fn targets_split_into_path_and_query() {
        type Split<'a> = Option<(&'a str, Option<&'a str>)>;
        let rows: &[(&str, Split)] = &[
            ("/p", Some(("/p", None))),
            ("/p?q=1", Some(("/p", Some("q=1")))),
            ("/p?", Some(("/p", Some("")))),
            ("/p?a?b/../c", Some(("/p", Some("a?b/../c")))),
            ("/?q", Some(("/", Some("q")))),
            ("http://h:80/p?q", Some(("/p", Some("q")))),
            ("https://h/", Some(("/", None))),
            ("http://h", Some(("", None))),
            ("http://h?q", Some(("", Some("q")))),
            ("HTTP://h:8080//a/../b", Some(("//a/../b", None))),
            ("*", Some(("*", None))),
            ("/p#f", None),
            ("/p?q#f", None),
            ("h:80", None),
        ];
        for &(target, want) in rows {
            let got = split_target(target.as_bytes());
            let got = got.map(|(path, query)| (show(path), query.map(show)));
            let want = want.map(|(path, query)| (path.to_owned(), query.map(str::to_owned)));
            assert_eq!(got, want, "{target:?}");
        }
    }

    /// Arbitrary bytes, and paths rich in the bytes the rule is about so that the cases that
    /// matter come up often.
    fn paths() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => proptest::sample::select(b"/.%;\\#?aA2eEfF5cC0".to_vec()),
            1 => any::<u8>(),
        ];
        let tail = proptest::collection::vec(byte, 0..40);
        let pathish = (any::<bool>(), tail)
            .prop_map(|(slash, tail)| [&b"/"[..usize::from(slash)], &tail[..]].concat());
        prop_oneof![pathish, proptest::collection::vec(any::<u8>(), 0..64)]
    }

    proptest! {
        #[test]
        fn normalised_paths_are_clean_and_stable(path in paths()) {
            prop_assert!(split_target(&path).is_none_or(|(p, _)| p.len() <= path.len()));
            let Ok(once) = normalised(&path) else { return Ok(()) };
            prop_assert!(once.len() <= path.len());
            if path.starts_with(b"/") {
                prop_assert!(once.starts_with(b"/"));
                prop_assert!(!once.windows(2).any(|w| w == b"//"));
                prop_assert!(!once.split(|&b| b == b'/').any(|s| s == b"." || s == b".."));
            }
            prop_assert!(!once.contains(&b'\\') && !once.contains(&b'#'));
            prop_assert_eq!(normalised(&once), Ok(once.clone()), "output {}", show(&once));
        }

        #[test]
        fn a_path_found_normal_is_what_normalise_makes_of_it(path in paths()) {
            if is_normal(&path) {
                prop_assert_eq!(normalised(&path), Ok(path.clone()), "{}", show(&path));
            }
        }
    }
}
