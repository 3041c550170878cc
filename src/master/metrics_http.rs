//! The scrape endpoint (`service.metrics_listen`): `GET /metrics` answers the Prometheus
//! text, `GET /healthz` 200 while serving and 503 while stopping, inside the master's one
//! poll loop. No thread, no async runtime: each connection is a non-blocking socket with
//! its request head so far, its answer and one deadline.
//!
//! One request per connection (`Connection: close`): after its answer is written the
//! master shuts down its sending side and reads until the scraper closes, so the answer is
//! not cut by a reset for bytes it never read (a lingering close). Limits keep a stray or
//! hostile peer cheap: a head past [`MAX_HEAD`] is answered 431, a connection that has not
//! finished by [`CONNECTION_DEADLINE`] is closed, and past [`MAX_SCRAPERS`] at once a new one
//! is answered 503 and closed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;

use super::{status, Master};
use crate::metrics::exposition::{Family, CONTENT_TYPE};
use crate::metrics::http_request::{self, parse_request, HeadError, Route};
use crate::metrics::status_text;

/// The longest request head read: a scraper's is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// A connection is closed this long after it was accepted, whatever its state: Prometheus'
/// default scrape_timeout, so a scrape that would time out anyway holds nothing longer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Scrape connections held at once: Prometheus uses one per target, a health checker
/// another; more is a peer that does not close its connections.
pub const MAX_SCRAPERS: usize = 16;

/// How much one wake-up reads from one scrape connection: a few heads' worth.
const READ_BUDGET: usize = 4 * MAX_HEAD;

pub type ScraperId = u64;

/// Where a connection is in its one exchange.
enum Phase {
    /// Reading the request head.
    Reading(Vec<u8>),
    /// Writing the answer, `written` bytes of it so far.
    Answering { answer: Vec<u8>, written: usize },
    /// Answered and our side shut: reading until the scraper closes.
    Lingering,
}

struct Scraper {
    stream: TcpStream,
    phase: Phase,
    deadline: Instant,
}

#[derive(Default)]
pub struct MetricsHttp {
    listener: Option<TcpListener>,
    scrapers: HashMap<ScraperId, Scraper>,
    next_id: ScraperId,
}

impl MetricsHttp {
    /// Listens on `address` (none: the endpoint is off).
    pub fn listen(address: Option<SocketAddr>) -> Result<MetricsHttp, String> {
        let Some(address) = address else {
            return Ok(MetricsHttp::default());
        };
        let listener = TcpListener::bind(address)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|e| format!("service.metrics_listen = \"{address}\": cannot listen: {e}"))?;
        Ok(MetricsHttp {
            listener: Some(listener),
            ..MetricsHttp::default()
        })
    }

    pub fn listener(&self) -> Option<&TcpListener> {
        self.listener.as_ref()
    }

    /// Each connection with what it waits for: `(id, stream, wants_write)`.
    pub fn connections(&self) -> impl Iterator<Item = (ScraperId, &TcpStream, bool)> {
        self.scrapers.iter().map(|(id, scraper)| {
            let writing = matches!(scraper.phase, Phase::Answering { .. });
            (*id, &scraper.stream, writing)
        })
    }

    pub fn len(&self) -> usize {
        self.scrapers.len()
    }

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scrapers.values().map(|scraper| scraper.deadline).min()
    }
}

impl Master {
    /// Accepts waiting scrapers; one past [`MAX_SCRAPERS`] gets a 503 and is closed.
    pub(super) fn accept_scrapers(&mut self) {
        loop {
            let Some(listener) = &self.metrics_http.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accept on service.metrics_listen: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let http = &mut self.metrics_http;
            if http.scrapers.len() >= MAX_SCRAPERS {
                let busy = format!("more than {MAX_SCRAPERS} metrics connections at once\n");
                let _ = (&stream).write(&http_request::response(
                    "503 Service Unavailable",
                    "text/plain",
                    &busy,
                ));
                continue;
            }
            http.next_id += 1;
            http.scrapers.insert(
                http.next_id,
                Scraper {
                    stream,
                    phase: Phase::Reading(Vec::new()),
                    deadline: Instant::now() + CONNECTION_DEADLINE,
                },
            );
        }
    }

