//! Batches of durable jobs (`queue.batch`, DESIGN §12 Batches) through the real service:
//! the exactly-once SQL jobs of a batch commit together, each effect once; a job that fails
//! in a batch rolls the batch back, and then it fails alone while the others complete; a
//! batch whose fence fails commits nothing. The kill storm with batches is in
//! `durable_crashes.rs`.

mod support;

use std::time::Duration;

use forkpool::queue::claim::{self, Holder};
use forkpool::queue::schema;
use support::{poll_until, Cluster, Service, ServiceOptions};

/// Exactly once: its effect and its completion commit together.
const MARK: &str = r#"
sql = "INSERT INTO marks (key) VALUES (:key)"
[params]
key = "text"
"#;

/// Fails for `d = 0` (division by zero), on its only attempt; completes otherwise.
const PICKY: &str = r#"
max_attempts = 1
sql = "SELECT 10 / :d AS q"
[params]
d = "int4"
"#;

/// Sleeps `s` seconds on the server.
const NAP: &str = r#"
timeout = "60s"
sql = "SELECT :s AS slept FROM pg_sleep(:s)"
[params]
s = "float8"
"#;

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn a_batchs_jobs_commit_together_each_effect_once_and_a_failing_job_fails_alone() {
    let cluster = Cluster::shared();
    let name = "batches";
    let mut db = cluster.create_database(name);
    db.batch_execute(
        "CREATE TABLE marks (key text NOT NULL); GRANT SELECT, INSERT ON marks TO app",
    )
    .unwrap();
    let mut options = ServiceOptions::on(cluster)
        .in_database(name)
        .durable()
        .queue_key("poll_interval", "\"100ms\"")
        .queue_key("batch", "8")
        .job("mark", MARK)
        .job("picky", PICKY);
    options.workers = 2;
    options.threads = 2;
    let service = Service::start(options);
    service.wait_for_status("durable jobs ready", |s| s["durable"]["ready"] == true);

    // 400 marks with a picky job every 50th: 8 of them fail (d = 0), 8 complete.
    db.batch_execute(
        "SELECT forkpool.enqueue('picky', jsonb_build_object('d', n / 50 % 2)) \
           FROM generate_series(0, 799, 50) n; \
         SELECT forkpool.enqueue('mark', jsonb_build_object('key', 'k' || n)) \
           FROM generate_series(1, 400) n",
    )
    .unwrap();
    let db = std::cell::RefCell::new(db);
    poll_until(
        "every job ended",
        Duration::from_secs(60),
        || {
            let left = count(
                &mut db.borrow_mut(),
                "SELECT count(*) FROM forkpool.jobs WHERE state IN ('available', 'running')",
            );
            (left == 0).then_some(())
        },
        || service.logs(),
    );
    let mut db = db.into_inner();
    assert_eq!(
        (
            count(&mut db, "SELECT count(*) FROM marks"),
            count(&mut db, "SELECT count(DISTINCT key) FROM marks"),
            count(
                &mut db,
                "SELECT count(*) FROM forkpool.jobs WHERE job = 'mark' AND state = 'completed'"
            ),
        ),
        (400, 400, 400),
        "(effect rows, distinct keys, marks completed)"
    );
    let picky = |db: &mut postgres::Client, state: &str| {
        count(
            db,
            &format!(
                "SELECT count(*) FROM forkpool.jobs WHERE job = 'picky' AND state = '{state}'"
            ),
        )
    };
    assert_eq!(picky(&mut db, "completed"), 8);
    assert_eq!(picky(&mut db, "discarded"), 8);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM forkpool.jobs WHERE job = 'picky' AND state = 'discarded' \
               AND attempt = 1 AND errors->0->>'sqlstate' = '22012'"
        ),
        8,
        "each failing job discarded after its one attempt, with its own error"
    );
    // Jobs whose rows share an `xmin` (their completion's transaction) committed together.
    let most_together = count(
        &mut db,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM forkpool.jobs \
                              WHERE state = 'completed' GROUP BY xmin::text) t",
    );
    assert!(
        (2..=8).contains(&most_together),
        "at most 8 and at least 2 jobs commit together, not {most_together}"
    );
}

