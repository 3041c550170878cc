//! The socket protocol (DESIGN §5): one JSON object per line in, one answer line out.
//!
//! The master parses a request only as far as it must to route it: the line is read once
//! (`members.rs`), the `args` object goes on as the raw JSON text it came as (its members read
//! once, for the check against the job's params), and a worker's result is spliced into the
//! answer as it came, so nothing is decoded and re-encoded on its way through the master.

mod admin_ops;
mod args_check;
mod durable_ops;
mod members;

pub use admin_ops::{Admin, Scale};

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use members::Fields;

/// The closed set of error kinds a client can see. The wire names are spelled once, in
/// [`ErrorKind::as_str`], which serialization uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    TooLarge,
    UnknownOp,
    UnknownJob,
    InvalidArgs,
    QueueFull,
    Timeout,
    WorkerLost,
    DbError,
    DbUnavailable,
    /// A Rust handler could not do its work (its own error, not a bug).
    JobFailed,
    ShuttingDown,
    Forbidden,
    /// The service holds `service.max_clients` connections; this one is closed.
    TooManyClients,
    /// No durable job has the id a `result` or `cancel` named.
    NotFound,
    /// A `reload` found the configuration or the catalog wrong; the running one is kept.
    InvalidConfig,
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order: counters per kind index by position here.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::TooLarge,
        ErrorKind::UnknownOp,
        ErrorKind::UnknownJob,
        ErrorKind::InvalidArgs,
        ErrorKind::QueueFull,
        ErrorKind::Timeout,
        ErrorKind::WorkerLost,
        ErrorKind::DbError,
        ErrorKind::DbUnavailable,
        ErrorKind::JobFailed,
        ErrorKind::ShuttingDown,
        ErrorKind::Forbidden,
        ErrorKind::TooManyClients,
        ErrorKind::NotFound,
        ErrorKind::Internal,
    ];

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnknownOp => "unknown_op",
            ErrorKind::UnknownJob => "unknown_job",
            ErrorKind::InvalidArgs => "invalid_args",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::Timeout => "timeout",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::DbError => "db_error",
            ErrorKind::DbUnavailable => "db_unavailable",
            ErrorKind::JobFailed => "job_failed",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::TooManyClients => "too_many_clients",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::Internal => "internal",
        }
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An error answer's body: `{"kind": ..., "message": ..., <extra fields>}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
    /// Kind-specific fields (`sqlstate` for `db_error`, ...), flattened into the object.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            kind,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ErrorBody {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error body always serializes")
    }
}

/// What a request asks for.
#[derive(Debug)]
pub enum Op {
    Run {
        job: String,
        /// The `args` object (`{}` when absent).
        args: Args,
        timeout_ms: Option<u64>,
    },
    Status,
    Ping,
    Jobs,
    /// Store a durable job (DESIGN §12).
    Enqueue {
        job: String,
        args: Args,
        options: crate::ipc::EnqueueOptions,
    },
    /// A durable job as it is, or once final within `wait_ms`.
    Result {
        job_id: i64,
        wait_ms: Option<u64>,
    },
    Cancel {
        job_id: i64,
    },
    /// Queues with their counts and paused flags.
    Queues,
    /// Stop (`pause`) or restart claiming a queue's jobs on every host.
    Pause {
        queue: String,
        paused: bool,
    },
    /// `reload`, `stop`, `scale`: the operator's.
    Admin(Admin),
}

/// The `args` object of `run` and `enqueue`, read once: its text as it came, which goes on to
/// the worker (or the queue) untouched, and its members, which the master checks against the
/// job's params.
pub struct Args {
    pub raw: Box<RawValue>,
    pub values: Map<String, Value>,
}

impl Args {
    /// The object's text, as the request had it.
    pub fn get(&self) -> &str {
        self.raw.get()
    }
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_tuple("Args")
            .field(&format_args!("{}", self.raw.get()))
            .finish()
    }
}

/// A parsed request line.
#[derive(Debug)]
pub struct Request {
    /// The request's `id` as raw JSON text, echoed verbatim in the answer.
    pub id: Box<RawValue>,
    pub op: Op,
}

/// Why a line is not a request: the kind to answer with, the message, and the id when it could
/// be read (so even a bad request is answered under its own id).
#[derive(Debug)]
pub struct Rejection {
    pub id: Box<RawValue>,
    pub body: ErrorBody,
}

/// The fields a request may carry; anything else is a mistake worth naming (a typo such as
/// `"arg"` would otherwise silently run the job without its arguments).
const REQUEST_FIELDS: &[&str] = &[
    "id",
    "op",
    "job",
    "args",
    "timeout_ms",
    "queue",
    "priority",
    "run_at",
    "delay_ms",
    "max_attempts",
    "unique_key",
    "job_id",
    "wait_ms",
    "fast",
    "workers",
    "by",
];

