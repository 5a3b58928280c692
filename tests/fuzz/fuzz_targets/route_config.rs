//! `route_config`: `lb_mio::config::Config::parse` on arbitrary text (the input bytes, invalid
//! UTF-8 replaced; seeds are configs with pools and routes), then what a start builds of an
//! accepted config: its route table and its snapshot (every pool's balancers).
//!
//! Beyond "never panics": a config that parses has a route table and a snapshot (the parser
//! already refused every route that names a missing pool).

#![no_main]

use lb_mio::backend::{self, Source};
use lb_mio::config::Config;
use lb_mio::route::RouteTable;
use lb_mio::shared::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::parse(&text, "fuzz.ini") else {
        return;
    };
    if let Err(e) = RouteTable::new(config.routes.clone(), 1, |name| config.pool(name)) {
        panic!("a config that parses has no route table: {e}\n{text}");
    }
    let backends = backend::at_start(&config.backends, &Source::Config);
    if let Err(e) = Snapshot::new(config, backends) {
        panic!("a config that parses has no snapshot: {e}\n{text}");
    }
});
