//! systemd integration (DESIGN §9): the socket systemd passes (socket activation), and the
//! notifications of a `Type=notify` service — READY, STATUS, RELOADING, STOPPING, WATCHDOG.
//!
//! Everything here runs in the master, in its loop; workers never notify (the unit says
//! `NotifyAccess=main`). With `NOTIFY_SOCKET` unset (not started by systemd) nothing is sent
//! and no timer is armed.
//!
//! Notifications are sent without blocking: a datagram to a receiver whose queue is full
//! (systemd stuck or slow, `net.unix.max_dgram_qlen` = 10 by default) would otherwise stop the
//! master's loop, and with it every client. Such a message is dropped instead; a dropped
//! `WATCHDOG=1` just lets the watchdog act, which is what a stuck systemd calls for anyway.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
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
    /// Where systemd (or a test standing in for it) listens; `None` without `NOTIFY_SOCKET`,
    /// and then nothing is sent.
    socket: Option<NotifySocket>,
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
    /// theirs. `NOTIFY_SOCKET` is read once, here; it stays in the environment, which is
    /// harmless: workers never notify, and the unit's `NotifyAccess=main` ignores them if
    /// they did.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|value| {
            NotifySocket::parse(&value)
                .map_err(|e| warn!("NOTIFY_SOCKET={value:?}: {e}; not notifying systemd"))
                .ok()
        });
        // SAFETY: single-threaded master before any fork; see `take_listener`.
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
        Notifier::new(socket, watchdog, Instant::now())
    }

    /// A notifier sending to `socket` (none: sends nothing, arms nothing), pinging the
    /// watchdog at half of `watchdog_usec` if given.
    fn new(
        socket: Option<NotifySocket>,
        watchdog_usec: Option<Duration>,
        now: Instant,
    ) -> Notifier {
        let enabled = socket.is_some();
        let watchdog_every = watchdog_usec.filter(|_| enabled).map(|usec| usec / 2);
        if let Some(every) = watchdog_every {
            info!(
                "systemd watchdog: WATCHDOG=1 every {}",
                humantime::format_duration(every)
            );
        }
        Notifier {
            socket,
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
        if self.socket.is_none() {
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
        if self.socket.is_none() {
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
        if self.socket.is_none() {
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

    /// Sends one datagram with `states`, one per line as sd_notify(3) has them. Never waits:
    /// a full receiver queue drops the message (see the module documentation).
    fn send(&mut self, states: &[NotifyState]) {
        let Some(socket) = &self.socket else {
            return;
        };
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        match socket.send(message.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => debug!(
                "NOTIFY_SOCKET is full (systemd is not reading): dropped {}",
                message.trim_end().replace('\n', " ")
            ),
            Err(e) => {
                if !self.send_failed {
                    warn!("notifying systemd (NOTIFY_SOCKET): {e}; later failures are not logged");
                    self.send_failed = true;
                }
            }
        }
    }
}

/// The address in `NOTIFY_SOCKET`.
struct NotifySocket {
    address: SocketAddr,
}

impl NotifySocket {
    /// An absolute path, or `@name` for a socket in the abstract namespace (sd_notify(3)).
    fn parse(value: &OsStr) -> io::Result<NotifySocket> {
        let address = match value.as_bytes() {
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
            [b'/', ..] => SocketAddr::from_pathname(value)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an @abstract socket name",
                ))
            }
        };
        Ok(NotifySocket { address })
    }

    /// One datagram, without blocking: `WouldBlock` when the receiver's queue is full.
    ///
    /// A socket per message, as sd_notify(3) does: nothing stays open for a fork to hand to
    /// a worker, and a systemd that re-executed (and bound its socket anew) is found again.
    fn send(&self, message: &[u8]) -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let sent = socket.send_to_addr(message, &self.address)?;
        if sent < message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            ));
        }
        Ok(())
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
        let mut notifier = Notifier::new(None, None, start);
        let line = notifier.status_line(start + Duration::from_secs(2), &snapshot(2, 10));
        assert_eq!(line, "2/2 workers serving, queue 3, 5.0 jobs/s");
        let line = notifier.status_line(start + Duration::from_secs(4), &snapshot(1, 10));
        assert_eq!(line, "1/2 workers serving, queue 3, 0.0 jobs/s");
    }

    /// Nothing to observe from outside: without `NOTIFY_SOCKET` there is no destination.
    /// What can be seen is that no timer wakes the loop and READY=1 was never sent.
    #[test]
    fn without_notify_socket_no_watchdog_timer_is_armed_and_ready_is_not_sent() {
        let start = Instant::now();
        let mut notifier = Notifier::new(None, Some(Duration::from_millis(200)), start);
        assert_eq!(notifier.next_deadline(), None);
        notifier.tick(start + Duration::from_secs(10), &snapshot(2, 0));
        notifier.reloading();
        notifier.stopping();
        assert_eq!(notifier.next_deadline(), None);
        assert!(notifier.ready_owed, "READY=1 counted as sent");
    }

    #[test]
    fn notify_socket_is_an_absolute_path_or_an_abstract_name() {
        let path = NotifySocket::parse(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.address.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = NotifySocket::parse(OsStr::new("@forkpool/notify")).unwrap();
        assert_eq!(
            abstract_name.address.as_abstract_name(),
            Some(&b"forkpool/notify"[..])
        );
        for bad in ["", "notify.sock", "vsock:2:1234"] {
            assert!(NotifySocket::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("forkpool-test-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        let socket = NotifySocket::parse(OsStr::new(&format!("@{name}"))).unwrap();
        let mut notifier = Notifier::new(Some(socket), None, Instant::now());
        notifier.stopping();
        let mut buffer = [0u8; 64];
        let n = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1\nSTATUS=stopping\n");
    }

    /// The master's loop must not stop for a systemd that does not read: past the queue
    /// limit messages are dropped, and that is not a failure worth a warning.
    #[test]
    fn a_full_notify_socket_drops_messages_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let socket = NotifySocket::parse(path.as_os_str()).unwrap();
        let queue_limit: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .ok()
            .and_then(|limit| limit.trim().parse().ok())
            .unwrap_or(10);
        let messages = queue_limit + 10;
        let (done, finished) = std::sync::mpsc::channel();
        // In a thread, so that a blocking send fails the test instead of hanging it.
        std::thread::spawn(move || {
            let mut notifier = Notifier::new(Some(socket), None, Instant::now());
            for _ in 0..messages {
                notifier.send(&[NotifyState::Watchdog]);
            }
            let _ = done.send(notifier.send_failed);
        });
        let failed = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("a send waited on the full queue");
        assert!(!failed, "a full queue was taken for a failure");
        receiver.set_nonblocking(true).unwrap();
        let mut received = 0;
        let mut buffer = [0u8; 64];
        while let Ok(n) = receiver.recv(&mut buffer) {
            assert_eq!(&buffer[..n], b"WATCHDOG=1\n");
            received += 1;
        }
        assert!(
            0 < received && received < messages,
            "{received} of {messages} queued: none dropped"
        );
    }
}
