//! Checkout, checkin and maintenance against a real server: dead sessions are replaced,
//! jobs' leftovers are reset, limits produce clear errors, passwords never leak.

mod support;

use forkpool::pool::{ConnInfo, Error, Pool, PoolSettings, ResetOnReturn};
use std::collections::HashSet;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use support::{wait_until, Cluster, APP_PASSWORD};

/// Every log line of this test binary, so tests can look for warnings and for passwords.
static LOG_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CapturingLogger;

impl log::Log for CapturingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // The harness creates the app role with its password through tokio-postgres, which
        // logs the statement; that line is the harness's, not the pool's.
        if record.args().to_string().contains("CREATE ROLE") {
            return;
        }
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        LOG_LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CapturingLogger).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged(needle: &str) -> Vec<String> {
    LOG_LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(needle))
        .cloned()
        .collect()
}

/// A pool over TCP + TLS whose sessions carry `app` as application_name, so each test finds
/// its own backends on the shared cluster.
fn tls_pool(cluster: &Cluster, app: &str, settings: PoolSettings) -> Pool {
    capture_logs();
    let info = ConnInfo::parse(&cluster.tcp_url("require")).unwrap();
    Pool::new(app, info, settings.application_name(app)).unwrap()
}

fn select_one(pool: &Pool) -> i32 {
    let mut connection = pool.checkout("select-one").unwrap();
    let rows = connection.query_sql("SELECT 1", &[]).unwrap();
    rows[0].get(0)
}

