//! Request heads: parse what the client sent, check it, and write the head the backend gets:
//! the request line and end-to-end headers byte-exact, hop-by-hop headers dropped, and the
//! `X-Forwarded-*` headers added.

use super::body::Framing;
use super::head::{self, HeadError, HopHeaders};
use super::path;
use super::rewrite::{self, Rewrite};
use crate::buffer::Buffer;
use crate::request_id;
use std::io::Write;
use std::net::IpAddr;

/// Size limits for request heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Most headers any limit may allow (the size of the parse array on the stack).
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// What the `hash` strategy balances by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    #[default]
    ClientIp,
    /// A request header's value (requests without it fall back to the client address).
    Header(String),
    /// A cookie's value (requests without it fall back to the client address).
    Cookie(String),
}

/// What the proxy keeps of a request head once it has been forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub http10: bool,
    pub framing: Framing,
    /// The client may send another request on this connection afterwards.
    pub keep_alive: bool,
    /// The client asked to switch protocols (`Connection: upgrade` + `Upgrade`).
    pub upgrade: bool,
    /// Bytes of input the head took.
    pub head_len: usize,
    /// The backend token of the client's sticky-session cookie, if it sent one.
    pub sticky: Option<u64>,
    /// Where the request's id comes from (`[lb] request_id`).
    pub id: IdFrom,
    /// The value `hash` balances by, when it was asked for (`Wanted::hash_key`) and the
    /// request has it.
    pub hash_source: Option<Span>,
}

/// Bytes of the parsed input, by offset: what a `Request` keeps instead of a borrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub at: usize,
    pub len: usize,
}

impl Span {
    /// `value`, a slice of `input`, as a span of it.
    fn within(input: &[u8], value: &[u8]) -> Span {
        Span {
            at: value.as_ptr() as usize - input.as_ptr() as usize,
            len: value.len(),
        }
    }

    pub fn of<'a>(&self, input: &'a [u8]) -> &'a [u8] {
        &input[self.at..self.at + self.len]
    }
}

/// What a parse looks for besides what every request needs.
#[derive(Debug, Default)]
pub struct Wanted<'a> {
    /// `[lb] request_id`.
    pub id: Option<IdHeader<'a>>,
    /// Routes exist: the path is normalised for them into this room (at least as long as
    /// any head), and a path that cannot be is refused.
    pub path_room: Option<&'a mut [u8]>,
    /// The request came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// `[tls] client_ca`: the client certificate's subject goes to the backend (`None`: it
    /// sent none).
    pub client_cert: Option<Option<&'a str>>,
}

/// What the route table sees of a request head.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub method: &'a str,
    /// The host, lower case, without port or trailing dot (from `Host`, or an absolute-form
    /// target's authority, which must agree); empty when there is none.
    pub host: &'a [u8],
    /// The host with its port, as sent.
    pub authority: &'a [u8],
    /// The path, normalised (`http::path`) when routes look at it.
    pub path: &'a [u8],
    /// The path as sent.
    pub sent_path: &'a [u8],
    /// The query as sent, without its `?`.
    pub query: Option<&'a [u8]>,
    pub headers: &'a [httparse::Header<'a>],
}

/// What the route decided about forwarding: the pool's hash key and sticky cookie, and the
/// route's rewrite.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarding<'s> {
    pub rewrite: Option<&'s Rewrite>,
    /// What `hash` balances by in the request's pool, when it hashes.
    pub hash_key: Option<&'s HashKey>,
    /// The pool's sticky cookie, when it has one.
    pub sticky_cookie: Option<&'s str>,
}

/// `[lb] request_id`: the header that carries request ids, and the fresh id a request gets
/// when it has no valid one of its own.
#[derive(Debug, Clone, Copy)]
pub struct IdHeader<'a> {
    pub name: &'a str,
    pub fresh: &'a [u8],
}

/// Where a request's id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFrom {
    /// Request ids are off.
    Off,
    /// The client's own, kept.
    Client(Span),
    /// The client sent none: the fresh one.
    Fresh,
    /// The client's was invalid (too long, not visible ASCII, or more than one): the fresh one.
    Replaced,
}

/// Which id `headers` carry in header `name`.
fn id_from(input: &[u8], headers: &[httparse::Header], name: &str) -> IdFrom {
    let mut ids = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    match (ids.next(), ids.next()) {
        (None, _) => IdFrom::Fresh,
        (Some(h), None) if request_id::valid(h.value) => {
            IdFrom::Client(Span::within(input, h.value))
        }
        _ => IdFrom::Replaced,
    }
}

/// The name of lb-mio's sticky-session cookie.
pub const STICKY_COOKIE: &str = "lbmio";

/// A pool's sticky cookie: `lbmio` for `default`, `lbmio_<pool>` for the others, so two pools
/// never overwrite each other's.
pub fn sticky_cookie(pool: &str) -> String {
    match pool {
        "default" => STICKY_COOKIE.to_string(),
        _ => format!("{STICKY_COOKIE}_{pool}"),
    }
}

/// The token in an `lbmio=<16 hex digits>` cookie pair, if the client sent one.
fn sticky_token(headers: &[httparse::Header], name: &str) -> Option<u64> {
    let value = cookie(headers, name)?;
    let hex = std::str::from_utf8(value).ok().filter(|v| v.len() == 16)?;
    u64::from_str_radix(hex, 16).ok()
}

/// The value of cookie `name` in the `Cookie` headers.
fn cookie<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .find_map(|pair| {
            pair.trim_ascii()
                .strip_prefix(name.as_bytes())?
                .strip_prefix(b"=")
        })
}

/// Where the value `hash` balances by is in `headers`: the configured header or cookie.
pub fn hash_source<'a>(headers: &[httparse::Header<'a>], key: &HashKey) -> Option<&'a [u8]> {
    match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value),
        HashKey::Cookie(name) => cookie(headers, name),
    }
}

/// Parses a request head at the start of `input`. `Ok(None)`: the head is not complete yet.
/// On success the head for the backend has been appended to `out`.
pub fn parse(
    input: &[u8],
    limits: HeadLimits,
    client: IpAddr,
    out: &mut Buffer,
) -> Result<Option<Request>, HeadError> {
    parse_with(input, limits, client, Wanted::default(), out)
}

