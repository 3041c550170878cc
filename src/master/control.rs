//! Stop and reload: the service's phase as an explicit state machine (PHP-FPM's NORMAL,
//! FINISHING, TERMINATING), each step on a timer, with the escalation ladder
//! stop frame → SIGINT → SIGKILL.
//!
//! ```text
//!  Normal ──TERM──▶ Finishing ──no job left──▶ Draining ──grace──▶ SIGKILL
//!    │                 │ deadline                  (stop frames sent)
//!    └──INT/QUIT───────┴─────────▶ Terminating ──FAST_STOP_GRACE──▶ SIGKILL
//!                                 (jobs answered shutting_down, SIGINT sent)
//! ```
//!
//! A reload is not a phase: the service goes on serving, and the supervisor replaces the
//! workers of older generations one at a time (`manage_workers`). A `reload` asked over the
//! socket is answered once that is done: every serving worker of the new generation
//! (`answer_reloads`).

use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde_json::value::RawValue;

use super::clients::ClientId;
use super::{earliest_after, Generation, Master};
use crate::config::ServiceConfig;
use crate::protocol::{self, ErrorBody, ErrorKind};

/// How long workers told to stop fast may take before they are killed.
const FAST_STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Serving.
    #[default]
    Normal,
    /// Graceful stop (TERM): no new connections or jobs; what is queued and running may
    /// finish until `deadline`.
    Finishing { deadline: Instant },
    /// Every job answered: the workers were sent a stop frame at `told` and finish.
    Draining { deadline: Instant, told: Instant },
    /// Fast stop (INT, QUIT, a crash loop given up, or a graceful stop past its deadline):
    /// what is left is answered `shutting_down` and the workers get SIGINT (`told` once
    /// done).
    Terminating { told: Option<Instant> },
}

/// The stop in progress, if any, and the exit code it will end with; the `reload` requests
/// waiting for their generation to serve.
#[derive(Default)]
pub struct Control {
    phase: Phase,
    exit_code: i32,
    /// Each `reload` accepted over the socket: the client and the request's id.
    reloads_awaited: Vec<(ClientId, Box<RawValue>)>,
}

/// What became of a reload.
pub enum Reload {
    /// The new configuration is current; its workers are on their way.
    Accepted,
    /// The configuration or the catalog is wrong (every problem); the running one is kept.
    Refused(Vec<String>),
    /// The service is stopping: nothing was read.
    Stopping,
}

impl Control {
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Normal
    }

    /// How the service is stopping, for the `stop` answer: `None` while serving.
    pub fn stop_mode(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Normal => None,
            Phase::Finishing { .. } | Phase::Draining { .. } => Some("graceful"),
            Phase::Terminating { .. } => Some("fast"),
        }
    }

    /// Whether `client` waits for a reload's answer (it is not closed before it).
    pub fn awaits(&self, client: ClientId) -> bool {
        self.reloads_awaited.iter().any(|(c, _)| *c == client)
    }

    /// The exit code, once a stop has begun.
    pub fn exit_code(&self) -> Option<i32> {
        self.stopping().then_some(self.exit_code)
    }

    /// When the workers still alive are killed: a grace after they were told to stop, the
    /// short one once the stop is fast or past its deadline.
    fn kill_at(&self, now: Instant, service: &ServiceConfig) -> Option<Instant> {
        match self.phase {
            Phase::Draining { deadline, told } if now < deadline => {
                Some(told + service.shutdown_timeout.max(FAST_STOP_GRACE))
            }
            Phase::Draining { told, .. } | Phase::Terminating { told: Some(told) } => {
                Some(told + FAST_STOP_GRACE)
            }
            _ => None,
        }
    }

    pub fn next_deadline(&self, now: Instant, service: &ServiceConfig) -> Option<Instant> {
        let deadline = match self.phase {
            Phase::Finishing { deadline } | Phase::Draining { deadline, .. } => Some(deadline),
            _ => None,
        };
        earliest_after(now, deadline.into_iter().chain(self.kill_at(now, service)))
    }
}

impl Master {
    pub(super) fn handle_term(&mut self) {
        self.begin_graceful_stop("SIGTERM");
    }

