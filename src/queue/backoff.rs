//! When a failed durable job runs again: exponential backoff with ±10 % jitter, capped.
//!
//! A pure function, like `master/admission.rs`, so the policy is tested without a process.
//! The jitter keeps a batch of jobs that failed together (a database restart) from all
//! retrying in the same instant and failing together again.

use std::time::Duration;

/// The delay before the run that follows failed attempt `attempt` (1 for the first run):
/// `base × 2^(attempt-1)`, capped at `max`, then moved by a random factor in [0.9, 1.1]
/// (`unit` is that randomness, in [0, 1); the caller draws it, so tests can pin it).
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(62);
    let raw = base.as_secs_f64() * 2f64.powi(exponent as i32);
    let capped = raw.min(max.as_secs_f64());
    let jitter = 0.9 + 0.2 * unit.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * jitter)
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    const BASE: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_delay_doubles_with_each_attempt_from_the_base() {
        let mid = 0.5; // no jitter
        assert_eq!(retry_delay(1, BASE, HOUR, mid), Duration::from_secs(1));
        assert_eq!(retry_delay(2, BASE, HOUR, mid), Duration::from_secs(2));
        assert_eq!(retry_delay(5, BASE, HOUR, mid), Duration::from_secs(16));
    }

    #[test]
    fn the_delay_stops_growing_at_the_maximum_even_for_huge_attempts() {
        assert_eq!(retry_delay(13, BASE, HOUR, 0.5), HOUR);
        assert_eq!(retry_delay(u32::MAX, BASE, HOUR, 0.5), HOUR);
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_ten_percent_either_way() {
        let low = retry_delay(4, BASE, HOUR, 0.0);
        let high = retry_delay(4, BASE, HOUR, 0.999_999);
        assert_eq!(low, Duration::from_secs_f64(7.2));
        assert!(high > Duration::from_secs_f64(8.79) && high <= Duration::from_secs_f64(8.8));
    }
}
