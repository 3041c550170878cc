//! One database session and everything it owns: the socket we opened, a current-thread tokio
//! runtime (what `postgres::Client` builds internally, kept in pieces so that every
//! operation is `block_on(timeout(..))` and nothing can hang), and its prepared statements.

use super::conninfo::TargetSessionAttrs;
use super::endpoint::{connect_error_text, Endpoint, Host, RawSocket};
use super::error::Error;
use super::notifications::{Inbox, Notification};
use super::pipeline::{self, PipelineEvent, PipelinedQuery};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client, Statement};

/// How long a clean close waits for the Terminate message to be written.
const TERMINATE_WAIT: Duration = Duration::from_secs(1);

/// Runs `future` on `runtime` for at most `limit`. The timer is created inside `block_on`
/// because tokio's timers need the runtime's context.
pub(super) fn bounded<F: Future>(
    runtime: &Runtime,
    limit: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    runtime.block_on(async { tokio::time::timeout(limit, future).await })
}

/// Serializes runtime building so the descriptors that appear across one `build()` are that
/// runtime's own, not another connect's. Every runtime the pool builds (a connection's, and
/// `cancel_running`'s throwaway one) goes through [`build_runtime`] and this lock.
static RUNTIME_BUILD: Mutex<()> = Mutex::new(());

/// A current-thread runtime and the descriptors it created (its epoll and eventfd), which
/// a forked child must close without letting tokio touch them.
pub(crate) fn build_runtime() -> Result<(Runtime, Vec<RawFd>), String> {
    let _serialized = RUNTIME_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let before = anon_inode_fds();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let fds = anon_inode_fds().difference(&before).copied().collect();
    Ok((runtime, fds))
}

/// Descriptors of this process that are epoll or eventfd instances.
fn anon_inode_fds() -> HashSet<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]"
            })
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// One open session. Not shared: it lives in the pool's idle list or in one checkout.
pub(crate) struct Connection {
    client: Client,
    task: JoinHandle<()>,
    runtime: Runtime,
    socket_fd: RawFd,
    runtime_fds: Vec<RawFd>,
    statements: HashMap<(String, Vec<Type>), Statement>,
    /// What `LISTEN` brought; empty for a session that never listens.
    inbox: Arc<Inbox>,
    pub(crate) backend_pid: i32,
    /// Which of the endpoint's hosts the session is with (a cancel request goes there).
    pub(crate) host: usize,
    /// Creation order: a failed ping invalidates every connection with a lower id.
    pub(crate) id: u64,
    /// When max_lifetime (minus this connection's jitter) is reached.
    pub(crate) expires: Option<Instant>,
    pub(crate) last_used: Instant,
    /// An operation was abandoned (timeout): the session needs a reset before reuse.
    pub(crate) interrupted: bool,
    /// A non-server error happened: the session is not trusted any more.
    pub(crate) broken: bool,
}