#[test]
fn building_a_pool_opens_nothing_and_first_checkout_connects() {
    let cluster = Cluster::shared();
    let pool = tls_pool(cluster, "t-lazy", PoolSettings::new());
    assert!(cluster.backend_pids("t-lazy").is_empty());
    assert_eq!(pool.stats().size, 0);
    let mut connection = pool.checkout("job-1").unwrap();
    let ssl: bool = connection
        .query_sql(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()[0]
        .get(0);
    assert!(ssl, "sslmode=require must encrypt");
    assert_eq!(
        cluster.backend_pids("t-lazy"),
        vec![connection.backend_pid()]
    );
    let stats = pool.stats();
    assert_eq!((stats.size, stats.in_use, stats.idle), (1, 1, 0));
    let first_pid = connection.backend_pid();
    drop(connection);
    let connection = pool.checkout("job-2").unwrap();
    assert_eq!(
        connection.backend_pid(),
        first_pid,
        "the idle session is reused"
    );
    drop(connection);
    let stats = pool.stats();
    assert_eq!((stats.created, stats.checkouts, stats.idle), (1, 2, 1));
}

#[test]
fn prepared_statements_are_cached_per_connection() {
    let pool = tls_pool(Cluster::shared(), "t-prepare", PoolSettings::new());
    let mut connection = pool.checkout("job").unwrap();
    let types = [tokio_postgres::types::Type::INT4];
    let first = connection
        .prepare_typed("SELECT $1::int4 + 1", &types)
        .unwrap();
    let again = connection
        .prepare_typed("SELECT $1::int4 + 1", &types)
        .unwrap();
    let _ = first;
    let prepared: i64 = connection
        .query_sql(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int4 + 1'",
            &[],
        )
        .unwrap()[0]
        .get(0);
    assert_eq!(prepared, 1, "prepared once, then taken from the cache");
    let rows = connection.query(&again, &[&41i32]).unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    assert_eq!(connection.execute(&again, &[&1i32]).unwrap(), 1);
}

#[test]
fn server_errors_keep_sqlstate_and_message() {
    let pool = tls_pool(Cluster::shared(), "t-dberror", PoolSettings::new());
    let mut connection = pool.checkout("job").unwrap();
    let error = connection
        .batch_execute("SELECT * FROM no_such_table")
        .unwrap_err();
    match &error {
        Error::Db(db) => assert_eq!(db.sqlstate, "42P01"),
        other => panic!("expected a server error, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("42P01") && text.contains("no_such_table"),
        "{text}"
    );
    drop(connection);
    assert_eq!(
        select_one(&pool),
        1,
        "a server error does not break the session"
    );
}

#[test]
fn restart_between_checkouts_is_survived_with_pre_ping_only() {
    let cluster = Cluster::start();
    let with_ping = tls_pool(&cluster, "t-restart-ping", PoolSettings::new().pool_size(2));
    let without_ping = tls_pool(
        &cluster,
        "t-restart-noping",
        PoolSettings::new().pre_ping(false),
    );
    {
        // Two sessions in the pinged pool, so the failed ping must invalidate the older one.
        // The newer one goes back last, so it is the one pinged first.
        let older = with_ping.checkout("a").unwrap();
        let newer = with_ping.checkout("b").unwrap();
        drop(older);
        drop(newer);
    }
    assert_eq!(select_one(&without_ping), 1);
    cluster.restart();

    assert_eq!(select_one(&with_ping), 1);
    let stats = with_ping.stats();
    assert_eq!(stats.ping_failures, 1, "{stats:?}");
    assert_eq!(stats.closed_by_reason.get("ping"), Some(&1), "{stats:?}");
    assert_eq!(
        stats.closed_by_reason.get("invalidated"),
        Some(&1),
        "{stats:?}"
    );

    let mut dead = without_ping.checkout("no-ping").unwrap();
    let error = dead.query_sql("SELECT 1", &[]).unwrap_err();
    assert!(
        matches!(error, Error::Connection(_) | Error::Db(_)),
        "{error:?}"
    );
    drop(dead);
    assert_eq!(
        without_ping.stats().closed_by_reason.get("broken"),
        Some(&1),
        "the broken session is discarded at checkin"
    );
    assert_eq!(
        select_one(&without_ping),
        1,
        "the next checkout connects afresh"
    );
}

#[test]
fn server_idle_session_timeout_is_survived() {
    let cluster = Cluster::shared();
    capture_logs();
    let info = ConnInfo::parse(&format!(
        "{} options='-c idle_session_timeout=200'",
        cluster.tcp_url("require")
    ))
    .unwrap();
    let pool = Pool::new(
        "t-idle-session",
        info,
        PoolSettings::new().application_name("t-idle-session"),
    )
    .unwrap();
    let first_pid = {
        let connection = pool.checkout("first").unwrap();
        connection.backend_pid()
    };
    wait_until("the server ends the idle session", || {
        !cluster.backend_pids("t-idle-session").contains(&first_pid)
    });
    let mut connection = pool.checkout("second").unwrap();
    assert_ne!(connection.backend_pid(), first_pid);
    assert_eq!(
        connection.query_sql("SELECT 1", &[]).unwrap()[0].get::<_, i32>(0),
        1
    );
}

#[test]
fn a_recently_used_connection_skips_the_ping_unless_the_server_closed_it() {
    let cluster = Cluster::shared();
    let app = "t-ping-after";
    let pool = tls_pool(
        cluster,
        app,
        PoolSettings::new().ping_after(Duration::from_secs(3600)),
    );
    assert_eq!(select_one(&pool), 1);
    assert_eq!(select_one(&pool), 1);
    let stats = pool.stats();
    assert_eq!((stats.pings, stats.created), (0, 1), "{stats:?}");

    // The server ends the session while it is idle: its socket now holds the FATAL message
    // and the close, which the checkout sees without a round trip, and pings.
    assert_eq!(cluster.terminate_backends(app), 1);
    assert_eq!(select_one(&pool), 1, "no job finds the dead session");
    let stats = pool.stats();
    assert_eq!(
        (stats.pings, stats.ping_failures, stats.created),
        (1, 1, 2),
        "{stats:?}"
    );
}

#[test]
fn terminated_backends_are_replaced_at_checkout() {
    let cluster = Cluster::shared();
    let pool = tls_pool(cluster, "t-terminate", PoolSettings::new().pool_size(3));
    let old_pids: Vec<i32> = {
        let held: Vec<_> = (0..3)
            .map(|i| pool.checkout(&format!("j{i}")).unwrap())
            .collect();
        held.iter().map(|c| c.backend_pid()).collect()
    };
    assert_eq!(cluster.terminate_backends("t-terminate"), 3);
    let mut connection = pool.checkout("after").unwrap();
    assert!(!old_pids.contains(&connection.backend_pid()));
    assert_eq!(connection.query_sql("SELECT 1", &[]).unwrap().len(), 1);
    drop(connection);
    assert_eq!(
        pool.stats().size,
        1,
        "all three dead sessions were dropped: {:?}",
        pool.stats()
    );
}

#[test]
fn open_transaction_is_rolled_back_at_checkin() {
    let cluster = Cluster::shared();
    cluster.execute(
        "CREATE TABLE IF NOT EXISTS pool_reset_probe (job text); \
         GRANT ALL ON pool_reset_probe TO app",
    );
    for reset in [ResetOnReturn::Rollback, ResetOnReturn::Discard] {
        let app = format!("t-reset-{reset:?}");
        let pool = tls_pool(cluster, &app, PoolSettings::new().reset_on_return(reset));
        let mut connection = pool.checkout("half-done").unwrap();
        connection
            .batch_execute(&format!(
                "BEGIN; INSERT INTO pool_reset_probe VALUES ('{app}')"
            ))
            .unwrap();
        drop(connection);
        let rows = cluster.query_value(&format!(
            "SELECT count(*) FROM pool_reset_probe WHERE job = '{app}'"
        ));
        assert_eq!(rows.as_deref(), Some("0"), "{reset:?}");
        let stuck = cluster.query_value(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' \
             AND state LIKE 'idle in transaction%'"
        ));
        assert_eq!(stuck.as_deref(), Some("0"), "{reset:?}");
        assert_eq!(pool.stats().idle, 1, "the reset session goes back idle");
    }
}

#[test]
fn discard_reset_drops_cached_statements_safely() {
    let pool = tls_pool(
        Cluster::shared(),
        "t-discard",
        PoolSettings::new().reset_on_return(ResetOnReturn::Discard),
    );
    for _ in 0..2 {
        let mut connection = pool.checkout("job").unwrap();
        let statement = connection.prepare_typed("SELECT 7", &[]).unwrap();
        assert_eq!(
            connection.query(&statement, &[]).unwrap()[0].get::<_, i32>(0),
            7
        );
    }
}

#[test]
fn lifetime_expiry_recycles_at_checkin() {
    let pool = tls_pool(
        Cluster::shared(),
        "t-lifetime",
        PoolSettings::new()
            .max_lifetime(Some(Duration::ZERO))
            .lifetime_jitter(Duration::ZERO),
    );
    let first = pool.checkout("a").unwrap().backend_pid();
    let second = pool.checkout("b").unwrap().backend_pid();
    assert_ne!(first, second);
    assert_eq!(pool.stats().closed_by_reason.get("lifetime"), Some(&2));
}

#[test]
fn lifetime_jitter_spreads_expiries_within_the_window() {
    const SESSIONS: usize = 8;
    // Each session expires between 1 s and 7 s after it connected.
    let max_lifetime = Duration::from_secs(7);
    let jitter = Duration::from_secs(6);
    let cluster = Cluster::shared();
    let pool = tls_pool(
        cluster,
        "t-jitter",
        PoolSettings::new()
            .pool_size(SESSIONS)
            .max_lifetime(Some(max_lifetime))
            .lifetime_jitter(jitter)
            .idle_timeout(None),
    );
    let opening_began = Instant::now();
    let held: Vec<_> = (0..SESSIONS)
        .map(|i| pool.checkout(&format!("open-{i}")).unwrap())
        .collect();
    let opened = Instant::now();
    let pids: HashSet<i32> = held.iter().map(|c| c.backend_pid()).collect();
    assert_eq!(pids.len(), SESSIONS, "one session per checkout");

    // Each expiry is known to lie in (after, by]: `by` is the end of the checkin or
    // maintain() that closed the session, `after` the start of the one before, which still
    // found it alive. The checkin of all sessions comes first; nothing expires before
    // `opening_began`.
    let lifetime_closes = |pool: &Pool| -> usize {
        let stats = pool.stats();
        stats.closed_by_reason.get("lifetime").copied().unwrap_or(0) as usize
    };
    let mut expiries: Vec<(Instant, Instant)> = Vec::new();
    let mut previous_began = opening_began;
    let mut began = Instant::now();
    drop(held);
    let give_up = opened + max_lifetime + Duration::from_secs(30);
    loop {
        let by = Instant::now();
        let closed = lifetime_closes(&pool);
        expiries.extend((expiries.len()..closed).map(|_| (previous_began, by)));
        if closed >= SESSIONS {
            break;
        }
        assert!(by < give_up, "only {closed} of {SESSIONS} sessions expired");
        // Waiting for wall-clock lifetimes to pass: there is no event to wait for.
        std::thread::sleep(Duration::from_millis(10));
        previous_began = began;
        began = Instant::now();
        pool.maintain();
    }

    let since_open = |at: Instant| at.saturating_duration_since(opening_began);
    let shown: Vec<String> = expiries
        .iter()
        .map(|(after, by)| format!("{:?}..{:?}", since_open(*after), since_open(*by)))
        .collect();
    // Within the window: no session lived less than max_lifetime - jitter or more than
    // max_lifetime.
    let earliest = opening_began + (max_lifetime - jitter);
    let latest = opened + max_lifetime;
    assert!(
        expiries
            .iter()
            .all(|(after, by)| *by >= earliest && *after < latest),
        "expiries (after opening began) {shown:?} outside {:?}..{:?}",
        since_open(earliest),
        since_open(latest)
    );
    // Spread: without jitter every session would expire within the time the sessions took
    // to open, one max_lifetime after it. The expiries lie further apart than that.
    let first = expiries.iter().map(|(_, by)| *by).min().unwrap();
    let last = expiries.iter().map(|(after, _)| *after).max().unwrap();
    let opening = opened - opening_began;
    assert!(
        last.saturating_duration_since(first) > opening,
        "expiries {shown:?} are no further apart than the {opening:?} the sessions took to open"
    );
    wait_until("the expired sessions leave the server", || {
        cluster.backend_pids("t-jitter").is_empty()
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.created, stats.size),
        (SESSIONS as u64, 0),
        "{stats:?}"
    );
}

#[test]
fn idle_timeout_closes_connections_at_maintain() {
    let cluster = Cluster::shared();
    let pool = tls_pool(
        cluster,
        "t-idle-timeout",
        PoolSettings::new().idle_timeout(Some(Duration::ZERO)),
    );
    let pid = pool.checkout("a").unwrap().backend_pid();
    assert_eq!(pool.stats().idle, 1, "nothing closes before maintain");
    pool.maintain();
    assert_eq!(pool.stats().idle, 0);
    assert_eq!(pool.stats().closed_by_reason.get("idle"), Some(&1));
    wait_until("the closed session leaves the server", || {
        !cluster.backend_pids("t-idle-timeout").contains(&pid)
    });
}

#[test]
fn min_idle_is_kept_at_maintain() {
    let cluster = Cluster::shared();
    let pool = tls_pool(
        cluster,
        "t-min-idle",
        PoolSettings::new().pool_size(3).min_idle(2),
    );
    pool.maintain();
    assert_eq!(pool.stats().idle, 2);
    assert_eq!(cluster.backend_pids("t-min-idle").len(), 2);
}

#[test]
fn checkout_timeout_with_all_connections_held_says_why() {
    let pool = tls_pool(
        Cluster::shared(),
        "t-exhausted",
        // Long enough for the holder's own TLS connect on a loaded machine (300 ms was not).
        PoolSettings::new().checkout_timeout(Duration::from_millis(1500)),
    );
    let _held = pool.checkout("holder").unwrap();
    let started = Instant::now();
    let error = pool.checkout("waiter").unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(
        waited < Duration::from_secs(5),
        "bounded by checkout_timeout: {waited:?}"
    );
    let text = error.to_string();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(
        text.contains("all 1 connections in use for 1s 500ms"),
        "{text}"
    );
    assert_eq!(pool.stats().checkout_timeouts, 1);
}

#[test]
fn a_waiting_checkout_gets_the_connection_given_back() {
    let pool = tls_pool(Cluster::shared(), "t-handover", PoolSettings::new());
    let held = pool.checkout("holder").unwrap();
    let pid = held.backend_pid();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.checkout("waiter").map(|c| c.backend_pid()));
        wait_until("the waiter waits", || pool.stats().waiting == 1);
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), pid);
    });
}

