//! The durable-jobs statements against a real server: the migration, transactional enqueue,
//! the claim's order and `SKIP LOCKED`, the fence that makes completion exactly-once,
//! retries and discards, cancel, rescue and the NOTIFY that wakes other hosts.
//!
//! Each test works in a database of its own on the shared cluster, so tables never mix.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forkpool::pool::{ConnInfo, Pool, PoolSettings, PooledConnection};
use forkpool::queue::claim::{self, Failure, Holder, Settled};
use forkpool::queue::enqueue::{self, Enqueued, NewJob};
use forkpool::queue::keeping::{self, Cancelled, JobDefaults, Rescue};
use forkpool::queue::leases;
use forkpool::queue::schema::{self, SchemaError, SCHEMA_VERSION};
use postgres::fallible_iterator::FallibleIterator;
use support::{wait_until_within, Cluster, APP_DATABASE};

const LEASE: Duration = Duration::from_secs(30);

/// A fresh database owned by the app role, and a TLS pool on it.
fn fresh_database() -> (String, Pool) {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let cluster = Cluster::shared();
    let name = format!("queue_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    cluster.execute(&format!("CREATE DATABASE {name} OWNER app"));
    let url = cluster
        .tcp_url("require")
        .replace(&format!("dbname={APP_DATABASE}"), &format!("dbname={name}"));
    let pool = Pool::new(
        &name,
        ConnInfo::parse(&url).unwrap(),
        PoolSettings::new().pool_size(4),
    )
    .unwrap();
    (name, pool)
}

fn migrated() -> (String, Pool) {
    let (name, pool) = fresh_database();
    schema::migrate_schema(&mut pool.checkout("migrate").unwrap()).unwrap();
    (name, pool)
}

fn holder(worker: i64) -> Holder {
    Holder {
        host: "host-a".into(),
        instance: 7,
        worker,
    }
}

fn new_job(job: &str, args: serde_json::Value) -> NewJob {
    NewJob {
        job: job.into(),
        args,
        queue: None,
        priority: None,
        run_at: None,
        delay_ms: None,
        max_attempts: None,
        unique_key: None,
    }
}

/// Job `mail`'s file says: queue `emails`, priority 5, 3 attempts.
fn publish_mail_defaults(conn: &mut PooledConnection) {
    let mail = JobDefaults {
        job: "mail".into(),
        queue: "emails".into(),
        priority: 5,
        max_attempts: 3,
    };
    keeping::publish_defaults(conn, &[mail]).unwrap();
}

/// Enqueues `jobs` in one batch; every job must be answered.
fn enqueue_all(conn: &mut PooledConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>, String> {
    let answers = enqueue::enqueue_batch(conn, jobs).map_err(|e| e.to_string())?;
    answers
        .into_iter()
        .map(|answer| answer.map_err(|e| e.to_string()))
        .collect()
}

fn names(jobs: &[&str]) -> Vec<String> {
    jobs.iter().map(|j| j.to_string()).collect()
}

fn value(conn: &mut PooledConnection, sql: &str) -> String {
    conn.query_sql(&format!("SELECT ({sql})::text"), &[])
        .unwrap()[0]
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

#[test]
fn migrate_creates_the_schema_once_and_refuses_a_newer_one_naming_both_versions() {
    let (_, pool) = fresh_database();
    let mut conn = pool.checkout("t").unwrap();
    match schema::ensure(&mut conn, false) {
        Err(SchemaError::NeedsMigration { found: 0 }) => {}
        other => panic!("a missing schema with migrate = manual: {other:?}"),
    }
    assert_eq!(schema::ensure(&mut conn, true).unwrap(), 0);
    assert_eq!(schema::migrate_schema(&mut conn).unwrap(), SCHEMA_VERSION);
    assert_eq!(schema::current_version(&mut conn).unwrap(), SCHEMA_VERSION);
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM forkpool.schema_version"),
        SCHEMA_VERSION.to_string()
    );

    conn.batch_execute("INSERT INTO forkpool.schema_version (version) VALUES (99)")
        .unwrap();
    let error = schema::ensure(&mut conn, true).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("version 99") && message.contains(&format!("version {SCHEMA_VERSION}")),
        "{message}"
    );
}

/// Up to `limit` jobs named `noop`, claimed by worker 1.
fn claim_noop(conn: &mut PooledConnection, limit: i64) -> Vec<claim::ClaimedJob> {
    claim::claim(conn, &names(&["noop"]), &[], limit, &holder(1), LEASE, true).unwrap()
}

#[test]
fn a_schema_at_version_1_is_upgraded_and_its_waiting_jobs_are_claimed_and_completed() {
    let (_, pool) = fresh_database();
    let mut conn = pool.checkout("t").unwrap();
    // Version 1 as a forkpool of that version left it, with a job waiting.
    conn.batch_execute(&format!(
        "CREATE SCHEMA forkpool; \
         CREATE TABLE forkpool.schema_version ( \
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
         {} \
         INSERT INTO forkpool.schema_version (version) VALUES (1); \
         INSERT INTO forkpool.jobs (job) VALUES ('noop')",
        include_str!("../src/queue/schema.sql")
    ))
    .unwrap();
    assert_eq!(
        schema::ensure(&mut conn, true).unwrap(),
        1,
        "found version 1"
    );
    assert_eq!(schema::current_version(&mut conn).unwrap(), SCHEMA_VERSION);
    let claimed = claim_noop(&mut conn, 1);
    assert_eq!(
        claimed.len(),
        1,
        "the job stored under version 1 is claimed"
    );
    assert!(claim::complete(&mut conn, claimed[0].claim, "{}", false).unwrap());
    assert_eq!(
        value(&mut conn, "SELECT state FROM forkpool.jobs"),
        "completed"
    );
}

#[test]
fn two_hosts_migrating_at_once_apply_each_version_once() {
    let (_, pool) = fresh_database();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| schema::migrate_schema(&mut pool.checkout("m").unwrap())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut found: Vec<i32> = results.into_iter().map(|r| r.unwrap()).collect();
    found.sort();
    assert_eq!(
        found,
        vec![0, SCHEMA_VERSION],
        "one created it, the other found it done"
    );
    let mut conn = pool.checkout("t").unwrap();
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM forkpool.schema_version"),
        SCHEMA_VERSION.to_string()
    );
}