    /// Graceful stop (SIGTERM, or `stop` from `asked_by`): no new connections or jobs; what
    /// is queued and running may finish until `shutdown_timeout`.
    pub(super) fn begin_graceful_stop(&mut self, asked_by: &str) {
        if self.control.stopping() {
            return;
        }
        info!(
            "{asked_by}: graceful stop (at most {})",
            humantime::format_duration(self.config.service.shutdown_timeout)
        );
        self.listener = None;
        self.systemd.stopping();
        self.control.phase = Phase::Finishing {
            deadline: Instant::now() + self.config.service.shutdown_timeout,
        };
    }

    /// Fast stop: answer everything `shutting_down` now and stop the workers at once.
    pub(super) fn handle_int(&mut self) {
        info!("SIGINT/SIGQUIT: fast stop");
        self.begin_fast_stop(0);
    }

    /// The fast stop that `stop --fast` from `asked_by` asks for: the same as SIGINT.
    pub(super) fn fast_stop_asked(&mut self, asked_by: &str) {
        info!("{asked_by}: fast stop");
        self.begin_fast_stop(0);
    }

    /// A fast stop from any phase; the exit code only ever rises (1: gave up on crashes).
    pub(super) fn begin_fast_stop(&mut self, exit_code: i32) {
        self.listener = None;
        self.control.exit_code = self.control.exit_code.max(exit_code);
        self.control.phase = match self.control.phase {
            Phase::Normal => {
                self.systemd.stopping();
                Phase::Terminating { told: None }
            }
            Phase::Finishing { .. } => Phase::Terminating { told: None },
            // Told already: the workers are killed after the short grace.
            Phase::Draining { told, .. } => Phase::Draining {
                deadline: Instant::now(),
                told,
            },
            terminating @ Phase::Terminating { .. } => terminating,
        };
    }

    /// Reload: re-reads the configuration and the catalog (the start-up's checks, through
    /// the loader it gave); if valid, the new generation is current and the supervisor
    /// replaces every worker one at a time, the new one first (`manage_workers`). If not, the
    /// old configuration stays and every problem is logged. The size starts again at
    /// `workers.count`; load grows it again if need be.
    pub(super) fn handle_hup(&mut self) {
        self.reload("SIGHUP");
    }

    /// The reload of [`Master::handle_hup`], asked by `asked_by` (a signal or a client).
    pub(super) fn reload(&mut self, asked_by: &str) -> Reload {
        if self.control.stopping() {
            return Reload::Stopping;
        }
        info!("{asked_by}: reloading {}", self.config.file.display());
        self.systemd.reloading();
        match (self.load)(&self.config.file) {
            Err(problems) => {
                for problem in &problems {
                    error!("reload refused, keeping the running configuration: {problem}");
                }
                Reload::Refused(problems)
            }
            Ok(Generation {
                config,
                catalog,
                worker_main,
                keeper_main,
            }) => {
                if config.service.socket != self.config.service.socket {
                    warn!("service.socket changed: a restart is needed to move the socket");
                }
                if config.service.metrics_listen != self.config.service.metrics_listen {
                    warn!("service.metrics_listen changed: a restart is needed to move it");
                }
                self.size = super::scaling::Size::new(config.workers.count);
                self.config = config;
                self.catalog = catalog;
                self.worker_main = worker_main;
                // The keeper holds the catalog's defaults and the queue settings: a new one
                // starts with the new generation (the workers' jobs are not touched).
                self.durable.keeper.tell_to_stop(crate::ipc::ToKeeper::Exit);
                self.keeper_main = keeper_main;
                self.generation += 1;
                info!(
                    "reload accepted (generation {}); replacing workers one by one",
                    self.generation
                );
                Reload::Accepted
            }
        }
    }

    /// Answers `client`'s `reload` request `id` once the generation it started serves.
    pub(super) fn await_reload(&mut self, client: ClientId, id: Box<RawValue>) {
        self.control.reloads_awaited.push((client, id));
    }

