//! Signals for the master, delivered through a self-pipe that the event loop polls.
//!
//! The handler (signal-hook's) only records the signal and writes a byte; all real work
//! happens in the loop, as in gunicorn's arbiter.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// The signals the master reacts to (DESIGN §8).
const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGCHLD,
];

pub struct SignalPipe {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl SignalPipe {
    pub fn install() -> io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let signals = HANDLED.map(|signal| signal as libc::c_int);
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, signals)?;
        Ok(SignalPipe { delivery })
    }

    /// The pipe's read end, readable when a signal has arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }

    /// The signals that arrived since the last call (each once), stop signals first so a
    /// TERM that came with a HUP is not preceded by a pointless reload.
    pub fn take(&mut self) -> Vec<Signal> {
        let mut signals: Vec<Signal> = self
            .delivery
            .pending()
            .filter_map(|number| Signal::try_from(number).ok())
            .collect();
        signals.sort_by_key(|signal| HANDLED.iter().position(|handled| handled == signal));
        signals
    }
}
