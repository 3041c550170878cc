//! The `forkpool` schema: its versions, and the one migration routine that `forkpool migrate`
//! and the queue keeper (`queue.migrate = "auto"`) both call.
//!
//! Versions are applied in one transaction under a transaction-scoped advisory lock, so two
//! hosts starting at once never migrate together: the second waits, then finds nothing to do.
//! A schema newer than this binary is refused with both versions named, since running old
//! claim SQL against a newer table could break the newer hosts' guarantees.

use crate::pool::{self, PooledConnection};

/// Every version's SQL, in order; the schema's version is the length of the applied prefix.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
];

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key of migrations: `hashtext('forkpool.migrate')` would be stable too,
/// but a constant is greppable in `pg_locks`.
const MIGRATE_LOCK: i64 = 0x666f_726b_706f_6f6c; // "forkpool" in ASCII

/// Why the schema cannot be used.
#[derive(Debug)]
pub enum SchemaError {
    /// The database refused or could not be reached.
    Database(pool::Error),
    /// The schema is older than this binary and `queue.migrate = "manual"`.
    NeedsMigration { found: i32 },
    /// Another, newer forkpool migrated the schema past what this binary knows.
    TooNew { found: i32 },
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaError::Database(e) => write!(f, "{e}"),
            SchemaError::NeedsMigration { found } => write!(
                f,
                "the forkpool schema is at version {found}, this forkpool needs version \
                 {SCHEMA_VERSION}; run `forkpool migrate` (queue.migrate = \"manual\")"
            ),
            SchemaError::TooNew { found } => write!(
                f,
                "the forkpool schema is at version {found}, newer than this forkpool knows \
                 (version {SCHEMA_VERSION}); upgrade forkpool on this host"
            ),
        }
    }
}

impl From<pool::Error> for SchemaError {
    fn from(error: pool::Error) -> Self {
        SchemaError::Database(error)
    }
}

/// The applied version, 0 when the schema does not exist; cheap, and takes no lock.
pub fn current_version(conn: &mut PooledConnection) -> Result<i32, pool::Error> {
    // Two statements: a query naming a table that does not exist fails when planned, even
    // inside a CASE that would not reach it.
    let exists = conn.query_sql(
        "SELECT to_regclass('forkpool.schema_version') IS NOT NULL",
        &[],
    )?;
    if !exists[0].get::<_, bool>(0) {
        return Ok(0);
    }
    let rows = conn.query_sql(
        "SELECT coalesce(max(version), 0) FROM forkpool.schema_version",
        &[],
    )?;
    Ok(rows[0].get(0))
}

/// Checks the schema is usable by this binary, migrating first when `migrate` is true.
/// Returns the version found before (0: created now).
pub fn ensure(conn: &mut PooledConnection, migrate: bool) -> Result<i32, SchemaError> {
    let found = current_version(conn)?;
    if found == SCHEMA_VERSION {
        return Ok(found);
    }
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    if !migrate {
        return Err(SchemaError::NeedsMigration { found });
    }
    migrate_schema(conn)
}

/// Creates or upgrades the schema; idempotent. Returns the version found under the lock.
pub fn migrate_schema(conn: &mut PooledConnection) -> Result<i32, SchemaError> {
    super::in_transaction(conn, apply_missing)
}

fn apply_missing(conn: &mut PooledConnection) -> Result<i32, SchemaError> {
    conn.query_sql("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    conn.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS forkpool; \
         CREATE TABLE IF NOT EXISTS forkpool.schema_version ( \
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i32 + 1;
        conn.batch_execute(sql)?;
        conn.query_sql(
            "INSERT INTO forkpool.schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        log::info!(target: "forkpool::queue", "schema migrated to version {version}");
    }
    Ok(found)
}
