//! Durable jobs through the real service (DESIGN §12): enqueue over the socket and from SQL,
//! `result` waits, scheduling, unique keys, cancel, retries that end completed or discarded,
//! bad arguments from SQL, durable jobs off, and the master still one thread with no database
//! socket. The crash proofs (kill storms, a killed master) are in `durable_crashes.rs`.
//!
//! One service is shared by the tests that only enqueue and read; each test names its own
//! jobs' arguments or unique keys, so tests never read each other's rows.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{wait_until, Cluster, Service, ServiceOptions, EVENT_TIMEOUT};

/// A job that fails until its sequence passes 2: attempts 1 and 2 fail, the third succeeds
/// (`nextval` survives the rollback of the failed attempts). The zero comes out of the CASE,
/// not a literal `1 / 0`, which the planner would fold (and raise) on every attempt.
const FLAKY: &str = r#"
retry_backoff = "10ms"
sql = "SELECT 1 / (CASE WHEN nextval('flaky_seq') <= 2 THEN 0 ELSE 1 END) AS ok"
"#;

/// A job that always fails, three attempts at most.
const DOOMED: &str = r#"
max_attempts = 3
retry_backoff = "10ms"
sql = "SELECT 1 / 0"
"#;

/// A job whose effect is a row: exactly once, since it runs on the queue's database.
const EFFECT: &str = r#"
sql = "INSERT INTO effects (job_key) VALUES (:key)"
[params]
key = "text"
"#;

fn shared() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    Service::shared(&SERVICE, || {
        let cluster = Cluster::shared();
        cluster.execute(
            "CREATE TABLE IF NOT EXISTS effects (job_key text); \
             GRANT ALL ON effects TO app; \
             CREATE SEQUENCE IF NOT EXISTS flaky_seq; \
             GRANT ALL ON SEQUENCE flaky_seq TO app;",
        );
        Service::start(
            ServiceOptions::on(cluster)
                .durable()
                .queue_key("poll_interval", "\"100ms\"")
                .job("flaky", FLAKY)
                .job("doomed", DOOMED)
                .job("effect", EFFECT),
        )
    })
}

/// One request on a fresh connection; the whole answer.
fn ask(service: &Service, request: Value) -> Value {
    service.client().request(request)
}

fn enqueue(service: &Service, request: Value) -> i64 {
    let mut request = request;
    request["op"] = json!("enqueue");
    let answer = ask(service, request);
    assert_eq!(answer["ok"], true, "enqueue refused: {answer}");
    answer["result"]["job_id"].as_i64().expect("a job id")
}

/// The job once final, waiting at most the tests' event timeout.
fn final_state(service: &Service, job_id: i64) -> Value {
    let wait_ms = EVENT_TIMEOUT.as_millis() as u64;
    let answer = ask(
        service,
        json!({"id": "r", "op": "result", "job_id": job_id, "wait_ms": wait_ms}),
    );
    assert_eq!(answer["ok"], true, "result refused: {answer}");
    answer["result"].clone()
}

fn effects_of(key: &str) -> i64 {
    Cluster::shared()
        .query_value(&format!(
            "SELECT count(*) FROM effects WHERE job_key = '{key}'"
        ))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_job_enqueued_over_the_socket_runs_once_and_its_result_carries_the_rows() {
    let service = shared();
    let job_id = enqueue(
        service,
        json!({"id": 1, "job": "effect", "args": {"key": "socket-1"}}),
    );
    let done = final_state(service, job_id);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["result"]["rows_affected"], json!([1]));
    assert!(done["result"]["worker"].is_u64(), "{done}");
    assert_eq!(effects_of("socket-1"), 1);

    let add = enqueue(
        service,
        json!({"id": 2, "job": "add", "args": {"a": 40, "b": 2}}),
    );
    assert_eq!(
        final_state(service, add)["result"]["rows"],
        json!([{"sum": 42}])
    );
}