#[test]
fn an_sql_enqueue_exists_only_if_its_transaction_commits_and_takes_the_job_files_defaults() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    publish_mail_defaults(&mut conn);
    conn.batch_execute("BEGIN; SELECT forkpool.enqueue('mail', '{\"to\": 1}'); ROLLBACK")
        .unwrap();
    assert_eq!(value(&mut conn, "SELECT count(*) FROM forkpool.jobs"), "0");
    conn.batch_execute("BEGIN; SELECT forkpool.enqueue('mail', '{\"to\": 2}'); COMMIT")
        .unwrap();
    assert_eq!(
        value(
            &mut conn,
            "SELECT format('%s %s %s %s %s', job, queue, priority, max_attempts, state) \
               FROM forkpool.jobs"
        ),
        "mail emails 5 3 available"
    );
    // Explicit arguments win over the defaults.
    conn.batch_execute("SELECT forkpool.enqueue('mail', '{}', queue => 'urgent', priority => -1)")
        .unwrap();
    assert_eq!(
        value(
            &mut conn,
            "SELECT string_agg(queue || priority, ',' ORDER BY id) FROM forkpool.jobs"
        ),
        "emails5,urgent-1"
    );
}

#[test]
fn one_enqueue_transaction_sends_one_notify_per_queue_not_one_per_row() {
    let (name, pool) = migrated();
    let mut listener = Cluster::shared().superuser_in(&name);
    listener.batch_execute("LISTEN forkpool_jobs").unwrap();
    let mut conn = pool.checkout("t").unwrap();
    conn.batch_execute(
        "BEGIN; \
         SELECT forkpool.enqueue('a'); SELECT forkpool.enqueue('a'); SELECT forkpool.enqueue('a'); \
         SELECT forkpool.enqueue('b', queue => 'other'); \
         COMMIT",
    )
    .unwrap();
    enqueue_all(&mut conn, &vec![new_job("a", serde_json::json!({})); 3]).unwrap();
    let mut payloads = Vec::new();
    let mut notifications = listener.notifications();
    let mut waiting = notifications.timeout_iter(Duration::from_millis(500));
    while let Some(n) = waiting.next().unwrap() {
        payloads.push(n.payload().to_string());
    }
    payloads.sort();
    assert_eq!(payloads, vec!["default", "default", "other"]);
}

