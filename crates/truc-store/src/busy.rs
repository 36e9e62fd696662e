//! When the work in progress (a PostgreSQL request, a flush) started, to tell
//! one that hangs.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// When the current piece of work started, in milliseconds since this was
/// made plus one (0: idle). An atomic: every cached read looks at it.
#[derive(Debug)]
pub(crate) struct Busy {
    made: Instant,
    since: AtomicU64,
}

impl Default for Busy {
    fn default() -> Self {
        Self {
            made: Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl Busy {
    fn now(&self) -> u64 {
        u64::try_from(self.made.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    pub(crate) fn start(&self) {
        self.since.store(self.now(), Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current work has run, once that is longer than `limit`.
    pub(crate) fn longer_than(&self, limit: Duration) -> Option<Duration> {
        let since = self.since.load(Ordering::Relaxed);
        let ran = Duration::from_millis(self.now().saturating_sub(since));
        (since != 0 && ran > limit).then_some(ran)
    }
}
