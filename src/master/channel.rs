//! A child's channel as the master holds it — a worker's or the queue keeper's: never
//! blocking, frames queued out and written as the socket takes them, frames read in whole,
//! and when the child was last heard from.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ipc::{self, FrameBuffer};

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
        self.output.extend_from_slice(&ipc::encode(message));
        let _ = self.flush();
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
    /// read buffer, lent to each read; `who` names the child in the log of a broken frame.
    pub fn read_frames<T: DeserializeOwned>(&mut self, scratch: &mut [u8], who: &str) -> Vec<T> {
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
