//! The generator's own CPU time, so a report can show whether the generator, rather than
//! the system under test, was the bottleneck.
//!
//! Linux only, without `libc` (the workspace forbids `unsafe` and has no `libc`):
//! `/proc/self/stat` has the user and system time of every thread of the process, in
//! clock ticks, and `/proc/self/auxv` the tick rate (`AT_CLKTCK`). Elsewhere the time is
//! unknown and the report says so.

use std::time::Duration;

/// Returns the CPU time (user + system) this process has used so far, or `None` where it
/// cannot be read (not Linux, no `/proc`).
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = parse_stat_ticks(&stat)?;
        let per_second = std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| clock_ticks_from_auxv(&auxv))
            .unwrap_or(DEFAULT_CLOCK_TICKS);
        Some(ticks_to_duration(ticks, per_second))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Returns the CPU used between two readings over `wall` time as a percentage of one
/// core (200 = two cores busy), or `None` when either reading is unknown.
pub fn cpu_percent(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> Option<f64> {
    let (before, after) = (before?, after?);
    if wall.is_zero() {
        return None;
    }
    Some(after.saturating_sub(before).as_secs_f64() / wall.as_secs_f64() * 100.0)
}

/// The tick rate of every mainstream Linux build (`USER_HZ`), used if auxv says nothing.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// The auxiliary vector's entry type for the clock tick rate.
const AT_CLKTCK: u64 = 17;

/// Returns utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`.
///
/// The second field (the command name, in parentheses) may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`: after it come field 3
/// (state) onwards, and utime and stime are fields 14 and 15.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Returns `AT_CLKTCK` from the raw auxiliary vector (pairs of native-endian words).
fn clock_ticks_from_auxv(auxv: &[u8]) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> Option<u64> {
        let array: [u8; WORD] = bytes.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(array)).ok()
    };
    auxv.chunks_exact(2 * WORD)
        .find_map(|pair| {
            let (kind, value) = pair.split_at(WORD);
            (word(kind)? == AT_CLKTCK).then(|| word(value)).flatten()
        })
        .filter(|&ticks| ticks > 0)
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: utime and stime are found even when the command name holds spaces and
    // parentheses.
    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (dyn (a) mo) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 6 0 123";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    // Goal: the tick rate is read from its auxv entry, and tick counts convert exactly.
    #[test]
    fn the_tick_rate_comes_from_auxv() {
        let mut auxv = Vec::new();
        for (kind, value) in [(6usize, 4096usize), (AT_CLKTCK as usize, 250), (0, 0)] {
            auxv.extend_from_slice(&kind.to_ne_bytes());
            auxv.extend_from_slice(&value.to_ne_bytes());
        }
        assert_eq!(clock_ticks_from_auxv(&auxv), Some(250));
        assert_eq!(clock_ticks_from_auxv(&auxv[..16]), None);
        assert_eq!(ticks_to_duration(325, 100), Duration::from_millis(3250));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
    }

    // Goal: a busy loop shows up as CPU time, and the percentage is over one core.
    #[test]
    fn own_cpu_time_grows_with_work() {
        let Some(before) = process_cpu_time() else {
            return; // Not Linux: unknown is the documented answer.
        };
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = process_cpu_time();
        assert!(after.is_some_and(|a| a > before));
        let percent = cpu_percent(Some(before), after, start.elapsed()).expect("known");
        assert!(percent > 0.0);
        assert_eq!(cpu_percent(None, after, start.elapsed()), None);
        assert_eq!(
            cpu_percent(
                Some(Duration::ZERO),
                Some(Duration::from_secs(1)),
                Duration::from_secs(2)
            ),
            Some(50.0)
        );
    }
}
