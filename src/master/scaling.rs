//! The size: how many workers should serve. `workers.count` at start, moved by TTIN/TTOU
//! and the `scale` op within `count..=max` ([`bounded_target`]), and, with `workers.idle_timeout` set, grown under load and shrunk
//! back when idle. The decision is [`plan`], a pure function unit-tested without a process.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::earliest_after;
use super::workers::{Lifecycle, WorkerTable};
use super::Master;
use crate::config::WorkersConfig;

/// The wanted number of workers: the operator's target plus what load added.
pub struct Size {
    /// How many workers should be serving (`workers.count`, moved by TTIN/TTOU).
    target: usize,
    /// Workers added above `target` under load (`workers.idle_timeout`), retired when idle.
    grown: usize,
}

/// What the workers look like this turn, as far as scaling cares.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Workers booting or serving.
    pub serving: usize,
    /// One of them is booting: growth waits for it (one boot at a time bounds the spawn
    /// rate to what the machine can fork).
    pub booting: bool,
    /// None of them has room for another job.
    pub all_busy: bool,
    /// The serving worker idle the longest, with the instant its idleness began.
    pub longest_idle: Option<(Instant, usize)>,
    pub now: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// One worker more.
    Grow,
    /// Retire this grown, idle worker.
    Shrink(usize),
    Nothing,
}

/// Grows by one worker while jobs wait and no worker has room, up to `workers.max`; retires
/// a grown worker once it has been idle for `idle_timeout`, the longest idle first. Nothing
/// without `idle_timeout` (a fixed size: only TTIN/TTOU move it). `workers.max` never
/// passes `max_connections_budget`: start-up refuses a configuration where it would.
pub fn plan(size: &Size, load: &Load, config: &WorkersConfig) -> Action {
    let Some(idle_timeout) = config.idle_timeout else {
        return Action::Nothing;
    };
    let wanted = size.wanted();
    if load.queued > 0
        && load.all_busy
        && !load.booting
        && load.serving >= wanted
        && wanted < config.max
    {
        return Action::Grow;
    }
    if size.grown == 0 {
        return Action::Nothing;
    }
    match load.longest_idle {
        Some((since, slot)) if load.now >= retire_at(since, idle_timeout) => Action::Shrink(slot),
        _ => Action::Nothing,
    }
}

/// The operator's target `wanted` if it lies within `workers.count..=workers.max`, else why
/// not: `count` is the floor the service starts with, `max` the ceiling that start-up
/// checks against each database's `max_connections_budget`, so no scale passes the budget.
pub fn bounded_target(wanted: i64, now: usize, config: &WorkersConfig) -> Result<usize, String> {
    let (count, max) = (config.count, config.max);
    let refused = |bound: String| Err(format!("cannot scale to {wanted} workers: {bound}"));
    if wanted > max as i64 {
        let at = if now == max { "already at" } else { "above" };
        return refused(format!(
            "{at} workers.max = {max}, the ceiling (kept within each database's \
             max_connections_budget; raise it in the configuration and reload)"
        ));
    }
    if wanted < count as i64 {
        let at = if now == count { "already at" } else { "below" };
        return refused(format!(
            "{at} workers.count = {count}, the floor (lower it in the configuration and reload)"
        ));
    }
    Ok(wanted as usize)
}

/// When a grown worker idle since `since` is due to retire.
fn retire_at(since: Instant, idle_timeout: Duration) -> Instant {
    since + idle_timeout
}

impl Size {
    pub fn new(target: usize) -> Size {
        Size { target, grown: 0 }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn wanted(&self) -> usize {
        self.target + self.grown
    }

    /// When the longest-idle grown worker is due to retire.
    pub fn next_deadline(
        &self,
        now: Instant,
        workers: &WorkerTable,
        config: &WorkersConfig,
    ) -> Option<Instant> {
        let idle = config.idle_timeout.filter(|_| self.grown > 0)?;
        earliest_after(
            now,
            longest_idle(workers).map(|(since, _)| retire_at(since, idle)),
        )
    }
}

/// The serving worker idle the longest (the lowest slot among equals).
fn longest_idle(workers: &WorkerTable) -> Option<(Instant, usize)> {
    workers
        .serving()
        .filter(|w| w.lifecycle == Lifecycle::Serving)
        .filter_map(|w| Some((w.idle_since?, w.slot)))
        .min()
}

impl Master {
    pub(super) fn handle_ttin(&mut self) {
        self.scale_by_signal("SIGTTIN", 1);
    }

    pub(super) fn handle_ttou(&mut self) {
        self.scale_by_signal("SIGTTOU", -1);
    }

    fn scale_by_signal(&mut self, signal: &str, step: i64) {
        match self.scale_to(self.size.target as i64 + step) {
            Ok(target) => info!("{signal}: {target} workers"),
            Err(refusal) => warn!("{signal}: {refusal}"),
        }
    }

