//! The server process of a private cluster, run as a child of the process that needs it
//! (a test, or `forkpool dev`).
//!
//! Not daemonised with `pg_ctl start`: a daemon is re-parented to PID 1, and where PID 1 does
//! not reap (some containers and sandboxes) every stopped cluster would leave a zombie. As
//! our child it is reaped by `wait`, which is also how `stop` knows it has exited.

use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::installation::Installation;

/// A running postmaster, our child.
pub struct Postmaster {
    child: Child,
}

/// Which signals reach the postmaster besides ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// Our process group: a terminal's Ctrl-C reaches it with us (the tests' clusters).
    SameGroup,
    /// A process group of its own, so a terminal's Ctrl-C does not stop it before the
    /// service that uses it; and a fast shutdown (SIGINT, the kernel's parent-death signal)
    /// if we die without stopping it, so it is never left behind (`forkpool dev`).
    OwnGroupStopsWithUs,
}

/// PostgreSQL's shutdown modes, as signals to the postmaster.
#[derive(Clone, Copy, Debug)]
pub enum Shutdown {
    /// SIGINT: disconnect clients, checkpoint, exit (`pg_ctl stop -m fast`).
    Fast,
    /// SIGQUIT: exit at once, recovery at next start (`pg_ctl stop -m immediate`).
    Immediate,
}

/// Why a start failed.
pub enum StartFailure {
    /// Another process holds the port: try another one.
    PortTaken,
    /// Anything else, described for a person.
    Other(String),
}

impl Postmaster {
    /// Starts `postgres -D data_dir` in our process group, appending its output to
    /// `log_file`, and waits until it accepts connections or `patience` runs out.
    pub fn start(
        install: &Installation,
        data_dir: &Path,
        log_file: &Path,
        patience: Duration,
    ) -> Result<Postmaster, StartFailure> {
        Postmaster::start_tied(install, data_dir, log_file, patience, Tie::SameGroup)
    }

    /// [`Postmaster::start`], with the signals that reach it chosen by `tie`.
    pub fn start_tied(
        install: &Installation,
        data_dir: &Path,
        log_file: &Path,
        patience: Duration,
        tie: Tie,
    ) -> Result<Postmaster, StartFailure> {
        let log = append_to(log_file).map_err(StartFailure::Other)?;
        let log_before = fs::metadata(log_file).map(|m| m.len()).unwrap_or(0);
        let log_copy = log
            .try_clone()
            .map_err(|e| StartFailure::Other(format!("duplicating the log file handle: {e}")))?;
        let mut command = install.command("postgres");
        command
            .arg("-D")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log);
        if tie == Tie::OwnGroupStopsWithUs {
            command.process_group(0);
            super::signal_when_parent_dies(&mut command, libc::SIGINT);
        }
        let child = command
            .spawn()
            .map_err(|e| StartFailure::Other(format!("running postgres: {e}")))?;
        let mut postmaster = Postmaster { child };
        let deadline = Instant::now() + patience;
        loop {
            if postmaster.is_ready(data_dir) {
                return Ok(postmaster);
            }
            if let Ok(Some(status)) = postmaster.child.try_wait() {
                let log = fs::read(log_file).unwrap_or_default();
                let new_lines = String::from_utf8_lossy(&log[log_before as usize..]);
                return Err(if new_lines.contains("Address already in use") {
                    StartFailure::PortTaken
                } else {
                    StartFailure::Other(format!("postgres exited with {status}: {new_lines}"))
                });
            }
            if Instant::now() > deadline {
                postmaster.stop(Shutdown::Immediate);
                return Err(StartFailure::Other(format!(
                    "postgres did not accept connections within {patience:?}"
                )));
            }
            // The postmaster announces readiness only in its pid file; pg_ctl polls it too.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether it has exited (reaping it if so): a server that stopped on its own.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Signals the shutdown and waits until the process has exited. Never panics: it also
    /// runs while a failed test unwinds.
    pub fn stop(mut self, mode: Shutdown) {
        let signal = match mode {
            Shutdown::Fast => Signal::SIGINT,
            Shutdown::Immediate => Signal::SIGQUIT,
        };
        let _ = kill(Pid::from_raw(self.pid()), signal);
        let _ = self.child.wait();
    }

    /// Since PostgreSQL 10, line 8 of `postmaster.pid` says `ready` once connections are
    /// accepted; line 1 is checked so a stale file from an earlier run cannot pass.
    fn is_ready(&self, data_dir: &Path) -> bool {
        let Ok(pid_file) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pid_file.lines().collect();
        lines.first().map(|l| l.trim()) == Some(self.pid().to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }
}

fn append_to(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening the server log {}: {e}", path.display()))
}