#[test]
fn an_sql_enqueue_runs_once_committed_and_never_when_rolled_back() {
    let service = shared();
    let cluster = Cluster::shared();
    cluster.execute(
        "BEGIN; SELECT forkpool.enqueue('effect', '{\"key\": \"sql-rolled-back\"}'); ROLLBACK",
    );
    let id: i64 = cluster
        .query_value("SELECT forkpool.enqueue('effect', '{\"key\": \"sql-committed\"}')")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(final_state(service, id)["state"], "completed");
    assert_eq!(effects_of("sql-committed"), 1);
    // The rolled-back job never existed: no row to run, now or later.
    assert_eq!(
        cluster.query_value(
            "SELECT count(*) FROM forkpool.jobs WHERE args->>'key' = 'sql-rolled-back'"
        ),
        Some("0".to_string())
    );
}

#[test]
fn bad_arguments_are_refused_over_the_socket_and_discarded_without_retry_from_sql() {
    let service = shared();
    let answer = ask(
        service,
        json!({"id": 1, "op": "enqueue", "job": "add", "args": {"a": "forty"}}),
    );
    assert_eq!(answer["error"]["kind"], "invalid_args", "{answer}");
    let unknown = ask(service, json!({"id": 2, "op": "enqueue", "job": "nope"}));
    assert_eq!(unknown["error"]["kind"], "unknown_job", "{unknown}");

    let id: i64 = Cluster::shared()
        .query_value("SELECT forkpool.enqueue('add', '{\"a\": \"forty\"}')")
        .unwrap()
        .parse()
        .unwrap();
    let done = final_state(service, id);
    assert_eq!(done["state"], "discarded", "{done}");
    assert_eq!(
        done["attempt"], 1,
        "invalid arguments are never retried: {done}"
    );
    assert_eq!(done["errors"][0]["kind"], "invalid_args");
}

#[test]
fn a_scheduled_job_waits_for_its_time_and_a_waiting_job_can_be_cancelled() {
    let service = shared();
    let later = enqueue(
        service,
        json!({"id": 1, "job": "effect", "args": {"key": "scheduled"}, "delay_ms": 3_600_000}),
    );
    let now = ask(service, json!({"id": 2, "op": "result", "job_id": later}));
    assert_eq!(now["result"]["state"], "available");
    let cancelled = ask(service, json!({"id": 3, "op": "cancel", "job_id": later}));
    assert_eq!(cancelled["result"]["cancelled"], true, "{cancelled}");
    assert_eq!(final_state(service, later)["state"], "cancelled");
    assert_eq!(effects_of("scheduled"), 0);

    let soon_at = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    let soon = enqueue(
        service,
        json!({"id": 4, "job": "effect", "args": {"key": "run-at"}, "run_at": soon_at.to_rfc3339()}),
    );
    let done = final_state(service, soon);
    assert_eq!(done["state"], "completed", "{done}");
    let started: chrono::DateTime<chrono::Utc> =
        done["attempted_at"].as_str().unwrap().parse().unwrap();
    assert!(
        started >= soon_at,
        "started at {started}, before its run_at {soon_at}"
    );
}

#[test]
fn a_unique_key_returns_the_job_already_waiting() {
    let service = shared();
    let request = json!({"id": 1, "op": "enqueue", "job": "effect", "args": {"key": "unique"},
                         "unique_key": "nightly-report", "delay_ms": 3_600_000});
    let first = ask(service, request.clone());
    let second = ask(service, request);
    assert_eq!(first["result"]["duplicate"], false, "{first}");
    assert_eq!(second["result"]["duplicate"], true, "{second}");
    assert_eq!(first["result"]["job_id"], second["result"]["job_id"]);
    let id = first["result"]["job_id"].as_i64().unwrap();
    ask(service, json!({"id": 2, "op": "cancel", "job_id": id}));
}

