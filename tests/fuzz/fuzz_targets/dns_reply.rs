//! `dns_reply`: `lb_mio::dns` reading arbitrary bytes as a DNS message and as the reply to a
//! query for `a.example` (A, AAAA and SRV).
//!
//! Beyond "never panics" (bounded time and memory: compression pointers must not loop):
//! - a reply accepted for the question was a well-formed message, with the query's id;
//! - an accepted reply's records are all of the asked type.

#![no_main]

use lb_mio::dns::{parse_message, read_reply, Data};
use libfuzzer_sys::fuzz_target;

const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;

fuzz_target!(|input: &[u8]| {
    let message = parse_message(input);
    let id = input
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    for qtype in [A, AAAA, SRV] {
        let Ok(reply) = read_reply(input, id, "a.example", qtype) else {
            continue;
        };
        assert!(message.is_ok(), "a reply that is no message: {message:?}");
        for data in &reply.records {
            let kind = match data {
                Data::A(_) => A,
                Data::Aaaa(_) => AAAA,
                Data::Srv(_) => SRV,
                _ => 0,
            };
            assert_eq!(kind, qtype, "{data:?} in a reply to type {qtype}");
        }
    }
});
