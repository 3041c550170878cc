//! The durable-job commands end to end (DESIGN §4, §12): `forkpool enqueue`, `result`,
//! `cancel`, `queue` (list, pause, resume) and `migrate` run as the real binary against a
//! real service and cluster, and each exit code is the one the contract names.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;
use support::{forkpool_command, Cluster, Service, ServiceOptions, APP_DATABASE};

/// Fails for good at its first attempt: division by zero, one attempt allowed.
const DIVIDE_BY_ZERO: &str = r#"
sql = "SELECT 1/0 AS never"
max_attempts = 1
"#;

/// One durable service for the tests of this binary: durable jobs in its database, idle
/// slots claiming every 100 ms besides the wake-ups.
fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    Service::shared(&SERVICE, || {
        let service = Service::start(
            ServiceOptions::on(Cluster::shared())
                .durable()
                .queue_key("poll_interval", "\"100ms\"")
                .job("divide_by_zero", DIVIDE_BY_ZERO),
        );
        service.wait_for_log("queue ready", 1);
        service
    })
}

/// `forkpool COMMAND --socket <the service's> ARGS...`
fn on_service(command: &str, args: &[&str]) -> Output {
    let socket = service().socket.to_str().expect("a UTF-8 socket path");
    let mut all = vec![command, "--socket", socket];
    all.extend_from_slice(args);
    forkpool_command(&all)
}

/// The exit code, stdout as JSON, and a description for assertion messages.
fn answer(output: &Output) -> (Option<i32>, Value, String) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let described = format!(
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status.code()
    );
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{described}"));
    (output.status.code(), json, described)
}