/// Schema version 4: a claim and a completion change `state`, so each writes a new row
/// version; the queue index takes entries only for waiting ones. Counted on the index's one
/// leaf page (pageinspect), with autovacuum off so that nothing is removed meanwhile.
#[test]
fn a_job_claimed_and_completed_adds_no_entry_to_the_queue_index() {
    let (name, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    let mut superuser = Cluster::shared().superuser_in(&name);
    superuser
        .batch_execute(
            "CREATE EXTENSION pageinspect; \
             ALTER TABLE forkpool.jobs SET (autovacuum_enabled = false)",
        )
        .unwrap();
    let jobs: Vec<NewJob> = (0..20)
        .map(|_| new_job("noop", serde_json::json!({})))
        .collect();
    enqueue_all(&mut conn, &jobs).unwrap();
    let claimed = claim_noop(&mut conn, 20);
    assert_eq!(claimed.len(), 20);
    for job in &claimed {
        assert!(claim::complete(&mut conn, job.claim, "{}", false).unwrap());
    }
    assert_eq!(
        value(
            &mut conn,
            "SELECT count(*) FROM forkpool.jobs WHERE state = 'completed'"
        ),
        "20"
    );
    let entries: i64 = superuser
        .query_one(
            "SELECT count(*) FROM bt_page_items('forkpool.jobs_waiting_queue', 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        entries, 20,
        "one entry per job stored; none for its claim or its completion"
    );
}

#[test]
fn claims_take_priority_then_run_at_then_id_and_only_jobs_this_catalog_knows() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    conn.batch_execute(
        "SELECT forkpool.enqueue('known', '{\"n\": 1}', priority => 2); \
         SELECT forkpool.enqueue('known', '{\"n\": 2}', priority => 1, run_at => now() - interval '1 s'); \
         SELECT forkpool.enqueue('known', '{\"n\": 3}', priority => 1, run_at => now() - interval '2 s'); \
         SELECT forkpool.enqueue('known', '{\"n\": 4}', priority => 1, run_at => now() - interval '2 s'); \
         SELECT forkpool.enqueue('unknown', '{\"n\": 5}', priority => 0); \
         SELECT forkpool.enqueue('known', '{\"n\": 6}', run_at => now() + interval '1 hour');",
    )
    .unwrap();
    let mut order = Vec::new();
    while let Some(job) = claim::claim(
        &mut conn,
        &names(&["known"]),
        &[],
        1,
        &holder(1),
        LEASE,
        true,
    )
    .unwrap()
    .pop()
    {
        assert_eq!((job.attempt, job.claim.claim_count), (1, 1));
        let args: serde_json::Value = serde_json::from_str(&job.args).unwrap();
        order.push(args["n"].as_i64().unwrap());
    }
    assert_eq!(
        order,
        vec![3, 4, 2, 1],
        "scheduled (6) and unknown (5) jobs are not taken"
    );
}

#[test]
fn the_claim_walks_the_claim_index_on_a_fresh_table_and_on_one_queue_analyzed() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    // A backlog in one queue, on a table autovacuum has not analyzed yet.
    conn.batch_execute(
        "INSERT INTO forkpool.jobs (job, queue) \
         SELECT 'noop', 'bench' FROM generate_series(1, 20000)",
    )
    .unwrap();
    // Entries read from the claim index, and sequential scans of the table.
    let reads = |conn: &mut PooledConnection| -> (i64, i64) {
        let row = conn
            .query_sql(
                "SELECT pg_stat_get_xact_tuples_returned('forkpool.jobs_claim_order'::regclass), \
                        pg_stat_get_xact_numscans('forkpool.jobs'::regclass)",
                &[],
            )
            .unwrap();
        (row[0].get(0), row[0].get(1))
    };
    // The plan is kept inside `forkpool.claim_jobs`, out of EXPLAIN's reach: what it read
    // tells instead (counters this session has not reported yet, so read before and after).
    // Walking the claim index reads a handful of its entries; a plan that sorts the backlog
    // reads all 20,000 (by a bitmap scan of that index, or a table scan).
    // The function keeps one generic plan (it forces it), made on the fresh table; the
    // table analyzed invalidates it, and the plan made then must walk the index too.
    for when in ["fresh", "analyzed"] {
        if when == "analyzed" {
            conn.batch_execute("ANALYZE forkpool.jobs").unwrap();
        }
        conn.batch_execute("BEGIN").unwrap();
        let before = reads(&mut conn);
        let claimed = claim_noop(&mut conn, 4);
        let after = reads(&mut conn);
        conn.batch_execute("ROLLBACK").unwrap();
        let (index_entries, table_scans) = (after.0 - before.0, after.1 - before.1);
        assert_eq!(claimed.len(), 4, "{when}");
        assert!(
            index_entries < 100 && table_scans == 0,
            "{when}: the claim must walk the claim index, not sort the \
             backlog: it read {index_entries} entries of the claim index and scanned the \
             table {table_scans} times"
        );
    }
}

