//! The pool and its checkout guard. One pool per database per process; it starts no thread:
//! maintenance runs when the owner calls `maintain()` and inline on checkout and checkin.

use super::connection::{build_runtime, Connection, PingError};
use super::conninfo::ConnInfo;
use super::endpoint::{Endpoint, NO_PASSWORD};
use super::error::Error;
use super::guard::PooledConnection;
use super::settings::{PoolSettings, ResetOnReturn};
use super::state::{close_all, close_one, CloseReason, Retired, State};
use super::stats::PoolStats;
use nix::unistd::getpid;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres::CancelToken;

/// First pause between two failed connects inside one checkout; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A fork-safe pool of PostgreSQL sessions, shared by a worker's threads (`Send + Sync`,
/// cheap to clone). Building it opens nothing.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) name: String,
    pub(super) endpoint: Endpoint,
    settings: PoolSettings,
    state: Mutex<State>,
    /// Signalled when a connection goes back idle or a slot frees up.
    slot_freed: Condvar,
}

impl Pool {
    /// Opens nothing. Builds the one TLS connector of the pool (cloned per connection), so a
    /// bad `sslrootcert`, `sslcert` or `sslkey` is reported here, at start-up, and looks up
    /// each host's password in the password file when none was given.
    pub fn new(name: &str, conninfo: ConnInfo, settings: PoolSettings) -> Result<Pool, Error> {
        let endpoint = Endpoint::new(&conninfo, &settings)?;
        let state = State::new(getpid());
        Ok(Pool {
            shared: Arc::new(Shared {
                name: name.to_string(),
                endpoint,
                settings,
                state: Mutex::new(state),
                slot_freed: Condvar::new(),
            }),
        })
    }

