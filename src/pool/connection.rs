//! One database session and everything it owns: the socket we opened, a current-thread tokio
//! runtime (what `postgres::Client` builds internally, kept in pieces so that every
//! operation is `block_on(timeout(..))` and nothing can hang), and its prepared statements.

use super::endpoint::{connect_error_text, Endpoint, RawSocket};
use super::error::Error;
use super::notifications::{Inbox, Notification};
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
    /// Opens a session, bounded as a whole (socket, TLS, authentication) by connect_timeout,
    /// and by `window_ends` when that comes first: a checkout's own deadline, which one slow
    /// attempt must not overrun.
    pub(crate) fn open(
        endpoint: &Endpoint,
        id: u64,
        lifetime: Option<Duration>,
        window_ends: Option<Instant>,
    ) -> Result<Connection, String> {
        let started = Instant::now();
        let connect_deadline = started + endpoint.connect_timeout;
        let deadline = window_ends.map_or(connect_deadline, |end| end.min(connect_deadline));
        let (runtime, runtime_fds) = build_runtime()?;
        let socket = endpoint.open_socket(deadline)?;
        let socket_fd = match &socket {
            RawSocket::Tcp(s) => s.as_raw_fd(),
            RawSocket::Unix(s) => s.as_raw_fd(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let inbox = Arc::new(Inbox::default());
        let startup = async {
            let (client, task) = endpoint.start_session(socket, &inbox).await?;
            let rows = client
                .simple_query("SELECT pg_backend_pid()")
                .await
                .map_err(|e| connect_error_text(&e))?;
            let backend_pid = rows
                .iter()
                .find_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                    _ => None,
                })
                .ok_or("the server did not report its backend pid")?;
            Ok::<_, String>((client, task, backend_pid))
        };
        let (client, task, backend_pid) = match bounded(&runtime, remaining, startup) {
            Ok(result) => result?,
            Err(_) if deadline < connect_deadline => {
                return Err(format!(
                    "no answer from the server within {}, what was left of checkout_timeout \
                     (TLS or authentication stalled)",
                    humantime::format_duration(Duration::from_millis(
                        (deadline - started).as_millis() as u64
                    ))
                ))
            }
            Err(_) => {
                return Err(format!(
                    "no answer from the server within connect_timeout {} (TLS or authentication stalled)",
                    humantime::format_duration(endpoint.connect_timeout)
                ))
            }
        };
        let now = Instant::now();
        log::debug!(
            target: "forkpool::pool",
            "connect {} backend pid {backend_pid} in {:?}",
            endpoint.description,
            now - started
        );
        Ok(Connection {
            client,
            task,
            runtime,
            socket_fd,
            runtime_fds,
            statements: HashMap::new(),
            inbox,
            backend_pid,
            id,
            expires: lifetime.map(|l| now + l),
            last_used: now,
            interrupted: false,
            broken: false,
        })
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
                let fatal = error.as_db_error().is_some_and(|db| {
                    // 57P: the server is shutting this session down; 08: protocol-level
                    // connection failure. Either way the session is gone.
                    let code = db.code().code();
                    code.starts_with("57P") || code.starts_with("08")
                });
                if fatal || error.as_db_error().is_none() || self.client.is_closed() {
                    self.broken = true;
                }
                Err(RunError::Failed(Error::from(error)))
            }
            Err(_elapsed) => {
                self.interrupted = true;
                endpoint.cancel(&self.runtime, &self.client.cancel_token());
                Err(RunError::TimedOut)
            }
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

    /// A simple query "" bounded by connect_timeout: one round trip proves the session lives.
    pub(crate) fn ping(&mut self, endpoint: &Endpoint) -> Result<(), String> {
        match self.run(endpoint, Some(endpoint.connect_timeout), |c| {
            c.simple_query("")
        }) {
            Ok(_) => Ok(()),
            Err(RunError::Failed(e)) => Err(e.to_string()),
            Err(RunError::TimedOut) => Err("no answer within connect_timeout".to_string()),
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

/// How one bounded operation failed.
pub(crate) enum RunError {
    Failed(Error),
    TimedOut,
}
