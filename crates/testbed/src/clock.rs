//! A step of the machine's wall clock, for the fault suite: what an administrator's
//! `date -s` or an NTP step does to a running server. Only CLOCK_REALTIME moves; the
//! monotonic clock, which the daemons time their heartbeats with, cannot be stepped.
//! The step is undone when the guard drops (also on a panic): the clock is set back to
//! the true time, measured with the monotonic clock across the step.

use std::io;
use std::time::Duration;

/// The wall clock stepped by some seconds until this is dropped.
#[derive(Debug)]
pub struct WallClockStep {
    /// Wall and monotonic time when the step was made, to compute the true time at undo.
    true_wall_at_step: Duration,
    monotonic_at_step: Duration,
}

/// Bound on a step: far inside the pair's certificates' one-day backdating, so a step
/// tests the daemons' independence from the wall clock, not the certificates' validity.
pub const MAX_WALL_CLOCK_STEP_S: i64 = 6 * 3600;

fn read(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn set_wall(t: Duration) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    // SAFETY: ts is a valid timespec; needs CAP_SYS_TIME, which the caller has as root.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl WallClockStep {
    /// Steps the wall clock by `step_s` seconds (negative: back in time).
    pub fn new(step_s: i64) -> io::Result<WallClockStep> {
        if step_s.abs() > MAX_WALL_CLOCK_STEP_S {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a wall clock step of {step_s} s is over {MAX_WALL_CLOCK_STEP_S} s"),
            ));
        }
        let monotonic_at_step = read(libc::CLOCK_MONOTONIC)?;
        let true_wall_at_step = read(libc::CLOCK_REALTIME)?;
        let magnitude = Duration::from_secs(step_s.unsigned_abs());
        let stepped = if step_s >= 0 {
            true_wall_at_step + magnitude
        } else {
            true_wall_at_step.saturating_sub(magnitude)
        };
        set_wall(stepped)?;
        Ok(WallClockStep {
            true_wall_at_step,
            monotonic_at_step,
        })
    }
}

impl Drop for WallClockStep {
    fn drop(&mut self) {
        let elapsed = read(libc::CLOCK_MONOTONIC)
            .map(|m| m.saturating_sub(self.monotonic_at_step))
            .unwrap_or_default();
        if let Err(e) = set_wall(self.true_wall_at_step + elapsed) {
            eprintln!("testbed: could not set the wall clock back: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_over_the_bound_is_refused_before_touching_the_clock() {
        let before = read(libc::CLOCK_REALTIME).expect("clock");
        assert!(WallClockStep::new(MAX_WALL_CLOCK_STEP_S + 1).is_err());
        let after = read(libc::CLOCK_REALTIME).expect("clock");
        assert!(after >= before && after - before < Duration::from_secs(5));
    }
}
