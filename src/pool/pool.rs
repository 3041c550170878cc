//! The pool and its checkout guard. One pool per database per process; it starts no thread:
//! maintenance runs when the owner calls `maintain()` and inline on checkout and checkin.

use super::connection::{build_runtime, Connection, Endpoint, RunError};
use super::conninfo::ConnInfo;
use super::error::Error;
use super::notifications::Notification;
use super::settings::{PoolSettings, ResetOnReturn};
use super::stats::PoolStats;
use nix::unistd::{getpid, Pid};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Row, Statement};

/// First pause between two failed connects inside one checkout; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A fork-safe pool of PostgreSQL sessions, shared by a worker's threads (`Send + Sync`,
/// cheap to clone). Building it opens nothing.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    endpoint: Endpoint,
    settings: PoolSettings,
    state: Mutex<State>,
    /// Signalled when a connection goes back idle or a slot frees up.
    slot_freed: Condvar,
}

struct State {
    /// The process that opened the connections below; any other PID must not touch them.
    owner: Pid,
    /// Idle connections, most recently used last.
    idle: Vec<Connection>,
    in_use: usize,
    connecting: usize,
    waiting: usize,
    next_connection_id: u64,
    /// Connections with a lower id are presumed dead (a newer one failed its ping).
    invalidated_below: u64,
    checkouts: HashMap<u64, CheckoutRecord>,
    next_checkout_id: u64,
    closed: bool,
    rng: fastrand::Rng,
    stats: PoolStats,
}

/// A checkout in progress, for leak warnings and for [`Pool::cancel_running`].
struct CheckoutRecord {
    label: String,
    since: Instant,
    warned: bool,
    cancel: CancelToken,
}

/// Why a connection was closed; the keys of `PoolStats::closed_by_reason`.
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    Lifetime,
    Idle,
    Broken,
    Invalidated,
    PingFailed,
    ResetFailed,
    PoolClosed,
}

impl CloseReason {
    fn as_str(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "lifetime",
            CloseReason::Idle => "idle",
            CloseReason::Broken => "broken",
            CloseReason::Invalidated => "invalidated",
            CloseReason::PingFailed => "ping",
            CloseReason::ResetFailed => "reset",
            CloseReason::PoolClosed => "close",
        }
    }

    /// Healthy sessions get a Terminate; dead or suspect ones are dropped without a byte,
    /// so a silent server cannot hold us.
    fn is_polite(self) -> bool {
        matches!(
            self,
            CloseReason::Lifetime | CloseReason::Idle | CloseReason::PoolClosed
        )
    }
}

/// Connections taken out of the pool under the lock, closed after it is released.
type Retired = Vec<(Connection, CloseReason)>;

