//! Giving freed memory back to the system. After a burst (a flood of stalled TLS handshakes,
//! thousands of clients leaving at once, a thousand requests in flight at once) glibc's
//! allocator keeps what the burst freed: chunks its per-thread caches still hold pin the top of
//! the heap, so nothing below them is returned. A worker whose open connections fell by
//! `GIVE_BACK_AFTER` since it last did asks glibc to return its free pages (`malloc_trim`):
//! 10,000 half ClientHellos left 30 to 60 MiB resident without it, nothing with it (tests/tls.rs
//! has the flood). A worker that had no event for `QUIET` after a burst also shrinks its free
//! lists (buffers, exchange records) to `KEEP_WHEN_QUIET` and does the same, so its resident
//! size returns near what its idle connections need.

use std::time::Duration;

/// Connections a worker must have lost since its high-water mark before it gives memory back:
/// the trim walks the heap (a few milliseconds), so only a real drop is worth one.
pub const GIVE_BACK_AFTER: usize = 1024;

/// How long a worker has had no event before it counts as quiet. Under load events never stop
/// for this long, so the free lists stay full and requests allocate nothing.
pub const QUIET: Duration = Duration::from_millis(500);

/// Free buffers and exchange records a quiet worker keeps (a light load's requests in flight
/// take nothing new), and connections it may have closed since its last give-back before a
/// quiet spell is worth one.
pub const KEEP_WHEN_QUIET: usize = 32;

/// Returns free heap pages to the system (glibc's `malloc_trim`); nothing with another libc.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and works under glibc's own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