    /// The name given at `new` (the database's name in the configuration).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A connection for one job; `label` (the job id) names it in logs and leak warnings.
    /// Most recently used idle connection first (expired ones closed, stale ones pinged),
    /// else a new one if below `pool_size`, else wait for a checkin; all within
    /// `checkout_timeout`, after which the error says why.
    pub fn checkout(&self, label: &str) -> Result<PooledConnection, Error> {
        let shared = &self.shared;
        let settings = &shared.settings;
        let started = Instant::now();
        let deadline = started + settings.checkout_timeout;
        let mut last_connect_error: Option<String> = None;
        let mut connect_attempts = 0u32;
        let mut backoff = FIRST_BACKOFF;
        let mut state = shared.lock();
        if state.closed {
            return Err(Error::Unavailable {
                database: shared.endpoint.database.clone(),
                reason: format!(
                    "pool {:?} is closed (the worker is shutting down)",
                    shared.name
                ),
            });
        }
        loop {
            let mut retired = Retired::new();
            let candidate = state.take_idle(&mut retired);
            if !retired.is_empty() {
                drop(state);
                close_all(&shared.name, retired);
                state = shared.lock();
            }
            if let Some(mut connection) = candidate {
                let suspect = connection.last_used.elapsed() >= settings.ping_after
                    || connection.has_unread_input();
                if !(settings.pre_ping && suspect) {
                    return Ok(state.hand_out(shared, connection, label, started));
                }
                state.in_use += 1;
                state.stats.pings += 1;
                drop(state);
                // The ping ends with the checkout's window, not connect_timeout after it.
                let ping = connection.ping(&shared.endpoint, Some(deadline));
                state = shared.lock();
                state.in_use -= 1;
                match ping {
                    Ok(()) => return Ok(state.hand_out(shared, connection, label, started)),
                    Err(PingError::WindowEnded) => {
                        // Slow, maybe not dead: older sessions are not suspected. This one
                        // is in an unknown state, so it goes, without a word.
                        state.stats.ping_failures += 1;
                        state.stats.checkout_timeouts += 1;
                        state.count_closed(CloseReason::PingFailed);
                        let pid = connection.backend_pid;
                        drop(state);
                        connection.discard();
                        shared.slot_freed.notify_one();
                        return Err(Error::Unavailable {
                            database: shared.endpoint.database.clone(),
                            reason: format!(
                                "checkout_timeout {} ran out while pinging an idle connection \
                                 to {} (backend pid {pid} did not answer)",
                                humantime::format_duration(settings.checkout_timeout),
                                shared.endpoint.description
                            ),
                        });
                    }
                    Err(PingError::Failed(why)) => {
                        log::debug!(target: "forkpool::pool", "{}: ping failure on backend {}: {why}", shared.name, connection.backend_pid);
                        state.stats.ping_failures += 1;
                        // One dead session usually means the server restarted: every older
                        // one is dead too.
                        state.invalidated_below = state.invalidated_below.max(connection.id);
                        state.count_closed(CloseReason::PingFailed);
                        drop(state);
                        close_one(&shared.name, connection, CloseReason::PingFailed);
                        state = shared.lock();
                        continue;
                    }
                }
            }
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if state.open_or_opening() < settings.pool_size {
                if remaining.is_zero() {
                    break;
                }
                state.connecting += 1;
                let id = state.next_connection_id;
                state.next_connection_id += 1;
                let lifetime = state.lifetime(settings);
                drop(state);
                connect_attempts += 1;
                // The attempt ends with the checkout's window, not connect_timeout after it.
                let cut_by_window = remaining < shared.endpoint.connect_timeout;
                let opened = Connection::open(&shared.endpoint, id, lifetime, Some(deadline));
                state = shared.lock();
                state.connecting -= 1;
                match opened {
                    Ok(connection) => {
                        state.stats.created += 1;
                        return Ok(state.hand_out(shared, connection, label, started));
                    }
                    Err(why) => {
                        log::debug!(target: "forkpool::pool", "{}: connect to {} failed: {why}", shared.name, shared.endpoint.description);
                        shared.slot_freed.notify_one();
                        let permanent = is_permanent(&why);
                        let out_of_time = Instant::now() >= deadline;
                        // An attempt the window cut short only says that time ran out; the
                        // attempt before it says why the server did not let us in.
                        if !(cut_by_window && out_of_time && last_connect_error.is_some()) {
                            last_connect_error = Some(why);
                        }
                        if permanent || out_of_time {
                            break;
                        }
                        let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        state = shared.wait(state, pause);
                        continue;
                    }
                }
            }
            if remaining.is_zero() {
                break;
            }
            state.waiting += 1;
            state = shared.wait(state, remaining);
            state.waiting -= 1;
        }
        if !last_connect_error.as_deref().is_some_and(is_permanent) {
            state.stats.checkout_timeouts += 1;
        }
        let reason = match last_connect_error {
            Some(error) => format!(
                "{error} (connecting to {}, {connect_attempts} attempt(s) in {})",
                shared.endpoint.description,
                humantime::format_duration(round_ms(started.elapsed()))
            ),
            None if state.open_or_opening() < settings.pool_size => format!(
                "checkout_timeout {} ran out before a connection to {} could be opened",
                humantime::format_duration(settings.checkout_timeout),
                shared.endpoint.description
            ),
            None => format!(
                "all {} connections in use for {}; raise pool_size or checkout_timeout, or look for jobs holding connections",
                settings.pool_size,
                humantime::format_duration(settings.checkout_timeout)
            ),
        };
        Err(Error::Unavailable {
            database: shared.endpoint.database.clone(),
            reason,
        })
    }

