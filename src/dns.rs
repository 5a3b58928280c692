//! A small blocking DNS stub resolver for service discovery: A, AAAA and SRV questions over UDP
//! to one recursive resolver (again over TCP when an answer comes back truncated), each answer
//! checked against its question and parsed without trusting a byte of it. No async runtime and
//! no `getaddrinfo` (which cannot be pointed at a given server): only the discovery thread
//! calls this, never a worker.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// UDP payload size announced with EDNS(0): large enough for a few dozen addresses, small
/// enough to avoid IP fragmentation (the DNS flag day 2020 figure).
const EDNS_PAYLOAD: u16 = 1232;
/// CNAMEs followed from the asked name before giving up.
const MAX_CNAMES: usize = 8;
/// Records read per message (each takes 11 bytes or more, so a real message holds fewer).
const MAX_RECORDS: usize = 1024;
/// Compression pointers followed in one name.
const MAX_POINTERS: usize = 64;
/// Longest name on the wire (RFC 1035 §3.1).
const MAX_NAME_WIRE: usize = 255;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// No (usable) answer within the timeout.
    Timeout,
    /// The name does not exist.
    NxDomain,
    /// The server answered with another error code (2 = SERVFAIL, 5 = REFUSED, ...).
    Rcode(u8),
    /// The answer holds no address (or SRV record) for the name.
    Empty,
    /// The answer did not fit in UDP and not over TCP either.
    Truncated,
    /// A reply that is not a well-formed answer to the question asked.
    Malformed(&'static str),
    /// A name that cannot be asked (bad characters, too long).
    BadName,
    /// The socket failed (the server refused, no route, ...).
    Io(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DnsError::Timeout => write!(f, "timeout"),
            DnsError::NxDomain => write!(f, "no such name (NXDOMAIN)"),
            DnsError::Rcode(2) => write!(f, "server failure (SERVFAIL)"),
            DnsError::Rcode(5) => write!(f, "refused (REFUSED)"),
            DnsError::Rcode(n) => write!(f, "error code {n}"),
            DnsError::Empty => write!(f, "no addresses in the answer"),
            DnsError::Truncated => write!(f, "truncated answer"),
            DnsError::Malformed(why) => write!(f, "malformed answer: {why}"),
            DnsError::BadName => write!(f, "not a valid DNS name"),
            DnsError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DnsError {}

fn io_error(e: io::Error) -> DnsError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => DnsError::Timeout,
        _ => DnsError::Io(e.to_string()),
    }
}

/// A `SRV` record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lowercase, without the final dot; empty for the root (RFC 2782: "no such service").
    pub target: String,
}

/// The data of one resource record of class IN that lb-mio uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Srv(Srv),
    /// Any other type or class.
    Other,
}

/// One resource record: its owner name (lowercase, no final dot) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub data: Data,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    /// The question (name, type), when there is one.
    pub question: Option<(String, u16)>,
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

/// What a reply says about the question: the records of the asked type for the asked name
/// (CNAMEs followed), and the additional section (SRV servers often put addresses there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub records: Vec<Data>,
    pub additional: Vec<Record>,
}

/// `name` in the form names are compared in: lowercase, without the final dot. Labels are 1 to
/// 63 of `A-Z a-z 0-9 - _`, not starting or ending with `-`; at most 253 characters; the last
/// label is not all digits (so `1.2.3.256` is no host name).
pub fn check_name(name: &str) -> Result<String, DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_WIRE - 2 {
        return Err(DnsError::BadName);
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(DnsError::BadName);
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DnsError::BadName);
    }
    Ok(name.to_ascii_lowercase())
}

/// A recursive query for `name` (checked with `check_name`) of type `qtype`, with an EDNS(0)
/// record announcing `EDNS_PAYLOAD`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let name = check_name(name)?;
    let mut q = Vec::with_capacity(12 + name.len() + 2 + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: recursion desired
    for count in [1u16, 0, 0, 1] {
        q.extend_from_slice(&count.to_be_bytes());
    }
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type 41, class = UDP payload size, TTL 0 (no flags), no options.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(q)
}

/// Bounds-checked big-endian reads.
fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    match msg.get(pos..pos.wrapping_add(2)) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(DnsError::Malformed("cut short")),
    }
}

