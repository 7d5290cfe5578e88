//! The one retry backoff of every service and the SDK: exponential, capped, with jitter
//! in its upper half (so callers that failed together do not retry in step, and none
//! waits less than half its step). The randomness comes in as an argument.

use std::time::Duration;

/// An exponential backoff: `base · 2^(attempt − 1)`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The step of the first retry.
    pub base: Duration,
    /// The longest step.
    pub cap: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// Returns the full step of retry number `attempt` (1 for the first).
    pub fn step(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Returns the pause before retry number `attempt`: its [`Backoff::step`] scaled
    /// into `[step / 2, step]` by `unit`, a random draw from `[0, 1]` (clamped).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let step = self.step(attempt);
        step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_cap_and_jitter_stays_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.step(1), Duration::from_millis(100));
        assert_eq!(b.step(3), Duration::from_millis(400));
        assert_eq!(b.step(40), Duration::from_secs(5));
        assert_eq!(
            b.step(0),
            Duration::from_millis(100),
            "attempt 0 is the first step"
        );
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, 7.0), Duration::from_millis(400), "the draw is clamped");
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(9, 0.5), Duration::ZERO);
    }
}
