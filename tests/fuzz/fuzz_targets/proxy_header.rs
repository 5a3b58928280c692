//! `proxy_header`: `lb_mio::proxy_protocol::parse` on arbitrary bytes.
//!
//! Beyond "never panics":
//! - a header it accepts is no longer than the input, and any prefix of it is "not complete
//!   yet" (so a header split over reads is put together, never misread early);
//! - the outcome does not depend on what follows the header;
//! - a header lb-mio writes for the addresses it read reads back to the same addresses.

#![no_main]

use lb_mio::buffer::BufferPool;
use lb_mio::proxy_protocol::{parse, write, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(Some(header)) = parse(input) else {
        return;
    };
    assert!(header.len <= input.len());
    let own = &input[..header.len];
    assert_eq!(
        parse(own),
        Ok(Some(header)),
        "bytes after the header changed it"
    );
    for cut in 0..header.len {
        assert_eq!(parse(&own[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    if let Some((src, dst)) = header.addrs {
        for version in [Version::V1, Version::V2] {
            let mut out = BufferPool::new(0).take();
            write(version, src, dst, &mut out);
            let again = parse(out.data()).unwrap().unwrap();
            let (s, d) = again.addrs.unwrap();
            let canonical = |a: std::net::SocketAddr| (a.ip().to_canonical(), a.port());
            assert_eq!(
                (canonical(s), canonical(d)),
                (canonical(src), canonical(dst))
            );
        }
    }
});
