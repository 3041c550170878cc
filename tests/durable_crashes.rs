//! The durability contract of DESIGN §12, proven by crashing the real service under durable
//! load: workers killed with SIGKILL at random, the master killed and started again, a
//! graceful stop past its deadline, a worker killed inside a job's transaction, the rescue
//! that follows a worker's death (also of a claim that commits after it), and the fence that
//! keeps a worker whose job was taken back from completing it.
//!
//! Where a test must catch the service at one step of a job, the server holds the job there
//! (a `pg_sleep`, or an advisory lock the test holds) and the test waits for it in
//! `pg_stat_activity`; speed is printed, never asserted.
//!
//! Each test has a database of its own in the shared cluster (its `forkpool` schema, its
//! notifications and its `effects` table), so the tests run side by side without seeing each
//! other's jobs. Only forkpool's processes are killed, never the server. `effects` has no
//! unique constraint: an effect that happened twice is there to count.

mod support;

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use support::procfs::{children, client_of_connection, tcp_sockets_of, thread_count};
use support::{Cluster, Service, ServiceOptions, EVENT_TIMEOUT};

/// The job that proves exactly-once: its effect and its completion commit together.
const EFFECT_JOB: &str = "timeout = \"30s\"\n\
    sql = \"INSERT INTO effects (job_key) VALUES (:key)\"\n\
    [params]\nkey = \"text\"\n";

/// A job that sleeps `s` seconds on the server, with a timeout of `timeout`.
fn nap_job(timeout: &str) -> String {
    format!(
        "timeout = \"{timeout}\"\nsql = \"SELECT :s AS slept FROM pg_sleep(:s)\"\n\
         [params]\ns = \"float8\"\n"
    )
}

/// A database of the test's own with an `effects` table the app role may write, and a
/// superuser session in it.
fn database_with_effects(cluster: &Cluster, name: &str) -> postgres::Client {
    let mut db = cluster.create_database(name);
    db.batch_execute(
        "CREATE TABLE effects (job_key text NOT NULL, at timestamptz NOT NULL DEFAULT now());
         GRANT SELECT, INSERT ON effects TO app;",
    )
    .expect("creating effects");
    db
}

/// A durable service in database `name` that polls every 100 ms, started and with its queue
/// ready (the keeper migrated the schema and took back what earlier instances held).
fn durable_service(name: &str, options: ServiceOptions) -> Service {
    let service = Service::start(
        options
            .in_database(name)
            .durable()
            .queue_key("poll_interval", "\"100ms\""),
    );
    service.wait_for_log("queue ready", 1);
    service
}

/// Sessions of a killed worker end at once instead of after their query: a backend asleep
/// in `pg_sleep` notices its client is gone only if it checks.
fn check_clients(mut options: ServiceOptions) -> ServiceOptions {
    options.database_url += " options='-c client_connection_check_interval=100ms'";
    options
}

/// Asks `check` until it answers; fails naming `what`, with the service's logs, after
/// `patience`.
fn poll_until<T>(
    service: &Service,
    what: &str,
    patience: Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    support::poll_until(what, patience, check, || {
        format!("logs:\n{}", service.logs())
    })
}

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", support::describe(&e)))
        .get(0)
}