impl Pool {
    /// Opens nothing. Builds the one TLS connector of the pool (cloned per connection), so a
    /// bad `sslrootcert` or `sslmode` is reported here, at start-up.
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
                let ping = connection.ping(&shared.endpoint);
                state = shared.lock();
                state.in_use -= 1;
                match ping {
                    Ok(()) => return Ok(state.hand_out(shared, connection, label, started)),
                    Err(why) => {
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
        let tokens: Vec<(String, CancelToken)> = {
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
        for (label, token) in tokens {
            log::debug!(target: "forkpool::pool", "{}: cancelling the query of {label}", self.shared.name);
            self.shared.endpoint.cancel(&runtime, &token);
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
    fn checkin(&self, mut connection: Connection, checkout_id: u64, idle_known: bool) {
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

impl State {
    fn new(owner: Pid) -> State {
        State {
            owner,
            idle: Vec::new(),
            in_use: 0,
            connecting: 0,
            waiting: 0,
            next_connection_id: 1,
            invalidated_below: 0,
            checkouts: HashMap::new(),
            next_checkout_id: 1,
            closed: false,
            rng: fastrand::Rng::with_seed(fresh_seed(owner)),
            stats: PoolStats::default(),
        }
    }

    fn open_or_opening(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting
    }

    /// `max_lifetime` minus a random jitter up to `lifetime_jitter`, so connections opened
    /// together do not all expire together.
    fn lifetime(&mut self, settings: &PoolSettings) -> Option<Duration> {
        let max = settings.max_lifetime?;
        let jitter_ms = settings.lifetime_jitter.as_millis().min(u64::MAX as u128) as u64;
        let jitter = Duration::from_millis(self.rng.u64(0..=jitter_ms));
        Some(max.saturating_sub(jitter))
    }

    /// Pops the most recently used idle connection that is still worth trying; invalidated
    /// and expired ones go to `retired`.
    fn take_idle(&mut self, retired: &mut Retired) -> Option<Connection> {
        let now = Instant::now();
        while let Some(connection) = self.idle.pop() {
            let reason = if connection.id < self.invalidated_below {
                CloseReason::Invalidated
            } else if connection.is_expired(now) {
                CloseReason::Lifetime
            } else if connection.is_broken() {
                CloseReason::Broken
            } else {
                return Some(connection);
            };
            self.count_closed(reason);
            retired.push((connection, reason));
        }
        None
    }

    fn hand_out(
        &mut self,
        shared: &Arc<Shared>,
        connection: Connection,
        label: &str,
        started: Instant,
    ) -> PooledConnection {
        let waited = started.elapsed();
        self.in_use += 1;
        self.stats.checkouts += 1;
        self.stats.checkout_wait_ms_total += waited.as_millis() as u64;
        let checkout_id = self.next_checkout_id;
        self.next_checkout_id += 1;
        self.checkouts.insert(
            checkout_id,
            CheckoutRecord {
                label: label.to_string(),
                since: Instant::now(),
                warned: false,
                cancel: connection.cancel_token(),
            },
        );
        log::debug!(target: "forkpool::pool", "{}: checkout backend {} by {label} after {:?}", shared.name, connection.backend_pid, waited);
        PooledConnection {
            connection: Some(connection),
            shared: Arc::clone(shared),
            owner: self.owner,
            checkout_id,
            deadline: None,
            idle_known: false,
        }
    }

    fn count_closed(&mut self, reason: CloseReason) {
        *self
            .stats
            .closed_by_reason
            .entry(reason.as_str().to_string())
            .or_default() += 1;
    }
}

fn close_one(pool: &str, connection: Connection, reason: CloseReason) {
    log::debug!(target: "forkpool::pool", "{pool}: recycle backend {} ({})", connection.backend_pid, reason.as_str());
    if reason.is_polite() {
        connection.close();
        log::debug!(target: "forkpool::pool", "{pool}: close done");
    } else {
        connection.discard();
    }
}

fn close_all(pool: &str, retired: Retired) {
    for (connection, reason) in retired {
        close_one(pool, connection, reason);
    }
}

/// A bad password, an unknown database or role, or a TLS setup error will not fix itself
/// within a checkout: fail at once instead of hammering the server until the timeout.
fn is_permanent(connect_error: &str) -> bool {
    ["SQLSTATE 28", "SQLSTATE 3D000", "cannot set up TLS"]
        .iter()
        .any(|marker| connect_error.contains(marker))
}

/// A seed that differs between a parent and its forked children (their RNG state would
/// otherwise be copies and jitter the same way).
fn fresh_seed(pid: Pid) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((pid.as_raw() as u64) << 32) ^ fastrand::u64(..)
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A checked-out connection. Dropping it is the one way a connection goes back to the pool,
/// so the reset on return cannot be skipped.
pub struct PooledConnection {
    /// `None` only during Drop.
    connection: Option<Connection>,
    shared: Arc<Shared>,
    /// The process that checked it out: in any other (a forked child) Drop forgets it.
    owner: Pid,
    checkout_id: u64,
    /// (when it was set, the deadline itself), to report how long the job had.
    deadline: Option<(Instant, Instant)>,
    /// The caller vouched that no transaction is open ([`PooledConnection::known_idle`]);
    /// any later operation withdraws it.
    idle_known: bool,
}

impl PooledConnection {
    /// Tells checkin that no transaction is open on this connection — every statement the
    /// caller ran was in autocommit, or its transaction was committed or rolled back — so
    /// `reset_on_return = "rollback"` can skip its `ROLLBACK`. (`discard` still runs `DISCARD
    /// ALL`; an interrupted connection is still rolled back.) Any later operation withdraws
    /// this; call it last.
    pub fn known_idle(&mut self) {
        self.idle_known = true;
    }

    /// Bounds every later operation: past `deadline` the running query is cancelled (a
    /// PostgreSQL cancel request) and `Error::Timeout` returned; the connection is then
    /// reset (or discarded) at checkin. `None` removes the bound.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline.map(|d| (Instant::now(), d));
    }

    /// Prepares `sql` once per connection; later calls return the cached statement.
    pub fn prepare_typed(&mut self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.prepare_cached(endpoint, limit, sql, types);
        self.finish(result)
    }

    /// Runs a prepared statement and returns all its rows, bounded by the deadline (see
    /// [`PooledConnection::set_deadline`]). A broken connection is discarded at checkin.
    pub fn query(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.query(statement, params));
        self.finish(result)
    }

    /// Runs a prepared statement that returns no rows; the count of rows it affected.
    /// Bounded like [`PooledConnection::query`].
    pub fn execute(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.execute(statement, params));
        self.finish(result)
    }

    /// Prepares (unnamed, not cached) and runs `sql`: for one-off statements.
    pub fn query_sql(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.query(sql, params));
        self.finish(result)
    }

    /// Runs one or more statements with the simple query protocol.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.batch_execute(sql));
        self.finish(result)
    }

    /// The notifications this session received (after `LISTEN`); if none yet, waits for one
    /// at most `limit` (bounded also by the deadline, if set). Empty: none came in time.
    pub fn wait_for_notifications(&mut self, limit: Duration) -> Result<Vec<Notification>, Error> {
        let limit = self.limit()?.map_or(limit, |left| left.min(limit));
        let (connection, _) = self.parts();
        connection.wait_for_notifications(limit)
    }

    /// The server process serving this connection (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> i32 {
        self.connection.as_ref().map_or(0, |c| c.backend_pid)
    }

