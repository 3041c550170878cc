//! The bound on durations written by people (configuration keys, job files): a century.
//!
//! humantime reads up to `u64::MAX` seconds, but the master and the workers add these
//! durations to `Instant::now()`, which panics past about 292 billion years on Linux and
//! much sooner elsewhere: a `timeout = "300000000000y"` took the master down on the job's
//! first run (found by the `job_file` and `config_file` fuzz targets). No timeout, delay or
//! retention needs more than a century, so anything longer is refused when it is read.

use std::time::Duration;

/// The longest duration a file may give: `"100y"` in humantime's years of 365.25 days.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 31_557_600);

/// `duration` itself, or why it is too long (the caller names the key).
pub(crate) fn bounded(duration: Duration) -> Result<Duration, String> {
    if duration > LONGEST {
        return Err(format!(
            "{} is too long: at most 100 years (a deadline that far would overflow the clock)",
            humantime::format_duration(duration)
        ));
    }
    Ok(duration)
}
