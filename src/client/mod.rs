//! The client-side commands: `submit`, `status` (as a table, JSON or Prometheus text),
//! `enqueue`, `result`, `cancel`, `queue`, `bench` and the operator's `ping`, `jobs`,
//! `reload`, `stop` and `scale` talk to a running service over its socket like any client;
//! `migrate` connects to the queue's database itself. The master imports nothing from here.

pub(crate) mod admin;
pub(crate) mod bench;
mod bench_durable;
pub(crate) mod durable;
mod load;
pub(crate) mod migrate;
pub(crate) mod queues;
mod status_table;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::metrics::{status_text, DURABLE_OUTCOMES, QUEUE_STATES};

/// Sends one request on a connection of its own and reads its answer, however long it takes.
fn request(socket: &Path, request: &Value) -> Result<Value, i32> {
    Connection::open(socket)?.ask(request, None)
}

/// One connection to the service, for commands that send several requests in turn.
pub(crate) struct Connection {
    socket: std::path::PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    /// Connects; an unreachable service is reported here (exit 3).
    pub(crate) fn open(socket: &Path) -> Result<Connection, i32> {
        let stream = UnixStream::connect(socket).map_err(|e| unreachable(socket, &e))?;
        let writer = stream.try_clone().map_err(|e| unreachable(socket, &e))?;
        Ok(Connection {
            socket: socket.to_path_buf(),
            writer,
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads one answer line, waiting at most `within` for it (`None`:
    /// without limit). No answer in time is reported like an unreachable service (exit 3).
    pub(crate) fn ask(&mut self, request: &Value, within: Option<Duration>) -> Result<Value, i32> {
        let socket = self.socket.as_path();
        let mut line = request.to_string();
        line.push('\n');
        // A refused connection (`forbidden`, `too_many_clients`) is answered at once and
        // closed, maybe before this write arrives: the write then fails, and the answer is
        // read anyway.
        let sent = self.writer.write_all(line.as_bytes());
        if let Err(e) = self.reader.get_ref().set_read_timeout(within) {
            return Err(unreachable(socket, &e));
        }
        let mut answer = String::new();
        let received = self.reader.read_line(&mut answer);
        if let Err(e) = &received {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                let seconds = within.unwrap_or_default().as_secs_f64();
                eprintln!(
                    "forkpool at {} did not answer within {seconds:.0} s",
                    socket.display()
                );
                return Err(EXIT_UNREACHABLE);
            }
        }
        if answer.is_empty() {
            sent.and(received).map_err(|e| unreachable(socket, &e))?;
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
}

/// Says the service could not be reached, and why; the exit code for it.
fn unreachable(socket: &Path, error: &std::io::Error) -> i32 {
    eprintln!(
        "cannot reach forkpool at {}: {error} — is the service running?",
        socket.display()
    );
    EXIT_UNREACHABLE
}

/// Prints an answer as submit does: indented JSON on stdout.
fn print_answer(answer: &Value) {
    println!("{}", serde_json::to_string_pretty(answer).expect("JSON"));
}

/// A job's arguments from the command line (`what` names the argument in messages): a JSON
/// object, `{}` when absent; anything else is a usage error.
fn parse_args(what: &str, args: Option<&str>) -> Result<Value, i32> {
    match args.map(serde_json::from_str).transpose() {
        Ok(Some(args @ Value::Object(_))) => Ok(args),
        Ok(None) => Ok(json!({})),
        Ok(Some(_)) => {
            eprintln!("{what} must be a JSON object, e.g. '{{\"a\": 1}}'");
            Err(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("{what} is not JSON: {e}");
            Err(EXIT_USAGE)
        }
    }
}

/// A duration on the command line: a bare number is seconds, else humantime ("10s",
/// "500ms", "5m").
/// At most a century ([`crate::durations`]): the commands add it to `Instant::now()`, which
/// would panic far enough out (and `Duration::from_secs_f64` past `u64::MAX` seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err("the duration must be positive".to_string());
        }
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("{text} seconds is too long: at most 100 years"))
            .and_then(crate::durations::bounded);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write e.g. \"10s\" or \"500ms\")"))
        .and_then(crate::durations::bounded)
}

pub(crate) fn submit(socket: &Path, job: &str, args: Option<&str>, timeout_ms: Option<u64>) -> i32 {
    let args = match parse_args("ARGS_JSON", args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let mut body = json!({"id": 1, "op": "run", "job": job, "args": args});
    if let Some(ms) = timeout_ms {
        body["timeout_ms"] = json!(ms);
    }
    print_with_exit_code(request(socket, &body))
}

/// Prints an answer as JSON and returns 0 when it is ok, 1 when refused; an answer not had
/// returns its exit code (3: unreachable).
fn print_with_exit_code(answer: Result<Value, i32>) -> i32 {
    match answer {
        Ok(answer) => {
            print_answer(&answer);
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
        print!("{}", status_text::render(status));
    } else {
        print!("{}", status_table::render(status));
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn command_line_durations_are_positive_and_at_most_a_century() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0").is_err());
        for huge in ["1e30", "300000000000y", "101y"] {
            let error = parse_duration(huge).unwrap_err();
            assert!(error.contains("too long"), "{huge}: {error}");
        }
    }
}