impl Connection {
    /// Opens a session to the first acceptable host (see [`Endpoint::hosts`] and
    /// `target_session_attrs`), libpq's way: hosts in order, each attempt (socket, TLS,
    /// authentication, the check of the session's attributes) bounded by connect_timeout,
    /// and all of them by `window_ends` when given: a checkout's own deadline, which one slow
    /// attempt must not overrun.
    pub(crate) fn open(
        endpoint: &Endpoint,
        id: u64,
        lifetime: Option<Duration>,
        window_ends: Option<Instant>,
    ) -> Result<Connection, String> {
        let started = Instant::now();
        let (runtime, runtime_fds) = build_runtime()?;
        let attrs = endpoint.target_session_attrs;
        // prefer-standby: a first pass for a standby, then any server will do.
        let passes: &[TargetSessionAttrs] = match attrs {
            TargetSessionAttrs::PreferStandby => {
                &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
            }
            _ => std::slice::from_ref(&attrs),
        };
        let mut failures = Vec::new();
        for wanted in passes {
            for (index, host) in endpoint.hosts.iter().enumerate() {
                if window_ends.is_some_and(|end| Instant::now() >= end) {
                    break;
                }
                let attempt = Attempt {
                    endpoint,
                    host,
                    runtime: &runtime,
                    window_ends,
                };
                match attempt.run(*wanted) {
                    Ok(session) => {
                        let now = Instant::now();
                        log::debug!(
                            target: "forkpool::pool",
                            "connect {} ({}) backend pid {} in {:?}",
                            endpoint.description,
                            host.name,
                            session.backend_pid,
                            now - started
                        );
                        return Ok(Connection {
                            client: session.client,
                            task: session.task,
                            runtime,
                            socket_fd: session.socket_fd,
                            runtime_fds,
                            statements: HashMap::new(),
                            inbox: session.inbox,
                            backend_pid: session.backend_pid,
                            host: index,
                            id,
                            expires: lifetime.map(|l| now + l),
                            last_used: now,
                            interrupted: false,
                            broken: false,
                        });
                    }
                    Err(why) => failures.push(format!("{}: {why}", host.name)),
                }
            }
        }
        if endpoint.hosts.len() == 1 {
            let only = failures.pop().unwrap_or_default();
            let why = only.split_once(": ").map_or(only.as_str(), |(_, why)| why);
            return Err(why.to_string());
        }
        if failures.is_empty() {
            failures.push("what was left of checkout_timeout ran out before any host".into());
        }
        Err(failures.join("; "))
    }
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// Whether the server sent anything since the last operation. On an idle session that
    /// can only be a FATAL message and the close (a restart, `idle_session_timeout`,
    /// `pg_terminate_backend`), or the close alone: the session is suspect. A zero-timeout
    /// poll of the socket, no round trip.
    pub(crate) fn has_unread_input(&self) -> bool {
        // SAFETY: the connection owns `socket_fd` and keeps it open while it lives.
        let socket = unsafe { BorrowedFd::borrow_raw(self.socket_fd) };
        let mut fds = [PollFd::new(socket, PollFlags::POLLIN)];
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// The notifications received so far; if none, waits for one at most `limit`. An empty
    /// list means none came; a closed session is an error, so a listener knows to reconnect.
    pub(crate) fn wait_for_notifications(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<Notification>, Error> {
        let mut received = self.inbox.take();
        if received.is_empty() && !self.client.is_closed() {
            let _ = bounded(&self.runtime, limit, self.inbox.arrival());
            received = self.inbox.take();
        }
        self.last_used = Instant::now();
        if received.is_empty() && self.client.is_closed() {
            self.broken = true;
            return Err(Error::Connection("the listening session closed".into()));
        }
        Ok(received)
    }

    /// What another thread needs to cancel this session's running query.
    pub(crate) fn cancel_token(&self) -> CancelToken {
        self.client.cancel_token()
    }

    /// Runs `operation` against the client, bounded by `limit` (`None`: unbounded except by
    /// the server's statement_timeout and TCP keepalive). On timeout the query is cancelled
    /// and the session marked interrupted; a non-server error marks it broken.
    pub(crate) fn run<'a, T, F>(
        &'a mut self,
        endpoint: &Endpoint,
        limit: Option<Duration>,
        operation: impl FnOnce(&'a Client) -> F,
    ) -> Result<T, RunError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    {
        let future = operation(&self.client);
        let outcome = match limit {
            Some(limit) => bounded(&self.runtime, limit, future),
            None => Ok(self.runtime.block_on(future)),
        };
        self.last_used = Instant::now();
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if pipeline::is_fatal(&error) || self.client.is_closed() {
                    self.broken = true;
                }
                Err(RunError::Failed(Error::from(error)))
            }
            Err(_elapsed) => {
                self.interrupted = true;
                let host = &endpoint.hosts[self.host];
                endpoint.cancel(host, &self.runtime, &self.client.cancel_token());
                Err(RunError::TimedOut)
            }
        }
    }

