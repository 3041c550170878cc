//! Schedules (DESIGN §13): each host's keeper computes the same ticks and tries to enqueue
//! each; the database lets one insert of (schedule, tick) win, so each tick runs once across
//! all hosts, with no leader. A tick missed while every host was down runs once at start,
//! not once per missed tick.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use log::{debug, info, warn};
use serde::Serialize;

use crate::config::{parse_cron, parse_timezone, Every, ScheduleConfig};
use crate::pool::PooledConnection;
use crate::queue::admin;

/// How far ahead a missed tick is searched before giving up on catching up (a schedule of
/// one second down for a year would otherwise walk millions of ticks).
const CATCH_UP_STEPS: usize = 100_000;

/// One schedule as the keeper runs it.
pub struct Schedule {
    pub name: String,
    job: String,
    args: serde_json::Value,
    when: When,
    /// The next tick to enqueue; `None` until the first look at the database.
    next: Option<DateTime<Utc>>,
}

enum When {
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    Interval(Duration),
}

/// What `status` shows of a schedule.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub job: String,
    pub next_tick: Option<String>,
}

impl Schedule {
    /// Builds the runnable form of a checked configuration (the loader parsed it already).
    pub fn from_config(name: &str, config: &ScheduleConfig) -> Option<Schedule> {
        let when = match config.every.as_ref()? {
            Every::Cron(pattern) => When::Cron(
                Box::new(parse_cron(pattern).ok()?),
                parse_timezone(&config.timezone).ok()?,
            ),
            Every::Interval(every) => When::Interval(*every),
        };
        Some(Schedule {
            name: name.to_string(),
            job: config.job.clone(),
            args: serde_json::Value::Object(config.args.clone()),
            when,
            next: None,
        })
    }

    /// The first tick strictly after `after`.
    fn tick_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Cron(cron, tz) => cron
                .find_next_occurrence(&tz.from_utc_datetime(&after.naive_utc()), false)
                .ok()
                .map(|at| at.with_timezone(&Utc)),
            When::Interval(every) => {
                let every = every.as_millis().max(1) as i64;
                let now = after.timestamp_millis();
                Utc.timestamp_millis_opt((now.div_euclid(every) + 1) * every)
                    .single()
            }
        }
    }

    /// The latest tick in `(after, until]`, if there is one: a missed tick to run once.
    fn latest_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut latest = None;
        let mut at = after;
        for _ in 0..CATCH_UP_STEPS {
            match self.tick_after(at) {
                Some(tick) if tick <= until => {
                    latest = Some(tick);
                    at = tick;
                }
                _ => break,
            }
        }
        latest
    }

    /// Enqueues the ticks that are due; returns how many this host enqueued.
    pub fn enqueue_due(&mut self, conn: &mut PooledConnection, now: DateTime<Utc>) -> u64 {
        let mut due = Vec::new();
        match self.next {
            None => {
                // First look: catch up once on a tick missed since the last recorded one
                // (a schedule never recorded starts with its next tick).
                match admin::last_tick(conn, &self.name) {
                    Ok(Some(last)) => due.extend(self.latest_between(last, now)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(target: "forkpool::queue", "schedule {}: {e}", self.name);
                        return 0;
                    }
                }
            }
            Some(next) if next <= now => due.push(
                self.latest_between(next - chrono::Duration::milliseconds(1), now)
                    .unwrap_or(next),
            ),
            Some(_) => return 0,
        }
        let mut enqueued = 0;
        for tick in due {
            match admin::enqueue_tick(conn, &self.name, tick, &self.job, &self.args) {
                Ok(Some(id)) => {
                    enqueued += 1;
                    info!(target: "forkpool::queue", "schedule {}: tick {tick} enqueued as job {id}", self.name);
                }
                Ok(None) => {
                    debug!(target: "forkpool::queue", "schedule {}: tick {tick} enqueued by another host", self.name)
                }
                Err(e) => {
                    warn!(target: "forkpool::queue", "schedule {}: enqueueing tick {tick}: {e}", self.name);
                    return enqueued;
                }
            }
        }
        self.next = self.tick_after(now);
        enqueued
    }

    /// When this schedule next needs the keeper.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.next
    }

    pub fn status(&self) -> ScheduleStatus {
        ScheduleStatus {
            name: self.name.clone(),
            job: self.job.clone(),
            next_tick: self.next.map(|at| at.to_rfc3339()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(every: Every, timezone: &str) -> Schedule {
        let config = ScheduleConfig {
            job: "j".into(),
            every: Some(every),
            timezone: timezone.into(),
            ..ScheduleConfig::default()
        };
        Schedule::from_config("s", &config).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn intervals_tick_on_multiples_since_the_epoch_so_every_host_agrees() {
        let s = schedule(Every::Interval(Duration::from_secs(600)), "UTC");
        assert_eq!(
            s.tick_after(at("2026-11-30T10:03:00Z")),
            Some(at("2026-11-30T10:10:00Z"))
        );
        assert_eq!(
            s.tick_after(at("2026-11-30T10:10:00Z")),
            Some(at("2026-11-30T10:20:00Z"))
        );
    }

    #[test]
    fn cron_patterns_tick_in_their_time_zone() {
        let s = schedule(Every::Cron("0 3 * * *".into()), "Europe/Paris");
        // 03:00 in Paris is 02:00 UTC in winter.
        assert_eq!(
            s.tick_after(at("2026-11-30T10:00:00Z")),
            Some(at("2026-12-01T02:00:00Z"))
        );
        let seconds = schedule(Every::Cron("*/10 * * * * *".into()), "UTC");
        assert_eq!(
            seconds.tick_after(at("2026-11-30T10:00:01Z")),
            Some(at("2026-11-30T10:00:10Z"))
        );
    }

    #[test]
    fn missed_ticks_collapse_into_the_latest_one() {
        let s = schedule(Every::Cron("0 3 * * *".into()), "UTC");
        let latest = s.latest_between(at("2026-11-25T03:00:00Z"), at("2026-11-30T10:00:00Z"));
        assert_eq!(
            latest,
            Some(at("2026-11-30T03:00:00Z")),
            "five missed, one run"
        );
        assert_eq!(
            s.latest_between(at("2026-11-30T03:00:00Z"), at("2026-11-30T10:00:00Z")),
            None
        );
    }
}
