//! The pipelined load of `forkpool bench`: `clients` connections, one thread each (blocking
//! sockets; the load generator is not the master and may use threads), each keeping up to
//! `pipeline` requests in flight until a budget of jobs or time is spent. Every answer is
//! counted: a failed request is an error of its kind, a connection the service closed with
//! requests in flight is `connection_lost` for each of them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::exit::EXIT_UNREACHABLE;
/// How often the progress line on a terminal is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The error kind counted for each request in flight on a connection that broke (closed by
/// the service, a read or write error, an answer that is not ours).
pub(super) const CONNECTION_LOST: &str = "connection_lost";

/// When the clients stop taking new jobs.
struct Budget {
    /// Jobs handed out so far (may overshoot `total` by one per client: those are not sent).
    issued: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// Claims one job; false once the count or the time is used up.
    fn take(&self) -> bool {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return false;
        }
        match self.total {
            Some(total) => self.issued.fetch_add(1, Ordering::Relaxed) < total,
            None => true,
        }
    }
}

/// What one client connection measured.
#[derive(Default)]
pub(super) struct Tally {
    /// Nanoseconds from sending a request to reading its answer, failed ones included.
    pub(super) latencies_ns: Vec<u64>,
    pub(super) errors: BTreeMap<String, u64>,
    /// Why the connection broke, if it did (the first such reason only).
    pub(super) broken: Option<String>,
    /// The `job_id` of every answer that had one (`enqueue`).
    pub(super) job_ids: Vec<i64>,
}

impl Tally {
    pub(super) fn error(&mut self, kind: &str, count: u64) {
        *self.errors.entry(kind.to_string()).or_default() += count;
    }
}

/// The part of an answer line the bench reads; of `result` only an enqueue's `job_id`.
#[derive(Deserialize)]
struct Answer {
    id: Option<u64>,
    ok: bool,
    error: Option<AnswerError>,
    result: Option<AnswerResult>,
}

#[derive(Deserialize)]
struct AnswerResult {
    job_id: Option<i64>,
}

#[derive(Deserialize)]
struct AnswerError {
    kind: String,
}

/// Opens `clients` connections. Every connection is opened before the clock starts, so an
/// unreachable service is reported once, plainly, and connection set-up is not part of the
/// figures. `read_timeout` bounds each wait for an answer (`None`: a job may take as long as
/// its own timeout).
pub(super) fn connect_all(
    socket: &Path,
    clients: usize,
    read_timeout: Option<Duration>,
) -> Result<Vec<UnixStream>, i32> {
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        let stream = UnixStream::connect(socket)
            .and_then(|stream| stream.set_read_timeout(read_timeout).map(|()| stream));
        match stream {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                eprintln!(
                    "cannot reach forkpool at {}: {e} — is the service running?",
                    socket.display()
                );
                return Err(EXIT_UNREACHABLE);
            }
        }
    }
    Ok(streams)
}

/// Sends requests `{"id":N` + `request_tail` on every stream, each keeping `depth` in flight,
/// until `total` requests are sent (`None`: no limit) or `deadline` passes, and every answer
/// is in; what each connection measured.
pub(super) fn drive_all(
    streams: Vec<UnixStream>,
    request_tail: &str,
    depth: usize,
    total: Option<u64>,
    deadline: Option<Instant>,
) -> Vec<Tally> {
    let started = Instant::now();
    let clients = streams.len();
    let budget = Arc::new(Budget {
        issued: AtomicU64::new(0),
        total,
        deadline,
    });
    let answered = Arc::new(AtomicU64::new(0));
    let (finished, tallies) = mpsc::channel();
    for stream in streams {
        let (budget, answered, finished) =
            (Arc::clone(&budget), Arc::clone(&answered), finished.clone());
        let tail = request_tail.to_string();
        std::thread::spawn(move || {
            let tally = drive_connection(stream, &tail, depth, &budget, &answered);
            let _ = finished.send(tally);
        });
    }
    drop(finished);
    collect(tallies, clients, &answered, started)
}