#[test]
fn a_running_job_cancelled_has_its_query_cancelled_and_ends_cancelled() {
    let service = shared();
    let id = enqueue(
        service,
        json!({"id": 1, "job": "sleep", "args": {"seconds": 30}}),
    );
    wait_until("the job runs", || {
        let now = ask(service, json!({"id": 2, "op": "result", "job_id": id}));
        now["result"]["state"] == "running"
    });
    let asked = Instant::now();
    let cancelled = ask(service, json!({"id": 3, "op": "cancel", "job_id": id}));
    assert_eq!(cancelled["result"]["cancelled"], true, "{cancelled}");
    let done = final_state(service, id);
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(
        done["errors"][0]["sqlstate"], "57014",
        "the query was cancelled: {done}"
    );
    println!("cancel to cancelled: {:?}", asked.elapsed());
    let missing = ask(
        service,
        json!({"id": 4, "op": "cancel", "job_id": 999_999_999}),
    );
    assert_eq!(missing["error"]["kind"], "not_found", "{missing}");
}

#[test]
fn failures_are_retried_until_the_job_succeeds_with_every_failed_attempt_recorded() {
    let service = shared();
    let id = enqueue(service, json!({"id": 1, "job": "flaky"}));
    let done = final_state(service, id);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["attempt"], 3);
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{done}");
    for (n, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], n as u64 + 1);
        assert_eq!(error["kind"], "db_error");
        assert_eq!(error["sqlstate"], "22012", "division by zero");
    }
}

#[test]
fn a_job_that_keeps_failing_is_discarded_after_max_attempts() {
    let service = shared();
    let id = enqueue(service, json!({"id": 1, "job": "doomed"}));
    let done = final_state(service, id);
    assert_eq!(done["state"], "discarded", "{done}");
    assert_eq!(done["attempt"], 3);
    assert_eq!(done["errors"].as_array().unwrap().len(), 3, "{done}");
    // The worker stores the discard before it logs it: wait for the line, do not peek.
    service.wait_for_log(&format!("job {id} (doomed) discarded"), 1);
}

#[test]
fn result_waits_until_the_job_is_final_or_its_wait_ends() {
    let service = shared();
    let id = enqueue(
        service,
        json!({"id": 1, "job": "effect", "args": {"key": "wait"}, "delay_ms": 3_600_000}),
    );
    let asked = Instant::now();
    let answer = ask(
        service,
        json!({"id": 2, "op": "result", "job_id": id, "wait_ms": 300}),
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "answered before the wait ended"
    );
    assert_eq!(answer["result"]["state"], "available", "{answer}");
    ask(service, json!({"id": 3, "op": "cancel", "job_id": id}));
}

#[test]
fn status_counts_durable_jobs_by_queue_and_state() {
    let service = shared();
    let id = enqueue(
        service,
        json!({"id": 1, "job": "add", "args": {"a": 1}, "queue": "counted"}),
    );
    final_state(service, id);
    let status = service.wait_for_status("the queue `counted` counted", |status| {
        status["durable"]["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["queue"] == "counted" && q["completed"] == 1)
    });
    assert_eq!(status["durable"]["ready"], true);
    assert!(status["durable"]["totals"]["completed"].as_u64().unwrap() >= 1);
}

#[test]
fn durable_ops_are_refused_by_name_when_durable_jobs_are_off() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    for request in [
        json!({"id": 1, "op": "enqueue", "job": "add", "args": {"a": 1}}),
        json!({"id": 2, "op": "result", "job_id": 1}),
        json!({"id": 3, "op": "cancel", "job_id": 1}),
    ] {
        let answer = ask(&service, request);
        assert_eq!(answer["error"]["kind"], "bad_request", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("durable jobs are off"), "{message}");
    }
    assert!(service.status()["durable"].is_null());
}

