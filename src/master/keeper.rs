//! The queue keeper's process as the master sees it (DESIGN §12): forked like a worker, its
//! channel read and written without blocking, restarted with backoff when it dies, told to
//! stop last, after every worker.
//!
//! The master never runs a statement; the keeper runs them all for it. This room owns only
//! the process; what its frames mean is the durable room's.

use std::io;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::channel::{fork_child, Channel};
use super::{earliest_after, KeeperMain};
use crate::ipc::{FromKeeper, ToKeeper};

/// First restart delay after the keeper died; doubles per death in a row, up to the ceiling.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the keeper may take to put interrupted jobs back at a stop (its statements are
/// bounded by 10 s) before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A keeper silent this long (it beats every second) is hung: killed and restarted.
const SILENCE: Duration = Duration::from_secs(30);

/// The keeper process, when one runs.
pub struct KeeperProcess {
    pub pid: Pid,
    pub channel: Channel,
    /// Told to stop (or to exit for a reload) at this instant.
    told_to_stop: Option<Instant>,
}

/// The keeper's process slot: the process, and when the next one may start.
#[derive(Default)]
pub struct KeeperSlot {
    pub process: Option<KeeperProcess>,
    deaths_in_a_row: u32,
    next_spawn: Option<Instant>,
}

impl KeeperSlot {
    /// Forks a keeper if none runs and no backoff holds it back.
    pub fn ensure_running(&mut self, main: &KeeperMain) {
        if self.process.is_some() || self.next_spawn.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match spawn(main) {
            Ok(process) => {
                info!("queue keeper started (pid {})", process.pid);
                self.process = Some(process);
                self.next_spawn = None;
            }
            Err(e) => {
                error!("fork (queue keeper): {e}");
                self.next_spawn = Some(Instant::now() + FIRST_BACKOFF);
            }
        }
    }

    /// Whether `pid` was the keeper; if so it is gone now, and a restart is scheduled
    /// unless it was told to stop.
    pub fn reap(&mut self, pid: Pid, how: &str) -> bool {
        if self.process.as_ref().map(|p| p.pid) != Some(pid) {
            return false;
        }
        let process = self.process.take().expect("checked just above");
        if process.told_to_stop.is_some() {
            info!("queue keeper (pid {pid}) {how}");
            self.deaths_in_a_row = 0;
            return true;
        }
        self.deaths_in_a_row += 1;
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << self.deaths_in_a_row.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        warn!(
            "queue keeper (pid {pid}) {how}; restarting in {}",
            humantime::format_duration(delay)
        );
        self.next_spawn = Some(Instant::now() + delay);
        true
    }

    /// A healthy beat resets the restart backoff.
    pub fn heard_healthy(&mut self) {
        self.deaths_in_a_row = 0;
    }

    /// Queues `message` for the keeper. It is written when the loop next polls (the keeper's
    /// channel then wants to write, so that poll returns at once): every frame of one turn —
    /// a client's pipelined enqueues — leaves in one write, not one write per frame.
    pub fn send(&mut self, message: &ToKeeper) -> bool {
        match &mut self.process {
            Some(process) => {
                process.channel.queue(message);
                true
            }
            None => false,
        }
    }

    /// Asks the keeper to stop: `Stop` (put back what this instance holds, then exit) at the
    /// end of a stop, or killed when no worker-free moment will come.
    pub fn tell_to_stop(&mut self, message: ToKeeper) {
        if let Some(process) = &mut self.process {
            if process.told_to_stop.is_none() {
                process.told_to_stop = Some(Instant::now());
                process.channel.send(&message);
            }
        }
    }

    pub fn is_gone(&self) -> bool {
        self.process.is_none()
    }

    /// Kills a keeper past its stop grace or silent too long.
    pub fn murder_if_overdue(&mut self) {
        let Some(process) = &self.process else {
            return;
        };
        let now = Instant::now();
        if process
            .told_to_stop
            .is_some_and(|told| now >= told + STOP_GRACE)
        {
            warn!(
                "queue keeper (pid {}) did not stop; killing it",
                process.pid
            );
            let _ = kill(process.pid, Signal::SIGKILL);
        } else if now >= process.channel.last_heard + SILENCE {
            warn!(
                "queue keeper (pid {}) silent for {}; killing it as hung",
                process.pid,
                humantime::format_duration(SILENCE)
            );
            let _ = kill(process.pid, Signal::SIGKILL);
        }
    }

    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let process = self.process.as_ref();
        let stop = process.and_then(|p| p.told_to_stop.map(|told| told + STOP_GRACE));
        let silence = process.map(|p| p.channel.last_heard + SILENCE);
        earliest_after(now, stop.into_iter().chain(silence).chain(self.next_spawn))
    }

    /// The frames the keeper sent since the last read.
    pub fn read_frames(&mut self, scratch: &mut [u8]) -> Vec<FromKeeper> {
        match &mut self.process {
            Some(process) => process.channel.read_frames(scratch, "the queue keeper"),
            None => Vec::new(),
        }
    }

    pub fn flush(&mut self) {
        if let Some(process) = &mut self.process {
            let _ = process.channel.flush();
        }
    }
}

impl KeeperProcess {
    pub fn wants_write(&self) -> bool {
        self.channel.wants_write()
    }
}

/// Forks the keeper, as a worker is forked.
fn spawn(main: &KeeperMain) -> io::Result<KeeperProcess> {
    let (pid, channel) = fork_child(|channel, master| main(channel, master))?;
    Ok(KeeperProcess {
        pid,
        channel,
        told_to_stop: None,
    })
}