/// Waits for every client's tally; on a terminal, rewrites a progress line meanwhile.
fn collect(
    tallies: mpsc::Receiver<Tally>,
    clients: usize,
    answered: &AtomicU64,
    started: Instant,
) -> Vec<Tally> {
    let progress = std::io::stderr().is_terminal();
    let mut done = Vec::with_capacity(clients);
    loop {
        match tallies.recv_timeout(PROGRESS_EVERY) {
            Ok(tally) => done.push(tally),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if progress {
            let jobs = answered.load(Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64();
            eprint!(
                "\r{jobs} jobs in {seconds:.0} s ({:.0} jobs/s)   ",
                jobs as f64 / seconds
            );
        }
    }
    if progress {
        eprintln!();
    }
    done
}

/// One client: keeps up to `depth` requests in flight until the budget is spent and every
/// request sent has its answer (or the connection breaks).
fn drive_connection(
    stream: UnixStream,
    request_tail: &str,
    depth: usize,
    budget: &Budget,
    answered: &AtomicU64,
) -> Tally {
    let mut tally = Tally {
        latencies_ns: Vec::with_capacity(4096),
        ..Tally::default()
    };
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            tally.broken = Some(format!("cannot duplicate the socket: {e}"));
            return tally;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(depth);
    let mut next_id: u64 = 0;
    let mut batch = Vec::with_capacity(depth * (request_tail.len() + 24));
    let mut line = String::new();
    loop {
        // Top up to `depth` in one write: a pipelined client pays one syscall per batch.
        batch.clear();
        let now = Instant::now();
        while in_flight.len() < depth && budget.take() {
            next_id += 1;
            batch.extend_from_slice(b"{\"id\":");
            batch.extend_from_slice(next_id.to_string().as_bytes());
            batch.extend_from_slice(request_tail.as_bytes());
            in_flight.insert(next_id, now);
        }
        if in_flight.is_empty() {
            return tally;
        }
        if !batch.is_empty() {
            if let Err(e) = writer.write_all(&batch) {
                return broken(tally, &in_flight, format!("sending requests: {e}"));
            }
        }
        // Read one answer (blocking), then every further answer already buffered.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    let why = "the service closed the connection".to_string();
                    return broken(tally, &in_flight, why);
                }
                Ok(_) => {}
                Err(e) => return broken(tally, &in_flight, format!("reading answers: {e}")),
            }
            let answer = match serde_json::from_str::<Answer>(&line) {
                Ok(answer) => answer,
                Err(e) => {
                    let why = format!("an answer is not what the protocol says ({e}): {line}");
                    return broken(tally, &in_flight, why);
                }
            };
            let Some(sent) = answer.id.and_then(|id| in_flight.remove(&id)) else {
                let why = format!("an answer to no request in flight: {line}");
                return broken(tally, &in_flight, why);
            };
            tally.latencies_ns.push(sent.elapsed().as_nanos() as u64);
            answered.fetch_add(1, Ordering::Relaxed);
            tally
                .job_ids
                .extend(answer.result.and_then(|result| result.job_id));
            if !answer.ok {
                let kind = answer
                    .error
                    .map_or_else(|| "unknown".to_string(), |e| e.kind);
                tally.error(&kind, 1);
            }
            if !reader.buffer().contains(&b'\n') {
                break;
            }
        }
    }
}

/// Counts every request still in flight as lost and notes why.
fn broken(mut tally: Tally, in_flight: &HashMap<u64, Instant>, why: String) -> Tally {
    tally.error(CONNECTION_LOST, in_flight.len() as u64);
    tally.broken = Some(why);
    tally
}

/// The value below which `fraction` of the sorted `values` lie (nearest rank); 0 when empty.
pub(super) fn nearest_rank(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
