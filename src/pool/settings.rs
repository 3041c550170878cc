//! Pool settings, each with its default and the reason for it.

use serde::Deserialize;

/// What checkin does to a connection before it goes back idle, so the next job never sees
/// the previous job's transaction, locks or session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResetOnReturn {
    /// `ROLLBACK`: ends any open or failed transaction. Always safe, and cheap; the default
    /// because tokio-postgres does not expose the transaction status.
    #[default]
    Rollback,
    /// `DISCARD ALL`: also drops prepared statements, temporary tables, session settings and
    /// advisory locks. Costs re-preparing statements on the next use.
    Discard,
    /// Nothing: for callers that guarantee every job ends its own transaction.
    None,
}

use std::time::Duration;

/// How a pool behaves; build with [`PoolSettings::new`] and the setters, r2d2-style. The
/// defaults live in `new` and each setter says why it is what it is.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub(crate) pool_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) checkout_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) pre_ping: bool,
    pub(crate) ping_after: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) reset_on_return: ResetOnReturn,
    pub(crate) leak_threshold: Option<Duration>,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) application_name: String,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings::new()
    }
}

impl PoolSettings {
    /// The defaults documented on each setter.
    pub fn new() -> Self {
        PoolSettings {
            pool_size: 1,
            min_idle: 0,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            pre_ping: true,
            ping_after: Duration::from_millis(500),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            lifetime_jitter: Duration::from_secs(2 * 60),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            reset_on_return: ResetOnReturn::Rollback,
            leak_threshold: None,
            statement_timeout: None,
            application_name: "forkpool".to_string(),
        }
    }

    /// Most connections this pool opens. Default 1: a worker's executor threads share it and
    /// every worker has its own, so the total (workers × pool_size) must fit the server's
    /// budget; raise it only with `threads`. Panics if 0.
    pub fn pool_size(mut self, n: usize) -> Self {
        assert!(n > 0, "pool_size must be at least 1");
        self.pool_size = n;
        self
    }

    /// Idle connections opened ahead of need at `maintain()`. Default 0: lazy, so an idle
    /// worker holds no server slot. Capped at `pool_size`.
    ///
    /// Pools are lazy by contract (creating one opens nothing; the first checkout connects),
    /// and a worker builds a database's pool at its first job on that database: only then
    /// does its tick call `maintain()`, so `min_idle` keeps connections warm after that first
    /// use, not from the worker's boot.
    pub fn min_idle(mut self, n: usize) -> Self {
        self.min_idle = n;
        self
    }

    /// How long a checkout may wait for a free or new connection, retries included: a
    /// connect attempt still running when it ends is cut short. Default 5 s: long enough to
    /// ride out a database restart's first seconds, short enough that a job fails with a
    /// reason rather than hangs.
    pub fn checkout_timeout(mut self, d: Duration) -> Self {
        self.checkout_timeout = d;
        self
    }

    /// Bound on opening one connection (TCP, TLS, authentication; per host when there are
    /// several), on a ping (within a checkout, the time left of `checkout_timeout` bounds
    /// both too), on the reset at checkin and on a cancel request. Default 5 s: libpq has none, which is how a silent server hangs a
    /// process forever. A `connect_timeout` in the conninfo wins.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Ping an idle connection before handing it out. Default true: a database restart or
    /// a server `idle_session_timeout` kills idle sessions silently, and a job should not be
    /// the one to find out.
    pub fn pre_ping(mut self, on: bool) -> Self {
        self.pre_ping = on;
        self
    }

    /// Ping only connections idle at least this long; one used more recently gets a free
    /// check instead: a zero-timeout poll of its socket, which finds a session the server
    /// closed since (a restart, `idle_session_timeout`, `pg_terminate_backend` all send a
    /// FATAL message and close) and pings it then. Default 500 ms, HikariCP's bypass window:
    /// under load a job skips a round trip, and what the poll cannot see — a server that
    /// vanished without closing the socket in that half second — fails one job, with the
    /// job's own deadline as the bound. `Duration::ZERO` pings every time.
    pub fn ping_after(mut self, d: Duration) -> Self {
        self.ping_after = d;
        self
    }

    /// Close connections older than this (minus the jitter). Default 30 min: under common
    /// firewall and load-balancer idle cuts, and it spreads server-side memory growth.
    /// `None` keeps connections forever.
    pub fn max_lifetime(mut self, d: Option<Duration>) -> Self {
        self.max_lifetime = d;
        self
    }

    /// Each connection's lifetime is shortened by a random amount up to this. Default 2 min:
    /// connections opened together (at a restart) do not all expire in the same second.
    pub fn lifetime_jitter(mut self, d: Duration) -> Self {
        self.lifetime_jitter = d;
        self
    }

    /// Close connections idle longer than this at `maintain()`. Default 10 min: gives back
    /// server slots after a burst. `None` keeps them.
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// What checkin does so the next job starts clean. Default `Rollback` (see
    /// [`ResetOnReturn`]).
    pub fn reset_on_return(mut self, r: ResetOnReturn) -> Self {
        self.reset_on_return = r;
        self
    }

    /// Warn (once per checkout, with its label) about a checkout held longer than this,
    /// at `maintain()`. Default `None`: long jobs are normal for some services.
    pub fn leak_threshold(mut self, d: Option<Duration>) -> Self {
        self.leak_threshold = d;
        self
    }

    /// Server-side `statement_timeout` for every session, sent at startup. Default `None`
    /// (the server's setting): jobs carry their own deadline.
    pub fn statement_timeout(mut self, d: Option<Duration>) -> Self {
        self.statement_timeout = d;
        self
    }

    /// `application_name` the sessions show in `pg_stat_activity`. Default "forkpool";
    /// an `application_name` in the conninfo wins.
    pub fn application_name(mut self, s: impl Into<String>) -> Self {
        self.application_name = s.into();
        self
    }
}