#[test]
fn enqueue_wait_completes_with_exit_0_and_prints_the_rows() {
    let (code, answer, out) = answer(&on_service(
        "enqueue",
        &["add", r#"{"a": 41}"#, "--wait", "30"],
    ));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(answer["ok"], true, "{out}");
    let job = &answer["result"];
    assert_eq!(job["state"], "completed", "{out}");
    assert_eq!(job["job"], "add", "{out}");
    assert_eq!(job["result"]["rows"][0]["sum"], 42, "{out}");
    assert!(job["attempted_at"].is_string(), "{out}");
    assert!(
        out.contains(&format!("enqueued job {}", job["job_id"])),
        "the id on stderr: {out}"
    );
}

#[test]
fn enqueue_without_wait_prints_the_id_and_result_waits_for_the_end() {
    let (code, enqueued, out) = answer(&on_service(
        "enqueue",
        &[
            "add",
            r#"{"a": 1, "b": 2}"#,
            "--queue",
            "cli",
            "--priority",
            "-5",
        ],
    ));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(enqueued["result"]["state"], "available", "{out}");
    assert_eq!(enqueued["result"]["duplicate"], false, "{out}");
    let id = enqueued["result"]["job_id"].to_string();

    let (code, result, out) = answer(&on_service("result", &[&id, "--wait", "30"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(result["result"]["state"], "completed", "{out}");
    assert_eq!(result["result"]["queue"], "cli", "{out}");
    assert_eq!(result["result"]["result"]["rows"][0]["sum"], 3, "{out}");
}

#[test]
fn a_job_that_fails_for_good_exits_1_with_wait() {
    let (code, answer, out) = answer(&on_service("enqueue", &["divide_by_zero", "--wait"]));
    assert_eq!(code, Some(1), "{out}");
    let job = &answer["result"];
    assert_eq!(job["state"], "discarded", "{out}");
    assert_eq!(job["attempt"], 1, "{out}");
    assert_eq!(job["errors"][0]["kind"], "db_error", "{out}");
    assert_eq!(job["errors"][0]["sqlstate"], "22012", "{out}");
}

#[test]
fn a_refused_enqueue_exits_1_and_bad_arguments_exit_2() {
    let (code, answer, out) = answer(&on_service("enqueue", &["no_such_job"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(answer["error"]["kind"], "unknown_job", "{out}");

    let not_object = on_service("enqueue", &["add", "[1]"]);
    assert_eq!(not_object.status.code(), Some(2));
    let bad_time = on_service("enqueue", &["add", r#"{"a": 1}"#, "--at", "tomorrow"]);
    assert_eq!(bad_time.status.code(), Some(2));
    let both = on_service(
        "enqueue",
        &[
            "add",
            r#"{"a": 1}"#,
            "--at",
            "2030-01-01T00:00:00Z",
            "--in",
            "5m",
        ],
    );
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn result_of_an_unknown_id_exits_1_with_not_found() {
    let (code, answer, out) = answer(&on_service("result", &["987654321"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(answer["ok"], false, "{out}");
    assert_eq!(answer["error"]["kind"], "not_found", "{out}");
}

#[test]
fn cancel_of_a_scheduled_job_exits_0_and_result_then_shows_cancelled() {
    let (code, enqueued, out) = answer(&on_service(
        "enqueue",
        &["add", r#"{"a": 1}"#, "--in", "1h"],
    ));
    assert_eq!(code, Some(0), "{out}");
    let id = enqueued["result"]["job_id"].to_string();

    let (code, cancelled, out) = answer(&on_service("cancel", &[&id]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(cancelled["result"]["cancelled"], true, "{out}");
    assert_eq!(cancelled["result"]["state"], "cancelled", "{out}");

    let (code, result, out) = answer(&on_service("result", &[&id]));
    assert_eq!(code, Some(1), "a cancelled job is not a success: {out}");
    assert_eq!(result["result"]["state"], "cancelled", "{out}");

    let (code, again, out) = answer(&on_service("cancel", &[&id]));
    assert_eq!(code, Some(1), "nothing left to cancel: {out}");
    assert_eq!(again["result"]["cancelled"], false, "{out}");

    let (code, missing, out) = answer(&on_service("cancel", &["987654321"]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(missing["error"]["kind"], "not_found", "{out}");
}

#[test]
fn a_wait_that_runs_out_exits_1_naming_the_state() {
    let (_, enqueued, out) = answer(&on_service(
        "enqueue",
        &["add", r#"{"a": 1}"#, "--in", "1h"],
    ));
    let id = enqueued["result"]["job_id"].to_string();
    let (code, result, out2) = answer(&on_service("result", &[&id, "--wait", "0.3"]));
    assert_eq!(
        code,
        Some(0),
        "still waiting is not a failure for `result`: {out}\n{out2}"
    );
    assert_eq!(result["result"]["state"], "available", "{out2}");
    on_service("cancel", &[&id]);

    let waited = on_service(
        "enqueue",
        &["add", r#"{"a": 1}"#, "--in", "1h", "--wait", "0.3"],
    );
    let (code, result, out) = answer(&waited);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(result["result"]["state"], "available", "{out}");
    assert!(out.contains("the wait ended first"), "{out}");
    on_service("cancel", &[&result["result"]["job_id"].to_string()]);
}

#[test]
fn unreachable_socket_exits_3() {
    for args in [
        &[
            "enqueue",
            "--socket",
            "/nonexistent/x.sock",
            "add",
            r#"{"a": 1}"#,
        ][..],
        &[
            "enqueue",
            "--socket",
            "/nonexistent/x.sock",
            "add",
            "--wait",
        ][..],
        &["result", "--socket", "/nonexistent/x.sock", "1"][..],
        &["cancel", "--socket", "/nonexistent/x.sock", "1"][..],
    ] {
        let output = forkpool_command(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot reach forkpool at"), "{stderr}");
    }
}

/// A configuration whose `[databases.main]` is `url` and whose queue is `queue_database`.
fn write_config(dir: &Path, url: &str, queue_database: &str, extra: &str) -> String {
    let path = dir.join("forkpool.toml");
    std::fs::write(
        &path,
        format!(
            "[databases.main]\nurl = {url:?}\n{extra}\n[queue]\ndatabase = {queue_database:?}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn migrate_twice_on_a_fresh_database_is_idempotent() {
    let cluster = Cluster::shared();
    cluster.execute("CREATE DATABASE cli_migrate OWNER app");
    let url = cluster
        .tcp_url("require")
        .replace(&format!("dbname={APP_DATABASE}"), "dbname=cli_migrate");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &url, "main", "");

    let first = forkpool_command(&["migrate", "--config", &config]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(0), "{stdout}{:?}", first.stderr);
    let version = forkpool::queue::schema::SCHEMA_VERSION;
    assert_eq!(
        stdout.trim(),
        format!("schema at version {version} (was 0)")
    );
    let second = forkpool_command(&["migrate", "--config", &config]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!("schema at version {version} (was {version})")
    );
    let versions = cluster
        .superuser_in("cli_migrate")
        .query("SELECT count(*) FROM forkpool.schema_version", &[]);
    assert_eq!(
        versions.unwrap()[0].get::<_, i64>(0),
        i64::from(forkpool::queue::schema::SCHEMA_VERSION)
    );
}

#[test]
fn migrate_refuses_a_newer_schema_an_unreachable_database_and_durable_jobs_off() {
    let cluster = Cluster::shared();
    cluster.execute("CREATE DATABASE cli_migrate_newer OWNER app");
    let url = cluster.tcp_url("require").replace(
        &format!("dbname={APP_DATABASE}"),
        "dbname=cli_migrate_newer",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &url, "main", "");
    assert_eq!(
        forkpool_command(&["migrate", "--config", &config])
            .status
            .code(),
        Some(0)
    );
    cluster
        .superuser_in("cli_migrate_newer")
        .batch_execute("INSERT INTO forkpool.schema_version (version) VALUES (99)")
        .unwrap();
    let newer = forkpool_command(&["migrate", "--config", &config]);
    let stderr = String::from_utf8_lossy(&newer.stderr);
    assert_eq!(newer.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("version 99"), "{stderr}");

    // Nothing listens on a port just released: refused at once, retried until the timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("host=127.0.0.1 port={port} user=app dbname=app sslmode=disable");
    let config = write_config(
        dir.path(),
        &nowhere,
        "main",
        "checkout_timeout = \"1s\"\nconnect_timeout = \"500ms\"",
    );
    let unreachable = forkpool_command(&["migrate", "--config", &config]);
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("migrating database `main`"), "{stderr}");

    let config = write_config(dir.path(), &url, "", "");
    let off = forkpool_command(&["migrate", "--config", &config]);
    let stderr = String::from_utf8_lossy(&off.stderr);
    assert_eq!(off.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("durable jobs are off"), "{stderr}");
}

/// A queue name no other test or earlier run has used.
fn fresh_queue(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// The row of `queue` in a `queues` result, if it is listed.
fn listed<'a>(queues: &'a Value, queue: &str) -> Option<&'a Value> {
    queues["queues"]
        .as_array()?
        .iter()
        .find(|row| row["queue"] == queue)
}

#[test]
fn queue_pause_lists_the_queue_paused_holds_its_jobs_and_resume_runs_them() {
    let queue = fresh_queue("cli-paused");
    let (code, paused, out) = answer(&on_service("queue", &["pause", &queue]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        paused["result"],
        serde_json::json!({"queue": queue, "paused": true}),
        "{out}"
    );

    // Paused before the job is stored: no claim takes it, and `queues` counts it now (the
    // `queues` op counts when asked, not every 2 s like `status`).
    let (code, enqueued, out) = answer(&on_service(
        "enqueue",
        &["add", r#"{"a": 1}"#, "--queue", &queue],
    ));
    assert_eq!(code, Some(0), "{out}");
    let id = enqueued["result"]["job_id"].to_string();
    let (code, queues, out) = answer(&on_service("queue", &["--json"]));
    assert_eq!(code, Some(0), "{out}");
    let row = listed(&queues, &queue).unwrap_or_else(|| panic!("{queue} not listed: {out}"));
    assert_eq!(row["paused"], true, "{out}");
    assert_eq!(row["available"], 1, "{out}");
    assert_eq!(row["running"], 0, "{out}");
    assert_eq!(row["completed"], 0, "{out}");

    let table = on_service("queue", &[]);
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("queue ") && stdout.lines().next().unwrap().ends_with("  paused"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{queue} ")))
        .unwrap_or_else(|| panic!("no line for {queue}:\n{stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1..7], ["1", "0", "0", "0", "0", "0"], "{line}");
    assert_eq!(fields.last(), Some(&"yes"), "{line}");

    // --socket after the subcommand too.
    let socket = service().socket.to_str().unwrap();
    let (code, resumed, out) = answer(&forkpool_command(&[
        "queue", "resume", &queue, "--socket", socket,
    ]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        resumed["result"],
        serde_json::json!({"queue": queue, "paused": false}),
        "{out}"
    );
    let (code, result, out) = answer(&on_service("result", &[&id, "--wait", "30"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(result["result"]["state"], "completed", "{out}");
    let (_, queues, out) = answer(&on_service("queue", &["--json"]));
    let row = listed(&queues, &queue).unwrap_or_else(|| panic!("{queue} not listed: {out}"));
    assert_eq!(row["paused"], false, "{out}");
    assert_eq!(row["completed"], 1, "{out}");
}

#[test]
fn queue_commands_exit_1_when_refused_2_on_bad_usage_3_when_unreachable() {
    let (code, refused, out) = answer(&on_service("queue", &["pause", ""]));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(refused["error"]["kind"], "bad_request", "{out}");

    for args in [&["queue", "pause"][..], &["queue", "frobnicate"][..]] {
        let output = forkpool_command(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    }

    for args in [
        &["queue", "--socket", "/nonexistent/x.sock"][..],
        &["queue", "--json", "--socket", "/nonexistent/x.sock"][..],
        &[
            "queue",
            "pause",
            "emails",
            "--socket",
            "/nonexistent/x.sock",
        ][..],
        &[
            "queue",
            "--socket",
            "/nonexistent/x.sock",
            "resume",
            "emails",
        ][..],
    ] {
        let output = forkpool_command(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot reach forkpool at"), "{stderr}");
    }
}

#[test]
fn queue_listing_exits_1_when_durable_jobs_are_off() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let socket = service.socket.to_str().unwrap();
    let output = forkpool_command(&["queue", "--socket", socket]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad_request"), "{stderr}");
}