    /// Runs `queries` pipelined (see [`super::pipeline`]), each bounded by its own deadline;
    /// a cancel for an abandoned query goes out after every query of the batch is answered.
    pub(crate) fn run_pipelined(
        &mut self,
        endpoint: &Endpoint,
        queries: &[PipelinedQuery<'_>],
        each: &mut dyn FnMut(PipelineEvent),
    ) {
        let outcome = pipeline::drive(&self.runtime, &self.client, queries, each);
        self.last_used = Instant::now();
        self.broken |= outcome.broken;
        self.interrupted |= outcome.interrupted;
        if outcome.cancel {
            let host = &endpoint.hosts[self.host];
            endpoint.cancel(host, &self.runtime, &self.client.cancel_token());
        }
    }

    /// The cached statement for `sql` and `types`, preparing it on first use.
    pub(crate) fn prepare_cached(
        &mut self,
        endpoint: &Endpoint,
        limit: Option<Duration>,
        sql: &str,
        types: &[Type],
    ) -> Result<Statement, RunError> {
        let key = (sql.to_string(), types.to_vec());
        if let Some(statement) = self.statements.get(&key) {
            return Ok(statement.clone());
        }
        let statement = self.run(endpoint, limit, |client| client.prepare_typed(sql, types))?;
        self.statements.insert(key, statement.clone());
        Ok(statement)
    }

    /// A simple query "" bounded by connect_timeout, and by `window_ends` when that comes
    /// first (a checkout's deadline: a frozen server must not stretch the checkout past
    /// it): one round trip proves the session lives. The caller discards a session whose
    /// ping failed.
    pub(crate) fn ping(
        &mut self,
        endpoint: &Endpoint,
        window_ends: Option<Instant>,
    ) -> Result<(), PingError> {
        let own_limit = endpoint.connect_timeout;
        let left = window_ends.map(|end| end.saturating_duration_since(Instant::now()));
        let limit = left.map_or(own_limit, |left| left.min(own_limit));
        // Not through `run`: a ping that fails is followed by a discard, so a timeout sends
        // no cancel request (one to a frozen server would outlast the window).
        let outcome = bounded(&self.runtime, limit, self.client.simple_query(""));
        self.last_used = Instant::now();
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(PingError::Failed(Error::from(e).to_string()))
            }
            Err(_) => {
                self.interrupted = true;
                Err(if limit < own_limit {
                    PingError::WindowEnded
                } else {
                    PingError::Failed("no answer within connect_timeout".to_string())
                })
            }
        }
    }

    /// Runs reset statements in order, each bounded by connect_timeout.
    pub(crate) fn reset(&mut self, endpoint: &Endpoint, statements: &[&str]) -> Result<(), String> {
        for sql in statements {
            match self.run(endpoint, Some(endpoint.connect_timeout), |c| {
                c.batch_execute(sql)
            }) {
                Ok(()) => {}
                Err(RunError::Failed(e)) => return Err(format!("{sql} failed: {e}")),
                Err(RunError::TimedOut) => {
                    return Err(format!("{sql} got no answer within connect_timeout"))
                }
            }
            if sql.starts_with("DISCARD") {
                // DISCARD ALL deallocated every prepared statement on the server.
                self.statements.clear();
            }
        }
        self.interrupted = false;
        Ok(())
    }

    /// Drops the session without a word to the server: the spawned task is dropped
    /// unpolled and the socket closes. Never blocks.
    pub(crate) fn discard(self) {
        let Connection {
            client,
            task,
            runtime,
            statements,
            ..
        } = self;
        drop(statements);
        drop(client);
        drop(task);
        drop(runtime);
    }

    /// Ends the session politely: the connection task sends Terminate once the client is
    /// gone; waits at most one second for it.
    pub(crate) fn close(self) {
        let Connection {
            client,
            task,
            runtime,
            statements,
            ..
        } = self;
        drop(statements);
        drop(client);
        let _ = bounded(&runtime, TERMINATE_WAIT, task);
        drop(runtime);
    }

    /// For a connection inherited across fork(): close our copies of its descriptors and
    /// leak everything else. Dropping the runtime here would deregister the socket from the
    /// epoll instance the parent shares, and dropping the client could write to the parent's
    /// TLS session.
    pub(crate) fn forget(self) {
        // SAFETY: these descriptors were created for this connection and nothing in this
        // process will use them again: the objects that refer to them are leaked below.
        unsafe {
            libc::close(self.socket_fd);
            for fd in &self.runtime_fds {
                libc::close(*fd);
            }
        }
        std::mem::forget(self);
    }
}