/// Appends a label to `name`, lowercase; a byte other than `a-z 0-9 - _` is written `\DDD`, so
/// two different names never read the same (a label holding a dot included).
fn push_label(name: &mut String, label: &[u8]) {
    if !name.is_empty() {
        name.push('.');
    }
    for &b in label {
        let b = b.to_ascii_lowercase();
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("\\{b:03}"));
        }
    }
}

/// The name at `pos`, and the position just after it where it is written (compression
/// pointers followed). Each pointer must go back before where the current run of labels
/// started, so the walk always ends.
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let bad = DnsError::Malformed("bad name");
    let mut name = String::new();
    let (mut pos, mut run_start) = (start, start);
    let mut end = None;
    let (mut wire, mut pointers) = (0, 0);
    loop {
        let len = usize::from(*msg.get(pos).ok_or(bad.clone())?);
        match len & 0xC0 {
            0x00 if len == 0 => return Ok((name, end.unwrap_or(pos + 1))),
            0x00 => {
                wire += len + 1;
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(bad.clone())?;
                if wire + 1 > MAX_NAME_WIRE {
                    return Err(bad);
                }
                push_label(&mut name, label);
                pos += 1 + len;
            }
            0xC0 => {
                let low = usize::from(*msg.get(pos + 1).ok_or(bad.clone())?);
                let target = ((len & 0x3F) << 8) | low;
                pointers += 1;
                if target >= run_start || pointers > MAX_POINTERS {
                    return Err(bad);
                }
                end.get_or_insert(pos + 2);
                (pos, run_start) = (target, target);
            }
            _ => return Err(bad), // 0x40 and 0x80: label types nobody uses
        }
    }
}

/// One resource record at `pos`, and the position after it.
fn read_record(msg: &[u8], pos: usize) -> Result<(Record, usize), DnsError> {
    let (name, pos) = read_name(msg, pos)?;
    let rtype = u16_at(msg, pos)?;
    let class = u16_at(msg, pos + 2)?;
    let len = usize::from(u16_at(msg, pos + 8)?);
    let start = pos + 10;
    let end = start + len;
    let rdata = msg
        .get(start..end)
        .ok_or(DnsError::Malformed("record cut short"))?;
    let bad = |why| Err(DnsError::Malformed(why));
    let data = match (class, rtype) {
        (CLASS_IN, TYPE_A) => match <[u8; 4]>::try_from(rdata) {
            Ok(octets) => Data::A(Ipv4Addr::from(octets)),
            Err(_) => return bad("A record of the wrong size"),
        },
        (CLASS_IN, TYPE_AAAA) => match <[u8; 16]>::try_from(rdata) {
            Ok(octets) => Data::Aaaa(Ipv6Addr::from(octets)),
            Err(_) => return bad("AAAA record of the wrong size"),
        },
        (CLASS_IN, TYPE_CNAME) => {
            let (target, after) = read_name(msg, start)?;
            if after != end {
                return bad("CNAME record of the wrong size");
            }
            Data::Cname(target)
        }
        (CLASS_IN, TYPE_SRV) => {
            if len < 7 {
                return bad("SRV record of the wrong size");
            }
            let (target, after) = read_name(msg, start + 6)?;
            if after != end {
                return bad("SRV record of the wrong size");
            }
            Data::Srv(Srv {
                priority: u16_at(msg, start)?,
                weight: u16_at(msg, start + 2)?,
                port: u16_at(msg, start + 4)?,
                target,
            })
        }
        _ => Data::Other,
    };
    Ok((Record { name, data }, end))
}

