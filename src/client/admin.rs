//! The operator's commands: `ping` and `jobs` (anyone who may connect), `reload`, `stop`
//! and `scale` (the service's own uid and `service.admin_uids`; DESIGN §4, §5). Each prints
//! a line for a person on stdout (`jobs --json`: the `jobs` result) and an error answer's
//! kind and message on stderr.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Connection;
use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE};
use crate::protocol::Scale;

/// How long `ping`, `jobs`, `stop` and `scale` wait for their answer: the master answers
/// them from its loop at once, so a longer silence is a stuck service.
const PROMPT_ANSWER: Duration = Duration::from_secs(30);

/// `forkpool ping`: the round trip to the master. Exit 0 when it answered.
pub(crate) fn ping(socket: &Path) -> i32 {
    let started = Instant::now();
    let result = match ask(socket, json!({"id": 1, "op": "ping"}), PROMPT_ANSWER) {
        Ok(result) => result,
        Err(code) => return code,
    };
    println!(
        "pong from forkpool pid {} at {} in {:.1} ms",
        result["pid"],
        socket.display(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    EXIT_OK
}

/// `forkpool jobs [--json]`: the catalog, one line per job (or the `jobs` result as JSON).
pub(crate) fn jobs(socket: &Path, as_json: bool) -> i32 {
    let result = match ask(socket, json!({"id": 1, "op": "jobs"}), PROMPT_ANSWER) {
        Ok(result) => result,
        Err(code) => return code,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result).expect("JSON"));
    } else {
        let empty = Vec::new();
        print!(
            "{}",
            jobs_table(result["jobs"].as_array().unwrap_or(&empty))
        );
    }
    EXIT_OK
}

