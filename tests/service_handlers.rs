//! Rust handlers through the library: the examples built on `forkpool::Service`, driven over
//! their socket against a real PostgreSQL.

mod support;

use serde_json::{json, Value};
use support::{Cluster, Service, ServiceOptions};

fn count(cluster: &Cluster, sql: &str) -> i64 {
    cluster.query_value(sql).unwrap().parse().unwrap()
}

#[test]
fn concurrent_uploads_across_workers_count_every_item_exactly_once() {
    let cluster = Cluster::start();
    let mut options = ServiceOptions::on(&cluster).example("upload_worker");
    options.workers = 3;
    let service = Service::start(options);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let socket = service.socket.clone();
            std::thread::spawn(move || {
                let mut client = support::Client::connect(&socket);
                let mut workers = std::collections::BTreeSet::new();
                for i in 0..20 {
                    let parent = (t * 20 + i) % 4;
                    let answer = client.request(json!({
                        "id": i, "op": "run", "job": "upload_file",
                        "args": {"parent_id": parent, "name": format!("f{t}-{i}"), "content": "x"}
                    }));
                    assert_eq!(answer["ok"], true, "{answer}");
                    assert!(answer["result"]["value"]["id"].as_i64().unwrap() > 0);
                    workers.insert(answer["result"]["worker"].as_u64().unwrap());
                }
                workers
            })
        })
        .collect();
    let mut workers = std::collections::BTreeSet::new();
    for thread in threads {
        workers.extend(thread.join().unwrap());
    }
    assert!(
        workers.len() > 1,
        "the load spread over several workers: {workers:?}"
    );
    assert_eq!(count(&cluster, "SELECT count(*) FROM uploads"), 120);
    assert_eq!(
        count(&cluster, "SELECT sum(child_count) FROM upload_parents"),
        120
    );
    assert_eq!(
        count(
            &cluster,
            "SELECT count(*) FROM upload_parents p WHERE child_count <> \
             (SELECT count(*) FROM uploads u WHERE u.parent_id = p.id)"
        ),
        0
    );
    let jobs = service.client().request(json!({"id": 1, "op": "jobs"}));
    let listed: Vec<&Value> = jobs["result"]["jobs"].as_array().unwrap().iter().collect();
    assert!(listed.iter().any(|j| j["name"] == "upload_file"), "{jobs}");
    assert!(
        listed.iter().any(|j| j["name"] == "add"),
        "job files are served too: {jobs}"
    );
    let answer = service.submit("upload_file", json!({"name": "no parent"}));
    assert_eq!(answer["error"]["kind"], "invalid_args", "{answer}");
}

/// The `handler_faults` example with one worker, one executor thread and one connection,
/// so every job runs on the session the previous job left behind. `reset_on_return` is the
/// database's: with "none", checkin ends no transaction, so only the handler's own
/// transaction helper can have rolled back.
fn faults_service(cluster: &Cluster, reset_on_return: &str) -> Service {
    // Once per test binary: concurrent CREATE TABLE IF NOT EXISTS can collide in pg_type.
    static TABLE: std::sync::Once = std::sync::Once::new();
    TABLE.call_once(|| {
        cluster
            .execute("CREATE TABLE fault_notes (note text); ALTER TABLE fault_notes OWNER TO app")
    });
    let mut options = ServiceOptions::on(cluster)
        .example("handler_faults")
        .database_key("pool_size", "1")
        .database_key("reset_on_return", &format!("\"{reset_on_return}\""));
    options.workers = 1;
    options.threads = 1;
    Service::start(options)
}

fn notes(cluster: &Cluster, note: &str) -> i64 {
    count(
        cluster,
        &format!("SELECT count(*) FROM fault_notes WHERE note = '{note}'"),
    )
}

/// Runs `commits_whatever_is_open`: commits its own note and whatever transaction it found
/// open on the connection. Returns the backend it ran on.
fn commit_a_witness(service: &Service, note: &str) -> i64 {
    let answer = service.submit("commits_whatever_is_open", json!({ "note": note }));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        answer["result"]["value"]["open_transaction"],
        Value::Null,
        "the job found a transaction left open on its connection: {answer}"
    );
    answer["result"]["value"]["backend"].as_i64().unwrap()
}