/// `parse`, and what `wanted` asks for: with an id header, the client's id kept when valid,
/// else the fresh one written in its place.
pub fn parse_with(
    input: &[u8],
    limits: HeadLimits,
    client: IpAddr,
    wanted: Wanted,
    out: &mut Buffer,
) -> Result<Option<Request>, HeadError> {
    let routed = parse_routed(input, limits, client, wanted, out, |_| {
        Ok((Forwarding::default(), ()))
    })?;
    Ok(routed.map(|(request, ())| request))
}

/// `parse_with`, with `route` deciding, from what it sees of the head, how the request is
/// forwarded; its decision comes back beside the request.
pub fn parse_routed<'s, D>(
    input: &[u8],
    limits: HeadLimits,
    client: IpAddr,
    wanted: Wanted,
    out: &mut Buffer,
    route: impl FnOnce(&Seen) -> Result<(Forwarding<'s>, D), HeadError>,
) -> Result<Option<(Request, D)>, HeadError> {
    let id = wanted.id;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage[..limits.max_headers.min(MAX_HEADERS)]);
    let head_len = match req.parse(input).map_err(head::from_httparse)? {
        httparse::Status::Partial if input.len() >= limits.max_bytes => {
            return Err(too_large(input, limits.max_bytes))
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) if n > limits.max_bytes => {
            return Err(too_large(input, limits.max_bytes))
        }
        httparse::Status::Complete(n) => n,
    };
    let head = &input[..head_len];
    head::check_line_endings(head)?;
    let head = head::skip_empty_lines(head);
    let method_token = req.method.unwrap_or_default();
    if method_token == "CONNECT" {
        return Err(HeadError::NotImplemented("CONNECT"));
    }
    let http10 = req.version == Some(0);
    let hop = HopHeaders::read(req.headers)?;
    let host = single_host(req.headers, http10)?;
    let target = req.path.unwrap_or_default().as_bytes();
    let absolute = check_target(method_token, target, host)?;
    if http10 && hop.chunked {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    let mut host_buf = [0u8; 255];
    let seen = see(
        method_token,
        target,
        absolute.or(host),
        req.headers,
        wanted.path_room,
        &mut host_buf,
    )?;
    let (forwarding, decision) = route(&seen)?;
    let sticky_cookie = forwarding.sticky_cookie;
    let request = Request {
        method: Method::from_token(method_token),
        http10,
        framing: hop.framing().unwrap_or(Framing::Empty),
        keep_alive: !hop.close && (!http10 || hop.keep_alive),
        upgrade: !http10 && hop.upgrade && hop.has_upgrade_header,
        head_len,
        sticky: sticky_cookie.and_then(|name| sticky_token(req.headers, name)),
        id: id.map_or(IdFrom::Off, |id| id_from(input, req.headers, id.name)),
        hash_source: (forwarding.hash_key)
            .and_then(|key| hash_source(req.headers, key))
            .map(|value| Span::within(input, value)),
    };
    let forward = Forward {
        hop: &hop,
        request: &request,
        host,
        client,
        id,
        https: wanted.https,
        client_cert: wanted.client_cert,
        rewrite: forwarding.rewrite,
        sent_path: seen.sent_path,
    };
    write_upstream_head(head, req.headers, &forward, out)?;
    Ok(Some((request, decision)))
}

/// What the route table sees: the host of `authority` (an absolute-form target's, else
/// `Host`'s) in lower case without port or trailing dot (into `host_buf`), and the path
/// normalised into `path_room` when routes look at paths.
fn see<'a>(
    method: &'a str,
    target: &'a [u8],
    authority: Option<&'a [u8]>,
    headers: &'a [httparse::Header<'a>],
    path_room: Option<&'a mut [u8]>,
    host_buf: &'a mut [u8; 255],
) -> Result<Seen<'a>, HeadError> {
    let (sent_path, query) =
        path::split_target(target).ok_or(HeadError::Malformed("bad request target"))?;
    let authority = authority.map_or(&b""[..], <[u8]>::trim_ascii);
    let name = authority_host(authority);
    // Longer than any DNS name: cutting it would match a route it does not name.
    let host = host_buf
        .get_mut(..name.len())
        .ok_or(HeadError::Malformed("host name longer than 255 bytes"))?;
    host.copy_from_slice(name);
    host.make_ascii_lowercase();
    let routed_path = if sent_path.is_empty() {
        b"/"
    } else {
        sent_path
    };
    let path = match path_room {
        None => routed_path,
        Some(_) if sent_path == b"*" || path::is_normal(routed_path) => routed_path,
        Some(room) => {
            path::normalise(routed_path, room).map_err(|e| HeadError::Malformed(e.why()))?
        }
    };
    Ok(Seen {
        method,
        host,
        authority,
        path,
        sent_path,
        query,
        headers,
    })
}

/// Runs `f` over what the route table sees of a head that was parsed before (a redirect's
/// `Location` is built from it when the answer is written).
pub fn with_seen<R>(input: &[u8], f: impl FnOnce(&Seen) -> R) -> Option<R> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    req.parse(input).ok()?;
    let host = single_host(req.headers, req.version == Some(0)).ok()?;
    let target = req.path?.as_bytes();
    let absolute = check_target(req.method?, target, host).ok()?;
    let mut host_buf = [0u8; 255];
    let seen = see(
        req.method?,
        target,
        absolute.or(host),
        req.headers,
        None,
        &mut host_buf,
    );
    Some(f(&seen.ok()?))
}

/// The host of `host[:port]`, without a trailing dot (`[::1]` stays bracketed).
fn authority_host(authority: &[u8]) -> &[u8] {
    let name = match authority.iter().rposition(|&b| b == b':') {
        Some(colon) if !authority[colon..].contains(&b']') => &authority[..colon],
        _ => authority,
    };
    name.strip_suffix(b".").unwrap_or(name)
}

/// A head over the size limit: 414 when the request line alone does not fit in the limit (a
/// target too long to parse, RFC 9112 §3), else 431 (the header section is too large).
fn too_large(input: &[u8], max_bytes: usize) -> HeadError {
    let head = head::skip_empty_lines(input);
    if head[..head.len().min(max_bytes)].contains(&b'\n') {
        HeadError::TooLarge
    } else {
        HeadError::UriTooLong
    }
}

/// HTTP/1.1 requires exactly one `Host`; HTTP/1.0 allows none. Its value must be empty or
/// `uri-host [":" port]` (RFC 9112 §3.2). Returns its value.
fn single_host<'a>(
    headers: &[httparse::Header<'a>],
    http10: bool,
) -> Result<Option<&'a [u8]>, HeadError> {
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("duplicate Host")),
        (None, _) if !http10 => Err(HeadError::Malformed("missing Host")),
        (Some(h), _) if !valid_host(h.value.trim_ascii()) => Err(HeadError::Malformed("bad Host")),
        (host, _) => Ok(host.map(|h| h.value)),
    }
}

