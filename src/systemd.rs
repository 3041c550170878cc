//! systemd integration (DESIGN §9): the socket systemd passes (socket activation), and the
//! notifications of a `Type=notify` service — READY, STATUS, RELOADING, STOPPING, WATCHDOG.
//!
//! Everything here runs in the master, in its loop; workers never notify (the unit says
//! `NotifyAccess=main`). With `NOTIFY_SOCKET` unset (not started by systemd) nothing is sent
//! and no timer is armed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike, UnixAddr};
use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed: fresh enough for `systemctl status`, one datagram per
/// interval is no cost.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Takes the listening socket systemd passed, if this process was socket-activated.
///
/// Call once, in the master, before any fork: `LISTEN_PID` must name this process, and the
/// variables are removed so that workers (and whatever they start) do not take the socket
/// for theirs. The descriptor is marked close-on-exec. A unit passing more than one socket
/// is refused: forkpool serves one.
pub fn take_listener() -> Result<Option<UnixListener>, String> {
    // SAFETY: the master is single-threaded here (before the loop, before any fork), so no
    // other thread reads the environment while these variables are removed.
    let fds = unsafe { sd_notify::listen_fds_and_unset_env() };
    std::env::remove_var("LISTEN_FDNAMES");
    let mut fds = fds.map_err(|e| format!("reading the sockets systemd passed: {e}"))?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        return Err(format!(
            "systemd passed {} sockets; forkpool serves one — give forkpool.socket a single \
             ListenStream=",
            fds.len() + 1
        ));
    }
    // SAFETY: systemd hands descriptor 3 to this process to own; nothing else in this
    // process refers to it (the variables naming it are gone).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_unix = getsockname::<UnixAddr>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map(|addr| addr.family() == Some(AddressFamily::Unix))
        .unwrap_or(false);
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    if !is_unix || !listening {
        return Err(
            "the socket systemd passed is not a listening Unix stream socket; use \
             ListenStream=/run/forkpool/forkpool.sock in forkpool.socket"
                .to_string(),
        );
    }
    Ok(Some(UnixListener::from(fd)))
}

/// What the master tells systemd about itself, and when.
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set: systemd (or a test standing in for it) listens.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises; `None`: no watchdog.
    watchdog_every: Option<Duration>,
    next_watchdog: Option<Instant>,
    next_status: Option<Instant>,
    /// Start-up or a reload is not yet complete: READY=1 is owed.
    ready_owed: bool,
    /// Jobs finished at the last STATUS=, and when, for jobs/s.
    finished_before: u64,
    measured_at: Instant,
    /// A failed send is logged once, not every turn.
    send_failed: bool,
}

/// The master's numbers a STATUS= line and the READY decision need.
pub struct Snapshot {
    /// Workers of the current configuration generation that are serving.
    pub serving_current: usize,
    pub target: usize,
    pub queue_depth: usize,
    /// Jobs answered since start (succeeded + failed).
    pub finished_jobs: u64,
    pub stopping: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and the watchdog settings. Call in the master before any fork:
    /// `WATCHDOG_USEC`/`WATCHDOG_PID` are removed so workers do not think the watchdog is
    /// theirs (`NOTIFY_SOCKET` stays: sd-notify reads it at each send).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        // SAFETY: single-threaded master before any fork; see `take_listener`.
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
        let now = Instant::now();
        let watchdog_every = watchdog.filter(|_| enabled).map(|usec| usec / 2);
        if let Some(every) = watchdog_every {
            info!(
                "systemd watchdog: WATCHDOG=1 every {}",
                humantime::format_duration(every)
            );
        }
        Notifier {
            enabled,
            watchdog_every,
            next_watchdog: watchdog_every.map(|_| now),
            next_status: enabled.then_some(now + STATUS_EVERY),
            ready_owed: true,
            finished_before: 0,
            measured_at: now,
            send_failed: false,
        }
    }

    /// The next instant `tick` has something to send, so the loop wakes for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_watchdog, self.next_status) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One loop turn: WATCHDOG=1 when due (a stuck loop never gets here, so the watchdog
    /// fires), READY=1 once the target count of current workers is serving, STATUS= when
    /// due or with READY.
    pub fn tick(&mut self, now: Instant, snapshot: &Snapshot) {
        if !self.enabled {
            return;
        }
        if let (Some(every), Some(due)) = (self.watchdog_every, self.next_watchdog) {
            if now >= due {
                self.send(&[NotifyState::Watchdog]);
                self.next_watchdog = Some(now + every);
            }
        }
        let ready_now =
            self.ready_owed && !snapshot.stopping && snapshot.serving_current >= snapshot.target;
        let status_due = self.next_status.is_some_and(|due| now >= due);
        if ready_now || status_due {
            let status = self.status_line(now, snapshot);
            if ready_now {
                self.ready_owed = false;
                self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            } else {
                self.send(&[NotifyState::Status(&status)]);
            }
            self.next_status = Some(now + STATUS_EVERY);
        }
    }

    /// A reload begins: RELOADING=1 with the monotonic time systemd requires for
    /// `Type=notify-reload`; READY=1 follows once the new generation serves.
    pub fn reloading(&mut self) {
        if !self.enabled {
            return;
        }
        self.ready_owed = true;
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                warn!("reading CLOCK_MONOTONIC for RELOADING=1: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// A stop begins: systemd then waits for the exit instead of calling it a crash.
    pub fn stopping(&mut self) {
        if !self.enabled {
            return;
        }
        self.ready_owed = false;
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn status_line(&mut self, now: Instant, snapshot: &Snapshot) -> String {
        let seconds = now.duration_since(self.measured_at).as_secs_f64();
        let done = snapshot.finished_jobs.saturating_sub(self.finished_before);
        let rate = if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        };
        self.finished_before = snapshot.finished_jobs;
        self.measured_at = now;
        format!(
            "{}/{} workers serving, queue {}, {:.1} jobs/s",
            snapshot.serving_current, snapshot.target, snapshot.queue_depth, rate
        )
    }

    fn send(&mut self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.send_failed {
                warn!("notifying systemd (NOTIFY_SOCKET): {e}; later failures are not logged");
                self.send_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(serving_current: usize, finished_jobs: u64) -> Snapshot {
        Snapshot {
            serving_current,
            target: 2,
            queue_depth: 3,
            finished_jobs,
            stopping: false,
        }
    }

    #[test]
    fn status_line_counts_jobs_per_second_since_the_last_line() {
        let start = Instant::now();
        let mut notifier = Notifier {
            enabled: true,
            watchdog_every: None,
            next_watchdog: None,
            next_status: None,
            ready_owed: false,
            finished_before: 0,
            measured_at: start,
            send_failed: false,
        };
        let line = notifier.status_line(start + Duration::from_secs(2), &snapshot(2, 10));
        assert_eq!(line, "2/2 workers serving, queue 3, 5.0 jobs/s");
        let line = notifier.status_line(start + Duration::from_secs(4), &snapshot(1, 10));
        assert_eq!(line, "1/2 workers serving, queue 3, 0.0 jobs/s");
    }
}
