//! `[schedules.NAME]`: periodic durable jobs (DESIGN §13). Every host may enqueue a tick;
//! each tick runs once across all hosts.
//!
//! ```toml
//! [schedules.nightly_rollup]
//! job = "rollup"
//! args = {}
//! cron = "0 3 * * *"        # five fields, or six with seconds first; or
//! # every = "10m"
//! timezone = "UTC"          # an IANA name
//! ```

use std::str::FromStr;
use std::time::Duration;

use figment::value::Value;
use serde_json::{Map, Value as Json};

use super::values;

/// The keys of one schedule.
pub const SCHEDULE_KEYS: &[&str] = &["job", "args", "cron", "every", "timezone"];

/// When a schedule ticks.
#[derive(Debug, Clone, PartialEq)]
pub enum Every {
    /// A cron pattern (five fields, or six with seconds first), in the schedule's time zone.
    Cron(String),
    /// A fixed interval; ticks fall on multiples of it since the Unix epoch, so every host
    /// computes the same ticks.
    Interval(Duration),
}

/// One `[schedules.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub job: String,
    pub args: Map<String, Json>,
    /// `None` until `cron` or `every` is given (the loader then reports it missing).
    pub every: Option<Every>,
    /// An IANA name; cron patterns are read in it (daylight saving included).
    pub timezone: String,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            job: String::new(),
            args: Map::new(),
            every: None,
            // A server's clock rarely means local time; say so to mean it.
            timezone: "UTC".to_string(),
        }
    }
}

/// Parses a cron pattern as the keeper will: five fields, or six with seconds first.
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("not a cron pattern ({e}); write five fields, e.g. \"0 3 * * *\""))
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(name)
        .map_err(|_| "not an IANA time zone name (such as \"UTC\" or \"Europe/Paris\")".to_string())
}

/// Applies `schedules.NAME.KEY = value`; `Err(None)` for an unknown key.
pub fn set_schedule(s: &mut ScheduleConfig, key: &str, v: &Value) -> Result<(), Option<String>> {
    let bad = Some;
    match key {
        "job" => s.job = values::text(v).map_err(bad)?,
        "args" => {
            let json: Json = v
                .deserialize()
                .map_err(|e| bad(format!("expected a table: {e}")))?;
            match json {
                Json::Object(args) => s.args = args,
                _ => return Err(bad("expected a table of arguments".into())),
            }
        }
        "cron" => {
            let pattern = values::text(v).map_err(bad)?;
            parse_cron(&pattern).map_err(bad)?;
            if matches!(s.every, Some(Every::Interval(_))) {
                return Err(bad("give `cron` or `every`, not both".into()));
            }
            s.every = Some(Every::Cron(pattern));
        }
        "every" => {
            let every = values::duration(v).map_err(bad)?;
            if every < Duration::from_secs(1) {
                return Err(bad("must be at least 1s".into()));
            }
            if matches!(s.every, Some(Every::Cron(_))) {
                return Err(bad("give `cron` or `every`, not both".into()));
            }
            s.every = Some(Every::Interval(every));
        }
        "timezone" => {
            let name = values::text(v).map_err(bad)?;
            parse_timezone(&name).map_err(bad)?;
            s.timezone = name;
        }
        _ => return Err(None),
    }
    Ok(())
}
