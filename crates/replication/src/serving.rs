//! Whether this node is, for sure, still the pair's active: what an fsync acknowledged
//! without the passive's confirmation relies on (invariant 29).
//!
//! The daemon's core loop renews it on every turn while the node is active and its watchdog
//! lease has not lapsed, for the isolation timeout. A daemon that was frozen (a VM pause, a
//! hang) for longer may have been taken over from meanwhile; when it wakes, its queues would
//! find the passive's lease long run out and acknowledge waiting fsyncs on their own, for
//! writes the new active never received (seen: 7,041 records acknowledged against 1,185 on
//! the new active, with a pause of about 2 s and a failover meanwhile). With this, they wait until the core loop
//! has run again and either renews (the node still serves) or demotes (the waits fail).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Serving {
    origin: Instant,
    /// One more than the milliseconds after `origin` until which the node surely serves
    /// (so that 0, a revocation, is before every time).
    until_ms: AtomicU64,
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Serving {
    /// The core loop just ran and the node is active: it surely serves for `span` more.
    pub fn renew(&self, span: Duration) {
        let until = self.now_ms().saturating_add(ms(span)).saturating_add(1);
        self.until_ms.store(until, Ordering::SeqCst);
    }

    /// The node stopped serving (or may have been taken over from).
    pub fn revoke(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// True while the last renewal holds.
    pub fn valid(&self) -> bool {
        self.now_ms().saturating_add(1) < self.until_ms.load(Ordering::SeqCst)
    }

    fn now_ms(&self) -> u64 {
        ms(self.origin.elapsed())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewed_holds_for_its_span_and_revoked_does_not() {
        let s = Serving::default();
        assert!(!s.valid(), "a node serves only once renewed");
        s.renew(Duration::from_secs(60));
        assert!(s.valid());
        s.revoke();
        assert!(!s.valid());
        s.renew(Duration::ZERO);
        assert!(!s.valid(), "a renewal of nothing has already run out");
    }
}
