//! A child's channel as the master holds it — a worker's or the queue keeper's: never
//! blocking, frames queued out and written as the socket takes them, frames read in whole,
//! and when the child was last heard from.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use crate::ipc::{self, FrameBuffer};

/// Forks a child that runs `child_main(its end of a new socketpair, the master's pid)` and
/// never returns; the master gets the child's pid and its end of the channel. Every signal
/// is blocked across the fork: the master's handlers write to the master's self-pipe and
/// must not run in the child before its reset replaces them. The one place the master forks.
pub fn fork_child(child_main: impl FnOnce(UnixStream, Pid) -> i32) -> io::Result<(Pid, Channel)> {
    let (master_end, child_end) = UnixStream::pair()?;
    let master = getpid();
    let mut previous = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )?;
    // SAFETY: the master has one thread, so no lock is held by another thread at the fork;
    // the child goes straight into its main, which never returns.
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Child) => std::process::exit(child_main(child_end, master)),
        Ok(ForkResult::Parent { child }) => {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            drop(child_end);
            Ok((child, Channel::new(master_end)?))
        }
        Err(e) => {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            Err(e.into())
        }
    }
}

pub struct Channel {
    pub stream: UnixStream,
    frames: FrameBuffer,
    output: Vec<u8>,
    /// When the last bytes arrived (a child beats at least every second).
    pub last_heard: Instant,
}

impl Channel {
    /// Wraps the master's end of a socketpair, made non-blocking.
    pub fn new(stream: UnixStream) -> io::Result<Channel> {
        stream.set_nonblocking(true)?;
        Ok(Channel {
            stream,
            frames: FrameBuffer::default(),
            output: Vec::new(),
            last_heard: Instant::now(),
        })
    }

    /// Queues a frame and writes what the socket takes now.
    pub fn send<T: Serialize>(&mut self, message: &T) {
        self.queue(message);
        let _ = self.flush();
    }

    /// Queues a frame without writing it: frames queued in one turn leave in one write at the
    /// next [`Channel::flush`] (dispatch hands a worker several jobs this way).
    pub fn queue<T: Serialize>(&mut self, message: &T) {
        ipc::encode_into(&mut self.output, message);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Reads what the socket has and returns the whole frames. EOF or a broken frame end the
    /// list; the child's exit is then seen through SIGCHLD. `scratch` is the master's one
    /// read buffer, lent to each read; `who` names the child in the log of a broken frame
    /// (formatted only then: not once per read).
    pub fn read_frames<T: DeserializeOwned>(
        &mut self,
        scratch: &mut [u8],
        who: impl std::fmt::Display,
    ) -> Vec<T> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => break,
                Ok(n) => {
                    self.last_heard = Instant::now();
                    self.frames.extend(&scratch[..n]);
                    // A short read emptied the socket: no second read just to hear EAGAIN.
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = self.frames.next_frame::<T>() {
            match frame {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    log::error!("{who} sent a broken frame: {e}");
                    break;
                }
            }
        }
        frames
    }
}