    /// Reads what a scraper sent: once its head is complete (or wrong), answers it.
    pub(super) fn read_scrape(&mut self, id: ScraperId) {
        let Some(scraper) = self.metrics_http.scrapers.get_mut(&id) else {
            return;
        };
        // A peer that keeps sending is read a little per wake-up, so it cannot hold the loop.
        let mut budget = READ_BUDGET;
        let closed = loop {
            if budget == 0 {
                break false;
            }
            match scraper.stream.read(&mut self.scratch) {
                Ok(0) => break true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    // Past the limit a head is refused as a whole: what follows is read
                    // (so closing sends no reset) but not kept.
                    if let Phase::Reading(head) = &mut scraper.phase {
                        let room = (MAX_HEAD + 1).saturating_sub(head.len());
                        head.extend_from_slice(&self.scratch[..n.min(room)]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let route = match &scraper.phase {
            Phase::Reading(head) => match parse_request(head, MAX_HEAD) {
                Ok(Some(request)) => Some(Ok(http_request::route(&request))),
                Ok(None) => None,
                Err(error) => Some(Err(error)),
            },
            _ => None,
        };
        // A scraper that sent its head and then closed its sending side is still answered.
        let Some(route) = route else {
            if closed {
                self.metrics_http.scrapers.remove(&id);
            }
            return;
        };
        let answer = self.scrape_answer(route);
        if let Some(scraper) = self.metrics_http.scrapers.get_mut(&id) {
            scraper.phase = Phase::Answering { answer, written: 0 };
        }
        self.flush_scrape(id);
    }

    /// Writes what the socket takes of a scraper's answer; once all is written, shuts our
    /// side and lingers until the scraper closes.
    pub(super) fn flush_scrape(&mut self, id: ScraperId) {
        let Some(scraper) = self.metrics_http.scrapers.get_mut(&id) else {
            return;
        };
        let Phase::Answering { answer, written } = &mut scraper.phase else {
            return;
        };
        while *written < answer.len() {
            match scraper.stream.write(&answer[*written..]) {
                Ok(0) => break,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.metrics_http.scrapers.remove(&id);
                    return;
                }
            }
        }
        let _ = scraper.stream.shutdown(Shutdown::Write);
        scraper.phase = Phase::Lingering;
    }

    /// Closes every scrape connection past its deadline.
    pub(super) fn close_stale_scrapers(&mut self) {
        let now = Instant::now();
        self.metrics_http
            .scrapers
            .retain(|_, scraper| scraper.deadline > now);
    }

    /// The whole HTTP answer to a request head.
    fn scrape_answer(&mut self, route: Result<Route, HeadError>) -> Vec<u8> {
        let text = "text/plain; charset=utf-8";
        match route {
            Ok(Route::Metrics) => {
                http_request::response("200 OK", CONTENT_TYPE, &self.metrics_text())
            }
            Ok(Route::Health) if self.control.stopping() => {
                http_request::response("503 Service Unavailable", text, "stopping\n")
            }
            Ok(Route::Health) => http_request::response("200 OK", text, "ok\n"),
            Ok(Route::NotFound) => {
                http_request::response("404 Not Found", text, "try /metrics or /healthz\n")
            }
            Ok(Route::MethodNotAllowed) => {
                http_request::response("405 Method Not Allowed", text, "only GET\n")
            }
            Err(HeadError::TooLarge) => http_request::response(
                "431 Request Header Fields Too Large",
                text,
                &format!("request head over {MAX_HEAD} bytes\n"),
            ),
            Err(HeadError::Malformed(why)) => {
                http_request::response("400 Bad Request", text, &format!("{why}\n"))
            }
        }
    }

    /// `/metrics`: the `status` answer's series (as `status --prometheus` prints them), the
    /// per-job ones, then the connections and the process's own.
    fn metrics_text(&mut self) -> String {
        let mut out = status_text::render(&status::build(self));
        self.job_stats.render(&mut out, self.catalog.names());
        let gauges: [(&str, &str, f64); 4] = [
            (
                "forkpool_clients",
                "Client connections on the socket now.",
                self.clients.len() as f64,
            ),
            (
                "forkpool_metrics_connections",
                "Connections to this endpoint now (this scrape's included).",
                self.metrics_http.len() as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the master since the Unix epoch, in seconds.",
                start_time(self.started.elapsed()),
            ),
            (
                "process_open_fds",
                "Open file descriptors of the master.",
                open_descriptors() as f64,
            ),
        ];
        for (name, help, value) in gauges {
            Family::new(&mut out, name, "gauge", help).sample(&[], value);
        }
        out
    }
}

/// The Unix time the master started, `uptime` ago.
fn start_time(uptime: Duration) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(uptime).as_secs_f64()
}

/// The master's open descriptors, as the Prometheus clients count them: the entries of
/// /proc/self/fd (the one reading it included).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}
