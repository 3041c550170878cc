//! Paused queues against a real server (schema version 3): a paused backlog leaves the claim
//! index, so claims for other queues do not walk it, and a resume never leaves a job out of
//! it — not even one stored by a transaction still open when the resume began.
//!
//! Each test works in a database of its own on the shared cluster.

mod support;

use std::time::{Duration, Instant};

use forkpool::pool::{Pool, PooledConnection};
use forkpool::queue::claim::{self, Holder};
use forkpool::queue::enqueue::{self, NewJob};
use forkpool::queue::schema;
use support::{poll_until, Cluster};

/// A fresh database with the schema migrated, and a TLS pool on it.
fn migrated(name: &str) -> Pool {
    let cluster = Cluster::shared();
    cluster.create_database(name);
    let pool = cluster.app_pool(name, 4);
    schema::migrate_schema(&mut pool.checkout("migrate").unwrap()).unwrap();
    pool
}

/// Up to `limit` jobs named `noop` claimed by worker 1, and how many entries of the claim
/// index the claim read (this session's counters, read before and after, in a transaction
/// rolled back: the jobs stay waiting).
fn claim_reading(conn: &mut PooledConnection, limit: i64) -> (Vec<String>, i64) {
    let entries = |conn: &mut PooledConnection| -> i64 {
        conn.query_sql(
            "SELECT pg_stat_get_xact_tuples_returned('forkpool.jobs_claim_order'::regclass)",
            &[],
        )
        .unwrap()[0]
            .get(0)
    };
    conn.batch_execute("BEGIN").unwrap();
    let before = entries(conn);
    let holder = Holder {
        host: "host-a".into(),
        instance: 7,
        worker: 1,
    };
    let claimed = claim::claim(
        conn,
        &["noop".to_string()],
        &[],
        limit,
        &holder,
        Duration::from_secs(30),
        false,
    )
    .unwrap();
    let read = entries(conn) - before;
    conn.batch_execute("ROLLBACK").unwrap();
    (claimed.into_iter().map(|job| job.queue).collect(), read)
}

fn count(conn: &mut PooledConnection, sql: &str) -> i64 {
    conn.query_sql(sql, &[]).unwrap()[0].get(0)
}

#[test]
fn claims_do_not_walk_the_waiting_jobs_of_a_paused_queue() {
    let pool = migrated("paused_walk");
    let mut conn = pool.checkout("t").unwrap();
    // A backlog stored into a queue already paused — by `forkpool.enqueue` and by the
    // socket's batch statement — ahead of one job of queue `open` in the claim order.
    conn.batch_execute(
        "SELECT forkpool.pause_queue('held'); \
         SELECT forkpool.enqueue('noop', '{}', 'held') FROM generate_series(1, 10000)",
    )
    .unwrap();
    let batch: Vec<NewJob> = (0..10_000).map(|_| new_job("held")).collect();
    enqueue::enqueue_batch(&mut conn, &batch).unwrap();
    conn.batch_execute(
        "SELECT forkpool.enqueue('noop', '{}', 'open'); \
         ANALYZE forkpool.jobs",
    )
    .unwrap();
    let (queues, read) = claim_reading(&mut conn, 1);
    assert_eq!(queues, ["open"]);
    assert!(
        read < 100,
        "the claim read {read} entries of the claim index: it walked the paused backlog"
    );

    // A backlog paused once stored leaves the index too: the claim right after the pause
    // passes its entries once (they are dead from then on), the next ones do not.
    conn.batch_execute(
        "INSERT INTO forkpool.jobs (job, queue, priority) \
         SELECT 'noop', 'later', -1 FROM generate_series(1, 20000); \
         SELECT forkpool.pause_queue('later')",
    )
    .unwrap();
    claim_reading(&mut conn, 1);
    let (queues, read) = claim_reading(&mut conn, 1);
    assert_eq!(queues, ["open"]);
    assert!(
        read < 100,
        "the second claim after the pause read {read} entries"
    );
    // A user's own INSERT into a paused queue is marked by the trigger.
    conn.batch_execute("INSERT INTO forkpool.jobs (job, queue) VALUES ('noop', 'later')")
        .unwrap();
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM forkpool.jobs WHERE paused AND queue IN ('held', 'later')"
        ),
        40_001
    );

    // Resumed, the queue's jobs are claimed again, in their order.
    conn.batch_execute("SELECT forkpool.resume_queue('held')")
        .unwrap();
    let (queues, _) = claim_reading(&mut conn, 2);
    assert_eq!(queues, ["held", "held"]);
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM forkpool.jobs WHERE paused"),
        20_001,
        "only queue `later` is still paused"
    );
}