#[test]
fn concurrent_claimers_never_take_the_same_job() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    enqueue_all(&mut conn, &vec![new_job("c", serde_json::json!({})); 200]).unwrap();
    drop(conn);
    let taken: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=4)
            .map(|worker| {
                let pool = &pool;
                scope.spawn(move || {
                    let mut conn = pool.checkout("claimer").unwrap();
                    let mut ids = Vec::new();
                    loop {
                        let jobs = claim::claim(
                            &mut conn,
                            &names(&["c"]),
                            &[],
                            3,
                            &holder(worker),
                            LEASE,
                            true,
                        )
                        .unwrap();
                        if jobs.is_empty() {
                            return ids;
                        }
                        ids.extend(jobs.iter().map(|j| j.claim.id));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<i64> = taken.concat();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!((count, all.len()), (200, 200), "every job claimed once");
}

#[test]
fn a_completion_whose_claim_was_rescued_changes_nothing_and_its_transaction_rolls_back() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    conn.batch_execute("CREATE TABLE effects (job_id bigint)")
        .unwrap();
    enqueue_all(&mut conn, &[new_job("e", serde_json::json!({}))]).unwrap();
    let first = claim::claim(&mut conn, &names(&["e"]), &[], 1, &holder(1), LEASE, true).unwrap();
    let first = first[0].claim;

    // The worker is thought dead: rescued, then claimed again by another worker.
    let mut other = pool.checkout("other").unwrap();
    let rescued = keeping::rescue(
        &mut other,
        Rescue::Worker {
            host: "host-a",
            instance: 7,
            worker: 1,
        },
        "worker 1 killed by SIGKILL",
    )
    .unwrap();
    assert_eq!(rescued, 1);
    let second = claim::claim(&mut other, &names(&["e"]), &[], 1, &holder(2), LEASE, true).unwrap();
    assert_eq!((second[0].attempt, second[0].claim.claim_count), (2, 2));

    // The first holder's exactly-once transaction: its effect, then the fenced completion
    // with the COMMIT behind it — which finds the fence failed and rolls everything back.
    conn.batch_execute("BEGIN").unwrap();
    conn.query_sql("INSERT INTO effects VALUES ($1)", &[&first.id])
        .unwrap();
    assert!(!claim::complete_and_commit(&mut conn, first, "{}").unwrap());
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM effects"),
        "0",
        "rolled back, and the session is out of its transaction"
    );

    // The second holder completes, with its effect: once by the pipelined completion, and a
    // completion inside a transaction of its own (a Rust handler's) then finds it done.
    other.batch_execute("BEGIN").unwrap();
    other
        .query_sql("INSERT INTO effects VALUES ($1)", &[&second[0].claim.id])
        .unwrap();
    assert!(claim::complete_and_commit(&mut other, second[0].claim, "{\"rows\": []}").unwrap());
    other.batch_execute("BEGIN").unwrap();
    assert!(!claim::complete(&mut other, second[0].claim, "{}", true).unwrap());
    other.batch_execute("ROLLBACK").unwrap();
    assert_eq!(value(&mut conn, "SELECT count(*) FROM effects"), "1");
    assert_eq!(
        value(
            &mut conn,
            "SELECT state || ' ' || (errors->0->>'kind') FROM forkpool.jobs"
        ),
        "completed worker_lost"
    );
}

#[test]
fn failures_retry_with_backoff_then_discard_with_every_error_recorded() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    let mut job = new_job("f", serde_json::json!({}));
    job.max_attempts = Some(2);
    enqueue_all(&mut conn, &[job]).unwrap();
    let failure = Failure {
        kind: "db_error",
        message: "division by zero",
        sqlstate: Some("22012"),
    };
    let first = claim::claim(&mut conn, &names(&["f"]), &[], 1, &holder(1), LEASE, true).unwrap();
    let settled = claim::fail(
        &mut conn,
        first[0].claim,
        failure,
        Some(Duration::from_secs(60)),
    );
    assert_eq!(settled.unwrap(), Settled::Retry);
    assert_eq!(
        value(
            &mut conn,
            "SELECT round(extract(epoch FROM run_at - now())) FROM forkpool.jobs"
        ),
        "60"
    );
    conn.batch_execute("UPDATE forkpool.jobs SET run_at = now()")
        .unwrap();
    let second = claim::claim(&mut conn, &names(&["f"]), &[], 1, &holder(1), LEASE, true).unwrap();
    let settled = claim::fail(
        &mut conn,
        second[0].claim,
        failure,
        Some(Duration::from_secs(1)),
    );
    assert_eq!(settled.unwrap(), Settled::Discarded, "two attempts of two");
    assert_eq!(
        value(
            &mut conn,
            "SELECT state || ' ' || (finished_at IS NOT NULL) || ' ' || \
                    (SELECT string_agg((e->>'attempt') || (e->>'kind') || (e->>'sqlstate'), ',') \
                       FROM jsonb_array_elements(errors) e) FROM forkpool.jobs"
        ),
        "discarded true 1db_error22012,2db_error22012"
    );
    // A settled claim is no longer ours: settling it twice changes nothing.
    assert_eq!(
        claim::fail(&mut conn, second[0].claim, failure, None).unwrap(),
        Settled::Lost
    );
}

/// An enqueue alone in its batch goes through `forkpool.insert_job`, whose plans PL/pgSQL
/// keeps, not through the batch statement, which is planned for its values at every call.
#[test]
fn an_enqueue_alone_goes_through_insert_job_and_a_batch_through_one_statement() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    conn.batch_execute(
        "CREATE TABLE public.inserts (query text); \
         CREATE FUNCTION public.note_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO public.inserts VALUES (current_query()); RETURN NULL; END $$; \
         CREATE TRIGGER note_insert AFTER INSERT ON forkpool.jobs \
           FOR EACH STATEMENT EXECUTE FUNCTION public.note_insert()",
    )
    .unwrap();
    enqueue_all(&mut conn, &[new_job("a", serde_json::json!({}))]).unwrap();
    enqueue_all(&mut conn, &vec![new_job("b", serde_json::json!({})); 3]).unwrap();
    let queries: Vec<String> = conn
        .query_sql("SELECT query FROM public.inserts", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(
        queries[0].contains("forkpool.insert_job"),
        "alone: {}",
        queries[0]
    );
    assert!(
        queries[1].starts_with("WITH items"),
        "a batch: {}",
        queries[1]
    );
}

#[test]
fn a_unique_key_returns_the_waiting_job_and_is_free_again_once_it_finished() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    let mut job = new_job("u", serde_json::json!({}));
    job.unique_key = Some("nightly".into());
    let first = enqueue_all(&mut conn, &[job.clone(), job.clone()]).unwrap();
    assert!(!first[0].duplicate && first[1].duplicate);
    assert_eq!(first[0].job_id, first[1].job_id);
    let sql_id = value(
        &mut conn,
        "SELECT forkpool.enqueue('u', unique_key => 'nightly')",
    );
    assert_eq!(sql_id, first[0].job_id.to_string());

    let claimed = claim::claim(&mut conn, &names(&["u"]), &[], 1, &holder(1), LEASE, true).unwrap();
    assert!(claim::complete(&mut conn, claimed[0].claim, "{}", true).unwrap());
    let again = enqueue_all(&mut conn, &[job]).unwrap();
    assert!(!again[0].duplicate && again[0].job_id != first[0].job_id);
}

