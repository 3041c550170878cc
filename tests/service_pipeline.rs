//! `workers.pipeline`: several `run` jobs handed to a worker in one write and run pipelined
//! on one connection, each still with its own answer, its own error and its own timeout.
//!
//! Jobs reach one worker together when one client writes their lines in one write: the
//! master reads them in one wake-up, hands them over in one write, and the worker's executor
//! finds them in one read.

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{Client, Cluster, Service, ServiceOptions};

/// One worker, one executor, `pipeline` jobs at once.
fn pipelined_service(pipeline: usize) -> Service {
    let options = ServiceOptions {
        workers: 1,
        ..ServiceOptions::on(Cluster::shared())
    };
    Service::start(
        options
            .worker_key("pipeline", &pipeline.to_string())
            .job(
                "divide",
                "sql = \"SELECT 100 / :d AS q\"\n[params]\nd = \"int8\"\n",
            )
            .job(
                "backend",
                "sql = \"SELECT pg_backend_pid() AS pid, :n::int8 AS n\"\n[params]\nn = \"int8\"\n",
            ),
    )
}

/// Writes every request as one line, all in one write.
fn send_together(client: &mut Client, requests: &[Value]) {
    let mut bytes = Vec::new();
    for request in requests {
        bytes.extend_from_slice(request.to_string().as_bytes());
        bytes.push(b'\n');
    }
    client.send_raw(&bytes);
}

/// The next `count` answers, by id.
fn answers(client: &mut Client, count: usize) -> BTreeMap<String, Value> {
    (0..count)
        .map(|_| {
            let answer = client.recv().expect("an answer");
            (answer["id"].as_str().unwrap().to_string(), answer)
        })
        .collect()
}

#[test]
fn jobs_handed_over_together_each_get_their_own_answer_on_one_connection() {
    let service = pipelined_service(8);
    let mut client = service.client();
    let requests: Vec<Value> = (0..8)
        .map(|n| json!({"id": format!("j{n}"), "op": "run", "job": "backend", "args": {"n": n}}))
        .collect();
    send_together(&mut client, &requests);
    let answers = answers(&mut client, 8);
    let mut backends = Vec::new();
    for n in 0..8 {
        let answer = &answers[&format!("j{n}")];
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["result"]["rows"][0]["n"], json!(n), "{answer}");
        backends.push(answer["result"]["rows"][0]["pid"].clone());
    }
    backends.dedup();
    assert_eq!(
        backends.len(),
        1,
        "one worker, one connection: {backends:?}"
    );
}

#[test]
fn a_failing_job_in_a_pipelined_batch_does_not_fail_its_neighbours() {
    let service = pipelined_service(8);
    let mut client = service.client();
    let divisors = [5, 0, 4, 0, 2, 1];
    let requests: Vec<Value> = divisors
        .iter()
        .enumerate()
        .map(
            |(i, d)| json!({"id": format!("d{i}"), "op": "run", "job": "divide", "args": {"d": d}}),
        )
        .collect();
    send_together(&mut client, &requests);
    let answers = answers(&mut client, divisors.len());
    for (i, d) in divisors.iter().enumerate() {
        let answer = &answers[&format!("d{i}")];
        if *d == 0 {
            assert_eq!(answer["error"]["kind"], "db_error", "{answer}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("division by zero"),
                "{answer}"
            );
        } else {
            assert_eq!(answer["ok"], true, "{answer}");
            assert_eq!(answer["result"]["rows"][0]["q"], json!(100 / d), "{answer}");
        }
    }
    // The connection serves on: the errors ended at their own Sync.
    assert_eq!(service.submit("divide", json!({"d": 10}))["ok"], true);
}

/// The trade `workers.pipeline` makes: a job sent on the same connection behind a slow one
/// waits for it. Its own timeout still answers it on time, alone: the slow job, which still
/// has time, is not cancelled and succeeds.
#[test]
fn a_job_behind_a_slow_one_times_out_on_its_own_and_the_slow_one_succeeds() {
    let service = pipelined_service(2);
    let mut client = service.client();
    let slow = json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 2}});
    let quick = json!({"id": "quick", "op": "run", "job": "add", "args": {"a": 1},
                       "timeout_ms": 300});
    let sent = Instant::now();
    send_together(&mut client, &[slow, quick]);
    let first = client.recv().expect("an answer");
    assert_eq!(first["id"], "quick", "{first}");
    assert_eq!(first["error"]["kind"], "timeout", "{first}");
    let second = client.recv().expect("an answer");
    assert_eq!(second["id"], "slow", "{second}");
    assert_eq!(second["ok"], true, "{second}");
    eprintln!("answered in {:?}", sent.elapsed());
    // The connection was reset and serves on.
    assert_eq!(service.submit("add", json!({"a": 2}))["ok"], true);
}

/// No prefetch: a job that comes while the worker's one executor is busy with its batch
/// waits in the master's queue (where a worker's death cannot touch it), not on the worker.
#[test]
fn a_busy_executor_is_handed_no_more_jobs_until_its_batch_is_answered() {
    let service = pipelined_service(4);
    let mut client = service.client();
    client.send(json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 3}}));
    service.wait_for_status("the slow job on the worker", |status| {
        status["workers"][0]["current"]
            .as_array()
            .is_some_and(|current| current.len() == 1)
    });
    // The pong is written in the turn that read both lines; the master hands out jobs at
    // the start of every turn, so by the time it reads the status request below it has
    // dispatched what it could.
    send_together(
        &mut client,
        &[
            json!({"id": "later", "op": "run", "job": "add", "args": {"a": 1}}),
            json!({"id": "ping", "op": "ping"}),
        ],
    );
    assert_eq!(client.recv().expect("the pong")["id"], "ping");
    let status = service.status();
    assert_eq!(status["queue"]["depth"], 1, "{status}");
    let current = status["workers"][0]["current"].as_array().unwrap().len();
    assert_eq!(current, 1, "{status}");
    let answers = answers(&mut client, 2);
    assert_eq!(answers["slow"]["ok"], true, "{}", answers["slow"]);
    assert_eq!(answers["later"]["ok"], true, "{}", answers["later"]);
}

#[test]
fn every_job_of_a_batch_is_answered_worker_lost_when_its_worker_is_killed() {
    let service = pipelined_service(4);
    let mut client = service.client();
    let requests: Vec<Value> = (0..4)
        .map(
            |n| json!({"id": format!("s{n}"), "op": "run", "job": "sleep", "args": {"seconds": 5}}),
        )
        .collect();
    send_together(&mut client, &requests);
    let status = service.wait_for_status("four jobs on the worker", |status| {
        status["workers"][0]["current"]
            .as_array()
            .is_some_and(|current| current.len() == 4)
    });
    let victim = status["workers"][0]["pid"].as_i64().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let answers = answers(&mut client, 4);
    for n in 0..4 {
        let answer = &answers[&format!("s{n}")];
        assert_eq!(answer["error"]["kind"], "worker_lost", "{answer}");
    }
    service.wait_for_log(") ready", 2);
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}