/// Parses a whole message. Errors on anything out of bounds; never panics.
pub fn parse_message(msg: &[u8]) -> Result<Message, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    let counts = [
        u16_at(msg, 4)?,
        u16_at(msg, 6)?,
        u16_at(msg, 8)?,
        u16_at(msg, 10)?,
    ];
    let [questions, answers, authority, additional] = counts.map(usize::from);
    if questions > 1 {
        return Err(DnsError::Malformed("more than one question"));
    }
    if answers + authority + additional > MAX_RECORDS {
        return Err(DnsError::Malformed("too many records"));
    }
    let mut pos = 12;
    let mut question = None;
    if questions == 1 {
        let (name, after) = read_name(msg, pos)?;
        question = Some((name, u16_at(msg, after)?));
        u16_at(msg, after + 2)?; // the class
        pos = after + 4;
    }
    let mut sections = [Vec::new(), Vec::new(), Vec::new()];
    for (section, count) in sections.iter_mut().zip([answers, authority, additional]) {
        for _ in 0..count {
            let (record, after) = read_record(msg, pos)?;
            section.push(record);
            pos = after;
        }
    }
    let [answers, _, additional] = sections;
    Ok(Message {
        id: u16_at(msg, 0)?,
        flags: u16_at(msg, 2)?,
        question,
        answers,
        additional,
    })
}

/// Reads `msg` as the reply to query `id` for `qname` (as `check_name` returns it) of type
/// `qtype`: it must be a response to that very question, not truncated, with no error code.
/// The records of type `qtype` are those of `qname`, or of the name its CNAME chain ends at.
pub fn read_reply(msg: &[u8], id: u16, qname: &str, qtype: u16) -> Result<Reply, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    let flags = u16_at(msg, 2)?;
    if u16_at(msg, 0)? != id {
        return Err(DnsError::Malformed("another query's answer"));
    }
    if flags & 0x8000 == 0 || (flags >> 11) & 0xF != 0 {
        return Err(DnsError::Malformed("not a response to a query"));
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Truncated);
    }
    match (flags & 0xF) as u8 {
        0 => {}
        3 => return Err(DnsError::NxDomain),
        code => return Err(DnsError::Rcode(code)),
    }
    let message = parse_message(msg)?;
    if message.question.as_ref() != Some(&(qname.to_string(), qtype)) {
        return Err(DnsError::Malformed("the answer is to another question"));
    }
    let mut name = qname.to_string();
    for _ in 0..=MAX_CNAMES {
        let owned = || message.answers.iter().filter(|r| r.name == name);
        let records: Vec<Data> = owned()
            .filter(|r| data_type(&r.data) == Some(qtype))
            .map(|r| r.data.clone())
            .collect();
        if !records.is_empty() {
            return Ok(Reply {
                records,
                additional: message.additional,
            });
        }
        let alias = owned().find_map(|r| match &r.data {
            Data::Cname(target) => Some(target.clone()),
            _ => None,
        });
        match alias {
            Some(target) => name = target,
            None => {
                return Ok(Reply {
                    records: Vec::new(),
                    additional: message.additional,
                })
            }
        }
    }
    Err(DnsError::Malformed("CNAME chain too long"))
}

fn data_type(data: &Data) -> Option<u16> {
    match data {
        Data::A(_) => Some(TYPE_A),
        Data::Aaaa(_) => Some(TYPE_AAAA),
        Data::Cname(_) => Some(TYPE_CNAME),
        Data::Srv(_) => Some(TYPE_SRV),
        Data::Other => None,
    }
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn first_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(ip)) => ip.parse::<IpAddr>().ok(),
            _ => None,
        }
        .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The system's resolver: the first `nameserver` in /etc/resolv.conf, else 127.0.0.1:53.
pub fn system_resolver() -> SocketAddr {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|text| first_nameserver(&text))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53)))
}

/// A query ID an off-path attacker cannot guess: SipHash under the process's random keys
/// (std seeds them from the OS) of a counter and the clock.
fn random_id() -> u16 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.finish() as u16
}

/// One question in flight.
struct Pending {
    id: u16,
    qtype: u16,
    query: Vec<u8>,
    result: Option<Result<Reply, DnsError>>,
    /// A reply with our ID that was not a valid answer: kept in case no valid one comes.
    rejected: Option<DnsError>,
}

/// One recursive resolver, asked over UDP (TCP for truncated answers), each lookup bounded by
/// `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolver {
    pub server: SocketAddr,
    pub timeout: Duration,
}