/// How a ping failed: the session is dead, or the checkout's window ended first (the
/// session may be alive, merely slow).
pub(crate) enum PingError {
    Failed(String),
    WindowEnded,
}

/// One connect attempt to one host, within what is left of connect_timeout and the window.
struct Attempt<'a> {
    endpoint: &'a Endpoint,
    host: &'a Host,
    runtime: &'a Runtime,
    window_ends: Option<Instant>,
}

/// A session opened and accepted, before it becomes a [`Connection`].
struct Session {
    client: Client,
    task: JoinHandle<()>,
    socket_fd: RawFd,
    inbox: Arc<Inbox>,
    backend_pid: i32,
}

/// The one query run on every new session: its backend pid (for cancel and logs), and what
/// `target_session_attrs` looks at, in the same round trip.
const SESSION_FACTS: &str =
    "SELECT pg_backend_pid(), current_setting('transaction_read_only'), pg_is_in_recovery()";

impl Attempt<'_> {
    fn run(&self, wanted: TargetSessionAttrs) -> Result<Session, String> {
        let started = Instant::now();
        let connect_deadline = started + self.endpoint.connect_timeout;
        let deadline = self
            .window_ends
            .map_or(connect_deadline, |end| end.min(connect_deadline));
        let socket = self.endpoint.open_socket(self.host, deadline)?;
        let socket_fd = match &socket {
            RawSocket::Tcp(s) => s.as_raw_fd(),
            RawSocket::Unix(s) => s.as_raw_fd(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let inbox = Arc::new(Inbox::default());
        let startup = async {
            let (client, task) = self
                .endpoint
                .start_session(self.host, socket, &inbox)
                .await?;
            let facts = client
                .simple_query(SESSION_FACTS)
                .await
                .map_err(|e| connect_error_text(&e))?;
            let row = facts
                .iter()
                .find_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                        row.get(0).and_then(|pid| pid.parse::<i32>().ok()),
                        row.get(1) == Some("on"),
                        row.get(2) == Some("t"),
                    )),
                    _ => None,
                })
                .ok_or("the server did not report its backend pid")?;
            let backend_pid = row.0.ok_or("the server did not report its backend pid")?;
            Ok::<_, String>((client, task, backend_pid, row.1, row.2))
        };
        let (client, task, backend_pid, read_only, in_recovery) =
            match bounded(self.runtime, remaining, startup) {
                Ok(result) => result?,
                Err(_) if deadline < connect_deadline => {
                    return Err(format!(
                        "no answer from the server within {}, what was left of \
                         checkout_timeout (TLS or authentication stalled)",
                        humantime::format_duration(Duration::from_millis(
                            (deadline - started).as_millis() as u64
                        ))
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "no answer from the server within connect_timeout {} (TLS or \
                         authentication stalled)",
                        humantime::format_duration(self.endpoint.connect_timeout)
                    ))
                }
            };
        let refusal = match wanted {
            TargetSessionAttrs::ReadWrite if read_only => Some("read-only"),
            TargetSessionAttrs::ReadOnly if !read_only => Some("not read-only"),
            TargetSessionAttrs::Primary if in_recovery => Some("a standby"),
            TargetSessionAttrs::Standby if !in_recovery => Some("not a standby"),
            _ => None,
        };
        if let Some(what) = refusal {
            drop(client);
            let _ = bounded(self.runtime, TERMINATE_WAIT, task);
            return Err(format!(
                "session is {what} (target_session_attrs={})",
                wanted.as_str()
            ));
        }
        Ok(Session {
            client,
            task,
            socket_fd,
            inbox,
            backend_pid,
        })
    }
}

/// How one bounded operation failed.
pub(crate) enum RunError {
    Failed(Error),
    TimedOut,
}
