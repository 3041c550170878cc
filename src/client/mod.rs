//! The client-side commands: `submit`, `status` (as a table, JSON or Prometheus text) and
//! `bench`. They talk to a running service over its socket like any client; the master
//! imports nothing from here.

pub(crate) mod bench;
mod status_prometheus;
mod status_table;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{json, Value};

use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// Sends one request and reads its answer.
fn request(socket: &Path, request: &Value) -> Result<Value, i32> {
    let unreachable = |e: std::io::Error| {
        eprintln!(
            "cannot reach forkpool at {}: {e} — is the service running?",
            socket.display()
        );
        EXIT_UNREACHABLE
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = request.to_string();
    line.push('\n');
    // A refused connection (`forbidden`, `too_many_clients`) is answered at once and closed,
    // maybe before this write arrives: the write then fails, and the answer is read anyway.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let received = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        sent.and(received).map_err(unreachable)?;
        eprintln!(
            "forkpool at {} closed the connection without answering",
            socket.display()
        );
        return Err(EXIT_UNREACHABLE);
    }
    serde_json::from_str(&answer).map_err(|e| {
        eprintln!("forkpool answered something that is not JSON ({e}): {answer}");
        EXIT_FAILED
    })
}

pub(crate) fn submit(socket: &Path, job: &str, args: Option<&str>, timeout_ms: Option<u64>) -> i32 {
    let args: Value = match args.map(serde_json::from_str).transpose() {
        Ok(Some(args @ Value::Object(_))) => args,
        Ok(None) => json!({}),
        Ok(Some(_)) => {
            eprintln!("ARGS_JSON must be a JSON object, e.g. '{{\"a\": 1}}'");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("ARGS_JSON is not JSON: {e}");
            return EXIT_USAGE;
        }
    };
    let mut body = json!({"id": 1, "op": "run", "job": job, "args": args});
    if let Some(ms) = timeout_ms {
        body["timeout_ms"] = json!(ms);
    }
    match request(socket, &body) {
        Ok(answer) => {
            println!("{}", serde_json::to_string_pretty(&answer).expect("JSON"));
            if answer["ok"] == json!(true) {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Err(code) => code,
    }
}

pub(crate) fn status(socket: &Path, as_json: bool, as_prometheus: bool) -> i32 {
    let answer = match request(socket, &json!({"id": 1, "op": "status"})) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if answer["ok"] != json!(true) {
        eprintln!("{answer}");
        return EXIT_FAILED;
    }
    let status = &answer["result"];
    if as_json {
        println!("{}", serde_json::to_string_pretty(status).expect("JSON"));
    } else if as_prometheus {
        print!("{}", status_prometheus::render(status));
    } else {
        print!("{}", status_table::render(status));
    }
    EXIT_OK
}
