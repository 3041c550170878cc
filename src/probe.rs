//! `forkpool check --db`: connect once to a database and report what an operator needs.
//!
//! This runs in the `check` command's own short-lived process, never in the master.

use std::time::{Duration, Instant};

use crate::databases::DatabaseSpec;
use crate::pool::Pool;

/// How long the probe may take in all.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// Connects with the database's own settings and reports server version, TLS and
/// `max_connections` against the connections this configuration may open.
pub fn probe(name: &str, spec: &DatabaseSpec, may_open: usize) -> Result<String, String> {
    let pool = Pool::new(
        name,
        spec.conninfo.clone(),
        spec.settings.clone().pool_size(1),
    )
    .map_err(|e| e.to_string())?;
    let mut conn = pool.checkout("check --db").map_err(|e| e.to_string())?;
    conn.set_deadline(Some(Instant::now() + PROBE_DEADLINE));
    let rows = conn
        .query_sql(
            "SELECT current_setting('server_version'), \
                    coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
                    current_setting('max_connections')::int4, \
                    current_setting('superuser_reserved_connections')::int4",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let row = rows.first().ok_or("the probe query returned no row")?;
    let version: String = row.get(0);
    let tls: bool = row.get(1);
    let max_connections = row.get::<_, i32>(2) - row.get::<_, i32>(3);
    let fits = if may_open as i64 <= i64::from(max_connections) {
        "fits"
    } else {
        "DOES NOT FIT"
    };
    drop(conn);
    pool.close();
    Ok(format!(
        "PostgreSQL {version}, TLS {}, {max_connections} connections for non-superusers; \
         this configuration may open {may_open} (workers.max × pool_size): {fits}",
        if tls { "on" } else { "off" }
    ))
}