    /// Answers the awaited reloads once the current generation serves: as many of its
    /// workers serving as wanted and none of an older one left serving, so every job from
    /// then on runs on the new configuration. A later reload's generation answers the
    /// earlier requests too. A stop answers them `shutting_down`.
    pub(super) fn answer_reloads(&mut self) {
        if self.control.reloads_awaited.is_empty() {
            return;
        }
        let generation = self.generation;
        let serving = self.workers.serving_in(generation);
        let answer = |id: &RawValue| -> Option<Vec<u8>> {
            if self.control.stopping() {
                let body = ErrorBody::new(
                    ErrorKind::ShuttingDown,
                    "the service began to stop before the reload's workers all served",
                );
                return Some(protocol::error_line(id, &body.to_json()));
            }
            let served = serving >= self.size.wanted()
                && self.workers.serving().all(|w| w.generation == generation);
            let result = format!("{{\"generation\":{generation},\"workers\":{serving}}}");
            served.then(|| protocol::ok_line(id, &result))
        };
        let lines: Option<Vec<(ClientId, Vec<u8>)>> = self
            .control
            .reloads_awaited
            .iter()
            .map(|(client, id)| answer(id).map(|line| (*client, line)))
            .collect();
        let Some(lines) = lines else { return };
        self.control.reloads_awaited.clear();
        for (client, line) in lines {
            self.answer(client, &line);
        }
    }

    /// Moves a stop along, one step of the ladder when it is due.
    pub(super) fn progress_stop(&mut self) {
        let now = Instant::now();
        if let Phase::Finishing { deadline } = self.control.phase {
            if now >= deadline {
                self.control.phase = Phase::Terminating { told: None };
            } else if self.jobs.is_empty() && self.durable.in_flight() == 0 {
                self.stop_workers(false);
                self.control.phase = Phase::Draining {
                    deadline,
                    told: now,
                };
            }
        }
        if self.control.phase == (Phase::Terminating { told: None }) {
            for job_id in self.jobs.ids() {
                let body = ErrorBody::new(
                    ErrorKind::ShuttingDown,
                    "the service stopped before this job finished",
                );
                self.fail_job(job_id, body);
            }
            self.stop_workers(true);
            self.control.phase = Phase::Terminating { told: Some(now) };
        }
        if let Some(kill_at) = self.control.kill_at(now, &self.config.service) {
            if now >= kill_at {
                self.kill_remaining_workers();
            }
        }
        // Last: with every worker gone, the keeper puts back what this instance still holds
        // (interrupted by the stop: attempts not spent), then exits.
        if self.control.stopping() && self.workers.is_empty() && !self.durable.keeper.is_gone() {
            self.durable.keeper.tell_to_stop(crate::ipc::ToKeeper::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(shutdown_timeout: Duration) -> ServiceConfig {
        ServiceConfig {
            shutdown_timeout,
            ..ServiceConfig::default()
        }
    }

    #[test]
    fn the_kill_after_a_stop_frame_waits_the_shutdown_grace_or_the_short_one_past_the_deadline() {
        let service = service(Duration::from_secs(30));
        let told = Instant::now();
        let deadline = told + Duration::from_secs(10);
        let draining = Control {
            phase: Phase::Draining { deadline, told },
            ..Control::default()
        };
        assert_eq!(
            draining.kill_at(told, &service),
            Some(told + Duration::from_secs(30))
        );
        assert_eq!(
            draining.kill_at(deadline, &service),
            Some(told + FAST_STOP_GRACE)
        );
        assert_eq!(draining.next_deadline(told, &service), Some(deadline));
    }

    #[test]
    fn a_fast_stop_kills_after_the_short_grace_once_the_workers_were_told() {
        let service = service(Duration::from_secs(30));
        let now = Instant::now();
        let mut control = Control {
            phase: Phase::Terminating { told: None },
            exit_code: 1,
            ..Control::default()
        };
        assert_eq!(control.kill_at(now, &service), None, "not told yet");
        control.phase = Phase::Terminating { told: Some(now) };
        assert_eq!(control.kill_at(now, &service), Some(now + FAST_STOP_GRACE));
        assert_eq!(control.exit_code(), Some(1));
        assert_eq!(Control::default().exit_code(), None, "serving");
    }
}