#[test]
fn the_master_stays_one_thread_without_a_database_socket_while_durable_jobs_run() {
    let service = shared();
    let ids: Vec<i64> = (0..20)
        .map(|n| {
            enqueue(
                service,
                json!({"id": n, "job": "sleep", "args": {"seconds": 0.05}}),
            )
        })
        .collect();
    let master = service.pid().as_raw();
    let threads = std::fs::read_dir(format!("/proc/{master}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "the master must run one thread");
    let sockets = support::tcp_socket_count(master);
    assert_eq!(sockets, 0, "the master holds a TCP socket");
    for id in ids {
        assert_eq!(final_state(service, id)["state"], "completed");
    }
}

/// An idle host does not answer one new job with a claim from every idle slot: a wake-up
/// sends one seeking claim, and only a claim that found a job lets another one seek
/// (DESIGN §12, Wake-ups). Eight idle slots, ten jobs one at a time: every slot claiming at
/// every wake-up (the enqueue's answer, its NOTIFY, the job's settling) came back empty at
/// least eight times per job. Its own database, so no other test's NOTIFY wakes it; polls
/// an hour apart, so none adds a claim.
/// `options` for a durable service with 2 workers × 4 threads in a database of its own (so
/// no other test's jobs or NOTIFY reach it), polling an hour apart (so no poll adds a claim).
fn quiet_options(database: &str, options: ServiceOptions) -> ServiceOptions {
    Cluster::shared().create_database(database);
    let mut options = options
        .in_database(database)
        .durable()
        .queue_key("poll_interval", "\"1h\"");
    options.workers = 2;
    options.threads = 4;
    options
}

/// A service of [`quiet_options`], started and ready.
fn quiet_service(database: &str, options: ServiceOptions) -> Service {
    let service = Service::start(quiet_options(database, options));
    service.wait_for_status("durable jobs ready", |s| s["durable"]["ready"] == true);
    service
}

#[test]
fn one_job_at_a_time_costs_a_few_claims_not_one_per_idle_slot() {
    let service = quiet_service("one_job_at_a_time", ServiceOptions::on(Cluster::shared()));
    let jobs = 10;
    for n in 0..jobs {
        let id = enqueue(
            &service,
            json!({"id": n, "job": "add", "args": {"a": n}, "queue": "one_at_a_time"}),
        );
        assert_eq!(final_state(&service, id)["state"], "completed");
    }
    // A job's `result` can answer before the master hears its worker settle it.
    let status = service.wait_for_status("every job settled", |s| {
        s["durable"]["totals"]["completed"] == jobs
    });
    let totals = &status["durable"]["totals"];
    let empty = totals["empty_claims"].as_u64().expect("empty_claims");
    assert!(
        empty <= 5 * jobs,
        "{empty} empty claims for {jobs} jobs run one at a time on 8 idle slots: {totals}"
    );
}

/// Without `[queue.limits]` a settled job sends no claim: nothing was enqueued since the
/// last claim came back empty. No NOTIFY here (`listen = false`), so the only wake-up is
/// the enqueue's answer, and the job sleeps long enough for its search to end first.
#[test]
fn a_settled_job_sends_no_claim_when_no_queue_is_capped() {
    let options = ServiceOptions::on(Cluster::shared()).queue_key("listen", "false");
    let service = quiet_service("settled_no_claim", options);
    let id = enqueue(
        &service,
        json!({"id": 1, "job": "sleep", "args": {"seconds": 0.5}}),
    );
    let durable = |s: &Value| s["durable"].clone();
    let searched = service.wait_for_status("the job running, its search over", |s| {
        durable(s)["running"] == 1 && durable(s)["claiming"] == 0
    });
    assert_eq!(final_state(&service, id)["state"], "completed");
    let settled = service.wait_for_status("the job settled, no claim out", |s| {
        durable(s)["totals"]["completed"] == 1 && durable(s)["claiming"] == 0
    });
    assert_eq!(
        durable(&settled)["totals"]["empty_claims"],
        durable(&searched)["totals"]["empty_claims"],
        "a claim went out after the job settled: {}",
        durable(&settled)["totals"]
    );
}

/// With `[queue.limits]`, jobs a claim had to leave behind their queue's cap are claimed as
/// soon as a job of that queue settles, not at the next poll (an hour away here).
#[test]
fn a_capped_queue_runs_its_waiting_jobs_as_its_jobs_settle() {
    let options = ServiceOptions::on(Cluster::shared())
        .queue_key("listen", "false")
        .queue_key("limits", "{ capped = 1 }");
    let service = quiet_service("capped_queue", options);
    let ids: Vec<i64> = (0..3)
        .map(|n| {
            enqueue(
                &service,
                json!({"id": n, "job": "sleep", "args": {"seconds": 0.05}, "queue": "capped"}),
            )
        })
        .collect();
    for id in ids {
        assert_eq!(final_state(&service, id)["state"], "completed", "job {id}");
    }
}

/// A durable service of its own, in a database of its own (see [`quiet_options`]: no other
/// test's jobs, whose runs could reset sessions, reach its workers), that logs the pool at
/// debug, ready, with `queue` paused (so no worker runs the jobs put in it).
fn with_pool_log_and_paused(queue: &str) -> Service {
    let mut options = quiet_options(queue, ServiceOptions::on(Cluster::shared()));
    options
        .env
        .push(("RUST_LOG".into(), "info,forkpool::pool=debug".into()));
    let service = Service::start(options);
    service.wait_for_status("durable jobs ready", |s| s["durable"]["ready"] == true);
    let paused = ask(&service, json!({"id": 0, "op": "pause", "queue": queue}));
    assert_eq!(paused["ok"], true, "{paused}");
    service
}

/// The keeper's enqueue and `result` statements run in autocommit, so their session goes
/// back to the pool without a `ROLLBACK` (a round trip per enqueue batch and per read). The
/// pool logs every reset at debug; the jobs wait in a paused queue, so no worker runs one.
#[test]
fn enqueues_and_result_reads_cost_no_rollback() {
    let queue = "no_rollback";
    let service = with_pool_log_and_paused(queue);
    // The keeper's start-up chores (migration, defaults, take-back) may reset: not counted.
    let before = service.logs().lines().count();
    for n in 0..5 {
        let id = enqueue(
            &service,
            json!({"id": n, "job": "add", "args": {"a": n}, "queue": queue}),
        );
        let read = ask(&service, json!({"id": "r", "op": "result", "job_id": id}));
        assert_eq!(read["result"]["state"], "available", "{read}");
    }
    let resets: Vec<String> = service
        .logs()
        .lines()
        .skip(before)
        .filter(|line| line.contains("reset backend"))
        .map(str::to_string)
        .collect();
    assert!(
        resets.is_empty(),
        "sessions reset after autocommit statements: {resets:?}"
    );
    ask(&service, json!({"id": 9, "op": "resume", "queue": queue}));
}

/// `result` reads that reach the keeper together share one statement: fifty pipelined in
/// one write are read with one session checkout (the pool logs each at debug), not fifty.
/// Each still gets its own answer, the unknown id its `not_found`.
#[test]
fn result_reads_sent_together_share_one_statement() {
    let queue = "read_together";
    let service = with_pool_log_and_paused(queue);
    let id = enqueue(
        &service,
        json!({"id": 1, "job": "add", "args": {"a": 1}, "queue": queue}),
    );
    let before = service.logs().lines().count();
    let reads = 50;
    let mut lines = String::new();
    for n in 0..reads {
        let job_id = if n == reads - 1 { i64::MAX } else { id };
        lines += &format!("{}\n", json!({"id": n, "op": "result", "job_id": job_id}));
    }
    let mut client = service.client();
    client.send_raw(lines.as_bytes());
    for _ in 0..reads {
        let answer = client.recv().expect("an answer per read");
        if answer["id"] == reads - 1 {
            assert_eq!(answer["error"]["kind"], "not_found", "{answer}");
        } else {
            assert_eq!(answer["result"]["job_id"], id, "{answer}");
            assert_eq!(answer["result"]["state"], "available", "{answer}");
        }
    }
    let checkouts = service
        .logs()
        .lines()
        .skip(before)
        .filter(|line| line.contains("checkout backend") && line.contains("queue keeper"))
        .count();
    // The keeper's own chores (its counts every 2 s) may check out meanwhile.
    assert!(
        checkouts <= 5,
        "{checkouts} keeper checkouts for {reads} reads sent together"
    );
    ask(&service, json!({"id": 9, "op": "resume", "queue": queue}));
}