    /// The worker's tick: closes connections idle longer than `idle_timeout` or past their
    /// lifetime, opens connections up to `min_idle`, and warns about checkouts held longer
    /// than `leak_threshold`.
    pub fn maintain(&self) {
        let shared = &self.shared;
        let settings = &shared.settings;
        let now = Instant::now();
        let mut state = shared.lock();
        let mut retired = Retired::new();
        let invalidated_below = state.invalidated_below;
        let mut kept = Vec::with_capacity(state.idle.len());
        for connection in state.idle.drain(..) {
            let idle_too_long = settings
                .idle_timeout
                .is_some_and(|limit| now.duration_since(connection.last_used) >= limit);
            if connection.id < invalidated_below {
                retired.push((connection, CloseReason::Invalidated));
            } else if connection.is_expired(now) {
                retired.push((connection, CloseReason::Lifetime));
            } else if idle_too_long {
                retired.push((connection, CloseReason::Idle));
            } else {
                kept.push(connection);
            }
        }
        state.idle = kept;
        for (_, reason) in &retired {
            state.count_closed(*reason);
        }
        if let Some(threshold) = settings.leak_threshold {
            for record in state.checkouts.values_mut() {
                let held = now.duration_since(record.since);
                if !record.warned && held >= threshold {
                    record.warned = true;
                    log::warn!(
                        target: "forkpool::pool",
                        "{}: connection checked out by {} for {} (leak_threshold {}): is the job stuck or holding it?",
                        shared.name,
                        record.label,
                        humantime::format_duration(round_ms(held)),
                        humantime::format_duration(threshold)
                    );
                }
            }
        }
        let closed = state.closed;
        drop(state);
        if !retired.is_empty() {
            close_all(&shared.name, retired);
            shared.slot_freed.notify_all();
        }
        if !closed {
            self.fill_min_idle();
        }
    }