#[test]
fn an_enqueued_handler_completes_its_job_in_its_own_transaction() {
    let cluster = Cluster::shared();
    faults_service(cluster, "rollback"); // creates the table once
    let mut options = ServiceOptions::on(cluster)
        .example("handler_faults")
        .durable()
        .queue_key("poll_interval", "\"100ms\"");
    options.workers = 1;
    // The worker says at debug which of them completed the job.
    options
        .env
        .push(("RUST_LOG".into(), "info,forkpool::queue=debug".into()));
    let service = Service::start(options);
    let answer = service.client().request(json!({"id": 1, "op": "enqueue",
        "job": "notes_exactly_once", "args": {"note": "durable-handler"}}));
    let id = answer["result"]["job_id"].as_i64().expect("a job id");
    let done = service
        .client()
        .request(json!({"id": 2, "op": "result", "job_id": id,
        "wait_ms": 30_000}));
    assert_eq!(done["result"]["state"], "completed", "{done}");
    assert_eq!(
        done["result"]["result"]["value"],
        json!({"noted": "durable-handler", "durable": true})
    );
    assert_eq!(notes(cluster, "durable-handler"), 1);
    assert!(
        service
            .logs()
            .contains(&format!("job {id} completed by its handler (exactly once)")),
        "the worker completed it instead of the handler's transaction"
    );
    // As a `run` job it is a plain transaction.
    let run = service.submit("notes_exactly_once", json!({"note": "run-handler"}));
    assert_eq!(run["result"]["value"]["durable"], false, "{run}");
    assert_eq!(notes(cluster, "run-handler"), 1);
}

#[test]
fn a_handler_error_rolls_back_what_it_wrote() {
    let cluster = Cluster::shared();
    // No reset at checkin: if the helper did not roll back, the insert would still be open
    // on the connection, and the next job's COMMIT would make it visible.
    let service = faults_service(cluster, "none");
    let backend = commit_a_witness(&service, "before error");
    let answer = service.submit("fails_after_insert", json!({"note": "error"}));
    assert_eq!(answer["error"]["kind"], "job_failed", "{answer}");
    assert_eq!(answer["error"]["message"], "the external service said no");
    assert_the_helper_rolled_back(&service, cluster, backend, "error");
}

/// The job after a failed one runs on the same session (`backend`) and commits whatever is
/// open there: its own note is written, and the failed job's `note` is not.
fn assert_the_helper_rolled_back(service: &Service, cluster: &Cluster, backend: i64, note: &str) {
    let witness = format!("after {note}");
    assert_eq!(
        commit_a_witness(service, &witness),
        backend,
        "the next job ran on the same connection"
    );
    assert_eq!(notes(cluster, &witness), 1);
    assert_eq!(notes(cluster, note), 0, "the helper rolled the insert back");
}

#[test]
fn a_panicking_handler_answers_internal_writes_nothing_and_the_worker_serves_on() {
    let cluster = Cluster::shared();
    // As above: with no reset at checkin, only the helper's rollback can undo the insert.
    let service = faults_service(cluster, "none");
    let pid_before = service.worker_pids();
    let backend = commit_a_witness(&service, "before panic");
    let answer = service.submit("panics_after_insert", json!({"note": "panic"}));
    assert_eq!(answer["error"]["kind"], "internal", "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("a bug in the handler"));
    assert_the_helper_rolled_back(&service, cluster, backend, "panic");
    let answer = service.submit("add", json!({"a": 1}));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        service.worker_pids(),
        pid_before,
        "the same worker carried on"
    );
}

#[test]
fn a_transaction_left_open_by_a_handler_is_reset_on_return() {
    let cluster = Cluster::shared();
    let service = faults_service(cluster, "rollback");
    let answer = service.submit("leaves_transaction_open", json!({"note": "open"}));
    assert_eq!(answer["result"]["value"]["left_open"], true, "{answer}");
    let backend = answer["result"]["value"]["backend"].as_i64().unwrap();
    // The next job gets the same session and commits whatever is open on it: had checkin
    // not rolled the leftover back, the job would find it open and commit the insert.
    assert_eq!(
        commit_a_witness(&service, "after open"),
        backend,
        "the next job ran on the same connection"
    );
    assert_eq!(notes(cluster, "after open"), 1);
    assert_eq!(
        notes(cluster, "open"),
        0,
        "the insert was rolled back at checkin"
    );
}
