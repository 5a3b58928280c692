//! When a worker looks at its connections' deadlines. A connection's deadline moves each time
//! it is driven, so no exact schedule is kept: the worker notes every deadline it sets (one
//! comparison), which keeps a time no deadline is earlier than, and scans its connections once
//! that time comes. The scan finds the exact earliest deadline again. Scans come at most every
//! `SCAN_EVERY`, so under load a connection times out up to that late, never early; with no
//! connection, or only far deadlines, the worker sleeps that long.

use std::time::{Duration, Instant};

/// The shortest time between two scans: timeouts fire up to this late.
pub const SCAN_EVERY: Duration = Duration::from_millis(50);

pub struct Deadlines {
    /// No open connection's deadline is earlier (`None`: no connection has one).
    earliest: Option<Instant>,
    last_scan: Instant,
}

impl Deadlines {
    pub fn new(now: Instant) -> Deadlines {
        Deadlines {
            earliest: None,
            last_scan: now,
        }
    }

    /// A connection's deadline was set (or moved) to `deadline`.
    pub fn note(&mut self, deadline: Instant) {
        self.earliest = Some(self.earliest.map_or(deadline, |e| e.min(deadline)));
    }

    /// When the next scan is due; `None`: not until a deadline is noted.
    pub fn next_scan(&self) -> Option<Instant> {
        (self.earliest).map(|earliest| earliest.max(self.last_scan + SCAN_EVERY))
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_scan().is_some_and(|at| at <= now)
    }

    /// A scan begins at `now`: it notes the deadline of every connection it leaves open.
    pub fn scanning(&mut self, now: Instant) {
        self.last_scan = now;
        self.earliest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_scan_until_a_deadline_is_noted() {
        let now = Instant::now();
        let mut deadlines = Deadlines::new(now);
        assert_eq!(deadlines.next_scan(), None);
        deadlines.note(now + Duration::from_secs(60));
        deadlines.note(now + Duration::from_secs(5));
        deadlines.note(now + Duration::from_secs(30));
        assert_eq!(deadlines.next_scan(), Some(now + Duration::from_secs(5)));
        assert!(!deadlines.due(now + Duration::from_secs(4)));
        assert!(deadlines.due(now + Duration::from_secs(5)));
    }

    #[test]
    fn scans_come_at_most_every_scan_every() {
        let now = Instant::now();
        let mut deadlines = Deadlines::new(now);
        deadlines.note(now);
        assert_eq!(deadlines.next_scan(), Some(now + SCAN_EVERY));
        let later = now + Duration::from_secs(1);
        deadlines.scanning(later);
        deadlines.note(later + Duration::from_millis(1));
        assert_eq!(deadlines.next_scan(), Some(later + SCAN_EVERY));
        deadlines.scanning(later);
        assert_eq!(deadlines.next_scan(), None);
    }
}