    /// Time left before the deadline; `Err(Timeout)` if it already passed (nothing sent).
    /// Refuses a checkout that crossed a fork: its session belongs to the parent, and a
    /// byte from this process would corrupt the parent's TLS stream.
    fn limit(&self) -> Result<Option<Duration>, Error> {
        if getpid() != self.owner {
            return Err(Error::Connection(format!(
                "this connection was checked out by process {} before a fork; check out a \
                 new one in this process",
                self.owner
            )));
        }
        match self.deadline {
            None => Ok(None),
            Some((set_at, deadline)) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    Err(Error::Timeout {
                        after: round_ms(set_at.elapsed()),
                    })
                } else {
                    Ok(Some(remaining))
                }
            }
        }
    }

    fn parts(&mut self) -> (&mut Connection, &Endpoint) {
        self.idle_known = false;
        let connection = self
            .connection
            .as_mut()
            .expect("a PooledConnection holds its connection until Drop");
        (connection, &self.shared.endpoint)
    }

    fn finish<T>(&self, result: Result<T, RunError>) -> Result<T, Error> {
        result.map_err(|error| match error {
            RunError::Failed(error) => error,
            RunError::TimedOut => Error::Timeout {
                after: round_ms(
                    self.deadline
                        .map_or(Duration::ZERO, |(set_at, _)| set_at.elapsed()),
                ),
            },
        })
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if getpid() != self.owner {
            // Checked out before a fork: the session belongs to the parent.
            connection.forget();
            return;
        }
        self.shared
            .checkin(connection, self.checkout_id, self.idle_known);
    }
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("pool", &self.shared.name)
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
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
mod tests {
    use super::*;

    #[test]
    fn lifetime_jitter_spreads_expiries_within_the_window() {
        let settings = PoolSettings::new()
            .max_lifetime(Some(Duration::from_secs(30 * 60)))
            .lifetime_jitter(Duration::from_secs(120));
        let mut state = State::new(getpid());
        let lifetimes: Vec<Duration> = (0..200)
            .map(|_| state.lifetime(&settings).unwrap())
            .collect();
        let shortest = Duration::from_secs(28 * 60);
        let longest = Duration::from_secs(30 * 60);
        assert!(lifetimes.iter().all(|l| (shortest..=longest).contains(l)));
        let distinct: std::collections::HashSet<_> = lifetimes.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct lifetimes",
            distinct.len()
        );
        let spread = *lifetimes.iter().max().unwrap() - *lifetimes.iter().min().unwrap();
        assert!(spread > Duration::from_secs(60), "spread {spread:?}");
    }

    #[test]
    fn no_max_lifetime_means_no_expiry_and_jitter_never_underflows() {
        let mut state = State::new(getpid());
        let forever = PoolSettings::new().max_lifetime(None);
        assert_eq!(state.lifetime(&forever), None);
        let tiny = PoolSettings::new()
            .max_lifetime(Some(Duration::from_secs(1)))
            .lifetime_jitter(Duration::from_secs(60));
        assert!(state.lifetime(&tiny).unwrap() <= Duration::from_secs(1));
    }

    #[test]
    fn auth_and_setup_errors_are_not_retried() {
        assert!(is_permanent(
            "password authentication failed for user \"app\" (SQLSTATE 28P01)"
        ));
        assert!(is_permanent(
            "database \"nope\" does not exist (SQLSTATE 3D000)"
        ));
        assert!(!is_permanent(
            "the database system is starting up (SQLSTATE 57P03)"
        ));
        assert!(!is_permanent(
            "cannot connect to 127.0.0.1:5432: Connection refused"
        ));
    }

    #[test]
    fn pool_is_send_and_sync_and_opens_nothing() {
        fn shared_between_threads<T: Send + Sync>() {}
        shared_between_threads::<Pool>();
        let info = ConnInfo::parse("host=127.0.0.1 port=1 user=u dbname=d").unwrap();
        let pool = Pool::new("lazy", info, PoolSettings::new()).unwrap();
        assert_eq!(pool.stats(), PoolStats::default());
        assert_eq!(pool.name(), "lazy");
    }
}
