//! The client connections: each a non-blocking socket with its partial input line, the
//! answers not yet written, and when it last did anything (for `service.client_idle_timeout`).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::admission::Peer;
use super::earliest_after;

pub type ClientId = u64;

/// What one read produced.
#[derive(Default)]
pub struct Input {
    /// Complete lines, without their newline (blank lines dropped).
    pub lines: Vec<Vec<u8>>,
    /// A line is longer than the limit: answer `too_large` and close.
    pub too_large: bool,
    /// The socket failed: the client is gone.
    pub closed: bool,
    /// The client closed its sending side (end of file). It may still read: it is owed an
    /// answer to every request it sent (socat, `nc -N` and `shutdown(SHUT_WR)` do this).
    pub half_closed: bool,
}

pub struct Client {
    pub stream: UnixStream,
    partial: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Answers were queued this turn and not yet tried: the loop writes them all at the end
    /// of the turn, one write per client however many jobs it answered.
    flush_due: bool,
    /// Close once the pending answers are written (after `too_large`, `forbidden` or
    /// `too_many_clients`).
    pub close_after_flush: bool,
    /// It closed its sending side: nothing more is read; it is closed once every answer it
    /// is owed is written.
    pub read_closed: bool,
    /// Who connected, for log lines; `None` if the kernel would not say.
    pub peer: Option<Peer>,
    /// The last byte received or answer queued: idleness counts from whichever came last,
    /// so a client is never closed just after a long job's answer.
    last_activity: Instant,
}

/// How much one wake-up reads from one client before the loop serves the others.
const READ_BUDGET: usize = 1024 * 1024;

impl Client {
    pub fn new(stream: UnixStream, peer: Option<Peer>) -> Client {
        Client {
            stream,
            partial: Vec::new(),
            output: Vec::new(),
            written: 0,
            flush_due: false,
            close_after_flush: false,
            read_closed: false,
            peer,
            last_activity: Instant::now(),
        }
    }

    /// Reads what is available and splits it into lines no longer than `max_line`.
    /// `scratch` is the master's one read buffer, lent to each read.
    pub fn read_lines(&mut self, max_line: usize, scratch: &mut [u8]) -> Input {
        let mut input = Input::default();
        if self.close_after_flush || self.read_closed {
            return input;
        }
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match self.stream.read(scratch) {
                Ok(0) => {
                    // A last request without its newline is still a request: it runs if
                    // it is complete JSON, and is answered `bad_request` otherwise.
                    let last = std::mem::take(&mut self.partial);
                    if !last.iter().all(u8::is_ascii_whitespace) {
                        input.lines.push(last);
                    }
                    input.half_closed = true;
                    self.read_closed = true;
                    break;
                }
                Ok(n) => {
                    self.last_activity = Instant::now();
                    budget = budget.saturating_sub(n);
                    self.split_lines(&scratch[..n], max_line, &mut input);
                    // A short read emptied the socket: no second read just to hear EAGAIN.
                    if input.too_large || n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    input.closed = true;
                    break;
                }
            }
        }
        input
    }

    fn split_lines(&mut self, mut bytes: &[u8], max_line: usize, input: &mut Input) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max_line {
                input.too_large = true;
                return;
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                input.lines.push(line);
            }
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() > max_line {
            // Never hold more than the limit for a line that has not ended yet.
            self.partial = Vec::new();
            input.too_large = true;
        }
    }

    /// Queues an answer; the loop writes it at the end of the turn ([`Client::flush_due`]),
    /// together with the other answers of the turn.
    pub fn send(&mut self, line: &[u8]) {
        self.last_activity = Instant::now();
        self.output.extend_from_slice(line);
        self.flush_due = true;
    }

    /// Whether answers were queued since the last write: the end of the turn writes them.
    /// A client whose socket was full waits for POLLOUT instead (no write just to hear
    /// EAGAIN every turn).
    pub fn flush_due(&self) -> bool {
        self.flush_due
    }

    /// Writes pending answers until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_due = false;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        self.written < self.output.len()
    }

    /// Done: nothing left to write and asked to close.
    pub fn finished(&self) -> bool {
        self.close_after_flush && !self.wants_write()
    }

    /// Whether the loop should wait for it to become readable: not once it closed its side
    /// (a socket at end of file is always readable, and would spin the loop).
    pub fn wants_read(&self) -> bool {
        !self.read_closed
    }

    /// When this client counts as idle for `timeout`, unless it sends something first; `None`
    /// while answers wait to be written. Jobs in flight are the master's to check: it alone
    /// knows them.
    pub fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (!self.wants_write()).then(|| self.last_activity + timeout)
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(Peer { pid, uid, gid }) => write!(f, "client pid {pid} (uid {uid}, gid {gid})"),
            None => f.write_str("client (credentials unknown)"),
        }
    }
}

/// The connected clients, by id.
#[derive(Default)]
pub struct Clients {
    connected: HashMap<ClientId, Client>,
    last_id: ClientId,
}

impl Clients {
    /// Holds a client just accepted; its id.
    pub fn add(&mut self, client: Client) -> ClientId {
        self.last_id += 1;
        self.connected.insert(self.last_id, client);
        self.last_id
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        self.connected.get_mut(&id)
    }

    /// Forgets a client; dropping it closes its socket.
    pub fn remove(&mut self, id: ClientId) -> Option<Client> {
        self.connected.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ClientId, &Client)> {
        self.connected.iter().map(|(id, client)| (*id, client))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Client> {
        self.connected.values_mut()
    }

    /// The clients answered this turn whose answers are not written yet.
    pub fn flush_due(&self) -> Vec<ClientId> {
        self.connected
            .iter()
            .filter(|(_, client)| client.flush_due())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.connected.len()
    }

    /// Clients past their idle deadline at `now` (those awaiting a job's answer among them:
    /// the caller knows the jobs).
    pub fn idle(&self, timeout: Duration, now: Instant) -> Vec<ClientId> {
        self.iter()
            .filter(|(_, c)| c.idle_deadline(timeout).is_some_and(|at| at <= now))
            .map(|(id, _)| id)
            .collect()
    }

    /// The next idle deadline after `now`. A client with a job in flight may wake the loop
    /// once for nothing; the sweep then skips it, and its deadline, now past, no longer
    /// counts.
    pub fn next_deadline(&self, now: Instant, timeout: Option<Duration>) -> Option<Instant> {
        let timeout = timeout?;
        earliest_after(
            now,
            self.connected
                .values()
                .filter_map(|c| c.idle_deadline(timeout)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(stream: &mut UnixStream) -> Vec<u8> {
        let mut buffer = [0u8; 4096];
        match stream.read(&mut buffer) {
            Ok(n) => buffer[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("reading the client's end: {e}"),
        }
    }

    #[test]
    fn answers_wait_for_the_turns_flush_and_leave_in_one_write() {
        let (master_end, mut client_end) = UnixStream::pair().unwrap();
        master_end.set_nonblocking(true).unwrap();
        client_end.set_nonblocking(true).unwrap();
        let mut client = Client::new(master_end, None);
        assert!(!client.flush_due());

        client.send(b"{\"id\":1}\n");
        client.send(b"{\"id\":2}\n");
        assert!(client.flush_due(), "answers queued this turn are due");
        assert!(
            pending(&mut client_end).is_empty(),
            "nothing is written before the end of the turn"
        );

        client.flush().unwrap();
        assert!(!client.flush_due() && !client.wants_write());
        assert_eq!(pending(&mut client_end), b"{\"id\":1}\n{\"id\":2}\n");
    }
}
