//! The socket protocol end to end: the real binary, a real PostgreSQL over verified TLS.

mod support;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{json, Value};
use support::{wait_until_within, Cluster, ClusterOptions, Service, ServiceOptions};

/// Jobs these tests need besides the repository's own `workers/`.
const DIVIDE: &str = r#"
sql = "SELECT 10 / :d AS q"
[params]
d = "int4"
"#;

const MANY_ROWS: &str = r#"
max_rows = 5
sql = "SELECT g AS n FROM generate_series(1, :n) AS g"
[params]
n = "int4"
"#;

/// Two statements: the second fails for a negative amount, after the first wrote a row.
const TRANSFER: &str = r#"
sql = [
  "INSERT INTO ledger (note) VALUES (:note)",
  "SELECT 1 / (CASE WHEN :amount < 0 THEN 0 ELSE 1 END) AS ok",
]
[params]
note = "text"
amount = "int4"
"#;

/// Opens a transaction of its own and leaves it open.
const LEFT_OPEN: &str = r#"
transaction = false
sql = ["BEGIN", "INSERT INTO ledger (note) VALUES (:note)"]
[params]
note = "text"
"#;

const TYPES: &str = r#"
sql = """
SELECT true AS b, 7::int2 AS i2, 8::int4 AS i4, 9000000000::int8 AS i8,
       1.5::float4 AS f4, 2.25::float8 AS f8, 12.50::numeric AS num,
       'hé'::text AS t, '{"k": [1, null]}'::json AS j, '{"k": 2}'::jsonb AS jb,
       '2026-11-21'::date AS d, '2026-11-21 10:11:12.5'::timestamp AS ts,
       '2026-11-21 10:11:12+02'::timestamptz AS tstz,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '\\x0102ff'::bytea AS by,
       NULL::text AS nothing, :echo AS echo
"""
[params]
echo = "text"
"#;

/// One service for the tests that do not need their own, stopped and removed at process exit
/// (a static is never dropped; see `Service::shared`).
fn shared_service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    Service::shared(&SERVICE, || {
        let cluster = Cluster::shared();
        cluster.execute(
            "CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, note text); \
             ALTER TABLE ledger OWNER TO app",
        );
        Service::start(
            ServiceOptions::on(cluster)
                .job("divide", DIVIDE)
                .job("many_rows", MANY_ROWS)
                .job("transfer", TRANSFER)
                .job("left_open", LEFT_OPEN)
                .job("types", TYPES),
        )
    })
}

/// No session stays idle in a transaction. The worker answers before it checks the
/// connection in (and rolls back there), so the count is awaited, not read once: a session
/// still open after 10 s is one the checkin never closed.
fn assert_no_session_idle_in_transaction(cluster: &Cluster) {
    let patience = std::time::Duration::from_secs(10);
    wait_until_within("no session is idle in a transaction", patience, || {
        let open = cluster.query_value(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        );
        open.as_deref() == Some("0")
    });
}

fn error_kind(answer: &Value) -> &str {
    assert_eq!(answer["ok"], false, "expected an error: {answer}");
    answer["error"]["kind"].as_str().unwrap()
}

#[test]
fn a_job_runs_end_to_end_with_its_result_fields() {
    let service = shared_service();
    let answer = service.submit("add", json!({"a": 2, "b": 40}));
    assert_eq!(answer["ok"], true, "{answer}");
    let result = &answer["result"];
    assert_eq!(result["rows"], json!([{"sum": 42}]));
    assert_eq!(result["rows_affected"], json!([1]));
    assert!(result["worker"].as_u64().unwrap() >= 1);
    assert!(result["pid"].as_u64().unwrap() > 0);
    assert!(result["elapsed_ms"].as_f64().unwrap() > 0.0);
    // b has a default of 1.
    let answer = service.submit("add", json!({"a": 2}));
    assert_eq!(answer["result"]["rows"], json!([{"sum": 3}]));
}