fn new_job(queue: &str) -> NewJob {
    NewJob {
        job: "noop".into(),
        args: serde_json::json!({}),
        queue: Some(queue.into()),
        priority: None,
        run_at: None,
        delay_ms: None,
        max_attempts: None,
        unique_key: None,
    }
}

#[test]
fn a_resume_waits_for_a_transaction_storing_into_the_paused_queue_and_leaves_no_job_out() {
    let pool = migrated("paused_resume_race");
    let mut enqueuer = pool.checkout("enqueuer").unwrap();
    enqueuer
        .batch_execute("SELECT forkpool.pause_queue('held')")
        .unwrap();
    // A transaction stores a job into the paused queue and stays open.
    enqueuer
        .batch_execute("BEGIN; SELECT forkpool.enqueue('noop', '{}', 'held')")
        .unwrap();
    let mut resumer = pool.checkout("resumer").unwrap();
    resumer.set_deadline(Some(Instant::now() + Duration::from_secs(30)));
    let resumer_pid: i32 = resumer.query_sql("SELECT pg_backend_pid()", &[]).unwrap()[0].get(0);
    std::thread::scope(|scope| {
        let resume = scope.spawn(move || {
            resumer
                .batch_execute("SELECT forkpool.resume_queue('held')")
                .map_err(|e| e.to_string())
        });
        // The resume waits for the open transaction: it must, or its unmarking would not see
        // that transaction's job, which would stay marked in a running queue for ever.
        let mut watcher = pool.checkout("watcher").unwrap();
        poll_until(
            "the resume waits for the enqueuing transaction's lock",
            Duration::from_secs(10),
            || {
                let waiting = count(
                    &mut watcher,
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity \
                          WHERE pid = {resumer_pid} AND wait_event_type = 'Lock'"
                    ),
                );
                (waiting == 1).then_some(())
            },
            || "the resume did not wait for the open transaction's KEY SHARE lock".into(),
        );
        assert!(!resume.is_finished());
        enqueuer.batch_execute("COMMIT").unwrap();
        resume.join().unwrap().unwrap();
    });
    let mut conn = pool.checkout("t").unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM forkpool.jobs WHERE paused"),
        0
    );
    let (queues, _) = claim_reading(&mut conn, 1);
    assert_eq!(
        queues,
        ["held"],
        "the job stored during the resume is claimed"
    );
}

#[test]
fn a_schema_at_version_2_is_upgraded_with_its_paused_backlog_marked() {
    let cluster = Cluster::shared();
    cluster.create_database("paused_upgrade");
    let pool = cluster.app_pool("paused_upgrade", 2);
    let mut conn = pool.checkout("t").unwrap();
    // Versions 1 and 2 as a forkpool of version 2 left them: a paused queue with a job.
    conn.batch_execute(&format!(
        "CREATE SCHEMA forkpool; \
         CREATE TABLE forkpool.schema_version ( \
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
         {} {} \
         INSERT INTO forkpool.schema_version (version) VALUES (1), (2); \
         INSERT INTO forkpool.paused_queues (queue) VALUES ('held'); \
         INSERT INTO forkpool.jobs (job, queue) VALUES ('noop', 'held'), ('noop', 'open')",
        include_str!("../src/queue/schema.sql"),
        include_str!("../src/queue/schema_v2.sql"),
    ))
    .unwrap();
    assert_eq!(
        schema::ensure(&mut conn, true).unwrap(),
        2,
        "found version 2"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM forkpool.jobs WHERE paused AND queue = 'held'"
        ),
        1
    );
    let (queues, _) = claim_reading(&mut conn, 2);
    assert_eq!(queues, ["open"]);
    conn.batch_execute("SELECT forkpool.resume_queue('held')")
        .unwrap();
    let (queues, _) = claim_reading(&mut conn, 2);
    assert_eq!(queues, ["held", "open"]);
}