    /// Opens connections (one attempt each) until `min_idle` are idle or the pool is full.
    fn fill_min_idle(&self) {
        let shared = &self.shared;
        let settings = &shared.settings;
        loop {
            let mut state = shared.lock();
            let wanted = settings.min_idle.min(settings.pool_size);
            if state.idle.len() + state.connecting >= wanted
                || state.open_or_opening() >= settings.pool_size
            {
                return;
            }
            state.connecting += 1;
            let id = state.next_connection_id;
            state.next_connection_id += 1;
            let lifetime = state.lifetime(settings);
            drop(state);
            let opened = Connection::open(&shared.endpoint, id, lifetime, None);
            let mut state = shared.lock();
            state.connecting -= 1;
            match opened {
                Ok(connection) => {
                    state.stats.created += 1;
                    state.idle.insert(0, connection);
                    shared.slot_freed.notify_one();
                }
                Err(why) => {
                    log::debug!(target: "forkpool::pool", "{}: min_idle connect failed: {why}", shared.name);
                    shared.slot_freed.notify_one();
                    return;
                }
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.shared.lock();
        let mut stats = state.stats.clone();
        stats.idle = state.idle.len();
        stats.in_use = state.in_use;
        stats.size = state.idle.len() + state.in_use;
        stats.waiting = state.waiting;
        stats
    }

    /// Fast stop: sends a cancel request for whatever runs on each checked-out connection.
    /// A process about to exit calls it so the server stops working for nobody: a backend
    /// does not notice that its client is gone until it next reads from the socket, so a
    /// long query would run on to its end. Best effort, each request bounded by
    /// `connect_timeout`; the checkouts themselves then fail with the server's
    /// `query_canceled` (SQLSTATE 57014).
    pub fn cancel_running(&self) {
        let tokens: Vec<(String, (usize, CancelToken))> = {
            let state = self.shared.lock();
            state
                .checkouts
                .values()
                .map(|record| (record.label.clone(), record.cancel.clone()))
                .collect()
        };
        if tokens.is_empty() {
            return;
        }
        // The checkouts' own runtimes are busy in their threads; a throwaway one carries the
        // cancel requests. Built under the same lock as a connection's runtime, or its
        // descriptors could be taken for those of a runtime built at the same moment.
        let runtime = match build_runtime() {
            Ok((runtime, _its_descriptors)) => runtime,
            Err(e) => {
                log::warn!(target: "forkpool::pool", "{}: cannot cancel running queries: {e}", self.shared.name);
                return;
            }
        };
        for (label, (host, token)) in tokens {
            log::debug!(target: "forkpool::pool", "{}: cancelling the query of {label}", self.shared.name);
            let host = &self.shared.endpoint.hosts[host];
            self.shared.endpoint.cancel(host, &runtime, &token);
        }
    }

    /// Graceful shutdown: sends Terminate to every idle connection (at most one second
    /// each); connections still checked out are closed at their checkin. Later checkouts
    /// fail with `Unavailable`.
    pub fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        let retired: Retired = state
            .idle
            .drain(..)
            .map(|c| (c, CloseReason::PoolClosed))
            .collect();
        for (_, reason) in &retired {
            state.count_closed(*reason);
        }
        drop(state);
        self.shared.slot_freed.notify_all();
        log::debug!(target: "forkpool::pool", "{}: close: terminating {} idle connection(s)", self.shared.name, retired.len());
        close_all(&self.shared.name, retired);
    }
}

impl Shared {
    /// The state, emptied first if this process is not the one that filled it (we are in a
    /// forked child): its connections are forgotten, only our copies of their descriptors
    /// closed, and the pool starts afresh with this PID as owner.
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pid = getpid();
        if state.owner != pid {
            let inherited = state.idle.len();
            let closed = state.closed;
            let old = std::mem::replace(&mut *state, State::new(pid));
            state.closed = closed;
            for connection in old.idle {
                connection.forget();
            }
            log::debug!(
                target: "forkpool::pool",
                "{}: foreign-PID discard: forgot {inherited} idle connection(s) opened by pid {}",
                self.name,
                old.owner
            );
        }
        state
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, limit: Duration) -> MutexGuard<'a, State> {
        self.slot_freed
            .wait_timeout(state, limit)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Puts a connection back (the guard's Drop): broken → discarded; reset per
    /// `reset_on_return` (always after an interrupted operation); expired → closed; else idle.
    pub(super) fn checkin(&self, mut connection: Connection, checkout_id: u64, idle_known: bool) {
        let settings = &self.settings;
        let mut outcome = None;
        if connection.is_broken() {
            outcome = Some(CloseReason::Broken);
        } else {
            let statements: &[&str] = match settings.reset_on_return {
                // Nothing to roll back: a round trip saved on every job that ran in
                // autocommit (the common single-statement job).
                ResetOnReturn::Rollback if idle_known && !connection.interrupted => &[],
                ResetOnReturn::Rollback => &["ROLLBACK"],
                ResetOnReturn::Discard => &["ROLLBACK", "DISCARD ALL"],
                ResetOnReturn::None if connection.interrupted => &["ROLLBACK"],
                ResetOnReturn::None => &[],
            };
            if !statements.is_empty() {
                match connection.reset(&self.endpoint, statements) {
                    Ok(()) => {
                        log::debug!(target: "forkpool::pool", "{}: reset backend {} ({})", self.name, connection.backend_pid, statements.join("; "))
                    }
                    Err(why) => {
                        log::debug!(target: "forkpool::pool", "{}: reset of backend {} failed: {why}", self.name, connection.backend_pid);
                        outcome = Some(if connection.is_broken() {
                            CloseReason::Broken
                        } else {
                            CloseReason::ResetFailed
                        });
                    }
                }
            }
        }
        let mut state = self.lock();
        let label = state.checkouts.remove(&checkout_id).map(|r| r.label);
        state.in_use -= 1;
        if outcome.is_none() {
            if state.closed {
                outcome = Some(CloseReason::PoolClosed);
            } else if connection.is_expired(Instant::now()) {
                outcome = Some(CloseReason::Lifetime);
            } else if connection.id < state.invalidated_below {
                outcome = Some(CloseReason::Invalidated);
            }
        }
        match outcome {
            None => {
                log::debug!(target: "forkpool::pool", "{}: checkin backend {} from {}", self.name, connection.backend_pid, label.as_deref().unwrap_or("?"));
                connection.last_used = Instant::now();
                state.idle.push(connection);
                drop(state);
                self.slot_freed.notify_one();
            }
            Some(reason) => {
                state.count_closed(reason);
                drop(state);
                self.slot_freed.notify_one();
                close_one(&self.name, connection, reason);
            }
        }
    }
}

/// A bad or missing password, an unknown database or role, or a TLS setup error will not fix itself
/// within a checkout: fail at once instead of hammering the server until the timeout.
fn is_permanent(connect_error: &str) -> bool {
    [
        "SQLSTATE 28",
        "SQLSTATE 3D000",
        "cannot set up TLS",
        NO_PASSWORD,
    ]
    .iter()
    .any(|marker| connect_error.contains(marker))
}

pub(super) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("endpoint", &self.shared.endpoint.description)
            .finish()
    }
}

#[cfg(test)]
mod tests;