#[test]
fn pipelined_requests_are_each_answered_once_under_their_own_id() {
    let service = shared_service();
    let mut client = service.client();
    for i in 0..200 {
        client.send(
            json!({"id": format!("r{i}"), "op": "run", "job": "add", "args": {"a": i, "b": 1000}}),
        );
    }
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let answer = client.recv().expect("an answer per request");
        assert_eq!(answer["ok"], true, "{answer}");
        let id = answer["id"].as_str().unwrap().to_string();
        let i: i64 = id[1..].parse().unwrap();
        assert_eq!(answer["result"]["rows"][0]["sum"], i + 1000, "{answer}");
        assert!(seen.insert(id), "answered twice: {answer}");
    }
    assert_eq!(seen.len(), 200);
    // Nothing more is on its way: the next line is the answer to a ping sent now.
    let answer = client.request(json!({"id": "after", "op": "ping"}));
    assert_eq!(answer["id"], "after", "an answer beyond the 200: {answer}");
}

#[test]
fn many_connections_at_once_each_get_their_answers() {
    let service = shared_service();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let socket = service.socket.clone();
            std::thread::spawn(move || {
                let mut client = support::Client::connect(&socket);
                for i in 0..25 {
                    let answer = client.request(
                        json!({"id": i, "op": "run", "job": "add", "args": {"a": t, "b": i}}),
                    );
                    assert_eq!(answer["id"], i);
                    assert_eq!(answer["result"]["rows"][0]["sum"], t + i, "{answer}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn malformed_requests_are_bad_request_and_the_connection_keeps_serving() {
    let service = shared_service();
    let mut client = service.client();
    client.send_raw(b"this is not json\n");
    let answer = client.recv().unwrap();
    assert_eq!(error_kind(&answer), "bad_request");
    assert_eq!(answer["id"], Value::Null);
    for (request, mentions) in [
        (
            json!({"id": 1, "op": "run", "job": 5}),
            "`job` must be a string",
        ),
        (
            json!({"id": 2, "op": "run", "job": "add", "args": [1]}),
            "`args` must be a JSON object",
        ),
        (
            json!({"id": 3, "op": "run", "job": "add", "timeout_ms": "soon"}),
            "timeout_ms",
        ),
        (
            json!({"id": 4, "op": "run", "job": "add", "arg": {}}),
            "unknown field `arg`",
        ),
        (json!({"id": 5}), "missing field `op`"),
    ] {
        let answer = client.request(request.clone());
        assert_eq!(error_kind(&answer), "bad_request", "{request}");
        assert_eq!(answer["id"], request["id"]);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }
    let answer = client.request(json!({"id": "after", "op": "ping"}));
    assert_eq!(answer["ok"], true, "{answer}");
}

#[test]
fn unknown_op_and_unknown_job_are_named() {
    let service = shared_service();
    let mut client = service.client();
    let answer = client.request(json!({"id": 1, "op": "frobnicate"}));
    assert_eq!(error_kind(&answer), "unknown_op");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("frobnicate"));
    let answer = client.request(json!({"id": 2, "op": "run", "job": "nope"}));
    assert_eq!(error_kind(&answer), "unknown_job");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`nope`") && message.contains("add"),
        "{message}"
    );
}

#[test]
fn invalid_args_name_the_argument() {
    let service = shared_service();
    for (args, mentions) in [
        (json!({}), "missing argument `a`"),
        (json!({"a": "two"}), "argument `a` must be int8"),
        (json!({"a": 1, "c": 3}), "unknown argument `c`"),
        (json!({"a": 1.5}), "`a`"),
    ] {
        let answer = service.submit("add", args.clone());
        assert_eq!(error_kind(&answer), "invalid_args", "{args}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }
    let answer = service.submit("divide", json!({"d": 3_000_000_000u64}));
    assert_eq!(error_kind(&answer), "invalid_args");
}

#[test]
fn db_error_carries_the_sqlstate_and_the_server_message() {
    let service = shared_service();
    let answer = service.submit("divide", json!({"d": 0}));
    assert_eq!(error_kind(&answer), "db_error");
    assert_eq!(answer["error"]["sqlstate"], "22012");
    assert_eq!(answer["error"]["message"], "division by zero");
    // The worker's connection is clean afterwards.
    assert_eq!(
        service.submit("divide", json!({"d": 5}))["result"]["rows"],
        json!([{"q": 2}])
    );
}

#[test]
fn a_failing_statement_rolls_back_the_whole_job() {
    let service = shared_service();
    let cluster = Cluster::shared();
    let answer = service.submit("transfer", json!({"note": "kept", "amount": 1}));
    assert_eq!(answer["result"]["rows_affected"], json!([1, 1]), "{answer}");
    let answer = service.submit("transfer", json!({"note": "rolled back", "amount": -1}));
    assert_eq!(error_kind(&answer), "db_error");
    assert_eq!(
        cluster.query_value("SELECT count(*) FROM ledger WHERE note = 'rolled back'"),
        Some("0".to_string())
    );
    assert_no_session_idle_in_transaction(cluster);
}

#[test]
fn a_transaction_a_job_leaves_open_is_rolled_back_when_its_connection_returns() {
    let service = shared_service();
    let cluster = Cluster::shared();
    let answer = service.submit("left_open", json!({"note": "left open"}));
    assert_eq!(answer["result"]["rows_affected"], json!([0, 1]), "{answer}");
    assert_eq!(
        cluster.query_value("SELECT count(*) FROM ledger WHERE note = 'left open'"),
        Some("0".to_string())
    );
    assert_no_session_idle_in_transaction(cluster);
}

#[test]
fn rows_past_max_rows_are_cut_and_flagged() {
    let service = shared_service();
    let answer = service.submit("many_rows", json!({"n": 8}));
    let result = &answer["result"];
    assert_eq!(result["rows"].as_array().unwrap().len(), 5, "{answer}");
    assert_eq!(result["truncated"], true);
    assert_eq!(result["rows_affected"], json!([8]));
    let answer = service.submit("many_rows", json!({"n": 3}));
    assert!(answer["result"].get("truncated").is_none(), "{answer}");
}

#[test]
fn result_columns_map_to_json_per_the_contract() {
    let service = shared_service();
    let answer = service.submit("types", json!({"echo": "'); DROP TABLE ledger; --"}));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        answer["result"]["rows"][0],
        json!({
            "b": true, "i2": 7, "i4": 8, "i8": 9_000_000_000u64,
            "f4": 1.5, "f8": 2.25, "num": "12.50",
            "t": "hé", "j": {"k": [1, null]}, "jb": {"k": 2},
            "d": "2026-11-21", "ts": "2026-11-21T10:11:12.500000",
            "tstz": "2026-11-21T08:11:12Z",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "by": "AQL/",
            "nothing": null, "echo": "'); DROP TABLE ledger; --"
        })
    );
}

#[test]
fn jobs_lists_the_catalog_and_ping_answers() {
    let service = shared_service();
    let mut client = service.client();
    let answer = client.request(json!({"id": 1, "op": "jobs"}));
    let jobs = answer["result"]["jobs"].as_array().unwrap();
    let add = jobs
        .iter()
        .find(|j| j["name"] == "add")
        .expect("add listed");
    assert_eq!(
        add["params"][0],
        json!({"name": "a", "type": "int8", "default": null})
    );
    assert_eq!(add["params"][1]["default"], 1);
    let answer = client.request(json!({"id": 2, "op": "ping"}));
    assert_eq!(answer["result"]["pong"], true);
}

#[test]
fn a_line_longer_than_the_limit_is_too_large_and_closes_the_connection() {
    let cluster = Cluster::shared();
    let service =
        Service::start(ServiceOptions::on(cluster).service_key("max_request_bytes", "2048"));
    let mut client = service.client();
    let long = format!(
        "{{\"id\":1,\"op\":\"run\",\"job\":\"add\",\"args\":{{\"a\":1,\"pad\":\"{}\"}}}}\n",
        "x".repeat(4000)
    );
    client.send_raw(long.as_bytes());
    let answer = client.recv().unwrap();
    assert_eq!(error_kind(&answer), "too_large");
    assert!(
        client.recv().is_none(),
        "the connection must be closed after too_large"
    );
    // Others are served as before.
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}

#[test]
fn a_full_queue_answers_queue_full_and_keeps_the_accepted_jobs() {
    let cluster = Cluster::shared();
    let mut options = ServiceOptions::on(cluster).service_key("queue_limit", "1");
    options.workers = 1;
    let service = Service::start(options);
    let mut client = service.client();
    for i in 0..4 {
        client.send(json!({"id": i, "op": "run", "job": "sleep", "args": {"seconds": 0.3}}));
    }
    let answers: Vec<Value> = (0..4).map(|_| client.recv().unwrap()).collect();
    let full = answers.iter().filter(|a| a["ok"] == false).count();
    assert!(full >= 1, "{answers:?}");
    for answer in &answers {
        if answer["ok"] == false {
            assert_eq!(error_kind(answer), "queue_full", "{answer}");
        }
    }
    // The first request is always accepted: it found the queue empty.
    let first = answers.iter().find(|a| a["id"] == 0).unwrap();
    assert_eq!(first["ok"], true, "{first}");
}

#[test]
fn with_the_database_down_jobs_answer_db_unavailable_and_recover() {
    let cluster = Cluster::start_with(ClusterOptions::default());
    let service = Service::start(
        ServiceOptions::on(&cluster)
            .database_key("checkout_timeout", "\"1s\"")
            .database_key("connect_timeout", "\"1s\""),
    );
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
    cluster.stop();
    let answer = service.submit("add", json!({"a": 1}));
    assert_eq!(error_kind(&answer), "db_unavailable");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("main") && message.contains("refused"),
        "the message names the database and why (the server refuses connections): {message}"
    );
    cluster.start_again();
    let answer = service.submit("add", json!({"a": 1}));
    assert_eq!(answer["ok"], true, "{answer}");
}

#[test]
fn the_service_starts_with_the_database_down() {
    let cluster = Cluster::start();
    cluster.stop();
    let service = Service::start(
        ServiceOptions::on(&cluster)
            .database_key("checkout_timeout", "\"500ms\"")
            .database_key("connect_timeout", "\"500ms\""),
    );
    assert_eq!(
        error_kind(&service.submit("now", json!({}))),
        "db_unavailable"
    );
}

#[test]
fn status_counts_the_jobs_run_and_their_rate() {
    let service = shared_service();
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
    let status = service.status();
    assert!(
        status["totals"]["succeeded"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["jobs_per_second"].as_f64().unwrap() > 0.0,
        "{status}"
    );
    assert_eq!(status["queue"]["limit"], 10000);
}

/// Reads answer lines until the service closes the connection (with a deadline).
fn answers_until_closed(stream: std::os::unix::net::UnixStream) -> Vec<Value> {
    use std::io::BufRead;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    std::io::BufReader::new(stream)
        .lines()
        .map(|line| {
            serde_json::from_str(&line.expect("an answer line before the deadline")).unwrap()
        })
        .collect()
}

#[test]
fn a_client_that_half_closes_gets_every_answer_then_the_connection_closes() {
    use std::io::Write;
    let service = shared_service();
    let mut stream = std::os::unix::net::UnixStream::connect(&service.socket).unwrap();
    // Two requests, then a third without its newline, then end of file on our side.
    stream
        .write_all(
            b"{\"id\":1,\"op\":\"run\",\"job\":\"sleep\",\"args\":{\"seconds\":0.2}}\n\
              {\"id\":2,\"op\":\"run\",\"job\":\"add\",\"args\":{\"a\":1,\"b\":2}}\n\
              {\"id\":3,\"op\":\"ping\"}",
        )
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answers = answers_until_closed(stream);
    let ids: BTreeSet<i64> = answers.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]), "{answers:?}");
    assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");

    // An unfinished last line that is not JSON is answered, not dropped.
    let mut stream = std::os::unix::net::UnixStream::connect(&service.socket).unwrap();
    stream.write_all(b"{\"id\":4,\"op\":").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let answers = answers_until_closed(stream);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(error_kind(&answers[0]), "bad_request");
}

#[test]
fn socat_piping_a_request_prints_its_answer() {
    let service = shared_service();
    let mut child = std::process::Command::new("socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", service.socket.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("socat is installed (.ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"id\":1,\"op\":\"run\",\"job\":\"add\",\"args\":{\"a\":1,\"b\":2}}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "socat printed {:?}: {e}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(answer["result"]["rows"][0]["sum"], 3, "{answer}");
}
