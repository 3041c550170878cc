//! A forkpool service with a Rust handler that does real work: it "uploads" a file to an
//! external store, then records the item and counts it under its parent in one transaction.
//!
//! Run it like `forkpool run` (the same command line: run, submit, status, check, bench),
//! from the repository's root so that `config/forkpool.toml` is found. That configuration's
//! `[databases.main]` is libpq's defaults (the local socket, your OS user, the database of
//! the same name); `FORKPOOL_DATABASES__MAIN__URL` or the `PG*` variables point it elsewhere.
//! The handler creates its two tables on first use, so that user needs `CREATE` there.
//!
//! ```sh
//! cargo run --example upload_worker -- run
//! cargo run --example upload_worker -- submit upload_file '{"parent_id": 1, "name": "a.txt", "content": "hello"}'
//! ```

use std::time::Duration;

use forkpool::handler::{HandlerOptions, JobContext, JobError};
use serde_json::{json, Map, Value};

/// Creates the tables on first use. The advisory lock is taken only while `uploads` does not
/// exist yet, so two first jobs cannot race on CREATE TABLE and later jobs never wait.
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(727002) WHERE to_regclass('uploads') IS NULL;
    CREATE TABLE IF NOT EXISTS upload_parents (
        id int8 PRIMARY KEY, child_count int4 NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS uploads (
        id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        parent_id int8 NOT NULL REFERENCES upload_parents (id),
        name text NOT NULL,
        blob_id text NOT NULL);
";

/// Stands in for an external object store: takes a few milliseconds, returns the blob's id.
/// A real one would be an HTTP call bounded by `ctx.remaining()`.
fn fake_upload(content: &str) -> Result<String, JobError> {
    std::thread::sleep(Duration::from_millis(3));
    Ok(format!("blob-{:016x}-{}", fastrand::u64(..), content.len()))
}

fn upload_file(ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
    let parent_id = args
        .get("parent_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| JobError::invalid_args("`parent_id` must be an integer"))?;
    let name = args
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::invalid_args("`name` must be a string"))?;
    let content = args.get("content").and_then(Value::as_str).unwrap_or("");
    let blob_id = fake_upload(content)?;
    let item_id = ctx.transaction("main", |db| {
        db.batch_execute(SCHEMA)?;
        db.query_sql(
            "INSERT INTO upload_parents (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&parent_id],
        )?;
        let rows = db.query_sql(
            "INSERT INTO uploads (parent_id, name, blob_id) VALUES ($1, $2, $3) RETURNING id",
            &[&parent_id, &name, &blob_id],
        )?;
        db.query_sql(
            "UPDATE upload_parents SET child_count = child_count + 1 WHERE id = $1",
            &[&parent_id],
        )?;
        Ok(rows[0].get::<_, i64>(0))
    })?;
    Ok(json!({ "id": item_id, "blob_id": blob_id }))
}

fn main() {
    let service = forkpool::Service::new().handler_with(
        "upload_file",
        HandlerOptions {
            description: "Upload a file, then record it and count it under its parent".into(),
            ..HandlerOptions::default()
        },
        upload_file,
    );
    std::process::exit(forkpool::cli::main_with(service));
}
