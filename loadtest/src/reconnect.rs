//! The client side of `--reconnect`: the back-off (exponential with jitter, as Socket.IO's
//! and Centrifugo's clients do it: a first delay, doubling per failed attempt up to a cap,
//! each delay scaled by a random factor in 1 ± jitter; a bound on attempts per outage) and
//! the resume point (`since`, `epoch`) a client sends when it comes back. Pure: the caller
//! brings the random number and the frames, so both are tested without a clock or a socket.

use std::time::Duration;

/// How a client that lost its connection comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt after a close.
    pub first: Duration,
    /// The delay doubles per failed attempt up to this.
    pub max: Duration,
    /// Each delay is multiplied by a uniform factor in `1 - jitter ..= 1 + jitter`, so the
    /// members of a drained node do not all come back in the same millisecond.
    pub jitter: f64,
    /// Failed attempts in a row after which the client gives up (the run's end bounds it too).
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(500),
            max: Duration::from_secs(5),
            jitter: 0.5,
            attempts: 20,
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based) of one outage; `unit` is uniform in [0, 1).
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let doubled = self.first.as_secs_f64() * 2f64.powi(n.min(62) as i32);
        let base = doubled.min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// Where a receiver left off: the last `seq` it got contiguously and its last welcome's
/// epoch. A server without history sends no epoch: then the client reconnects without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    pub seq: u64,
    pub epoch: Option<String>,
}

impl ResumePoint {
    /// After a welcome: a recovered one is followed by the replay from `self.seq + 1`, so the
    /// point stays; any other starts again at the welcome's `seq`.
    pub fn welcomed(&mut self, seq: u64, epoch: Option<String>, recovered: bool) {
        if !(recovered && epoch.is_some() && epoch == self.epoch) {
            self.seq = seq;
        }
        self.epoch = epoch;
    }

    /// After a message: only the next `seq` moves the point, so a gap is asked for again.
    pub fn got(&mut self, seq: u64) {
        if seq == self.seq + 1 {
            self.seq = seq;
        }
    }

    /// The `&since=SEQ&epoch=E` to append, when there is an epoch to resume.
    pub fn query(&self) -> Option<String> {
        self.epoch.as_ref().map(|e| format!("&since={}&epoch={e}", self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_point_follows_contiguous_seqs_and_welcomes() {
        let mut p = ResumePoint::default();
        assert_eq!(p.query(), None, "no epoch, no resume");
        p.welcomed(10, Some("e".into()), false);
        p.got(11);
        p.got(13);
        assert_eq!(p.query().as_deref(), Some("&since=11&epoch=e"), "a gap is asked for again");
        p.welcomed(14, Some("e".into()), true);
        assert_eq!(p.seq, 11, "the replay follows a recovered welcome");
        p.got(12);
        p.got(13);
        p.got(14);
        assert_eq!(p.seq, 14);
        p.welcomed(20, Some("e".into()), false);
        assert_eq!(p.seq, 20, "nothing follows a welcome that did not recover");
        p.welcomed(3, Some("f".into()), true);
        assert_eq!((p.seq, p.epoch.as_deref()), (3, Some("f")), "another epoch starts again");
    }

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter() {
        let b = Backoff::default();
        let mid: Vec<u128> = (0..6).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(mid, vec![500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(750));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(7500));
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(5), "no overflow");
        let none = Backoff { jitter: 0.0, ..b };
        assert_eq!(none.delay(1, 0.9), Duration::from_secs(1));
    }
}
