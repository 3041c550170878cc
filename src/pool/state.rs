//! A pool's bookkeeping under its lock: the idle connections, the checkouts in progress,
//! the counters; and closing what was taken out of it, after the lock is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;
use tokio_postgres::CancelToken;

use super::connection::Connection;
use super::guard::PooledConnection;
use super::pool::Shared;
use super::settings::PoolSettings;
use super::stats::PoolStats;

pub(super) struct State {
    /// The process that opened the connections below; any other PID must not touch them.
    pub(super) owner: Pid,
    /// Idle connections, most recently used last.
    pub(super) idle: Vec<Connection>,
    pub(super) in_use: usize,
    pub(super) connecting: usize,
    pub(super) waiting: usize,
    pub(super) next_connection_id: u64,
    /// Connections with a lower id are presumed dead (a newer one failed its ping).
    pub(super) invalidated_below: u64,
    pub(super) checkouts: HashMap<u64, CheckoutRecord>,
    pub(super) next_checkout_id: u64,
    pub(super) closed: bool,
    pub(super) rng: fastrand::Rng,
    pub(super) stats: PoolStats,
}

/// A checkout in progress, for leak warnings and for [`Pool::cancel_running`].
pub(super) struct CheckoutRecord {
    pub(super) label: String,
    pub(super) since: Instant,
    pub(super) warned: bool,
    /// The session's cancel token and which of the endpoint's hosts it is with.
    pub(super) cancel: (usize, CancelToken),
}

/// Why a connection was closed; the keys of `PoolStats::closed_by_reason`.
#[derive(Debug, Clone, Copy)]
pub(super) enum CloseReason {
    Lifetime,
    Idle,
    Broken,
    Invalidated,
    PingFailed,
    ResetFailed,
    PoolClosed,
}

impl CloseReason {
    pub(super) fn as_str(self) -> &'static str {
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
    pub(super) fn is_polite(self) -> bool {
        matches!(
            self,
            CloseReason::Lifetime | CloseReason::Idle | CloseReason::PoolClosed
        )
    }
}

/// Connections taken out of the pool under the lock, closed after it is released.
pub(super) type Retired = Vec<(Connection, CloseReason)>;

impl State {
    pub(super) fn new(owner: Pid) -> State {
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

    pub(super) fn open_or_opening(&self) -> usize {
        self.idle.len() + self.in_use + self.connecting
    }

    /// `max_lifetime` minus a random jitter up to `lifetime_jitter`, so connections opened
    /// together do not all expire together.
    pub(super) fn lifetime(&mut self, settings: &PoolSettings) -> Option<Duration> {
        let max = settings.max_lifetime?;
        let jitter_ms = settings.lifetime_jitter.as_millis().min(u64::MAX as u128) as u64;
        let jitter = Duration::from_millis(self.rng.u64(0..=jitter_ms));
        Some(max.saturating_sub(jitter))
    }

    /// Pops the most recently used idle connection that is still worth trying; invalidated
    /// and expired ones go to `retired`.
    pub(super) fn take_idle(&mut self, retired: &mut Retired) -> Option<Connection> {
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

    pub(super) fn hand_out(
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
                cancel: (connection.host, connection.cancel_token()),
            },
        );
        log::debug!(target: "forkpool::pool", "{}: checkout backend {} by {label} after {:?}", shared.name, connection.backend_pid, waited);
        PooledConnection::new(connection, Arc::clone(shared), self.owner, checkout_id)
    }

    pub(super) fn count_closed(&mut self, reason: CloseReason) {
        *self
            .stats
            .closed_by_reason
            .entry(reason.as_str().to_string())
            .or_default() += 1;
    }
}

pub(super) fn close_one(pool: &str, connection: Connection, reason: CloseReason) {
    log::debug!(target: "forkpool::pool", "{pool}: recycle backend {} ({})", connection.backend_pid, reason.as_str());
    if reason.is_polite() {
        connection.close();
        log::debug!(target: "forkpool::pool", "{pool}: close done");
    } else {
        connection.discard();
    }
}

pub(super) fn close_all(pool: &str, retired: Retired) {
    for (connection, reason) in retired {
        close_one(pool, connection, reason);
    }
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