#[test]
fn a_batch_enqueue_answers_each_job_stored_or_duplicate_and_takes_the_job_files_defaults() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    publish_mail_defaults(&mut conn);
    // Before the batch: `running` holds its key; `done` held one and finished, freeing it.
    let keyed = |key: &str| {
        let mut job = new_job("mail", serde_json::json!({ "key": key }));
        job.unique_key = Some(key.into());
        job
    };
    let before = enqueue_all(&mut conn, &[keyed("running"), keyed("done")]).unwrap();
    let running = claim::claim(
        &mut conn,
        &names(&["mail"]),
        &[],
        1,
        &holder(1),
        LEASE,
        true,
    )
    .unwrap()
    .remove(0);
    assert_eq!(running.claim.id, before[0].job_id);
    conn.batch_execute(&format!(
        "UPDATE forkpool.jobs SET state = 'completed' WHERE id = {}",
        before[1].job_id
    ))
    .unwrap();

    let mut explicit = new_job("mail", serde_json::json!({ "n": 6 }));
    explicit.queue = Some("urgent".into());
    explicit.priority = Some(-1);
    explicit.max_attempts = Some(9);
    explicit.delay_ms = Some(3_600_000);
    let batch = [
        keyed("k1"),
        new_job("mail", serde_json::json!({ "n": 2 })),
        keyed("running"),
        keyed("k1"),
        keyed("done"),
        explicit,
    ];
    let answers = enqueue_all(&mut conn, &batch).unwrap();
    let stored: Vec<(bool, &str)> = answers
        .iter()
        .map(|a| (a.duplicate, a.state.as_str()))
        .collect();
    assert_eq!(
        stored,
        vec![
            (false, "available"),
            (false, "available"),
            (true, "running"),
            (true, "available"),
            (false, "available"),
            (false, "available"),
        ]
    );
    assert_eq!(answers[2].job_id, before[0].job_id, "the running job's id");
    assert_eq!(answers[3].job_id, answers[0].job_id, "the batch's own k1");
    assert_ne!(
        answers[4].job_id, before[1].job_id,
        "a finished job frees its key"
    );
    let new_ids: Vec<i64> = [0, 1, 4, 5].iter().map(|&i| answers[i].job_id).collect();
    assert!(
        new_ids.windows(2).all(|w| w[0] < w[1]),
        "ids in the batch's order: {new_ids:?}"
    );
    assert_eq!(
        value(
            &mut conn,
            &format!(
                "SELECT string_agg(format('%s/%s/%s/%s/%s', queue, priority, max_attempts, \
                        args->>'key', run_at > now() + interval '59 minutes'), ',' ORDER BY id) \
                   FROM forkpool.jobs WHERE id = ANY('{{{}}}')",
                new_ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        ),
        "emails/5/3/k1/f,emails/5/3//f,emails/5/3/done/f,urgent/-1/9//t"
    );
    assert_eq!(
        value(&mut conn, "SELECT count(*) FROM forkpool.jobs"),
        "6",
        "two before, four stored by the batch"
    );
}

