//! Handlers that go wrong on purpose, for the tests of what forkpool does about it (and for
//! reading: each shows what a handler may safely get wrong).

use forkpool::handler::{JobContext, JobError};
use serde_json::{json, Map, Value};

fn note(args: &Map<String, Value>) -> String {
    args.get("note")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Writes in a transaction, then fails: the transaction is rolled back.
fn fails_after_insert(
    ctx: &mut JobContext<'_>,
    args: &Map<String, Value>,
) -> Result<Value, JobError> {
    let note = note(args);
    ctx.transaction("main", |db| {
        db.query_sql("INSERT INTO fault_notes (note) VALUES ($1)", &[&note])?;
        Err(JobError::failed("the external service said no"))
    })
}

/// Writes in a transaction, then panics: `internal`, rolled back, the worker carries on.
fn panics_after_insert(
    ctx: &mut JobContext<'_>,
    args: &Map<String, Value>,
) -> Result<Value, JobError> {
    let note = note(args);
    ctx.transaction("main", |db| {
        db.query_sql("INSERT INTO fault_notes (note) VALUES ($1)", &[&note])?;
        panic!("a bug in the handler");
    })
}

/// Opens a transaction by hand and never ends it: the pool's checkin resets it.
fn leaves_transaction_open(
    ctx: &mut JobContext<'_>,
    args: &Map<String, Value>,
) -> Result<Value, JobError> {
    let note = note(args);
    let db = ctx.db("main")?;
    db.batch_execute("BEGIN")?;
    db.query_sql("INSERT INTO fault_notes (note) VALUES ($1)", &[&note])?;
    Ok(json!({ "left_open": true, "backend": db.backend_pid() }))
}

/// Not a fault: the witness of the others. Says whether it found a transaction already open
/// on its connection (one that has written has a transaction id), writes its note and
/// commits whatever is open — so a transaction a previous job left behind would be
/// committed, and its writes made visible, with this one.
fn commits_whatever_is_open(
    ctx: &mut JobContext<'_>,
    args: &Map<String, Value>,
) -> Result<Value, JobError> {
    let note = note(args);
    let db = ctx.db("main")?;
    let found = db.query_sql("SELECT txid_current_if_assigned()::text", &[])?;
    let open_transaction: Option<String> = found[0].get(0);
    db.query_sql("INSERT INTO fault_notes (note) VALUES ($1)", &[&note])?;
    db.batch_execute("COMMIT")?;
    Ok(json!({ "open_transaction": open_transaction, "backend": db.backend_pid() }))
}

/// Not a fault: a handler that is exactly-once when enqueued. Its note and the job's
/// completion commit in one transaction on the queue's database.
fn notes_exactly_once(
    ctx: &mut JobContext<'_>,
    args: &Map<String, Value>,
) -> Result<Value, JobError> {
    let note = note(args);
    let durable = ctx.is_durable();
    ctx.transaction_completing("main", |db| {
        db.query_sql("INSERT INTO fault_notes (note) VALUES ($1)", &[&note])?;
        Ok(json!({ "noted": note, "durable": durable }))
    })
}

fn main() {
    let service = forkpool::Service::new()
        .handler("notes_exactly_once", notes_exactly_once)
        .handler("fails_after_insert", fails_after_insert)
        .handler("panics_after_insert", panics_after_insert)
        .handler("leaves_transaction_open", leaves_transaction_open)
        .handler("commits_whatever_is_open", commits_whatever_is_open);
    std::process::exit(forkpool::cli::main_with(service));
}
