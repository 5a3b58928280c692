//! How long one pick takes for every strategy in a group of 10 to 10,000 backends, and what
//! each backend costs in memory. `cargo bench --bench pick`; prints markdown tables.
//!
//! A pick's time is the median over `ROUNDS` rounds of many picks each (all backends up, one
//! thread, keys varying for `hash`). Memory is counted by a global allocator that adds up
//! what is allocated while a structure is built, divided by the backends it was built for.

use lb_mio::backend::{self, BackendConf, Backends, Source};
use lb_mio::balance::{self, Pick, Tried};
use lb_mio::config::Strategy;
use lb_mio::metrics::WorkerMetrics;
use lb_mio::upstream::{Keep, Upstreams};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{time, ROUNDS};

mod support;

/// Every allocation's size, summed (frees are not subtracted: builds keep what they allocate
/// but for their scratch space, which counts as a build's peak).
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn backends(n: usize) -> Backends {
    let confs: Vec<BackendConf> = (0..n)
        .map(|i| BackendConf {
            name: format!("backend-{i}"),
            addr: ([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80).into(),
            weight: 1 + (i % 4) as u32,
            tls: None,
            pool: "default".into(),
            backup: false,
        })
        .collect();
    backend::at_start(&confs, &Source::Config)
}

/// Bytes allocated while `build` runs, per backend, and what it built.
fn per_backend<T>(n: usize, build: impl FnOnce() -> T) -> (f64, T) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let built = build();
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    (bytes as f64 / n as f64, built)
}

fn main() {
    let sets: Vec<(usize, Backends, Vec<usize>)> = SIZES
        .iter()
        .map(|&n| (n, backends(n), (0..n).collect()))
        .collect();
    let mut memory = Vec::new();
    println!(
        "| strategy | {} |",
        SIZES.map(|n| format!("{n} backends")).join(" | ")
    );
    println!("| --- |{}", " ---: |".repeat(SIZES.len()));
    for strategy in Strategy::ALL {
        let mut cells = Vec::new();
        for (n, set, members) in &sets {
            let (bytes, balancer) =
                per_backend(*n, || balance::new(strategy, Duration::ZERO, set, members));
            memory.push((strategy.name(), *n, bytes));
            let mut rng = SmallRng::seed_from_u64(1);
            let mut key = 0u64;
            let ns = time(|count| {
                for _ in 0..count {
                    key += 1;
                    let mut pick = Pick {
                        avoid: Tried::default(),
                        rng: &mut rng,
                        now_ms: 0,
                        key: black_box(key),
                    };
                    black_box(balancer.pick(set, members, &mut pick));
                }
            });
            cells.push(format!("{ns:.0}"));
        }
        println!("| {} | {} |", strategy.name(), cells.join(" | "));
    }
    println!("\nns per pick (median of {ROUNDS} rounds), all backends up, weights 1-4.\n");
    print_memory(&memory);
}

/// Bytes per backend: the shared record, one worker's tables, and each strategy's balancer.
fn print_memory(balancers: &[(&str, usize, f64)]) {
    let n = *SIZES.last().expect("sizes");
    let (record, _set) = per_backend(n, || backends(n));
    let (metrics, worker) = per_backend(n, || {
        let worker = Box::new(WorkerMetrics::default());
        worker.grow(n);
        worker
    });
    drop(worker);
    let keep = Keep {
        per_backend: 256,
        total: 1024,
    };
    let (upstreams, _tables) = per_backend(n, || Upstreams::new(n, keep));
    println!("| bytes per backend ({n} backends) | |\n| --- | ---: |");
    println!("| shared record (`Backend`, its name, its `Arc` in the set) | {record:.0} |");
    println!("| per worker: counters (`WorkerMetrics`) | {metrics:.0} |");
    println!("| per worker: idle-connection tables (`Upstreams`) | {upstreams:.0} |");
    for (name, size, bytes) in balancers.iter().filter(|(_, size, _)| *size == n) {
        println!("| balancer `{name}` ({size} members) | {bytes:.0} |");
    }
}