#[test]
fn a_batch_enqueue_racing_another_sessions_job_with_its_unique_key_answers_that_job() {
    let (name, pool) = migrated();
    // Another session stores a job with key `race` and has not committed yet.
    let mut other = Cluster::shared().superuser_in(&name);
    other
        .batch_execute("BEGIN; SELECT forkpool.enqueue('r', unique_key => 'race')")
        .unwrap();
    let other_id: i64 = other
        .query_one(
            "SELECT id FROM forkpool.jobs WHERE unique_key = 'race'",
            &[],
        )
        .unwrap()
        .get(0);
    std::thread::scope(|scope| {
        let batch = scope.spawn(|| {
            let mut conn = pool.checkout("batch").unwrap();
            let mut job = new_job("r", serde_json::json!({}));
            job.unique_key = Some("race".into());
            enqueue_all(&mut conn, &[new_job("r", serde_json::json!({})), job]).unwrap()
        });
        // The batch's insert waits on the other session's uncommitted key; it began (and
        // took its snapshot) before that session commits, so it cannot see the job it
        // conflicts with.
        let mut watcher = pool.checkout("watcher").unwrap();
        wait_until_within(
            "the batch waits on the lock",
            Duration::from_secs(10),
            || {
                value(
                    &mut watcher,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE 'WITH items%'",
                ) == "1"
            },
        );
        other.batch_execute("COMMIT").unwrap();
        let answers = batch.join().unwrap();
        assert!(!answers[0].duplicate);
        assert!(answers[1].duplicate, "{answers:?}");
        assert_eq!(answers[1].job_id, other_id);
    });
}

