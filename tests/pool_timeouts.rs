//! A server that stops answering never blocks the pool past its timeouts: connect, ping,
//! a query with a deadline, and the discard that follows.

mod support;

use forkpool::pool::{ConnInfo, Error, Pool, PoolSettings};
use std::time::{Duration, Instant};
use support::{silent_listener, Cluster};

/// Far above every bound used here, far below "hung": proves an operation returned.
const NOT_HUNG: Duration = Duration::from_secs(8);

fn pool(cluster: &Cluster, app: &str, settings: PoolSettings) -> Pool {
    let info = ConnInfo::parse(&cluster.tcp_url("require")).unwrap();
    Pool::new(app, info, settings.application_name(app)).unwrap()
}

#[test]
fn silent_listener_fails_the_checkout_within_its_timeout() {
    let listener = silent_listener();
    // (connect_timeout, checkout_timeout, what the error names as the bound that ran out,
    // a bound on the whole checkout with a wide margin)
    let cases = [
        // Several attempts fit the window; each ends at connect_timeout.
        (
            Duration::from_millis(300),
            Duration::from_millis(800),
            "connect_timeout 300ms",
            NOT_HUNG,
        ),
        // One attempt would outlast the window: it ends with the window instead, far
        // before the 20 s an attempt bounded only by connect_timeout would take.
        (
            Duration::from_secs(20),
            Duration::from_millis(300),
            "what was left of checkout_timeout",
            Duration::from_secs(5),
        ),
    ];
    for sslmode in ["disable", "require"] {
        for (connect_timeout, checkout_timeout, bound, fails_before) in cases {
            let info = ConnInfo::parse(&format!(
                "host=127.0.0.1 port={} user=app dbname=app sslmode={sslmode}",
                listener.port()
            ))
            .unwrap();
            let settings = PoolSettings::new()
                .connect_timeout(connect_timeout)
                .checkout_timeout(checkout_timeout);
            let pool = Pool::new("silent", info, settings).unwrap();
            let started = Instant::now();
            let error = pool.checkout("job").unwrap_err();
            let elapsed = started.elapsed();
            let text = error.to_string();
            assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
            assert!(text.contains(bound), "{sslmode}: {text}");
            // The whole window is tried, and no attempt runs on past it.
            assert!(
                elapsed >= checkout_timeout,
                "{sslmode}: gave up after {elapsed:?}"
            );
            assert!(
                elapsed < fails_before,
                "{sslmode}: checkout_timeout {checkout_timeout:?} overrun: failed after {elapsed:?}"
            );
        }
    }
}

#[test]
fn a_stopped_backend_fails_its_ping_and_is_replaced() {
    let cluster = Cluster::shared();
    // Pinged however recently used: a frozen backend sends no close for the free socket
    // check to see, which is the gap `ping_after` documents.
    let pool = pool(
        cluster,
        "t-stopped-ping",
        PoolSettings::new()
            .connect_timeout(Duration::from_millis(300))
            .ping_after(Duration::ZERO),
    );
    let frozen = pool.checkout("first").unwrap().backend_pid();
    cluster.sigstop(frozen);
    let started = Instant::now();
    let result = pool.checkout("second").map(|mut c| {
        let one: i32 = c.query_sql("SELECT 1", &[]).unwrap()[0].get(0);
        (c.backend_pid(), one)
    });
    let elapsed = started.elapsed();
    cluster.sigcont(frozen);
    let (pid, one) = result.unwrap();
    assert_ne!(pid, frozen);
    assert_eq!(one, 1);
    assert!(elapsed < NOT_HUNG, "{elapsed:?}");
    assert_eq!(pool.stats().ping_failures, 1);
}

#[test]
fn a_deadline_cancels_a_slow_query_and_the_session_is_reused() {
    let cluster = Cluster::shared();
    let pool = pool(cluster, "t-deadline", PoolSettings::new());
    let mut connection = pool.checkout("slow-job").unwrap();
    let pid = connection.backend_pid();
    connection.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
    let started = Instant::now();
    let error = connection
        .query_sql("SELECT pg_sleep(30)", &[])
        .unwrap_err();
    assert!(started.elapsed() < NOT_HUNG);
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(error.to_string().contains("deadline"), "{error}");
    // Past the deadline nothing more is sent.
    assert!(matches!(
        connection.batch_execute("SELECT 1"),
        Err(Error::Timeout { .. })
    ));
    drop(connection);
    let mut again = pool.checkout("next-job").unwrap();
    assert_eq!(
        again.backend_pid(),
        pid,
        "cancelled and reset, not discarded"
    );
    assert_eq!(
        again.query_sql("SELECT 2", &[]).unwrap()[0].get::<_, i32>(0),
        2
    );
    let sleeping = cluster.query_value(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
    );
    assert_eq!(
        sleeping.as_deref(),
        Some("0"),
        "the server stopped the query"
    );
}

#[test]
fn a_stopped_backend_bounds_query_reset_and_discard() {
    let cluster = Cluster::shared();
    let pool = pool(
        cluster,
        "t-stopped-query",
        PoolSettings::new().connect_timeout(Duration::from_millis(300)),
    );
    let mut connection = pool.checkout("job").unwrap();
    let frozen = connection.backend_pid();
    cluster.sigstop(frozen);
    let started = Instant::now();
    connection.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
    let error = connection.query_sql("SELECT 1", &[]).unwrap_err();
    drop(connection); // reset times out → discarded without a byte
    let elapsed = started.elapsed();
    cluster.sigcont(frozen);
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(elapsed < NOT_HUNG, "{elapsed:?}");
    let stats = pool.stats();
    assert_eq!(stats.closed_by_reason.get("reset"), Some(&1), "{stats:?}");
    assert_eq!(stats.size, 0);
}

#[test]
fn cancel_running_stops_a_query_held_by_another_thread() {
    let cluster = Cluster::shared();
    let pool = pool(cluster, "t-cancel-running", PoolSettings::new());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let sleeper = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut connection = pool.checkout("long").unwrap();
            started_tx.send(connection.backend_pid()).unwrap();
            let began = Instant::now();
            let outcome = connection.query_sql("SELECT pg_sleep(60)", &[]).map(drop);
            (outcome, began.elapsed())
        })
    };
    let backend = started_rx.recv().unwrap();
    // The cancel must find the query running, not still on its way to the server.
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {backend} AND query LIKE '%pg_sleep(60)%' AND state = 'active'"
    );
    let deadline = Instant::now() + NOT_HUNG;
    while cluster.query_value(&running).as_deref() == Some("0") {
        assert!(Instant::now() < deadline, "the sleep never started");
    }
    pool.cancel_running();
    let (outcome, took) = sleeper.join().unwrap();
    let error = outcome.expect_err("the cancelled sleep should fail");
    assert!(error.to_string().contains("57014"), "{error}");
    assert!(took < NOT_HUNG, "{took:?}");
}