/// Jobs by state, for a failure message.
fn states(db: &mut postgres::Client) -> String {
    db.query(
        "SELECT state || ': ' || count(*) FROM forkpool.jobs GROUP BY state ORDER BY state",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| row.get::<_, String>(0))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Waits until every job in the table is `completed`.
fn wait_all_completed(service: &Service, db: &mut postgres::Client, patience: Duration) {
    let db = std::cell::RefCell::new(db);
    support::poll_until(
        "every job completed",
        patience,
        || {
            let left = count(
                &mut db.borrow_mut(),
                "SELECT count(*) FROM forkpool.jobs WHERE state <> 'completed'",
            );
            (left == 0).then_some(())
        },
        || {
            format!(
                "({}); logs:\n{}",
                states(&mut db.borrow_mut()),
                service.logs()
            )
        },
    );
}

/// Asserts exactly one effect per job: as many rows as jobs, no key twice, no job without.
fn assert_one_effect_per_job(db: &mut postgres::Client, jobs: i64) {
    let effects = count(db, "SELECT count(*) FROM effects");
    let distinct = count(db, "SELECT count(DISTINCT job_key) FROM effects");
    let without_one = count(
        db,
        "SELECT count(*) FROM forkpool.jobs j \
          WHERE (SELECT count(*) FROM effects e WHERE e.job_key = j.args->>'key') <> 1",
    );
    assert_eq!(
        (effects, distinct, without_one),
        (jobs, jobs, 0),
        "(effect rows, distinct keys, jobs without exactly one effect) for {jobs} jobs"
    );
}

/// Asserts job `id` completed at its second claim and attempt, its first one lost with its
/// worker: one `worker_lost` error whose message holds `message_has`.
fn assert_completed_after_one_lost_attempt(db: &mut postgres::Client, id: i64, message_has: &str) {
    let row = db
        .query_one(
            "SELECT state, attempt, claim_count, jsonb_array_length(errors), \
                    errors->0->>'kind', errors::text \
               FROM forkpool.jobs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let got: (String, i32, i32, i32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let errors: String = row.get(5);
    assert_eq!(
        got,
        ("completed".to_string(), 2, 2, 1, "worker_lost".to_string()),
        "(state, attempt, claim_count, errors, first error's kind): {errors}"
    );
    assert!(
        errors.contains(message_has),
        "{message_has:?} not in {errors}"
    );
}

/// Seconds since the epoch, as the database's `extract(epoch FROM ...)` gives them.
fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until job `id` runs a `pg_sleep` on its backend (so its statements before the sleep
/// have run), and returns the pid of the worker whose session that backend serves.
fn worker_asleep_in(
    service: &Service,
    cluster: &Cluster,
    db: &mut postgres::Client,
    id: i64,
) -> i32 {
    let port: i32 = poll_until(
        service,
        "the job asleep on its backend",
        EVENT_TIMEOUT,
        || {
            db.query_opt(
                "SELECT a.client_port FROM forkpool.jobs j JOIN pg_stat_activity a \
                    ON a.pid = j.backend_pid \
                  WHERE j.id = $1 AND j.state = 'running' AND a.state = 'active' \
                    AND a.query LIKE '%pg_sleep%'",
                &[&id],
            )
            .unwrap()
            .map(|row| row.get(0))
        },
    );
    worker_on_port(service, cluster, port)
        .unwrap_or_else(|| panic!("no worker holds the connection from port {port}"))
}

/// The worker whose database session comes from local port `port`, if it is still alive:
/// found among the master's children (its workers and keeper) in /proc, without a round trip
/// to the master.
fn worker_on_port(service: &Service, cluster: &Cluster, port: i32) -> Option<i32> {
    client_of_connection(
        port as u16,
        cluster.port(),
        &children(service.pid().as_raw()),
    )
}

/// The pid of a random busy worker (holding a claim or a job), or of any worker if none is.
fn random_busy_worker(service: &Service) -> i32 {
    let status = service.status();
    let workers = status["workers"].as_array().unwrap();
    let busy: Vec<&serde_json::Value> = workers.iter().filter(|w| w["state"] == "busy").collect();
    let pool = if busy.is_empty() {
        workers.iter().collect()
    } else {
        busy
    };
    pool[fastrand::usize(..pool.len())]["pid"].as_i64().unwrap() as i32
}

/// Asserts the master is one thread holding no TCP socket (DESIGN §2: it never touches the
/// database), even while its workers die around it.
fn assert_master_stays_clean(service: &Service) {
    let master = service.pid().as_raw();
    assert_eq!(thread_count(master), 1, "the master must run one thread");
    let tcp = tcp_sockets_of(master);
    assert!(tcp.is_empty(), "the master holds TCP sockets {tcp:?}");
}

/// Enqueues one job over the socket and returns its id.
fn enqueue(service: &Service, job: &str, args: serde_json::Value) -> i64 {
    let answer = service
        .client()
        .request(json!({"id": 1, "op": "enqueue", "job": job, "args": args}));
    assert_eq!(answer["ok"], true, "{answer}");
    answer["result"]["job_id"].as_i64().unwrap()
}

/// Enqueues an effect job for each `n` in `range`, keyed `{prefix}-{n}`, on one connection,
/// pipelined.
fn enqueue_by_socket(
    service_socket: &std::path::Path,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    let mut client = support::Client::connect(service_socket);
    for n in range.clone() {
        client.send(json!({"id": n, "op": "enqueue", "job": "effect",
                           "args": {"key": format!("{prefix}-{n}")}}));
    }
    for _ in range {
        let answer = client.recv().expect("an enqueue answer");
        assert_eq!(answer["ok"], true, "enqueue failed: {answer}");
        assert_eq!(answer["result"]["duplicate"], false, "{answer}");
    }
}

#[test]
fn a_kill_9_storm_on_workers_leaves_every_job_completed_with_exactly_one_effect() {
    kill_9_storm("crash_storm", 1);
}

/// With `queue.batch = 4` the jobs of a batch commit together; a kill lands in a batch's
/// transaction as often as in one job's, and must leave no effect twice either.
#[test]
fn a_kill_9_storm_on_batching_workers_leaves_every_job_completed_with_exactly_one_effect() {
    kill_9_storm("crash_storm_batches", 4);
}

/// Rounds of enqueues by the socket and by SQL under a storm of SIGKILLs on the workers
/// (`batch`: `queue.batch`); then every job completed once with one effect.
fn kill_9_storm(name: &str, batch: usize) {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 100; // by the socket and as many by SQL, each round
    /// The storm lasts as long as the load, at most this long.
    const STORM_MAX: Duration = Duration::from_secs(8);
    let cluster = Cluster::shared();
    let mut db = database_with_effects(cluster, name);
    // Each effect takes 10 ms more on the server, between the job's INSERT and its commit:
    // the window where a kill tests exactly-once is wide enough for the storm to hit it.
    db.batch_execute(
        "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.01); RETURN NULL; END $$;
         CREATE TRIGGER linger AFTER INSERT ON effects FOR EACH ROW EXECUTE FUNCTION linger();",
    )
    .expect("the lingering effect");
    let mut options = ServiceOptions::on(cluster)
        .job("effect", EFFECT_JOB)
        .worker_key("min_lifetime", "\"0s\"")
        .worker_key("give_up_after", "1000000")
        .worker_key("restart_backoff_max", "\"200ms\"")
        .queue_key("batch", &batch.to_string());
    options.workers = 4;
    let service = durable_service(name, options);

    // The load: rounds of socket and SQL enqueues, as fast as they go.
    let socket = service.socket.clone();
    let name = name.to_string();
    let enqueuer = thread::spawn(move || {
        let mut sql = Cluster::shared().superuser_in(&name);
        for round in 0..ROUNDS {
            let first = round * PER_ROUND;
            enqueue_by_socket(&socket, "socket", first..first + PER_ROUND);
            let mut transaction = sql.transaction().unwrap();
            transaction
                .execute(
                    "SELECT forkpool.enqueue('effect', jsonb_build_object('key', 'sql-' || n)) \
                       FROM generate_series($1::int, $2::int) n",
                    &[&(first as i32), &((first + PER_ROUND - 1) as i32)],
                )
                .unwrap();
            transaction.commit().unwrap();
        }
    });

    // The storm, while jobs are still to run.
    let mut killed = 0;
    let storm = Instant::now();
    let unfinished = "SELECT count(*) FROM forkpool.jobs WHERE state <> 'completed'";
    while storm.elapsed() < STORM_MAX && (!enqueuer.is_finished() || count(&mut db, unfinished) > 0)
    {
        // The storm's pace, not a synchronisation.
        thread::sleep(Duration::from_millis(fastrand::u64(50..=150)));
        // Every other kill, the worker of a random running job (inside its transaction);
        // else a random busy worker (a claim out, a job, its completion, a reconnection):
        // the kills land at every step of a job.
        let running_job_port = if killed % 2 == 0 {
            db.query_opt(
                "SELECT a.client_port FROM forkpool.jobs j JOIN pg_stat_activity a \
                    ON a.pid = j.backend_pid \
                  WHERE j.state = 'running' ORDER BY random() LIMIT 1",
                &[],
            )
            .unwrap()
            .map(|row| row.get::<_, i32>(0))
        } else {
            None
        };
        let victim = running_job_port
            .and_then(|port| worker_on_port(&service, cluster, port))
            .unwrap_or_else(|| random_busy_worker(&service));
        if kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
        assert_master_stays_clean(&service);
    }
    let stormed = storm.elapsed();
    enqueuer.join().expect("the enqueuer failed");
    let jobs = (2 * ROUNDS * PER_ROUND) as i64;
    wait_all_completed(&service, &mut db, Duration::from_secs(60));
    assert_master_stays_clean(&service);

    assert_eq!(count(&mut db, "SELECT count(*) FROM forkpool.jobs"), jobs);
    assert_one_effect_per_job(&mut db, jobs);
    // A job's completion is its row's last version: jobs whose rows share an `xmin`
    // committed in one transaction — a batch's, or each its own with `batch = 1`.
    let most_together = count(
        &mut db,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM forkpool.jobs GROUP BY xmin::text) t",
    );
    if batch == 1 {
        assert_eq!(most_together, 1, "with batch = 1 every job commits alone");
    } else {
        assert!(most_together > 1, "no two jobs committed together");
    }
    // Every attempt but the last was lost with its worker, and each loss is on record.
    let rescued = count(
        &mut db,
        "SELECT count(*) FROM forkpool.jobs WHERE attempt > 1",
    );
    let unrecorded = count(
        &mut db,
        "SELECT count(*) FROM forkpool.jobs WHERE jsonb_array_length(errors) <> attempt - 1 \
            OR EXISTS (SELECT 1 FROM jsonb_array_elements(errors) e \
                        WHERE e->>'kind' <> 'worker_lost' \
                           OR e->>'message' NOT LIKE '%killed by SIGKILL%')",
    );
    let losses = count(
        &mut db,
        "SELECT coalesce(sum(jsonb_array_length(errors)), 0)::int8 FROM forkpool.jobs",
    );
    let late_claims = count(
        &mut db,
        "SELECT count(*) FROM forkpool.jobs, jsonb_array_elements(errors) e \
          WHERE e->>'message' LIKE '%a claim that landed after its death'",
    );
    let status = service.status();
    println!(
        "storm of {stormed:?}: {killed} workers killed; {jobs} jobs completed, {rescued} of \
         them rescued ({losses} lost attempts, {late_claims} of them claims that landed after \
         their worker's death); durable totals {}",
        status["durable"]["totals"]
    );
    assert!(killed >= 10, "the storm killed only {killed} workers");
    assert!(rescued > 0, "no job was rescued: the storm proved nothing");
    assert_eq!(
        unrecorded, 0,
        "jobs whose lost attempts are not each a worker_lost error"
    );
    assert_eq!(
        status["durable"]["totals"]["rescued"], losses,
        "the rescues the master counted and the lost attempts on record differ"
    );
}

#[test]
fn after_kill_9_of_the_master_a_restart_takes_back_its_jobs_before_ready_and_runs_each_once() {
    const JOBS: i64 = 40;
    let cluster = Cluster::shared();
    let name = "crash_restart";
    let mut db = database_with_effects(cluster, name);
    let nap_effect = "timeout = \"30s\"\n\
        sql = [\"SELECT :s AS slept FROM pg_sleep(:s)\", \
               \"INSERT INTO effects (job_key) VALUES (:key)\"]\n\
        [params]\ns = \"float8\"\nkey = \"text\"\n";
    let mut options = check_clients(ServiceOptions::on(cluster)).job("nap_effect", nap_effect);
    options.workers = 4;
    let mut service = durable_service(name, options);
    // 36 quick jobs, then 4 slow ones: the master dies with the slow ones in flight, each
    // asleep in its transaction, after every quick one is done.
    db.batch_execute(
        "SELECT forkpool.enqueue('nap_effect', jsonb_build_object('key', 'r-' || n, \
                's', CASE WHEN n > 36 THEN 3 ELSE 0.02 END)) \
           FROM generate_series(1, 40) n",
    )
    .unwrap();
    poll_until(
        &service,
        "the quick jobs done and the slow ones running",
        EVENT_TIMEOUT,
        || {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'completed'), \
                            count(*) FILTER (WHERE state = 'running') FROM forkpool.jobs",
                    &[],
                )
                .unwrap();
            (row.get::<_, i64>(0) == JOBS - 4 && row.get::<_, i64>(1) == 4).then_some(())
        },
    );
    service.signal(Signal::SIGKILL);
    assert!(!service.wait_exit().success());
    // The old instance is gone once its last session is: its workers died with the master
    // (PDEATHSIG) and their backends noticed. From then on nothing changes the table.
    poll_until(
        &service,
        "the old instance's sessions gone",
        EVENT_TIMEOUT,
        || {
            let sessions = count(
                &mut db,
                "SELECT count(*) FROM pg_stat_activity \
              WHERE datname = current_database() AND usename = 'app'",
            );
            (sessions == 0).then_some(())
        },
    );
    let held: Vec<(i64, i32, i64)> = db
        .query(
            "SELECT id, attempt, instance FROM forkpool.jobs WHERE state = 'running' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert!(!held.is_empty(), "the killed master held no job");
    let completed_before = count(
        &mut db,
        "SELECT count(*) FROM forkpool.jobs WHERE state = 'completed'",
    );

    service.start_again();
    service.wait_for_log("queue ready", 1);
    // Taken back before ready: at READY no job is held by the old instance any more, and
    // none waits for a later time: the held ones are runnable (or running again already).
    let old_instance = held[0].2;
    let at_ready = db
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'running' AND instance = $1), \
                    count(*) FILTER (WHERE state = 'available' AND run_at > now()) \
               FROM forkpool.jobs",
            &[&old_instance],
        )
        .unwrap();
    assert_eq!(
        (at_ready.get::<_, i64>(0), at_ready.get::<_, i64>(1)),
        (0, 0),
        "(jobs still held by the killed instance, jobs not runnable) at READY"
    );
    service.wait_for_log(
        &format!(
            "rescued {} jobs an earlier instance of this host held",
            held.len()
        ),
        1,
    );

    wait_all_completed(&service, &mut db, EVENT_TIMEOUT);
    assert_eq!(count(&mut db, "SELECT count(*) FROM forkpool.jobs"), JOBS);
    assert_one_effect_per_job(&mut db, JOBS);
    let mut latencies = Vec::new();
    for (id, attempt, _) in &held {
        let row = db
            .query_one(
                "SELECT attempt, errors::text, \
                        jsonb_array_length(errors) = 1 AND errors->0->>'kind' = 'worker_lost' \
                        AND errors->0->>'message' = 'the service was restarted', \
                        extract(epoch FROM attempted_at - run_at)::float8 \
                   FROM forkpool.jobs WHERE id = $1",
                &[id],
            )
            .unwrap();
        let (again, errors): (i32, String) = (row.get(0), row.get(1));
        assert_eq!(
            again,
            attempt + 1,
            "job {id} was not claimed again: {errors}"
        );
        assert!(row.get::<_, bool>(2), "job {id}: errors {errors}");
        latencies.push(row.get::<_, f64>(3));
    }
    let others_with_errors = count(
        &mut db,
        &format!(
            "SELECT count(*) FROM forkpool.jobs WHERE errors <> '[]' AND id NOT IN ({})",
            held.iter()
                .map(|(id, _, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    assert_eq!(
        others_with_errors, 0,
        "jobs the old instance did not hold have errors"
    );
    println!(
        "{} jobs held at the kill ({completed_before} of {JOBS} done), each claimed again \
         {:?} s after the restart's rescue (which precedes READY)",
        held.len(),
        latencies
    );
}

#[test]
fn sigterm_past_shutdown_timeout_puts_a_running_job_back_with_its_attempt_not_spent() {
    let cluster = Cluster::shared();
    let name = "crash_term";
    let mut db = cluster.create_database(name);
    let long_nap = nap_job("120s");
    let mut options = check_clients(ServiceOptions::on(cluster))
        .job("long_nap", &long_nap)
        .service_key("shutdown_timeout", "\"1s\"");
    options.workers = 1;
    let mut service = durable_service(name, options);
    let id = enqueue(&service, "long_nap", json!({"s": 60}));
    worker_asleep_in(&service, cluster, &mut db, id);

    service.signal(Signal::SIGTERM);
    // Only the cancel at the deadline can end a 60 s sleep within the wait for the exit.
    let exit = service.wait_exit();
    assert!(exit.success(), "{exit:?}; logs:\n{}", service.logs());
    let row = db
        .query_one(
            "SELECT state, attempt, claim_count, errors::text, run_at <= now(), \
                    finished_at IS NULL AND result IS NULL AND host IS NULL \
                    AND instance IS NULL AND worker IS NULL AND backend_pid IS NULL \
                    AND lease_until IS NULL \
               FROM forkpool.jobs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let got: (String, i32, i32, String, bool, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    // DESIGN §12: cancelled at the deadline and put back to `available`, runnable now,
    // without spending an attempt (and so without an error: the stop says nothing of the
    // job); the fence still grew.
    assert_eq!(
        got,
        ("available".to_string(), 0, 1, "[]".to_string(), true, true),
        "(state, attempt, claim_count, errors, runnable now, holder cleared); logs:\n{}",
        service.logs()
    );
}

#[test]
fn a_worker_killed_between_a_jobs_effect_and_its_commit_leaves_no_effect_and_it_runs_once_more() {
    let cluster = Cluster::shared();
    let name = "crash_commit";
    let mut db = database_with_effects(cluster, name);
    let effect_then_nap = "timeout = \"30s\"\n\
        sql = [\"INSERT INTO effects (job_key) VALUES (:key)\", \
               \"SELECT :s AS slept FROM pg_sleep(:s)\"]\n\
        [params]\nkey = \"text\"\ns = \"float8\"\n";
    let options =
        check_clients(ServiceOptions::on(cluster)).job("effect_then_nap", effect_then_nap);
    let service = durable_service(name, options);
    let id = enqueue(&service, "effect_then_nap", json!({"key": "k", "s": 1.0}));
    // Asleep: the effect's INSERT ran in the job's transaction, which has not committed.
    let victim = worker_asleep_in(&service, cluster, &mut db, id);
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // Claimed again; in one snapshot, the effect is not there unless the second run has
    // committed it with the job's completion.
    poll_until(&service, "the job claimed again", EVENT_TIMEOUT, || {
        let row = db
            .query_one(
                "SELECT claim_count, state, (SELECT count(*) FROM effects) \
                   FROM forkpool.jobs WHERE id = $1",
                &[&id],
            )
            .unwrap();
        let (claims, state, effects): (i32, String, i64) = (row.get(0), row.get(1), row.get(2));
        if state != "completed" {
            assert_eq!(
                effects, 0,
                "the killed attempt's effect is visible ({state})"
            );
        }
        (claims >= 2).then_some(())
    });
    wait_all_completed(&service, &mut db, EVENT_TIMEOUT);
    assert_completed_after_one_lost_attempt(&mut db, id, "was killed by SIGKILL");
    assert_one_effect_per_job(&mut db, 1);
}

#[test]
fn a_worker_killed_mid_job_has_its_job_claimed_again_at_once_not_after_its_lease() {
    let cluster = Cluster::shared();
    let name = "crash_rescue";
    let mut db = cluster.create_database(name);
    let nap = nap_job("30s");
    // A lease that cannot lapse during the test: only the master's reaction to SIGCHLD
    // can make the job runnable again.
    let options = check_clients(ServiceOptions::on(cluster))
        .job("nap", &nap)
        .queue_key("lease", "\"1h\"");
    let service = durable_service(name, options);
    let id = enqueue(&service, "nap", json!({"s": 2.0}));
    let victim = worker_asleep_in(&service, cluster, &mut db, id);
    let killed_at = epoch_now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // Claimed again long before a lease could have lapsed: the rescue followed the death.
    let (rescued_at, claimed_again_at): (f64, f64) =
        poll_until(&service, "the job claimed again", EVENT_TIMEOUT, || {
            db.query_opt(
                "SELECT extract(epoch FROM (errors->0->>'at')::timestamptz)::float8, \
                        extract(epoch FROM attempted_at)::float8 \
                   FROM forkpool.jobs WHERE id = $1 AND claim_count >= 2",
                &[&id],
            )
            .unwrap()
            .map(|row| (row.get(0), row.get(1)))
        });
    println!(
        "rescue latency: the job was claimed again {:.1} ms after its worker was killed \
         (rescued {:.1} ms after the kill, claimed {:.1} ms after the rescue)",
        (claimed_again_at - killed_at) * 1000.0,
        (rescued_at - killed_at) * 1000.0,
        (claimed_again_at - rescued_at) * 1000.0,
    );
    wait_all_completed(&service, &mut db, EVENT_TIMEOUT);
    assert_completed_after_one_lost_attempt(&mut db, id, "was killed by SIGKILL");
    assert_eq!(
        service.status()["durable"]["totals"]["rescued"],
        1,
        "the master counted no rescue"
    );
}

#[test]
fn a_claim_that_commits_after_its_worker_died_is_taken_back_too() {
    let cluster = Cluster::shared();
    let name = "crash_claim";
    let mut db = cluster.create_database(name);
    let nap = nap_job("30s");
    // No client check here: the dead worker's backend must go on with its claim and commit
    // it. The lease cannot lapse during the test.
    let options = ServiceOptions::on(cluster)
        .job("nap", &nap)
        .queue_key("lease", "\"1h\"");
    let service = durable_service(name, options);
    // The job's first claim waits on the server for a lock this test holds, so its worker
    // can be killed while the claim is still to commit; each rescue statement leaves a mark.
    db.batch_execute(
        "CREATE FUNCTION held_claim() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock_shared(727002); RETURN NEW; END $$;
         CREATE TRIGGER held_claim BEFORE UPDATE ON forkpool.jobs FOR EACH ROW
           WHEN (OLD.state = 'available' AND NEW.state = 'running' AND OLD.claim_count = 0)
           EXECUTE FUNCTION held_claim();
         CREATE TABLE rescues (at timestamptz NOT NULL DEFAULT clock_timestamp());
         GRANT INSERT ON rescues TO app;
         CREATE FUNCTION note_rescue() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           -- A dead worker's rescue names its worker; the lapsed-lease look, which runs
           -- every poll, does not, and must not count here.
           IF current_query() LIKE '%WITH rescued AS%' AND current_query() LIKE '%worker = $6%' THEN
             INSERT INTO rescues DEFAULT VALUES;
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER note_rescue AFTER UPDATE ON forkpool.jobs FOR EACH STATEMENT
           EXECUTE FUNCTION note_rescue();
         SELECT pg_advisory_lock(727002);",
    )
    .expect("the held claim and the rescue marks");
    let id = enqueue(&service, "nap", json!({"s": 0.1}));
    let port: i32 = poll_until(&service, "a claim held on the lock", EVENT_TIMEOUT, || {
        db.query_opt(
            "SELECT client_port FROM pg_stat_activity \
              WHERE datname = current_database() AND wait_event_type = 'Lock' \
                AND wait_event = 'advisory' AND query LIKE '%forkpool.claim_jobs%'",
            &[],
        )
        .unwrap()
        .map(|row| row.get(0))
    });
    let victim = worker_on_port(&service, cluster, port)
        .unwrap_or_else(|| panic!("no worker holds the connection from port {port}"));
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // The master's rescue of the dead worker ran, and could not see the claim.
    poll_until(
        &service,
        "the rescue of the dead worker",
        EVENT_TIMEOUT,
        || (count(&mut db, "SELECT count(*) FROM rescues") >= 1).then_some(()),
    );
    let state: String = db
        .query_one("SELECT state FROM forkpool.jobs WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(state, "available", "the claim committed before the rescue");
    // Now the claim goes on and commits: the job is `running` under a dead worker.
    db.batch_execute("SELECT pg_advisory_unlock(727002)")
        .unwrap();
    wait_all_completed(&service, &mut db, EVENT_TIMEOUT);
    assert_completed_after_one_lost_attempt(
        &mut db,
        id,
        "was killed by SIGKILL; a claim that landed after its death",
    );
}

#[test]
fn a_worker_whose_job_was_taken_back_cannot_complete_it() {
    let cluster = Cluster::shared();
    let name = "crash_fence";
    let mut db = database_with_effects(cluster, name);
    // The job's effect, then a wait on a lock this test holds: it cannot complete until the
    // test lets it.
    let effect_then_gate = "timeout = \"30s\"\n\
        sql = [\"INSERT INTO effects (job_key) VALUES (:key)\", \
               \"SELECT 1 AS passed FROM pg_advisory_xact_lock_shared(727003)\"]\n\
        [params]\nkey = \"text\"\n";
    // Two instances with one host identity: the second one's start takes back what the
    // first one holds, as after a crash, though the first one's worker is alive (a master
    // wrongly believed dead). One worker each, so only the second one claims the job again.
    let options = || {
        let mut options = ServiceOptions::on(cluster)
            .job("effect_then_gate", effect_then_gate)
            .queue_key("host_id", "\"one-host\"");
        options.workers = 1;
        options
    };
    db.batch_execute("SELECT pg_advisory_lock(727003)").unwrap();
    let first = durable_service(name, options());
    let id = enqueue(&first, "effect_then_gate", json!({"key": "k"}));
    let gated = "SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND wait_event = 'advisory'";
    poll_until(
        &first,
        "the first instance's run at the gate",
        EVENT_TIMEOUT,
        || (count(&mut db, gated) == 1).then_some(()),
    );

    let second = durable_service(name, options());
    second.wait_for_log("rescued 1 jobs an earlier instance of this host held", 1);
    poll_until(
        &second,
        "the second instance's run at the gate",
        EVENT_TIMEOUT,
        || (count(&mut db, gated) == 2).then_some(()),
    );
    // The second run's backend frozen, the gate opened: the first run goes on alone to its
    // completion, which must not take: the job is the second claim's now.
    let second_backend: i32 = db
        .query_one(
            "SELECT backend_pid FROM forkpool.jobs WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    let frozen = cluster.freeze(second_backend);
    db.batch_execute("SELECT pg_advisory_unlock(727003)")
        .unwrap();
    let lost = "lost the lease";
    let state: String = poll_until(&first, "the first run's completion", EVENT_TIMEOUT, || {
        let state: String = db
            .query_one("SELECT state FROM forkpool.jobs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        (state == "completed" || first.logs().contains(lost)).then_some(state)
    });
    assert_eq!(
        state, "running",
        "the first instance's worker completed a job taken back from it"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM effects"),
        0,
        "its effect stayed"
    );
    drop(frozen);
    wait_all_completed(&second, &mut db, EVENT_TIMEOUT);
    let row = db
        .query_one(
            "SELECT attempt, claim_count, (result->>'pid')::int4 FROM forkpool.jobs WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let (attempt, claims, pid): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((attempt, claims), (2, 2));
    assert_eq!(
        vec![pid],
        second.worker_pids(),
        "the job was completed by another worker than the second instance's"
    );
    assert_one_effect_per_job(&mut db, 1);
}