impl Resolver {
    /// The addresses of `host`: A and AAAA are asked at once; both must be answered (an empty
    /// answer is fine) and hold one address or more between them, or the lookup failed.
    pub fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let mut ips = Vec::new();
        for reply in self.ask(host, &[TYPE_A, TYPE_AAAA])? {
            for data in reply?.records {
                match data {
                    Data::A(v4) => ips.push(IpAddr::V4(v4)),
                    Data::Aaaa(v6) => ips.push(IpAddr::V6(v6)),
                    _ => {}
                }
            }
        }
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err(DnsError::Empty);
        }
        Ok(ips)
    }

    /// The servers an SRV name lists: the records of the lowest priority (the others are
    /// fallbacks lb-mio does not use), each target's addresses from the additional section
    /// or else looked up, with the record's port. A target that does not exist (or is `.`)
    /// adds nothing; any other failure fails the lookup, so a hiccup never drops servers.
    pub fn lookup_srv(&self, name: &str) -> Result<Vec<SocketAddr>, DnsError> {
        let reply = self
            .ask(name, &[TYPE_SRV])?
            .pop()
            .unwrap_or(Err(DnsError::Timeout))?;
        let records: Vec<&Srv> = reply
            .records
            .iter()
            .filter_map(|d| match d {
                Data::Srv(srv) => Some(srv),
                _ => None,
            })
            .collect();
        let best = records.iter().map(|s| s.priority).min();
        let mut addrs = Vec::new();
        for srv in records.iter().filter(|s| Some(s.priority) == best) {
            if srv.target.is_empty() || srv.port == 0 {
                continue;
            }
            let mut ips: Vec<IpAddr> = reply
                .additional
                .iter()
                .filter(|r| r.name == srv.target)
                .filter_map(|r| match r.data {
                    Data::A(v4) => Some(IpAddr::V4(v4)),
                    Data::Aaaa(v6) => Some(IpAddr::V6(v6)),
                    _ => None,
                })
                .collect();
            if ips.is_empty() {
                ips = match self.lookup_ip(&srv.target) {
                    Ok(ips) => ips,
                    Err(DnsError::NxDomain | DnsError::Empty | DnsError::BadName) => continue,
                    Err(e) => return Err(e),
                };
            }
            addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, srv.port)));
        }
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(DnsError::Empty);
        }
        Ok(addrs)
    }

    /// Asks the questions of type `qtypes` about `name` at once on one UDP socket, sends those
    /// still unanswered again halfway through the timeout, and takes a truncated answer again
    /// over TCP. Replies with a wrong ID, or not answering the question, are skipped (they may
    /// be forged), so only the timeout ends a wait for a valid one. One result per type.
    fn ask(&self, name: &str, qtypes: &[u16]) -> Result<Vec<Result<Reply, DnsError>>, DnsError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let resend_at = started + self.timeout / 2;
        let qname = check_name(name)?;
        let mut pending = Vec::with_capacity(qtypes.len());
        for &qtype in qtypes {
            let mut id = random_id();
            while pending.iter().any(|p: &Pending| p.id == id) {
                id = id.wrapping_add(1);
            }
            let query = build_query(id, &qname, qtype)?;
            pending.push(Pending {
                id,
                qtype,
                query,
                result: None,
                rejected: None,
            });
        }
        let local: SocketAddr = match self.server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(io_error)?;
        socket.connect(self.server).map_err(io_error)?;
        for p in &pending {
            socket.send(&p.query).map_err(io_error)?;
        }
        let mut resent = false;
        let mut buf = vec![0u8; 65_536];
        while pending.iter().any(|p| p.result.is_none()) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !resent && now >= resend_at {
                resent = true;
                for p in pending.iter().filter(|p| p.result.is_none()) {
                    socket.send(&p.query).map_err(io_error)?;
                }
            }
            let until = if resent { deadline } else { resend_at };
            let wait = until.saturating_duration_since(now);
            socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                .map_err(io_error)?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            };
            let msg = &buf[..n];
            let Ok(id) = u16_at(msg, 0) else { continue };
            let Some(p) = pending
                .iter_mut()
                .find(|p| p.id == id && p.result.is_none())
            else {
                continue;
            };
            match read_reply(msg, id, &qname, p.qtype) {
                Err(DnsError::Truncated) => {
                    p.result = Some(self.ask_tcp(&p.query, id, &qname, p.qtype, deadline))
                }
                Err(e @ DnsError::Malformed(_)) => p.rejected = Some(e),
                result => p.result = Some(result),
            }
        }
        Ok(pending
            .into_iter()
            .map(|p| {
                p.result
                    .unwrap_or_else(|| Err(p.rejected.unwrap_or(DnsError::Timeout)))
            })
            .collect())
    }

    /// The same question over TCP (two length bytes, then the message), by `deadline`.
    fn ask_tcp(
        &self,
        query: &[u8],
        id: u16,
        qname: &str,
        qtype: u16,
        deadline: Instant,
    ) -> Result<Reply, DnsError> {
        let left = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(DnsError::Timeout)
            } else {
                Ok(left)
            }
        };
        let mut stream = TcpStream::connect_timeout(&self.server, left()?).map_err(io_error)?;
        stream.set_write_timeout(Some(left()?)).map_err(io_error)?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).map_err(io_error)?;
        let mut read_exact = |buf: &mut [u8]| {
            let mut filled = 0;
            while filled < buf.len() {
                stream.set_read_timeout(Some(left()?)).map_err(io_error)?;
                match stream.read(&mut buf[filled..]) {
                    Ok(0) => return Err(DnsError::Malformed("TCP answer cut short")),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error(e)),
                }
            }
            Ok(())
        };
        let mut len = [0u8; 2];
        read_exact(&mut len)?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read_exact(&mut msg)?;
        read_reply(&msg, id, qname, qtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    /// Hand-built replies: a header, the question, then records.
    struct Packet {
        bytes: Vec<u8>,
        counts: [u16; 4],
    }

    fn name_wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    impl Packet {
        fn reply(id: u16, flags: u16, qname: &str, qtype: u16) -> Packet {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&flags.to_be_bytes());
            bytes.extend_from_slice(&[0; 8]);
            bytes.extend_from_slice(&name_wire(qname));
            bytes.extend_from_slice(&qtype.to_be_bytes());
            bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            Packet {
                bytes,
                counts: [1, 0, 0, 0],
            }
        }

        /// Adds a record to section 1 (answer), 2 (authority) or 3 (additional); `owner` is
        /// raw wire bytes (so a test can use compression pointers).
        fn record(mut self, section: usize, owner: &[u8], rtype: u16, rdata: &[u8]) -> Packet {
            self.bytes.extend_from_slice(owner);
            self.bytes.extend_from_slice(&rtype.to_be_bytes());
            self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
            self.bytes.extend_from_slice(&300u32.to_be_bytes());
            self.bytes
                .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            self.bytes.extend_from_slice(rdata);
            self.counts[section] += 1;
            self
        }

        fn answer(self, owner: &str, rtype: u16, rdata: &[u8]) -> Packet {
            self.record(1, &name_wire(owner), rtype, rdata)
        }

        fn build(mut self) -> Vec<u8> {
            for (i, count) in self.counts.iter().enumerate() {
                self.bytes[4 + 2 * i..6 + 2 * i].copy_from_slice(&count.to_be_bytes());
            }
            self.bytes
        }
    }

    const OK: u16 = 0x8180; // QR, RD, RA, NOERROR

    fn srv_rdata(priority: u16, weight: u16, port: u16, target: &str) -> Vec<u8> {
        let mut rdata = Vec::new();
        for n in [priority, weight, port] {
            rdata.extend_from_slice(&n.to_be_bytes());
        }
        rdata.extend_from_slice(&name_wire(target));
        rdata
    }

    #[test]
    fn queries_are_well_formed() {
        let q = build_query(0xBEEF, "Api.Service.Consul.", TYPE_AAAA).unwrap();
        assert_eq!(&q[..12], &[0xBE, 0xEF, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        let message = parse_message(&q).unwrap();
        assert_eq!(
            message.question,
            Some(("api.service.consul".to_string(), TYPE_AAAA))
        );
        assert_eq!(message.additional.len(), 1, "the EDNS(0) OPT record");
        assert_eq!(&q[q.len() - 11..q.len() - 6], &[0, 0, 41, 0x04, 0xD0]);
    }

    #[test]
    fn names_are_checked() {
        for good in [
            "a",
            "api.service.consul",
            "_http._tcp.x.y",
            "a-b.c1",
            "x.",
            "9a.b",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 4].join(".");
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a/b",
            "1.2.3.256",
            "10",
            long_label.as_str(),
            long_name.as_str(),
            "é.com",
        ] {
            assert_eq!(check_name(bad), Err(DnsError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn a_and_aaaa_records_are_read() {
        let msg = Packet::reply(7, OK, "api.test", TYPE_A)
            .answer("api.test", TYPE_A, &[10, 0, 0, 1])
            .answer("API.TEST", TYPE_A, &[10, 0, 0, 2])
            .answer("other.test", TYPE_A, &[10, 0, 0, 3])
            .build();
        let reply = read_reply(&msg, 7, "api.test", TYPE_A).unwrap();
        assert_eq!(
            reply.records,
            vec![
                Data::A(Ipv4Addr::new(10, 0, 0, 1)),
                Data::A(Ipv4Addr::new(10, 0, 0, 2))
            ]
        );
        let v6: Ipv6Addr = "fd00::5".parse().unwrap();
        let msg = Packet::reply(8, OK, "api.test", TYPE_AAAA)
            .answer("api.test", TYPE_AAAA, &v6.octets())
            .build();
        let reply = read_reply(&msg, 8, "api.test", TYPE_AAAA).unwrap();
        assert_eq!(reply.records, vec![Data::Aaaa(v6)]);
    }

    #[test]
    fn cname_chains_are_followed_with_compression() {
        // api.test CNAME (pointer to the question's "test" after a new label) b.test; b.test A.
        let question_test = 12 + 4; // "\x03api" then "\x04test" starts at offset 16
        let mut cname = vec![1, b'b'];
        cname.extend_from_slice(&[0xC0, question_test as u8]);
        let msg = Packet::reply(9, OK, "api.test", TYPE_A)
            .record(1, &[0xC0, 12], TYPE_CNAME, &cname)
            .answer("b.test", TYPE_A, &[10, 1, 1, 1])
            .build();
        let reply = read_reply(&msg, 9, "api.test", TYPE_A).unwrap();
        assert_eq!(reply.records, vec![Data::A(Ipv4Addr::new(10, 1, 1, 1))]);
        // A chain that ends nowhere is an empty answer; a loop is an error.
        let msg = Packet::reply(9, OK, "api.test", TYPE_A)
            .answer("api.test", TYPE_CNAME, &name_wire("b.test"))
            .build();
        assert_eq!(read_reply(&msg, 9, "api.test", TYPE_A).unwrap().records, []);
        let msg = Packet::reply(9, OK, "api.test", TYPE_A)
            .answer("api.test", TYPE_CNAME, &name_wire("b.test"))
            .answer("b.test", TYPE_CNAME, &name_wire("api.test"))
            .build();
        assert_eq!(
            read_reply(&msg, 9, "api.test", TYPE_A),
            Err(DnsError::Malformed("CNAME chain too long"))
        );
    }

    #[test]
    fn errors_flags_and_mismatches() {
        let reply = |flags| Packet::reply(1, flags, "api.test", TYPE_A).build();
        assert_eq!(
            read_reply(&reply(0x8183), 1, "api.test", TYPE_A),
            Err(DnsError::NxDomain)
        );
        assert_eq!(
            read_reply(&reply(0x8182), 1, "api.test", TYPE_A),
            Err(DnsError::Rcode(2))
        );
        assert_eq!(
            read_reply(&reply(0x8380), 1, "api.test", TYPE_A),
            Err(DnsError::Truncated)
        );
        assert!(matches!(
            read_reply(&reply(0x0100), 1, "api.test", TYPE_A),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            read_reply(&reply(OK), 2, "api.test", TYPE_A),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            read_reply(&reply(OK), 1, "other.test", TYPE_A),
            Err(DnsError::Malformed(_))
        ));
        assert!(matches!(
            read_reply(&reply(OK), 1, "api.test", TYPE_AAAA),
            Err(DnsError::Malformed(_))
        ));
        assert_eq!(
            read_reply(&reply(OK), 1, "api.test", TYPE_A).unwrap(),
            Reply::default()
        );
    }

    #[test]
    fn bad_records_and_names_are_errors() {
        let short_a = Packet::reply(1, OK, "a.test", TYPE_A)
            .answer("a.test", TYPE_A, &[1, 2, 3])
            .build();
        assert!(read_reply(&short_a, 1, "a.test", TYPE_A).is_err());
        // A pointer to itself, and one forward: both refused.
        for pointer in [[0xC0, 0x18], [0xC0, 0x40]] {
            let msg = Packet::reply(1, OK, "a.test", TYPE_A)
                .record(1, &pointer, TYPE_A, &[1, 2, 3, 4])
                .build();
            assert!(parse_message(&msg).is_err());
        }
        // Two pointers that bounce between each other.
        let mut msg = Packet::reply(1, OK, "a.test", TYPE_A).build();
        msg.truncate(12);
        msg.extend_from_slice(&[1, b'x', 0xC0, 14, 0xC0, 12]);
        assert!(parse_message(&msg).is_err());
        let cut = Packet::reply(1, OK, "a.test", TYPE_A)
            .answer("a.test", TYPE_A, &[1, 2, 3, 4])
            .build();
        for len in 0..cut.len() {
            assert!(
                read_reply(&cut[..len], 1, "a.test", TYPE_A).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn srv_records_and_escaped_labels() {
        let msg = Packet::reply(3, OK, "_http._tcp.api.test", TYPE_SRV)
            .answer(
                "_http._tcp.api.test",
                TYPE_SRV,
                &srv_rdata(10, 5, 8080, "Node1.test"),
            )
            .record(3, &name_wire("node1.test"), TYPE_A, &[10, 0, 0, 9])
            .build();
        let reply = read_reply(&msg, 3, "_http._tcp.api.test", TYPE_SRV).unwrap();
        assert_eq!(
            reply.records,
            vec![Data::Srv(Srv {
                priority: 10,
                weight: 5,
                port: 8080,
                target: "node1.test".into()
            })]
        );
        assert_eq!(
            reply.additional[0].data,
            Data::A(Ipv4Addr::new(10, 0, 0, 9))
        );
        let mut odd = String::new();
        push_label(&mut odd, b"a.b C\x00");
        assert_eq!(odd, "a\\046b\\032c\\000");
    }

    #[test]
    fn nameservers_from_resolv_conf() {
        let text = "# comment\nsearch x\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(first_nameserver(text), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(first_nameserver("search x\n"), None);
    }

    /// A UDP server on loopback answering each query with what `answer` makes of it.
    fn serve(
        answer: impl Fn(u16, &str, u16) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, Arc<AtomicBool>, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (stop2, seen2) = (Arc::clone(&stop), Arc::clone(&seen));
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                seen2.fetch_add(1, Ordering::Relaxed);
                let Ok(query) = parse_message(&buf[..n]) else {
                    continue;
                };
                let (name, qtype) = query.question.unwrap();
                for reply in answer(query.id, &name, qtype) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        (addr, stop, seen)
    }

    #[test]
    fn resolver_asks_a_and_aaaa_over_udp() {
        let (server, stop, _) = serve(|id, name, qtype| {
            // Forged replies first (another ID; another question): they must be ignored.
            let forged = Packet::reply(id ^ 1, OK, name, qtype)
                .answer(name, TYPE_A, &[6, 6, 6, 6])
                .build();
            let other = Packet::reply(id, OK, "evil.test", qtype)
                .answer("evil.test", TYPE_A, &[6, 6, 6, 6])
                .build();
            let p = Packet::reply(id, OK, name, qtype);
            let real = match qtype {
                TYPE_A => p.answer(name, TYPE_A, &[127, 0, 0, 7]).build(),
                _ => p.build(),
            };
            vec![forged, other, real]
        });
        let resolver = Resolver {
            server,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(
            resolver.lookup_ip("web.test").unwrap(),
            vec![IpAddr::from([127, 0, 0, 7])]
        );
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn resolver_times_out_resends_and_reports_errors() {
        let (server, stop, seen) = serve(|id, name, qtype| match name {
            "gone.test" => vec![Packet::reply(id, 0x8183, name, qtype).build()],
            "empty.test" => vec![Packet::reply(id, OK, name, qtype).build()],
            _ => vec![], // silent
        });
        let resolver = Resolver {
            server,
            timeout: Duration::from_millis(200),
        };
        let started = Instant::now();
        assert_eq!(resolver.lookup_ip("quiet.test"), Err(DnsError::Timeout));
        assert!(started.elapsed() < Duration::from_millis(600));
        assert_eq!(
            seen.load(Ordering::Relaxed),
            4,
            "A and AAAA, each sent twice"
        );
        assert_eq!(resolver.lookup_ip("gone.test"), Err(DnsError::NxDomain));
        assert_eq!(resolver.lookup_ip("empty.test"), Err(DnsError::Empty));
        assert_eq!(resolver.lookup_srv("empty.test"), Err(DnsError::Empty));
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn resolver_follows_srv_targets() {
        let (server, stop, _) = serve(|id, name, qtype| {
            let p = Packet::reply(id, OK, name, qtype);
            vec![match (name, qtype) {
                ("_http._tcp.web.test", TYPE_SRV) => p
                    .answer(name, TYPE_SRV, &srv_rdata(1, 1, 8001, "a.test"))
                    .answer(name, TYPE_SRV, &srv_rdata(1, 1, 8002, "b.test"))
                    .answer(name, TYPE_SRV, &srv_rdata(2, 1, 8003, "c.test"))
                    .answer(name, TYPE_SRV, &srv_rdata(1, 1, 8004, "gone.test"))
                    .record(3, &name_wire("a.test"), TYPE_A, &[127, 0, 0, 1])
                    .build(),
                ("b.test", TYPE_A) => p.answer(name, TYPE_A, &[127, 0, 0, 2]).build(),
                ("gone.test", _) => Packet::reply(id, 0x8183, name, qtype).build(),
                _ => p.build(),
            }]
        });
        let resolver = Resolver {
            server,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(
            resolver.lookup_srv("_http._tcp.web.test").unwrap(),
            vec![
                "127.0.0.1:8001".parse().unwrap(),
                "127.0.0.2:8002".parse().unwrap()
            ],
            "lowest priority only; additional section used; a gone target adds nothing"
        );
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn truncated_answers_are_asked_again_over_tcp() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let server = udp.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, peer) = udp.recv_from(&mut buf).unwrap();
                let q = parse_message(&buf[..n]).unwrap();
                let (name, qtype) = q.question.unwrap();
                let _ = udp.send_to(&Packet::reply(q.id, 0x8380, &name, qtype).build(), peer);
            }
        });
        thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = tcp.accept().unwrap();
                let mut len = [0u8; 2];
                s.read_exact(&mut len).unwrap();
                let mut q = vec![0; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut q).unwrap();
                let q = parse_message(&q).unwrap();
                let (name, qtype) = q.question.unwrap();
                let p = Packet::reply(q.id, OK, &name, qtype);
                let reply = match qtype {
                    TYPE_A => p.answer(&name, TYPE_A, &[127, 0, 0, 9]).build(),
                    _ => p.build(),
                };
                s.write_all(&(reply.len() as u16).to_be_bytes()).unwrap();
                s.write_all(&reply).unwrap();
            }
        });
        let resolver = Resolver {
            server,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(
            resolver.lookup_ip("big.test").unwrap(),
            vec![IpAddr::from([127, 0, 0, 9])]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_message(&bytes);
            let _ = read_reply(&bytes, u16_at(&bytes, 0).unwrap_or(0), "a.test", TYPE_A);
            let _ = read_reply(&bytes, 0, "a.test", TYPE_SRV);
        }

        #[test]
        fn mutated_replies_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut msg = Packet::reply(5, OK, "_s._tcp.a.test", TYPE_SRV)
                .answer("_s._tcp.a.test", TYPE_CNAME, &[1, b'b', 0xC0, 12])
                .record(1, &[1, b'b', 0xC0, 12], TYPE_SRV, &srv_rdata(1, 2, 3, "t.test"))
                .record(3, &name_wire("t.test"), TYPE_A, &[1, 2, 3, 4])
                .build();
            for (at, byte) in flips {
                let len = msg.len();
                msg[at % len] = byte;
            }
            msg.truncate(cut % (msg.len() + 1));
            let _ = parse_message(&msg);
            let _ = read_reply(&msg, 5, "_s._tcp.a.test", TYPE_SRV);
        }
    }
}