#[test]
fn unreachable_database_error_names_the_last_connect_error() {
    capture_logs();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=u dbname=main")).unwrap();
    let pool = Pool::new(
        "t-refused",
        info,
        PoolSettings::new().checkout_timeout(Duration::from_millis(400)),
    )
    .unwrap();
    let error = pool.checkout("job").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("database \"main\" unavailable"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
}

#[test]
fn wrong_password_fails_fast_with_sqlstate_and_never_shows_passwords() {
    let cluster = Cluster::shared();
    capture_logs();
    let wrong = "wrong-Pass-91x";
    let url = cluster.tcp_url("require").replace(APP_PASSWORD, wrong);
    let info = ConnInfo::parse(&url).unwrap();
    let pool = Pool::new("t-badpass", info.clone(), PoolSettings::new()).unwrap();
    let error = pool.checkout("job").unwrap_err();
    let text = error.to_string();
    assert!(text.contains("28P01"), "{text}");
    for shown in [
        text,
        format!("{error:?}"),
        format!("{info}"),
        format!("{info:?}"),
        format!("{pool:?}"),
    ] {
        assert!(!shown.contains(wrong), "{shown}");
    }
    select_one(&tls_pool(cluster, "t-goodpass", PoolSettings::new()));
    assert!(!logged("connect").is_empty(), "connect events are logged");
    assert_eq!(logged(wrong), Vec::<String>::new());
    assert_eq!(logged(APP_PASSWORD), Vec::<String>::new());
}

#[test]
fn leak_warning_fires_once_with_the_label() {
    let pool = tls_pool(
        Cluster::shared(),
        "t-leak",
        PoolSettings::new().leak_threshold(Some(Duration::ZERO)),
    );
    let held = pool.checkout("job-4711").unwrap();
    pool.maintain();
    pool.maintain();
    let warnings: Vec<_> = logged("job-4711")
        .into_iter()
        .filter(|line| line.starts_with("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    drop(held);
}

#[test]
fn closed_pool_terminates_idle_sessions_and_refuses_checkouts() {
    let cluster = Cluster::shared();
    let pool = tls_pool(cluster, "t-close", PoolSettings::new().pool_size(2));
    let held = pool.checkout("held").unwrap();
    drop(pool.checkout("idle").unwrap());
    pool.close();
    assert_eq!(pool.stats().idle, 0);
    drop(held);
    assert_eq!(pool.stats().closed_by_reason.get("close"), Some(&2));
    wait_until("closed sessions leave the server", || {
        cluster.backend_pids("t-close").is_empty()
    });
    assert!(matches!(
        pool.checkout("late"),
        Err(Error::Unavailable { .. })
    ));
}

#[test]
fn statement_timeout_and_application_name_reach_the_session() {
    let cluster = Cluster::shared();
    capture_logs();
    let info = ConnInfo::parse(&format!(
        "{} application_name=t-conninfo-name",
        cluster.tcp_url("require")
    ))
    .unwrap();
    let settings = PoolSettings::new()
        .statement_timeout(Some(Duration::from_millis(150)))
        .application_name("t-settings-name");
    let pool = Pool::new("t-settings", info, settings).unwrap();
    let mut connection = pool.checkout("job").unwrap();
    let row = &connection
        .query_sql(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')",
            &[],
        )
        .unwrap()[0];
    assert_eq!(row.get::<_, String>(0), "150ms");
    assert_eq!(
        row.get::<_, String>(1),
        "t-conninfo-name",
        "the conninfo's name wins"
    );
    let error = connection.batch_execute("SELECT pg_sleep(5)").unwrap_err();
    match error {
        Error::Db(db) => assert_eq!(db.sqlstate, "57014", "query_canceled"),
        other => panic!("expected the server's statement timeout, got {other:?}"),
    }
}
