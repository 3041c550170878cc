//! A request line from a client (DESIGN §5), as the master reads it off the socket:
//! `protocol::parse_request` never panics, and whatever it decides can be answered with a
//! line that is one JSON object carrying the request's own id.
#![no_main]

use std::time::{Duration, Instant};

use forkpool::protocol::{error_line, ok_line, parse_request, ErrorKind, Op};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    ok: bool,
}

/// The answer line is one JSON object ending in a newline, and echoes `id` verbatim.
fn check_answer(line: &[u8], id: &RawValue, ok: bool) {
    assert_eq!(line.last(), Some(&b'\n'), "an answer ends its line");
    let body = &line[..line.len() - 1];
    assert!(!body.contains(&b'\n'), "an answer is one line: {line:?}");
    let answer: Answer = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "answer {:?} is not JSON: {e}",
            String::from_utf8_lossy(line)
        )
    });
    assert_eq!(answer.id.get(), id.get());
    assert_eq!(answer.ok, ok);
}

/// The master adds a request's milliseconds to `Instant::now()` for its deadlines.
fn check_deadline(ms: Option<u64>) {
    if let Some(ms) = ms {
        assert!(Instant::now()
            .checked_add(Duration::from_millis(ms))
            .is_some());
    }
}

fuzz_target!(|line: &[u8]| {
    match parse_request(line) {
        Ok(request) => {
            let id = &request.id;
            assert!(!id.get().starts_with(['{', '[']), "an id is a scalar");
            check_answer(&ok_line(id, "{}"), id, true);
            match &request.op {
                Op::Run {
                    job,
                    args,
                    timeout_ms,
                } => {
                    assert!(
                        args.get().starts_with('{'),
                        "args is an object: {}",
                        args.get()
                    );
                    let decoded: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(args.get())
                            .expect("args decode as the worker will decode them");
                    assert_eq!(
                        decoded, args.values,
                        "the master checks what the worker runs"
                    );
                    assert_ne!(*timeout_ms, Some(0));
                    let _ = job;
                    check_deadline(*timeout_ms);
                }
                Op::Enqueue { args, options, .. } => {
                    let decoded: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(args.get())
                            .expect("args decode as the keeper will decode them");
                    assert_eq!(
                        decoded, args.values,
                        "the master checks what the keeper stores"
                    );
                    check_deadline(options.delay_ms);
                }
                Op::Result { job_id, wait_ms } => {
                    assert!(*job_id > 0);
                    check_deadline(*wait_ms);
                }
                Op::Cancel { job_id } => assert!(*job_id > 0),
                Op::Pause { queue, .. } => assert!(!queue.is_empty()),
                Op::Admin(admin) => assert!(!admin.name().is_empty()),
                Op::Status | Op::Ping | Op::Jobs | Op::Queues => {}
            }
        }
        Err(rejection) => {
            assert!(matches!(
                rejection.body.kind,
                ErrorKind::BadRequest | ErrorKind::UnknownOp
            ));
            assert!(!rejection.body.message.is_empty());
            let error = rejection.body.to_json();
            check_answer(&error_line(&rejection.id, &error), &rejection.id, false);
        }
    }
});