#[test]
fn a_batch_whose_fence_fails_for_one_job_commits_none_of_them() {
    let cluster = Cluster::shared();
    let name = "batch_fence";
    cluster.create_database(name);
    let pool = cluster.app_pool(name, 2);
    let mut conn = pool.checkout("t").unwrap();
    schema::migrate_schema(&mut conn).unwrap();
    conn.batch_execute(
        "CREATE TABLE marks (key text); \
         INSERT INTO forkpool.jobs (job) VALUES ('noop'), ('noop'), ('noop')",
    )
    .unwrap();
    let holder = Holder {
        host: "host-a".into(),
        instance: 7,
        worker: 1,
    };
    let jobs = claim::claim(
        &mut conn,
        &["noop".to_string()],
        &[],
        3,
        &holder,
        Duration::from_secs(30),
        true,
    )
    .unwrap();
    assert_eq!(jobs.len(), 3);
    let completions: Vec<_> = jobs.iter().map(|j| (j.claim, "{}".to_string())).collect();
    // A cancel asked for the second job while the batch ran.
    conn.query_sql(
        "UPDATE forkpool.jobs SET cancel_requested = true WHERE id = $1",
        &[&jobs[1].claim.id],
    )
    .unwrap();
    conn.batch_execute("BEGIN; INSERT INTO marks VALUES ('batch')")
        .unwrap();
    assert!(!claim::complete_all_and_commit(&mut conn, &completions).unwrap());
    let left: i64 = conn
        .query_sql(
            "SELECT (SELECT count(*) FROM marks) + \
                    (SELECT count(*) FROM forkpool.jobs WHERE state <> 'running')",
            &[],
        )
        .unwrap()[0]
        .get(0);
    assert_eq!(left, 0, "the batch's effect or a completion was committed");

    // Without the cancel, the three complete together.
    conn.query_sql(
        "UPDATE forkpool.jobs SET cancel_requested = false WHERE id = $1",
        &[&jobs[1].claim.id],
    )
    .unwrap();
    conn.batch_execute("BEGIN; INSERT INTO marks VALUES ('batch')")
        .unwrap();
    assert!(claim::complete_all_and_commit(&mut conn, &completions).unwrap());
    let done: i64 = conn
        .query_sql(
            "SELECT count(*) FROM forkpool.jobs WHERE state = 'completed' AND result = '{}'",
            &[],
        )
        .unwrap()[0]
        .get(0);
    assert_eq!(done, 3);
}

#[test]
fn a_fast_stop_during_a_batch_puts_its_jobs_back_without_spending_their_attempts() {
    let cluster = Cluster::shared();
    let name = "batch_fast_stop";
    let mut db = cluster.create_database(name);
    let mut options = ServiceOptions::on(cluster)
        .in_database(name)
        .durable()
        .queue_key("poll_interval", "\"100ms\"")
        .queue_key("batch", "4")
        .job("nap", NAP);
    options.workers = 1;
    options.threads = 1;
    let mut service = Service::start(options);
    service.wait_for_status("durable jobs ready", |s| s["durable"]["ready"] == true);
    // Naps of 3 s. After a wake-up the first frame holds one claim; as claims find jobs the
    // frames grow, so the executor's second frame is a batch, asleep in one transaction.
    db.batch_execute("SELECT forkpool.enqueue('nap', '{\"s\": 3}') FROM generate_series(1, 8)")
        .unwrap();
    let db = std::cell::RefCell::new(db);
    let completed_before = poll_until(
        "a batch asleep on the server",
        Duration::from_secs(30),
        || {
            let mut db = db.borrow_mut();
            let asleep = count(
                &mut db,
                "SELECT count(*) FROM pg_stat_activity \
                  WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
            );
            let running = count(
                &mut db,
                "SELECT count(*) FROM forkpool.jobs WHERE state = 'running'",
            );
            let completed = count(
                &mut db,
                "SELECT count(*) FROM forkpool.jobs WHERE state = 'completed'",
            );
            (asleep == 1 && running >= 2).then_some(completed)
        },
        || service.logs(),
    );
    service.signal(nix::sys::signal::Signal::SIGINT);
    let exit = service.wait_exit();
    assert!(exit.success(), "{exit:?}; logs:\n{}", service.logs());
    let mut db = db.into_inner();
    // The batch's query cancelled and the worker gone at once (a fast stop), the keeper put
    // the batch's jobs back at the stop: nothing completed after the signal, and every other
    // job waits with its attempt given back.
    let jobs: Vec<(String, i32, String)> = db
        .query(
            "SELECT state, attempt, errors::text FROM forkpool.jobs ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let completed = jobs.iter().filter(|j| j.0 == "completed").count() as i64;
    let put_back = jobs
        .iter()
        .filter(|j| j.0 == "available" && j.1 == 0 && j.2 == "[]")
        .count() as i64;
    assert_eq!(
        (completed, put_back),
        (completed_before, 8 - completed_before),
        "(completed, put back) — jobs: {jobs:?}; logs:\n{}",
        service.logs()
    );
}