/// `"id": null`, for answers to a line whose id is unknown (unparsable, refused at connect).
pub fn null_id() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, Rejection> {
    let bad = |id: Box<RawValue>, message: String| Rejection {
        id,
        body: ErrorBody::new(ErrorKind::BadRequest, message),
    };
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => return Err(bad(null_id(), format!("request is not UTF-8: {e}"))),
    };
    let fields = match Fields::read(text) {
        Ok(fields) => fields,
        Err(message) => return Err(bad(null_id(), message)),
    };
    let id = match fields.get("id") {
        None => null_id(),
        Some(raw) if is_scalar(raw) => raw.to_owned(),
        Some(_) => {
            return Err(bad(
                null_id(),
                "field `id` must be a JSON scalar (string, number, boolean or null)".to_string(),
            ))
        }
    };
    if let Some(unknown) = fields.first_unknown() {
        return Err(bad(
            id,
            format!(
                "unknown field `{unknown}` (a request has: {})",
                REQUEST_FIELDS.join(", ")
            ),
        ));
    }
    let op = match str_field(&fields, "op") {
        Ok(Some(op)) => op,
        Ok(None) => return Err(bad(id, "missing field `op`".to_string())),
        Err(message) => return Err(bad(id, message)),
    };
    let op = match &*op {
        "run" => {
            let (job, args) = match job_and_args(&fields, "run") {
                Ok(parsed) => parsed,
                Err(message) => return Err(bad(id, message)),
            };
            let timeout_ms = match fields.get("timeout_ms") {
                None => None,
                Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                    Ok(ms) if ms > 0 => Some(ms),
                    _ => {
                        return Err(bad(
                            id,
                            "field `timeout_ms` must be a positive integer".to_string(),
                        ))
                    }
                },
            };
            Op::Run {
                job,
                args,
                timeout_ms,
            }
        }
        "enqueue" | "result" | "cancel" | "queues" | "pause" | "resume" => {
            match durable_ops::parse(&op, &fields) {
                Ok(op) => op,
                Err(message) => return Err(bad(id, message)),
            }
        }
        "reload" | "stop" | "scale" => match admin_ops::parse(&op, &fields) {
            Ok(admin) => Op::Admin(admin),
            Err(message) => return Err(bad(id, message)),
        },
        "status" => Op::Status,
        "ping" => Op::Ping,
        "jobs" => Op::Jobs,
        other => {
            return Err(Rejection {
                id,
                body: ErrorBody::new(
                    ErrorKind::UnknownOp,
                    format!(
                    "unknown op `{other}` (ops: run, status, ping, jobs, enqueue, result, cancel, queues, pause, resume, reload, stop, scale)"
                ),
                ),
            })
        }
    };
    if let Some(stray) = fields
        .names()
        .filter(|name| !op_fields(&op).contains(name))
        .min()
    {
        return Err(bad(
            id,
            format!(
                "field `{stray}` does not go with this op (it takes: {})",
                op_fields(&op).join(", ")
            ),
        ));
    }
    Ok(Request { id, op })
}

/// The fields each op takes, `id` and `op` included.
fn op_fields(op: &Op) -> &'static [&'static str] {
    match op {
        Op::Run { .. } => &["id", "op", "job", "args", "timeout_ms"],
        Op::Status | Op::Ping | Op::Jobs => &["id", "op"],
        Op::Enqueue { .. } => &[
            "id",
            "op",
            "job",
            "args",
            "queue",
            "priority",
            "run_at",
            "delay_ms",
            "max_attempts",
            "unique_key",
        ],
        Op::Result { .. } => &["id", "op", "job_id", "wait_ms"],
        Op::Cancel { .. } => &["id", "op", "job_id"],
        Op::Queues => &["id", "op"],
        Op::Pause { .. } => &["id", "op", "queue"],
        Op::Admin(admin) => admin.fields(),
    }
}

/// `job` (required) and `args` (an object; `{}` when absent), as `run` and `enqueue` take them.
fn job_and_args(fields: &Fields, op: &str) -> Result<(String, Args), String> {
    let job =
        string_field(fields, "job")?.ok_or_else(|| format!("missing field `job` (op {op})"))?;
    let args = match fields.get("args") {
        None => Args {
            raw: RawValue::from_string("{}".to_string()).expect("{} is JSON"),
            values: Map::new(),
        },
        Some(raw) if raw.get().starts_with('{') => args_check::read(raw)?,
        Some(_) => return Err("field `args` must be a JSON object".to_string()),
    };
    Ok((job, args))
}

fn is_scalar(raw: &RawValue) -> bool {
    !matches!(raw.get().trim_start().as_bytes().first(), Some(b'{' | b'['))
}

fn string_field(fields: &Fields, name: &str) -> Result<Option<String>, String> {
    str_field(fields, name).map(|text| text.map(Cow::into_owned))
}

/// A string field's text, borrowed from the line unless it has escapes to decode.
fn str_field<'a>(fields: &Fields<'a>, name: &str) -> Result<Option<Cow<'a, str>>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) => string(raw)
            .map(Some)
            .ok_or_else(|| format!("field `{name}` must be a string")),
    }
}

/// A JSON string's text, borrowed when it has no escapes to decode. A string without a
/// backslash is its own text between the quotes: the line was read as
/// JSON already, which refuses control characters in strings.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let quoted = raw
        .get()
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'));
    match quoted {
        Some(text) if !text.contains('\\') => Some(Cow::Borrowed(text)),
        _ => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

/// `{"id":<id>,"ok":true,"result":<result>}` followed by a newline. `result` is JSON text.
pub fn ok_line(id: &RawValue, result: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(result.len() + id.get().len() + 32);
    line.extend_from_slice(b"{\"id\":");
    line.extend_from_slice(id.get().as_bytes());
    line.extend_from_slice(b",\"ok\":true,\"result\":");
    line.extend_from_slice(result.as_bytes());
    line.extend_from_slice(b"}\n");
    line
}

/// `{"id":<id>,"ok":false,"error":<error>}` followed by a newline. `error` is JSON text.
pub fn error_line(id: &RawValue, error: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(error.len() + id.get().len() + 32);
    line.extend_from_slice(b"{\"id\":");
    line.extend_from_slice(id.get().as_bytes());
    line.extend_from_slice(b",\"ok\":false,\"error\":");
    line.extend_from_slice(error.as_bytes());
    line.extend_from_slice(b"}\n");
    line
}

#[cfg(test)]
mod tests;
