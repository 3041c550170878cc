//! `forkpool migrate`: creates or upgrades the `forkpool` schema in `queue.database` from
//! this short-lived process, through the same routine the queue keeper runs at start
//! (`queue::schema::migrate_schema`: one transaction under an advisory lock, idempotent).

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::databases;
use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::pool::Pool;
use crate::queue::schema::{self, SCHEMA_VERSION};

/// How long the migration may take in all: it may wait for another host's migration (the
/// advisory lock) and later versions may rewrite a large table; past this it is cancelled
/// and rolled back, and running it again is safe.
const MIGRATE_DEADLINE: Duration = Duration::from_secs(300);

/// Migrates the schema of `config`'s queue database; the exit code (0 migrated or already
/// current, 1 the database refused or the schema is newer, 2 durable jobs are off).
pub(crate) fn migrate(config: &Config) -> i32 {
    let Some(name) = config.queue.database.as_deref() else {
        eprintln!(
            "forkpool: queue.database is \"\" in {}: durable jobs are off, there is no \
             schema to migrate",
            config.file.display()
        );
        return EXIT_USAGE;
    };
    let databases = match databases::from_config(config) {
        Ok(databases) => databases,
        Err(problems) => {
            for problem in problems {
                eprintln!("forkpool: {problem}");
            }
            return EXIT_USAGE;
        }
    };
    let Some(spec) = databases.get(name) else {
        eprintln!("forkpool: queue.database = {name:?} names no [databases.{name}] section");
        return EXIT_USAGE;
    };
    let migrated = Pool::new(
        name,
        spec.conninfo.clone(),
        spec.settings.clone().pool_size(1),
    )
    .map_err(|e| e.to_string())
    .and_then(|pool| {
        let mut conn = pool.checkout("migrate").map_err(|e| e.to_string())?;
        conn.set_deadline(Some(Instant::now() + MIGRATE_DEADLINE));
        let found = schema::migrate_schema(&mut conn).map_err(|e| e.to_string());
        drop(conn);
        pool.close();
        found
    });
    match migrated {
        Ok(found) => {
            println!("schema at version {SCHEMA_VERSION} (was {found})");
            EXIT_OK
        }
        Err(problem) => {
            eprintln!(
                "forkpool: migrating database `{name}` ({}): {problem}",
                spec.conninfo
            );
            EXIT_FAILED
        }
    }
}