/// An empty `Host` (allowed for targets without an authority), or a valid authority with a
/// non-empty host.
fn valid_host(value: &[u8]) -> bool {
    value.is_empty() || authority(value).is_some_and(|(name, _)| !name.is_empty())
}

/// Splits `uri-host [":" port]` (RFC 3986 §3.2.2, §3.2.3) into host and port: an IP literal in
/// brackets, or a reg-name / IPv4 address (unreserved, sub-delims and `%`); the port digits
/// only. `None` when it is neither.
fn authority(value: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let end = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')? + 1;
        let literal = &value[1..end - 1];
        let literal_char = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
        if literal.is_empty() || !literal.iter().all(literal_char) {
            return None;
        }
        end
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let reg_name_char = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
        if !value[..end].iter().all(reg_name_char) {
            return None;
        }
        end
    };
    let (name, rest) = value.split_at(end);
    match rest {
        [] => Some((name, None)),
        [b':', port @ ..] if port.iter().all(u8::is_ascii_digit) => Some((name, Some(port))),
        _ => None,
    }
}

/// The request target must have the form its method uses (RFC 9112 §3.2): origin-form, `*`
/// for OPTIONS only, or an absolute `http`/`https` URI (CONNECT's authority-form was refused
/// before). An absolute-form target must name the authority `Host` names: the backend, as an
/// origin server, goes by the target (§3.2.2), while lb-mio forwards `Host` unchanged and
/// balances, logs and sets `X-Forwarded-Host` by it, so the two must not disagree. Returns an
/// absolute-form target's authority: routes go by it.
fn check_target<'a>(
    method: &str,
    target: &'a [u8],
    host: Option<&[u8]>,
) -> Result<Option<&'a [u8]>, HeadError> {
    let bad = |why| Err(HeadError::Malformed(why));
    match target {
        [b'/', ..] => return Ok(None),
        b"*" if method == "OPTIONS" => return Ok(None),
        b"*" => return bad("asterisk-form target without OPTIONS"),
        _ => {}
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return bad("bad request target");
    };
    let scheme = &target[..scheme_end];
    let default_port: &[u8] = if scheme.eq_ignore_ascii_case(b"http") {
        b"80"
    } else if scheme.eq_ignore_ascii_case(b"https") {
        b"443"
    } else {
        return bad("request target scheme is not http or https");
    };
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if rest[..end].contains(&b'@') {
        return bad("userinfo in the request target");
    }
    let Some((name, port)) = authority(&rest[..end]).filter(|(name, _)| !name.is_empty()) else {
        return bad("bad authority in the request target");
    };
    // An empty port, or the scheme's default one, is the same as none (RFC 9110 §4.2.3).
    fn normal<'a>(port: Option<&'a [u8]>, default: &[u8]) -> Option<&'a [u8]> {
        port.filter(|p| !p.is_empty() && *p != default)
    }
    let same = |host: &[u8]| {
        authority(host.trim_ascii()).is_some_and(|(host_name, host_port)| {
            host_name.eq_ignore_ascii_case(name)
                && normal(host_port, default_port) == normal(port, default_port)
        })
    };
    match host {
        Some(host) if !same(host) => bad("Host differs from the request target"),
        _ => Ok(Some(&rest[..end])),
    }
}

/// Headers lb-mio sets itself; the client's copies are replaced (`X-Forwarded-For` extended).
fn is_forwarding_header(name: &str) -> bool {
    FORWARDING_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The `X-Forwarded-*` headers lb-mio writes.
pub const FORWARDING_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-client-verify",
    "x-client-subject",
];

/// What decides the head the backend gets besides the client's head.
struct Forward<'a> {
    hop: &'a HopHeaders<'a>,
    request: &'a Request,
    host: Option<&'a [u8]>,
    client: IpAddr,
    id: Option<IdHeader<'a>>,
    https: bool,
    client_cert: Option<Option<&'a str>>,
    rewrite: Option<&'a Rewrite>,
    sent_path: &'a [u8],
}

impl Forward<'_> {
    /// The fresh request id to write, when the client's is not kept.
    fn fresh_id(&self) -> Option<IdHeader<'_>> {
        self.id
            .filter(|_| matches!(self.request.id, IdFrom::Fresh | IdFrom::Replaced))
    }
}

fn write_upstream_head(
    head: &[u8],
    headers: &[httparse::Header],
    fwd: &Forward,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    let request = fwd.request;
    let fresh = fwd.fresh_id();
    let line = &head[..head::first_line_len(head)];
    match fwd.rewrite.filter(|r| r.changes_path()) {
        Some(rewrite) => {
            rewrite::put_request_line(out, line, path_at(line, fwd.sent_path), rewrite)?
        }
        None => head::put_all(out, line)?,
    }
    let rules = fwd.rewrite.map(|r| &r.request);
    for h in headers {
        if rules.is_some_and(|rules| rules.drops(h.name.as_bytes())) {
            continue;
        }
        let is_id = fwd
            .id
            .is_some_and(|id| h.name.eq_ignore_ascii_case(id.name));
        // The id is end to end whatever `Connection` says: the client's own goes on (a fresh
        // one replaces it below when it is not kept).
        let copied = if is_id {
            fresh.is_none()
        } else {
            !fwd.hop.is_hop_by_hop(h.name, request.upgrade) && !is_forwarding_header(h.name)
        };
        if copied {
            head::copy_header_line(head, h, out)?;
        }
    }
    write_forwarded_for(headers, fwd.client, out)?;
    let proto: &[u8] = if fwd.https { b"https" } else { b"http" };
    head::put_header(out, b"X-Forwarded-Proto", proto)?;
    match fwd.client_cert {
        None => {}
        Some(None) => head::put_header(out, b"X-Client-Verify", b"NONE")?,
        Some(Some(subject)) => {
            head::put_header(out, b"X-Client-Verify", b"SUCCESS")?;
            head::put_header(out, b"X-Client-Subject", subject.as_bytes())?;
        }
    }
    if let Some(host) = fwd.host {
        head::put_header(out, b"X-Forwarded-Host", host)?;
    }
    if let Some(id) = fresh {
        head::put_header(out, id.name.as_bytes(), id.fresh)?;
    }
    if let Some(rules) = rules {
        rules.put(out)?;
    }
    if request.upgrade {
        head::put_header(out, b"Connection", b"upgrade")?;
    } else if request.http10 {
        // Ask an HTTP/1.0 backend to keep the upstream connection open for reuse.
        head::put_header(out, b"Connection", b"keep-alive")?;
    }
    head::put_all(out, b"\r\n")
}

