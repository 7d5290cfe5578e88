//! The wall clock, read in one place: what every service stamps and compares across
//! processes (signatures, coordinate deadlines, token expiry, tombstone ages) is
//! milliseconds since the Unix epoch on this machine's clock. Timers inside a process use
//! tokio's clock instead, so tests can pause it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Returns milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
