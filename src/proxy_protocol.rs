//! The PROXY protocol, versions 1 (a text line) and 2 (binary): the header a layer-4 balancer
//! puts before a client's first byte to say who the client is. lb-mio reads it from trusted
//! sources (`accept_proxy`) and writes it before requests to backends (`send_proxy`).
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>

use crate::buffer::Buffer;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first 12 bytes of every version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 line, CRLF included (spec, section 2.1).
const V1_MAX: usize = 107;
/// Longest version 2 header lb-mio reads: addresses plus room for TLVs it skips.
const V2_MAX: usize = 1024;

/// Which version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A complete header at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes; the client's own bytes follow.
    pub len: usize,
    /// The client and the address it connected to; `None` for `UNKNOWN` / `LOCAL` headers
    /// (health checks of the balancer itself), where the connection's own addresses stand.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Reads a header at the start of `input`. `Ok(None)`: not complete yet.
pub fn parse(input: &[u8]) -> Result<Option<Header>, &'static str> {
    if input.first() == Some(&b'\r') {
        parse_v2(input)
    } else {
        parse_v1(input)
    }
}

fn parse_v1(input: &[u8]) -> Result<Option<Header>, &'static str> {
    let prefix = &input[..input.len().min(6)];
    if !b"PROXY ".starts_with(prefix) {
        return Err("not a PROXY protocol header");
    }
    let Some(end) = input.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return match input.len() >= V1_MAX {
            true => Err("v1 line too long"),
            false => Ok(None),
        };
    };
    if end == 0 || input[end - 1] != b'\r' {
        return Err("v1 line does not end in CRLF");
    }
    let line = std::str::from_utf8(&input[..end - 1]).map_err(|_| "v1 line is not text")?;
    let mut fields = [""; 7]; // one more than a valid line has, so extra fields show
    let mut count = 0;
    for (slot, field) in fields.iter_mut().zip(line.split(' ')) {
        (*slot, count) = (field, count + 1);
    }
    let addrs = match fields[..count] {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| match family {
                "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
                _ => s.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
            };
            let (Some(src), Some(dst)) = (ip(src), ip(dst)) else {
                return Err("v1 address does not match its family");
            };
            Some((
                SocketAddr::new(src, v1_port(sport)?),
                SocketAddr::new(dst, v1_port(dport)?),
            ))
        }
        _ => return Err("v1 line is not PROXY TCP4|TCP6|UNKNOWN with four fields"),
    };
    Ok(Some(Header {
        len: end + 1,
        addrs,
    }))
}

/// A decimal port without sign or leading zeros.
fn v1_port(s: &str) -> Result<u16, &'static str> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    match s.parse() {
        Ok(port) if canonical || s == "0" => Ok(port),
        _ => Err("v1 port is not a number 0-65535"),
    }
}

fn parse_v2(input: &[u8]) -> Result<Option<Header>, &'static str> {
    let have = input.len().min(V2_SIGNATURE.len());
    if input[..have] != V2_SIGNATURE[..have] {
        return Err("not a PROXY protocol header");
    }
    if input.len() < 16 {
        return Ok(None);
    }
    let len = 16 + u16::from_be_bytes([input[14], input[15]]) as usize;
    if len > V2_MAX {
        return Err("v2 header too long");
    }
    if input[12] >> 4 != 2 {
        return Err("v2 version is not 2");
    }
    if input.len() < len {
        return Ok(None);
    }
    let body = &input[16..len];
    let addrs = match (input[12] & 0x0f, input[13]) {
        (0, _) => None, // LOCAL: the balancer's own connection
        (1, 0x11) if body.len() >= 12 => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&body[at..at + 4]).unwrap());
            Some(v2_pair(ip(0), ip(4), &body[8..12]))
        }
        (1, 0x21) if body.len() >= 36 => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&body[at..at + 16]).unwrap());
            Some(v2_pair(ip(0), ip(16), &body[32..36]))
        }
        (1, 0x11 | 0x21) => return Err("v2 header shorter than its addresses"),
        (1, _) => None, // UNSPEC, UDP or UNIX: nothing lb-mio can put in X-Forwarded-For
        _ => return Err("v2 command is neither LOCAL nor PROXY"),
    };
    Ok(Some(Header { len, addrs }))
}

fn v2_pair(src: IpAddr, dst: IpAddr, ports: &[u8]) -> (SocketAddr, SocketAddr) {
    let port = |at: usize| u16::from_be_bytes([ports[at], ports[at + 1]]);
    (SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2)))
}

/// Appends a header saying `src` connected to `dst`.
pub fn write(version: Version, src: SocketAddr, dst: SocketAddr, out: &mut Buffer) {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => {
            let mut line = [0u8; V1_MAX];
            let mut cursor = &mut line[..];
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let (s, d) = (src.ip(), dst.ip());
            let _ = write!(
                cursor,
                "PROXY {family} {s} {d} {} {}\r\n",
                src.port(),
                dst.port()
            );
            let left = cursor.len();
            out.put(&line[..V1_MAX - left]);
        }
        Version::V2 => {
            let (family, len): (u8, u16) = if src.is_ipv4() {
                (0x11, 12)
            } else {
                (0x21, 36)
            };
            out.put(V2_SIGNATURE);
            out.put(&[0x21, family]);
            out.put(&len.to_be_bytes());
            for addr in [src, dst] {
                match addr.ip() {
                    IpAddr::V4(ip) => out.put(&ip.octets()),
                    IpAddr::V6(ip) => out.put(&ip.octets()),
                };
            }
            out.put(&src.port().to_be_bytes());
            out.put(&dst.port().to_be_bytes());
        }
    }
}