#[test]
fn cancel_ends_a_waiting_job_at_once_and_cancels_a_running_query() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    let ids = enqueue_all(
        &mut conn,
        &[
            new_job("w", serde_json::json!({})),
            new_job("r", serde_json::json!({})),
        ],
    )
    .unwrap();
    assert_eq!(
        keeping::cancel(&mut conn, ids[0].job_id).unwrap(),
        Cancelled::Now
    );
    assert_eq!(
        keeping::cancel(&mut conn, ids[0].job_id).unwrap(),
        Cancelled::AlreadyFinished("cancelled".into())
    );
    assert_eq!(
        keeping::cancel(&mut conn, 999_999).unwrap(),
        Cancelled::NotFound
    );

    // A worker runs job `r` (a long query on its claiming connection) while another
    // connection cancels it.
    let mut runner = pool.checkout("runner").unwrap();
    let claimed =
        claim::claim(&mut runner, &names(&["r"]), &[], 1, &holder(1), LEASE, true).unwrap();
    let claim = claimed[0].claim;
    let outcome = std::thread::scope(|scope| {
        let running = scope.spawn(move || {
            runner.batch_execute("BEGIN").unwrap();
            let slept = runner.query_sql("SELECT pg_sleep(20)", &[]);
            let error = slept.expect_err("the cancel interrupts the job's query");
            runner.batch_execute("ROLLBACK").unwrap();
            let failure = Failure {
                kind: "db_error",
                message: &error.to_string(),
                sqlstate: Some("57014"),
            };
            claim::fail(&mut runner, claim, failure, Some(Duration::from_secs(1))).unwrap()
        });
        // Wait until the backend is in pg_sleep, then cancel.
        wait_until_within("the job's query runs", Duration::from_secs(10), || {
            value(
                &mut conn,
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' \
                   AND state = 'active'",
            ) == "1"
        });
        assert_eq!(
            keeping::cancel(&mut conn, claim.id).unwrap(),
            Cancelled::Requested
        );
        running.join().unwrap()
    });
    assert_eq!(outcome, Settled::Cancelled);
    assert_eq!(
        value(
            &mut conn,
            &format!("SELECT state FROM forkpool.jobs WHERE id = {}", claim.id)
        ),
        "cancelled"
    );
}

#[test]
fn rescue_takes_back_only_the_dead_workers_jobs_and_release_gives_the_attempt_back() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    enqueue_all(&mut conn, &vec![new_job("x", serde_json::json!({})); 3]).unwrap();
    let a = claim::claim(&mut conn, &names(&["x"]), &[], 1, &holder(1), LEASE, true).unwrap();
    let b = claim::claim(&mut conn, &names(&["x"]), &[], 1, &holder(2), LEASE, true).unwrap();
    let earlier = Holder {
        instance: 6,
        ..holder(1)
    };
    let c = claim::claim(&mut conn, &names(&["x"]), &[], 1, &earlier, LEASE, true).unwrap();
    let dead_worker = Rescue::Worker {
        host: "host-a",
        instance: 7,
        worker: 1,
    };
    let run_at = |conn: &mut PooledConnection, id: i64| {
        value(
            conn,
            &format!("SELECT run_at FROM forkpool.jobs WHERE id = {id}"),
        )
    };
    let before = run_at(&mut conn, a[0].claim.id);
    assert_eq!(keeping::rescue(&mut conn, dead_worker, "gone").unwrap(), 1);
    assert_eq!(
        run_at(&mut conn, a[0].claim.id),
        before,
        "a job taken back keeps its place in line"
    );
    let state = |conn: &mut PooledConnection, id: i64| {
        value(
            conn,
            &format!("SELECT state || attempt FROM forkpool.jobs WHERE id = {id}"),
        )
    };
    assert_eq!(state(&mut conn, a[0].claim.id), "available1");
    assert_eq!(state(&mut conn, b[0].claim.id), "running1");
    let earlier_instances = Rescue::EarlierInstances {
        host: "host-a",
        instance: 7,
    };
    assert_eq!(
        keeping::rescue(&mut conn, earlier_instances, "restart").unwrap(),
        1
    );
    assert_eq!(state(&mut conn, c[0].claim.id), "available1");

    assert!(claim::release(&mut conn, b[0].claim).unwrap());
    assert_eq!(state(&mut conn, b[0].claim.id), "available0");
    // The fence still holds after a release: the old claim cannot complete.
    assert!(!claim::complete(&mut conn, b[0].claim, "{}", false).unwrap());
    let again = claim::claim(&mut conn, &names(&["x"]), &[], 3, &holder(3), LEASE, true).unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(
        keeping::release_instance(&mut conn, "host-a", 7).unwrap(),
        3
    );
}