/// The catalog as aligned columns: name, kind, database, timeout, parameters (with their
/// types and defaults), description.
fn jobs_table(jobs: &[Value]) -> String {
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|job| {
            let timeout = job["timeout_ms"]
                .as_u64()
                .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
                .unwrap_or_default();
            [
                text(&job["name"]),
                text(&job["kind"]),
                text(&job["database"]),
                timeout,
                params(&job["params"]),
                text(&job["description"]),
            ]
        })
        .collect();
    let header = [
        "name",
        "kind",
        "database",
        "timeout",
        "params",
        "description",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_string)).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line += cell;
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// `a int8, b int8 = 1`: each parameter with its type and default.
fn params(params: &Value) -> String {
    let Some(params) = params.as_array().filter(|p| !p.is_empty()) else {
        return "-".to_string();
    };
    params
        .iter()
        .map(|p| match &p["default"] {
            Value::Null => format!("{} {}", text(&p["name"]), text(&p["type"])),
            default => format!("{} {} = {default}", text(&p["name"]), text(&p["type"])),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// `forkpool reload`: answered once the new generation's workers all serve (at most
/// `within`), or with every problem of a configuration that was refused.
pub(crate) fn reload(socket: &Path, within: Duration) -> i32 {
    let result = match ask(socket, json!({"id": 1, "op": "reload"}), within) {
        Ok(result) => result,
        Err(code) => return code,
    };
    println!(
        "reloaded: generation {} serving on {} workers",
        result["generation"], result["workers"]
    );
    EXIT_OK
}

/// `forkpool stop [--fast] [--wait]`: answered once the stop has begun; with `wait`, returns
/// once the service has exited (its end of the connection closes), at most `within`.
pub(crate) fn stop(socket: &Path, fast: bool, wait: bool, within: Duration) -> i32 {
    let mut connection = match Connection::open(socket) {
        Ok(connection) => connection,
        Err(code) => return code,
    };
    let request = json!({"id": 1, "op": "stop", "fast": fast});
    let result = match connection
        .ask(&request, Some(PROMPT_ANSWER))
        .and_then(ok_result)
    {
        Ok(result) => result,
        Err(code) => return code,
    };
    println!(
        "stopping ({}): forkpool pid {}",
        text(&result["stopping"]),
        result["pid"]
    );
    if !wait {
        return EXIT_OK;
    }
    match connection.wait_for_close(within) {
        Ok(()) => {
            println!("stopped");
            EXIT_OK
        }
        Err(()) => {
            eprintln!(
                "forkpool at {} was still running after {}",
                socket.display(),
                humantime::format_duration(within)
            );
            EXIT_UNREACHABLE
        }
    }
}

/// `forkpool scale +N|-N|N`: the new target, or why it was refused (out of
/// `workers.count..=workers.max`).
pub(crate) fn scale(socket: &Path, scale: Scale) -> i32 {
    let request = match scale {
        Scale::To(n) => json!({"id": 1, "op": "scale", "workers": n}),
        Scale::By(step) => json!({"id": 1, "op": "scale", "by": step}),
    };
    let result = match ask(socket, request, PROMPT_ANSWER) {
        Ok(result) => result,
        Err(code) => return code,
    };
    println!(
        "{} workers (was {})",
        result["target_workers"], result["was"]
    );
    EXIT_OK
}

/// `+N`, `-N` (a step) or `N` (a count) from the command line.
pub(crate) fn parse_scale(text: &str) -> Result<Scale, String> {
    let usage = || format!("`{text}`: write +N (N more), -N (N fewer) or N (exactly N workers)");
    let number = |digits: &str| digits.parse::<i64>().ok().filter(|n| *n > 0);
    match text.as_bytes().first() {
        Some(b'+') => number(&text[1..]).map(Scale::By).ok_or_else(usage),
        Some(b'-') => number(&text[1..]).map(|n| Scale::By(-n)).ok_or_else(usage),
        _ => number(text)
            .map(|n| Scale::To(n as usize))
            .ok_or_else(usage),
    }
}

/// One request on a connection of its own, its answer awaited at most `within`; the
/// result of an ok answer, else the exit code (1: refused, 3: no answer).
fn ask(socket: &Path, request: Value, within: Duration) -> Result<Value, i32> {
    Connection::open(socket)?
        .ask(&request, Some(within))
        .and_then(ok_result)
}

/// An ok answer's result; an error answer is printed on stderr (its kind and message, and
/// each problem of a refused configuration on a line of its own) and gives exit code 1.
fn ok_result(mut answer: Value) -> Result<Value, i32> {
    if answer["ok"] == json!(true) {
        return Ok(answer["result"].take());
    }
    let error = &answer["error"];
    match error["problems"].as_array() {
        Some(problems) => {
            eprintln!(
                "forkpool: {}: reload refused, the running configuration is kept:",
                text(&error["kind"])
            );
            for problem in problems {
                eprintln!("  {}", text(problem));
            }
        }
        None => eprintln!(
            "forkpool: {}: {}",
            text(&error["kind"]),
            text(&error["message"])
        ),
    }
    Err(EXIT_FAILED)
}

impl Connection {
    /// Reads until the service closes its end (it exited), at most `within`.
    fn wait_for_close(&mut self, within: Duration) -> Result<(), ()> {
        let deadline = Instant::now() + within;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.reader.get_ref().set_read_timeout(Some(left)).is_err() {
                return Err(());
            }
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(_) => return Err(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_argument_is_a_step_with_a_sign_or_a_count_without() {
        assert_eq!(parse_scale("+2"), Ok(Scale::By(2)));
        assert_eq!(parse_scale("-1"), Ok(Scale::By(-1)));
        assert_eq!(parse_scale("3"), Ok(Scale::To(3)));
        for bad in ["0", "+0", "-0", "x", "+", "", "2.5", "--1"] {
            assert!(parse_scale(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_jobs_table_aligns_columns_and_shows_params_with_defaults() {
        let jobs = json!([
            {"name": "add", "kind": "sql", "description": "Add two numbers", "database": "main",
             "timeout_ms": 60000, "params": [{"name": "a", "type": "int8", "default": null},
                                             {"name": "b", "type": "int8", "default": 1}]},
            {"name": "ping", "kind": "rust", "description": "", "database": "",
             "timeout_ms": 1500, "params": []},
        ]);
        let table = jobs_table(jobs.as_array().unwrap());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "name  kind  database  timeout   params              description",
                "add   sql   main      1m        a int8, b int8 = 1  Add two numbers",
                "ping  rust  -         1s 500ms  -                   -",
            ]
        );
    }
}
