//! What the benches in this folder share: timing an operation as the median of rounds.

use std::time::{Duration, Instant};

/// Rounds per measurement; the median is reported.
pub const ROUNDS: usize = 7;
/// A round lasts at least this long.
const ROUND: Duration = Duration::from_millis(5);

/// Nanoseconds per operation of `run(count)`, which does the operation `count` times: the
/// median of `ROUNDS` rounds, after doubling `count` until a round lasts `ROUND`.
pub fn time(mut run: impl FnMut(usize)) -> f64 {
    let mut count = 16;
    while {
        let start = Instant::now();
        run(count);
        start.elapsed() < ROUND
    } {
        count *= 2;
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            run(count);
            start.elapsed().as_nanos() as f64 / count as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}