    /// Sets the operator's target (TTIN, TTOU, the `scale` op) within [`bounded_target`];
    /// `manage_workers` spawns or retires toward it. Workers grown under load count toward
    /// it: a target that reaches them makes them the operator's.
    pub(super) fn scale_to(&mut self, wanted: i64) -> Result<usize, String> {
        let size = &mut self.size;
        let target = bounded_target(wanted, size.target, &self.config.workers)?;
        size.target = target;
        let max = self.config.workers.max;
        size.grown = size.grown.min(max.saturating_sub(target));
        Ok(target)
    }

    /// Dynamic size (`workers.idle_timeout`): acts on [`plan`].
    pub(super) fn scale_to_load(&mut self) {
        if self.control.stopping() {
            return;
        }
        let load = Load {
            queued: self.jobs.queued_count(),
            serving: self.workers.serving().count(),
            booting: self.workers.any_booting(),
            all_busy: !self.workers.serving().any(|w| {
                w.has_room_for_job(self.config.workers.threads, self.config.workers.pipeline)
            }),
            longest_idle: longest_idle(&self.workers),
            now: Instant::now(),
        };
        let wanted = self.size.wanted();
        match plan(&self.size, &load, &self.config.workers) {
            Action::Grow => {
                self.size.grown += 1;
                info!(
                    "{} job(s) waiting and every worker busy: growing to {} workers",
                    load.queued,
                    wanted + 1
                );
            }
            Action::Shrink(slot) => {
                self.size.grown -= 1;
                info!(
                    "worker {slot} idle for {} (workers.idle_timeout): shrinking to {} workers",
                    humantime::format_duration(
                        self.config.workers.idle_timeout.unwrap_or_default()
                    ),
                    wanted - 1
                );
                if let Some(worker) = self.workers.get_mut(slot) {
                    worker.lifecycle = Lifecycle::Retiring;
                }
            }
            Action::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn config(idle_timeout: Option<Duration>) -> WorkersConfig {
        WorkersConfig {
            count: 2,
            max: 4,
            idle_timeout,
            ..WorkersConfig::default()
        }
    }

    fn load(queued: usize, serving: usize, all_busy: bool) -> Load {
        Load {
            queued,
            serving,
            booting: false,
            all_busy,
            longest_idle: None,
            now: Instant::now(),
        }
    }

    #[test]
    fn a_target_stays_within_count_and_max_and_a_refusal_names_the_bound() {
        let config = config(None);
        assert_eq!(bounded_target(2, 3, &config), Ok(2));
        assert_eq!(bounded_target(4, 3, &config), Ok(4));
        let above = bounded_target(5, 4, &config).unwrap_err();
        assert!(
            above.starts_with("cannot scale to 5 workers: already at workers.max = 4"),
            "{above}"
        );
        assert!(above.contains("max_connections_budget"), "{above}");
        let far_above = bounded_target(9, 2, &config).unwrap_err();
        assert!(far_above.contains("above workers.max = 4"), "{far_above}");
        let below = bounded_target(1, 2, &config).unwrap_err();
        assert!(
            below.contains("already at workers.count = 2, the floor"),
            "{below}"
        );
        assert!(bounded_target(-3, 3, &config)
            .unwrap_err()
            .contains("below workers.count = 2"));
    }

    #[test]
    fn a_fixed_size_never_grows_or_shrinks() {
        let size = Size {
            target: 2,
            grown: 1,
        };
        assert_eq!(
            plan(&size, &load(10, 3, true), &config(None)),
            Action::Nothing
        );
    }

    #[test]
    fn jobs_waiting_on_busy_workers_grow_the_size_by_one_up_to_max() {
        let config = config(Some(IDLE));
        assert_eq!(
            plan(&Size::new(2), &load(1, 2, true), &config),
            Action::Grow
        );
        assert_eq!(
            plan(&Size::new(2), &load(0, 2, true), &config),
            Action::Nothing,
            "no job waits"
        );
        assert_eq!(
            plan(&Size::new(2), &load(1, 2, false), &config),
            Action::Nothing,
            "a worker has room"
        );
        let booting = Load {
            booting: true,
            ..load(1, 2, true)
        };
        assert_eq!(
            plan(&Size::new(2), &booting, &config),
            Action::Nothing,
            "one boot at a time"
        );
        let at_max = Size {
            target: 2,
            grown: 2,
        };
        assert_eq!(plan(&at_max, &load(1, 4, true), &config), Action::Nothing);
    }

    #[test]
    fn a_grown_worker_idle_past_idle_timeout_retires_the_longest_idle_first() {
        let config = config(Some(IDLE));
        let now = Instant::now();
        let idle = |for_: Duration| Load {
            longest_idle: Some((now - for_, 3)),
            now,
            ..load(0, 3, false)
        };
        let grown = Size {
            target: 2,
            grown: 1,
        };
        assert_eq!(plan(&grown, &idle(IDLE), &config), Action::Shrink(3));
        assert_eq!(
            plan(&grown, &idle(IDLE / 2), &config),
            Action::Nothing,
            "not idle long enough"
        );
        assert_eq!(
            plan(&Size::new(2), &idle(IDLE), &config),
            Action::Nothing,
            "the operator's workers never shrink"
        );
    }
}