/// The header of a connection that carries no client (health probes).
pub fn local(version: Version) -> &'static [u8] {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n",
        Version::V2 => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    }
}

/// Both addresses in one family: IPv4 when both can be, else IPv6 (v4-mapped).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canonical(src), canonical(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(src), v6(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufferPool;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn written(version: Version, src: &str, dst: &str) -> Vec<u8> {
        let mut out = BufferPool::new(0).take();
        write(version, addr(src), addr(dst), &mut out);
        out.data().to_vec()
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(
            parse(line),
            Ok(Some(Header {
                len: 41,
                addrs: Some((addr("192.0.2.7:56324"), addr("10.0.0.1:443")))
            }))
        );
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 1 65535\r\n";
        let parsed = parse(v6).unwrap().unwrap();
        assert_eq!(parsed.addrs.unwrap().0, addr("[2001:db8::7]:1"));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 x y z\r\n")
                .unwrap()
                .unwrap()
                .addrs,
            None
        );
    }

    #[test]
    fn v1_partial_lines_wait_and_bad_ones_fail() {
        for partial in [
            &b""[..],
            b"PRO",
            b"PROXY TCP4 1.2.3.4",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err("v1 line too long"));
    }

    #[test]
    fn v2_headers() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 1, 187,
        ]);
        h.extend_from_slice(b"GET");
        let parsed = parse(&h).unwrap().unwrap();
        assert_eq!(parsed.len, 28);
        assert_eq!(
            parsed.addrs,
            Some((addr("192.0.2.7:56324"), addr("10.0.0.1:443")))
        );
        for cut in 0..28 {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        // A TLV after the addresses is skipped.
        let mut tlv = h[..28].to_vec();
        tlv[15] = 12 + 4;
        tlv.extend_from_slice(&[0x04, 0, 1, 0xaa]);
        assert_eq!(parse(&tlv).unwrap().unwrap().len, 32);
        assert_eq!(parse(local(Version::V2)).unwrap().unwrap().addrs, None);
    }

    #[test]
    fn v2_bad_headers_fail() {
        let good = written(Version::V2, "1.2.3.4:1", "5.6.7.8:2");
        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        let mut bad_command = good.clone();
        bad_command[12] = 0x22;
        let mut short = good.clone();
        short[15] = 4;
        short.truncate(20);
        let mut huge = good.clone();
        huge[14] = 0xff;
        let mut bad_signature = good;
        bad_signature[5] = b'X';
        for bad in [bad_version, bad_command, short, huge, bad_signature] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn written_headers_read_back() {
        for version in [Version::V1, Version::V2] {
            for (src, dst) in [
                ("192.0.2.7:56324", "10.0.0.1:443"),
                ("[2001:db8::7]:1", "[::1]:8080"),
                ("[::ffff:192.0.2.7]:9", "10.0.0.1:80"),
            ] {
                let bytes = written(version, src, dst);
                let parsed = parse(&bytes).unwrap().unwrap();
                assert_eq!(parsed.len, bytes.len());
                let (s, d) = parsed.addrs.unwrap();
                assert_eq!(s.ip().to_canonical(), addr(src).ip().to_canonical());
                assert_eq!((s.port(), d.port()), (addr(src).port(), addr(dst).port()));
            }
        }
        assert_eq!(
            written(Version::V1, "[2001:db8::7]:1", "10.0.0.1:80"),
            b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 1 80\r\n"
        );
        assert_eq!(parse(local(Version::V1)).unwrap().unwrap().addrs, None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_an_answer_not_a_panic(bytes in proptest::collection::vec(0u8..=255, 0..200)) {
            if let Ok(Some(header)) = parse(&bytes) {
                proptest::prop_assert!(header.len <= bytes.len());
            }
        }

        #[test]
        fn any_written_header_reads_back_and_every_prefix_waits(
            src in proptest::array::uniform16(0u8..=255),
            dst in proptest::array::uniform16(0u8..=255),
            ports in (0u16..=65535, 0u16..=65535),
            v4 in proptest::bool::ANY,
            v2 in proptest::bool::ANY,
        ) {
            let ip = |b: [u8; 16]| match v4 {
                true => IpAddr::from([b[0], b[1], b[2], b[3]]),
                false => IpAddr::from(b).to_canonical(),
            };
            let (src, dst) = (SocketAddr::new(ip(src), ports.0), SocketAddr::new(ip(dst), ports.1));
            let version = if v2 { Version::V2 } else { Version::V1 };
            let mut out = BufferPool::new(0).take();
            write(version, src, dst, &mut out);
            let bytes = out.data();
            let header = parse(bytes).unwrap().unwrap();
            proptest::prop_assert_eq!(header.len, bytes.len());
            let (s, d) = header.addrs.unwrap();
            proptest::prop_assert_eq!((s.ip().to_canonical(), s.port()), (src.ip(), src.port()));
            proptest::prop_assert_eq!((d.ip().to_canonical(), d.port()), (dst.ip(), dst.port()));
            for cut in 0..bytes.len() {
                proptest::prop_assert_eq!(parse(&bytes[..cut]), Ok(None));
            }
        }
    }
}