#[test]
fn queue_counts_split_available_from_scheduled_by_queue() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    conn.batch_execute(
        "SELECT forkpool.enqueue('q', run_at => now() - interval '5 s'); \
         SELECT forkpool.enqueue('q', run_at => now() + interval '1 hour'); \
         SELECT forkpool.enqueue('q', queue => 'b');",
    )
    .unwrap();
    let counts = keeping::queue_counts(&mut conn).unwrap();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts[1].queue, "default");
    assert_eq!((counts[1].available, counts[1].scheduled), (1, 1));
    assert!(counts[1].oldest_available_seconds >= 5.0);
    assert_eq!((counts[0].queue.as_str(), counts[0].available), ("b", 1));
}

#[test]
fn a_listening_connection_is_woken_by_an_enqueue_committed_elsewhere_and_times_out_otherwise() {
    let (_, pool) = migrated();
    let mut listener = pool.checkout("listener").unwrap();
    listener.batch_execute("LISTEN forkpool_jobs").unwrap();
    let quiet = std::time::Instant::now();
    assert!(listener
        .wait_for_notifications(Duration::from_millis(200))
        .unwrap()
        .is_empty());
    assert!(quiet.elapsed() >= Duration::from_millis(200));

    let mut other = pool.checkout("other").unwrap();
    other
        .batch_execute("SELECT forkpool.enqueue('n', queue => 'mail')")
        .unwrap();
    let woken = listener
        .wait_for_notifications(Duration::from_secs(10))
        .unwrap();
    assert_eq!(woken.len(), 1);
    assert_eq!(
        (woken[0].channel.as_str(), woken[0].payload.as_str()),
        ("forkpool_jobs", "mail")
    );

    // A session that closes is an error for its listener, not a silent timeout.
    let pid = listener.backend_pid();
    other
        .query_sql("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let ended = listener.wait_for_notifications(Duration::from_secs(10));
    assert!(ended.is_err(), "{ended:?}");
}

#[test]
fn lapsed_leases_are_taken_back_by_any_host_except_a_row_still_locked_by_its_holder() {
    let (_, pool) = migrated();
    let mut conn = pool.checkout("t").unwrap();
    enqueue_all(&mut conn, &vec![new_job("l", serde_json::json!({})); 3]).unwrap();
    let claimed = claim::claim(&mut conn, &names(&["l"]), &[], 3, &holder(1), LEASE, true).unwrap();
    // Leases renewed for the first job only; the others lapse.
    conn.batch_execute("UPDATE forkpool.jobs SET lease_until = now() - interval '1 s'")
        .unwrap();
    let renewed = leases::renew(&mut conn, "host-a", 7, &[claimed[0].claim.id], LEASE).unwrap();
    assert_eq!(renewed, 1);
    // The frozen holder of the third is inside its completion: its row is locked.
    let mut frozen = pool.checkout("frozen").unwrap();
    frozen.batch_execute("BEGIN").unwrap();
    frozen
        .query_sql(
            "SELECT 1 FROM forkpool.jobs WHERE id = $1 FOR UPDATE",
            &[&claimed[2].claim.id],
        )
        .unwrap();
    let mut other_host = pool.checkout("other host").unwrap();
    assert_eq!(
        leases::rescue_lapsed(&mut other_host).unwrap(),
        1,
        "the unlocked lapsed one"
    );
    frozen.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        leases::rescue_lapsed(&mut other_host).unwrap(),
        1,
        "then the other"
    );
    let errors = value(
        &mut conn,
        "SELECT string_agg(state || ':' || coalesce(errors->0->>'kind', '-'), ',' ORDER BY id) \
           FROM forkpool.jobs",
    );
    assert_eq!(errors, "running:-,available:host_lost,available:host_lost");
}