/// Where the path is in the request line (`split_target` gives it as a slice of the target, an
/// empty one right after an absolute-form target's authority when it has no path).
fn path_at(line: &[u8], sent_path: &[u8]) -> (usize, usize) {
    let start = Span::within(line, sent_path).at;
    (start, start + sent_path.len())
}

/// `X-Forwarded-For: <what the client sent>, <client address>` as one header.
fn write_forwarded_for(
    headers: &[httparse::Header],
    client: IpAddr,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    head::put_all(out, b"X-Forwarded-For: ")?;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        head::put_all(out, h.value)?;
        head::put_all(out, b", ")?;
    }
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    // 48 bytes hold any IPv6 address in text form, so this write cannot fall short.
    let _ = write!(cursor, "{}", client.to_canonical());
    let len = cursor.position() as usize;
    head::put_all(out, &text[..len])?;
    head::put_all(out, b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{BufferPool, BUF_SIZE};
    use crate::http::testing::{head_end, show};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 16,
    };
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    /// Parses with the given limits and client; returns the result and the forwarded head.
    fn parse_limited(
        input: &[u8],
        limits: HeadLimits,
        client: IpAddr,
    ) -> (Result<Option<Request>, HeadError>, Vec<u8>) {
        let mut out = BufferPool::new(0).take();
        let result = parse(input, limits, client, &mut out);
        (result, out.data().to_vec())
    }

    fn run(input: &[u8]) -> (Result<Option<Request>, HeadError>, Vec<u8>) {
        parse_limited(input, LIMITS, CLIENT)
    }

    /// Parses with `X-Request-Id` on and fresh id `new-id`; returns the id source and the
    /// forwarded head.
    fn with_id(input: &[u8]) -> (IdFrom, String) {
        let mut out = BufferPool::new(0).take();
        let id = IdHeader {
            name: "X-Request-Id",
            fresh: b"new-id",
        };
        let wanted = Wanted {
            id: Some(id),
            ..Wanted::default()
        };
        let request = super::parse_with(input, LIMITS, CLIENT, wanted, &mut out)
            .unwrap()
            .unwrap();
        (request.id, String::from_utf8(out.data().to_vec()).unwrap())
    }

    #[test]
    fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
        let (from, head) = with_id(b"GET / HTTP/1.1\r\nHost: h\r\nx-request-id: abc-1\r\n\r\n");
        assert_eq!(from, IdFrom::Client(Span { at: 39, len: 5 }));
        assert!(head.contains("\r\nx-request-id: abc-1\r\n"), "{head}");
        assert!(!head.contains("new-id"), "{head}");

        let (from, head) = with_id(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(from, IdFrom::Fresh);
        assert!(head.ends_with("\r\nX-Request-Id: new-id\r\n\r\n"), "{head}");

        let long = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: {}\r\n\r\n",
            "x".repeat(129)
        );
        // Named in Connection, it still goes on: ids are end to end.
        let (from, head) = with_id(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Request-Id\r\nX-Request-Id: abc\r\n\r\n",
        );
        assert!(matches!(from, IdFrom::Client(_)));
        assert!(head.contains("\r\nX-Request-Id: abc\r\n"), "{head}");

        let twice = "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n";
        for input in [long.as_str(), twice] {
            let (from, head) = with_id(input.as_bytes());
            assert_eq!(from, IdFrom::Replaced, "{input}");
            assert_eq!(head.matches("X-Request-Id").count(), 1, "{head}");
            assert!(head.contains("X-Request-Id: new-id\r\n"), "{head}");
        }
    }

    // ---- What the backend gets, byte for byte -------------------------------------------

    const FORWARDED: &[(&str, &[u8], &[u8])] = &[
        (
            "minimal GET gets the three X-Forwarded headers",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\
              X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: example.com\r\n\r\n",
        ),
        (
            "name casing, spacing, trailing blanks, order and duplicates are kept",
            b"POST /a/b?c=d&e HTTP/1.1\r\nhOsT:example.com\r\nX-Dup: 1\r\n\
              content-LENGTH:   3  \r\nX-Dup:\t2\t\r\nX-Empty:\r\nX-Blank:   \r\n\
              X-Dup: 1\r\n\r\nabc",
            b"POST /a/b?c=d&e HTTP/1.1\r\nhOsT:example.com\r\nX-Dup: 1\r\n\
              content-LENGTH:   3  \r\nX-Dup:\t2\t\r\nX-Empty:\r\nX-Blank:   \r\n\
              X-Dup: 1\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: example.com\r\n\r\n",
        ),
        (
            "hop-by-hop headers and the headers Connection names are dropped",
            b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close, X-Secret\r\n\
              Keep-Alive: timeout=5\r\nx-secret: s\r\nProxy-Connection: keep-alive\r\n\
              TE: trailers\r\nUpgrade: websocket\r\nAccept: */*\r\n\
              X-Secret-Not: kept\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Secret-Not: kept\r\n\
              X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: h\r\n\r\n",
        ),
        (
            "client X-Forwarded-For lines are joined and extended, Proto and Host replaced",
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h:8080\r\n\
              X-Forwarded-Proto: https\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\
              X-FORWARDED-HOST: evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h:8080\r\n\
              X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7\r\n\
              X-Forwarded-Proto: http\r\nX-Forwarded-Host: h:8080\r\n\r\n",
        ),
        (
            "an upgrade keeps Upgrade and says Connection: upgrade",
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: k==\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k==\r\n\
              X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: h\r\nConnection: upgrade\r\n\r\n",
        ),
        (
            "HTTP/1.0 without Host: no X-Forwarded-Host, backend asked for keep-alive",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nX-Forwarded-For: 192.0.2.7\r\n\
              X-Forwarded-Proto: http\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            "HTTP/1.0 cannot upgrade: Upgrade dropped",
            b"GET / HTTP/1.0\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n\
              X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\
              Connection: keep-alive\r\n\r\n",
        ),
        (
            "chunked request keeps Transfer-Encoding",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\
              X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: h\r\n\r\n",
        ),
        (
            "obs-text in a value and an absolute-form target pass unchanged",
            b"GET http://h/p%20q HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\n\r\n",
            b"GET http://h/p%20q HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\n\
              X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
              X-Forwarded-Host: h\r\n\r\n",
        ),
        (
            "empty lines before the request line are skipped, not forwarded",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n\
              X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n",
        ),
    ];

    #[test]
    fn forwarded_heads_are_exact() {
        for &(name, input, want) in FORWARDED {
            let (result, out) = run(input);
            let request = result
                .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                .unwrap_or_else(|| panic!("{name}: partial"));
            assert_eq!(request.head_len, head_end(input), "{name}: head_len");
            assert_eq!(show(&out), show(want), "{name}");
        }
    }

    #[test]
    fn client_address_is_written_canonically() {
        let rows: [(IpAddr, &str); 3] = [
            (IpAddr::V6(Ipv6Addr::LOCALHOST), "::1"),
            (IpAddr::V6("2001:db8::17".parse().unwrap()), "2001:db8::17"),
            (
                IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
                "10.1.2.3",
            ),
        ];
        for (client, text) in rows {
            let (result, out) = parse_limited(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", LIMITS, client);
            assert!(matches!(result, Ok(Some(_))), "{client}");
            let want = format!("\r\nX-Forwarded-For: {text}\r\n");
            assert!(show(&out).contains(&want), "{client}: {}", show(&out));
        }
    }

    // ---- What the proxy decides about the request ---------------------------------------

    /// (name, input, method, http10, framing, keep_alive, upgrade)
    type Decision = (
        &'static str,
        &'static [u8],
        Method,
        bool,
        Framing,
        bool,
        bool,
    );

    const DECISIONS: &[Decision] = &[
        (
            "HTTP/1.1 GET is kept alive",
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "HTTP/1.1 with Connection: close",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            false,
            false,
        ),
        (
            "close wins over keep-alive in one list",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, CLOSE\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            false,
            false,
        ),
        (
            "close in a second Connection line",
            b"GET / HTTP/1.1\r\nConnection: x-a\r\nHost: h\r\nconnection: close\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            false,
            false,
        ),
        (
            "HTTP/1.0 closes by default",
            b"GET / HTTP/1.0\r\n\r\n",
            Method::Get,
            true,
            Framing::Empty,
            false,
            false,
        ),
        (
            "HTTP/1.0 with keep-alive",
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            Method::Get,
            true,
            Framing::Empty,
            true,
            false,
        ),
        (
            "HTTP/1.0 with keep-alive and close",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            Method::Get,
            true,
            Framing::Empty,
            false,
            false,
        ),
        (
            "HTTP/1.0 with a Content-Length body",
            b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\nbody",
            Method::Post,
            true,
            Framing::Length(4),
            false,
            false,
        ),
        (
            "Content-Length body",
            b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
            Method::Put,
            false,
            Framing::Length(11),
            true,
            false,
        ),
        (
            "Content-Length: 0",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            Method::Post,
            false,
            Framing::Length(0),
            true,
            false,
        ),
        (
            "Content-Length with 18 digits",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999999999\r\n\r\n",
            Method::Post,
            false,
            Framing::Length(999_999_999_999_999_999),
            true,
            false,
        ),
        (
            "Content-Length with leading zeros",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n",
            Method::Post,
            false,
            Framing::Length(7),
            true,
            false,
        ),
        (
            "chunked body",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Post,
            false,
            Framing::Chunked,
            true,
            false,
        ),
        (
            "chunked is case-insensitive and may have blanks and empty items",
            b"PATCH / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , CHUNKED ,\r\n\r\n",
            Method::Patch,
            false,
            Framing::Chunked,
            true,
            false,
        ),
        (
            "upgrade needs Connection: upgrade and Upgrade",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, upgrade\r\nUpgrade: h2c\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            true,
        ),
        (
            "Upgrade without Connection: upgrade is no upgrade",
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "Connection: upgrade without Upgrade is no upgrade",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "HTTP/1.0 never upgrades",
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            Method::Get,
            true,
            Framing::Empty,
            false,
            false,
        ),
        (
            "HEAD",
            b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Head,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "DELETE",
            b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Delete,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Options,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "TRACE",
            b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Trace,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "methods are case-sensitive",
            b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Other,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "extension method",
            b"PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n",
            Method::Other,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "an empty Host is a Host",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            false,
        ),
        (
            "exactly 16 Connection tokens",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\r\n\r\n",
            Method::Get,
            false,
            Framing::Empty,
            true,
            false,
        ),
    ];

    #[test]
    fn hash_sources_are_found_in_headers_and_cookies() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nX-User: alice\r\nCookie: a=1; sid=xyz\r\n\r\n";
        let found = |key: HashKey| {
            let forwarding = Forwarding {
                hash_key: Some(&key),
                ..Forwarding::default()
            };
            let mut out = BufferPool::new(0).take();
            let wanted = Wanted::default();
            let request = parse_routed(head, LIMITS, CLIENT, wanted, &mut out, |_| {
                Ok((forwarding, ()))
            });
            let span = request.unwrap().unwrap().0.hash_source;
            span.map(|span| span.of(head).to_vec())
        };
        assert_eq!(
            found(HashKey::Header("x-user".into())),
            Some(b"alice".to_vec())
        );
        assert_eq!(found(HashKey::Cookie("sid".into())), Some(b"xyz".to_vec()));
        assert_eq!(found(HashKey::Cookie("none".into())), None);
        assert_eq!(found(HashKey::ClientIp), None);
        let (plain, _) = run(head);
        assert_eq!(plain.unwrap().unwrap().hash_source, None, "only when asked");
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let in_pool = |pool: &str, cookie: &str| {
            let input = format!("GET / HTTP/1.1\r\nHost: h\r\nCookie: {cookie}\r\n\r\n");
            let name = sticky_cookie(pool);
            let forwarding = Forwarding {
                sticky_cookie: Some(&name),
                ..Forwarding::default()
            };
            let mut out = BufferPool::new(0).take();
            let parsed = parse_routed(
                input.as_bytes(),
                LIMITS,
                CLIENT,
                Wanted::default(),
                &mut out,
                |_| Ok((forwarding, ())),
            );
            parsed.unwrap().unwrap().0.sticky
        };
        let parsed = |cookie: &str| in_pool("default", cookie);
        assert_eq!(parsed("a=1; lbmio=00000000000000ff; b=2"), Some(255));
        // Each pool reads its own cookie only.
        let both = "lbmio=00000000000000ff; lbmio_api=0000000000000001";
        assert_eq!(in_pool("api", both), Some(1));
        assert_eq!(in_pool("default", both), Some(255));
        assert_eq!(in_pool("cart", both), None);
        assert_eq!(parsed("lbmio=00000000000000FF"), Some(255));
        assert_eq!(parsed("xlbmio=00000000000000ff"), None);
        assert_eq!(parsed("lbmio=ff"), None, "not 16 digits");
        assert_eq!(parsed("lbmio=zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn request_decisions() {
        for &(name, input, method, http10, framing, keep_alive, upgrade) in DECISIONS {
            let (result, out) = run(input);
            let got = result
                .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                .unwrap_or_else(|| panic!("{name}: partial"));
            let want = Request {
                method,
                http10,
                framing,
                keep_alive,
                upgrade,
                head_len: head_end(input),
                sticky: None,
                id: IdFrom::Off,
                hash_source: None,
            };
            assert_eq!(got, want, "{name}");
            assert!(out.ends_with(b"\r\n\r\n"), "{name}: {}", show(&out));
        }
    }

    #[test]
    fn idempotent_methods() {
        use Method::*;
        for (method, idempotent) in [
            (Get, true),
            (Head, true),
            (Put, true),
            (Delete, true),
            (Options, true),
            (Trace, true),
            (Post, false),
            (Patch, false),
            (Other, false),
        ] {
            assert_eq!(method.is_idempotent(), idempotent, "{method:?}");
        }
    }

    // ---- Refused heads ---------------------------------------------------------------------

    const BAD_CL: HeadError = HeadError::Malformed("bad Content-Length");
    const NOT_CHUNKED: HeadError =
        HeadError::Malformed("Transfer-Encoding does not end in chunked");
    const OTHER_CODING: HeadError = HeadError::NotImplemented("transfer coding other than chunked");
    const CL_AND_TE: HeadError = HeadError::Malformed("Content-Length with Transfer-Encoding");
    const BARE_LF: HeadError = HeadError::Malformed("bare LF");
    const BAD_NAME: HeadError = HeadError::Malformed("bad header name");
    const BAD_VALUE: HeadError = HeadError::Malformed("bad header value");
    const BAD_TOKEN: HeadError = HeadError::Malformed("bad token");
    const BAD_VERSION: HeadError = HeadError::Malformed("bad version");
    const BARE_LF_OR_CR: HeadError = HeadError::Malformed("bad line ending");

    const REFUSED: &[(&str, &[u8], HeadError)] = &[
        // Content-Length
        (
            "duplicate Content-Length, same value",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            HeadError::Malformed("duplicate Content-Length"),
        ),
        (
            "duplicate Content-Length, other casing and value",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
            HeadError::Malformed("duplicate Content-Length"),
        ),
        (
            "comma-joined Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
            BAD_CL,
        ),
        (
            "signed Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
            BAD_CL,
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            BAD_CL,
        ),
        (
            "hex Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
            BAD_CL,
        ),
        (
            "Content-Length with a trailing letter",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5a\r\n\r\n",
            BAD_CL,
        ),
        (
            "Content-Length with an inner space",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
            BAD_CL,
        ),
        (
            "Content-Length with a decimal point",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1.0\r\n\r\n",
            BAD_CL,
        ),
        (
            "empty Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            BAD_CL,
        ),
        (
            "blank Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:   \r\n\r\n",
            BAD_CL,
        ),
        (
            "Content-Length with 19 digits",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000000000000\r\n\r\n",
            BAD_CL,
        ),
        (
            "Content-Length with non-ASCII digits",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \u{0665}\r\n\r\n".as_bytes(),
            BAD_CL,
        ),
        // Transfer-Encoding
        (
            "Content-Length then Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            CL_AND_TE,
        ),
        (
            "Transfer-Encoding then Content-Length",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            CL_AND_TE,
        ),
        (
            "Transfer-Encoding not chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "Transfer-Encoding with chunked not last",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "Transfer-Encoding: identity",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "empty Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "Transfer-Encoding of commas only",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , ,\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "Transfer-Encoding chunked with a suffix",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "Transfer-Encoding chunked with a parameter",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
            NOT_CHUNKED,
        ),
        (
            "gzip then chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            OTHER_CODING,
        ),
        (
            "chunked twice",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            OTHER_CODING,
        ),
        (
            "two Transfer-Encoding lines",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Malformed("duplicate Transfer-Encoding"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Malformed("Transfer-Encoding in HTTP/1.0"),
        ),
        // Line endings and folding
        (
            "bare LF after the request line",
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
            BARE_LF,
        ),
        (
            "bare LF after a header",
            b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
            BARE_LF,
        ),
        (
            "bare LF ending the head",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            BARE_LF,
        ),
        (
            "bare LFs only",
            b"GET / HTTP/1.1\nHost: h\n\n",
            BARE_LF,
        ),
        (
            "bare LF before the request line",
            b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
            BARE_LF,
        ),
        (
            "bare CR in a value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\rc\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "bare CR ending a header",
            b"GET / HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "obs-fold with a space",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n",
            BAD_NAME,
        ),
        (
            "obs-fold with a tab",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\tc\r\n\r\n",
            BAD_NAME,
        ),
        (
            "whitespace before the first header",
            b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
            BAD_NAME,
        ),
        // Control characters and bad names
        (
            "NUL in a value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\0c\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "control character in a value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\x01c\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "escape in a value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \x1b[31m\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "DEL in a value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\x7fc\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "control character in a name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\x01A: b\r\n\r\n",
            BAD_NAME,
        ),
        (
            "NUL in a name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\0A: b\r\n\r\n",
            BAD_NAME,
        ),
        (
            "DEL in a name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\x7fA: b\r\n\r\n",
            BAD_NAME,
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            BAD_NAME,
        ),
        (
            "tab before the colon",
            b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n",
            BAD_NAME,
        ),
        (
            "empty header name",
            b"GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n",
            BAD_NAME,
        ),
        (
            "header line without a colon",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n",
            BAD_NAME,
        ),
        (
            "non-ASCII in a name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-\xe9: b\r\n\r\n",
            BAD_NAME,
        ),
        // Request line
        (
            "two spaces after the method",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            BAD_TOKEN,
        ),
        (
            "space in the target",
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            BAD_VERSION,
        ),
        (
            "control character in the target",
            b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n",
            BAD_TOKEN,
        ),
        (
            "HTTP/2.0",
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            BAD_VERSION,
        ),
        (
            "HTTP/1.2",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
            BAD_VERSION,
        ),
        (
            "lower-case version",
            b"GET / http/1.1\r\nHost: h\r\n\r\n",
            BAD_VERSION,
        ),
        (
            "HTTP/0.9 request line",
            b"GET /\r\n\r\n",
            BAD_TOKEN,
        ),
        (
            "trailing space after the version",
            b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
            BARE_LF_OR_CR,
        ),
        (
            "a response instead of a request",
            b"HTTP/1.1 200 OK\r\n\r\n",
            BAD_TOKEN,
        ),
        // Host
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
            HeadError::Malformed("missing Host"),
        ),
        (
            "HTTP/1.1 without any header",
            b"GET / HTTP/1.1\r\n\r\n",
            HeadError::Malformed("missing Host"),
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            HeadError::Malformed("duplicate Host"),
        ),
        (
            "two identical Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            HeadError::Malformed("duplicate Host"),
        ),
        (
            "two Host headers in HTTP/1.0",
            b"GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n",
            HeadError::Malformed("duplicate Host"),
        ),
        // Connection
        (
            "17 Connection tokens",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\r\n\r\n",
            HeadError::Malformed("too many Connection tokens"),
        ),
        (
            "17 Connection tokens over two lines",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a,b,c,d,e,f,g,h,i\r\n\
              Connection: j,k,l,m,n,o,p,q\r\n\r\n",
            HeadError::Malformed("too many Connection tokens"),
        ),
        (
            "Connection naming Content-Length (would hide the body from the backend)",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: Content-Length\r\n\r\nabc",
            HeadError::Malformed("Connection names an end-to-end header"),
        ),
        (
            "Connection naming Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close, transfer-encoding\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
            HeadError::Malformed("Connection names an end-to-end header"),
        ),
        (
            "Connection naming Host",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: HOST\r\n\r\n",
            HeadError::Malformed("Connection names an end-to-end header"),
        ),
        // Not implemented
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            HeadError::NotImplemented("CONNECT"),
        ),
        (
            "CONNECT in HTTP/1.0",
            b"CONNECT example.com:443 HTTP/1.0\r\n\r\n",
            HeadError::NotImplemented("CONNECT"),
        ),
    ];

    #[test]
    fn refused_heads() {
        let mut wrong = Vec::new();
        for &(name, input, want) in REFUSED {
            let (result, out) = run(input);
            if result != Err(want) || !out.is_empty() {
                wrong.push(format!("{name}: got {result:?}, wrote {:?}", show(&out)));
            }
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    }

    #[test]
    fn target_forms_and_host_values() {
        use HeadError::Malformed;
        let rows: &[(&str, &[u8], Result<(), HeadError>)] = &[
            ("origin-form", b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", Ok(())),
            (
                "OPTIONS *",
                b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
                Ok(()),
            ),
            (
                "GET *",
                b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("asterisk-form target without OPTIONS")),
            ),
            (
                "OPTIONS */x",
                b"OPTIONS */x HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("bad request target")),
            ),
            (
                "authority-form with GET",
                b"GET h:80 HTTP/1.1\r\nHost: h:80\r\n\r\n",
                Err(Malformed("bad request target")),
            ),
            (
                "relative target",
                b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("bad request target")),
            ),
            (
                "absolute-form, same Host",
                b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
                Ok(()),
            ),
            (
                "absolute-form without a path",
                b"GET http://h:8080 HTTP/1.1\r\nHost: h:8080\r\n\r\n",
                Ok(()),
            ),
            (
                "absolute-form, case and default ports differ",
                b"GET HTTPS://H.example:/a HTTP/1.1\r\nHost: h.EXAMPLE:443\r\n\r\n",
                Ok(()),
            ),
            (
                "absolute-form, IPv6 literal",
                b"GET http://[::1]:81/ HTTP/1.1\r\nHost: [::1]:81\r\n\r\n",
                Ok(()),
            ),
            (
                "absolute-form in HTTP/1.0 without Host",
                b"GET http://h/a HTTP/1.0\r\n\r\n",
                Ok(()),
            ),
            (
                "absolute-form, other Host",
                b"GET http://h/a HTTP/1.1\r\nHost: evil\r\n\r\n",
                Err(Malformed("Host differs from the request target")),
            ),
            (
                "absolute-form, other port",
                b"GET http://h:8080/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("Host differs from the request target")),
            ),
            (
                "absolute-form, http default port is not https's",
                b"GET https://h:80/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("Host differs from the request target")),
            ),
            (
                "absolute-form, empty Host",
                b"GET http://h/ HTTP/1.1\r\nHost:\r\n\r\n",
                Err(Malformed("Host differs from the request target")),
            ),
            (
                "absolute-form with userinfo",
                b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("userinfo in the request target")),
            ),
            (
                "absolute-form with an empty host",
                b"GET http:///a HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("bad authority in the request target")),
            ),
            (
                "absolute-form with a bad port",
                b"GET http://h:x/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("bad authority in the request target")),
            ),
            (
                "absolute-form, other scheme",
                b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(Malformed("request target scheme is not http or https")),
            ),
            ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Ok(())),
            (
                "Host with sub-delims, IPv4 and port",
                b"GET / HTTP/1.1\r\nHost: a-b_c~d!$&'()*+,;=.1.2.3:0080\r\n\r\n",
                Ok(()),
            ),
            (
                "Host with an empty port",
                b"GET / HTTP/1.1\r\nHost: h:\r\n\r\n",
                Ok(()),
            ),
            (
                "Host list",
                b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with a path",
                b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with userinfo",
                b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with a letter in the port",
                b"GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with a port only",
                b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with an unclosed IP literal",
                b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
            (
                "Host with obs-text",
                b"GET / HTTP/1.1\r\nHost: caf\xe9\r\n\r\n",
                Err(Malformed("bad Host")),
            ),
        ];
        for &(name, input, want) in rows {
            let (result, out) = run(input);
            let got = result.map(|r| assert!(r.is_some(), "{name}: partial"));
            assert_eq!(got, want, "{name}");
            assert_eq!(out.is_empty(), want.is_err(), "{name}: {}", show(&out));
        }
    }

    #[test]
    fn a_request_line_over_the_limit_is_uri_too_long() {
        let limits = HeadLimits {
            max_bytes: 100,
            max_headers: 4,
        };
        let at = |input: &[u8]| parse_limited(input, limits, CLIENT).0;
        let line = |len: usize| format!("GET /{} HTTP/1.1\r\n", "u".repeat(len - 16));
        assert_eq!(line(100).len(), 100);
        // The whole line, CRLF included, fits: a long head is a header problem.
        let fits = format!("{}Host: h\r\n\r\n", line(100));
        assert_eq!(at(fits.as_bytes()), Err(HeadError::TooLarge));
        let over = format!("{}Host: h\r\n\r\n", line(101));
        assert_eq!(at(over.as_bytes()), Err(HeadError::UriTooLong));
        // Unfinished, as soon as the limit is reached.
        assert_eq!(at(&over.as_bytes()[..99]), Ok(None));
        assert_eq!(at(&over.as_bytes()[..100]), Err(HeadError::UriTooLong));
        // Empty lines before the request line do not make it longer.
        let led = format!("\r\n{}", line(90));
        assert_eq!(
            at(&[led.as_bytes(), &[b'x'; 20]].concat()),
            Err(HeadError::TooLarge)
        );
    }

    // ---- Incomplete heads ----------------------------------------------------------------

    const PARTIAL: &[(&str, &[u8])] = &[
        ("nothing", b""),
        ("empty lines only", b"\r\n\r\n"),
        ("a CR", b"\r"),
        ("part of the method", b"GE"),
        ("method and space", b"GET "),
        ("part of the target", b"GET /ind"),
        ("part of the version", b"GET / HTTP/1."),
        ("request line without LF", b"GET / HTTP/1.1\r"),
        ("request line", b"GET / HTTP/1.1\r\n"),
        ("part of a header name", b"GET / HTTP/1.1\r\nHo"),
        ("header name and colon", b"GET / HTTP/1.1\r\nHost:"),
        ("header line", b"GET / HTTP/1.1\r\nHost: h\r\n"),
        ("last CR", b"GET / HTTP/1.1\r\nHost: h\r\n\r"),
        (
            "bad Content-Length but not yet complete",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n",
        ),
        (
            "missing Host but not yet complete",
            b"GET / HTTP/1.1\r\nX-A: b\r\n",
        ),
        (
            "CONNECT but not yet complete",
            b"CONNECT h:443 HTTP/1.1\r\n",
        ),
    ];

    #[test]
    fn incomplete_heads_wait() {
        for &(name, input) in PARTIAL {
            let (result, out) = run(input);
            assert_eq!(result, Ok(None), "{name}");
            assert!(out.is_empty(), "{name}: wrote {}", show(&out));
        }
    }

    // ---- Limits -----------------------------------------------------------------------------

    /// A complete request head of exactly `len` bytes (`len` >= 40).
    fn head_of_len(len: usize) -> Vec<u8> {
        let fixed = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: \r\n\r\n".len();
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        head.resize(len - 4, b'p');
        head.extend_from_slice(b"\r\n\r\n");
        assert!(len >= fixed);
        assert_eq!(head.len(), len);
        head
    }

    #[test]
    fn size_limits() {
        let limits = HeadLimits {
            max_bytes: 100,
            max_headers: 4,
        };
        let at = |input: &[u8]| parse_limited(input, limits, CLIENT).0;

        let exact = head_of_len(100);
        assert!(matches!(at(&exact), Ok(Some(r)) if r.head_len == 100));
        let mut with_body = exact.clone();
        with_body.extend_from_slice(&[b'x'; 500]);
        assert!(
            matches!(at(&with_body), Ok(Some(r)) if r.head_len == 100),
            "bytes after the head do not count"
        );
        assert_eq!(at(&head_of_len(101)), Err(HeadError::TooLarge));
        let mut long_body = head_of_len(101);
        long_body.extend_from_slice(&[b'x'; 500]);
        assert_eq!(at(&long_body), Err(HeadError::TooLarge));

        // An incomplete head is refused once it reaches the limit, not before.
        assert_eq!(at(&exact[..99]), Ok(None));
        let mut open = exact[..96].to_vec();
        open.resize(100, b'p');
        assert_eq!(at(&open), Err(HeadError::TooLarge));
        open.push(b'p');
        assert_eq!(at(&open), Err(HeadError::TooLarge));
    }

    #[test]
    fn header_count_limit() {
        let limits = HeadLimits {
            max_bytes: 1024,
            max_headers: 4,
        };
        let four = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let five = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert!(matches!(parse_limited(four, limits, CLIENT).0, Ok(Some(_))));
        assert_eq!(
            parse_limited(five, limits, CLIENT).0,
            Err(HeadError::TooLarge)
        );
        // Even before the head is complete.
        assert_eq!(
            parse_limited(&five[..five.len() - 2], limits, CLIENT).0,
            Err(HeadError::TooLarge)
        );
        let max = HeadLimits {
            max_bytes: 8192,
            max_headers: MAX_HEADERS,
        };
        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_limited(&many, max, CLIENT).0, Ok(Some(_))));
        let mut too_many = many[..many.len() - 2].to_vec();
        too_many.extend_from_slice(b"X-last: v\r\n\r\n");
        assert_eq!(
            parse_limited(&too_many, max, CLIENT).0,
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn forwarded_head_must_fit_in_out() {
        let input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (result, want) = run(input);
        assert!(matches!(result, Ok(Some(_))));
        for room in [0, 1, want.len() - 1] {
            let mut out = BufferPool::new(0).take();
            out.put(&vec![b'.'; BUF_SIZE - room]);
            assert_eq!(
                parse(input, LIMITS, CLIENT, &mut out),
                Err(HeadError::TooLarge),
                "room {room}"
            );
        }
        let mut out = BufferPool::new(0).take();
        out.put(&vec![b'.'; BUF_SIZE - want.len()]);
        assert!(matches!(
            parse(input, LIMITS, CLIENT, &mut out),
            Ok(Some(_))
        ));
        assert!(out.is_full());
        assert!(out.data().ends_with(&want));
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let wire = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
                     GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let (first, _) = run(wire);
        let first = first.unwrap().unwrap();
        assert_eq!(first.framing, Framing::Length(3));
        let rest = &wire[first.head_len + 3..];
        let (second, out) = run(rest);
        let second = second.unwrap().unwrap();
        assert_eq!(second.head_len, rest.len());
        assert!(out.starts_with(b"GET /b HTTP/1.1\r\nHost: h\r\n"));
    }
}
